"""std.aug `box_patches` (medasl/ops/aug.py): cubes cut around the boxes of a scan become
(image, class) cases: positives centred on a box (within `jitter`) with its class,
negatives centred outside every box with class 0, on any grid orientation; the draw is
reproducible and replays bit-identically. The real chest CT checks that positive cubes
hold the annotated tumour and negative ones do not."""

from __future__ import annotations

import json

import pytest

np = pytest.importorskip("numpy", reason="the runtime needs numpy (pip install -e '.[run]')")
pytest.importorskip("SimpleITK", reason="the runtime needs SimpleITK (pip install -e '.[run]')")

from medasl.ops import aug, io  # noqa: E402 (after the skips, so a front-end-only install skips cleanly)
from medasl.runtime.values import Boxes, Pair, Volume  # noqa: E402
from tests.conftest import SHARED_DATA, shared_data  # noqa: E402

LUNG = SHARED_DATA / "lung_ct_tumor_lungpetctdx"
# an oblique grid: axes swapped and one reversed, anisotropic voxels, an offset origin
DIRECTION = (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)
SPACING = (1.5, 1.0, 2.0)
ORIGIN = (12.0, -30.0, 5.0)


def _scan() -> Volume:
    array = np.arange(20 * 30 * 40, dtype=np.float32).reshape(20, 30, 40)  # every voxel tells where it is
    return Volume(array, SPACING, ORIGIN, DIRECTION, "image", "CT")


def _world(vol: Volume, index_xyz: np.ndarray) -> np.ndarray:
    return np.array(vol.origin) + io._index_matrix(vol) @ index_xyz


def _boxes(vol: Volume) -> Boxes:
    """Two boxes around chosen voxel centres, classes 1 and 2."""
    centres = [_world(vol, np.array(c, dtype=float)) for c in ((10, 8, 6), (30, 20, 12))]
    lo = np.array([c - 3.0 for c in centres])
    return Boxes(lo, lo + 6.0, np.array([1, 2]), np.ones(2))


def _patch_centre(patch: Volume, size: tuple[int, int, int]) -> np.ndarray:
    """The world position of a patch's centre voxel `size // 2`."""
    return _world(patch, np.array([s // 2 for s in size], dtype=float))


def test_positives_are_centred_on_their_box_with_its_class() -> None:
    vol = _scan()
    boxes = _boxes(vol)
    size = (8, 6, 4)
    cubes, drawn = aug.box_patches(Pair(vol, boxes), size=size, per_case=10, negative=0.0, jitter=1,
                                   rng=np.random.default_rng(4))
    assert len(cubes) == 10 and {c.target for c in cubes} == {1, 2}
    centres = (boxes.lo + boxes.hi) / 2
    for cube in cubes:
        assert isinstance(cube.input, Volume) and cube.input.shape == size
        assert cube.input.spacing == vol.spacing and cube.input.direction == vol.direction
        where = _patch_centre(cube.input, size)
        # within one voxel per axis (the jitter) of the centre of a box of the cube's class
        assert np.all(np.abs(where - centres[cube.target - 1]) <= np.array([1.0, 1.5, 2.0]) + 1e-9), where
    # the cube holds the voxels of the input at its position: no resampling
    patch = drawn["patches"][0]
    x, y, z = patch["start"]
    assert cubes[0].input.array[0, 0, 0] == vol.array[z, y, x]


def test_negatives_lie_outside_every_box_and_are_class_0() -> None:
    vol = _scan()
    boxes = _boxes(vol)
    size = (4, 4, 4)
    cubes, _ = aug.box_patches(Pair(vol, boxes), size=size, per_case=40, negative=1.0, rng=np.random.default_rng(0))
    assert all(c.target == 0 for c in cubes)
    for cube in cubes:
        where = _patch_centre(cube.input, size)
        assert not np.any(np.all((boxes.lo <= where) & (where <= boxes.hi), axis=1))


def test_a_scan_without_boxes_gives_negatives() -> None:
    vol = _scan()
    empty = Boxes(np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0, np.int64), np.zeros(0))
    cubes, _ = aug.box_patches(Pair(vol, empty), size=(4, 4, 4), per_case=5, negative=0.0, rng=np.random.default_rng(1))
    assert [c.target for c in cubes] == [0] * 5


def test_negative_fraction_is_drawn() -> None:
    vol = _scan()
    cubes, _ = aug.box_patches(Pair(vol, _boxes(vol)), size=(4, 4, 4), per_case=200, negative=0.3,
                               rng=np.random.default_rng(2))
    share = sum(c.target == 0 for c in cubes) / len(cubes)
    assert 0.2 < share < 0.4


def test_same_seed_and_replay_are_bit_identical() -> None:
    vol = _scan()
    x = Pair(vol, _boxes(vol))
    first, drawn = aug.box_patches(x, size=(6, 6, 6), per_case=6, rng=np.random.default_rng(9))
    again, drawn_again = aug.box_patches(x, size=(6, 6, 6), per_case=6, rng=np.random.default_rng(9))
    replayed = aug.replay("box_patches", x, json.loads(json.dumps(drawn)))
    assert drawn == drawn_again
    for a, b, c in zip(first, again, replayed):
        assert a.target == b.target == c.target
        assert np.array_equal(a.input.array, b.input.array) and np.array_equal(a.input.array, c.input.array)
    other, drawn_other = aug.box_patches(x, size=(6, 6, 6), per_case=6, rng=np.random.default_rng(10))
    assert drawn_other != drawn


def test_bad_arguments() -> None:
    vol = _scan()
    with pytest.raises(ValueError, match="pairs"):
        aug.box_patches(vol, size=(4, 4, 4), rng=np.random.default_rng(0))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="per_case"):
        aug.box_patches(Pair(vol, _boxes(vol)), size=(4, 4, 4), per_case=0, rng=np.random.default_rng(0))


def test_cubes_of_the_real_chest_ct_hold_the_tumour() -> None:
    shared_data()
    (scan,) = io.dicom_folder(root=LUNG / "dicom")
    pair = io.boxed(images=scan.value, annotations=io.csv_annotations(path=LUNG / "annotations_luna16_style.csv"),
                    case=scan.id)
    reference = io.nifti(LUNG / "tumor_bbox_mask.nii.gz")  # the per-slice boxes, same grid
    both = Pair(pair.input, pair.target)
    size = (32, 32, 2)
    cubes, drawn = aug.box_patches(both, size=size, per_case=12, negative=0.5, rng=np.random.default_rng(5))
    tumour = {True: [], False: []}
    for cube, patch in zip(cubes, drawn["patches"]):
        x, y, z = (s + n // 2 for s, n in zip(patch["start"], size))
        tumour[cube.target == 1].append(bool(reference.array[z, y, x]))
    assert tumour[True] and tumour[False]
    assert all(tumour[True]) and not any(tumour[False])
