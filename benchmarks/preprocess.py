"""How fast is one CT pre-processing chain in medasl, MONAI, TorchIO and hand-fused torch?

The chain of issue 3: a 512x512x160 int16 CT at 0.7x0.7x2.5 mm, resampled to
1.5x1.5x2.5 mm, windowed to [-100, 240] HU (level 70, width 340), rescaled to [0, 1],
z-scored, cropped/padded to 256x256x160, randomly flipped and randomly rotated by up to
10 degrees. Every implementation runs in this one process on the same synthetic volume
(NumPy, fixed seed: air -1000 HU, soft tissue ~40 HU with noise, bone 700 HU); loading
from disk is left out so that only the transforms are compared.

    python benchmarks/preprocess.py            # N = 5 volumes per implementation
    python benchmarks/preprocess.py --n 3
    python benchmarks/preprocess.py --only medasl,torch-fused

Implementations: medasl (the medasl.ops functions called in sequence: this measures
medasl's operator implementations; what `medasc run`'s executor and cache add on top is
measured by benchmarks/cache_overhead.py, about 2% of a run), medasl with its spatial
steps fused (medasl/runtime/fused_spatial.py, as the spatial-fusion pass runs them),
MONAI Compose eager and lazy, TorchIO, and a hand-fused torch version (one affine for
resample + crop/pad + flip + rotate, one grid_sample, one intensity pass), the
"hardware" reference the later optimizer issue aims at. A library that cannot be
imported is skipped with a message.

Reported: median seconds per volume (one warm-up volume first, not counted), and peak
memory as the peak resident set size above the level before the implementation started,
sampled every 2 ms from /proc/self/statm by a thread (tracemalloc does not see torch's or
SimpleITK's allocations, and ru_maxrss is a process-wide high-water mark that a one-process
benchmark cannot reset; its increase is printed too, for what it is worth). Goals (issue
3, printed, not asserted): medasl not slower than MONAI eager.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import resource
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SHAPE_ZYX = (160, 512, 512)
SPACING_IN = (0.7, 0.7, 2.5)  # (x, y, z) mm
SPACING_OUT = (1.5, 1.5, 2.5)
WINDOW_LOW, WINDOW_HIGH = -100.0, 240.0
LEVEL, WIDTH = (WINDOW_LOW + WINDOW_HIGH) / 2.0, WINDOW_HIGH - WINDOW_LOW  # 70, 340
SIZE_OUT = (256, 256, 160)  # (x, y, z)
MAX_ANGLE = 10.0  # degrees, about each axis
SEED = 1234

NOTES = [
    "medasl: medasl.ops.pre/aug called directly in sequence on a Volume; this measures medasl's operator "
    "implementations (SimpleITK resampling, NumPy intensity); the executor and cache add about 2% on top "
    "(benchmarks/cache_overhead.py).",
    "Loading is excluded everywhere: every implementation starts from the same in-memory int16 array.",
    "Flip and rotate run with probability 1 everywhere (the 'random' part is the drawn angles), so every volume "
    "does the same work; flip is about the x axis.",
    "Rotation: medasl, TorchIO and torch-fused draw three angles in [-10, 10] degrees and rotate about the grid "
    "centre in physical (mm) space; MONAI's RandRotate rotates in voxel-index space (ignores the 1.5x1.5x2.5 "
    "spacing). Each library draws its own angles (same seed, different generators).",
    "Fill value for padding and rotation: image minimum in medasl, TorchIO ('minimum') and torch-fused (input "
    "minimum, HU); MONAI pads with 0 (ResizeWithPadOrCrop) and rotates with zeros padding, i.e. the mean after "
    "z-scoring.",
    "MONAI runs with its defaults: Spacing resamples in float64 (dtype default), the rest in float32. MONAI lazy: "
    "the intensity transforms between Spacing and the crop are not lazy, so lazy mode fuses only "
    "crop/pad + flip + rotate into one resampling (Spacing is applied before the window).",
    "torch-fused: the four spatial steps become one affine and one trilinear grid_sample of the raw HU (one "
    "interpolation instead of medasl's two); window, rescale and z-score are then one intensity pass on the "
    "256x256x160 output. Differences: the window clips after interpolation instead of before, z-score statistics "
    "are taken over the padded and rotated output instead of the resampled volume, and rescale is folded away "
    "(z-score cancels any positive affine map).",
    "medasl, spatial steps fused: what the spatial-fusion pass (issue 9) makes of this chain: resample alone is "
    "one fused_spatial call (in-plane, so 2-D sampling per slice), window/rescale/z-score are the medasl.ops "
    "functions, and crop/pad + flip + rotate are a second fused_spatial call (one trilinear sampling with torch "
    "instead of SimpleITK's one; crop and flip are folded into it). Same semantics as the `medasl` row except "
    "one interpolation per fused run; each random step has its own generator, so the angles differ.",
    "TorchIO: Resample (SimpleITK, linear), Clamp + RescaleIntensity(in_min_max=window) for the window, "
    "RescaleIntensity, ZNormalization, CropOrPad, RandomFlip, RandomAffine(scales=0, degrees=10).",
]


# ===== input ===================================================================================


def synthetic_ct(seed: int = SEED) -> np.ndarray:
    """A (z, y, x) int16 CT: air -1000 HU, an elliptic body of ~40 HU with noise (sd 20), a
    vertebra-like bone cylinder and two rib-like rods of 700 HU, a lower-density lung pair."""
    rng = np.random.default_rng(seed)
    nz, ny, nx = SHAPE_ZYX
    y, x = np.mgrid[0:ny, 0:nx].astype(np.float32)
    cy, cx = ny / 2.0, nx / 2.0
    body = ((x - cx) / 210.0) ** 2 + ((y - cy) / 150.0) ** 2 <= 1.0
    lungs = ((((x - cx + 90) / 60.0) ** 2 + ((y - cy + 10) / 80.0) ** 2) <= 1.0) | (
        (((x - cx - 90) / 60.0) ** 2 + ((y - cy + 10) / 80.0) ** 2) <= 1.0)
    bone = (((x - cx) ** 2 + (y - cy - 100) ** 2) <= 25.0**2) | (
        (np.abs(y - cy + 120) < 6) & (np.abs(np.abs(x - cx) - 120) < 40))
    slice_hu = np.full((ny, nx), -1000.0, dtype=np.float32)
    slice_hu[body] = 40.0
    slice_hu[lungs] = -850.0
    slice_hu[bone] = 700.0
    vol = np.broadcast_to(slice_hu, SHAPE_ZYX).copy()
    noise = rng.standard_normal(SHAPE_ZYX, dtype=np.float32) * np.float32(20.0)
    vol += noise * body  # noise inside the body only, air stays exactly -1000
    return np.clip(np.rint(vol), -1024, 3071).astype(np.int16)


# ===== memory sampling ==========================================================================


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux: fall back to the high-water mark
        return _maxrss_bytes()


def _maxrss_bytes() -> int:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024


class PeakRss:
    """Peak resident set size while inside the `with`, sampled by a thread every 2 ms."""

    def __init__(self, interval: float = 0.002) -> None:
        self.interval = interval
        self.base = self.peak = 0
        self.maxrss_before = self.maxrss_after = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(self.interval)

    def __enter__(self) -> PeakRss:
        gc.collect()
        self.base = self.peak = _rss_bytes()
        self.maxrss_before = _maxrss_bytes()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())
        self.maxrss_after = _maxrss_bytes()

    @property
    def delta(self) -> int:
        return self.peak - self.base

    @property
    def maxrss_delta(self) -> int:
        return self.maxrss_after - self.maxrss_before


# ===== implementations ==========================================================================
# Each factory imports its library and returns a function volume -> output (any array-like), or
# raises ImportError. The factory's own set-up (imports, building a Compose) is not timed.


def make_medasl(ct: np.ndarray) -> Callable[[int], object]:
    from medasl.ops import aug, pre
    from medasl.runtime.values import Volume

    def run(i: int) -> object:
        rng = np.random.default_rng(SEED + i)
        v = Volume(ct, SPACING_IN, (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1), kind="image", modality="CT")
        v = pre.resample(v, spacing=SPACING_OUT, interp="linear")
        v = pre.window(v, level=LEVEL, width=WIDTH)
        v = pre.rescale(v, low=0.0, high=1.0)
        v = pre.zscore(v)
        v = pre.crop_or_pad(v, size=SIZE_OUT)
        v, _ = aug.flip(v, axis=0, p=1.0, rng=rng)
        v, _ = aug.rotate(v, angle=MAX_ANGLE, p=1.0, rng=rng)
        return v.array  # (z, y, x)

    return run


def make_medasl_o2_spatial(ct: np.ndarray) -> Callable[[int], object]:
    """The chain as the spatial-fusion pass (issue 9) runs it: each run of consecutive
    spatial steps is one `fused_spatial` call (one sampling with torch), the intensity
    steps between them are the medasl.ops functions as in the `medasl` row. Here that is
    resample alone (in-plane only: sampled in 2-D per slice), then window / rescale /
    z-score, then crop_or_pad + flip + rotate as one sampling."""
    from medasl.ops import pre
    from medasl.runtime.fused_spatial import SpatialStep, fused_spatial
    from medasl.runtime.values import Volume

    resample = [SpatialStep("resample", {"spacing": SPACING_OUT, "interp": "linear"})]

    def run(i: int) -> object:
        v = Volume(ct, SPACING_IN, (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1), kind="image", modality="CT")
        v, _ = fused_spatial(v, resample)
        v = pre.window(v, level=LEVEL, width=WIDTH)
        v = pre.rescale(v, low=0.0, high=1.0)
        v = pre.zscore(v)
        # each random step has its generator (as the executor seeds each node), so the
        # angles differ from the `medasl` row's, which draws flip and rotate from one
        augment = [SpatialStep("crop_or_pad", {"size": SIZE_OUT}),
                   SpatialStep("flip", {"axis": 0, "p": 1.0}, (SEED + i, 0)),
                   SpatialStep("rotate", {"angle": MAX_ANGLE, "p": 1.0}, (SEED + i, 1))]
        v, _ = fused_spatial(v, augment)
        return v.array  # (z, y, x)

    return run


def _monai(ct: np.ndarray, lazy: bool) -> Callable[[int], object]:
    import torch
    from monai.data import MetaTensor
    from monai.transforms import (
        Compose,
        NormalizeIntensity,
        RandFlip,
        RandRotate,
        ResizeWithPadOrCrop,
        ScaleIntensity,
        ScaleIntensityRange,
        Spacing,
    )

    r = math.radians(MAX_ANGLE)
    chain = Compose([
        Spacing(pixdim=SPACING_OUT, mode="bilinear"),
        ScaleIntensityRange(a_min=WINDOW_LOW, a_max=WINDOW_HIGH, b_min=0.0, b_max=1.0, clip=True),
        ScaleIntensity(minv=0.0, maxv=1.0),
        NormalizeIntensity(),
        ResizeWithPadOrCrop(spatial_size=SIZE_OUT),
        RandFlip(prob=1.0, spatial_axis=0),
        RandRotate(range_x=r, range_y=r, range_z=r, prob=1.0, keep_size=True, mode="bilinear", padding_mode="zeros"),
    ], lazy=lazy)
    affine = torch.diag(torch.tensor([*SPACING_IN, 1.0], dtype=torch.float64))
    xyz = np.ascontiguousarray(ct.transpose(2, 1, 0))[None]  # MONAI: channel first, (x, y, z)

    def run(i: int) -> object:
        chain.set_random_state(seed=SEED + i)
        img = MetaTensor(torch.from_numpy(xyz.copy()), affine=affine.clone())
        return chain(img)

    return run


def make_monai_eager(ct: np.ndarray) -> Callable[[int], object]:
    return _monai(ct, lazy=False)


def make_monai_lazy(ct: np.ndarray) -> Callable[[int], object]:
    return _monai(ct, lazy=True)


def make_torchio(ct: np.ndarray) -> Callable[[int], object]:
    import torch
    import torchio as tio

    chain = tio.Compose([
        tio.Resample(SPACING_OUT, image_interpolation="linear"),
        tio.Clamp(out_min=WINDOW_LOW, out_max=WINDOW_HIGH),
        tio.RescaleIntensity(out_min_max=(0.0, 1.0), in_min_max=(WINDOW_LOW, WINDOW_HIGH)),
        tio.RescaleIntensity(out_min_max=(0.0, 1.0)),
        tio.ZNormalization(),
        tio.CropOrPad(SIZE_OUT, padding_mode="minimum"),
        tio.RandomFlip(axes=(0,), flip_probability=1.0),
        tio.RandomAffine(scales=0.0, degrees=MAX_ANGLE, translation=0.0, image_interpolation="linear",
                         default_pad_value="minimum", p=1.0),
    ])
    affine = np.diag([*SPACING_IN, 1.0])
    xyz = np.ascontiguousarray(ct.transpose(2, 1, 0))[None]

    def run(i: int) -> object:
        torch.manual_seed(SEED + i)
        subject = tio.Subject(ct=tio.ScalarImage(tensor=torch.from_numpy(xyz.copy()), affine=affine))
        return chain(subject)["ct"].data

    return run


def _euler_zxy(ax: float, ay: float, az: float) -> np.ndarray:
    """The matrix of SimpleITK's Euler3DTransform (ComputeZYX off: R = Rz Rx Ry), radians."""
    cx, sx, cy, sy, cz, sz = math.cos(ax), math.sin(ax), math.cos(ay), math.sin(ay), math.cos(az), math.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ rx @ ry


