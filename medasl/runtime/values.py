"""The Python values that flow between operators at run time (see docs/runtime.md).

A `Volume` carries its geometry in SimpleITK's conventions (spacing and origin in
`(x, y, z)` order, LPS millimetres, row-major direction cosines) next to a NumPy array in
`sitk.GetArrayFromImage` order `(z, y, x)`. Keeping both conventions exactly as SimpleITK
has them means a SimpleITK operator converts with `to_sitk()` / `from_sitk()` and never
copies geometry by hand, which is where geometry usually gets lost.

This module imports NumPy (and SimpleITK, lazily, inside the conversions), so the front
end (`medasc check`, `graph`, `compile`) must never import it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Generic, TypeVar

import numpy as np

if TYPE_CHECKING:
    import SimpleITK as sitk  # noqa: N813 (the alias SimpleITK documents)

KINDS = ("image", "labels", "probs", "onehot", "instances")
LABEL_KINDS = ("labels", "instances")

A = TypeVar("A")
B = TypeVar("B")
T = TypeVar("T")


@dataclass(eq=False)
class Volume:
    """An image (or label, probability, one-hot, instance map) with its geometry.

    `array` is in `sitk.GetArrayFromImage` order: `(z, y, x)` for 3D, `(y, x)` for 2D,
    with one more trailing axis for multi-channel images (RGB pathology). `spacing` and
    `origin` are `(x, y, z)` tuples in millimetres, LPS world coordinates; `direction`
    is the row-major direction cosine matrix, flattened. `kind` says how the values may
    be treated (label kinds are never interpolated linearly), `modality` is the checked
    modality (`CT`, `MR`, ... or `Any`), `source` the file it came from, for diagnostics.

    Equality is not defined (`eq=False`): comparing arrays element-wise is rarely what
    is meant; compare `array` with NumPy and the grid with `same_grid`.
    """

    array: np.ndarray
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]
    kind: str = "image"
    modality: str = "Any"
    source: str | None = None
    names: tuple[tuple[int, str], ...] = ()  # a label map's class names by value (a DICOM SEG's segment labels)

    def __post_init__(self) -> None:
        """Normalise the geometry to float tuples and refuse shapes that cannot be an image,
        so that a mistake shows where the Volume is made and not in a later operator."""
        self.spacing = tuple(float(v) for v in self.spacing)
        self.origin = tuple(float(v) for v in self.origin)
        self.direction = tuple(float(v) for v in self.direction)
        dim = len(self.spacing)
        if dim not in (2, 3, 4):
            raise ValueError(f"a Volume has 2, 3 or 4 spatial axes, not {dim}")
        if len(self.origin) != dim or len(self.direction) != dim * dim:
            raise ValueError(f"geometry of a {dim}-D Volume needs {dim} origin values and {dim * dim} "
                             f"direction values, got {len(self.origin)} and {len(self.direction)}")
        if self.array.ndim not in (dim, dim + 1):
            raise ValueError(f"array of shape {self.array.shape} does not fit a {dim}-D Volume")
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {self.kind!r}")

    # ----- shape ------------------------------------------------------------------------

    @property
    def dim(self) -> int:
        """The number of spatial axes (2 or 3), from the geometry rather than the array,
        because a trailing channel axis makes the array one longer."""
        return len(self.spacing)

    @property
    def channels(self) -> int:
        """The number of values per voxel: 1, or the length of the trailing channel axis."""
        return 1 if self.array.ndim == self.dim else int(self.array.shape[-1])

    @property
    def shape(self) -> tuple[int, ...]:
        """The spatial size in `(x, y, z)` order, as `sitk.Image.GetSize()` and the
        language's `shape=` attribute give it (the reverse of `array.shape`, channels
        left out). Kept in the same order as `spacing` so the two zip together."""
        return tuple(int(n) for n in reversed(self.array.shape[: self.dim]))

    # ----- SimpleITK ----------------------------------------------------------------------

    def to_sitk(self) -> sitk.Image:
        """This volume as a SimpleITK image with the same geometry.

        Types SimpleITK has no pixel type for are widened without loss (bool to uint8,
        float16 to float32); the array is copied, so the image may be changed freely.
        """
        import SimpleITK as sitk  # noqa: N813 (the alias SimpleITK documents)

        array = self.array
        if array.dtype == np.bool_:
            array = array.astype(np.uint8)
        elif array.dtype == np.float16:
            array = array.astype(np.float32)
        img = sitk.GetImageFromArray(np.ascontiguousarray(array), isVector=self.channels > 1 or array.ndim > self.dim)
        img.SetSpacing(self.spacing)
        img.SetOrigin(self.origin)
        img.SetDirection(self.direction)
        return img

    @classmethod
    def from_sitk(cls, img: sitk.Image, kind: str, modality: str, source: str | None = None) -> Volume:
        """A Volume holding `img`'s pixels (copied) and geometry, unchanged."""
        import SimpleITK as sitk  # noqa: N813 (the alias SimpleITK documents)

        return cls(sitk.GetArrayFromImage(img), img.GetSpacing(), img.GetOrigin(), img.GetDirection(),
                   kind=kind, modality=modality, source=source)

    def with_array(self, array: np.ndarray, kind: str | None = None) -> Volume:
        """A Volume on the same grid holding `array` (for NumPy operators that keep the grid)."""
        return Volume(array, self.spacing, self.origin, self.direction, kind or self.kind, self.modality, self.source,
                      self.names)

    def with_names(self, names: tuple[tuple[int, str], ...]) -> Volume:
        """This volume with the class names of its label values (`((1, "liver"), ...)`)."""
        return Volume(self.array, self.spacing, self.origin, self.direction, self.kind, self.modality, self.source,
                      tuple((int(v), str(n)) for v, n in names))

    # ----- geometry -------------------------------------------------------------------------

    def grid_differences(self, other: Volume, tol: float = 1e-4) -> list[str]:
        """How the voxel grid of `other` differs from this one, one phrase per property
        (`size`, `spacing`, `origin`, `direction`) with both values; empty when they agree.

        Direction cosines may differ by `tol`; spacing and origin by `tol` times the
        larger of 1 mm and the largest voxel size. The tolerance exists because NIfTI
        stores geometry as float32 (about 1e-7 relative) and DICOM as decimal strings, so
        the same grid written by two tools rarely matches bit for bit; 1e-4 of a voxel
        is far below anything that moves a voxel.
        """
        diffs: list[str] = []
        if self.dim != other.dim:
            return [f"dimension {self.dim} vs {other.dim}"]
        if self.shape != other.shape:
            diffs.append(f"size {self.shape} vs {other.shape}")
        mm_tol = tol * max(1.0, *self.spacing, *other.spacing)
        if not _close(self.spacing, other.spacing, mm_tol):
            diffs.append(f"spacing {_fmt(self.spacing)} vs {_fmt(other.spacing)} mm")
        if not _close(self.origin, other.origin, mm_tol):
            diffs.append(f"origin {_fmt(self.origin)} vs {_fmt(other.origin)} mm")
        if not _close(self.direction, other.direction, tol):
            diffs.append(f"direction {_fmt(self.direction)} vs {_fmt(other.direction)}")
        return diffs

    def same_grid(self, other: Volume, tol: float = 1e-4) -> bool:
        """Whether `other` lies on this volume's voxel grid (size, spacing, origin and
        direction agree within `tol`, see `grid_differences`), so that the two arrays
        can be compared voxel by voxel."""
        return not self.grid_differences(other, tol)

    def aligned_to(self, other: Volume, tol: float = 1e-4) -> Volume | None:
        """This volume re-stored on `other`'s grid, when that needs no interpolation.

        Two files may hold the same physical voxels in a different storage order (a
        label NIfTI stored with a flipped y axis next to its DICOM series, or RAS- vs
        LPS-ordered files). Then every voxel centre of one is a voxel centre of the
        other, and the arrays differ only by axis flips and permutations, which are
        exact. Returns the re-stored volume (geometry copied from `other`), or None when
        the grids are physically different and resampling would be needed.
        """
        if self.dim != other.dim:
            return None
        if self.same_grid(other, tol):
            return self
        dim = self.dim
        d_self = np.array(self.direction).reshape(dim, dim) * np.array(self.spacing)
        d_other = np.array(other.direction).reshape(dim, dim) * np.array(other.spacing)
        try:
            inv_other = np.linalg.inv(d_other)
        except np.linalg.LinAlgError:
            return None
        # index_other = m @ index_self + b  (indices in (x, y, z) order)
        m = inv_other @ d_self
        b = inv_other @ (np.array(self.origin) - np.array(other.origin))
        perm = np.rint(m)
        if np.max(np.abs(m - perm)) > tol or np.max(np.abs(b - np.rint(b))) > tol:
            return None
        if sorted(np.abs(perm).sum(axis=0).tolist()) != [1.0] * dim or sorted(np.abs(perm).sum(axis=1).tolist()) != [1.0] * dim:
            return None
        # Axis j of self maps to axis i of other with sign perm[i, j].
        src_axis_for = [int(np.flatnonzero(perm[i])[0]) for i in range(dim)]
        signs = [int(perm[i, src_axis_for[i]]) for i in range(dim)]
        offsets = [int(np.rint(b[i])) for i in range(dim)]
        size_self = self.shape
        for i in range(dim):
            j = src_axis_for[i]
            if size_self[j] != other.shape[i]:
                return None
            # the other index range 0..n-1 must be exactly the image of self's 0..n-1
            lo = offsets[i] if signs[i] > 0 else offsets[i] - (size_self[j] - 1)
            if lo != 0:
                return None
        # Array axes are reversed (x is the last spatial axis); channels stay last.
        array = self.array
        for j in range(dim):
            i = next(k for k in range(dim) if src_axis_for[k] == j)
            if signs[i] < 0:
                array = np.flip(array, axis=dim - 1 - j)
        order = [dim - 1 - src_axis_for[dim - 1 - a] for a in range(dim)]
        order += list(range(dim, array.ndim))
        array = np.ascontiguousarray(np.transpose(array, order))
        return Volume(array, other.spacing, other.origin, other.direction, self.kind, self.modality, self.source,
                      self.names)


