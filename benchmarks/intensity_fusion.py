"""How much faster is the fused intensity kernel than the unfused operators (issue 9)?

The intensity part of the benchmark chain: window (level 70, width 340), rescale to
[0, 1], zscore, on a 256x256x160 float32 CT-like volume (air -1000 HU, a noisy ~40 HU
body, lungs, bone; values with fractions, as after linear resampling). Compared in this
one process on the same array:

- unfused: `medasl.ops.pre.window`, `rescale`, `zscore` called in sequence (`-O0`);
- fused: `medasl.runtime.fused_intensity.fused_intensity` with the three steps, on the CPU;
- MONAI: ScaleIntensityRange(clip) + ScaleIntensity + NormalizeIntensity (the same chain),
  and ScaleIntensityRange(clip) + NormalizeIntensity (the rescale left out: it cancels).

    python benchmarks/intensity_fusion.py          # 9 repetitions, median reported
    python benchmarks/intensity_fusion.py --n 15
    python benchmarks/intensity_fusion.py --sizes  # the per-size section (below)

Reported: the median seconds per volume (one warm-up call each first, not counted), the
ratio to fused, and the largest difference between fused and unfused relative to the
output range. The implementations take turns within every repetition, so that a change
in the machine's load hits them alike; the load average is printed before and after.
Check it (`uptime`) before quoting the figures.

The per-size section (`--sizes`): the fixed cost of a call matters on small volumes (the
64^3 phantoms of examples/preprocess.medas are 64x64x48 after resampling), so the same
comparison runs on 16x16x8, 64x64x48 and 256x256x160 (x, y, z) CT-like volumes, for two
chains: window (level 40, width 400) + rescale, and window + rescale + zscore, against
MONAI's ScaleIntensityRange(clip) [+ ScaleIntensity] + NormalizeIntensity. Each call is
timed on its own with `time.perf_counter` (as a run calls the kernel once per case), fused
and unfused taking turns, MONAI after them (its OpenMP threads spin on after a call and
would slow the next one down); the median is reported with the ratios unfused / fused and
MONAI / fused (above 1: fused is faster).
"""

from __future__ import annotations

import argparse
import math
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

SHAPE_ZYX = (160, 256, 256)
LEVEL, WIDTH = 70.0, 340.0
SEED = 1234


def synthetic_ct(seed: int = SEED, shape_zyx: tuple[int, int, int] = SHAPE_ZYX) -> np.ndarray:
    """A (z, y, x) float32 CT in HU: air -1000, an elliptic body of 40 with noise (sd 20),
    two lungs of -850, a bone cylinder of 700 (sizes in proportion to a 256-voxel slice)."""
    rng = np.random.default_rng(seed)
    nz, ny, nx = shape_zyx
    k = nx / 256.0
    y, x = np.mgrid[0:ny, 0:nx].astype(np.float32)
    cy, cx = ny / 2.0, nx / 2.0
    body = ((x - cx) / (105.0 * k)) ** 2 + ((y - cy) / (75.0 * k)) ** 2 <= 1.0
    lungs = ((((x - cx + 45 * k) / (30.0 * k)) ** 2 + ((y - cy + 5 * k) / (40.0 * k)) ** 2) <= 1.0) | (
        (((x - cx - 45 * k) / (30.0 * k)) ** 2 + ((y - cy + 5 * k) / (40.0 * k)) ** 2) <= 1.0)
    bone = ((x - cx) ** 2 + (y - cy - 50 * k) ** 2) <= (12.0 * k) ** 2
    hu = np.full((ny, nx), -1000.0, dtype=np.float32)
    hu[body] = 40.0
    hu[lungs] = -850.0
    hu[bone] = 700.0
    vol = np.broadcast_to(hu, shape_zyx).copy()
    vol += rng.standard_normal(shape_zyx, dtype=np.float32) * np.float32(20.0) * body
    return vol


def timed(fns: dict[str, Callable[[], object]], n: int) -> tuple[dict[str, float], dict[str, object]]:
    """Median seconds of each function over `n` rounds in which they take turns, and each one's
    last result."""
    outs = {name: fn() for name, fn in fns.items()}  # warm-up: imports, first-touch allocations
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(n):
        for name, fn in fns.items():
            start = time.perf_counter()
            outs[name] = fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}, outs


SIZES_ZYX = [(8, 16, 16), (48, 64, 64), (160, 256, 256)]
"""The per-size section's volumes, (z, y, x): 16x16x8, 64x64x48 and 256x256x160."""

REPEATS = {8 * 16 * 16: 400, 48 * 64 * 64: 100}
"""Timed calls per implementation by voxel count (others: `--n`): enough for a stable
median where one call takes microseconds."""


