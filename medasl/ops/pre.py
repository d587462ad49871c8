"""std.pre: geometry, intensity, bias-field, registration, stain and mask operators
(stdlib/pre.medas).

Each public function implements the operator of the same name; the executor binds them
by name (see `OPERATORS`) and calls them with keyword arguments named as in the
signature, units already converted by the checker (lengths in mm as floats, angles in
degrees). Enum arguments (`interp`, `to`, `metric`) arrive as their names.

Conventions every operator here keeps, and why:

- Geometry goes through SimpleITK (`Volume.to_sitk` / `from_sitk`) or is computed from
  the Volume's own spacing, origin and direction, so world positions never move by
  accident: crop/pad shifts the origin so that kept voxels stay where they were,
  resampling keeps origin and direction, reorienting is an exact axis permutation.
- Label kinds (`labels`, `instances`, `onehot`) are never interpolated linearly:
  `interp=auto` is nearest neighbour for them and linear for images and probability
  maps. The checker refuses `linear`/`bspline` on a label map; the operators refuse it
  again (ValueError) because a label map with new, averaged values is a silent error.
- Interpolating an image (linear, B-spline) and every intensity operator give float32,
  so an int16 CT is not rounded back to integers; nearest neighbour keeps the dtype.
- Voxels a resampling grid puts outside the input get the image's minimum (air in CT,
  background in MR) for images and 0 (background) for label kinds.
- Problems in the data (a mask on another grid, an unreadable reference image) raise
  `DataError` (medasl/runtime/errors.py).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence

import numpy as np
import SimpleITK as sitk  # noqa: N813 (the alias SimpleITK documents)

from medasl.runtime.errors import DataError
from medasl.runtime.values import Pair, Volume, carried

PathLike = str | os.PathLike[str]

NEAREST_KINDS = ("labels", "instances", "onehot")
"""Kinds whose values are classes or ids: interpolated by nearest neighbour only."""

_INTERPOLATORS = {"nearest": sitk.sitkNearestNeighbor, "linear": sitk.sitkLinear, "bspline": sitk.sitkBSpline}


# ===== shared helpers =====================================================================


def _interpolator(x: Volume, interp: str) -> int:
    """The SimpleITK interpolator for `interp` on `x` (`auto`: nearest for label kinds,
    linear otherwise); ValueError for a linear or B-spline label map."""
    name = str(interp)
    if name == "auto":
        name = "nearest" if x.kind in NEAREST_KINDS else "linear"
    if name not in _INTERPOLATORS:
        raise ValueError(f"interp must be auto, nearest, linear or bspline, not {interp!r}")
    if name != "nearest" and x.kind in NEAREST_KINDS:
        raise ValueError(f"a {x.kind} volume may only be interpolated with nearest neighbour, not {name}")
    return _INTERPOLATORS[name]


def _prepare(x: Volume, interpolator: int) -> tuple[sitk.Image, float]:
    """`x` as a SimpleITK image ready to resample with `interpolator` (cast to float32
    unless nearest neighbour), and the value for voxels outside the input."""
    img = x.to_sitk()
    if interpolator != sitk.sitkNearestNeighbor:
        vector = img.GetNumberOfComponentsPerPixel() > 1
        img = sitk.Cast(img, sitk.sitkVectorFloat32 if vector else sitk.sitkFloat32)
    return img, _outside_value(x)


def _physical_memory() -> int | None:
    """This machine's memory in bytes (None where the system does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _check_allocation(x: Volume, size: Sequence[float], itemsize: int, what: str) -> None:
    """Refuse, before allocating it, a result of `size` voxels ((x, y, z) order) that this
    machine cannot hold (E2002 with the shape and the bytes it wanted): an allocation that
    fails inside SimpleITK or NumPy is a traceback, or the system's out-of-memory killer."""
    channels = int(np.prod(x.array.shape[x.dim:], dtype=np.float64)) if x.array.ndim > x.dim else 1
    wanted = float(np.prod([float(n) for n in size], dtype=np.float64)) * channels * itemsize
    memory = _physical_memory()
    if math.isfinite(wanted) and (memory is None or wanted <= memory):
        return
    shape = " x ".join(f"{n:.0f}" if n < 1e15 else f"{n:.3g}" for n in size)
    have = f", more than this machine's {_bytes_text(memory)} of memory" if memory is not None else ""
    raise DataError("E2002", f"{what} would make a volume of {shape} voxels ({_bytes_text(wanted)}){have}",
                    x.source, help="check the spacing and size (they are in mm and voxels); resample to a coarser"
                    " spacing, or crop to the region you need first")


def _bytes_text(n: float) -> str:
    for unit, scale in (("TB", 1024.0**4), ("GB", 1024.0**3), ("MB", 1024.0**2)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:.0f} bytes"