@dataclass(frozen=True)
class Pair(Generic[A, B]):
    """A `Pair<A, B>` value: a model's `input` and its `target` (image and label map)."""

    input: A
    target: B


@dataclass(frozen=True)
class Case(Generic[T]):
    """One element of a `Dataset<T>`: the case id (the part of a file name matched by
    `*`, a SeriesInstanceUID, ...) and its value. The id names the case in diagnostics,
    in written file names and in split assignments, so it must be stable across runs."""

    id: str
    value: T


@dataclass(frozen=True)
class DicomSeries:
    """A `DicomSeries[M]` value: a series found on disk, not yet decoded.

    `files` are in the order SimpleITK's GDCM series reader sorts them (by position along
    the slice normal); decoding them (`dicom_to_image`) is a separate step so that a
    folder can be searched, and a series chosen, from headers alone.
    """

    uid: str
    files: tuple[str, ...]
    description: str = ""
    modality: str = "Any"
    source: str | None = None


@dataclass(eq=False)
class Boxes:
    """A `Boxes[D, K]` value: axis-aligned boxes in world coordinates.

    `lo` and `hi` are `(n, D)` arrays of the minimum and maximum corners in `(x, y, z)`
    order, LPS millimetres (the Volume's world frame); the boxes are aligned with the
    world axes, not with a volume's voxel axes. A box covers whole voxels: for a box made
    from a mask its corners are those of the outermost voxels' footprints, not their
    centres. `classes` is `(n,)` integer (1 .. K-1), `scores` `(n,)` float (1 for boxes
    from a mask); `source` the file it came from, for diagnostics.
    """

    lo: np.ndarray
    hi: np.ndarray
    classes: np.ndarray
    scores: np.ndarray
    source: str | None = None

    def __post_init__(self) -> None:
        self.lo = np.asarray(self.lo, dtype=np.float64)
        self.hi = np.asarray(self.hi, dtype=np.float64)
        self.classes = np.asarray(self.classes, dtype=np.int64).reshape(-1)
        self.scores = np.asarray(self.scores, dtype=np.float64).reshape(-1)
        n = self.classes.shape[0]
        if self.lo.ndim != 2 or self.lo.shape != self.hi.shape or self.lo.shape[0] != n or self.scores.shape[0] != n:
            raise ValueError(f"boxes need lo and hi of shape (n, D) and n classes and scores, got "
                             f"{self.lo.shape}, {self.hi.shape}, {self.classes.shape}, {self.scores.shape}")
        if self.lo.shape[1] not in (2, 3):
            raise ValueError(f"boxes have 2 or 3 axes, not {self.lo.shape[1]}")
        if np.any(self.hi < self.lo):
            raise ValueError("a box has a maximum corner below its minimum corner")

    @property
    def dim(self) -> int:
        """The number of spatial axes (2 or 3)."""
        return int(self.lo.shape[1])

    def __len__(self) -> int:
        return int(self.classes.shape[0])

    def moved(self, move: Callable[[np.ndarray], np.ndarray], step: float | None = None) -> Boxes:
        """The boxes after the content under them moved by `move` (world points `(n, D)`
        -> where they went): each becomes the world-axis-aligned box around its moved
        corners, which holds the whole moved box when `move` is affine (a rotated box
        becomes the box around its rotated corners). For a deformation (`step` given),
        points on the box's faces at most `step` mm apart are moved instead: a continuous
        map takes a box's boundary to the boundary of its image, so those bound it."""
        lo, hi = self.lo.copy(), self.hi.copy()
        for i in range(len(self)):
            points = _box_points(self.lo[i], self.hi[i], step)
            moved = move(points)
            lo[i], hi[i] = moved.min(axis=0), moved.max(axis=0)
        return Boxes(lo, hi, self.classes, self.scores, self.source)

    def within(self, lo: Sequence[float], hi: Sequence[float]) -> Boxes:
        """The boxes clipped to the world region `[lo, hi]`; a box entirely outside it is
        dropped with its class and score (a box of no extent along an axis is kept when
        it lies in the region, bounds included)."""
        region_lo, region_hi = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
        clipped_lo, clipped_hi = np.maximum(self.lo, region_lo), np.minimum(self.hi, region_hi)
        flat = self.hi == self.lo
        keep = np.all((clipped_hi > clipped_lo) | (flat & (clipped_hi >= clipped_lo)), axis=1)
        return Boxes(clipped_lo[keep], clipped_hi[keep], self.classes[keep], self.scores[keep], self.source)


