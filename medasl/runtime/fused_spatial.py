"""The fused spatial kernel (issue 9, "Spatial fusion"): a chain of spatial steps applied
to one case, run as ONE sampling of the original input.

Every step of the chain maps the grid before it to a grid after it (size, spacing,
origin, direction, in SimpleITK's conventions as `Volume` keeps them) and carries a map
from output voxel indices to continuous input voxel indices: an affine map (resampling,
crops, flips, reorientation and the rotate / affine / random_rescale augmentations) or,
for `elastic`, a displacement field built exactly as `medasl.ops.aug._apply_elastic`
builds it, on elastic's input grid. The maps are composed from the output back to the
original input, which is then sampled once: with torch (`grid_sample`, bilinear or
trilinear; nearest neighbour by rounding and gathering) on the run's device, or on the
CPU by one SimpleITK resampling where that gives the same result (below). Label
kinds are sampled by nearest neighbour and keep their dtype; images become float32
(float64 stays float64 when no std.pre resampling step is in the chain, as the unfused
ops do).

ITK's conventions are kept: continuous indices; a point is inside a grid when every
continuous index lies in [-0.5, n - 0.5) (ITK's IsInsideBuffer), and linear
interpolation there clamps neighbours to the buffer (edge voxels repeat); rounding for
nearest neighbour is half-up (ITK's RoundHalfIntegerUp). A voxel that the unfused chain
fills at any step (a padded crop, a rotation bringing in outside points) is filled
here too: each step's validity is checked on its own input grid, not only the original
input's, so fusing never brings back data that a crop threw away. A point in the outer
half voxel of an intermediate grid is clamped onto that grid before it is mapped further,
because unfused that step's interpolation repeats the grid's edge voxels there.

Semantics chosen where one sampling cannot reproduce the unfused chain exactly:

- Fill values: label kinds 0; images the ORIGINAL input's minimum at every step (the
  unfused ops take the minimum of each step's input, which linear interpolation or a
  crop can only raise; for CT both are the air value). Probability maps follow each
  op's own convention (std.pre fills 0, std.aug the minimum, taken as the smallest of
  the input's minimum and the fills of earlier steps that put voxels outside).
- One interpolation: values differ from the unfused chain's by the difference between
  interpolating once and several times (less blur), and labels at most on a thin band
  next to label boundaries (nearest neighbour rounds once instead of once per step).
  Next to a fill region the unfused chain blends data and fill across one voxel of the
  step that filled; here that edge is sharp.
- A Pair whose members lie on different grids is run unfused (the std.pre operators
  resample each member on its own grid; the draws are the same).
- Chains made only of index steps (crop_or_pad, crop_foreground, random_crop, flip,
  reorient) involve no interpolation at all: one exact gather (axis permutation, flips
  and a window), bit-identical to the unfused ops, dtype kept, each step's fill value
  (the minimum of that step's own input for images) reproduced exactly.

On the CPU the one sampling is done by SimpleITK's resampler wherever that gives the same
result (`_sitk_route`: no elastic step, and the fills of leading index steps agree): one
`ResampleImageFilter` with the composed map as an `AffineTransform` in index space (float64),
linear or nearest neighbour, fill = the kernel's fill, reading the input (or the window of
it that leading index steps keep) in place of a float copy; later steps' fill regions are
painted from per-row index ranges, and the few voxels in an intermediate grid's outer half
voxel (which the torch path clamps) are recomputed as the torch path computes them. Its
linear interpolation skips the neighbours with zero weight, and it needs no per-voxel
coordinate tensors: on this 2-core CPU it takes 0.25-0.9 of the unfused time on every
chain of benchmarks/spatial_fusion.py, where the torch path took 0.7-3.6 (see
`worth_fusing`). Torch samples on other devices, for elastic chains, and when
`SITK_ON_CPU` is off.

Where the composed map keeps the slice axis (z) index-aligned (in-plane resampling,
in-plane rotation, crops, flips), the volume is sampled in 2-D per slice, on a view of
the input's slices, on every device including the CPU (`_keeps_slices`): a few slices
are converted to float at a time and sampled by one thread each (`_each_in_threads`).
For the 512 x 512 x 160 CT of benchmarks/preprocess.py resampled in plane to 1.5 mm:
0.05-0.07 s, against 0.26-0.30 s for SimpleITK's 3-D resampling (2 cores).

Random steps draw with `medasl.ops.aug`'s own `_draw_*` functions, from
`np.random.default_rng(list(step.seed))`, with the grid the step would see unfused, so
the `drawn` dicts are identical to the unfused ops'.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from medasl.ops import aug, pre
from medasl.runtime.values import Boxes, Pair, Volume, carried

SPATIAL_OPS: frozenset[str] = frozenset({
    "resample", "resample_to", "reorient", "crop_or_pad", "resize", "crop_foreground",
    "flip", "rotate", "affine", "random_rescale", "elastic", "random_crop",
})
"""The operators a fused chain may contain."""

RANDOM_OPS: frozenset[str] = frozenset({"flip", "rotate", "affine", "random_rescale", "elastic", "random_crop"})
"""The std.aug operators among them (each needs `SpatialStep.seed`)."""

INDEX_OPS: frozenset[str] = frozenset({"reorient", "crop_or_pad", "crop_foreground", "flip", "random_crop"})
"""Operators that move whole voxels (no interpolation)."""

_PRE_RESAMPLING = frozenset({"resample", "resample_to", "resize"})
_AUG_RESAMPLING = frozenset({"rotate", "affine", "random_rescale", "elastic"})
NEAREST_KINDS = pre.NEAREST_KINDS

_CHUNK_VOXELS = 1 << 20  # output voxels per sampling chunk: bounds memory, and keeps the elementwise passes over
# the coordinates in cache (measured fastest of 2^16 .. 2^22 on the benchmark CT)
_SLICES_PER_BATCH = 4  # slices converted to float and sampled together in per-slice sampling (fastest of 1-32)
_ZERO = 1e-12  # composed matrix coefficients below this are rounding noise of exact zeros


@dataclass(frozen=True)
class SpatialStep:
    """One step of a fused chain: the operator, its keyword arguments as the operator in
    medasl.ops.pre / medasl.ops.aug takes them (units mm and degrees; for `resample_to`,
    `params["reference"]` is the reference Volume), and for random operators the seed
    of the generator the unfused operator would get (`np.random.default_rng(list(seed))`)."""

    op: str
    params: dict[str, object]
    seed: tuple[int, ...] | None = None


# ===== which chains are accepted ===========================================================


def _op_function(op: str) -> Callable[..., object]:
    return aug.OPERATORS[op] if op in RANDOM_OPS else pre.OPERATORS[op]


def _params(step: SpatialStep) -> dict[str, object]:
    """The step's arguments with the operator's defaults filled in (the draw and the
    geometry need every value, and the defaults must be the operator's own)."""
    sig = inspect.signature(_op_function(step.op))
    out = {name: p.default for name, p in sig.parameters.items()
           if p.default is not inspect.Parameter.empty and name != "rng"}
    out.update(step.params)
    return out


def _image_mode(steps: Sequence[SpatialStep]) -> tuple[str | None, str | None]:
    """The one interpolation images get in the fused chain ('linear' or 'nearest', None
    when no step interpolates) and, when the steps disagree, the reason it cannot be fused."""
    modes = set()
    for step in steps:
        if step.op in _AUG_RESAMPLING:
            modes.add("linear")
        elif step.op in _PRE_RESAMPLING:
            name = str(_params(step).get("interp", "auto"))
            if name == "bspline":
                return None, f"{step.op}(interp=bspline): B-spline interpolation is not fused (grid_sample has none)"
            modes.add("linear" if name in ("auto", "linear") else name)
    if len(modes) > 1:
        return None, "the steps ask for different interpolations of the image (" + ", ".join(sorted(modes)) + ")"
    return (modes.pop() if modes else None), None


def why_not_fusable(steps: Sequence[SpatialStep]) -> str | None:
    """None when `fused_spatial` accepts the chain `steps`, else why not (for the pass's
    diagnostics). Decided from the chain alone; at run time a Pair whose members are on
    different grids still falls back to the unfused ops (see `fused_spatial`)."""
    for i, step in enumerate(steps):
        if step.op not in SPATIAL_OPS:
            return f"{step.op} is not a fusable spatial operator"
        if step.op == "crop_foreground" and i > 0:
            return "crop_foreground depends on the data, so it can only be the first step of a fused chain"
        if step.op in RANDOM_OPS and step.seed is None:
            return f"{step.op} is random and needs the seed of its generator"
        if step.op == "resample_to" and not isinstance(step.params.get("reference"), Volume):
            return "resample_to needs its reference Volume"
    return _image_mode(steps)[1]


def fusable(steps: Sequence[SpatialStep]) -> bool:
    """Whether `fused_spatial` accepts the chain `steps` (see `why_not_fusable`)."""
    return why_not_fusable(steps) is None


def worth_fusing(steps: Sequence[SpatialStep], device: str = "cpu", x: Volume | Pair | None = None) -> bool:
    """Whether the fused call is expected to be at least as fast as the unfused operators
    (for a chain `fusable` accepts): on the CPU, when no step is `elastic`, and for a
    step alone only on volumes of `ALONE_VOXELS` or more (the kernel's own planning costs
    more than it saves on small ones); elsewhere always (torch on an accelerator; not
    measured here).

    Measured with benchmarks/spatial_fusion.py (2 shared CPU cores, load 2.5-3.4, median
    of 5 interleaved runs; fused / unfused seconds), on the 64x64x48 phantom pair and the
    512x512x160 CT (image, and pair with a label): index-only chains (crop_or_pad + flip
    + random_crop) 0.23-0.73; one interpolation (resample + crop_or_pad, crop_or_pad +
    flip + rotate) 0.72-0.92; two or more (resample + rotate, resample + crop_or_pad +
    flip + rotate + random_rescale) 0.44-0.91. Chains with `elastic` take the torch path
    (the SimpleITK route has no displacement field), and both are dominated by drawing
    the field, which fusing does not save: on the phantom pair elastic alone 1.05-1.20,
    resample + elastic 1.01-1.11, rotate + elastic 0.98-1.33, resample + rotate +
    elastic 1.00-1.13 over several runs; no gain, sometimes a loss, so they are left
    unfused on the CPU."""
    if str(device).split(":")[0] != "cpu":
        return True
    if len(steps) == 1 and x is not None:
        vol = x.input if isinstance(x, Pair) else x
        return vol.array.size >= ALONE_VOXELS and steps[0].op != "elastic"
    return not any(step.op == "elastic" for step in steps)


ALONE_VOXELS = 1 << 20
"""The size from which one interpolating step runs in the kernel rather than as its operator
on the CPU. Kernel / operator time for one resampling (median of 5, 2 cores under load
2.4): the 512 x 512 x 160 CT in plane to 1.5 mm 0.26 (per slice), a 256 x 256 x 80 CT in
plane 0.38, the same CT to 1.5 mm in 3-D 0.85 (one SimpleITK resampling without the
operator's cast of the input to float), a 64 x 64 x 48 phantom to 2 mm 0.96: a small
gain that its planning costs can turn into a loss under heavier load, so small volumes
keep the operator."""


# ===== grids and steps =======================================================================


@dataclass(frozen=True)
class _Grid:
    """A voxel grid: size and spacing in (x, y, z) order, origin, direction (d x d)."""

    size: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]

    @classmethod
    def of(cls, vol: Volume) -> _Grid:
        return cls(vol.shape, vol.spacing, vol.origin, vol.direction)

    @property
    def dim(self) -> int:
        return len(self.size)

    @property
    def shape_zyx(self) -> tuple[int, ...]:
        return tuple(reversed(self.size))

    def matrix(self) -> np.ndarray:
        """Homogeneous index -> physical point map."""
        d = self.dim
        m = np.eye(d + 1)
        m[:d, :d] = np.array(self.direction).reshape(d, d) * np.array(self.spacing)
        m[:d, d] = self.origin
        return m

    def point(self, index: Sequence[float]) -> tuple[float, ...]:
        """The physical point of continuous index `index`, as pre._index_to_point computes it."""
        d = np.array(self.direction).reshape(self.dim, self.dim)
        p = np.array(self.origin) + d @ (np.array(self.spacing) * np.asarray(index, dtype=float))
        return tuple(float(v) for v in p)

    def stand_in(self) -> Volume:
        """A Volume with this grid and no data (a broadcast zero), for the aug helpers
        that need only a grid (`_centre`, `_elastic_field`)."""
        return Volume(np.broadcast_to(np.zeros((), np.uint8), self.shape_zyx), self.spacing, self.origin,
                      self.direction)


