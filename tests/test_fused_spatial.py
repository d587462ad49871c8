"""The fused spatial kernel (medasl/runtime/fused_spatial.py) against the unfused chain of
medasl.ops operators it replaces.

What is claimed, and checked here:

- Geometry (size, spacing, origin, direction) equals the unfused chain's to 1e-6 mm.
- Random steps draw exactly what the unfused operators draw (same `drawn` dicts).
- Chains of index steps only (crop_or_pad, crop_foreground, random_crop, flip,
  reorient) are bit-identical to the unfused chain, dtype included.
- One fused resampling (one step, or an affine chain whose intermediate grids hold the
  content) equals one `sitk.Resample` with the composed transform to 1e-4 of the
  intensity range (label maps: identical), except at exact ties, which float32
  coordinates may break the other way: a continuous index within 1e-3 of a rounding
  tie k + 1/2 (nearest) or of the buffer's edge (-1/2, n - 1/2: inside or fill).
- Label maps: a voxel whose fused and unfused labels differ lies next to a boundary
  between those two labels: in the fused or in the unfused result, both labels occur
  within LABEL_BAND voxels of it (Chebyshev, on the output grid; the output's border
  counts as every label, since a step's fill, label 0, can lie just outside the
  output); such voxels are at most LABEL_FRACTION of the voxels on a label boundary
  (a neighbour holds another label) in either result: a one-voxel shift of a boundary
  changes one of the two layers it separates. Nearest neighbour
  rounds each step's position to that step's grid, by up to half a voxel per resampling
  step, which the fused chain does once: positions differ by at most half a step voxel
  per resampling (at most 3 here, with step voxels up to 1.6 output voxels: under 2.5
  output voxels), so a label can only change where the other label is that close.
- Images (smooth test images) agree to a bound computed per chain, away from the
  fill region. Linear interpolation along a grid with steps h_j (in input voxels)
  deviates from the function by at most sum_j h_j^2 |f''| / 8; the test image is a sum
  of cosines of WAVELENGTH input voxels, so |f''| <= (2 pi / WAVELENGTH)^2 along any
  unit direction. The fused chain interpolates once, on the input grid (h_j = 1); the
  unfused chain once per resampling step, on that step's input grid, whose steps
  measured in input voxels come from the composed maps; a convex combination does not
  grow an earlier error. So |fused - unfused| <= the sum of those bounds (`_bounds`),
  times ELASTIC_FACTOR when an elastic field takes part (its Jacobian lengthens the
  steps and its curvature adds to f''; fields of sigma >= 3 mm and magnitude <= 2.5
  mm). Next to the fill region the two differ by design: the unfused chain blends data
  with a step's fill across one voxel of that step's grid, the fused chain has a sharp
  edge, and its fill is the input's minimum where an intermediate step's minimum may
  be higher (see the module docstring); so voxels within FILL_BAND voxels of a step's
  grid (converted to output voxels) of the fill region of either result, or of the
  output's border, are left out of the image comparison, and the fill region of the
  fused result is checked to hold the input's minimum.
- On the CPU, chains that `_sitk_route` accepts are sampled by one SimpleITK resampling
  (`SITK_ON_CPU`); the claims above are checked for that path and for the torch path,
  and the two agree with each other: images to 1e-5 of the intensity range, labels by
  the band rule (they round in float64 and float32: exact ties fall either way).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813 (the alias SimpleITK documents)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import ndimage

from medasl.ops import aug
from medasl.runtime import fused_spatial as fs
from medasl.runtime.fused_spatial import SpatialStep, fusable, fused_spatial, unfused_spatial, why_not_fusable
from medasl.runtime.values import Pair, Volume
from tests.conftest import shared_data

SCALE = float(os.environ.get("MEDASL_HYPOTHESIS_SCALE", "1"))
SETTINGS: dict[str, Any] = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])

GEOMETRY_MM = 1e-6
LABEL_BAND = 2
LABEL_FRACTION = 0.5
WAVELENGTH = 24.0
MAX_RESAMPLINGS = 3
ELASTIC_FACTOR = 2.0
FILL_BAND = 2


def examples(n: int) -> int:
    return max(1, int(n * SCALE))


@contextmanager
def sampling_with(sitk_on_cpu: bool) -> Iterator[None]:
    """The kernel's CPU sampling path: SimpleITK where it can (True) or torch only (False).
    (Not monkeypatch: hypothesis tests may not use function-scoped fixtures.)"""
    before = fs.SITK_ON_CPU
    fs.SITK_ON_CPU = sitk_on_cpu
    try:
        yield
    finally:
        fs.SITK_ON_CPU = before


PATHS = pytest.mark.parametrize("sitk_on_cpu", [True, False], ids=["sitk", "torch"])


# ----- data ---------------------------------------------------------------------------------


def _rotation(dim: int, angles: list[float]) -> tuple[float, ...]:
    if dim == 2:
        c, s = math.cos(angles[0]), math.sin(angles[0])
        return (c, -s, s, c)
    img = sitk.Euler3DTransform((0, 0, 0), *angles)
    return tuple(img.GetMatrix())


def _smooth(shape_zyx: tuple[int, ...], phase: list[float]) -> np.ndarray:
    """Amplitude 1 per axis, WAVELENGTH voxels: sum of cosines along each array axis."""
    grids = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape_zyx], indexing="ij")
    return sum(np.cos(2 * math.pi * g / WAVELENGTH + p) for g, p in zip(grids, phase)).astype(np.float32)


def _labels(shape_zyx: tuple[int, ...], centres: list[float]) -> np.ndarray:
    """Two blobs, labels 1 and 2, in index space."""
    grids = np.meshgrid(*[np.arange(n, dtype=np.float64) / n for n in shape_zyx], indexing="ij")
    r1 = sum((g - c) ** 2 for g, c in zip(grids, centres))
    r2 = sum((g - (1 - c)) ** 2 for g, c in zip(grids, centres))
    out = np.zeros(shape_zyx, dtype=np.uint8)
    out[r1 < 0.06] = 1
    out[r2 < 0.04] = 2
    return out


@st.composite
def cases(draw: st.DrawFn, dims: tuple[int, ...] = (2, 3)) -> tuple[Volume, Volume]:
    dim = draw(st.sampled_from(dims))
    lo, hi = (8, 14) if dim == 3 else (12, 24)
    size = [draw(st.integers(lo, hi)) for _ in range(dim)]
    spacing = [draw(st.floats(0.6, 2.0)) for _ in range(dim)]
    origin = [draw(st.floats(-50, 50)) for _ in range(dim)]
    # angles rounded to 1e-6: ITK's SVD fails on direction cosines of 1e-308 (the sitk
    # references below would map points to NaN)
    angles = [round(draw(st.floats(-0.6, 0.6)), 6) for _ in range(1 if dim == 2 else 3)]
    direction = _rotation(dim, angles)
    shape = tuple(reversed(size))
    phase = [draw(st.floats(0, 2 * math.pi)) for _ in range(dim)]
    centres = [draw(st.floats(0.3, 0.6)) for _ in range(dim)]
    img = Volume(_smooth(shape, phase), spacing, origin, direction, kind="image", modality="CT")
    lab = Volume(_labels(shape, centres), spacing, origin, direction, kind="labels")
    return img, lab


def _seed(draw: st.DrawFn) -> tuple[int, ...]:
    return (draw(st.integers(0, 2**31)), draw(st.integers(0, 99)))


@st.composite
def steps(draw: st.DrawFn, vol: Volume, index_only: bool = False) -> list[SpatialStep]:
    """A random chain for `vol`: parameters relative to the input's grid (sizes and
    spacings within the bounds the tolerances above assume)."""
    dim = vol.dim
    n = draw(st.integers(1, 4))
    ops = ["crop_or_pad", "random_crop", "flip"] + (["reorient"] if dim == 3 else [])
    if not index_only:
        ops += ["resample", "resample_to", "resize", "rotate", "affine", "random_rescale", "elastic"]
    out: list[SpatialStep] = []
    if draw(st.booleans()) and draw(st.booleans()):
        out.append(SpatialStep("crop_foreground", {"margin": draw(st.integers(0, 2)), "threshold": 0.5}))
    resamplings = 0
    for _ in range(n):
        op = draw(st.sampled_from(ops))
        factors = [draw(st.floats(0.7, 1.3)) for _ in range(dim)]
        size = [max(2, round(s * f)) for s, f in zip(vol.shape, factors)]
        p = draw(st.sampled_from([1.0, 1.0, 0.5]))
        if op in ("resample", "resample_to", "resize", "rotate", "affine", "random_rescale", "elastic"):
            if resamplings == MAX_RESAMPLINGS:
                continue
            resamplings += 1
        if op == "crop_or_pad":
            out.append(SpatialStep(op, {"size": tuple(size)}))
        elif op == "random_crop":
            out.append(SpatialStep(op, {"size": tuple(size)}, _seed(draw)))
        elif op == "flip":
            out.append(SpatialStep(op, {"axis": draw(st.integers(0, dim - 1)), "p": p}, _seed(draw)))
        elif op == "reorient":
            out.append(SpatialStep(op, {"to": draw(st.sampled_from(["RAS", "LPS", "PIR", "SAL", "ILA"]))}))
        elif op == "resample":
            # new spacing at most STEP_MAX / 1.3 times the input's, so steps stay below STEP_MAX voxels
            sp = [s * draw(st.floats(0.7, 1.2)) for s in vol.spacing]
            out.append(SpatialStep(op, {"spacing": tuple(sp)}))
        elif op == "resize":
            out.append(SpatialStep(op, {"size": tuple(size)}))
        elif op == "resample_to":
            ref_sp = [s * draw(st.floats(0.8, 1.2)) for s in vol.spacing]
            shift = np.array([draw(st.floats(-3, 3)) for _ in range(dim)])
            turn = [round(draw(st.floats(-0.2, 0.2)), 6) for _ in range(1 if dim == 2 else 3)]
            d_in = np.array(vol.direction).reshape(dim, dim)
            direction = np.array(_rotation(dim, turn)).reshape(dim, dim) @ d_in
            ref = Volume(np.zeros(tuple(reversed(size)), np.uint8), ref_sp, tuple(np.array(vol.origin) + shift),
                         tuple(direction.ravel()))
            out.append(SpatialStep(op, {"reference": ref}))
        elif op == "rotate":
            out.append(SpatialStep(op, {"angle": draw(st.floats(0, 20)), "p": p}, _seed(draw)))
        elif op == "affine":
            out.append(SpatialStep(op, {"scale": draw(st.floats(0, 0.15)), "shear": draw(st.floats(0, 5)),
                                        "translate": draw(st.floats(0, 3)), "p": p}, _seed(draw)))
        elif op == "random_rescale":
            out.append(SpatialStep(op, {"scale": (0.85, 1.2), "p": p}, _seed(draw)))
        else:
            out.append(SpatialStep(op, {"sigma": draw(st.floats(3, 6)), "magnitude": draw(st.floats(0.5, 2.5)),
                                        "p": p}, _seed(draw)))
    return out


# ----- comparisons -----------------------------------------------------------------------------


def _assert_same_geometry(a: Volume, b: Volume) -> None:
    assert a.shape == b.shape
    assert a.array.shape == b.array.shape
    for x, y in ((a.spacing, b.spacing), (a.origin, b.origin), (a.direction, b.direction)):
        assert np.max(np.abs(np.subtract(x, y))) <= GEOMETRY_MM, (x, y)
    assert (a.kind, a.modality, a.source) == (b.kind, b.modality, b.source)
    assert a.array.dtype == b.array.dtype


def _near(mask: np.ndarray, radius: int) -> np.ndarray:
    """Voxels within `radius` (Chebyshev) of a voxel of `mask`."""
    if radius <= 0 or not mask.any():
        return mask
    return ndimage.binary_dilation(mask, structure=np.ones((3,) * mask.ndim, bool), iterations=radius)


def _check_labels(f: Volume, u: Volume) -> float:
    """The label claim of the module docstring; returns the differing fraction."""
    a, b = f.array, u.array
    diff = a != b
    r = LABEL_BAND
    # the border counts as every label: pad with a marker that matches any value
    pa, pb = (np.pad(x.astype(np.int64), r, constant_values=-1) for x in (a, b))
    for index in np.argwhere(diff):
        value, other = a[tuple(index)], b[tuple(index)]
        window = tuple(slice(i, i + 2 * r + 1) for i in index)  # the Chebyshev ball of radius r
        both = [np.any((w == value) | (w == -1)) and np.any((w == other) | (w == -1)) for w in (pa[window], pb[window])]
        assert any(both), f"label {value} vs {other} at {tuple(index)}: away from any boundary between them"
    # the boundary voxels of either result: a neighbour (3^d) holds another label
    size = (3,) * a.ndim
    boundary = np.zeros(a.shape, bool)
    for r in (a, b):
        boundary |= ndimage.maximum_filter(r, size=size) != ndimage.minimum_filter(r, size=size)
    frac = float(diff.sum()) / max(int(boundary.sum()), 1)
    assert frac <= LABEL_FRACTION, frac
    return frac


def _probe(x: Volume, chain: list[SpatialStep]) -> tuple[np.ndarray, np.ndarray]:
    """Where the fused and the unfused results hold data rather than fill: the chain run
    on `x` paired with an all-ones label map (fill 0 at every step for label kinds; the
    pair so that crop_foreground's box is still `x`'s)."""
    ones = Pair(x, Volume(np.ones(x.array.shape[: x.dim], np.uint8), x.spacing, x.origin, x.direction, kind="labels"))
    return fused_spatial(ones, chain)[0].target.array > 0, unfused_spatial(ones, chain)[0].target.array > 0


def _interpolates(chain: list[SpatialStep], drawn: dict[int, dict]) -> bool:
    """Whether some step of the chain resampled (else the chain is index-only and exact)."""
    return any(s.op in ("resample", "resample_to", "resize") or drawn.get(i, {}).get("applied") and s.op != "flip"
               for i, s in enumerate(chain))


def _bounds(x: Volume, chain: list[SpatialStep]) -> tuple[float, int]:
    """The image bound of the module docstring for this chain on `x` (absolute, for the
    test image of `_smooth`), and the fill band in output voxels."""
    stages, _ = fs._plan(x, chain)  # the grids and maps the chain goes through (same draws)
    d = x.dim
    per_h2 = (2 * math.pi / WAVELENGTH) ** 2 / 8  # |f''| / 8 along any unit direction
    total = d * per_h2  # the fused chain's one interpolation, on the input grid (steps of 1 voxel)
    lin = np.eye(d)  # a step's input index -> the original index (linear part)
    for stage in stages:
        if not stage.index_only:
            total += per_h2 * float(np.sum(lin**2))  # sum over the grid's axes of squared step lengths
        lin = lin @ stage.matrix[:d, :d]
    if any(stage.field is not None for stage in stages):
        total *= ELASTIC_FACTOR
    # one voxel of a step's input grid, in output voxels: the width of the unfused blend
    widest = 1.0
    to_out = np.eye(d)
    for stage in reversed(stages):
        to_out = stage.matrix[:d, :d] @ to_out  # output index -> this step's input index
        widest = max(widest, float(np.max(np.linalg.norm(np.linalg.inv(to_out), axis=0))))
    return total, FILL_BAND * math.ceil(widest)


def _check_image(f: Volume, u: Volume, x: Volume, chain: list[SpatialStep], interpolated: bool) -> float:
    """The image claim of the module docstring; returns the largest difference compared."""
    pf, pu = _probe(x, chain)
    bound, band = _bounds(x, chain)
    # fill just outside the output grid blends into its border voxels too (unfused)
    edge = np.pad(~pf | ~pu, 1, constant_values=True)
    keep = ~_near(edge, band)[(slice(1, -1),) * pf.ndim]
    err = float(np.max(np.abs(f.array[keep].astype(np.float64) - u.array[keep]), initial=0.0))
    assert err <= bound, (err, bound)
    # the fill region of the fused result holds the input's minimum
    if interpolated and (~pf).any():
        assert np.all(f.array[~pf] == np.float32(np.min(x.array)))
    return err


# ----- 1. random chains against the unfused chain -------------------------------------------------


@PATHS
@settings(max_examples=examples(40), **SETTINGS)
@given(data=st.data())
def test_random_chains_match_the_unfused_chain(sitk_on_cpu: bool, data: st.DataObject) -> None:
    img, lab = data.draw(cases())
    chain = data.draw(steps(img))
    assert fusable(chain), why_not_fusable(chain)
    with sampling_with(sitk_on_cpu):  # _check_image's probe of the fill region too
        (f, df), (u, du) = fused_spatial(Pair(img, lab), chain), unfused_spatial(Pair(img, lab), chain)
        assert df == du
        for a, b in ((f.input, u.input), (f.target, u.target)):
            _assert_same_geometry(a, b)
        _check_labels(f.target, u.target)
        _check_image(f.input, u.input, img, chain, _interpolates(chain, df))


# ----- 2. one fused resampling is one sitk.Resample -----------------------------------------------


def _sitk_reference(x: Volume, grid: Volume, transform: sitk.Transform, nearest: bool) -> np.ndarray:
    img = x.to_sitk()
    if not nearest:
        img = sitk.Cast(img, sitk.sitkFloat32)
    ref = sitk.Image(list(grid.shape), sitk.sitkUInt8)
    ref.SetSpacing(grid.spacing)
    ref.SetOrigin(grid.origin)
    ref.SetDirection(grid.direction)
    fill = 0.0 if nearest else float(np.min(x.array))
    out = sitk.Resample(img, ref, transform, sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear, fill)
    return sitk.GetArrayFromImage(out)


def _transform_of(x: Volume, step: SpatialStep) -> sitk.Transform:
    """The sitk transform the unfused op uses (identity for the pre resamplings)."""
    drawn = fused_spatial(x, [step])[1].get(0)
    make = {"rotate": aug._rotate_transform, "affine": aug._affine_transform, "random_rescale": aug._rescale_transform}
    return make[step.op](x, drawn) if step.op in make else sitk.Transform(x.dim, sitk.sitkIdentity)


def _assert_only_ties(x: Volume, out: Volume, transform: sitk.Transform, differ: np.ndarray,
                      edges_only: bool = False) -> None:
    """Differences from SimpleITK only at ties: nearest neighbour where the continuous
    input index (as SimpleITK computes it) is within 1e-3 of k + 1/2 along some axis;
    with `edges_only` (linear), where it is within 1e-3 of the buffer's edge -1/2 or
    n - 1/2, inside for one and outside (fill) for the other. The coordinates are
    computed in another order, in float32, so exact ties fall either way."""
    grid, src = out.to_sitk(), x.to_sitk()
    for index in np.argwhere(differ):
        point = grid.TransformContinuousIndexToPhysicalPoint([float(i) for i in reversed(index)])
        ci = np.array(src.TransformPhysicalPointToContinuousIndex(transform.TransformPoint(point)))
        if edges_only:
            size = np.array(x.shape, dtype=float)
            assert np.any((np.abs(ci + 0.5) < 1e-3) | (np.abs(ci - (size - 0.5)) < 1e-3)), (index, ci)
        else:
            frac = ci - np.floor(ci)
            assert np.any(np.abs(frac - 0.5) < 1e-3), (index, ci)


@PATHS
@settings(max_examples=examples(25), **SETTINGS)
@given(data=st.data())
def test_one_resampling_is_one_sitk_resample(sitk_on_cpu: bool, data: st.DataObject) -> None:
    img, lab = data.draw(cases())
    step = data.draw(steps(img).filter(lambda c: c[0].op in ("resample", "resample_to", "resize", "rotate", "affine",
                                                               "random_rescale")).map(lambda c: c[0]))
    step = SpatialStep(step.op, {**step.params, **({"p": 1.0} if "p" in step.params else {})}, step.seed)
    rng = float(np.ptp(img.array))
    for x, nearest in ((img, False), (lab, True)):
        with sampling_with(sitk_on_cpu):
            out, _ = fused_spatial(x, [step])
        ref = _sitk_reference(x, out, _transform_of(x, step), nearest)
        if nearest:
            _assert_only_ties(x, out, _transform_of(x, step), out.array != ref)
        else:
            _assert_only_ties(x, out, _transform_of(x, step), np.abs(out.array - ref) > 1e-4 * rng, edges_only=True)


def test_affine_chain_is_one_sitk_resample_with_the_composed_transform() -> None:
    """rotate, affine and random_rescale in a row (content far from the border, so no
    intermediate grid cuts any of it): one sitk.Resample through the composite."""
    n = 24
    z, y, x = np.mgrid[0:n, 0:n, 0:n].astype(np.float64)
    r2 = ((x - n / 2) ** 2 + (y - n / 2) ** 2 + (z - n / 2) ** 2) / (n / 5) ** 2
    # positive content on a background of 0, the minimum: the fill of every step
    arr = np.where(r2 < 1, 3 + np.cos(x / 3) + np.sin(y / 4) + 2 * (1 - r2), 0).astype(np.float32)
    vol = Volume(arr, (1.1, 0.8, 1.7), (3.0, -2.0, 10.0), _rotation(3, [0.2, -0.3, 0.4]))
    chain = [SpatialStep("rotate", {"angle": 15.0, "p": 1.0}, (1,)),
             SpatialStep("affine", {"scale": 0.1, "shear": 4.0, "translate": 2.0, "p": 1.0}, (2,)),
             SpatialStep("random_rescale", {"scale": (0.9, 1.1), "p": 1.0}, (3,))]
    out, drawn = fused_spatial(vol, chain)
    composite = sitk.CompositeTransform(3)
    for i, step in enumerate(chain):  # output -> input: the first step's transform is applied last
        make = {"rotate": aug._rotate_transform, "affine": aug._affine_transform,
                "random_rescale": aug._rescale_transform}[step.op]
        composite.AddTransform(make(vol, drawn[i]))
    ref = _sitk_reference(vol, out, composite, nearest=False)
    assert np.max(np.abs(out.array - ref)) <= 1e-4 * float(np.ptp(arr))


# ----- 3. identical draws -------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [(0,), (1, 2), (123456789, 7)])
def test_random_ops_draw_what_the_unfused_ops_draw(seed: tuple[int, ...]) -> None:
    arr = np.arange(18 * 15 * 11, dtype=np.int16).reshape(11, 15, 18)
    vol = Volume(arr, (1.0, 1.2, 2.0), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    chain = [SpatialStep("crop_or_pad", {"size": (20, 12, 9)}),  # the crop below draws within this grid
             SpatialStep("random_crop", {"size": (7, 5, 4)}, seed),
             SpatialStep("flip", {"axis": 2, "p": 0.5}, seed + (1,)),
             SpatialStep("rotate", {"angle": 12.0, "p": 0.7}, seed + (2,)),
             SpatialStep("affine", {"scale": 0.1, "shear": 3.0, "translate": 1.0, "p": 0.7}, seed + (3,)),
             SpatialStep("random_rescale", {"p": 0.7}, seed + (4,)),
             SpatialStep("elastic", {"p": 0.7}, seed + (5,))]
    fused, unfused = fused_spatial(vol, chain)[1], unfused_spatial(vol, chain)[1]
    assert fused == unfused
    assert sorted(fused) == [1, 2, 3, 4, 5, 6]
    # the same draws as calling each operator with its own generator
    for i in range(1, len(chain)):
        step = chain[i]
        expected = aug.OPERATORS[step.op](unfused_spatial(vol, chain[:i])[0], **step.params,
                                          rng=np.random.default_rng(list(step.seed)))[1]
        assert fused[i] == expected


# ----- 4. index-only chains are exact ---------------------------------------------------------------


@st.composite
def index_cases(draw: st.DrawFn) -> Volume:
    kind = draw(st.sampled_from(["image", "labels", "rgb"]))
    dim = 2 if kind == "rgb" else draw(st.sampled_from([2, 3]))
    size = [draw(st.integers(3, 12)) for _ in range(dim)]
    shape = tuple(reversed(size)) + ((3,) if kind == "rgb" else ())
    rng = np.random.default_rng(draw(st.integers(0, 1000)))
    dtype = np.uint8 if kind != "image" else draw(st.sampled_from([np.int16, np.float32]))
    arr = rng.integers(0, 200, size=shape).astype(dtype)
    if kind == "image":
        arr[tuple(0 for _ in shape)] = -5  # a unique minimum, so that a crop that removes it changes the fill
    spacing = [draw(st.floats(0.5, 2.0)) for _ in range(dim)]
    direction = _rotation(dim, [draw(st.floats(-3.1, 3.1)) for _ in range(1 if dim == 2 else 3)])
    return Volume(arr, spacing, [draw(st.floats(-9, 9)) for _ in range(dim)], direction,
                  kind="image" if kind == "rgb" else kind)


@settings(max_examples=examples(60), **SETTINGS)
@given(data=st.data())
def test_index_only_chains_are_bit_exact(data: st.DataObject) -> None:
    vol = data.draw(index_cases())
    chain = data.draw(steps(vol, index_only=True))
    (f, df), (u, du) = fused_spatial(vol, chain), unfused_spatial(vol, chain)
    assert df == du
    _assert_same_geometry(f, u)
    assert np.array_equal(f.array, u.array)


# ----- the rest of the interface ----------------------------------------------------------------------


def test_fusable_says_which_chains_are_accepted() -> None:
    ref = Volume(np.zeros((4, 4, 4), np.uint8), (1, 1, 1), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    assert fusable([SpatialStep("crop_foreground", {}), SpatialStep("resample", {"spacing": (2, 2, 2)})])
    assert fusable([SpatialStep("resample_to", {"reference": ref}), SpatialStep("rotate", {}, (1,))])
    assert "first step" in str(why_not_fusable([SpatialStep("crop_or_pad", {"size": (2, 2, 2)}),
                                                 SpatialStep("crop_foreground", {})]))
    assert not fusable([SpatialStep("window", {"level": 0, "width": 1})])
    assert not fusable([SpatialStep("rotate", {})])  # random without a seed
    assert not fusable([SpatialStep("resample", {"spacing": (2, 2, 2), "interp": "bspline"})])
    assert not fusable([SpatialStep("resample", {"spacing": (2, 2, 2), "interp": "nearest"}),
                        SpatialStep("rotate", {}, (1,))])  # nearest and linear for one image
    with pytest.raises(ValueError, match="cannot fuse"):
        fused_spatial(ref, [SpatialStep("rotate", {})])


def test_linear_label_is_refused_as_unfused() -> None:
    lab = Volume(np.zeros((4, 5, 6), np.uint8), (1, 1, 1), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1), kind="labels")
    with pytest.raises(ValueError, match="nearest"):
        fused_spatial(lab, [SpatialStep("resample", {"spacing": (2, 2, 2), "interp": "linear"})])


def test_pair_on_two_grids_falls_back_to_the_unfused_ops() -> None:
    img = Volume(_smooth((8, 9, 10), [0, 1, 2]), (1, 1, 1), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    lab = Volume(np.ones((6, 9, 10), np.uint8), (1, 1, 1.5), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1), kind="labels")
    chain = [SpatialStep("resample", {"spacing": (1.5, 1.5, 1.5)}), SpatialStep("rotate", {"p": 1.0}, (4,))]
    (f, df), (u, du) = fused_spatial(Pair(img, lab), chain), unfused_spatial(Pair(img, lab), chain)
    assert df == du
    assert np.array_equal(f.input.array, u.input.array) and np.array_equal(f.target.array, u.target.array)


def test_rgb_image_is_sampled_per_channel() -> None:
    rng = np.random.default_rng(3)
    base = _smooth((20, 24), [0.3, 1.0])
    arr = np.stack([base * 40 + 100 + 10 * c for c in range(3)], axis=-1) + rng.normal(0, 0.0, (20, 24, 3))
    vol = Volume(arr.astype(np.float32), (0.5, 0.5), (0, 0), (1, 0, 0, 1))
    chain = [SpatialStep("rotate", {"angle": 20.0, "p": 1.0}, (5,))]
    (f, _), (u, _) = fused_spatial(vol, chain), unfused_spatial(vol, chain)
    _assert_same_geometry(f, u)
    assert np.max(np.abs(f.array - u.array)) <= 1e-4 * float(np.ptp(arr))


def test_per_slice_sampling_equals_3d_sampling(monkeypatch: pytest.MonkeyPatch) -> None:
    """An in-plane chain (in-plane resampling, crop, flip) takes the 2-D per-slice path;
    the 3-D path gives the same values."""
    img = Volume(_smooth((9, 20, 22), [0.1, 0.2, 0.3]), (0.7, 0.8, 2.5), (1, 2, 3), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    chain = [SpatialStep("resample", {"spacing": (1.1, 1.3, 2.5)}), SpatialStep("crop_or_pad", {"size": (18, 12, 11)}),
             SpatialStep("flip", {"axis": 0, "p": 1.0}, (1,))]
    monkeypatch.setattr(fs, "SITK_ON_CPU", False)  # the torch path's two ways of sampling
    calls: list[bool] = []
    original = fs._slice_aligned
    monkeypatch.setattr(fs, "_slice_aligned", lambda *a: calls.append(original(*a)) or calls[-1])
    per_slice = fused_spatial(img, chain)[0].array
    assert calls and all(calls)
    monkeypatch.setattr(fs, "_slice_aligned", lambda *a: False)
    full = fused_spatial(img, chain)[0].array
    assert np.max(np.abs(per_slice - full)) <= 1e-5
    u = unfused_spatial(img, chain)[0].array
    pf = fused_spatial(Volume(np.ones((9, 20, 22), np.uint8), img.spacing, img.origin, img.direction, "labels"),
                       chain)[0].array > 0
    assert np.max(np.abs(per_slice - u)[pf]) <= 1e-4 * float(np.ptp(img.array))


# ----- 5. the SimpleITK path (CPU) against the torch path -----------------------------------------


@settings(max_examples=examples(40), **SETTINGS)
@given(data=st.data())
def test_sitk_path_equals_the_torch_path(data: st.DataObject) -> None:
    img, lab = data.draw(cases())
    chain = data.draw(steps(img))
    with sampling_with(True):
        (s, ds) = fused_spatial(Pair(img, lab), chain)
    with sampling_with(False):
        (t, dt) = fused_spatial(Pair(img, lab), chain)
    assert ds == dt
    for a, b in ((s.input, t.input), (s.target, t.target)):
        _assert_same_geometry(a, b)
    assert np.max(np.abs(s.input.array - t.input.array)) <= 1e-5 * float(np.ptp(img.array))
    _check_labels(s.target, t.target)


def _benchmark_chains(vol: Volume) -> dict[str, list[SpatialStep]]:
    """The chain types of benchmarks/spatial_fusion.py, scaled to `vol`."""
    size = tuple(n + 6 for n in vol.shape)
    res = SpatialStep("resample", {"spacing": tuple(s * 0.8 for s in vol.spacing)})
    pad = SpatialStep("crop_or_pad", {"size": size})
    flip = SpatialStep("flip", {"axis": 0, "p": 1.0}, (7, 0))
    rot = SpatialStep("rotate", {"angle": 10.0, "p": 1.0}, (7, 1))
    return {"resample + crop_or_pad": [res, pad], "crop_or_pad + flip + rotate": [pad, flip, rot],
            "resample + rotate": [res, rot],
            "resample + crop_or_pad + flip + rotate + random_rescale":
                [res, pad, flip, rot, SpatialStep("random_rescale", {"scale": (0.9, 1.1), "p": 1.0}, (7, 3))]}


def test_benchmark_chains_take_the_sitk_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The interpolating chain types of benchmarks/spatial_fusion.py are one SimpleITK
    resampling on the CPU (including the recomputed outer-half-voxel shell of the
    rotation's grid), equal to the torch path, and match the unfused chain."""
    img, lab = _smooth_pair((14, 20, 18))
    taken: list[bool] = []
    shells: list[int] = []
    route, points = fs._sample_sitk, fs._sample_points
    monkeypatch.setattr(fs, "_sample_sitk", lambda *a: taken.append((r := route(*a)) is not None) or r)
    monkeypatch.setattr(fs, "_sample_points", lambda *a: shells.append(len(a[-1])) or points(*a))
    for name, chain in _benchmark_chains(img).items():
        taken.clear()
        s, _ = fused_spatial(Pair(img, lab), chain)
        assert taken == [True, True], name
        with sampling_with(False):
            t, _ = fused_spatial(Pair(img, lab), chain)
        assert np.max(np.abs(s.input.array - t.input.array)) <= 1e-5 * float(np.ptp(img.array)), name
        _check_labels(s.target, t.target)
        u, _ = unfused_spatial(Pair(img, lab), chain)
        _check_labels(s.target, u.target)
        _check_image(s.input, u.input, img, chain, True)
    assert max(shells) > 0  # the rotations clamp some points: the recomputed shell is exercised