@dataclass(eq=False)
class Annotations:
    """An `Annotations[3]` value: objects from a table (LUNA16 `annotations.csv` layout),
    not yet attached to images.

    Row i is the object of case `ids[i]` centred at `centres[i]` (`(x, y, z)`: world LPS
    mm when `coords` is `"world"`, voxel indices of the case's image when `"voxel"`)
    with diameter `diameters[i]` mm and class `classes[i]` (1 without a `class`
    column); `lines[i]` is its line in the file `source`, for diagnostics.
    """

    ids: tuple[str, ...]
    centres: np.ndarray
    diameters: np.ndarray
    classes: np.ndarray
    coords: str = "world"
    source: str | None = None
    lines: tuple[int, ...] = ()

    def __len__(self) -> int:
        return len(self.ids)

    def rows(self, case_id: str) -> np.ndarray:
        """The indices of the rows of case `case_id`, in file order."""
        return np.array([i for i, c in enumerate(self.ids) if c == case_id], dtype=np.int64)


@dataclass(frozen=True)
class CaseSpec:
    """One case of a source dataset (`folder`, `phantom`, ...) before it is read.

    Listing a dataset is cheap (file names, headers); reading a case is not. The
    executor lists a source once, builds each case's cache key from `id`, `args` and
    the content digests of `files`, and reads only the cases it has no cached result
    for, possibly in a worker process: hence `args` is plain JSON (strings, numbers,
    lists, dicts) that the source's loader turns back into the value.
    """

    id: str
    files: tuple[str, ...] = ()
    args: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class OperatorRef:
    """An operator passed as a value: `loss=@dice_ce(lambda_ce=0.5)`, an optimizer or a
    schedule (`adam(lr=1e-3)` gives one), a metric with the conversion its prediction
    needs first (`metric=@dice` with `inputs={"pred": OperatorRef("argmax")}`)."""

    op: str
    options: dict[str, object] = field(default_factory=dict)
    inputs: dict[str, OperatorRef] = field(default_factory=dict)


