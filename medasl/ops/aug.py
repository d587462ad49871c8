"""std.aug: random data augmentation and patch sampling (stdlib/aug.medas).

Each public function implements the operator of the same name; the executor binds them
by name (see `OPERATORS`) and calls them with keyword arguments named as in the
signature, units already converted by the checker (lengths in mm, angles in degrees),
plus the keyword `rng`: a `numpy.random.Generator` the executor derives from the node's
seed and the case id.

Conventions every operator here keeps, and why:

- Every operator returns `(result, drawn)`. `drawn` is a JSON-able dict of the random
  parameters actually used, together with the constants needed to apply them again
  (for an operator with `p`, `"applied"` says whether the case was transformed; when it
  was not, `drawn` is exactly `{"applied": False}` and the input is returned as it is).
  `replay(op_name, x, drawn)` applies an operator with recorded parameters, without any
  randomness, and gives a bit-identical result, so a run is reproducible and any
  augmentation of any case can be re-created from the run log. Large random fields
  (noise, elastic displacements) are recorded as the seed of their own generator
  rather than voxel by voxel.
- A `Pair(input, target)` given to a spatial operator is drawn for once and both parts
  get the same transform; label kinds (`labels`, `instances`, `onehot`) are resampled
  with nearest neighbour and keep their dtype, so they never gain new values; images
  are resampled linearly. Intensity operators change the input of a pair only. A
  target without a voxel grid follows the input (`values.carried`): a `Class` is kept
  as it is; `Boxes` (world mm) move with the content (a flipped, rotated or deformed box
  becomes the world-axis-aligned box around where its corners, or for `elastic` its
  faces, went) and are clipped to the new grid, losing the boxes left outside it.
- Spatial operators keep the input's voxel grid (size, spacing, origin, direction): the
  result is resampled with `sitk.Resample` through a transform about the image centre
  in physical space (ITK's convention: the transform maps output points to input
  points). Points that fall outside the input get 0 for label kinds and the image's
  minimum for images (air for CT, background for MR). `flip` is the exception that
  needs no resampling: mirroring about the centre along a grid axis is an exact array
  flip, so it is done with NumPy. Crops and patches are exact sub-grids of the input
  (origin moved, no interpolation), padded where they reach outside it.
- Interpolated and intensity-changed images are floating point: float32, or float64
  when the input was float64 (adding noise to an int16 CT would round it away).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from itertools import product
from typing import Any

import numpy as np
import SimpleITK as sitk  # noqa: N813 (the alias SimpleITK documents)

from medasl.runtime.errors import DataError
from medasl.runtime.values import Boxes, Pair, Volume, carried, index_to_world, world_to_index

NEAREST_KINDS = ("labels", "instances", "onehot")
"""Kinds whose values are never interpolated linearly (and never gain new values)."""

Drawn = dict[str, Any]
Value = Volume | Pair


# ===== shared helpers =====================================================================


def _applies(rng: np.random.Generator, p: float) -> bool:
    """Whether the case is transformed: one uniform draw, always made, so the stream of
    draws does not depend on `p`. p=0 never applies, p=1 always."""
    return bool(rng.random() < p)


def _seed(rng: np.random.Generator) -> int:
    """A seed for a generator of its own, for fields too large to record value by value."""
    return int(rng.integers(0, 2**63 - 1))


def _floats(values: Sequence[float] | np.ndarray) -> list[float]:
    return [float(v) for v in np.asarray(values, dtype=np.float64).ravel()]


def _float_dtype(array: np.ndarray) -> np.dtype:
    return np.dtype(np.float64) if array.dtype == np.float64 else np.dtype(np.float32)


def _volumes(x: Value) -> tuple[Volume, Volume | None]:
    return (x.input, x.target) if isinstance(x, Pair) else (x, None)


Move = Callable[[np.ndarray], np.ndarray]
"""Where a spatial change takes world points `(n, D)` of its input (for boxes)."""


def _spatial(x: Value, fn: Callable[[Volume], Volume], move: Move | None = None, step: float | None = None) -> Value:
    """Apply one spatial change to a volume, or the same change to both parts of a pair.
    A target without a voxel grid follows the input (`values.carried`): boxes are moved
    by `move` (None: the change moves nothing in world coordinates, as a crop) and
    clipped to the new grid, a class is kept as it is."""
    if isinstance(x, Pair):
        image = fn(x.input)
        target = fn(x.target) if isinstance(x.target, Volume) else carried(x.target, image, move, step)
        return Pair(image, target)
    return fn(x)


def _moving(transform: sitk.Transform) -> Move:
    """Where content moves under a resampling through `transform` (output point -> input
    point, ITK's convention): the inverse transform, applied point by point."""
    inverse = transform.GetInverse()
    return lambda points: np.array([inverse.TransformPoint([float(v) for v in p]) for p in points])


def _intensity(x: Value, fn: Callable[[Volume], Volume]) -> Value:
    """Apply an intensity change to a volume, or to the input of a pair only."""
    if isinstance(x, Pair):
        return Pair(fn(x.input), x.target)
    return fn(x)


def _centre(vol: Volume) -> tuple[float, ...]:
    """The physical point at the centre of the voxel grid."""
    img = sitk.Image([1] * vol.dim, sitk.sitkUInt8)
    img.SetSpacing(vol.spacing)
    img.SetOrigin(vol.origin)
    img.SetDirection(vol.direction)
    return img.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2.0 for n in vol.shape])