def test_shell_voxels_are_the_torch_paths() -> None:
    """Resample up, then rotate: output points in the outer half voxel of the resampled
    grid are clamped onto it by the torch path (as unfused, where rotate repeats that
    grid's edge); SimpleITK alone would read the input beyond it. On a ramp linear
    interpolation is exact, so the torch path, the SimpleITK path and the unfused chain
    agree wherever no step fills."""
    ramp = np.add.outer(np.arange(30, dtype=np.float32) * 2.0, np.arange(40, dtype=np.float32) * 3.0) + 100
    vol = Volume(ramp, (1.0, 1.0), (0, 0), (1, 0, 0, 1))
    chain = [SpatialStep("resample", {"spacing": (0.7, 0.7)}), SpatialStep("rotate", {"angle": 20.0, "p": 1.0}, (3,))]
    with sampling_with(True):
        s, _ = fused_spatial(vol, chain)
    with sampling_with(False):
        t, _ = fused_spatial(vol, chain)
    u, _ = unfused_spatial(vol, chain)
    assert np.max(np.abs(s.array - t.array)) <= 1e-4
    data = (s.array != ramp.min()) & (u.array != ramp.min())
    data &= ~_near(np.pad(~data, 1, constant_values=True), 2)[1:-1, 1:-1]  # the unfused blend with the fill
    assert np.max(np.abs(s.array - u.array)[data]) <= 1e-3


