"""How fast is one CT pre-processing chain in medasl (-O0 and -O2), MONAI, TorchIO and
hand-fused torch, and how fast are whole runs from files?

The chain of issue 3: a 512x512x160 int16 CT at 0.7x0.7x2.5 mm, resampled to
1.5x1.5x2.5 mm, windowed to [-100, 240] HU (level 70, width 340), rescaled to [0, 1],
z-scored, cropped/padded to 256x256x160, randomly flipped and randomly rotated by up to
10 degrees.

Part 1, transforms: every implementation runs in this one process on the same
synthetic volume (NumPy, fixed seed: air -1000 HU, soft tissue ~40 HU with noise, bone
700 HU); loading from disk is left out so that only the transforms are compared.
medasl runs the chain written as a medas pipeline, compiled at -O0 (the operators as
written) and at -O2 (the passes' fused steps), with the executor's own per-case code
(medasl.runtime.apply); MONAI Compose eager and lazy; TorchIO; and a hand-fused torch
version (one affine for resample + crop/pad + flip + rotate, one grid_sample, one
intensity pass). A library that cannot be imported is skipped with a message.

Part 2, whole runs (`--whole-runs K`): K such CTs written as uncompressed NIfTI;
`medasc run -O0` and `-O2` of the pipeline (reading, caching, writing NIfTI; a fresh
cache each time) against a MONAI script that loads, transforms and saves the same
files, each in a fresh interpreter, wall time including start-up.

    python benchmarks/preprocess.py                    # N = 5 volumes per implementation
    python benchmarks/preprocess.py --n 3 --only medasl-O0,medasl-O2,monai-eager
    python benchmarks/preprocess.py --n 0 --whole-runs 4   # only part 2
    python benchmarks/preprocess.py --n 0 --small 3        # only part 3
    python benchmarks/preprocess.py --rotation in-plane    # rotate about the slice axis only

`--rotation in-plane` rotates about the slice (z) axis only, in every implementation
(medasl `rotate(in_plane=true)`, MONAI `range_x` only, TorchIO `degrees` about the third
axis), as nnU-Net does for anisotropic scans like this one (2.5 mm slices, 0.7 mm
pixels): then no step moves voxels between slices, and medasl -O2 samples every slice in
2-D. With `3d` (the default) the rotation turns about all three axes and one 3-D sampling
of the 256x256x160 output is unavoidable.

Part 3, small volumes (`--small R`): the training chain of examples/preprocess.medas on
its 16 generated 64x64x48 phantoms (image and label together), per case, medasl -O0
and -O2 against MONAI's dictionary transforms, interleaved.

Reported: median seconds per volume (one warm-up volume first, not counted), and peak
memory as the peak resident set size above the level before the implementation started,
sampled every 2 ms from /proc/self/statm by a thread (tracemalloc does not see torch's or
SimpleITK's allocations, and ru_maxrss is a process-wide high-water mark that a one-process
benchmark cannot reset; its increase is printed too, for what it is worth). Goals (issue
9, printed, not asserted): -O2 at least 8x faster than MONAI eager and 5x faster than
MONAI lazy, never slower than -O0; whole runs at least 5x faster than the MONAI script.
Check `uptime` first: the figures mean something only on an idle machine.
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
IN_PLANE = False  # --rotation in-plane: rotate about the slice axis only (set by main before anything runs)

NOTES = [
    "medasl -O0 / -O2: the chain written as a medas pipeline (pipeline()), compiled at that level and run case by "
    "case with the executor's own code (medasl.runtime.apply), without the cache: -O0 calls the operators as "
    "written (SimpleITK resampling, NumPy intensity), -O2 runs the fused steps the passes make (print them with "
    "`medasc compile --emit ir -O2`); the cache adds about 2% on top (benchmarks/cache_overhead.py). Random "
    "steps draw from the executor's seeds, so the angles differ from the other libraries'.",
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


def pipeline() -> str:
    """The chain as a medas pipeline: what `medasc run` compiles (the whole-run part runs it)."""
    chain = (f"resample(spacing=({SPACING_OUT[0]}, {SPACING_OUT[1]}, {SPACING_OUT[2]}) mm, interp=linear) "
             f"|> window(level={LEVEL:g}, width={WIDTH:g}) |> rescale(0, 1) |> zscore "
             f"|> crop_or_pad(({SIZE_OUT[0]}, {SIZE_OUT[1]}, {SIZE_OUT[2]})) |> flip(axis=0, p=1.0) "
             f"|> rotate(angle={MAX_ANGLE:g} deg, p=1.0{', in_plane=true' if IN_PLANE else ''})")
    return f"""import std.io, std.pre, std.aug