def _resample(vol: Volume, transform: sitk.Transform) -> Volume:
    """`vol` resampled on its own grid through `transform` (output point -> input point):
    nearest neighbour and the same dtype for label kinds, linear and floating point for
    images. Outside the input: 0 for labels, the image's minimum for images."""
    img = vol.to_sitk()
    if vol.kind in NEAREST_KINDS:
        out = sitk.Resample(img, img, transform, sitk.sitkNearestNeighbor, 0.0)
        array = sitk.GetArrayFromImage(out).astype(vol.array.dtype, copy=False)
        return vol.with_array(array)
    dtype = _float_dtype(vol.array)
    pixel = sitk.sitkFloat64 if dtype == np.float64 else sitk.sitkFloat32
    if img.GetNumberOfComponentsPerPixel() > 1:
        pixel = sitk.sitkVectorFloat64 if dtype == np.float64 else sitk.sitkVectorFloat32
    img = sitk.Cast(img, pixel)
    fill = float(np.min(vol.array)) if vol.array.size else 0.0
    out = sitk.Resample(img, img, transform, sitk.sitkLinear, fill)
    return vol.with_array(sitk.GetArrayFromImage(out).astype(dtype, copy=False))


def _same_grid(x: Value, what: str) -> None:
    """E1007 when image and label of a pair are not on one grid (crops work on indices;
    a target without a grid, boxes or a class, is cropped in world coordinates)."""
    if isinstance(x, Pair) and isinstance(x.target, Volume):
        diffs = x.input.grid_differences(x.target)
        if diffs:
            raise DataError("E1007", f"{what}: image and label are not on the same voxel grid ({'; '.join(diffs)})",
                            x.input.source, help="resample the label to the image (resample_to) before cropping")


def _as_float(vol: Volume) -> np.ndarray:
    return vol.array.astype(_float_dtype(vol.array), copy=False)


# ===== geometry =============================================================================


def flip(x: Value, axis: int = 0, p: float = 0.5, *, rng: np.random.Generator) -> tuple[Value, Drawn]:
    """Mirror along spatial `axis` (0 = x, the first axis of `shape` and `spacing`) with
    probability `p`. Exact (an array flip about the grid centre), so the grid is kept."""
    vol, _ = _volumes(x)
    drawn = _draw_flip(vol.dim, axis, p, rng)
    return (_apply_flip(x, drawn) if drawn["applied"] else x), drawn


def _draw_flip(dim: int, axis: int, p: float, rng: np.random.Generator) -> Drawn:
    """flip's random draw, apart from the volume (medasl/runtime/fused_spatial.py draws with it too)."""
    if not 0 <= axis < dim:
        raise ValueError(f"flip: axis {axis} is not an axis of a {dim}-D volume")
    if not _applies(rng, p):
        return {"applied": False}
    return {"applied": True, "axis": int(axis)}


def _apply_flip(x: Value, drawn: Drawn) -> Value:
    axis = drawn["axis"]

    def one(vol: Volume) -> Volume:
        return vol.with_array(np.ascontiguousarray(np.flip(vol.array, axis=vol.dim - 1 - axis)))

    grid, _ = _volumes(x)

    def mirrored(points: np.ndarray) -> np.ndarray:  # index i along the axis goes to n - 1 - i
        index = world_to_index(grid, points)
        index[:, axis] = grid.shape[axis] - 1 - index[:, axis]
        return index_to_world(grid, index)

    return _spatial(x, one, mirrored)


def rotate(x: Value, angle: float = 10.0, p: float = 0.5, in_plane: bool = False, *,
           rng: np.random.Generator) -> tuple[Value, Drawn]:
    """Rotate about the image centre by angles drawn uniformly from [-angle, angle]
    degrees: one in-plane angle in 2-D, one about each of x, y and z in 3-D, or with
    `in_plane` one about the volume's slice axis (its third index axis)."""
    vol, _ = _volumes(x)
    drawn = _draw_rotate(vol.dim, angle, p, rng, in_plane)
    return (_apply_rotate(x, drawn) if drawn["applied"] else x), drawn


def _draw_rotate(dim: int, angle: float, p: float, rng: np.random.Generator, in_plane: bool = False) -> Drawn:
    """rotate's random draw, apart from the volume (shared with the fused spatial kernel):
    one angle in 2-D and in-plane, else three."""
    if not _applies(rng, p):
        return {"applied": False}
    n = 1 if dim == 2 or in_plane else 3
    return {"applied": True, "angles": _floats(rng.uniform(-angle, angle, size=n))}


def _rotate_transform(vol: Volume, drawn: Drawn) -> sitk.Transform:
    """The rotation about `vol`'s centre (output point -> input point). One angle in 3-D
    turns about the slice axis: the direction's third column, which is world z only for
    an identity direction, so the rotation is conjugated by the direction."""
    radians = [math.radians(a) for a in drawn["angles"]]
    if vol.dim == 2:
        return sitk.Euler2DTransform(_centre(vol), radians[0])
    if len(radians) == 1:
        c, s = math.cos(radians[0]), math.sin(radians[0])
        axes = np.asarray(vol.direction, dtype=np.float64).reshape(3, 3)
        matrix = axes @ np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]) @ axes.T
        return sitk.AffineTransform(_floats(matrix), (0.0, 0.0, 0.0), _centre(vol))
    return sitk.Euler3DTransform(_centre(vol), *radians)


def _apply_rotate(x: Value, drawn: Drawn) -> Value:
    vol, _ = _volumes(x)
    transform = _rotate_transform(vol, drawn)
    return _spatial(x, lambda v: _resample(v, transform), _moving(transform))