def fused_theta(angles_deg: np.ndarray, flip_x: bool = True) -> np.ndarray:
    """The 3x4 map from output to input normalised coordinates (align_corners=True, (x, y, z))
    for resample -> centred crop/pad -> flip x -> rotate about the centre (physical space)."""
    n_in = np.array([SHAPE_ZYX[2], SHAPE_ZYX[1], SHAPE_ZYX[0]], dtype=float)  # (x, y, z)
    s_in, s_out = np.array(SPACING_IN), np.array(SPACING_OUT)
    n_res = np.array([max(1, math.ceil(round(n * a / b, 6))) for n, a, b in zip(n_in, s_in, s_out)])
    n_out = np.array(SIZE_OUT, dtype=float)
    start = np.array([n // 2 - m // 2 if n >= m else -((m - n) // 2) for n, m in zip(n_res.astype(int), SIZE_OUT)])

    def hom(m: np.ndarray, t: np.ndarray) -> np.ndarray:
        a = np.eye(4)
        a[:3, :3], a[:3, 3] = m, t
        return a

    centre = (n_out - 1) / 2.0
    r = _euler_zxy(*np.radians(angles_deg))
    # output index -> index before the rotation: S^-1 R S (p - c) + c
    rot = hom(np.diag(1 / s_out) @ r @ np.diag(s_out), centre - np.diag(1 / s_out) @ r @ np.diag(s_out) @ centre)
    flip = hom(np.diag([-1.0, 1.0, 1.0]), np.array([n_out[0] - 1, 0.0, 0.0])) if flip_x else np.eye(4)
    pad = hom(np.eye(3), start.astype(float))
    res = hom(np.diag(s_out / s_in), np.zeros(3))  # same origin
    from_norm = hom(np.diag((n_out - 1) / 2.0), (n_out - 1) / 2.0)
    to_norm = hom(np.diag(2.0 / (n_in - 1)), -np.ones(3))
    return (to_norm @ res @ pad @ flip @ rot @ from_norm)[:3]


def make_torch_fused(ct: np.ndarray) -> Callable[[int], object]:
    import torch
    import torch.nn.functional as F  # noqa: N812 (the alias torch documents)

    src = torch.from_numpy(ct)

    def run(i: int) -> object:
        rng = np.random.default_rng(SEED + i)
        angles = rng.uniform(-MAX_ANGLE, MAX_ANGLE, size=3)
        with torch.inference_mode():
            lo = float(src.min())
            x = (src.to(torch.float32) - lo)[None, None]  # fill 0 here = the input minimum
            theta = torch.from_numpy(fused_theta(angles)).to(torch.float32)[None]
            grid = F.affine_grid(theta, [1, 1, SIZE_OUT[2], SIZE_OUT[1], SIZE_OUT[0]], align_corners=True)
            y = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)[0, 0]
            # one intensity pass: window (rescale to [0, 1] is folded into the z-score), z-score
            y.add_(lo - WINDOW_LOW).clamp_(0.0, WIDTH).div_(WIDTH)
            std, mean = torch.std_mean(y, correction=0)
            y.sub_(mean).div_(std if float(std) > 0 else 1.0)
        return y  # (z, y, x)

    return run


IMPLEMENTATIONS: dict[str, tuple[str, Callable[[np.ndarray], Callable[[int], object]]]] = {
    "medasl": ("medasl ops (not the executor)", make_medasl),
    "medasl-O2-spatial": ("medasl, spatial steps fused", make_medasl_o2_spatial),
    "monai-eager": ("MONAI Compose eager", make_monai_eager),
    "monai-lazy": ("MONAI Compose lazy", make_monai_lazy),
    "torchio": ("TorchIO", make_torchio),
    "torch-fused": ("hand-fused torch", make_torch_fused),
}


# ===== running ==================================================================================


@dataclass
class Result:
    name: str
    label: str
    times: list[float] = field(default_factory=list)
    peak: int = 0
    maxrss: int = 0
    shape: tuple[int, ...] = ()
    stats: tuple[float, float] = (0.0, 0.0)
    skipped: str | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.times)


