"""std.io conversions (one-hot, instances, boxes) and std.pre lung_mask and
histogram_match (medasl/ops/io.py, medasl/ops/pre.py): round trips, geometry, world
coordinates of boxes on an oblique anisotropic grid, and the lung mask on a real chest CT."""

from __future__ import annotations

import itertools

import pytest

np = pytest.importorskip("numpy", reason="the runtime needs numpy (pip install -e '.[run]')")
sitk = pytest.importorskip("SimpleITK", reason="the runtime needs SimpleITK (pip install -e '.[run]')")
pytest.importorskip("skimage", reason="the conversions need scikit-image (pip install -e '.[run]')")
pytest.importorskip("scipy", reason="std.pre needs scipy (pip install -e '.[run]')")

from medasl.ops import io, pre  # noqa: E402 (after the skips)
from medasl.runtime.values import Boxes, Volume  # noqa: E402
from tests.conftest import SHARED_DATA, shared_data  # noqa: E402

DATA = SHARED_DATA
CHEST = DATA / "lung_ct_tumor_lungpetctdx" / "dicom"


def _oblique_direction() -> tuple[float, ...]:
    """A proper rotation (30 degrees about z, then 20 about x), row-major."""
    a, b = np.radians(30.0), np.radians(20.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return tuple((rz @ rx).ravel())


def _labels(shape=(12, 20, 16), spacing=(0.7, 1.3, 2.5), origin=(-10.0, 5.0, 30.0), direction=None) -> Volume:
    a = np.zeros(shape, dtype=np.uint8)
    a[2:5, 3:9, 4:7] = 1
    a[7:11, 12:18, 2:14] = 2
    a[1:3, 14:19, 10:15] = 3
    a[8:10, 2:5, 1:3] = 1  # a second component of class 1
    return Volume(a, spacing, origin, direction or (1, 0, 0, 0, 1, 0, 0, 0, 1), kind="labels", modality="CT")


def _same_geometry(a: Volume, b: Volume) -> None:
    assert a.spacing == b.spacing and a.origin == b.origin and a.direction == b.direction


# ----- one-hot and instances -------------------------------------------------------------


def test_one_hot_round_trip_keeps_geometry() -> None:
    x = _labels(direction=_oblique_direction())
    oh = io.one_hot(x)
    assert oh.kind == "onehot" and oh.array.dtype == np.uint8 and oh.array.shape == (*x.array.shape, 4)
    assert oh.channels == 4 and np.all(oh.array.sum(axis=-1) == 1)
    for k in range(4):
        assert np.array_equal(oh.array[..., k], (x.array == k).astype(np.uint8))
    _same_geometry(oh, x)
    back = io.onehot_to_labels(oh)
    assert back.kind == "labels" and back.array.dtype == np.uint8
    assert np.array_equal(back.array, x.array)
    _same_geometry(back, x)


def test_one_hot_classes_and_2d() -> None:
    x = Volume(np.array([[0, 1], [2, 1]], dtype=np.int16), (0.5, 0.5), (0, 0), (1, 0, 0, 1), kind="labels")
    oh = io.one_hot(x, classes=5)
    assert oh.array.shape == (2, 2, 5) and oh.array[..., 3:].sum() == 0
    assert np.array_equal(io.onehot_to_labels(oh).array, x.array)
    with pytest.raises(ValueError):
        io.one_hot(x, classes=2)
    with pytest.raises(ValueError):
        io.one_hot(x.with_array(np.array([[0.5, 1], [2, 1]])))


def test_instances_and_labels() -> None:
    x = _labels()
    inst = io.labels_to_instances(x)
    assert inst.kind == "instances" and inst.array.dtype == np.uint16
    assert inst.array.max() == 4  # four face-connected objects
    assert np.array_equal(inst.array > 0, x.array > 0)
    _same_geometry(inst, x)
    lab = io.instances_to_labels(inst)
    assert lab.kind == "labels" and lab.array.dtype == np.uint8
    assert np.array_equal(lab.array, (x.array > 0).astype(np.uint8))
    assert io.OPERATORS["one_hot"] is io.one_hot and io.OPERATORS["mask_to_boxes"] is io.mask_to_boxes


# ----- boxes -------------------------------------------------------------------------------


def test_mask_boxes_mask_round_trip_on_an_axis_aligned_grid() -> None:
    x = _labels()
    boxes = io.mask_to_boxes(x)
    assert len(boxes) == 4 and sorted(boxes.classes.tolist()) == [1, 1, 2, 3]
    assert np.all(boxes.scores == 1.0)
    back = io.boxes_to_mask(boxes, x)
    assert back.kind == "labels" and back.array.dtype == np.uint8
    assert np.array_equal(back.array, x.array)
    _same_geometry(back, x)


def test_box_world_corners_on_a_flipped_grid() -> None:
    # x axis flipped: an axis-aligned grid still, exact round trip and known corners
    x = _labels(direction=(-1, 0, 0, 0, 1, 0, 0, 0, 1))
    boxes = io.mask_to_boxes(x)
    assert np.array_equal(io.boxes_to_mask(boxes, x).array, x.array)
    i = int(np.flatnonzero(boxes.classes == 2)[0])
    # class 2 covers x indices 2..13, y 12..17, z 7..10
    ox, oy, oz = x.origin
    sx, sy, sz = x.spacing
    assert np.allclose(boxes.lo[i], [ox - (13 + 0.5) * sx, oy + (12 - 0.5) * sy, oz + (7 - 0.5) * sz])
    assert np.allclose(boxes.hi[i], [ox - (2 - 0.5) * sx, oy + (17 + 0.5) * sy, oz + (10 + 0.5) * sz])


def test_box_world_corners_on_an_oblique_anisotropic_grid() -> None:
    x = _labels(direction=_oblique_direction())
    boxes = io.mask_to_boxes(x)
    d = np.array(x.direction).reshape(3, 3) * np.array(x.spacing)
    for k in range(len(boxes)):
        cls = boxes.classes[k]
        # brute force: every corner of every voxel of the class, in world mm
        from skimage.measure import label
        comps = label(x.array == cls, connectivity=1)
        found = False
        for c in range(1, comps.max() + 1):
            idx = np.argwhere(comps == c)[:, ::-1].astype(float)
            corners = np.concatenate([idx + np.array(off) - 0.5 for off in itertools.product((0, 1), repeat=3)])
            world = np.array(x.origin) + corners @ d.T
            if np.allclose(world.min(axis=0), boxes.lo[k]) and np.allclose(world.max(axis=0), boxes.hi[k]):
                found = True
        assert found, f"box {k} is not the world bounding box of any component's voxel corners"
    # every voxel of the mask is inside the painted boxes (boxes are wider on an oblique grid)
    painted = io.boxes_to_mask(boxes, x).array
    assert np.all(painted[x.array > 0] > 0)
    assert (painted > 0).sum() > (x.array > 0).sum()


def test_boxes_to_mask_overlap_and_outside() -> None:
    like = Volume(np.zeros((4, 10, 10), np.int16), (1.0, 1.0, 2.0), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    boxes = Boxes(lo=[[0, 0, 0], [2, 2, 0], [100, 100, 100]], hi=[[5, 5, 6], [8, 8, 6], [110, 110, 110]],
                  classes=[1, 2, 3], scores=[0.9, 0.5, 1.0])
    m = io.boxes_to_mask(boxes, like).array
    assert m.shape == (4, 10, 10) and m.max() == 2
    assert m[0, 3, 3] == 1  # both boxes; the higher score (class 1) wins
    assert m[0, 7, 7] == 2 and m[0, 9, 9] == 0 and m[3, 0, 0] == 1
    empty = io.mask_to_boxes(like.with_array(np.zeros((4, 10, 10), np.uint8), kind="labels"))
    assert len(empty) == 0 and empty.lo.shape == (0, 3)
    assert not io.boxes_to_mask(empty, like).array.any()
    with pytest.raises(ValueError):
        Boxes(lo=[[1, 1, 1]], hi=[[0, 0, 0]], classes=[1], scores=[1.0])


# ----- histogram matching -------------------------------------------------------------------


def test_histogram_match_equals_simpleitk() -> None:
    rng = np.random.default_rng(0)
    a = rng.gamma(2.0, 50.0, (10, 24, 20)).astype(np.float32)
    r = (rng.normal(300.0, 40.0, (12, 20, 22)) ** 1.1).astype(np.float32)
    x = Volume(a, (1.0, 1.2, 3.0), (1, 2, 3), _oblique_direction(), modality="MR")
    ref = Volume(np.nan_to_num(r), (0.9, 0.9, 2.0), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1), modality="MR")
    out = pre.histogram_match(x, ref, levels=128, points=9)
    f = sitk.HistogramMatchingImageFilter()
    f.SetNumberOfHistogramLevels(128)
    f.SetNumberOfMatchPoints(9)
    f.ThresholdAtMeanIntensityOn()
    expected = sitk.GetArrayFromImage(f.Execute(x.to_sitk(), ref.to_sitk()))
    assert out.array.dtype == np.float32 and np.array_equal(out.array, expected)
    _same_geometry(out, x)
    assert not np.array_equal(out.array, a)
    assert pre.OPERATORS["histogram_match"] is pre.histogram_match


# ----- lung mask ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chest() -> Volume:
    shared_data()
    return io.dicom_to_image(io.dicom_series(CHEST))


def test_lung_mask_on_a_chest_ct(chest: Volume) -> None:
    m = pre.lung_mask(chest)
    assert m.kind == "labels" and m.array.dtype == np.uint8 and m.array.shape == chest.array.shape
    _same_geometry(m, chest)
    lungs = m.array > 0
    volume_l = lungs.sum() * np.prod(chest.spacing) / 1e6
    assert 1.0 < volume_l < 8.0
    assert not (lungs & (pre.body_mask(chest).array == 0)).any()
    assert chest.array[lungs].mean() < -600
    # both lungs: mask voxels on each side of the body's left-right middle
    cols = np.nonzero(lungs)[2]
    mid = chest.array.shape[2] / 2
    assert (cols < mid).sum() > 0.25 * lungs.sum() and (cols > mid).sum() > 0.25 * lungs.sum()
    # the trachea (air inside the body near the left-right middle of the top slice) is left out
    axis, top_first = pre._superior_first(chest)
    index = 0 if top_first else chest.array.shape[axis] - 1
    body = np.take(pre.body_mask(chest).array > 0, index, axis=axis)
    top_air = (np.take(chest.array, index, axis=axis) < -320) & body
    centre = slice(int(mid * 0.9), int(mid * 1.1))
    assert top_air[:, centre].sum() > 100 and not np.take(lungs, index, axis=axis)[:, centre].any()