pipeline bench {{
  cases = images("in", "*.nii") as Dataset<Image[3, CT]>
  prepared = cases |> {chain}
  written = write_nifti(prepared, "out/*.nii")
}}
"""


def rotation_ranges() -> tuple[float, float, float]:
    """MONAI's RandRotate ranges in radians: range_x turns in the plane of the first two
    spatial axes (x, y here), i.e. about z."""
    r = math.radians(MAX_ANGLE)
    return (r, 0.0, 0.0) if IN_PLANE else (r, r, r)


def compiled_plan(level: int) -> object:
    """The plan `medasc run -O<level>` makes of pipeline()."""
    from medasl.runtime.session import plans
    from medasl.semantics.checker import check_source
    from medasl.source import SourceFile

    result = check_source(SourceFile("bench.medas", pipeline()))
    assert not result.diagnostics.has_errors, [d.message for d in result.diagnostics.errors]
    (plan,) = plans(result.graphs, {}, level)
    return plan


def _make_medasl(level: int) -> Callable[[np.ndarray], Callable[[int], object]]:
    """The chain through the executor's own code (runtime.apply: the compiled plan's
    per-case steps, the same seeds) at one -O level, without the cache."""

    def make(ct: np.ndarray) -> Callable[[int], object]:
        from medasl.runtime.apply import apply_chain
        from medasl.runtime.values import Volume

        plan = compiled_plan(level)

        def run(i: int) -> object:
            v = Volume(ct, SPACING_IN, (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1), kind="image", modality="CT")
            return apply_chain(plan, "cases", v, f"case{i:03d}", seed=SEED).value.array  # type: ignore[union-attr]

        return run

    return make


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

    rx, ry, rz = rotation_ranges()
    chain = Compose([
        Spacing(pixdim=SPACING_OUT, mode="bilinear"),
        ScaleIntensityRange(a_min=WINDOW_LOW, a_max=WINDOW_HIGH, b_min=0.0, b_max=1.0, clip=True),
        ScaleIntensity(minv=0.0, maxv=1.0),
        NormalizeIntensity(),
        ResizeWithPadOrCrop(spatial_size=SIZE_OUT),
        RandFlip(prob=1.0, spatial_axis=0),
        RandRotate(range_x=rx, range_y=ry, range_z=rz, prob=1.0, keep_size=True, mode="bilinear",
                   padding_mode="zeros"),
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
        tio.RandomAffine(scales=0.0, degrees=(0, 0, 0, 0, -MAX_ANGLE, MAX_ANGLE) if IN_PLANE else MAX_ANGLE,
                         translation=0.0, image_interpolation="linear",
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
        angles = np.array([0.0, 0.0, rng.uniform(-MAX_ANGLE, MAX_ANGLE)]) if IN_PLANE else rng.uniform(
            -MAX_ANGLE, MAX_ANGLE, size=3)
        with torch.inference_mode():
            lo = float(src.min())
            x = (src.to(torch.float32) - lo)[None, None]  # fill 0 here = the input minimum
            theta = torch.from_numpy(fused_theta(angles)).to(torch.float32)[None]
            if IN_PLANE:  # every output slice is its input slice rotated: 2-D sampling per slice
                assert SIZE_OUT[2] == SHAPE_ZYX[0] and abs(float(theta[0, 2, 2]) - 1.0) < 1e-6
                planes = x[0].permute(1, 0, 2, 3)  # (slices, 1, y, x)
                grid = F.affine_grid(theta[:, :2][:, :, [0, 1, 3]].expand(SIZE_OUT[2], 2, 3),
                                     [SIZE_OUT[2], 1, SIZE_OUT[1], SIZE_OUT[0]], align_corners=True)
                y = F.grid_sample(planes, grid, mode="bilinear", padding_mode="zeros", align_corners=True)[:, 0]
            else:
                grid = F.affine_grid(theta, [1, 1, SIZE_OUT[2], SIZE_OUT[1], SIZE_OUT[0]], align_corners=True)
                y = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)[0, 0]
            # one intensity pass: window (rescale to [0, 1] is folded into the z-score), z-score
            y.add_(lo - WINDOW_LOW).clamp_(0.0, WIDTH).div_(WIDTH)
            std, mean = torch.std_mean(y, correction=0)
            y.sub_(mean).div_(std if float(std) > 0 else 1.0)
        return y  # (z, y, x)

    return run


IMPLEMENTATIONS: dict[str, tuple[str, Callable[[np.ndarray], Callable[[int], object]]]] = {
    "medasl-O0": ("medasl -O0 (operators as written)", _make_medasl(0)),
    "medasl-O2": ("medasl -O2 (fused)", _make_medasl(2)),
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
    by_name = {r.name: r for r in results if not r.skipped}
    o0, o2, lazy = by_name.get("medasl-O0"), by_name.get("medasl-O2"), by_name.get("monai-lazy")
    goals = [(o2, base, 8.0, "-O2 at least 8x faster than MONAI eager"),
             (o2, lazy, 5.0, "-O2 at least 5x faster than MONAI lazy"),
             (o2, o0, 1.0, "-O2 not slower than -O0")]
    for ours, theirs, factor, text in goals:
        if ours and theirs:
            speedup = theirs.median / ours.median
            print(f"Goal (issue 9): {text}: {'met' if speedup >= factor else 'NOT met'} ({speedup:.2f}x)")
    print()
    print("Notes on equivalence:")
    for note in NOTES:
        print(f"  - {note}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=5, help="volumes per implementation (default 5)")
    ap.add_argument("--whole-runs", type=int, default=0, metavar="K",
                    help="also time whole runs from K NIfTI files: medasc run -O0/-O2 against a MONAI script")
    ap.add_argument("--small", type=int, default=0, metavar="R",
                    help="also time the chain of examples/preprocess.medas on its 64^3 phantoms, R passes")
    ap.add_argument("--rotation", choices=("3d", "in-plane"), default="3d",
                    help="rotate about all three axes (default) or about the slice axis only, everywhere")
    ap.add_argument("--only", default=",".join(IMPLEMENTATIONS),
                    help=f"comma-separated subset of {', '.join(IMPLEMENTATIONS)}")
    args = ap.parse_args(argv)
    global IN_PLANE
    IN_PLANE = args.rotation == "in-plane"
    names = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in names if s not in IMPLEMENTATIONS]
    if unknown or args.n < 0:
        ap.error(f"unknown implementation(s): {', '.join(unknown)}" if unknown else "--n must be at least 0")

    t0 = time.perf_counter()
    ct = synthetic_ct()
    print(f"input: synthetic int16 CT, array (z, y, x) = {ct.shape}, spacing (x, y, z) = {SPACING_IN} mm, "
          f"HU range [{ct.min()}, {ct.max()}], made in {time.perf_counter() - t0:.1f} s (seed {SEED})")
    print(f"chain: resample to {SPACING_OUT} mm -> window [{WINDOW_LOW:g}, {WINDOW_HIGH:g}] (level {LEVEL:g}, "
          f"width {WIDTH:g}) -> rescale [0, 1] -> z-score -> crop/pad to {SIZE_OUT} -> flip x -> "
          f"rotate up to {MAX_ANGLE:g} deg {'about the slice axis' if IN_PLANE else 'about each axis'}")
    try:
        import torch

        threads = f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    except ImportError:
        threads = "torch not importable"
    print(f"machine: {os.cpu_count()} CPUs, {threads}, Python {sys.version.split()[0]}")
    print(f"load average: {' '.join(f'{v:.2f}' for v in os.getloadavg())} (1, 5, 15 min)")

    results = []
    for name in names if args.n > 0 else ():
        print(f"running {IMPLEMENTATIONS[name][0]} ...", flush=True)
        results.append(bench(name, ct, args.n))
        r = results[-1]
        print(f"  {'skipped: ' + r.skipped if r.skipped else f'{r.median:.3f} s/volume'}", flush=True)
    if results:
        report(results, args.n)
    if args.whole_runs:
        whole_runs(ct, args.whole_runs)
    if args.small:
        small_volumes(args.small)
    return 0


# ===== part 3: small volumes ====================================================================

SMALL_EXAMPLE = ROOT / "examples" / "preprocess.medas"


def small_volumes(repeats: int) -> None:
    """Part 3: the training chain of examples/preprocess.medas (resample 2 mm, window,
    rescale, crop/pad 64^3, random flip, rotate and noise; image and label together) on
    its 16 generated 64x64x48 phantoms, medasl -O0 / -O2 against MONAI's dictionary
    transforms, per case, interleaved: per-case overheads dominate at this size."""
    import statistics

    import torch
    from monai.data import MetaTensor
    from monai.transforms import (
        Compose,
        RandFlipd,
        RandGaussianNoised,
        RandRotated,
        ResizeWithPadOrCropd,
        ScaleIntensityd,
        ScaleIntensityRanged,
        Spacingd,
    )

    from medasl.ops import io
    from medasl.runtime.apply import apply_chain
    from medasl.runtime.session import plans
    from medasl.semantics.checker import check_source
    from medasl.source import SourceFile

    cases = io.phantom(cases=16, seed=7)
    result = check_source(SourceFile.read(SMALL_EXAMPLE))
    compiled = {level: plans(result.graphs, {}, level)[0] for level in (0, 2)}
    r = math.radians(10.0)
    monai = Compose([
        Spacingd(keys=("image", "label"), pixdim=(2.0, 2.0, 2.0), mode=("bilinear", "nearest")),
        ScaleIntensityRanged(keys="image", a_min=-160.0, a_max=240.0, b_min=0.0, b_max=1.0, clip=True),
        ScaleIntensityd(keys="image", minv=0.0, maxv=1.0),
        ResizeWithPadOrCropd(keys=("image", "label"), spatial_size=(64, 64, 64)),
        RandFlipd(keys=("image", "label"), prob=0.5, spatial_axis=0),
        RandRotated(keys=("image", "label"), range_x=r, range_y=r, range_z=r, prob=0.5, mode=("bilinear", "nearest")),
        RandGaussianNoised(keys="image", prob=0.5, std=0.02),
    ])
    monai.set_random_state(seed=SEED)

    def as_monai(case: object) -> dict[str, object]:
        pair = case.value  # type: ignore[attr-defined]
        affine = torch.diag(torch.tensor([*pair.input.spacing, 1.0], dtype=torch.float64))
        return {k: MetaTensor(torch.from_numpy(np.ascontiguousarray(v.array.transpose(2, 1, 0))[None].copy()),
                              affine=affine.clone()) for k, v in (("image", pair.input), ("label", pair.target))}

    runs = {
        "medasl -O0": lambda c: apply_chain(compiled[0], "folds_train", c.value, c.id),
        "medasl -O2": lambda c: apply_chain(compiled[2], "folds_train", c.value, c.id),
        "MONAI eager (dict)": lambda c: monai(as_monai(c)),
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    for run in runs.values():
        run(cases[0])  # warm-up
    for _ in range(repeats):
        for case in cases:
            for name, run in runs.items():
                clock = time.perf_counter()
                run(case)
                times[name].append(time.perf_counter() - clock)
    print()
    print(f"small volumes: the training chain of {SMALL_EXAMPLE.name} on its 16 phantoms (64x64x48, image and "
          f"label), {repeats} passes, interleaved per case")
    monai_ms = statistics.median(times["MONAI eager (dict)"]) * 1000
    for name, found in times.items():
        ms = statistics.median(found) * 1000
        print(f"  {name:20} {ms:7.2f} ms per case   {monai_ms / ms:5.2f}x MONAI's speed")
    speedup = monai_ms / (statistics.median(times["medasl -O2"]) * 1000)
    print(f"Goal (issue 9): on small volumes -O2 at least 2x faster than MONAI: {'met' if speedup >= 2 else 'NOT met'} "
          f"({speedup:.2f}x)")


# ===== part 2: whole runs from files =============================================================

MONAI_SCRIPT = """
import sys, math, glob, os
import numpy as np
import torch
from monai.transforms import (Compose, LoadImage, EnsureChannelFirst, NormalizeIntensity, RandFlip, RandRotate,
                              ResizeWithPadOrCrop, SaveImage, ScaleIntensity, ScaleIntensityRange, Spacing)