def _as_numpy(out: object) -> np.ndarray:
    a = out.detach().cpu().numpy() if hasattr(out, "detach") else np.asarray(out)
    return np.squeeze(a)


def bench(name: str, ct: np.ndarray, n: int) -> Result:
    label, factory = IMPLEMENTATIONS[name]
    res = Result(name, label)
    try:
        run = factory(ct)
    except ImportError as exc:
        res.skipped = f"not importable ({exc})"
        return res
    with PeakRss() as mem:
        out = run(-1)  # warm-up: lazy imports, caches, thread pools
        del out
        for i in range(n):
            t0 = time.perf_counter()
            out = run(i)
            res.times.append(time.perf_counter() - t0)
            if i < n - 1:
                del out
    a = _as_numpy(out)
    res.shape, res.stats = a.shape, (float(a.mean()), float(a.std()))
    res.peak, res.maxrss = mem.delta, mem.maxrss_delta
    del out, a
    gc.collect()
    return res


def _mib(b: int) -> str:
    return f"{b / 2**20:8.0f}"


def report(results: list[Result], n: int) -> None:
    base = next((r for r in results if r.name == "monai-eager" and not r.skipped), None)
    print()
    print(f"{'implementation':32} {'s/volume':>9} {'min':>7} {'max':>7} {'x MONAI eager':>13} "
          f"{'peak RSS MiB':>12} {'maxrss+ MiB':>11}  output (mean, std)")
    for r in results:
        if r.skipped:
            print(f"{r.label:32} skipped: {r.skipped}")
            continue
        ratio = f"{r.median / base.median:13.2f}" if base else f"{'n/a':>13}"
        print(f"{r.label:32} {r.median:9.3f} {min(r.times):7.3f} {max(r.times):7.3f} {ratio} "
              f"{_mib(r.peak):>12} {_mib(r.maxrss):>11}  {r.shape} ({r.stats[0]:+.3f}, {r.stats[1]:.3f})")
    print()
    print(f"s/volume: median of {n} volumes after one warm-up volume (min and max beside it). "
          "x MONAI eager: median time / MONAI eager's median time (< 1 is faster).")
    print("peak RSS: peak resident set size above the level before the implementation started, sampled every "
          "2 ms from /proc/self/statm (includes torch and SimpleITK buffers, which tracemalloc does not see).")
    print("maxrss+: increase of getrusage ru_maxrss (a process-wide high-water mark: 0 when an earlier "
          "implementation already reached a higher peak; only the first rows are meaningful).")
    medasl = next((r for r in results if r.name == "medasl" and not r.skipped), None)
    if medasl and base:
        verdict = "met" if medasl.median <= base.median else "NOT met"
        print(f"Goal (issue 3): medasl not slower than MONAI eager: {verdict} "
              f"({medasl.median:.3f} s vs {base.median:.3f} s).")
    print()
    print("Notes on equivalence:")
    for note in NOTES:
        print(f"  - {note}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=5, help="volumes per implementation (default 5)")
    ap.add_argument("--only", default=",".join(IMPLEMENTATIONS),
                    help=f"comma-separated subset of {', '.join(IMPLEMENTATIONS)}")
    args = ap.parse_args(argv)
    names = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in names if s not in IMPLEMENTATIONS]
    if unknown or args.n < 1:
        ap.error(f"unknown implementation(s): {', '.join(unknown)}" if unknown else "--n must be at least 1")

    t0 = time.perf_counter()
    ct = synthetic_ct()
    print(f"input: synthetic int16 CT, array (z, y, x) = {ct.shape}, spacing (x, y, z) = {SPACING_IN} mm, "
          f"HU range [{ct.min()}, {ct.max()}], made in {time.perf_counter() - t0:.1f} s (seed {SEED})")
    print(f"chain: resample to {SPACING_OUT} mm -> window [{WINDOW_LOW:g}, {WINDOW_HIGH:g}] (level {LEVEL:g}, "
          f"width {WIDTH:g}) -> rescale [0, 1] -> z-score -> crop/pad to {SIZE_OUT} -> flip x -> "
          f"rotate up to {MAX_ANGLE:g} deg")
    try:
        import torch

        threads = f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    except ImportError:
        threads = "torch not importable"
    print(f"machine: {os.cpu_count()} CPUs, {threads}, Python {sys.version.split()[0]}")
    print("NOTE: the medasl row measures medasl's operator implementations called directly in sequence; "
          "what `medasc run` adds on top is measured by benchmarks/cache_overhead.py.")

    results = []
    for name in names:
        print(f"running {IMPLEMENTATIONS[name][0]} ...", flush=True)
        results.append(bench(name, ct, args.n))
        r = results[-1]
        print(f"  {'skipped: ' + r.skipped if r.skipped else f'{r.median:.3f} s/volume'}", flush=True)
    report(results, args.n)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