def _outside_value(x: Volume) -> float:
    """Fill value: the image minimum for images, 0 (background) for everything else."""
    if x.kind == "image" and x.array.size:
        return float(np.min(x.array))
    return 0.0


def _resampled(x: Volume, img: sitk.Image) -> Volume:
    return Volume.from_sitk(img, x.kind, x.modality, x.source).with_names(x.names)  # label values move, unchanged


def _index_to_point(x: Volume, index: Sequence[float]) -> tuple[float, ...]:
    """The world position (LPS mm) of continuous voxel index `index` ((x, y, z) order)."""
    d = np.array(x.direction).reshape(x.dim, x.dim)
    p = np.array(x.origin) + d @ (np.array(x.spacing) * np.asarray(index, dtype=float))
    return tuple(float(v) for v in p)


def _float(x: Volume) -> np.ndarray:
    return np.asarray(x.array, dtype=np.float32)


def _same_grid_mask(x: Volume, mask: Volume, what: str) -> np.ndarray:
    """`mask > 0` as a boolean array on `x`'s grid, or E1007 naming how the grids differ."""
    aligned = mask.aligned_to(x)
    if aligned is None:
        diffs = "; ".join(x.grid_differences(mask))
        raise DataError("E1007", f"the {what} mask is not on the image's grid ({diffs})", mask.source or x.source,
                        help="resample the mask onto the image first (`resample_to(mask, image)`)")
    m = aligned.array
    if m.ndim > x.dim:
        m = m.any(axis=-1)
    return m > 0


# ===== geometry ===========================================================================


def resample(x: Volume, spacing: Sequence[float], interp: str = "auto") -> Volume:
    """Resample to `spacing` (mm per axis, (x, y, z) order) keeping origin and direction;
    the size along each axis is ceil(size * old spacing / new spacing)."""
    if len(spacing) != x.dim:
        raise ValueError(f"spacing needs {x.dim} values, got {len(spacing)}")
    interpolator = _interpolator(x, interp)
    wanted = [max(1.0, n * old / new) for n, old, new in zip(x.shape, x.spacing, spacing)]
    itemsize = x.array.dtype.itemsize if interpolator == sitk.sitkNearestNeighbor else 4
    _check_allocation(x, wanted, itemsize, f"resampling to {tuple(float(s) for s in spacing)} mm")
    img, outside = _prepare(x, interpolator)
    size = [max(1, math.ceil(round(n * old / new, 6))) for n, old, new in zip(x.shape, x.spacing, spacing)]
    out = sitk.Resample(img, size, sitk.Transform(), interpolator, x.origin, tuple(float(s) for s in spacing),
                        x.direction, outside)
    return _resampled(x, out)


def resample_to(x: Volume, reference: Volume, interp: str = "auto") -> Volume:
    """Resample onto `reference`'s grid (size, spacing, origin and direction)."""
    if reference.dim != x.dim:
        raise ValueError(f"cannot resample a {x.dim}-D volume onto a {reference.dim}-D reference")
    interpolator = _interpolator(x, interp)
    img, outside = _prepare(x, interpolator)
    out = sitk.Resample(img, list(reference.shape), sitk.Transform(), interpolator, reference.origin,
                        reference.spacing, reference.direction, outside)
    return _resampled(x, out)


def reorient(x: Volume, to: str = "RAS") -> Volume:
    """Permute and flip axes so they point as `to` says (letters as nibabel writes them:
    where each axis points). Exact: only the storage order and the geometry change."""
    code = str(to).upper()
    if len(code) != x.dim:
        raise ValueError(f"orientation {to!r} does not fit a {x.dim}-D volume")
    out = sitk.DICOMOrient(x.to_sitk(), code)
    return _resampled(x, out)


def _apply_box(x: Volume, start: Sequence[int], size: Sequence[int], fill: float) -> Volume:
    """The part of `x` from voxel `start` ((x, y, z) order, may be negative or run past
    the end) of `size` voxels, padding with `fill`; the origin moves with `start` so
    that every kept voxel keeps its world position."""
    dim = x.dim
    out_shape = tuple(reversed([int(s) for s in size])) + x.array.shape[dim:]
    out = np.full(out_shape, fill, dtype=x.array.dtype)
    src, dst = [], []
    for axis in range(dim):  # array axis; its (x, y, z) axis is dim - 1 - axis
        k = dim - 1 - axis
        n, s, m = x.array.shape[axis], int(start[k]), int(size[k])
        lo, hi = max(s, 0), min(s + m, n)
        if hi <= lo:
            lo = hi = 0
        src.append(slice(lo, hi))
        dst.append(slice(lo - s, lo - s + (hi - lo)))
    out[tuple(dst)] = x.array[tuple(src)]
    origin = _index_to_point(x, start)
    return Volume(out, x.spacing, origin, x.direction, x.kind, x.modality, x.source, x.names)