def affine(x: Value, scale: float = 0.1, shear: float = 0.0, translate: float = 0.0, p: float = 0.5, *,
           rng: np.random.Generator) -> tuple[Value, Drawn]:
    """A random affine transform about the image centre: a scale factor per axis from
    [1 - scale, 1 + scale], a shear angle from [-shear, shear] degrees for every pair of
    axes (each off-diagonal matrix element is tan(angle)), and a translation per axis
    from [-translate, translate] mm."""
    vol, _ = _volumes(x)
    drawn = _draw_affine(vol.dim, scale, shear, translate, p, rng)
    return (_apply_affine(x, drawn) if drawn["applied"] else x), drawn


def _draw_affine(d: int, scale: float, shear: float, translate: float, p: float, rng: np.random.Generator) -> Drawn:
    """affine's random draw, apart from the volume (shared with the fused spatial kernel)."""
    if not _applies(rng, p):
        return {"applied": False}
    return {"applied": True,
            "scale": _floats(rng.uniform(1 - scale, 1 + scale, size=d)),
            "shear": _floats(rng.uniform(-shear, shear, size=d * (d - 1))),
            "translate": _floats(rng.uniform(-translate, translate, size=d))}


def _apply_affine(x: Value, drawn: Drawn) -> Value:
    vol, _ = _volumes(x)
    transform = _affine_transform(vol, drawn)
    return _spatial(x, lambda v: _resample(v, transform), _moving(transform))


def _affine_transform(vol: Volume, drawn: Drawn) -> sitk.Transform:
    """The drawn affine transform about `vol`'s centre (output point -> input point)."""
    d = vol.dim
    shear = np.eye(d)
    off = [(i, j) for i in range(d) for j in range(d) if i != j]
    for (i, j), a in zip(off, drawn["shear"]):
        shear[i, j] = math.tan(math.radians(a))
    matrix = np.diag(drawn["scale"]) @ shear
    return sitk.AffineTransform(_floats(matrix), drawn["translate"], _centre(vol))


def elastic(x: Value, sigma: float = 10.0, magnitude: float = 5.0, p: float = 0.2, *,
            rng: np.random.Generator) -> tuple[Value, Drawn]:
    """Random elastic deformation: uniform noise per voxel and component, smoothed by a
    Gaussian of width `sigma` mm and scaled so that the largest displacement is
    `magnitude` mm. The field is generated from a recorded seed on the input's grid;
    its components are displacements in physical (x, y, z) space."""
    drawn = _draw_elastic(sigma, magnitude, p, rng)
    return (_apply_elastic(x, drawn) if drawn["applied"] else x), drawn


def _draw_elastic(sigma: float, magnitude: float, p: float, rng: np.random.Generator) -> Drawn:
    """elastic's random draw, apart from the volume (shared with the fused spatial kernel)."""
    if not _applies(rng, p):
        return {"applied": False}
    return {"applied": True, "field_seed": _seed(rng), "sigma": float(sigma), "magnitude": float(magnitude)}


def _apply_elastic(x: Value, drawn: Drawn) -> Value:
    vol, _ = _volumes(x)
    field = _elastic_field(vol, drawn)
    displacement = sitk.GetImageFromArray(field, isVector=True)
    displacement.SetSpacing(vol.spacing)
    displacement.SetOrigin(vol.origin)
    displacement.SetDirection(vol.direction)
    transform = sitk.DisplacementFieldTransform(displacement)
    return _spatial(x, lambda v: _resample(v, transform), _displaced(vol, field), step=min(vol.spacing))


def _displaced(vol: Volume, field: np.ndarray) -> Move:
    """Where content moves under the resampling through the displacement `field` on
    `vol`'s grid: the output point q whose sample point q + d(q) is the input point p,
    found by the fixed-point iteration q <- p - d(q) (a contraction: the field is smooth,
    its displacements change by less than the distances between points), with d(q)
    interpolated as ITK's DisplacementFieldTransform does: linearly with the edge voxels
    repeated inside the grid's footprint (continuous indices -0.5 .. n - 0.5), 0 off it."""
    from scipy.ndimage import map_coordinates

    sizes = np.array(vol.array.shape[: vol.dim], dtype=np.float64)

    def d(points: np.ndarray) -> np.ndarray:
        index = world_to_index(vol, points)[:, ::-1].T  # array axes (z, y, x)
        inside = np.all((index >= -0.5) & (index < sizes[:, None] - 0.5), axis=0)
        return np.stack([map_coordinates(field[..., c], index, order=1, mode="nearest") * inside
                         for c in range(vol.dim)], axis=1)

    def move(points: np.ndarray) -> np.ndarray:
        q = np.array(points, dtype=np.float64)
        for _ in range(50):
            after = points - d(q)
            if np.max(np.abs(after - q), initial=0.0) < 1e-6:
                return after
            q = after
        return q

    return move


