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

Reported: the median seconds per volume (one warm-up call each first, not counted), the
ratio to fused, and the largest difference between fused and unfused relative to the
output range. The implementations take turns within every repetition, so that a change
in the machine's load hits them alike; the load average is printed before and after.
Check it (`uptime`) before quoting the figures.
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

SHAPE_ZYX = (160, 256, 256)
LEVEL, WIDTH = 70.0, 340.0
SEED = 1234


def synthetic_ct(seed: int = SEED) -> np.ndarray:
    """A (z, y, x) float32 CT in HU: air -1000, an elliptic body of 40 with noise (sd 20),
    two lungs of -850, a bone cylinder of 700."""
    rng = np.random.default_rng(seed)
    nz, ny, nx = SHAPE_ZYX
    y, x = np.mgrid[0:ny, 0:nx].astype(np.float32)
    cy, cx = ny / 2.0, nx / 2.0
    body = ((x - cx) / 105.0) ** 2 + ((y - cy) / 75.0) ** 2 <= 1.0
    lungs = ((((x - cx + 45) / 30.0) ** 2 + ((y - cy + 5) / 40.0) ** 2) <= 1.0) | (
        (((x - cx - 45) / 30.0) ** 2 + ((y - cy + 5) / 40.0) ** 2) <= 1.0)
    bone = ((x - cx) ** 2 + (y - cy - 50) ** 2) <= 12.0**2
    hu = np.full((ny, nx), -1000.0, dtype=np.float32)
    hu[body] = 40.0
    hu[lungs] = -850.0
    hu[bone] = 700.0
    vol = np.broadcast_to(hu, SHAPE_ZYX).copy()
    vol += rng.standard_normal(SHAPE_ZYX, dtype=np.float32) * np.float32(20.0) * body
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=9, help="timed repetitions per implementation (median reported)")
    args = parser.parse_args(argv)

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