@dataclass
class _Stage:
    """One step on the grid: `matrix` maps homogeneous output indices to continuous input
    indices (identity-like for a displacement stage, which adds `field` first)."""

    op: str
    grid_in: _Grid
    grid_out: _Grid
    matrix: np.ndarray
    field: np.ndarray | None = None  # (z, y, x, d) physical displacements on grid_out (= grid_in)
    index_only: bool = False
    can_fill: bool = True  # flips and reorientation are bijections of the grid: nothing to check


def _physical(grid_in: _Grid, grid_out: _Grid, transform: np.ndarray | None = None) -> np.ndarray:
    """Output index -> input index through a physical output -> input map (identity default)."""
    t = np.eye(grid_in.dim + 1) if transform is None else transform
    return np.linalg.inv(grid_in.matrix()) @ t @ grid_out.matrix()


def _sitk_affine(transform: object, dim: int) -> np.ndarray:
    """A SimpleITK affine-type transform as a homogeneous matrix, read off from the
    images of the origin and unit points (works for every affine transform class)."""
    t0 = np.array(transform.TransformPoint((0.0,) * dim))  # type: ignore[attr-defined]
    m = np.eye(dim + 1)
    for j in range(dim):
        e = [0.0] * dim
        e[j] = 1.0
        m[:dim, j] = np.array(transform.TransformPoint(tuple(e))) - t0  # type: ignore[attr-defined]
    m[:dim, dim] = t0
    return m


def _window_stage(op: str, g: _Grid, start: Sequence[int], size: Sequence[int]) -> _Stage:
    out = _Grid(tuple(int(s) for s in size), g.spacing, g.point(start), g.direction)
    m = np.eye(g.dim + 1)
    m[:g.dim, g.dim] = [int(s) for s in start]
    return _Stage(op, g, out, m, index_only=True)


def _reorient_stage(g: _Grid, to: str) -> _Stage:
    import SimpleITK as sitk  # noqa: N813 (the alias SimpleITK documents)

    code = str(to).upper()
    if len(code) != g.dim:
        raise ValueError(f"orientation {to!r} does not fit a {g.dim}-D volume")
    # DICOMOrient's choice depends on the direction only: ask it on a one-voxel image
    dummy = sitk.Image([1] * g.dim, sitk.sitkUInt8)
    dummy.SetDirection(g.direction)
    new_dir = np.array(sitk.DICOMOrient(dummy, code).GetDirection()).reshape(g.dim, g.dim)
    perm = np.rint(np.linalg.inv(np.array(g.direction).reshape(g.dim, g.dim)) @ new_dir)  # old axis j -> new i
    m = np.eye(g.dim + 1)
    m[:g.dim, :g.dim] = perm
    size, spacing, start = [], [], [0] * g.dim
    for i in range(g.dim):
        j = int(np.flatnonzero(perm[:, i])[0])
        size.append(g.size[j])
        spacing.append(g.spacing[j])
        if perm[j, i] < 0:
            start[j] = g.size[j] - 1
    m[:g.dim, g.dim] = start
    out = _Grid(tuple(size), tuple(spacing), g.point(start), tuple(float(v) for v in new_dir.ravel()))
    return _Stage("reorient", g, out, m, index_only=True, can_fill=False)