def crop_or_pad(x: Volume, size: Sequence[int]) -> Volume:
    """Crop or pad around the centre to exactly `size` voxels ((x, y, z) order), as
    MONAI's ResizeWithPadOrCrop places the window: a crop starts at n//2 - size//2, a pad
    puts (size - n)//2 voxels before. Images are padded with their minimum, others with 0."""
    if len(size) != x.dim:
        raise ValueError(f"size needs {x.dim} values, got {len(size)}")
    start = [n // 2 - int(m) // 2 if n >= int(m) else -((int(m) - n) // 2) for n, m in zip(x.shape, size)]
    return _apply_box(x, start, size, _outside_value(x))


def resize(x: Volume, size: Sequence[int], interp: str = "auto") -> Volume:
    """Resample to `size` voxels ((x, y, z) order) covering the same physical extent
    (the outer corners of the first and last voxels stay put), so the spacing becomes
    old spacing * old size / new size."""
    if len(size) != x.dim:
        raise ValueError(f"size needs {x.dim} values, got {len(size)}")
    interpolator = _interpolator(x, interp)
    img, outside = _prepare(x, interpolator)
    spacing = [old * n / int(m) for old, n, m in zip(x.spacing, x.shape, size)]
    # the corner at index -0.5 stays: new origin = corner + half a new voxel
    origin = _index_to_point(x, [0.5 * (s / old) - 0.5 for s, old in zip(spacing, x.spacing)])
    out = sitk.Resample(img, [int(m) for m in size], sitk.Transform(), interpolator, origin, spacing, x.direction,
                        outside)
    return _resampled(x, out)


def crop_foreground(x: Volume | Pair, margin: int = 0, threshold: float = 0.0) -> Volume | Pair:
    """Crop to the bounding box of the voxels above `threshold` (any channel), plus
    `margin` voxels each side, clipped to the image. On a pair the input decides and the
    target is cropped to the same box (boxes clipped to it, a class kept: see
    `values.carried`). With no foreground the volume is returned whole."""
    if isinstance(x, Pair):
        start, size = _foreground_box(x.input, margin, threshold)
        image = _apply_box(x.input, start, size, 0.0)
        target = x.target
        return Pair(image, _apply_box(target, start, size, 0.0) if isinstance(target, Volume) else carried(target, image))
    start, size = _foreground_box(x, margin, threshold)
    return _apply_box(x, start, size, 0.0)


def _foreground_box(x: Volume, margin: int, threshold: float) -> tuple[list[int], list[int]]:
    fg = x.array > threshold
    if fg.ndim > x.dim:
        fg = fg.any(axis=-1)
    if not fg.any():
        return [0] * x.dim, list(x.shape)
    start, size = [0] * x.dim, [0] * x.dim
    for axis in range(x.dim):
        k = x.dim - 1 - axis
        other = tuple(a for a in range(x.dim) if a != axis)
        idx = np.flatnonzero(fg.any(axis=other))
        lo = max(int(idx[0]) - int(margin), 0)
        hi = min(int(idx[-1]) + int(margin) + 1, fg.shape[axis])
        start[k], size[k] = lo, hi - lo
    return start, size


# ===== intensity ===========================================================================


def window(x: Volume, level: float, width: float) -> Volume:
    """Clip to [level - width/2, level + width/2] and map that window linearly to [0, 1]."""
    if width <= 0:
        raise ValueError(f"window width must be positive, not {width}")
    low = level - width / 2.0
    a = (np.clip(_float(x), low, low + width) - np.float32(low)) / np.float32(width)
    return x.with_array(a.astype(np.float32))


def clip(x: Volume, low: float, high: float) -> Volume:
    """Clip intensities to [low, high] (float32)."""
    if low > high:
        raise ValueError(f"clip needs low <= high, got {low} > {high}")
    return x.with_array(np.clip(_float(x), np.float32(low), np.float32(high)))


def rescale(x: Volume, low: float = 0.0, high: float = 1.0) -> Volume:
    """Map [min, max] of the image linearly to [low, high] (a constant image becomes `low`)."""
    a = x.array.astype(np.float64)
    lo, hi = float(a.min()), float(a.max())
    if hi == lo:
        return x.with_array(np.full(a.shape, low, dtype=np.float32))
    return x.with_array(((a - lo) / (hi - lo) * (high - low) + low).astype(np.float32))


def zscore(x: Volume, mask: Volume | None = None) -> Volume:
    """(x - mean) / std over the whole image, the statistics taken inside `mask` (voxels
    > 0, same grid) when given, else over all voxels; population std, and a std of 0
    divides by 1 (as MONAI's NormalizeIntensity)."""
    a = x.array.astype(np.float64)
    if mask is None:
        values = a
    else:
        m = _same_grid_mask(x, mask, "zscore")
        if not m.any():
            raise DataError("E1009", "the zscore mask has no foreground voxel, so it gives no statistics",
                            mask.source, help="check the mask, or leave it out to use all voxels")
        values = a[m] if a.ndim == m.ndim else a[m, ...]
    mean, std = float(values.mean()), float(values.std())
    return x.with_array(((a - mean) / (std if std > 0 else 1.0)).astype(np.float32))


def percentile_rescale(x: Volume, lower: float = 0.5, upper: float = 99.5) -> Volume:
    """Map the `lower` and `upper` percentiles (NumPy's linear percentile) to 0 and 1 and
    clip to [0, 1]; when both percentiles coincide the result is all 0."""
    if not 0.0 <= lower < upper <= 100.0:
        raise ValueError(f"percentiles need 0 <= lower < upper <= 100, got {lower} and {upper}")
    a = x.array.astype(np.float64)
    lo, hi = (float(v) for v in np.percentile(a, [lower, upper]))
    if hi == lo:
        return x.with_array(np.zeros(a.shape, dtype=np.float32))
    return x.with_array(np.clip((a - lo) / (hi - lo), 0.0, 1.0).astype(np.float32))


def n4_bias_correction(x: Volume, mask: Volume | None = None, shrink: int = 4, iterations: int = 50,
                       levels: int = 4) -> Volume:
    """N4 bias-field correction with SimpleITK, as its N4 example does it: the fit runs
    on the image (and mask) shrunk by `shrink`, `iterations` per each of `levels` fitting
    levels; the log bias field is then evaluated on the full grid and divided out.
    Default mask: Otsu foreground (`sitk.OtsuThreshold(x, 0, 1, 200)`)."""
    img = sitk.Cast(x.to_sitk(), sitk.sitkFloat32)
    if mask is None:
        mask_img = sitk.OtsuThreshold(img, 0, 1, 200)
    else:
        m = _same_grid_mask(x, mask, "N4")
        mask_img = sitk.GetImageFromArray(m.astype(np.uint8))
        mask_img.CopyInformation(img)
    factors = [max(1, int(shrink))] * x.dim
    small = sitk.Shrink(img, factors) if shrink > 1 else img
    small_mask = sitk.Shrink(mask_img, factors) if shrink > 1 else mask_img
    corrector = sitk.N4BiasFieldCorrectionImageFilter()
    corrector.SetMaximumNumberOfIterations([int(iterations)] * int(levels))
    corrector.Execute(small, small_mask)
    log_bias = corrector.GetLogBiasFieldAsImage(img)
    out = img / sitk.Exp(log_bias)
    return x.with_array(sitk.GetArrayFromImage(sitk.Cast(out, sitk.sitkFloat32)))


# ===== registration ========================================================================


def _registration(fixed: sitk.Image, moving: sitk.Image, initial: sitk.Transform, metric: str, iterations: int,
                  levels: int, sampling: float) -> sitk.Transform:
    """One SimpleITK registration run: `metric` (Mattes with 50 bins), linear
    interpolation, regular-step gradient descent (step 2 down to 1e-4, `iterations` per
    level, scales from physical shift; plain gradient descent diverged on small
    images), `levels` resolutions shrinking by
    2**(levels-1) .. 1 with smoothing sigmas levels-1 .. 0 voxels, random sampling of
    `sampling` of the voxels with a fixed seed (so runs repeat)."""
    reg = sitk.ImageRegistrationMethod()
    name = str(metric)
    if name == "mattes":
        reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=50)
    elif name == "mean_squares":
        reg.SetMetricAsMeanSquares()
    elif name == "correlation":
        reg.SetMetricAsCorrelation()
    else:
        raise ValueError(f"metric must be mattes, mean_squares or correlation, not {metric!r}")
    if sampling < 1.0:
        reg.SetMetricSamplingStrategy(reg.RANDOM)
        reg.SetMetricSamplingPercentage(float(sampling), 1)
    else:
        reg.SetMetricSamplingStrategy(reg.NONE)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(learningRate=2.0, minStep=1e-4, numberOfIterations=int(iterations))
    reg.SetOptimizerScalesFromPhysicalShift()
    n = max(1, int(levels))
    reg.SetShrinkFactorsPerLevel([2 ** (n - 1 - i) for i in range(n)])
    reg.SetSmoothingSigmasPerLevel([float(n - 1 - i) for i in range(n)])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    reg.SetInitialTransform(initial, inPlace=False)
    return reg.Execute(fixed, moving)