def _elastic_field(vol: Volume, drawn: Drawn) -> np.ndarray:
    """The drawn displacements on `vol`'s grid: float64 `(*array shape, dim)`, physical
    (x, y, z) mm components (only `vol`'s grid is used, not its values)."""
    sigma = drawn["sigma"]
    # The noise is drawn on a grid padded by 3 sigma on every side and cropped after
    # smoothing: the recursive Gaussian inflates the field near the border of its grid,
    # which would otherwise hold the largest displacement and shrink all the others.
    pad = [int(math.ceil(3 * sigma / sp)) if sigma > 0 else 0 for sp in reversed(vol.spacing)]  # (z, y, x)
    shape = vol.array.shape[: vol.dim]
    field_rng = np.random.default_rng(drawn["field_seed"])
    noise = field_rng.uniform(-1.0, 1.0, size=(*(n + 2 * q for n, q in zip(shape, pad)), vol.dim))
    field = sitk.GetImageFromArray(noise, isVector=True)
    field.SetSpacing(vol.spacing)
    if sigma > 0:
        field = sitk.SmoothingRecursiveGaussian(field, sigma)
    smooth = sitk.GetArrayFromImage(field)[tuple(slice(q, q + n) for q, n in zip(pad, shape))]
    largest = float(np.max(np.linalg.norm(smooth, axis=-1))) if smooth.size else 0.0
    smooth = smooth * (drawn["magnitude"] / largest) if largest > 0 else np.zeros_like(smooth)
    return np.ascontiguousarray(smooth, dtype=np.float64)


def random_rescale(x: Value, scale: Sequence[float] = (0.85, 1.25), p: float = 0.2, *,
                   rng: np.random.Generator) -> tuple[Value, Drawn]:
    """Zoom in or out about the image centre by one factor drawn from the range `scale`
    (above 1 enlarges the content), keeping the grid: what leaves the grid is cropped,
    what enters from outside is filled."""
    drawn = _draw_random_rescale(scale, p, rng)
    return (_apply_random_rescale(x, drawn) if drawn["applied"] else x), drawn


def _draw_random_rescale(scale: Sequence[float], p: float, rng: np.random.Generator) -> Drawn:
    """random_rescale's random draw (shared with the fused spatial kernel)."""
    lo, hi = float(scale[0]), float(scale[1])
    if not _applies(rng, p):
        return {"applied": False}
    return {"applied": True, "factor": float(rng.uniform(lo, hi))}


def _rescale_transform(vol: Volume, drawn: Drawn) -> sitk.Transform:
    """The zoom about `vol`'s centre (output point -> input point)."""
    transform = sitk.ScaleTransform(vol.dim, [1.0 / drawn["factor"]] * vol.dim)
    transform.SetCenter(_centre(vol))
    return transform


def _apply_random_rescale(x: Value, drawn: Drawn) -> Value:
    vol, _ = _volumes(x)
    transform = _rescale_transform(vol, drawn)
    return _spatial(x, lambda v: _resample(v, transform), _moving(transform))


# ===== cropping and patch sampling =========================================================


def _window(vol: Volume, start: Sequence[int], size: Sequence[int]) -> Volume:
    """The exact sub-grid of `size` voxels starting at index `start` (both `(x, y, z)`),
    padded where it reaches outside `vol` (0 for label kinds, the minimum for images)."""
    d = vol.dim
    fill = 0 if vol.kind in NEAREST_KINDS or not vol.array.size else np.min(vol.array)
    out = np.full((*reversed(size), *vol.array.shape[d:]), fill, dtype=vol.array.dtype)
    src, dst = [], []
    for a in reversed(range(d)):  # array axes are (z, y, x)
        lo, hi = max(start[a], 0), min(start[a] + size[a], vol.shape[a])
        if hi <= lo:
            return _moved(vol, out, start)
        src.append(slice(lo, hi))
        dst.append(slice(lo - start[a], hi - start[a]))
    out[tuple(dst)] = vol.array[tuple(src)]
    return _moved(vol, out, start)


def _moved(vol: Volume, array: np.ndarray, start: Sequence[int]) -> Volume:
    """A volume holding `array` whose first voxel is voxel `start` of `vol`'s grid."""
    d = vol.dim
    direction = np.array(vol.direction).reshape(d, d)
    origin = np.array(vol.origin) + direction @ (np.array(start, dtype=np.float64) * np.array(vol.spacing))
    return Volume(array, vol.spacing, tuple(origin), vol.direction, vol.kind, vol.modality, vol.source)


def _check_size(vol: Volume, size: Sequence[int], what: str) -> list[int]:
    size = [int(s) for s in size]
    if len(size) != vol.dim or any(s <= 0 for s in size):
        raise ValueError(f"{what}: size {tuple(size)} is not a positive size of a {vol.dim}-D volume")
    return size


def random_crop(x: Value, size: Sequence[int], *, rng: np.random.Generator) -> tuple[Value, Drawn]:
    """A window of `size` voxels (`(x, y, z)`, as `shape`) at a uniformly random position.
    Along an axis where the case is smaller than `size`, it is padded evenly on both
    sides first (the start index is then negative)."""
    vol, _ = _volumes(x)
    drawn = _draw_random_crop(vol.shape, size, rng)
    _same_grid(x, "random_crop")
    return _apply_random_crop(x, drawn), drawn


