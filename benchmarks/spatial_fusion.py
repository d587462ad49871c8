"""Is one fused spatial sampling faster than the unfused operators?

`medasl.runtime.fused_spatial.fused_spatial` (what `medasc run -O2` runs for a chain of
spatial steps) against `unfused_spatial` (the medasl.ops operators one by one, as -O0
runs them: SimpleITK resampling, NumPy crops and flips), on three kinds of chain:

    a  index-only             crop_or_pad + flip + random_crop
    b  one interpolation      resample + crop_or_pad;  crop_or_pad + flip + rotate
    c  two or more            resample + rotate;  resample + crop_or_pad + flip + rotate + random_rescale
    e  with a displacement    rotate + elastic (the torch path samples it: `worth_fusing` says no)

each on the 64x64x48 phantom (medasl.ops.io.phantom: int16 image + uint8 label, as a
Pair) and on the 512x512x160 int16 CT of benchmarks/preprocess.py (image alone, and as a
Pair with a body label). The two implementations are timed interleaved in this one
process (rotating which goes first), so that load from other jobs on the machine hits
them alike; printed: the median seconds per call of the fused kernel as it runs on the
CPU (one SimpleITK resampling where it can), of the fused kernel with torch sampling only
(`SITK_ON_CPU` off: the kernel before the SimpleITK route, and what other devices run),
and of the unfused operators, with the ratios to the unfused time.

    python benchmarks/spatial_fusion.py              # 5 repetitions
    python benchmarks/spatial_fusion.py --n 9 --only phantom
    python benchmarks/spatial_fusion.py --only ct --chains b1,b2

Random steps run with p = 1 so every repetition does the same work. The CT chain
parameters are those of benchmarks/preprocess.py (resample 0.7 x 0.7 x 2.5 ->
1.5 x 1.5 x 2.5 mm, crop_or_pad 256 x 256 x 160, flip x, rotate up to 10 degrees about
each axis); the phantom's are scaled to its grid (2 x 2 x 3 mm -> 1.5 x 1.5 x 3 mm).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from medasl.runtime import fused_spatial as fs  # noqa: E402
from medasl.runtime.fused_spatial import SpatialStep, fused_spatial, unfused_spatial  # noqa: E402
from medasl.runtime.values import Pair, Volume  # noqa: E402

CHAINS = {
    "a": "crop_or_pad + flip + random_crop",
    "b1": "resample + crop_or_pad",
    "b2": "crop_or_pad + flip + rotate",
    "c1": "resample + rotate",
    "c2": "resample + crop_or_pad + flip + rotate + random_rescale",
    "e": "rotate + elastic",
}


def chain(name: str, spacing: tuple[float, ...], size: tuple[int, ...], crop: tuple[int, ...]) -> list[SpatialStep]:
    """Chain `name` with target spacing `spacing`, crop_or_pad size `size`, random_crop `crop`."""
    res = SpatialStep("resample", {"spacing": spacing})
    pad = SpatialStep("crop_or_pad", {"size": size})
    flip = SpatialStep("flip", {"axis": 0, "p": 1.0}, (7, 0))
    rot = SpatialStep("rotate", {"angle": 10.0, "p": 1.0}, (7, 1))
    return {
        "a": [pad, flip, SpatialStep("random_crop", {"size": crop}, (7, 2))],
        "b1": [res, pad],
        "b2": [pad, flip, rot],
        "c1": [res, rot],
        "c2": [res, pad, flip, rot, SpatialStep("random_rescale", {"scale": (0.9, 1.1), "p": 1.0}, (7, 3))],
        "e": [rot, SpatialStep("elastic", {"sigma": 10.0, "magnitude": 5.0, "p": 1.0}, (7, 4))],
    }[name]


def phantom_pair() -> Pair:
    from medasl.ops.io import phantom

    return phantom(cases=1)[0].value


def ct_volume() -> Volume:
    from benchmarks.preprocess import SPACING_IN, synthetic_ct

    return Volume(synthetic_ct(), SPACING_IN, (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1), kind="image",
                  modality="CT")


def inputs(only: set[str]) -> list[tuple[str, Volume | Pair, tuple[float, ...], tuple[int, ...], tuple[int, ...]]]:
    """(name, value, resample spacing, crop_or_pad size, random_crop size) per input."""
    out: list[tuple[str, Volume | Pair, tuple[float, ...], tuple[int, ...], tuple[int, ...]]] = []
    if "phantom" in only:
        out.append(("phantom 64x64x48 pair", phantom_pair(), (1.5, 1.5, 3.0), (80, 80, 48), (64, 64, 40)))
    if "ct" in only:
        ct = ct_volume()
        geometry = ((1.5, 1.5, 2.5), (256, 256, 160), (192, 192, 128))
        out.append(("CT 512x512x160 image", ct, *geometry))
        label = ct.with_array((ct.array > -500).astype(np.uint8))
        label = Volume(label.array, ct.spacing, ct.origin, ct.direction, kind="labels")
        out.append(("CT 512x512x160 pair", Pair(ct, label), *geometry))
    return out


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def torch_only(x: Volume | Pair, steps: list[SpatialStep]) -> object:
    """The fused kernel with its SimpleITK route off: torch sampling on the CPU too."""
    before = fs.SITK_ON_CPU
    fs.SITK_ON_CPU = False
    try:
        return fused_spatial(x, steps)
    finally:
        fs.SITK_ON_CPU = before


def compare(x: Volume | Pair, steps: list[SpatialStep], n: int) -> tuple[float, float, float]:
    """Median seconds of fused, fused with torch only, and unfused over `n` interleaved
    repetitions (one warm-up each; the order rotates every repetition)."""
    runs: list[tuple[Callable[[], object], list[float]]] = [
        (lambda: fused_spatial(x, steps), []), (lambda: torch_only(x, steps), []), (lambda: unfused_spatial(x, steps), [])]
    for fn, _ in runs:
        fn()
    for i in range(n):
        for fn, acc in runs[i % 3:] + runs[:i % 3]:
            acc.append(timed(fn))
    tf, tt, tu = (statistics.median(acc) for _, acc in runs)
    return tf, tt, tu


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=5, help="repetitions per implementation (median reported)")
    ap.add_argument("--only", default="phantom,ct", help="inputs: phantom, ct (comma-separated)")
    ap.add_argument("--chains", default=None,
                    help="chains: " + ", ".join(CHAINS) + " (default all; on the CT all but e, whose elastic field "
                    "alone takes about 20 s there)")
    args = ap.parse_args(argv)
    import torch

    print(f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__} threads {torch.get_num_threads()}, n = {args.n}")
    print(f"{'input':22} {'chain':5} {'steps':56} {'fused s':>8} {'torch s':>8} {'unfused s':>9} "
          f"{'fused/unf':>9} {'torch/unf':>9}")
    for label, x, spacing, size, crop in inputs(set(args.only.split(","))):
        names = args.chains.split(",") if args.chains else [c for c in CHAINS if c != "e" or "CT" not in label]
        for name in names:
            tf, tt, tu = compare(x, chain(name, spacing, size, crop), args.n)
            print(f"{label:22} {name:5} {CHAINS[name]:56} {tf:8.4f} {tt:8.4f} {tu:9.4f} {tf / tu:9.2f} {tt / tu:9.2f}",
                  flush=True)
    print(f"load average after {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