def _rigid_transform(fixed: sitk.Image, moving: sitk.Image, metric: str, iterations: int, levels: int,
                     sampling: float) -> sitk.Transform:
    euler = sitk.Euler3DTransform() if fixed.GetDimension() == 3 else sitk.Euler2DTransform()
    initial = sitk.CenteredTransformInitializer(fixed, moving, euler,
                                                sitk.CenteredTransformInitializerFilter.GEOMETRY)
    return _registration(fixed, moving, initial, metric, iterations, levels, sampling)


def _innermost(t: sitk.Transform) -> sitk.Transform:
    """The optimised transform inside the CompositeTransform `Execute` returns."""
    if t.GetName() == "CompositeTransform":
        return sitk.CompositeTransform(t).GetBackTransform()
    return t


def _affine_transform(fixed: sitk.Image, moving: sitk.Image, metric: str, iterations: int, levels: int,
                      sampling: float) -> sitk.Transform:
    rigid = _rigid_transform(fixed, moving, metric, iterations, levels, sampling)
    rigid = _innermost(rigid)
    dim = fixed.GetDimension()
    euler = sitk.Euler3DTransform(rigid) if dim == 3 else sitk.Euler2DTransform(rigid)
    affine = sitk.AffineTransform(dim)
    affine.SetCenter(euler.GetCenter())
    affine.SetMatrix(euler.GetMatrix())
    affine.SetTranslation(euler.GetTranslation())
    return _registration(fixed, moving, affine, metric, iterations, levels, sampling)