def _draw_random_crop(shape: Sequence[int], size: Sequence[int], rng: np.random.Generator) -> Drawn:
    """random_crop's random draw for a case of `shape` voxels ((x, y, z); shared with the
    fused spatial kernel)."""
    size = [int(s) for s in size]
    if len(size) != len(shape) or any(s <= 0 for s in size):
        raise ValueError(f"random_crop: size {tuple(size)} is not a positive size of a {len(shape)}-D volume")
    start = []
    for n, s in zip(shape, size):
        start.append(int(rng.integers(0, n - s + 1)) if n >= s else -((s - n) // 2))
    return {"start": start, "size": size}


def _apply_random_crop(x: Value, drawn: Drawn) -> Value:
    return _spatial(x, lambda v: _window(v, drawn["start"], drawn["size"]))


def _foreground(label: object, image: Volume) -> np.ndarray | None:
    """The foreground mask of a pair's target on `image`'s grid (array order): non-zero
    labels, or for a map with a channel axis (one-hot, probabilities) the voxels whose
    largest channel is not 0; for boxes the voxels whose centre is in one; None for a
    target that marks no place (a class)."""
    if isinstance(label, Boxes):
        from medasl.ops import io  # the box geometry lives with the box readers and writers

        return io.boxes_to_mask(label, image).array != 0
    if not isinstance(label, Volume):
        return None
    a = label.array
    if a.ndim > label.dim:
        return np.argmax(a, axis=-1) != 0
    return a != 0


def patches(x: Value, size: Sequence[int], per_case: int = 4, positive: float = 0.5, *,
            rng: np.random.Generator) -> tuple[list[Value], Drawn]:
    """`per_case` windows of `size` voxels. On a pair, each patch is centred on a
    foreground voxel of the label (a voxel in a box, for boxes) with probability
    `positive` and on a background voxel otherwise (uniformly over all voxels when the
    label has none of the kind asked for); a single volume, or a pair whose target is a
    class (which every patch keeps), gets uniformly placed centres. The centre of a patch is voxel
    `start + size // 2`; a patch reaching outside the case is padded, so that its
    centre stays where it was drawn."""
    vol, label = _volumes(x)
    size = _check_size(vol, size, "patches")
    _same_grid(x, "patches")
    if per_case <= 0:
        raise ValueError(f"patches: per_case must be positive, not {per_case}")
    found = _foreground(label, vol) if label is not None else None
    mask = found.ravel() if found is not None else None
    fg = np.flatnonzero(mask) if mask is not None else None
    bg = np.flatnonzero(~mask) if mask is not None else None
    array_shape = vol.array.shape[: vol.dim]
    drawn_patches = []
    for _ in range(per_case):
        pos = bool(rng.random() < positive)
        pool = (fg if pos else bg) if mask is not None else None
        if pool is not None and len(pool):
            flat = int(pool[rng.integers(0, len(pool))])
        else:
            flat = int(rng.integers(0, int(np.prod(array_shape))))
        centre = [int(i) for i in reversed(np.unravel_index(flat, array_shape))]  # (x, y, z)
        start = [c - s // 2 for c, s in zip(centre, size)]
        drawn_patches.append({"positive": pos, "centre": centre, "start": start})
    drawn = {"size": size, "patches": drawn_patches}
    return _apply_patches(x, drawn), drawn


def _apply_patches(x: Value, drawn: Drawn) -> list[Value]:
    return [_spatial(x, lambda v, s=patch["start"]: _window(v, s, drawn["size"])) for patch in drawn["patches"]]


def box_patches(x: Pair, size: Sequence[int], per_case: int = 8, negative: float = 0.5, jitter: int = 2, *,
                rng: np.random.Generator) -> tuple[list[Pair], Drawn]:
    """`per_case` windows of `size` voxels cut around the boxes of an (image, boxes)
    pair, as (image, class) classification cases: the candidate cubes of nodule
    false-positive reduction and nodule attribute classification (DeepLung's cubes).

    Each patch is, with probability `negative`, a negative: centred on a random voxel
    whose centre lies in no box, class 0. Otherwise it is centred on a box (the boxes
    taken in turn, starting at a random one), shifted by up to `jitter` voxels along
    each axis, with the box's class. A case without boxes gives negatives only. Boxes
    are matched to voxels through the image's geometry (`io.boxes_to_voxels`), so any
    orientation works. Patches reaching outside the image are padded with its minimum.

    Example: `box_patches(Pair(ct, nodules), size=(32, 32, 32), per_case=8, rng=rng)`
    gives 8 pairs `(32 x 32 x 32 cube, class)`, about half of them around nodules.
    """
    from medasl.ops import io  # the box geometry lives with the box readers and writers

    if not isinstance(x, Pair) or not isinstance(x.input, Volume) or not hasattr(x.target, "classes"):
        raise ValueError("box_patches needs (image, boxes) pairs")
    vol, boxes = x.input, x.target
    size = _check_size(vol, size, "box_patches")
    if per_case <= 0 or jitter < 0:
        raise ValueError(f"box_patches: per_case must be positive and jitter not negative, not {per_case}, {jitter}")
    voxel_boxes = io.boxes_to_voxels(boxes, vol)  # (n, 6): [z0, y0, x0, z1, y1, x1], voxel i covers [i, i + 1)
    shape = vol.array.shape[: vol.dim]
    first = int(rng.integers(0, len(voxel_boxes))) if len(voxel_boxes) else 0
    drawn_patches = []
    for k in range(int(per_case)):
        is_negative = bool(rng.random() < negative) or not len(voxel_boxes)
        if is_negative:
            zyx, label = _outside_boxes(shape, voxel_boxes, rng), 0
        else:
            j = (first + k) % len(voxel_boxes)
            middle = (voxel_boxes[j, :3] + voxel_boxes[j, 3:]) / 2.0 - 0.5  # the centre as a voxel index
            zyx = [int(round(c)) + int(rng.integers(-jitter, jitter + 1)) for c in middle]
            label = int(boxes.classes[j])
        centre = list(reversed(zyx))  # (x, y, z)
        drawn_patches.append({"centre": centre, "start": [c - s // 2 for c, s in zip(centre, size)], "class": label})
    drawn = {"size": size, "patches": drawn_patches}
    return _apply_box_patches(x, drawn), drawn


def _outside_boxes(shape: Sequence[int], voxel_boxes: np.ndarray, rng: np.random.Generator) -> list[int]:
    """A uniformly drawn voxel `(z, y, x)` whose centre lies in none of the boxes (any
    voxel when the boxes cover everything, after a bounded number of tries)."""
    for _ in range(1000):
        zyx = [int(rng.integers(0, n)) for n in shape]
        centre = np.array(zyx) + 0.5
        inside = np.all((voxel_boxes[:, :3] <= centre) & (centre <= voxel_boxes[:, 3:]), axis=1)
        if not inside.any():
            break
    return zyx


def _apply_box_patches(x: Pair, drawn: Drawn) -> list[Pair]:
    return [Pair(_window(x.input, patch["start"], drawn["size"]), int(patch["class"])) for patch in drawn["patches"]]


# ===== intensity ==============================================================================


def gaussian_noise(x: Value, std: float = 0.01, p: float = 1.0, *, rng: np.random.Generator) -> tuple[Value, Drawn]:
    """Add zero-mean Gaussian noise of standard deviation `std` (image units), generated
    from a recorded seed."""
    drawn = draw_gaussian_noise(rng, std, p)
    return (_apply_gaussian_noise(x, drawn) if drawn["applied"] else x), drawn


# The draw_* functions make exactly the draws of their operator, so the fused intensity kernel
# (medasl/runtime/fused_intensity.py) records and applies what the unfused operator would.
def draw_gaussian_noise(rng: np.random.Generator, std: float = 0.01, p: float = 1.0) -> Drawn:
    """The random parameters `gaussian_noise` draws from `rng`."""
    if not _applies(rng, p):
        return {"applied": False}
    return {"applied": True, "noise_seed": _seed(rng), "std": float(std)}


def noise_field(drawn: Drawn, shape: tuple[int, ...]) -> np.ndarray:
    """The standard normal float64 field `gaussian_noise` scales by `drawn["std"]` and adds."""
    return np.random.default_rng(drawn["noise_seed"]).standard_normal(shape)


def _apply_gaussian_noise(x: Value, drawn: Drawn) -> Value:
    def one(vol: Volume) -> Volume:
        a = _as_float(vol)
        return vol.with_array((a + drawn["std"] * noise_field(drawn, a.shape)).astype(a.dtype, copy=False))

    return _intensity(x, one)


def gaussian_blur(x: Value, sigma: float = 1.0, p: float = 0.2, *, rng: np.random.Generator) -> tuple[Value, Drawn]:
    """Blur with a Gaussian whose width is drawn uniformly from [0, sigma] mm
    (SimpleITK's SmoothingRecursiveGaussian, in physical units)."""
    if not _applies(rng, p):
        return x, {"applied": False}
    drawn = {"applied": True, "sigma": float(rng.uniform(0.0, sigma))}
    return _apply_gaussian_blur(x, drawn), drawn


def _apply_gaussian_blur(x: Value, drawn: Drawn) -> Value:
    def one(vol: Volume) -> Volume:
        a = _as_float(vol)
        if drawn["sigma"] <= 0:
            return vol.with_array(a.copy())
        img = vol.with_array(a).to_sitk()
        out = sitk.SmoothingRecursiveGaussian(img, drawn["sigma"])
        return vol.with_array(sitk.GetArrayFromImage(out).astype(a.dtype, copy=False))

    return _intensity(x, one)


def gamma(x: Value, log_gamma: float = 0.3, p: float = 0.3, *, rng: np.random.Generator) -> tuple[Value, Drawn]:
    """Gamma correction with gamma = exp(g), g uniform in [-log_gamma, log_gamma], applied
    to the intensities rescaled to [0, 1] and mapped back to the original range."""
    drawn = draw_gamma(rng, log_gamma, p)
    return (_apply_gamma(x, drawn) if drawn["applied"] else x), drawn


def draw_gamma(rng: np.random.Generator, log_gamma: float = 0.3, p: float = 0.3) -> Drawn:
    """The random parameters `gamma` draws from `rng`."""
    if not _applies(rng, p):
        return {"applied": False}
    return {"applied": True, "gamma": float(math.exp(rng.uniform(-log_gamma, log_gamma)))}


def _apply_gamma(x: Value, drawn: Drawn) -> Value:
    def one(vol: Volume) -> Volume:
        a = _as_float(vol)
        lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
        if hi <= lo:
            return vol.with_array(a.copy())
        out = np.power((a - lo) / (hi - lo), drawn["gamma"]) * (hi - lo) + lo
        return vol.with_array(out.astype(a.dtype, copy=False))

    return _intensity(x, one)


def contrast(x: Value, factor: float = 0.25, p: float = 0.15, *, rng: np.random.Generator) -> tuple[Value, Drawn]:
    """Scale the intensities about their mean by a factor from [1 - factor, 1 + factor]
    and clip to the original range (as nnU-Net)."""
    drawn = draw_contrast(rng, factor, p)
    return (_apply_contrast(x, drawn) if drawn["applied"] else x), drawn


def draw_contrast(rng: np.random.Generator, factor: float = 0.25, p: float = 0.15) -> Drawn:
    """The random parameters `contrast` draws from `rng`."""
    if not _applies(rng, p):
        return {"applied": False}
    return {"applied": True, "factor": float(rng.uniform(1 - factor, 1 + factor))}


def _apply_contrast(x: Value, drawn: Drawn) -> Value:
    def one(vol: Volume) -> Volume:
        a = _as_float(vol)
        if not a.size:
            return vol.with_array(a.copy())
        mean = a.mean(dtype=np.float64)
        out = np.clip((a - mean) * drawn["factor"] + mean, a.min(), a.max())
        return vol.with_array(out.astype(a.dtype, copy=False))

    return _intensity(x, one)


def brightness(x: Value, factor: float = 0.25, p: float = 0.15, *, rng: np.random.Generator) -> tuple[Value, Drawn]:
    """Multiply the intensities by a factor from [1 - factor, 1 + factor]."""
    drawn = draw_brightness(rng, factor, p)
    return (_apply_brightness(x, drawn) if drawn["applied"] else x), drawn


def draw_brightness(rng: np.random.Generator, factor: float = 0.25, p: float = 0.15) -> Drawn:
    """The random parameters `brightness` draws from `rng`."""
    if not _applies(rng, p):
        return {"applied": False}
    return {"applied": True, "factor": float(rng.uniform(1 - factor, 1 + factor))}


def _apply_brightness(x: Value, drawn: Drawn) -> Value:
    def one(vol: Volume) -> Volume:
        a = _as_float(vol)
        return vol.with_array((a * drawn["factor"]).astype(a.dtype, copy=False))

    return _intensity(x, one)


def _exponents(dim: int, order: int) -> list[tuple[int, ...]]:
    """The monomials of degree at most `order` in `dim` variables, in a fixed order."""
    return [e for e in product(range(order + 1), repeat=dim) if sum(e) <= order]


def bias_field(x: Value, coefficients: float = 0.5, order: int = 3, p: float = 0.3, *,
               rng: np.random.Generator) -> tuple[Value, Drawn]:
    """Multiply by exp(P), a polynomial P of total degree `order` in the voxel
    coordinates rescaled to [-1, 1] per axis, with every coefficient uniform in
    [-coefficients, coefficients] (as MONAI's RandBiasField)."""
    vol, _ = _volumes(x)
    if not _applies(rng, p):
        return x, {"applied": False}
    n = len(_exponents(vol.dim, int(order)))
    drawn = {"applied": True, "order": int(order), "coefficients": _floats(rng.uniform(-coefficients, coefficients, size=n))}
    return _apply_bias_field(x, drawn), drawn


def _apply_bias_field(x: Value, drawn: Drawn) -> Value:
    def one(vol: Volume) -> Volume:
        a = _as_float(vol)
        shape = a.shape[: vol.dim]
        axes = [np.linspace(-1.0, 1.0, n) if n > 1 else np.zeros(1) for n in reversed(shape)]  # x, y, z
        poly = np.zeros(shape)
        for exps, c in zip(_exponents(vol.dim, drawn["order"]), drawn["coefficients"]):
            term = np.ones(shape)
            for k, e in enumerate(exps):
                if e:
                    view = [1] * vol.dim
                    view[vol.dim - 1 - k] = shape[vol.dim - 1 - k]
                    term = term * (axes[k] ** e).reshape(view)
            poly += c * term
        field = np.exp(poly)
        if a.ndim > vol.dim:
            field = field[..., None]
        return vol.with_array((a * field).astype(a.dtype, copy=False))

    return _intensity(x, one)


# Stain vectors of scikit-image's rgb2hed/hed2rgb (Ruifrok and Johnston): rows are the
# RGB optical densities of hematoxylin, eosin and DAB.
_RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
_HED_FROM_RGB = np.linalg.inv(_RGB_FROM_HED)
_LOG_ADJUST = math.log(1e-6)


def stain_jitter(x: Value, sigma: float = 0.05, p: float = 0.5, *, rng: np.random.Generator) -> tuple[Value, Drawn]:
    """H&E stain jitter (Tellez et al. 2018): in HED space (scikit-image's rgb2hed), each
    stain concentration is scaled by a factor from [1 - sigma, 1 + sigma] and shifted by
    an amount from [-sigma, sigma], then converted back to RGB. Needs an RGB (or RGBA,
    alpha kept) image; uint8 stays uint8, floating-point RGB is taken to be in [0, 1].
    Unlike rgb2hed, negative concentrations are not clipped to 0 before the jitter, so
    that a scale of 1 and a shift of 0 give the image back (colours outside the H&E
    cone are not flattened)."""
    vol, _ = _volumes(x)
    if vol.channels not in (3, 4):
        raise ValueError(f"stain_jitter needs an RGB image, not one with {vol.channels} channel(s)")
    if not _applies(rng, p):
        return x, {"applied": False}
    drawn = {"applied": True, "scale": _floats(rng.uniform(1 - sigma, 1 + sigma, size=3)),
             "shift": _floats(rng.uniform(-sigma, sigma, size=3))}
    return _apply_stain_jitter(x, drawn), drawn


def _apply_stain_jitter(x: Value, drawn: Drawn) -> Value:
    def one(vol: Volume) -> Volume:
        a = vol.array
        if a.dtype.kind in "ui":
            top = float(np.iinfo(a.dtype).max)
            rgb = a[..., :3].astype(np.float64) / top
        else:
            top = 1.0
            rgb = a[..., :3].astype(np.float64)
        rgb = np.maximum(rgb, 1e-6)
        hed = (np.log(rgb) / _LOG_ADJUST) @ _HED_FROM_RGB  # not clipped at 0: see the docstring
        hed = hed * np.array(drawn["scale"]) + np.array(drawn["shift"])
        out_rgb = np.clip(np.exp((hed * _LOG_ADJUST) @ _RGB_FROM_HED), 0.0, 1.0)
        out = a.copy()
        if a.dtype.kind in "ui":
            out[..., :3] = np.rint(out_rgb * top).astype(a.dtype)
        else:
            out[..., :3] = out_rgb.astype(a.dtype)
        return vol.with_array(out)

    return _intensity(x, one)


def motion(x: Value, degrees: float = 10.0, translation: float = 10.0, p: float = 0.1, *,
           rng: np.random.Generator) -> tuple[Value, Drawn]:
    """Simulate an MR motion artefact, following TorchIO's RandomMotion (Shaw et al.
    2019), reimplemented with NumPy FFTs and SimpleITK resampling.

    Two motion events are drawn, each a rotation about x, y and z of up to `degrees` and
    a translation along each axis of up to `translation` mm (uniform), at times spread
    evenly over the acquisition (1/3 and 2/3, each moved by up to a twelfth). The image
    is resampled through each rigid transform (about the image centre, linear), the
    centred 3-D FFT is taken of the still image and of each moved copy, and k-space is
    composed of consecutive segments along the z axis of k-space, segment i taken from
    the i-th copy; as in TorchIO the still image's spectrum is swapped into the segment
    that holds the centre of k-space, so the image stays recognisable. The result is the
    magnitude of the inverse FFT (what an MR scanner reconstructs), or its real part
    when the input holds negative values (a z-scored image), whose signs the magnitude
    would lose. With no motion the image is returned up to rounding. Float32 (float64
    for float64 input); a pair's target is untouched."""
    vol, _ = _volumes(x)
    if vol.dim != 3:
        raise ValueError(f"motion simulates 3-D MR acquisitions, not a {vol.dim}-D image")
    if not _applies(rng, p):
        return x, {"applied": False}
    n = 2
    step = 1.0 / (n + 1)
    times = np.arange(1, n + 1) * step + rng.uniform(-step / 4, step / 4, size=n)
    drawn = {"applied": True,
             "degrees": [_floats(r) for r in rng.uniform(-degrees, degrees, size=(n, 3))],
             "translation": [_floats(t) for t in rng.uniform(-translation, translation, size=(n, 3))],
             "times": _floats(times)}
    return _apply_motion(x, drawn), drawn


def _apply_motion(x: Value, drawn: Drawn) -> Value:
    vol, _ = _volumes(x)
    times = np.asarray(drawn["times"], dtype=np.float64)
    centre = _centre(vol)

    def one(v: Volume) -> Volume:
        dtype = _float_dtype(v.array)
        still = v.with_array(_as_float(v))
        copies = [still]
        for angles, shift in zip(drawn["degrees"], drawn["translation"]):
            transform = sitk.Euler3DTransform(centre, *(math.radians(a) for a in angles), tuple(shift))
            copies.append(_resample(still, transform))
        channels = v.array.ndim > v.dim
        out = np.empty(v.array.shape, dtype=dtype)
        for c in range(v.channels):
            spectra = [np.fft.fftshift(np.fft.fftn(m.array[..., c] if channels else m.array)) for m in copies]
            # TorchIO's sort_spectra: the still image fills the segment at the k-space centre
            later = np.flatnonzero(times > 0.5)
            index = int(later.min()) if later.size else len(spectra) - 1
            spectra[0], spectra[index] = spectra[index], spectra[0]
            length = spectra[0].shape[0]  # the z axis of k-space (array order z, y, x)
            bounds = [0, *(int(t * length) for t in times), length]
            composed = np.empty_like(spectra[0])
            for spectrum, lo, hi in zip(spectra, bounds[:-1], bounds[1:]):
                composed[lo:hi] = spectrum[lo:hi]
            image = np.fft.ifftn(np.fft.ifftshift(composed))
            signal = image.real if np.min(v.array) < 0 else np.abs(image)
            if channels:
                out[..., c] = signal
            else:
                out[...] = signal
        return v.with_array(out)

    return _intensity(x, one)


# ===== replay =================================================================================

_APPLY: dict[str, Callable[[Value, Drawn], Any]] = {
    "flip": _apply_flip, "rotate": _apply_rotate, "affine": _apply_affine, "elastic": _apply_elastic,
    "random_rescale": _apply_random_rescale, "random_crop": _apply_random_crop, "patches": _apply_patches,
    "box_patches": _apply_box_patches,
    "gaussian_noise": _apply_gaussian_noise, "gaussian_blur": _apply_gaussian_blur, "gamma": _apply_gamma,
    "contrast": _apply_contrast, "brightness": _apply_brightness, "bias_field": _apply_bias_field,
    "stain_jitter": _apply_stain_jitter, "motion": _apply_motion,
}


def replay(op_name: str, x: Value, drawn: Drawn) -> Any:
    """Apply operator `op_name` to `x` with the parameters it recorded in `drawn` (as
    returned by the operator, or read back from JSON): no randomness, and the result is
    bit-identical to the one the operator gave. An operator that was not applied
    (`{"applied": False}`) returns `x` unchanged."""
    if op_name not in _APPLY:
        raise KeyError(f"no augmentation operator named {op_name!r}")
    if drawn.get("applied", True) is False:
        return x
    return _APPLY[op_name](x, drawn)


OPERATORS: dict[str, Callable[..., object]] = {
    "flip": flip, "rotate": rotate, "affine": affine, "elastic": elastic, "random_rescale": random_rescale,
    "random_crop": random_crop, "patches": patches, "box_patches": box_patches,
    "gaussian_noise": gaussian_noise, "gaussian_blur": gaussian_blur, "gamma": gamma, "contrast": contrast,
    "brightness": brightness, "bias_field": bias_field, "stain_jitter": stain_jitter, "motion": motion,
}
"""The std.aug operators implemented here, by the name of their stdlib signature. Each
also takes `rng` and returns `(result, drawn)`; see `replay`."""