def per_size(n: int) -> None:
    """Fused vs unfused vs MONAI per volume size and chain (see the module docstring)."""
    import torch

    from medasl.ops import pre
    from medasl.runtime.fused_intensity import IntensityStep, fused_intensity
    from medasl.runtime.values import Volume

    level, width = 40.0, 400.0
    window = IntensityStep("window", {"level": level, "width": width})
    rescale = IntensityStep("rescale", {"low": 0.0, "high": 1.0})
    zscore = IntensityStep("zscore", {})
    try:
        from monai.transforms import Compose, NormalizeIntensity, ScaleIntensity, ScaleIntensityRange
    except ImportError as exc:  # MONAI is an optional extra
        print(f"MONAI skipped: {exc}")
        monai = None
    else:
        scale = ScaleIntensityRange(a_min=level - width / 2, a_max=level + width / 2, b_min=0.0, b_max=1.0, clip=True)
        monai = {"window+rescale": Compose([scale, ScaleIntensity(minv=0.0, maxv=1.0)]),
                 "window+rescale+zscore": Compose([scale, ScaleIntensity(minv=0.0, maxv=1.0), NormalizeIntensity()])}
    print(f"per size: torch {torch.__version__}, {torch.get_num_threads()} threads; load average "
          f"{os.getloadavg()[0]:.2f}; median of single timed calls")
    print(f"{'size (x*y*z)':<14} {'chain':<22} {'fused':>10} {'unfused':>10} {'MONAI':>10}  "
          f"{'unfused/fused':>13} {'MONAI/fused':>11}  max|f-u|/range")
    for shape in SIZES_ZYX:
        ct = synthetic_ct(shape_zyx=shape)
        vol = Volume(ct, (1.5, 1.5, 2.5), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1), modality="CT")
        tensor = torch.from_numpy(ct)[None]
        # the lambdas bind the loop's values as defaults: they run inside this iteration only
        chains: dict[str, tuple[list[IntensityStep], Callable[[], object]]] = {
            "window+rescale": ([window, rescale],
                               lambda v=vol: pre.rescale(pre.window(v, level, width), 0.0, 1.0).array),
            "window+rescale+zscore": ([window, rescale, zscore],
                                      lambda v=vol: pre.zscore(pre.rescale(pre.window(v, level, width), 0.0, 1.0)).array),
        }
        for chain_name, (steps, unfused) in chains.items():
            fns: dict[str, Callable[[], object]] = {
                "fused": lambda v=vol, s=steps: fused_intensity(v, s)[0].array,
                "unfused": unfused,
            }
            repeats = REPEATS.get(ct.size, n)
            results, outs = timed(fns, repeats)
            if monai is not None:
                # Timed apart: after each MONAI call torch's OpenMP threads keep spinning for
                # a while, which would slow down whichever implementation ran next.
                results.update(timed({"MONAI": lambda t=monai[chain_name], x=tensor: t(x)}, repeats)[0])
            f, u = np.asarray(outs["fused"]), np.asarray(outs["unfused"])
            t_f, t_u, t_m = results["fused"], results["unfused"], results.get("MONAI", math.nan)
            size = "x".join(str(d) for d in reversed(shape))
            print(f"{size:<14} {chain_name:<22} {t_f * 1e3:7.3f} ms {t_u * 1e3:7.3f} ms {t_m * 1e3:7.3f} ms  "
                  f"{t_u / t_f:12.2f}x {t_m / t_f:10.2f}x  {np.abs(f - u).max() / np.ptp(u):.1e}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=9, help="timed repetitions per implementation (median reported)")
    parser.add_argument("--sizes", action="store_true",
                        help="run the per-size section (16x16x8, 64x64x48, 256x256x160) instead")
    args = parser.parse_args(argv)
    if args.sizes:
        per_size(args.n)
        return 0

    import torch

    from medasl.ops import pre
    from medasl.runtime.fused_intensity import IntensityStep, fused_intensity
    from medasl.runtime.values import Volume

    ct = synthetic_ct()
    vol = Volume(ct, (1.5, 1.5, 2.5), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1), modality="CT")
    steps = [IntensityStep("window", {"level": LEVEL, "width": WIDTH}), IntensityStep("rescale", {"low": 0.0, "high": 1.0}),
             IntensityStep("zscore", {})]
    print(f"input: float32 {SHAPE_ZYX} (z, y, x); torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"load average {os.getloadavg()[0]:.2f}; median of {args.n}")

    fns: dict[str, Callable[[], object]] = {
        "fused (torch, cpu)": lambda: fused_intensity(vol, steps)[0].array,
        "unfused medasl.ops": lambda: pre.zscore(pre.rescale(pre.window(vol, LEVEL, WIDTH), 0.0, 1.0)).array,
    }
    try:
        from monai.transforms import Compose, NormalizeIntensity, ScaleIntensity, ScaleIntensityRange
    except ImportError as exc:  # MONAI is an optional extra
        print(f"MONAI skipped: {exc}")
    else:
        low, high = LEVEL - WIDTH / 2, LEVEL + WIDTH / 2
        same = Compose([ScaleIntensityRange(a_min=low, a_max=high, b_min=0.0, b_max=1.0, clip=True),
                        ScaleIntensity(minv=0.0, maxv=1.0), NormalizeIntensity()])
        short = Compose([ScaleIntensityRange(a_min=low, a_max=high, b_min=0.0, b_max=1.0, clip=True),
                         NormalizeIntensity()])
        tensor = torch.from_numpy(ct)[None]
        fns["MONAI ScaleIntensityRange+ScaleIntensity+NormalizeIntensity"] = lambda: same(tensor)
        fns["MONAI ScaleIntensityRange+NormalizeIntensity"] = lambda: short(tensor)

    results, outs = timed(fns, args.n)
    t_fused = results["fused (torch, cpu)"]
    width = max(len(k) for k in results)
    for name, seconds in results.items():
        print(f"{name:<{width}}  {seconds * 1e3:8.1f} ms  {seconds / t_fused:5.2f} x fused")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    f, u = np.asarray(outs["fused (torch, cpu)"]), np.asarray(outs["unfused medasl.ops"])
    print(f"max |fused - unfused| / output range = {np.abs(f - u).max() / np.ptp(u):.2e} (dtype {f.dtype})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
