"""std.post (medasl/ops/post.py) against scipy, scikit-image, SimpleITK and MONAI on
small arrays, and NMS against a brute-force greedy suppression."""

from __future__ import annotations

import pytest

np = pytest.importorskip("numpy", reason="the runtime needs numpy")
sitk = pytest.importorskip("SimpleITK", reason="the runtime needs SimpleITK")
ndimage = pytest.importorskip("scipy.ndimage", reason="std.post needs scipy")
skimage = pytest.importorskip("skimage", reason="std.post needs scikit-image")
pytest.importorskip("monai", reason="std.post needs MONAI")

from skimage.feature import peak_local_max  # noqa: E402
from skimage.morphology import remove_small_objects  # noqa: E402
from skimage.segmentation import watershed  # noqa: E402

from medasl.ops import post  # noqa: E402 (after the skips)
from medasl.runtime.values import Boxes, Volume  # noqa: E402

SPACING = (0.8, 0.9, 2.5)
ORIGIN = (-10.0, 5.0, 30.0)
DIRECTION = (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0)


def _vol(a: np.ndarray, kind: str = "labels", dim: int | None = None) -> Volume:
    dim = dim or (a.ndim - 1 if kind == "probs" else a.ndim)
    spacing, origin = SPACING[:dim], ORIGIN[:dim]
    direction = DIRECTION if dim == 3 else (1.0, 0.0, 0.0, 1.0)
    return Volume(a, spacing, origin, direction, kind=kind)


def _same_geometry(a: Volume, b: Volume) -> None:
    assert a.spacing == b.spacing and a.origin == b.origin and a.direction == b.direction