def _plan(x: Volume, steps: Sequence[SpatialStep]) -> tuple[list[_Stage], dict[int, dict]]:
    """The stages of the chain on `x`'s grid, and the draws of the random steps."""
    stages: list[_Stage] = []
    drawn: dict[int, dict] = {}
    g = _Grid.of(x)
    d = g.dim
    for i, step in enumerate(steps):
        p = _params(step)
        op = step.op
        rng = np.random.default_rng(list(step.seed)) if step.seed is not None else None
        st: _Stage | None = None
        if op in RANDOM_OPS and rng is None:
            raise ValueError(f"{op} is random and needs SpatialStep.seed")
        if op == "resample":
            spacing = tuple(float(s) for s in p["spacing"])  # type: ignore[union-attr]
            if len(spacing) != d:
                raise ValueError(f"spacing needs {d} values, got {len(spacing)}")
            size = tuple(max(1, int(np.ceil(round(n * old / new, 6)))) for n, old, new in zip(g.size, g.spacing, spacing))
            out = _Grid(size, spacing, g.origin, g.direction)
            st = _Stage(op, g, out, _physical(g, out))
        elif op == "resample_to":
            ref = p["reference"]
            assert isinstance(ref, Volume)
            if ref.dim != d:
                raise ValueError(f"cannot resample a {d}-D volume onto a {ref.dim}-D reference")
            out = _Grid.of(ref)
            st = _Stage(op, g, out, _physical(g, out))
        elif op == "resize":
            size = tuple(int(m) for m in p["size"])  # type: ignore[union-attr]
            if len(size) != d:
                raise ValueError(f"size needs {d} values, got {len(size)}")
            spacing = tuple(old * n / m for old, n, m in zip(g.spacing, g.size, size))
            origin = g.point([0.5 * (s / old) - 0.5 for s, old in zip(spacing, g.spacing)])
            out = _Grid(size, spacing, origin, g.direction)
            st = _Stage(op, g, out, _physical(g, out))
        elif op == "crop_or_pad":
            size = tuple(int(m) for m in p["size"])  # type: ignore[union-attr]
            if len(size) != d:
                raise ValueError(f"size needs {d} values, got {len(size)}")
            start = [n // 2 - m // 2 if n >= m else -((m - n) // 2) for n, m in zip(g.size, size)]
            st = _window_stage(op, g, start, size)
        elif op == "crop_foreground":
            if i > 0:
                raise ValueError("crop_foreground can only be the first step of a fused chain")
            start, size = pre._foreground_box(x, int(p["margin"]), float(p["threshold"]))  # type: ignore[arg-type]
            st = _window_stage(op, g, start, size)
        elif op == "reorient":
            st = _reorient_stage(g, str(p["to"]))
        elif op == "flip":
            dr = aug._draw_flip(d, int(p["axis"]), float(p["p"]), rng)  # type: ignore[arg-type]
            drawn[i] = dr
            if dr["applied"]:
                m = np.eye(d + 1)
                k = dr["axis"]
                m[k, k], m[k, d] = -1.0, g.size[k] - 1
                st = _Stage(op, g, g, m, index_only=True, can_fill=False)
        elif op == "random_crop":
            dr = aug._draw_random_crop(g.size, p["size"], rng)  # type: ignore[arg-type]
            drawn[i] = dr
            st = _window_stage(op, g, dr["start"], dr["size"])
        elif op in ("rotate", "affine", "random_rescale", "elastic"):
            if op == "rotate":
                dr = aug._draw_rotate(d, float(p["angle"]), float(p["p"]), rng,  # type: ignore[arg-type]
                                     bool(p.get("in_plane", False)))
            elif op == "affine":
                dr = aug._draw_affine(d, float(p["scale"]), float(p["shear"]), float(p["translate"]),  # type: ignore[arg-type]
                                      float(p["p"]), rng)  # type: ignore[arg-type]
            elif op == "random_rescale":
                dr = aug._draw_random_rescale(p["scale"], float(p["p"]), rng)  # type: ignore[arg-type]
            else:
                dr = aug._draw_elastic(float(p["sigma"]), float(p["magnitude"]), float(p["p"]), rng)  # type: ignore[arg-type]
            drawn[i] = dr
            if dr["applied"]:
                vol = g.stand_in()
                if op == "elastic":
                    st = _Stage(op, g, g, np.eye(d + 1), field=aug._elastic_field(vol, dr))
                else:
                    make = {"rotate": aug._rotate_transform, "affine": aug._affine_transform,
                            "random_rescale": aug._rescale_transform}[op]
                    st = _Stage(op, g, g, _physical(g, g, _sitk_affine(make(vol, dr), d)))
        else:
            raise ValueError(f"{op} is not a fusable spatial operator")
        if st is not None:
            stages.append(st)
            g = st.grid_out
    return stages, drawn


# ===== fills ===================================================================================


def _fill(stage: _Stage, vol: Volume, minimum: float) -> float:
    """The value the unfused op of `stage` gives voxels outside its input (`minimum`:
    the minimum of that input, see the module docstring)."""
    if stage.op in RANDOM_OPS:  # aug: 0 for label kinds, the minimum otherwise
        return 0.0 if vol.kind in NEAREST_KINDS else minimum
    if stage.op == "crop_foreground":
        return 0.0
    return minimum if vol.kind == "image" else 0.0  # pre._outside_value


def _can_fill_any(stage: _Stage) -> bool:
    """Whether `stage` puts any output voxel outside its input grid (exact for affine
    stages, from the corners of the output grid; assumed for a displacement field)."""
    if not stage.can_fill:
        return False
    if stage.field is not None:
        return True
    d = stage.grid_in.dim
    lo, hi = _mapped_bounds(stage.matrix, np.zeros(d), np.array(stage.grid_out.size, dtype=float) - 1.0)
    return bool(np.any(lo < -0.5) or np.any(hi >= np.array(stage.grid_in.size) - 0.5))


def _stage_fills(stages: Sequence[_Stage], vol: Volume, minimum: float) -> dict[int, float]:
    """Each stage's fill value in the sampled (not exact) chain."""
    fill: dict[int, float] = {}
    running = minimum
    for k, st in enumerate(stages):
        fill[k] = _fill(st, vol, running)
        if _can_fill_any(st):
            running = min(running, fill[k])
    return fill


def _fills_with_minimum(stage: _Stage, vol: Volume) -> bool:
    """Whether `_fill` gives the input's minimum (rather than 0) for `stage` on `vol`."""
    return _fill(stage, vol, 1.0) == 1.0 and _fill(stage, vol, 2.0) == 2.0


def _minimum(a: np.ndarray) -> float:
    return float(np.min(a)) if a.size else 0.0


# ===== exact index chains ======================================================================


def _compose(stages: Sequence[_Stage], dim: int) -> np.ndarray:
    """Output index of the last stage -> input index of the first, homogeneous (each
    stage maps its output to its input, so the chain is M_0 @ M_1 @ ... @ M_{n-1})."""
    m = np.eye(dim + 1)
    for st in stages:
        m = m @ st.matrix
    return m


def _signed_axes(m: np.ndarray, dim: int) -> list[tuple[int, int, int]]:
    """For an exact index map (signed permutation + integer offset): per output axis i,
    the input axis j, the sign and the offset: input_j = sign * output_i + offset."""
    out = []
    for i in range(dim):
        j = int(np.flatnonzero(np.rint(m[:dim, i]))[0])
        out.append((j, int(np.rint(m[j, i])), int(np.rint(m[j, dim]))))
    return out


def _valid_box(m: np.ndarray, size_in: Sequence[int], size_out: Sequence[int]) -> list[tuple[int, int]]:
    """Per output axis the index range [lo, hi) whose image under `m` lies inside an
    input grid of `size_in` voxels (may be empty: lo >= hi)."""
    box = []
    for i, (j, sign, off) in enumerate(_signed_axes(m, len(size_out))):
        lo, hi = (-off, size_in[j] - off) if sign > 0 else (off - size_in[j] + 1, off + 1)
        box.append((max(lo, 0), min(hi, size_out[i])))
    return box


def _data_view(a: np.ndarray, stages: Sequence[_Stage]
               ) -> tuple[np.ndarray | None, list[tuple[int, int]], list[tuple[int, list[tuple[int, int]]]]]:
    """For index-only `stages` on the array `a`: a view of `a` holding the output voxels
    that come from the input (None when none do), their box in output indices ((lo, hi)
    per axis, x first), and per stage that puts voxels outside its input, its valid box."""
    d = stages[0].grid_in.dim
    size_out = stages[-1].grid_out.size
    axes = _signed_axes(_compose(stages, d), d)
    # a view of the input whose axis i (x, y, z order) runs along output axis i
    view = a
    for j, sign, _ in axes:
        if sign < 0:
            view = np.flip(view, axis=d - 1 - j)
    order = [d - 1 - axes[d - 1 - k][0] for k in range(d)] + list(range(d, a.ndim))
    view = np.transpose(view, order)
    data_box = [(0, n) for n in size_out]
    painted: list[tuple[int, list[tuple[int, int]]]] = []
    for k, st in enumerate(stages):
        if not st.can_fill:
            continue
        box = _valid_box(_compose(stages[k:], d), st.grid_in.size, size_out)
        if any(lo > 0 or hi < n for (lo, hi), n in zip(box, size_out)):
            painted.append((k, box))
        data_box = [(max(lo, blo), min(hi, bhi)) for (lo, hi), (blo, bhi) in zip(data_box, box)]
    if not all(lo < hi for lo, hi in data_box):
        return None, data_box, painted
    src = []
    for i, (j, sign, off) in enumerate(axes):
        lo, hi = data_box[i]
        start = off + lo if sign > 0 else a.shape[d - 1 - j] - 1 - off + lo  # in the flipped view
        src.append(slice(start, start + hi - lo))
    return view[tuple(reversed(src))], data_box, painted


def _exact(vol: Volume, stages: Sequence[_Stage], minimum_cache: dict[int, float]) -> np.ndarray:
    """The chain of index-only `stages` on `vol` as one exact gather: permute and flip
    the input's axes, take one window, then give every voxel that some step put outside
    its input that step's fill value, in step order (a later step's fill covers an
    earlier one's, as it does unfused)."""
    d = vol.dim
    a = vol.array
    if not stages:
        return a.copy()
    size_out = stages[-1].grid_out.size
    out = np.empty(tuple(reversed(size_out)) + a.shape[d:], dtype=a.dtype)
    data, data_box, painted = _data_view(a, stages)
    if data is not None:
        out[tuple(slice(lo, hi) for lo, hi in reversed(data_box))] = data
    for k, box in painted:
        st = stages[k]
        if k not in minimum_cache and _fills_with_minimum(st, vol):
            # the minimum of this step's own input, as the unfused op takes it
            minimum_cache[k] = _minimum(_exact(vol, stages[:k], minimum_cache))
        _paint_outside(out, box, _fill(st, vol, minimum_cache.get(k, 0.0)))
    return out


def _paint_outside(out: np.ndarray, box: Sequence[tuple[int, int]], fill: float) -> None:
    """`fill` into the voxels of `out` ((z, y, x, ...) array) outside the output-index
    box `box` ((lo, hi) per axis, x first)."""
    d = len(box)
    for i, (lo, hi) in enumerate(box):
        axis = d - 1 - i
        before = [slice(None)] * out.ndim
        before[axis] = slice(0, max(lo, 0))
        out[tuple(before)] = fill
        after = [slice(None)] * out.ndim
        after[axis] = slice(max(hi, lo, 0), None)
        out[tuple(after)] = fill


# ===== sampling ================================================================================


def _affine_coords(m: np.ndarray, coords: Sequence[object]) -> list[object]:
    """`m` (homogeneous, d+1 square) applied to coordinate tensors (x, y, z order). Terms
    with a zero coefficient are skipped, so a coordinate that does not depend on some
    axis keeps a broadcast (smaller) shape: that is what makes per-slice sampling and
    cheap validity checks fall out of the same code."""
    import torch

    d = len(coords)
    out = []
    for i in range(d):
        acc: object = torch.tensor(float(m[i, d]), dtype=coords[0].dtype, device=coords[0].device)  # type: ignore[attr-defined]
        for j in range(d):
            if abs(m[i, j]) > _ZERO:
                acc = acc + float(m[i, j]) * coords[j]  # type: ignore[operator]
        out.append(acc)
    return out


def _outside(coords: Sequence[object], size: Sequence[int], sides: Sequence[tuple[bool, bool]] | None = None
             ) -> object:
    """Where a point lies outside a grid of `size` voxels by ITK's rule (every
    continuous index in [-0.5, n - 0.5)); `sides` says per axis which ends can be
    crossed at all (from the chunk's bounds), so that the other comparison is skipped."""
    mask: object = None
    for i, (c, n) in enumerate(zip(coords, size)):
        low, high = sides[i] if sides is not None else (True, True)
        for out in ([c < -0.5] if low else []) + ([c >= n - 0.5] if high else []):  # type: ignore[operator]
            mask = out if mask is None else mask | out  # type: ignore[operator]
    return mask


def _mapped_bounds(m: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bounds of the image of the box [lo, hi] under the affine `m` (an affine map's
    image of a box lies within the hull of its corners' images)."""
    d = len(lo)
    corners = np.array(np.meshgrid(*[[a, b] for a, b in zip(lo, hi)], indexing="ij")).reshape(d, -1)
    mapped = m[:d, :d] @ corners + m[:d, d:d + 1]
    return mapped.min(axis=1), mapped.max(axis=1)


def _normalized(c: object, n: int) -> object:
    """A continuous index as grid_sample's align_corners=True coordinate."""
    return c * (2.0 / (n - 1)) - 1.0 if n > 1 else c * 0.0  # type: ignore[operator]


def _fills(masks: Sequence[tuple[int, object]], fill: dict[int, float]) -> list[tuple[float, object]]:
    """(value, where) to paint in order: each step's outside region gets that step's
    fill, a later step's over an earlier one's, as unfused; steps with the same fill
    (the usual case) are painted as one union."""
    out: list[tuple[float, object]] = []
    for k, mask in sorted(masks, key=lambda km: km[0]):
        if out and out[-1][0] == fill[k]:
            out[-1] = (fill[k], out[-1][1] | mask)  # type: ignore[operator]
        else:
            out.append((fill[k], mask))
    return out


def _free_of(t: object, axis: int) -> bool:
    """Whether the broadcast tensor `t` ((z, y, x) array axes) is constant along `axis`."""
    return t.dim() <= axis or t.shape[axis] == 1  # type: ignore[attr-defined]


def _slice_aligned(c: Sequence[object]) -> bool:
    """Whether the source coordinates `c` ((x, y, z) broadcast tensors of one chunk)
    take every output slice from one input slice: x and y independent of the output
    slice, z constant within a slice and an integer."""
    import torch

    if not (all(_free_of(ci, 0) for ci in c[:2]) and _free_of(c[2], 1) and _free_of(c[2], 2)):
        return False
    cz = c[2]
    return bool(torch.all(torch.abs(cz - torch.round(cz)) < 1e-4))  # type: ignore[arg-type]


@dataclass
class _Chunk:
    """The result of mapping one chunk of output voxels back to the input."""

    coords: list[object]  # continuous input indices (x, y, z), broadcastable tensors
    masks: list[tuple[int, object]] = field(default_factory=list)  # (stage, outside) pairs


def _map_chunk(stages: Sequence[_Stage], base: list[object], lo: np.ndarray, hi: np.ndarray,
               fields: dict[int, object]) -> _Chunk:
    """Map output indices `base` (spanning the box [lo, hi]) back through `stages`,
    noting at every stage that can fill where the point lies outside its input grid."""
    import torch
    import torch.nn.functional as F  # noqa: N812 (the alias torch documents)

    d = len(base)
    cur = base
    acc = np.eye(d + 1)  # maps `cur` to the current stage's output index
    masks: list[tuple[int, object]] = []
    for k in reversed(range(len(stages))):
        st = stages[k]
        if st.field is not None:
            shape = tuple(torch.broadcast_shapes(*[b.shape for b in base]))  # type: ignore[attr-defined]
            cur = [c.expand(shape) for c in _affine_coords(acc, cur)]  # type: ignore[attr-defined]
            acc = np.eye(d + 1)
            g = st.grid_out
            grid = torch.stack([_normalized(c, n) for c, n in zip(cur, g.size)], dim=-1).to(torch.float32)  # type: ignore[arg-type]
            disp = F.grid_sample(fields[k], grid[None], mode="bilinear", padding_mode="border", align_corners=True)[0]
            # DisplacementFieldTransform: no displacement where the point is outside the field's buffer
            keep = ~_outside(cur, g.size)  # type: ignore[operator]
            inv = np.linalg.inv(g.matrix()[:d, :d])
            cur = [cur[i] + keep * sum(float(inv[i, j]) * disp[j] for j in range(d)) for i in range(d)]  # type: ignore[operator]
            lo = np.array([float(c.min()) for c in cur])  # type: ignore[attr-defined]
            hi = np.array([float(c.max()) for c in cur])  # type: ignore[attr-defined]
        acc = st.matrix @ acc
        if not st.can_fill:
            continue
        size = np.array(st.grid_in.size, dtype=float)
        mlo, mhi = _mapped_bounds(acc, lo, hi)
        if np.all(mlo >= 0.0) and np.all(mhi <= size - 1.0):
            continue
        coords = _affine_coords(acc, cur)
        sides = [(bool(mlo[i] < -0.5), bool(mhi[i] >= size[i] - 0.5)) for i in range(d)]
        if any(low or high for low, high in sides):
            masks.append((k, _outside(coords, st.grid_in.size, sides)))
        if k == 0:  # the sampling itself clamps to the input's border (grid_sample's border mode)
            return _Chunk(coords, masks)
        # Unfused, the steps before this one were evaluated only at this step's input grid
        # points, and this step's interpolation clamps to them (ITK's border rule): clamp
        # here too, so that a point in the outer half voxel does not reach past the grid
        # of an earlier step (which would fill it there, or sample what a crop removed).
        for i in range(d):
            if mlo[i] < 0.0 or mhi[i] > size[i] - 1.0:
                coords[i].clamp_(0.0, size[i] - 1.0)  # type: ignore[attr-defined]  (fresh tensors: in place)

        cur, acc = coords, np.eye(d + 1)
        lo, hi = np.clip(mlo, 0.0, size - 1.0), np.clip(mhi, 0.0, size - 1.0)
    return _Chunk(_affine_coords(acc, cur), masks)


def _on_cpu(device: object) -> bool:
    return getattr(device, "type", "cpu") == "cpu"


@functools.cache
def _slice_pool(threads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(threads, thread_name_prefix="medasl-slices")


def _each_in_threads(work: Callable[[int], None], items: Sequence[int], threads: int) -> None:
    """`work(item)` for every item, on `threads` threads, each running torch on one thread
    (the caller holds torch at one thread, see `_cpu_threads`). Per-slice batches are small
    (about a million voxels): torch's own threads would meet at a barrier after every
    pass of every batch, and on a busy 2-core machine a descheduled thread holds each one
    up (measured there, the in-plane resampling of the benchmark CT: 0.36 s on torch's 2
    threads, 0.09 s on one, 0.07-0.10 s with a batch per thread); a batch per thread has
    no barrier but the last."""
    if threads <= 1 or len(items) <= 1:
        for item in items:
            work(item)
        return
    for _ in _slice_pool(threads).map(work, items):
        pass


@contextmanager
def _cpu_threads(device: object, n: int) -> Iterator[None]:
    """torch's CPU thread count set to `n` inside (restored after; nothing on other devices).

    The coordinate arithmetic is many short, memory-bound elementwise passes; with
    several threads each pass ends at a barrier, and on a busy machine a descheduled
    thread holds every barrier up (measured on the 2-core benchmark machine under load:
    3 to 10 times slower than one thread). So those passes run on one thread and only
    grid_sample, one long pass, on the caller's threads."""
    import torch

    if not _on_cpu(device):
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class _Member:
    """One volume to sample through the stages (a Pair's members share the mapping)."""

    vol: Volume
    mode: str
    fill: dict[int, float]
    table: np.ndarray | None  # nearest: (voxels, channels)
    src_t: object  # the torch source: gather table (nearest) or (1, C, *spatial) in the input's dtype
    sample_dtype: object  # the torch float type linear sampling computes in
    out: np.ndarray
    _floating: object = None

    def floating(self) -> object:
        """The whole source in `sample_dtype` (for 3-D sampling), converted once."""
        if self._floating is None:
            self._floating = self.src_t.to(self.sample_dtype)  # type: ignore[attr-defined]
        return self._floating


def _sample(members: Sequence[tuple[Volume, str, np.dtype, float]], stages: Sequence[_Stage], device: str
            ) -> list[np.ndarray]:
    """Each (volume, mode, output dtype, minimum) of `members` sampled once through the
    composed `stages` (see the module docstring); the members lie on one grid, and the
    mapping (coordinates and validity masks) is computed once for all of them."""
    import torch

    threads = torch.get_num_threads()
    with _cpu_threads(torch.device(device), 1):
        return _sample_chunks(members, stages, device, threads)


def _member(vol: Volume, mode: str, out_dtype: np.dtype, minimum: float, stages: Sequence[_Stage],
            shape_out: tuple[int, ...], dev: object) -> _Member:
    import torch

    d = vol.dim
    a = vol.array
    table = None
    tdtype = torch.float64 if out_dtype == np.float64 else torch.float32
    if mode == "nearest":
        # gather rows of a (voxels, channels) table: any dtype, no interpolation
        table = a.reshape(int(np.prod(a.shape[:d])), -1)
        src_t = None if table.dtype in (np.uint16, np.uint32) else torch.from_numpy(np.ascontiguousarray(table)).to(dev)
    else:
        arr = np.moveaxis(a, -1, 0) if a.ndim > d else a[None]
        if arr.dtype in (np.uint16, np.uint32, np.uint64):  # types torch has no kernels for
            arr = arr.astype(np.float64 if tdtype == torch.float64 else np.float32)
        # kept in its own type: per-slice sampling converts a few slices at a time (see _sample_member)
        src_t = torch.from_numpy(np.ascontiguousarray(arr)).to(dev)[None]  # (1, C, *spatial)
    # A step that fills with its input's minimum sees the fills of earlier steps that put
    # any voxel outside their input (0 from a std.pre step on a probability map): the
    # smallest of those and the input's minimum stands for that step's input minimum.
    return _Member(vol, mode, _stage_fills(stages, vol, minimum), table, src_t, tdtype,
                   np.empty(shape_out + a.shape[d:], dtype=out_dtype))


def _sample_chunks(members: Sequence[tuple[Volume, str, np.dtype, float]], stages: Sequence[_Stage], device: str,
                   threads: int) -> list[np.ndarray]:
    import torch

    out_grid = stages[-1].grid_out
    d = out_grid.dim
    shape_out = out_grid.shape_zyx
    dev = torch.device(device)
    fields = {k: torch.from_numpy(np.moveaxis(st.field, -1, 0)[None].astype(np.float32)).to(dev)
              for k, st in enumerate(stages) if st.field is not None}
    ms = [_member(vol, mode, out_dtype, minimum, stages, shape_out, dev) for vol, mode, out_dtype, minimum in members]
    # float32 coordinates: 3e-5 of a voxel at index 512, far below interpolation's own
    # error; it halves the memory traffic, which is what the sampling's time is spent on
    cdtype = torch.float32
    per_slice = d == 3 and not fields
    plane = int(np.prod(shape_out[1:]))
    step = max(1, _CHUNK_VOXELS // max(plane, 1)) if d == 3 else shape_out[0]
    for z0 in range(0, shape_out[0], step):
        z1 = min(z0 + step, shape_out[0])
        if d == 3:
            base = [torch.arange(shape_out[2], dtype=cdtype, device=dev).view(1, 1, -1),
                    torch.arange(shape_out[1], dtype=cdtype, device=dev).view(1, -1, 1),
                    torch.arange(z0, z1, dtype=cdtype, device=dev).view(-1, 1, 1)]
        else:
            base = [torch.arange(shape_out[1], dtype=cdtype, device=dev).view(1, -1),
                    torch.arange(z0, z1, dtype=cdtype, device=dev).view(-1, 1)]
        lo = np.array([0.0] * (d - 1) + [float(z0)]) if d == 3 else np.array([0.0, float(z0)])
        hi = np.array([float(n - 1) for n in out_grid.size])
        hi[-1] = float(z1 - 1)
        chunk = _map_chunk(stages, base, lo, hi, fields)
        full = tuple(z1 - z0 if i == 0 else n for i, n in enumerate(shape_out))
        for m in ms:
            _sample_member(m, chunk, full, per_slice, dev, threads, m.out[z0:z1])
    return [m.out for m in ms]


def _sample_member(m: _Member, chunk: _Chunk, full: tuple[int, ...], per_slice: bool, dev: object, threads: int,
                   target: np.ndarray) -> None:
    """One member's values at one chunk's mapped coordinates, fills painted, written into
    `target` (the chunk's part of the member's output)."""
    import torch
    import torch.nn.functional as F  # noqa: N812 (the alias torch documents)

    a, mode, fill, table, src_t = m.vol.array, m.mode, m.fill, m.table, m.src_t
    d = m.vol.dim
    size_in = m.vol.shape
    channels = a.ndim > d
    z0, z1 = 0, full[0]
    c = chunk.coords
    if mode == "nearest":
        idx = [torch.clamp(torch.floor(ci + 0.5), 0, n - 1).to(torch.int64) for ci, n in zip(c, size_in)]  # type: ignore[arg-type]
        flat = idx[0]
        stride = 1
        for i in range(1, d):
            stride *= size_in[i - 1]
            flat = flat + idx[i] * stride
        flat = flat.expand(full).reshape(-1)
        if src_t is None:
            vals = table[flat.cpu().numpy()]
        else:
            vals = src_t[flat].cpu().numpy()
        vals = vals.reshape(full + a.shape[d:])
        if channels:  # masks are (z, y, x): put the channels first while filling
            vals = np.moveaxis(vals, -1, 0)
        for value, mask in _fills(chunk.masks, fill):
            vals[..., mask.expand(full).cpu().numpy()] = value  # type: ignore[attr-defined]
        if channels:
            vals = np.moveaxis(vals, 0, -1)
        target[...] = vals.astype(m.out.dtype, copy=False)
        return
    # linear: sampled into a (C, z, y, x) tensor; on the CPU a view of `target` when the
    # types agree, so that results are written once and fills painted in place
    shape_czyx = (a.shape[d] if channels else 1, *full)
    in_place = _on_cpu(dev) and torch.from_numpy(target[:0]).dtype == m.sample_dtype
    if in_place:
        out_t = torch.from_numpy(target)
        out_t = out_t.permute(d, *range(d)) if channels else out_t[None]
    else:
        out_t = torch.empty(shape_czyx, dtype=m.sample_dtype, device=dev)
    if per_slice and _slice_aligned(c):
        cz = c[2].reshape(-1).expand(z1 - z0)  # type: ignore[attr-defined]
        # every output slice is one input slice resampled in-plane: 2-D sampling per slice
        zi = torch.clamp(torch.round(cz), 0, size_in[2] - 1).to(torch.int64)
        first = int(zi[0])
        if torch.equal(zi, torch.arange(first, first + len(zi), device=zi.device)):
            # consecutive input slices: a view, not a copy of the input
            planes = src_t[0, :, first:first + len(zi)].permute(1, 0, 2, 3)  # (slices, C, y, x)
        else:
            planes = src_t[0].permute(1, 0, 2, 3)[zi]
        g2 = torch.stack([_normalized(c[i], size_in[i]).expand((1, *full[1:]))[0]  # type: ignore[attr-defined]
                          for i in (0, 1)], dim=-1)
        g2 = g2.reshape(1, *full[1:], 2).to(m.sample_dtype)

        def sample_batch(k: int) -> None:
            # a few slices converted at a time: they stay in cache for grid_sample, and the
            # input is never copied whole
            batch = planes[k:k + _SLICES_PER_BATCH].to(m.sample_dtype)
            out_t[:, k:k + len(batch)] = F.grid_sample(
                batch, g2.expand(len(batch), *g2.shape[1:]), mode="bilinear", padding_mode="border",
                align_corners=True).permute(1, 0, 2, 3)

        _each_in_threads(sample_batch, range(0, z1 - z0, _SLICES_PER_BATCH), threads if _on_cpu(dev) else 1)
    else:
        src_f = m.floating()
        grid = torch.stack([_normalized(ci, n).expand(full) for ci, n in zip(c, size_in)], dim=-1)  # type: ignore[attr-defined]
        with _cpu_threads(dev, threads):
            out_t.copy_(F.grid_sample(src_f, grid[None].to(m.sample_dtype), mode="bilinear",  # type: ignore[arg-type]
                                      padding_mode="border", align_corners=True)[0])
    for value, mask in _fills(chunk.masks, fill):  # on the device, in place, broadcast over channels
        out_t.masked_fill_(mask.expand(shape_czyx), value)  # type: ignore[attr-defined]
    if not in_place:
        vals_t = out_t.permute(*range(1, d + 1), 0) if channels else out_t[0]
        target[...] = vals_t.cpu().numpy().astype(target.dtype, copy=False)


# ===== one SimpleITK resampling (CPU) ===========================================================

_SITK_DTYPES = frozenset(np.dtype(t) for t in (np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32,
                                               np.uint64, np.int64, np.float32, np.float64))


def _sitk_route(stages: Sequence[_Stage], fill: dict[int, float]
                ) -> tuple[int, list[tuple[int, list[tuple[int, int]]]], list[int]] | None:
    """Whether the sampled chain `stages` is one `sitk.Resample` plus exact fills, and how:
    (the first interpolating stage; the trailing index stages' fill boxes, as (stage,
    valid output box); the other stages whose validity must be checked (`_row_ranges`));
    None when not.

    The torch path checks every stage's validity per voxel and clamps points in an
    intermediate grid's outer half voxel. One SimpleITK resampling checks and clamps
    against its input buffer only; it gives the torch path's result when: the index-only
    steps before the first interpolating stage are one window of the input (sampled from
    its data part: a point beyond it is outside the first step that cut it, and gets the
    same fill as long as those fills agree); a later stage either contains the image of
    the whole output box in [0, n - 1] (nothing to fill or clamp), or is a window in a
    tail of index steps (its fill region is a box of output indices, and its points are
    whole voxels, so nothing to clamp), or is affine: its fill region and the voxels it
    would clamp are intervals of every output row, found per row, and the few clamped
    voxels are recomputed as the torch path computes them; no displacement field."""
    if any(st.field is not None for st in stages):
        return None
    first = next((k for k, st in enumerate(stages) if not st.index_only), None)
    if first is None:
        return None
    if any(fill[k] != fill[first] for k in range(first) if _can_fill_any(stages[k])):
        return None
    d = stages[0].grid_in.dim
    size_out = stages[-1].grid_out.size
    lo, hi = np.zeros(d), np.array(size_out, dtype=float) - 1.0
    painted: list[tuple[int, list[tuple[int, int]]]] = []
    masked: list[int] = []
    for k in range(first + 1, len(stages)):
        st = stages[k]
        if not st.can_fill:
            continue
        m = _compose(stages[k:], d)
        mlo, mhi = _mapped_bounds(m, lo, hi)
        if np.all(mlo >= 0.0) and np.all(mhi <= np.array(st.grid_in.size, dtype=float) - 1.0):
            continue
        if not all(s.index_only for s in stages[k:]):
            masked.append(k)
            continue
        box = _valid_box(m, st.grid_in.size, size_out)
        if any(blo > 0 or bhi < n for (blo, bhi), n in zip(box, size_out)):
            painted.append((k, box))
    return first, painted, masked


def _sample_sitk(vol: Volume, stages: Sequence[_Stage], mode: str, out_dtype: np.dtype, minimum: float
                 ) -> np.ndarray | None:
    """`vol` sampled once through the composed `stages` by one SimpleITK resampling, or
    None when `_sitk_route` says the chain needs the torch path. Same conventions as the
    torch path (ITK's, which it follows); the map is composed in index space, in float64."""
    import SimpleITK as sitk  # noqa: N813 (the alias SimpleITK documents)

    a = vol.array
    d = vol.dim
    if a.dtype not in _SITK_DTYPES or a.ndim > d + 1:
        return None
    fill = _stage_fills(stages, vol, minimum)
    route = _sitk_route(stages, fill)
    if route is None:
        return None
    first, painted, masked = route
    m = _compose(stages[first:], d)  # output index -> the first interpolating stage's input index
    src = a
    if first > 0:
        view, data_box, _ = _data_view(a, stages[:first])
        if view is None:
            return None
        src = view
        shift = np.eye(d + 1)
        shift[:d, d] = [-lo for lo, _ in data_box]  # index in that stage's input -> index in the data part
        m = shift @ m
    channels = a.ndim > d
    if channels and mode != "nearest":
        src = src.astype(out_dtype)  # vector pixels: interpolate in the output type
    img = sitk.GetImageFromArray(np.ascontiguousarray(src), isVector=channels)  # unit spacing, identity
    transform = sitk.AffineTransform(d)
    transform.SetMatrix([float(v) for v in m[:d, :d].ravel()])
    transform.SetTranslation([float(v) for v in m[:d, d]])
    f = sitk.ResampleImageFilter()
    f.SetSize([int(n) for n in stages[-1].grid_out.size])
    f.SetTransform(transform)
    f.SetDefaultPixelValue(float(fill[first]))
    if mode == "nearest":
        f.SetInterpolator(sitk.sitkNearestNeighbor)
    else:
        f.SetInterpolator(sitk.sitkLinear)
        # interpolated in double and written in the output type: no cast pass over the input
        scalar, vector = (sitk.sitkFloat64, sitk.sitkVectorFloat64) if out_dtype == np.float64 else (
            sitk.sitkFloat32, sitk.sitkVectorFloat32)
        f.SetOutputPixelType(vector if channels else scalar)
    out = sitk.GetArrayFromImage(f.Execute(img))
    if out.dtype != out_dtype:
        out = out.astype(out_dtype)
    size_out = stages[-1].grid_out.size
    shell: list[np.ndarray] = []
    xs = np.arange(size_out[0])
    for k in masked:  # in stage order: a later stage's fill covers an earlier one's, as unfused
        (lo, hi), (inner_lo, inner_hi) = _row_ranges(_compose(stages[k:], d), stages[k].grid_in.size, size_out)
        np.copyto(out, out.dtype.type(fill[k]), where=((xs < lo[..., None]) | (xs >= hi[..., None])).reshape(
            out.shape[:d] + (1,) * (out.ndim - d)))
        # the voxels valid here but in this grid's outer half voxel, which the torch path
        # clamps onto the grid: a few per row, at its ends ([lo, inner_lo) and [inner_hi, hi))
        empty = inner_hi <= inner_lo
        a = np.where(empty, hi, np.clip(inner_lo, lo, hi))
        b = np.where(empty, hi, np.clip(inner_hi, a, hi))
        shell += [_row_segments(lo, a), _row_segments(b, hi)]
    for k, box in painted:
        _paint_outside(out, box, fill[k])
    # a voxel in two stages' shells is computed twice, to the same value: no need to dedupe
    points = np.concatenate(shell) if shell else np.zeros((0, d), np.int64)
    if len(points):
        out[tuple(points[:, ::-1].T)] = _sample_points(vol, stages, mode, fill, points).astype(out_dtype)
    return out


def _row_segments(start: np.ndarray, stop: np.ndarray) -> np.ndarray:
    """The voxels of the per-row x ranges [start, stop) (arrays over the rows, (z, y) or
    (y,)) as (N, d) indices, x first."""
    length = (stop - start).astype(np.int64).ravel()
    rows = np.repeat(np.arange(length.size), length)
    if not rows.size:
        return np.zeros((0, start.ndim + 1), np.int64)
    offsets = np.arange(rows.size) - np.repeat(np.cumsum(length) - length, length)
    x = start.astype(np.int64).ravel()[rows] + offsets
    rest = np.unravel_index(rows, start.shape)  # (z, y) or (y,)
    return np.stack([x, *reversed(rest)], axis=1)


def _row_ranges(m: np.ndarray, size_in: Sequence[int], size_out: Sequence[int]
                ) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Per output row (all x for one (z, y) or one y), the x range [lo, hi) whose image
    under the affine `m` lies inside a grid of `size_in` voxels by ITK's rule (every
    continuous index in [-0.5, n - 0.5)), and the range whose image lies in [0, n - 1]
    (where no clamping happens); arrays of shape size_out's (z, y) (or (y,))."""
    d = len(size_out)
    nx = int(size_out[0])
    rest = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in reversed(size_out[1:])], indexing="ij")
    shape = tuple(reversed(size_out[1:]))
    ranges = []
    for low_off, high_off, strict in ((-0.5, -0.5, True), (0.0, -1.0, False)):
        lo, hi = np.zeros(shape), np.full(shape, float(nx))
        for i in range(d):
            b = m[i, d] + sum(m[i, j] * rest[d - 1 - j] for j in range(1, d))  # index i at x = 0
            a = m[i, 0]
            bottom, top = low_off, size_in[i] + high_off  # bottom <= a x + b, and < top (strict) or <= top
            if abs(a) <= _ZERO:
                ok = (b >= bottom) & ((b < top) if strict else (b <= top))
                hi = np.where(ok, hi, 0.0)
                continue
            t0, t1 = (bottom - b) / a, (top - b) / a
            if a > 0:  # x >= t0, and x < t1 (x <= t1)
                lo = np.maximum(lo, np.ceil(t0))
                hi = np.minimum(hi, np.ceil(t1) if strict else np.floor(t1) + 1.0)
            else:  # x <= t0, and x > t1 (x >= t1)
                hi = np.minimum(hi, np.floor(t0) + 1.0)
                lo = np.maximum(lo, np.floor(t1) + 1.0 if strict else np.ceil(t1))
        lo = np.clip(lo, 0.0, nx)
        ranges.append((lo, np.maximum(np.clip(hi, 0.0, nx), lo)))
    return ranges[0], ranges[1]


def _sample_points(vol: Volume, stages: Sequence[_Stage], mode: str, fill: dict[int, float], points: np.ndarray
                   ) -> np.ndarray:
    """The torch path's values at the output voxels `points` ((N, d), x first): the same
    mapping (`_map_chunk`: each stage's check and clamp), then linear interpolation with
    the border clamp (grid_sample's border mode) or nearest neighbour, in NumPy."""
    import torch

    d = vol.dim
    a = vol.array
    n = len(points)
    base = [torch.from_numpy(points[:, i].astype(np.float32)) for i in range(d)]
    with _cpu_threads(torch.device("cpu"), 1):  # short elementwise passes: see _cpu_threads
        chunk = _map_chunk(stages, base, points.min(axis=0).astype(float), points.max(axis=0).astype(float), {})
    coords = [np.broadcast_to(c.numpy(), (n,)).astype(np.float64) for c in chunk.coords]  # type: ignore[attr-defined]
    size = a.shape[:d][::-1]
    if mode == "nearest":
        idx = tuple(np.clip(np.floor(coords[i] + 0.5), 0, size[i] - 1).astype(np.int64) for i in reversed(range(d)))
        vals = a[idx]  # the input's dtype: 64-bit ids stay exact
    else:
        vals = np.zeros((n,) + a.shape[d:])
        lo, w = [], []
        for i in range(d):
            c = np.clip(coords[i], 0.0, size[i] - 1.0)
            f = np.clip(np.floor(c), 0, max(size[i] - 2, 0)).astype(np.int64)
            lo.append(f)
            w.append(c - f)
        for corner in range(1 << d):
            weight = np.ones(n)
            idx = []
            for i in range(d):
                up = (corner >> i) & 1
                weight = weight * (w[i] if up else 1.0 - w[i])
                idx.append(np.minimum(lo[i] + up, size[i] - 1))
            vals += (weight.reshape((n,) + (1,) * (a.ndim - d))) * a[tuple(reversed(idx))]
    for value, mask in _fills(chunk.masks, fill):
        vals[np.broadcast_to(mask.numpy(), (n,))] = value  # type: ignore[attr-defined]
    return vals


# ===== the kernel ===============================================================================


def _out_dtype(vol: Volume, mode: str, steps_done: Sequence[_Stage]) -> np.dtype:
    if mode == "nearest":
        return vol.array.dtype
    if vol.array.dtype == np.float64 and not any(st.op in _PRE_RESAMPLING for st in steps_done):
        return np.dtype(np.float64)
    return np.dtype(np.float32)


SITK_ON_CPU = True
"""Whether chains that `_sitk_route` accepts are sampled with SimpleITK on the CPU
(faster there, see the module docstring); tests switch it off to compare with torch."""


def _use_sitk(device: str) -> bool:
    return SITK_ON_CPU and str(device).split(":")[0] == "cpu"


def _keeps_slices(stages: Sequence[_Stage]) -> bool:
    """Whether every output slice of the chain is one whole input slice resampled in
    plane (the composed map keeps z index-aligned, no displacement field): then the torch
    path samples in 2-D per slice, which beats SimpleITK's 3-D resampling on the CPU too
    (on the benchmark CT resampled in plane to 1.5 mm: see `worth_fusing`)."""
    if stages[0].grid_in.dim != 3 or any(st.field is not None for st in stages):
        return False
    m = _compose(stages, 3)
    in_plane = np.abs(m[2, :2]).max() < _ZERO and np.abs(m[:2, 2]).max() < _ZERO
    return bool(in_plane and abs(m[2, 2] - 1.0) < _ZERO and abs(m[2, 3] - round(m[2, 3])) < 1e-4)


def _run(vols: Sequence[Volume], stages: Sequence[_Stage], image_mode: str | None, device: str) -> list[Volume]:
    """The members of the value (on one grid) through the planned stages."""
    if not stages:  # nothing moved (random steps not applied)
        return [vol.with_array(vol.array.copy()) for vol in vols]
    out_grid = stages[-1].grid_out
    arrays: list[np.ndarray | None] = []
    torch_members: list[tuple[int, tuple[Volume, str, np.dtype, float]]] = []
    for i, vol in enumerate(vols):
        if all(st.index_only for st in stages):
            arrays.append(_exact(vol, stages, {}))
            continue
        mode = "nearest" if vol.kind in NEAREST_KINDS else (image_mode or "linear")
        out_dtype, minimum = _out_dtype(vol, mode, stages), _minimum(vol.array)
        sitk_first = _use_sitk(device) and not (mode != "nearest" and _keeps_slices(stages))
        arrays.append(_sample_sitk(vol, stages, mode, out_dtype, minimum) if sitk_first else None)
        if arrays[-1] is None:
            torch_members.append((i, (vol, mode, out_dtype, minimum)))
    if torch_members:
        for (i, _), array in zip(torch_members, _sample([mb for _, mb in torch_members], stages, device)):
            arrays[i] = array
    return [Volume(array, out_grid.spacing, out_grid.origin, out_grid.direction, vol.kind, vol.modality, vol.source)
            for vol, array in zip(vols, arrays)]


def unfused_spatial(x: Volume | Pair, steps: Sequence[SpatialStep]) -> tuple[Volume | Pair, dict[int, dict]]:
    """The chain run step by step with the medasl.ops operators, as the executor runs it
    unfused (std.pre operators on each member of a pair, crop_foreground and the std.aug
    operators on the whole pair): the reference `fused_spatial` is tested against, and
    its fallback for a pair on two grids."""
    drawn: dict[int, dict] = {}
    for i, step in enumerate(steps):
        fn = _op_function(step.op)
        if step.op in RANDOM_OPS:
            if step.seed is None:
                raise ValueError(f"{step.op} is random and needs SpatialStep.seed")
            x, drawn[i] = fn(x, **step.params, rng=np.random.default_rng(list(step.seed)))  # type: ignore[misc]
        elif step.op == "crop_foreground" or not isinstance(x, Pair):
            x = fn(x, **step.params)  # type: ignore[assignment]
        else:
            image = fn(x.input, **step.params)
            # a target without a grid follows as the executor carries it (values.carried)
            target = fn(x.target, **step.params) if isinstance(x.target, Volume) else carried(x.target, image)
            x = Pair(image, target)
    return x, drawn


def fused_spatial(x: Volume | Pair, steps: Sequence[SpatialStep], device: str = "cpu"
                  ) -> tuple[Volume | Pair, dict[int, dict]]:
    """Apply the chain `steps` to `x` with one sampling; returns the result and, per
    random step index, what it drew (the same `drawn` dict the unfused op returns).

    A Pair gets the same transform for both members (the target by nearest neighbour
    when it is a label kind). A Pair whose members lie on different grids (which the
    unfused std.pre operators resample each on its own grid) is run unfused, with
    identical draws, and so is a Pair whose target is `Boxes` (each step moves and
    clips them with its own geometry); a target that marks no place (a class) is
    carried along. ValueError for a chain `why_not_fusable` refuses."""
    reason = why_not_fusable(steps)
    if reason is not None:
        raise ValueError(f"cannot fuse this chain: {reason}")
    image_mode, _ = _image_mode(steps)
    vol = x.input if isinstance(x, Pair) else x
    if isinstance(x, Pair) and isinstance(x.target, Boxes):
        return unfused_spatial(x, steps)
    if isinstance(x, Pair) and not isinstance(x.target, Volume):
        image, drawn = fused_spatial(x.input, steps, device)
        return Pair(image, x.target), drawn
    if isinstance(x, Pair) and not x.input.same_grid(x.target, tol=1e-9):
        return unfused_spatial(x, steps)
    for step in steps:
        if step.op in _PRE_RESAMPLING:
            for member in ((x.input, x.target) if isinstance(x, Pair) else (x,)):
                pre._interpolator(member, str(_params(step).get("interp", "auto")))  # ValueError as unfused
    stages, drawn = _plan(vol, steps)
    if stages:  # only the chain's last grid is allocated (E2002 before, where it cannot be)
        pre._check_allocation(vol, stages[-1].grid_out.size, max(vol.array.dtype.itemsize, 4),
                              " then ".join(f"`{step.op}`" for step in steps))
    if isinstance(x, Pair):
        image, target = _run([x.input, x.target], stages, image_mode, device)
        return Pair(image, target), drawn
    return _run([vol], stages, image_mode, device)[0], drawn
