"""std.post: from probabilities to labels, cleaning label maps, instances, boxes and
classes (stdlib/post.medas).

Each public function implements the operator of the same name (see `OPERATORS`) and is
called with keyword arguments named as in the signature; enum arguments (`operation`)
arrive as their names.

Conventions:

- A probability map (`kind="probs"`) stores one channel per class on the trailing
  array axis: `(z, y, x, K)` (`(y, x, K)` in 2D), as `Volume` stores channels. A map
  with no channel axis (one channel) is the foreground probability of a two-class map.
- Label maps come out as `uint8` when the classes fit (K <= 256), else `uint16`;
  instance maps as `uint32`. Every operator keeps the grid (spacing, origin,
  direction): the result is `x.with_array(...)`.
- Connected components use full connectivity (26 neighbours in 3D, 8 in 2D), as MONAI's
  KeepLargestConnectedComponent does by default; holes are background regions not
  connected (face connectivity) to the border, as scipy's binary_fill_holes defines them.
- Morphology runs per foreground class in increasing class order and never overwrites
  another class: voxels a class gains (closing, filling) are taken from background
  only, voxels it loses (opening, removal) become background.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import SimpleITK as sitk  # noqa: N813 (the alias SimpleITK documents)
from scipy import ndimage

from medasl.runtime.values import Boxes, Volume

# ===== helpers ============================================================================


def _probs(x: Volume) -> np.ndarray:
    """The probability array with its class axis last (one channel: foreground probability)."""
    a = np.asarray(x.array)
    if a.ndim == x.dim:
        return a[..., None]
    return a


def _label_dtype(k: int) -> type:
    return np.uint8 if k <= 256 else np.uint16


def _labels(x: Volume) -> np.ndarray:
    a = np.asarray(x.array)
    if a.ndim == x.dim + 1 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim != x.dim:
        raise ValueError(f"a label map has one value per voxel, got an array of shape {a.shape}")
    return a


def _classes(a: np.ndarray) -> list[int]:
    return [int(c) for c in np.unique(a) if c != 0]


def _structure(dim: int) -> np.ndarray:
    return ndimage.generate_binary_structure(dim, dim)


# ===== probabilities to labels ==============================================================


def argmax(x: Volume) -> Volume:
    """The most probable class of each voxel (the first on ties, as numpy.argmax); a
    one-channel map is the foreground probability: class 1 where it is above 0.5."""
    p = _probs(x)
    if p.shape[-1] == 1:
        out = (p[..., 0] > 0.5).astype(np.uint8)
    else:
        out = np.argmax(p, axis=-1).astype(_label_dtype(p.shape[-1]))
    return x.with_array(out, kind="labels")


def binarize(x: Volume, threshold: float = 0.5) -> Volume:
    """Class 1 where the foreground probability (channel 1 of a two-channel map, or the
    only channel) is at least `threshold`, else 0."""
    p = _probs(x)
    if p.shape[-1] > 2:
        raise ValueError(f"binarize needs a two-class probability map, got {p.shape[-1]} channels; use argmax")
    return x.with_array((p[..., -1] >= float(threshold)).astype(np.uint8), kind="labels")


# ===== cleaning label maps ===================================================================


def largest_component(x: Volume) -> Volume:
    """Keep only the largest connected component of each foreground class (the first in
    scan order on a tie); the rest becomes background."""
    a = _labels(x)
    out = a.copy()
    for c in _classes(a):
        comp, n = ndimage.label(a == c, structure=_structure(x.dim))
        if n > 1:
            sizes = np.bincount(comp.ravel())
            sizes[0] = 0
            out[(comp > 0) & (comp != int(np.argmax(sizes)))] = 0
    return x.with_array(out)


def remove_small(x: Volume, min_size: int = 64) -> Volume:
    """Connected components of each foreground class with fewer than `min_size` voxels
    become background."""
    a = _labels(x)
    out = a.copy()
    for c in _classes(a):
        comp, _ = ndimage.label(a == c, structure=_structure(x.dim))
        sizes = np.bincount(comp.ravel())
        small = sizes < int(min_size)
        small[0] = False
        out[small[comp]] = 0
    return x.with_array(out)


def fill_holes(x: Volume) -> Volume:
    """Background voxels enclosed by one foreground class take that class."""
    a = _labels(x)
    out = a.copy()
    for c in _classes(a):
        filled = ndimage.binary_fill_holes(a == c)
        out[filled & (out == 0)] = c
    return x.with_array(out)


def smooth(x: Volume, radius: int = 1, operation: str = "closing") -> Volume:
    """Binary morphological opening or closing of each foreground class with a ball of
    `radius` voxels (SimpleITK BinaryMorphologicalOpening/Closing, sitkBall)."""
    op = str(operation)
    if op not in ("opening", "closing"):
        raise ValueError(f"operation must be opening or closing, not {operation!r}")
    r = int(radius)
    if r < 0:
        raise ValueError(f"radius must be at least 0, got {radius}")
    a = _labels(x)
    out = a.copy()
    if r == 0:
        return x.with_array(out)
    f = sitk.BinaryMorphologicalClosing if op == "closing" else sitk.BinaryMorphologicalOpening
    for c in _classes(a):
        mask = a == c
        img = sitk.GetImageFromArray(mask.astype(np.uint8))
        res = sitk.GetArrayFromImage(f(img, [r] * x.dim, sitk.sitkBall, 1)) > 0
        out[mask & ~res & (out == c)] = 0
        out[res & ~mask & (out == 0)] = c
    return x.with_array(out)


# ===== instances =============================================================================


def watershed_instances(x: Volume, min_distance: int = 5) -> Volume:
    """Split the foreground (every non-zero voxel) into instances: markers are the local
    maxima of the Euclidean distance transform (in voxels) at least `min_distance`
    voxels apart (skimage.feature.peak_local_max within each connected component;
    touching maxima merge into one marker); the watershed (skimage.segmentation.watershed)
    floods the negated distance inside the mask. Instances are numbered 1..n (`uint32`)."""
    from skimage.feature import peak_local_max
    from skimage.segmentation import watershed

    mask = _labels(x) > 0
    out = np.zeros(mask.shape, dtype=np.uint32)
    if mask.any():
        distance = ndimage.distance_transform_edt(mask)
        components, _ = ndimage.label(mask, structure=_structure(x.dim))
        coords = peak_local_max(distance, min_distance=int(min_distance), labels=components, exclude_border=False)
        peaks = np.zeros(mask.shape, dtype=bool)
        peaks[tuple(coords.T)] = True
        markers, _ = ndimage.label(peaks, structure=_structure(x.dim))
        out = watershed(-distance, markers, mask=mask).astype(np.uint32)
    return x.with_array(out, kind="instances")


# ===== boxes =================================================================================


def nms(x: Boxes, iou: float = 0.3, score: float = 0.05) -> Boxes:
    """Drop boxes scoring below `score`; then, per class, greedy non-maximum suppression
    (MONAI data.box_utils.non_max_suppression): a box overlapping a higher-scoring kept
    box of its class with IoU above `iou` is dropped. Kept boxes are returned by
    decreasing score (ties by class, then input order)."""
    from monai.data.box_utils import non_max_suppression

    keep_all: list[int] = []
    candidates = np.flatnonzero(x.scores >= float(score))
    for c in np.unique(x.classes[candidates]):
        idx = candidates[x.classes[candidates] == c]
        corners = np.concatenate([x.lo[idx], x.hi[idx]], axis=1)
        kept = non_max_suppression(corners, x.scores[idx], nms_thresh=float(iou))
        keep_all.extend(int(i) for i in idx[np.asarray(kept, dtype=np.int64)])
    order = sorted(keep_all, key=lambda i: (-x.scores[i], x.classes[i], i))
    sel = np.asarray(order, dtype=np.int64)
    return Boxes(x.lo[sel].reshape(-1, x.dim), x.hi[sel].reshape(-1, x.dim), x.classes[sel], x.scores[sel], x.source)


# ===== classes ===============================================================================


def predicted_class(x: np.ndarray) -> int:
    """The index of the highest score (the first on ties)."""
    s = np.asarray(x).reshape(-1)
    if s.size == 0:
        raise ValueError("predicted_class needs at least one score")
    return int(np.argmax(s))


OPERATORS: dict[str, Callable[..., object]] = {
    "argmax": argmax, "binarize": binarize, "largest_component": largest_component, "remove_small": remove_small,
    "fill_holes": fill_holes, "smooth": smooth, "watershed_instances": watershed_instances, "nms": nms,
    "predicted_class": predicted_class,
}
"""The std.post operators implemented here, by the name of their stdlib signature."""