spacing, window, size, ranges, seed = {spacing}, {window}, {size}, {ranges}, {seed}
chain = Compose([
    LoadImage(image_only=True), EnsureChannelFirst(),
    Spacing(pixdim=spacing, mode="bilinear"),
    ScaleIntensityRange(a_min=window[0], a_max=window[1], b_min=0.0, b_max=1.0, clip=True),
    ScaleIntensity(minv=0.0, maxv=1.0), NormalizeIntensity(), ResizeWithPadOrCrop(spatial_size=size),
    RandFlip(prob=1.0, spatial_axis=0),
    RandRotate(range_x=ranges[0], range_y=ranges[1], range_z=ranges[2], prob=1.0, keep_size=True, mode="bilinear",
               padding_mode="zeros"),
    SaveImage(output_dir=sys.argv[2], output_postfix="", output_ext=".nii", separate_folder=False, print_log=False),
])
chain.set_random_state(seed=seed)
for path in sorted(glob.glob(os.path.join(sys.argv[1], "*.nii"))):
    chain(path)
"""


def whole_runs(ct: np.ndarray, k: int) -> None:
    """Part 2: `medasc run -O0` / `-O2` against a MONAI script, from K NIfTI files to K NIfTI files."""
    import importlib.util
    import subprocess
    import tempfile

    import SimpleITK as sitk  # noqa: N813

    if importlib.util.find_spec("nibabel") is None:
        print("whole runs skipped: MONAI reads and writes NIfTI with nibabel (pip install nibabel)")
        return

    with tempfile.TemporaryDirectory(prefix="medasl-bench-") as tmp:
        root = Path(tmp)
        (root / "in").mkdir()
        image = sitk.GetImageFromArray(ct)
        image.SetSpacing(SPACING_IN)
        for i in range(k):
            sitk.WriteImage(image, str(root / "in" / f"ct{i:02d}.nii"))  # uncompressed: reading is not gzip
        (root / "bench.medas").write_text(pipeline())
        script = root / "monai_run.py"
        script.write_text(MONAI_SCRIPT.format(spacing=SPACING_OUT, window=(WINDOW_LOW, WINDOW_HIGH), size=SIZE_OUT,
                                              ranges=rotation_ranges(), seed=SEED))
        commands = {
            "medasc run -O0": [sys.executable, "-m", "medasl.cli", "run", "bench.medas", "-O0", "--workers", "1"],
            "medasc run -O2": [sys.executable, "-m", "medasl.cli", "run", "bench.medas", "-O2", "--workers", "1"],
            "MONAI script": [sys.executable, str(script), "in", "monai-out"],
        }
        times: dict[str, float] = {}
        for name, command in commands.items():
            for folder in ("cache", "results", "monai-out"):
                subprocess.run(["rm", "-rf", str(root / folder)], check=True)
            (root / "monai-out").mkdir()
            env = {**os.environ, "MEDASL_CACHE_DIR": str(root / "cache")}
            clock = time.perf_counter()
            done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True)
            times[name] = time.perf_counter() - clock
            if done.returncode != 0:
                print(f"{name} failed:\n{done.stderr[-2000:]}")
                return
        print()
        print(f"whole runs: {k} CTs {ct.shape[::-1]} (x, y, z) from uncompressed NIfTI to NIfTI, one process each "
              "(interpreter start included), a fresh cache for medasc")
        monai = times["MONAI script"]
        for name, seconds in times.items():
            print(f"  {name:16} {seconds:7.2f} s   {monai / seconds:5.2f}x the MONAI script's speed")
        speedup = monai / times["medasc run -O2"]
        print(f"Goal (issue 9): whole runs at -O2 at least 5x faster than the MONAI script: "
              f"{'met' if speedup >= 5 else 'NOT met'} ({speedup:.2f}x)")


if __name__ == "__main__":
    raise SystemExit(main())