def _probs(shape: tuple[int, ...], k: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    p = rng.random((*shape, k)).astype(np.float32)
    return p / p.sum(-1, keepdims=True)


def test_argmax_channels_last() -> None:
    p = _probs((4, 5, 6), 4)
    x = _vol(p, "probs")
    out = post.argmax(x)
    assert out.kind == "labels" and out.array.dtype == np.uint8 and out.array.shape == (4, 5, 6)
    assert np.array_equal(out.array, np.argmax(p, axis=-1))
    _same_geometry(out, x)
    # one channel: the foreground probability
    one = post.argmax(_vol(p[..., 1], "probs", dim=3))
    assert np.array_equal(one.array, (p[..., 1] > 0.5).astype(np.uint8))


def test_argmax_matches_monai_asdiscrete() -> None:
    from monai.transforms import AsDiscrete

    p = _probs((3, 4, 5), 3, seed=1)
    ref = AsDiscrete(argmax=True)(np.moveaxis(p, -1, 0))[0]
    assert np.array_equal(post.argmax(_vol(p, "probs")).array, np.asarray(ref).astype(np.uint8))


def test_binarize() -> None:
    p = _probs((6, 7), 2, seed=2)
    x = _vol(p, "probs")
    out = post.binarize(x, threshold=0.3)
    assert out.kind == "labels" and out.array.dtype == np.uint8
    assert np.array_equal(out.array, (p[..., 1] >= 0.3).astype(np.uint8))
    _same_geometry(out, x)
    with pytest.raises(ValueError, match="two-class"):
        post.binarize(_vol(_probs((4, 4), 3), "probs"))


def _two_class_map() -> np.ndarray:
    a = np.zeros((5, 12, 12), dtype=np.uint8)
    a[1:4, 1:5, 1:5] = 1  # 48 voxels
    a[2, 8, 8] = 1  # 1 voxel
    a[1:3, 8:11, 1:3] = 2  # 12 voxels
    a[3, 10, 10] = 2
    a[4, 11, 11] = 2  # touches (3, 10, 10) diagonally: one 26-connected component
    return a


def test_largest_component_per_class_against_scipy_and_monai() -> None:
    from monai.transforms import KeepLargestConnectedComponent

    a = _two_class_map()
    x = _vol(a)
    out = post.largest_component(x)
    _same_geometry(out, x)
    expected = np.zeros_like(a)
    for c in (1, 2):
        comp, _ = ndimage.label(a == c, structure=np.ones((3, 3, 3)))
        sizes = np.bincount(comp.ravel())[1:]
        expected[comp == 1 + int(np.argmax(sizes))] = c
    assert np.array_equal(out.array, expected)
    ref = KeepLargestConnectedComponent(applied_labels=[1, 2], independent=True)(a[None])[0]
    assert np.array_equal(out.array, np.asarray(ref))


def test_remove_small_against_skimage() -> None:
    a = _two_class_map()
    out = post.remove_small(_vol(a), min_size=12)
    expected = np.zeros_like(a)
    for c in (1, 2):
        expected[remove_small_objects(a == c, max_size=11, connectivity=3)] = c
    assert np.array_equal(out.array, expected)
    assert np.count_nonzero(out.array == 2) == 12 and np.count_nonzero(out.array == 1) == 48


def test_fill_holes_per_class() -> None:
    a = np.zeros((9, 9), dtype=np.uint8)
    a[1:6, 1:6] = 1
    a[3, 3] = 0  # hole in class 1
    a[6:9, 6:9] = 2
    a[7, 7] = 0  # hole in class 2
    a[0, 7] = 0
    out = post.fill_holes(_vol(a))
    expected = a.copy()
    expected[3, 3] = 1
    expected[7, 7] = 2
    assert np.array_equal(out.array, expected)
    for c in (1, 2):
        assert np.array_equal(out.array == c, ndimage.binary_fill_holes(a == c))


@pytest.mark.parametrize("operation", ["opening", "closing"])
def test_smooth_against_simpleitk(operation: str) -> None:
    rng = np.random.default_rng(3)
    a = (rng.random((6, 10, 10)) > 0.5).astype(np.uint8)
    x = _vol(a)
    out = post.smooth(x, radius=1, operation=operation)
    f = sitk.BinaryMorphologicalOpening if operation == "opening" else sitk.BinaryMorphologicalClosing
    ref = sitk.GetArrayFromImage(f(sitk.GetImageFromArray(a), [1, 1, 1], sitk.sitkBall, 1))
    assert np.array_equal(out.array, ref)
    _same_geometry(out, x)


def test_smooth_never_overwrites_another_class() -> None:
    a = np.zeros((7, 7), dtype=np.uint8)
    a[1:6, 1:3] = 1
    a[1:6, 4:6] = 1
    a[3, 3] = 2  # closing class 1 would bridge the gap through class 2's voxel
    out = post.smooth(_vol(a), radius=1, operation="closing").array
    assert out[3, 3] == 2


def test_watershed_instances_against_skimage() -> None:
    yy, xx = np.mgrid[0:40, 0:60]
    mask = ((yy - 20) ** 2 + (xx - 18) ** 2 < 12**2) | ((yy - 20) ** 2 + (xx - 40) ** 2 < 12**2)
    x = _vol(mask.astype(np.uint8))
    out = post.watershed_instances(x, min_distance=5)
    assert out.kind == "instances" and out.array.dtype == np.uint32
    _same_geometry(out, x)
    distance = ndimage.distance_transform_edt(mask)
    coords = peak_local_max(distance, min_distance=5, labels=ndimage.label(mask, np.ones((3, 3)))[0],
                            exclude_border=False)
    peaks = np.zeros(mask.shape, dtype=bool)
    peaks[tuple(coords.T)] = True
    expected = watershed(-distance, ndimage.label(peaks, np.ones((3, 3)))[0], mask=mask)
    assert np.array_equal(out.array, expected)
    assert len(np.unique(out.array)) == 3  # two touching discs split in two
    assert np.array_equal(out.array > 0, mask)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    lo, hi = np.maximum(a[: len(a) // 2], b[: len(b) // 2]), np.minimum(a[len(a) // 2:], b[len(b) // 2:])
    inter = np.prod(np.clip(hi - lo, 0, None))
    va, vb = np.prod(a[len(a) // 2:] - a[: len(a) // 2]), np.prod(b[len(b) // 2:] - b[: len(b) // 2])
    return float(inter / (va + vb - inter))


def _nms_brute(boxes: Boxes, iou: float, score: float) -> set[int]:
    keep: set[int] = set()
    order = sorted(np.flatnonzero(boxes.scores >= score), key=lambda i: -boxes.scores[i])
    corners = np.concatenate([boxes.lo, boxes.hi], axis=1)
    for i in order:
        if all(boxes.classes[j] != boxes.classes[i] or _iou(corners[i], corners[j]) <= iou for j in keep):
            keep.add(int(i))
    return keep


@pytest.mark.parametrize("seed", range(3))
def test_nms_against_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 40
    lo = rng.uniform(0, 20, (n, 3))
    hi = lo + rng.uniform(2, 8, (n, 3))
    boxes = Boxes(lo, hi, rng.integers(1, 3, n), rng.random(n), source="x")
    out = post.nms(boxes, iou=0.2, score=0.1)
    expected = _nms_brute(boxes, 0.2, 0.1)
    got = {int(np.flatnonzero((boxes.lo == out.lo[i]).all(1) & (boxes.hi == out.hi[i]).all(1))[0])
           for i in range(len(out))}
    assert got == expected and len(out) == len(expected)
    assert np.all(np.diff(out.scores) <= 0)
    assert out.source == "x"


def test_nms_empty() -> None:
    empty = Boxes(np.zeros((0, 3)), np.zeros((0, 3)), [], [])
    assert len(post.nms(empty)) == 0
    low = Boxes(np.zeros((1, 3)), np.ones((1, 3)), [1], [0.01])
    assert len(post.nms(low)) == 0


def test_predicted_class() -> None:
    assert post.predicted_class(np.array([0.1, 0.7, 0.2])) == 1
    assert isinstance(post.predicted_class(np.array([0.5, 0.5])), int)