def _register(find: Callable[..., sitk.Transform], moving: Volume, fixed: Volume, metric: str, iterations: int,
              levels: int, sampling: float, interp: str) -> Volume:
    if moving.dim != fixed.dim:
        raise ValueError(f"cannot register a {moving.dim}-D volume to a {fixed.dim}-D one")
    if moving.channels > 1 or fixed.channels > 1:
        raise ValueError("registration needs single-channel images")
    f = sitk.Cast(fixed.to_sitk(), sitk.sitkFloat32)
    m = sitk.Cast(moving.to_sitk(), sitk.sitkFloat32)
    transform = find(f, m, metric, iterations, levels, sampling)
    interpolator = _interpolator(moving, interp)
    img, outside = _prepare(moving, interpolator)
    out = sitk.Resample(img, f, transform, interpolator, outside)
    return _resampled(moving, out)


def register_rigid(moving: Volume, fixed: Volume, metric: str = "mattes", iterations: int = 200, levels: int = 3,
                   sampling: float = 0.1, interp: str = "auto") -> Volume:
    """Rigidly register `moving` to `fixed` (Euler transform initialised on the image
    centres, see `_registration` for the optimiser) and resample it onto the fixed grid."""
    return _register(_rigid_transform, moving, fixed, metric, iterations, levels, sampling, interp)


def register_affine(moving: Volume, fixed: Volume, metric: str = "mattes", iterations: int = 200, levels: int = 3,
                    sampling: float = 0.1, interp: str = "auto") -> Volume:
    """Affinely register `moving` to `fixed`, starting from the rigid registration's
    result, and resample it onto the fixed grid."""
    return _register(_affine_transform, moving, fixed, metric, iterations, levels, sampling, interp)


# ===== pathology stains =====================================================================


def _rgb(x: Volume, what: str) -> np.ndarray:
    """The RGB channels of a pathology image as (y, x, 3); alpha, when present, dropped."""
    a = x.array
    if x.dim != 2 or a.ndim != 3 or a.shape[-1] not in (3, 4):
        raise ValueError(f"{what} needs a 2-D RGB image, got an array of shape {a.shape}")
    return a[..., :3]