def _smooth_pair(shape_zyx: tuple[int, ...]) -> tuple[Volume, Volume]:
    spacing, origin, direction = (1.1, 0.9, 1.6), (3.0, -2.0, 1.0), _rotation(3, [0.1, -0.2, 0.15])
    img = Volume(_smooth(shape_zyx, [0.3, 1.1, 2.0]), spacing, origin, direction, kind="image", modality="CT")
    lab = Volume(_labels(shape_zyx, [0.4, 0.5, 0.45]), spacing, origin, direction, kind="labels")
    return img, lab


def test_worth_fusing_leaves_elastic_chains_unfused_on_the_cpu() -> None:
    rot = SpatialStep("rotate", {"p": 1.0}, (1,))
    el = SpatialStep("elastic", {"p": 1.0}, (2,))
    assert fs.worth_fusing([SpatialStep("resample", {"spacing": (2, 2, 2)}), rot])
    assert not fs.worth_fusing([rot, el])
    assert fs.worth_fusing([rot, el], device="cuda")


def test_real_ct_resample_and_rotate() -> None:
    """On the small TotalSegmentator CT and its label (../shared/data): a prep + aug chain
    against the unfused ops, labels by the band rule."""
    path = shared_data() / "ct_abdomen_totalsegmentator"
    ct = Volume.from_sitk(sitk.ReadImage(str(path / "example_ct_sm.nii.gz")), "image", "CT")
    seg = Volume.from_sitk(sitk.ReadImage(str(path / "example_seg.nii.gz")), "labels", "Any")
    chain = [SpatialStep("resample", {"spacing": (2.0, 2.0, 3.0)}), SpatialStep("crop_or_pad", {"size": (128, 128, 32)}),
             SpatialStep("flip", {"axis": 0, "p": 1.0}, (1,)), SpatialStep("rotate", {"angle": 10.0, "p": 1.0}, (2,))]
    (f, df), (u, du) = fused_spatial(Pair(ct, seg), chain), unfused_spatial(Pair(ct, seg), chain)
    assert df == du
    _assert_same_geometry(f.input, u.input)
    _assert_same_geometry(f.target, u.target)
    _check_labels(f.target, u.target)