@dataclass(eq=False)
class Network:
    """A `Model<I, O>` value: the std.nets operator that built it, its arguments, and
    the torch module (`torch.nn.Module`; typed `object` so this module needs no torch).

    Model inputs are `(N, C, *spatial)` float32 tensors with the spatial axes in array
    order (`(z, y, x)` for 3D, as `Volume.array`); segmentation models give logits
    `(N, K, *spatial)`, classifiers logits `(N, K)`.
    """

    op: str
    params: dict[str, object]
    module: object


@dataclass(eq=False)
class Trained:
    """A `Trained<I, O>` value: a network with the weights training kept (the best
    validation epoch, else the last) and the history: one dict per epoch with at least
    `epoch`, `loss` (mean training loss), `lr` and `seconds`, plus `val_<metric>` on the
    epochs that validated."""

    network: Network
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    metric: str | None = None
    goal: str | None = None  # max | min: which way `metric` is better


@dataclass(frozen=True)
class Figure:
    """A `Figure` value: a rendered picture (PNG bytes) and its title."""

    title: str
    png: bytes


@dataclass(frozen=True)
class Measured:
    """A `Metric[G]` value: one number for the study (`value`, the mean over cases for a
    per-case metric), the per-case values and, for label maps, the per-class means.
    `goal` is `max` or `min`. NaN marks a case where the metric is undefined (an empty
    reference and an empty prediction for HD95); means skip NaN."""

    name: str
    goal: str
    value: float
    per_case: dict[str, float] = field(default_factory=dict)
    per_class: dict[str, float] = field(default_factory=dict)
    # a cross-validated metric (`cross_validated`): the value of every fold by its index
    # ("0", "1", ...); `value` is their mean, `per_case` every fold's cases
    per_fold: dict[str, float] = field(default_factory=dict)