def _to_uint8(a: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


def _read_reference(path: PathLike) -> np.ndarray:
    """The RGB pixels of a reference image file, as (y, x, 3)."""
    from medasl.ops.io import _existing_file, _reason

    p = _existing_file(path)
    try:
        img = sitk.ReadImage(str(p))
    except RuntimeError as exc:
        raise DataError("E1002", f"cannot read the reference image {p}: {_reason(exc)}", p) from exc
    a = sitk.GetArrayFromImage(img)
    if a.ndim == 4 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 3 or a.shape[-1] not in (3, 4):
        raise DataError("E1002", f"the reference image {p} is not an RGB image (array shape {a.shape})", p)
    return a[..., :3]


def stain_deconvolve_hed(x: Volume) -> Volume:
    """Haematoxylin, eosin and DAB optical densities (Ruifrok and Johnston), exactly
    scikit-image's `rgb2hed`, as float32 channels (y, x, 3)."""
    from skimage.color import rgb2hed

    return x.with_array(rgb2hed(_rgb(x, "stain_deconvolve_hed")).astype(np.float32))


_MACENKO_HE_REF = np.array([[0.5626, 0.2159], [0.7201, 0.8012], [0.4062, 0.5581]])
_MACENKO_MAXC_REF = np.array([1.9705, 1.0308])


def _macenko_stains(rgb: np.ndarray, alpha: float, beta: float, background: float) -> tuple[np.ndarray, np.ndarray]:
    """The H&E stain matrix (3 x 2, columns H then E) and the 99th percentile of each
    stain's concentration, as Macenko et al. estimate them (torchstain's numpy code)."""
    od = -np.log((rgb.reshape(-1, 3).astype(np.float64) + 1.0) / background)
    od_hat = od[~np.any(od < beta, axis=1)]
    if od_hat.shape[0] < 3:
        raise DataError("E1002", "Macenko: almost no stained pixels (every pixel is brighter than `beta` allows)",
                        help="lower `beta` or check that this is an H&E image")
    _, vecs = np.linalg.eigh(np.cov(od_hat.T))
    vecs = vecs[:, 1:3]
    vecs = vecs * np.where(vecs.sum(axis=0) < 0, -1.0, 1.0)  # eigenvectors' sign is arbitrary
    that = od_hat @ vecs
    phi = np.arctan2(that[:, 1], that[:, 0])
    lo, hi = np.percentile(phi, alpha), np.percentile(phi, 100 - alpha)
    v_min = vecs @ np.array([np.cos(lo), np.sin(lo)])
    v_max = vecs @ np.array([np.cos(hi), np.sin(hi)])
    he = np.array([v_min, v_max]).T if v_min[0] > v_max[0] else np.array([v_max, v_min]).T
    conc = np.linalg.lstsq(he, od.T, rcond=None)[0]
    max_c = np.array([np.percentile(conc[0], 99), np.percentile(conc[1], 99)])
    return he, max_c


def stain_normalize_macenko(x: Volume, reference: PathLike | None = None, alpha: float = 1.0, beta: float = 0.15,
                            background: float = 240.0) -> Volume:
    """Macenko stain normalization: estimate the image's H&E stain vectors and
    concentrations, scale the concentrations so their 99th percentiles match the
    reference's, and recompose with the reference stain vectors (those of the image at
    `reference`, else the paper's). Output uint8 RGB (y, x, 3)."""
    rgb = _rgb(x, "stain_normalize_macenko")
    if reference is None:
        he_ref, max_c_ref = _MACENKO_HE_REF, _MACENKO_MAXC_REF
    else:
        he_ref, max_c_ref = _macenko_stains(_read_reference(reference), alpha, beta, background)
    he, max_c = _macenko_stains(rgb, alpha, beta, background)
    od = -np.log((rgb.reshape(-1, 3).astype(np.float64) + 1.0) / background)
    conc = np.linalg.lstsq(he, od.T, rcond=None)[0]
    conc *= (max_c_ref / np.where(max_c == 0, 1.0, max_c))[:, None]
    out = background * np.exp(-he_ref @ conc)
    return x.with_array(_to_uint8(out.T.reshape(rgb.shape)))


# CIELAB mean and standard deviation of L, a, b (each averaged over the six H&E tiles of the DSB 2018
# sample in shared/data/histo_nuclei_dsb2018), the default Reinhard target.
_REINHARD_TARGET = (np.array([54.2251, 35.5623, -36.5576]), np.array([13.6738, 16.1927, 18.3001]))


def _lab_stats(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from skimage.color import rgb2lab

    lab = rgb2lab(rgb).reshape(-1, 3)
    return lab.mean(axis=0), lab.std(axis=0)


def stain_normalize_reinhard(x: Volume, reference: PathLike | None = None) -> Volume:
    """Reinhard normalization: give each CIELAB channel (scikit-image's rgb2lab) the mean
    and standard deviation of the image at `reference` (default: fixed H&E statistics),
    then back to uint8 RGB with lab2rgb."""
    from skimage.color import lab2rgb, rgb2lab

    rgb = _rgb(x, "stain_normalize_reinhard")
    t_mean, t_std = _REINHARD_TARGET if reference is None else _lab_stats(_read_reference(reference))
    lab = rgb2lab(rgb)
    mean, std = lab.reshape(-1, 3).mean(axis=0), lab.reshape(-1, 3).std(axis=0)
    lab = (lab - mean) / np.where(std > 0, std, 1.0) * t_std + t_mean
    return x.with_array(_to_uint8(lab2rgb(lab) * 255.0))


# ===== masks ==============================================================================


def _mask(x: Volume, m: np.ndarray) -> Volume:
    return x.with_array(m.astype(np.uint8), kind="labels")


def _single(x: Volume, what: str) -> None:
    if x.channels > 1:
        raise ValueError(f"{what} needs a single-channel image, got {x.channels} channels")


def threshold_mask(x: Volume, low: float, high: float | None = None) -> Volume:
    """1 where low <= x <= high (without `high`: x >= low), else 0."""
    _single(x, "threshold_mask")
    m = x.array >= low
    if high is not None:
        m &= x.array <= high
    return _mask(x, m)


def otsu_mask(x: Volume) -> Volume:
    """1 above Otsu's threshold (SimpleITK OtsuThreshold, 128 bins), else 0."""
    _single(x, "otsu_mask")
    out = sitk.OtsuThreshold(x.to_sitk(), 0, 1, 128)
    return _mask(x, sitk.GetArrayFromImage(out))


def _largest_components(m: np.ndarray, count: int) -> np.ndarray:
    """The `count` largest face-connected components of `m`."""
    img = sitk.GetImageFromArray(m.astype(np.uint8))
    labels = sitk.GetArrayFromImage(sitk.RelabelComponent(sitk.ConnectedComponent(img), sortByObjectSize=True))
    return (labels >= 1) & (labels <= count)


def _axial_axis(x: Volume) -> int:
    """The array axis closest to the world's superior-inferior axis (slices are across it)."""
    d = np.abs(np.array(x.direction).reshape(x.dim, x.dim))
    k = int(np.argmax(d[2])) if x.dim == 3 else 0  # (x, y, z) axis most along world z
    return x.dim - 1 - k


def _fill_holes(x: Volume, m: np.ndarray) -> np.ndarray:
    """Holes filled in 3D and in every axial slice (the lungs and bowel gas of a body
    mask open to the top and bottom of the volume, so 3-D filling alone misses them)."""
    from scipy import ndimage

    m = ndimage.binary_fill_holes(m)
    if x.dim == 3:
        axis = _axial_axis(x)
        m = np.moveaxis(m, axis, 0).copy()
        for i in range(m.shape[0]):
            m[i] = ndimage.binary_fill_holes(m[i])
        m = np.moveaxis(m, 0, axis)
    return m


def body_mask(x: Volume) -> Volume:
    """The body in a CT image: voxels above -500 HU, the largest connected component,
    holes filled (in 3D and in each axial slice)."""
    _single(x, "body_mask")
    m = x.array > -500
    if not m.any():
        return _mask(x, m)
    return _mask(x, _fill_holes(x, _largest_components(m, 1)))


def connected_components(x: Volume, connectivity: int = 1) -> Volume:
    """Number each connected component of the foreground (any class > 0) 1, 2, ...
    (scikit-image's measure.label; `connectivity` 1 = faces only, up to D = corners too)."""
    from skimage.measure import label

    if not 1 <= connectivity <= x.dim:
        raise ValueError(f"connectivity must be between 1 and {x.dim}, not {connectivity}")
    fg = x.array > 0
    if fg.ndim > x.dim:
        fg = fg.any(axis=-1)
    labels, n = label(fg, connectivity=int(connectivity), return_num=True)
    dtype = np.uint16 if n < 2**16 else np.uint32
    return x.with_array(labels.astype(dtype), kind="instances")


# ===== lungs and histogram matching ========================================================


_LUNG_AIR_HU = -320.0
_AIRWAY_MAX_MM2 = 700.0  # a trachea or main bronchus cross-section is at most ~ 25 mm across


def _superior_first(x: Volume) -> tuple[int, bool]:
    """The array axis across axial slices and whether index 0 is the most superior slice
    (LPS: world +z is superior)."""
    axis = _axial_axis(x)
    d = np.array(x.direction).reshape(3, 3)
    k = x.dim - 1 - axis  # the (x, y, z) index axis
    return axis, bool(d[2, k] < 0)


def _airways(x: Volume, air: np.ndarray) -> np.ndarray:
    """The trachea and main bronchi in `air` (axial slices first, top slice first),
    tracked slice by slice from the top: the seed is the top-most small (below
    `_AIRWAY_MAX_MM2`) air region near the body's left-right middle; in each next slice
    the airway is the regions overlapping the previous slice's airway that are still
    small. A region that has grown above that size has joined a lung (the bronchus has
    entered the hilum) and ends that branch. Empty when no slice has such a seed (the
    scan starts below the carina)."""
    from skimage.measure import label

    pixel_mm2 = float(np.prod(x.spacing[:2]))
    width = air.shape[2]
    out = np.zeros_like(air)
    prev: np.ndarray | None = None
    for i in range(air.shape[0]):
        ids, n = label(air[i], connectivity=1, return_num=True)
        if n == 0:
            if prev is not None:
                break
            continue
        areas = np.bincount(ids.ravel(), minlength=n + 1) * pixel_mm2
        small = areas <= _AIRWAY_MAX_MM2
        small[0] = False
        if prev is None:
            keep = np.zeros(n + 1, dtype=bool)
            for j in np.flatnonzero(small):
                cx = np.nonzero(ids == j)[1].mean()
                keep[j] = abs(cx - width / 2) < 0.1 * width and areas[j] >= 20.0
            if not keep.any():
                continue
        else:
            touched = np.zeros(n + 1, dtype=bool)
            touched[np.unique(ids[prev])] = True
            keep = touched & small
            keep[0] = False
            if not keep.any():
                break
        prev = keep[ids]
        out[i] = prev
    return out


def lung_mask(x: Volume) -> Volume:
    """Both lungs in a chest CT (HU): 1 for lung, 0 elsewhere (uint8).

    Air (below -320 HU) inside the body (`body_mask`, so the air around the patient and
    in the table is left out), minus the trachea and main bronchi (`_airways`: tracked
    down from the top slice while their cross-section stays below 700 mm2), then the two
    largest face-connected components (the lungs; one when they touch), closed with a
    binary closing of radius ~ 5 mm in-plane and one slice across (SimpleITK) and holes
    filled in 3D and in every axial slice, so that vessels and juxta-pleural nodules are
    inside. The airway tracking is a heuristic: bronchi inside the lungs stay in."""
    _single(x, "lung_mask")
    if x.dim != 3:
        raise ValueError("lung_mask needs a 3-D CT volume")
    body = body_mask(x).array > 0
    air = (x.array < _LUNG_AIR_HU) & body
    if not air.any():
        return _mask(x, air)
    axis, top_first = _superior_first(x)
    a = np.moveaxis(air, axis, 0)
    if not top_first:
        a = a[::-1]
    airway = _airways(x, np.ascontiguousarray(a))
    if not top_first:
        airway = airway[::-1]
    airway = np.moveaxis(airway, 0, axis)
    lungs = _largest_components(air & ~airway, 2)
    img = sitk.GetImageFromArray(lungs.astype(np.uint8))
    img.SetSpacing(x.spacing)
    radius = [max(1, round(5.0 / s)) for s in x.spacing]
    radius[2 - axis] = 1
    closed = sitk.GetArrayFromImage(sitk.BinaryMorphologicalClosing(img, radius, sitk.sitkBall)) > 0
    lungs = _fill_holes(x, lungs | (closed & body & ~airway))
    return _mask(x, lungs)


def histogram_match(x: Volume, reference: Volume, levels: int = 256, points: int = 7) -> Volume:
    """Match `x`'s intensity histogram to `reference`'s (SimpleITK
    HistogramMatchingImageFilter: `levels` histogram bins, `points` match points,
    threshold at mean intensity on, its default, so background below the mean is left
    out of the histograms). float32 on `x`'s grid."""
    _single(x, "histogram_match")
    _single(reference, "histogram_match")
    f = sitk.HistogramMatchingImageFilter()
    f.SetNumberOfHistogramLevels(int(levels))
    f.SetNumberOfMatchPoints(int(points))
    f.ThresholdAtMeanIntensityOn()
    out = f.Execute(sitk.Cast(x.to_sitk(), sitk.sitkFloat32), sitk.Cast(reference.to_sitk(), sitk.sitkFloat32))
    return x.with_array(sitk.GetArrayFromImage(out).astype(np.float32))


def select_labels(x: Volume, labels: Sequence[int], merge: bool = False) -> Volume:
    """Keep the label values `labels` as classes 1, 2, ... in that order (all as class 1
    with `merge`); every other value becomes 0. The grid is unchanged.

    Example: TotalSegmentator's liver (5) and spleen (1) as a three-class map:
    `select_labels(seg, (5, 1))`.
    """
    values = [int(v) for v in labels]
    source = np.asarray(x.array)
    out = np.zeros(source.shape, dtype=np.uint8 if merge or len(values) < 256 else np.uint16)
    for index, value in reversed(list(enumerate(values))):  # a value given twice keeps its first class
        out[source == value] = 1 if merge else index + 1
    named = dict(x.names)
    kept = () if merge else tuple((index + 1, named[v]) for index, v in enumerate(values) if v in named)
    return x.with_array(out, kind="labels").with_names(kept)  # the old values' names would name the wrong classes


OPERATORS: dict[str, Callable[..., object]] = {
    "resample": resample, "resample_to": resample_to, "reorient": reorient, "crop_or_pad": crop_or_pad,
    "resize": resize, "crop_foreground": crop_foreground,
    "window": window, "clip": clip, "rescale": rescale, "zscore": zscore, "percentile_rescale": percentile_rescale,
    "n4_bias_correction": n4_bias_correction, "register_rigid": register_rigid, "register_affine": register_affine,
    "stain_deconvolve_hed": stain_deconvolve_hed, "stain_normalize_macenko": stain_normalize_macenko,
    "stain_normalize_reinhard": stain_normalize_reinhard,
    "threshold_mask": threshold_mask, "otsu_mask": otsu_mask, "body_mask": body_mask,
    "connected_components": connected_components, "lung_mask": lung_mask, "histogram_match": histogram_match,
    "select_labels": select_labels,
}
"""The std.pre operators implemented here, by the name of their stdlib signature."""