@pytest.mark.parametrize(("dtype", "kind", "chain"), [
    (np.float64, "image", [SpatialStep("rotate", {"p": 1.0}, (1,))]),  # aug keeps float64
    (np.float64, "image", [SpatialStep("resample", {"spacing": (1.5, 1.5, 1.5)})]),  # pre gives float32
    (np.int16, "image", [SpatialStep("resample", {"spacing": (1.5, 1.5, 1.5)})]),
    (np.int16, "image", [SpatialStep("resample", {"spacing": (1.5, 1.5, 1.5), "interp": "nearest"})]),
    (np.uint16, "instances", [SpatialStep("rotate", {"p": 1.0}, (2,))]),  # a dtype torch cannot gather
    (np.float32, "probs", [SpatialStep("crop_or_pad", {"size": (12, 12, 12)}),
                           SpatialStep("rotate", {"angle": 30.0, "p": 1.0}, (3,))]),
])
def test_dtypes_and_fills_follow_the_unfused_ops(dtype: type, kind: str, chain: list[SpatialStep]) -> None:
    rng = np.random.default_rng(0)
    arr = (rng.random((8, 9, 10)) * 50 + 5).astype(dtype)
    vol = Volume(arr, (1.0, 1.1, 1.2), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1), kind=kind)
    (f, _), (u, _) = fused_spatial(vol, chain), unfused_spatial(vol, chain)
    _assert_same_geometry(f, u)
    # the fill: 0 outside for pre's crop of probs, the minimum for aug's rotate of probs
    if kind == "probs":
        corner = (0, 0, 0)
        assert f.array[corner] == u.array[corner]


def test_outer_half_voxel_of_an_intermediate_grid_repeats_its_edge() -> None:
    """Crop, then resize up (which keeps the outer corners): the first and last output
    voxels lie in the cropped grid's outer half voxel, where the unfused resize repeats
    the crop's edge voxel; the fused chain must not read the cropped-away neighbour. On
    a linear ramp interpolation is exact, so the two agree everywhere."""
    ramp = np.tile(np.arange(20, dtype=np.float32) * 10, (6, 1))  # value = 10 * x index
    vol = Volume(ramp, (1.0, 1.0), (0, 0), (1, 0, 0, 1))
    chain = [SpatialStep("crop_or_pad", {"size": (10, 6)}), SpatialStep("resize", {"size": (30, 6)})]
    (f, _), (u, _) = fused_spatial(vol, chain), unfused_spatial(vol, chain)
    _assert_same_geometry(f, u)
    assert f.array[0, 0] == 50.0  # the crop's first column, not 10 * 4.67 from the column it removed
    assert np.max(np.abs(f.array - u.array)) <= 1e-4