# ----- a pair's target when its input moves ------------------------------------------------


def index_to_world(vol: Volume, index: np.ndarray) -> np.ndarray:
    """World points (LPS mm, `(n, D)`) of continuous voxel indices `(n, D)` ((x, y, z)
    order) of `vol`'s grid."""
    d = vol.dim
    m = np.array(vol.direction).reshape(d, d) * np.array(vol.spacing)
    return np.array(vol.origin) + np.asarray(index, dtype=np.float64) @ m.T


def world_to_index(vol: Volume, points: np.ndarray) -> np.ndarray:
    """The inverse of `index_to_world`."""
    d = vol.dim
    m = np.array(vol.direction).reshape(d, d) * np.array(vol.spacing)
    return (np.asarray(points, dtype=np.float64) - np.array(vol.origin)) @ np.linalg.inv(m).T


def footprint(vol: Volume) -> tuple[np.ndarray, np.ndarray]:
    """The world-axis-aligned box around `vol`'s voxels (their footprints: continuous
    indices -0.5 .. n - 0.5), as (lo, hi) in mm. On an oblique grid it also holds some
    space around the grid, as boxes on such a grid do (see `Boxes`)."""
    corners = np.array(np.meshgrid(*[[0, 1]] * vol.dim, indexing="ij")).reshape(vol.dim, -1).T
    world = index_to_world(vol, corners * np.array(vol.shape, dtype=np.float64) - 0.5)
    return world.min(axis=0), world.max(axis=0)


def carried(target: object, grid: Volume, move: Callable[[np.ndarray], np.ndarray] | None = None,
            step: float | None = None) -> object:
    """A pair's target without a voxel grid after a spatial operator gave the pair's
    input the grid `grid` and moved its content by `move` (world points -> where they
    went; None: nothing moved in world coordinates, as resampling, crops, pads and
    reorientation keep every kept voxel where it was). `Boxes` move with the content
    (`Boxes.moved`, `step` for a deformation) and are clipped to the new grid's
    footprint, losing the boxes left outside it; anything else (a `Class`, `Scores`) is
    carried along unchanged, being a fact about the case and not about a place in it."""
    if isinstance(target, Boxes):
        boxes = target.moved(move, step) if move is not None else target
        return boxes.within(*footprint(grid))
    return target


def _box_points(lo: np.ndarray, hi: np.ndarray, step: float | None) -> np.ndarray:
    """The corners of the box `[lo, hi]` (`step` None), or points on its faces at most
    `step` apart along each axis (corners included), as `(n, D)`."""
    d = lo.shape[0]
    if step is None:
        unit = np.array(np.meshgrid(*[[0.0, 1.0]] * d, indexing="ij")).reshape(d, -1).T
        return lo + unit * (hi - lo)
    axes = [np.linspace(a, b, max(2, min(256, int(math.ceil((b - a) / step)) + 1))) for a, b in zip(lo, hi)]
    faces = []
    for axis in range(d):
        for end in (lo[axis], hi[axis]):
            grid = np.meshgrid(*[[end] if a == axis else axes[a] for a in range(d)], indexing="ij")
            faces.append(np.stack([g.ravel() for g in grid], axis=1))
    return np.concatenate(faces)


def _close(a: tuple[float, ...], b: tuple[float, ...], tol: float) -> bool:
    return len(a) == len(b) and all(math.isclose(x, y, rel_tol=0.0, abs_tol=tol) for x, y in zip(a, b))


def _fmt(values: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in values) + ")"
