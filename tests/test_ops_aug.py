"""std.aug (medasl/ops/aug.py): augmentations are bit-identical for the same seed and
differ for another, replay from the recorded parameters (through JSON) gives the same
bits, spatial operators keep the grid and move image and label together, label maps
never gain new values, and patches are placed as asked. Synthetic volumes throughout,
plus the small TotalSegmentator CT and its label from ../shared/data when present."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813 (the alias SimpleITK documents)

from medasl.ops import aug
from medasl.runtime.values import Pair, Volume
from tests.conftest import SHARED_DATA, shared_data

DATA = SHARED_DATA / "ct_abdomen_totalsegmentator"

THRESHOLD = 50.0
# A pair's label is the image thresholded at THRESHOLD. After the same transform, the
# resampled label (nearest) and the thresholded resampled image (linear) may differ only
# within 2 voxels of the label's boundary, and on at most this fraction of all voxels.
PAIR_TOLERANCE = 0.02

# Every operator with arguments that make it act (p=1), on a 3-D volume.
SPATIAL: dict[str, dict[str, Any]] = {
    "flip": {"axis": 0, "p": 1.0},
    "rotate": {"angle": 15.0, "p": 1.0},
    "affine": {"scale": 0.15, "shear": 8.0, "translate": 4.0, "p": 1.0},
    "elastic": {"sigma": 6.0, "magnitude": 4.0, "p": 1.0},
    "random_rescale": {"scale": (0.8, 1.25), "p": 1.0},
}
CROPS: dict[str, dict[str, Any]] = {
    "random_crop": {"size": (16, 12, 8)},
    "patches": {"size": (16, 12, 8), "per_case": 3, "positive": 0.5},
}
INTENSITY: dict[str, dict[str, Any]] = {
    "gaussian_noise": {"std": 2.0, "p": 1.0},
    "gaussian_blur": {"sigma": 3.0, "p": 1.0},
    "gamma": {"log_gamma": 0.3, "p": 1.0},
    "contrast": {"factor": 0.25, "p": 1.0},
    "brightness": {"factor": 0.25, "p": 1.0},
    "bias_field": {"coefficients": 0.5, "order": 3, "p": 1.0},
}
# Larger transforms for the pair check, so that a label left untransformed would fail it.
LARGE: dict[str, dict[str, Any]] = {
    "rotate": {"angle": 45.0}, "elastic": {"sigma": 10.0, "magnitude": 15.0}, "random_rescale": {"scale": (1.3, 1.5)},
    "affine": {"translate": 8.0},
}
ALL = {**SPATIAL, **CROPS, **INTENSITY}
WITH_P = [name for name, kw in ALL.items() if "p" in kw] + ["stain_jitter"]


# ----- data ---------------------------------------------------------------------------------


def _blob(shape_zyx: tuple[int, ...] = (20, 30, 40)) -> np.ndarray:
    """A smooth off-centre blob from 0 to 100 (so that a threshold gives a clean label)."""
    grids = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape_zyx], indexing="ij")
    centres = [0.35 * n for n in shape_zyx]
    widths = [0.3 * n for n in shape_zyx]
    r2 = sum(((g - c) / w) ** 2 for g, c, w in zip(grids, centres, widths))
    return 100.0 * np.exp(-r2)


def _image(dtype: type = np.float32) -> Volume:
    direction = (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)  # not the identity, on purpose
    return Volume(_blob().astype(dtype), (1.5, 1.0, 2.0), (10.0, -20.0, 5.0), direction, "image", "CT")


def _pair() -> Pair[Volume, Volume]:
    img = _image()
    return Pair(img, img.with_array((img.array > THRESHOLD).astype(np.uint8), kind="labels"))


def _multilabel_pair() -> Pair[Volume, Volume]:
    img = _image()
    lab = np.digitize(img.array, [10.0, 40.0, 80.0]).astype(np.int16) * 3  # labels 0, 3, 6, 9
    return Pair(img, img.with_array(lab, kind="labels"))


def _rgb() -> Volume:
    rng = np.random.default_rng(5)
    base = np.array([180, 110, 190], dtype=np.float64)  # an H&E pink-purple
    rgb = np.clip(base + rng.normal(0, 25, size=(24, 32, 3)), 0, 255).astype(np.uint8)
    return Volume(rgb, (0.5, 0.5), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0), "image", "Path")


def _real_pair() -> Pair[Volume, Volume]:
    shared_data()
    ct = Volume.from_sitk(sitk.ReadImage(str(DATA / "example_ct_sm.nii.gz")), "image", "CT")
    seg = Volume.from_sitk(sitk.ReadImage(str(DATA / "example_seg.nii.gz")), "labels", "Any")
    return Pair(ct, seg)


def _input_for(name: str) -> Any:
    return _rgb() if name == "stain_jitter" else _pair()


def _kwargs(name: str) -> dict[str, Any]:
    return {"sigma": 0.1, "p": 1.0} if name == "stain_jitter" else ALL[name]


def _run(name: str, x: Any, seed: int, **override: Any) -> tuple[Any, dict[str, Any]]:
    kw = {**_kwargs(name), **override}
    return aug.OPERATORS[name](x, **kw, rng=np.random.default_rng(seed))


def _arrays(result: Any) -> list[np.ndarray]:
    """Every array of a result (a Volume, a Pair, or a list of them), in order."""
    if isinstance(result, list):
        return [a for r in result for a in _arrays(r)]
    if isinstance(result, Pair):
        return [result.input.array, result.target.array]
    return [result.array]


def _equal(a: Any, b: Any) -> bool:
    xs, ys = _arrays(a), _arrays(b)
    return len(xs) == len(ys) and all(x.dtype == y.dtype and np.array_equal(x, y) for x, y in zip(xs, ys))


# ----- reproducibility --------------------------------------------------------------------------


OPS = [*ALL, "stain_jitter"]


def test_every_operator_is_tested() -> None:
    # motion: tests/test_ops_motion.py; box_patches: tests/test_ops_box_patches.py
    assert set(aug.OPERATORS) == set(OPS) | {"motion", "box_patches"}


@pytest.mark.parametrize("name", OPS)
def test_same_seed_is_bit_identical(name: str) -> None:
    x = _input_for(name)
    r1, d1 = _run(name, x, 7)
    r2, d2 = _run(name, x, 7)
    assert _equal(r1, r2)
    assert d1 == d2


@pytest.mark.parametrize("name", OPS)
def test_another_seed_differs(name: str) -> None:
    x = _input_for(name)
    # flip with p=1 and a given axis has nothing random left: its draw is whether to flip
    override = {"p": 0.5} if name == "flip" else {}
    r1, d1 = _run(name, x, 7, **override)
    others = [_run(name, x, seed, **override) for seed in (8, 9, 10)]
    assert any(d != d1 for _, d in others)
    assert any(not _equal(r, r1) for r, _ in others)
    if name != "flip":
        assert d1 != others[0][1] and not _equal(r1, others[0][0])


@pytest.mark.parametrize("name", OPS)
def test_replay_from_json_is_bit_identical(name: str) -> None:
    x = _input_for(name)
    result, drawn = _run(name, x, 11)
    recorded = json.loads(json.dumps(drawn))  # what a run log holds
    assert recorded == drawn
    assert _equal(aug.replay(name, x, recorded), result)


@pytest.mark.parametrize("name", WITH_P)
def test_p0_returns_the_input_unchanged(name: str) -> None:
    x = _input_for(name)
    result, drawn = _run(name, x, 3, p=0.0)
    assert drawn == {"applied": False}
    assert result is x
    assert aug.replay(name, x, drawn) is x


def test_p_between_0_and_1_is_recorded() -> None:
    x = _pair()
    applied = [aug.brightness(x, p=0.5, rng=np.random.default_rng(s))[1]["applied"] for s in range(40)]
    assert True in applied and False in applied


def test_replay_of_an_unknown_operator() -> None:
    with pytest.raises(KeyError):
        aug.replay("no_such_op", _pair(), {"applied": True})


# ----- spatial: grid, pairs, labels ---------------------------------------------------------------


@pytest.mark.parametrize("name", list(SPATIAL))
def test_spatial_keeps_the_grid(name: str) -> None:
    x = _pair()
    result, _ = _run(name, x, 1)
    for before, after in ((x.input, result.input), (x.target, result.target)):
        assert after.array.shape == before.array.shape
        assert after.spacing == before.spacing and after.origin == before.origin
        assert after.direction == before.direction
        assert after.kind == before.kind and after.modality == before.modality


def _band(mask: np.ndarray, width: int = 2) -> np.ndarray:
    """Voxels within `width` voxels (in every axis) of the boundary of `mask`."""
    padded = np.pad(mask, width, mode="edge")
    grown, shrunk = padded.copy(), padded.copy()
    for offsets in np.ndindex(*(2 * width + 1,) * mask.ndim):
        view = padded[tuple(slice(o, o + n) for o, n in zip(offsets, mask.shape))]
        inner = tuple(slice(width, width + n) for n in mask.shape)
        grown[inner] |= view
        shrunk[inner] &= view
    inner = tuple(slice(width, width + n) for n in mask.shape)
    return grown[inner] & ~shrunk[inner]


@pytest.mark.parametrize("name", list(SPATIAL))
def test_pair_gets_the_same_transform(name: str) -> None:
    x = _pair()
    result, _ = _run(name, x, 2, **LARGE.get(name, {}))
    label = result.target.array == 1
    disagree = (result.input.array > THRESHOLD) != label
    assert disagree.mean() <= PAIR_TOLERANCE, f"{name}: {disagree.mean():.4f} of voxels disagree"
    # and (nearest vs linear) next to the boundary: at most 0.1% of voxels further away
    band = _band(label)
    away = int((disagree & ~band).sum())
    assert away <= 0.001 * label.size
    # The structure did move (otherwise the checks above prove nothing): the label left
    # as it was disagrees with the transformed image away from the boundary far more.
    unmoved = (result.input.array > THRESHOLD) != (x.target.array == 1)
    assert (unmoved & ~band).sum() > 2 * away + 50


@pytest.mark.parametrize("name", list(SPATIAL))
def test_pair_gets_the_same_transform_on_real_ct(name: str) -> None:
    ct = _real_pair().input
    label = ct.with_array((ct.array > 150).astype(np.uint8), kind="labels")  # bone
    result, _ = _run(name, Pair(ct, label), 4)
    mismatch = np.mean((result.input.array > 150) != (result.target.array == 1))
    assert mismatch <= PAIR_TOLERANCE, f"{name}: {mismatch:.4f} of voxels disagree"


@pytest.mark.parametrize("name", [*SPATIAL, *CROPS])
@pytest.mark.parametrize("make", [_multilabel_pair, _real_pair], ids=["synthetic", "totalsegmentator"])
def test_labels_never_gain_values(name: str, make: Any) -> None:
    x = make()
    values = set(np.unique(x.target.array).tolist())
    for seed in (0, 1):
        result, _ = _run(name, x, seed)
        for r in result if isinstance(result, list) else [result]:
            assert r.target.array.dtype == x.target.array.dtype
            assert set(np.unique(r.target.array).tolist()) <= values
            assert r.target.kind == "labels"


def test_onehot_is_resampled_nearest() -> None:
    img = _image()
    lab = (img.array > THRESHOLD).astype(np.uint8)
    onehot = img.with_array(np.stack([1 - lab, lab], axis=-1), kind="onehot")
    result, _ = aug.rotate(Pair(img, onehot), angle=20.0, p=1.0, rng=np.random.default_rng(0))
    assert result.target.array.dtype == np.uint8
    assert set(np.unique(result.target.array).tolist()) <= {0, 1}
    assert result.target.array.shape == onehot.array.shape


def test_interpolated_images_become_float() -> None:
    img = _image(np.int16)
    result, _ = aug.rotate(img, angle=10.0, p=1.0, rng=np.random.default_rng(0))
    assert result.array.dtype == np.float32
    # outside the input the image's minimum is filled in, never a value below it
    assert result.array.min() >= img.array.min()


def test_flip_is_an_exact_mirror() -> None:
    x = _pair()
    for axis in range(3):
        result, drawn = aug.flip(x, axis=axis, p=1.0, rng=np.random.default_rng(0))
        assert drawn == {"applied": True, "axis": axis}
        assert np.array_equal(result.input.array, np.flip(x.input.array, axis=2 - axis))
        assert np.array_equal(result.target.array, np.flip(x.target.array, axis=2 - axis))
        twice, _ = aug.flip(result, axis=axis, p=1.0, rng=np.random.default_rng(0))
        assert np.array_equal(twice.input.array, x.input.array)


def test_rotate_2d_draws_one_angle() -> None:
    img = Volume(_blob((30, 40)).astype(np.float32), (1.0, 1.0), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0))
    result, drawn = aug.rotate(img, angle=10.0, p=1.0, rng=np.random.default_rng(0))
    assert len(drawn["angles"]) == 1 and abs(drawn["angles"][0]) <= 10.0
    assert result.array.shape == img.array.shape


def test_drawn_parameters_stay_in_their_ranges() -> None:
    x = _pair()
    for seed in range(20):
        rng = np.random.default_rng(seed)
        _, d = aug.rotate(x, angle=5.0, p=1.0, rng=rng)
        assert all(-5.0 <= a <= 5.0 for a in d["angles"]) and len(d["angles"]) == 3
        _, d = aug.affine(x, scale=0.1, shear=3.0, translate=2.0, p=1.0, rng=rng)
        assert all(0.9 <= s <= 1.1 for s in d["scale"]) and all(abs(a) <= 3.0 for a in d["shear"])
        assert all(abs(t) <= 2.0 for t in d["translate"])
        _, d = aug.random_rescale(x, scale=(0.9, 1.1), p=1.0, rng=rng)
        assert 0.9 <= d["factor"] <= 1.1
        _, d = aug.gaussian_blur(x, sigma=2.0, p=1.0, rng=rng)
        assert 0.0 <= d["sigma"] <= 2.0
        _, d = aug.gamma(x, log_gamma=0.3, p=1.0, rng=rng)
        assert np.exp(-0.3) <= d["gamma"] <= np.exp(0.3)


# ----- crops and patches ------------------------------------------------------------------------


def _world(vol: Volume, index: tuple[int, ...]) -> np.ndarray:
    return np.array(vol.to_sitk().TransformIndexToPhysicalPoint(index))


def test_random_crop_is_an_exact_sub_grid() -> None:
    x = _pair()
    result, drawn = aug.random_crop(x, size=(16, 12, 8), rng=np.random.default_rng(0))
    (sx, sy, sz), (nx, ny, nz) = drawn["start"], drawn["size"]
    assert result.input.shape == (16, 12, 8) and result.target.shape == (16, 12, 8)
    assert np.array_equal(result.input.array, x.input.array[sz:sz + nz, sy:sy + ny, sx:sx + nx])
    assert np.array_equal(result.target.array, x.target.array[sz:sz + nz, sy:sy + ny, sx:sx + nx])
    assert np.allclose(_world(result.input, (0, 0, 0)), _world(x.input, (sx, sy, sz)))
    assert result.input.spacing == x.input.spacing and result.input.direction == x.input.direction


def test_random_crop_pads_a_small_case() -> None:
    img = _image(np.int16)
    result, drawn = aug.random_crop(img, size=(50, 10, 26), rng=np.random.default_rng(0))
    assert result.shape == (50, 10, 26)
    assert drawn["start"][0] == -5 and drawn["start"][2] == -3
    assert result.array[:, :, :5].min() == img.array.min()  # padded with the image's minimum
    assert np.allclose(_world(result, (5, 0, 3)), _world(img, (0, drawn["start"][1], 0)))


@pytest.mark.parametrize("positive", [1.0, 0.0])
def test_patch_centres_follow_positive(positive: float) -> None:
    x = _multilabel_pair()
    size = (9, 8, 5)
    result, drawn = aug.patches(x, size=size, per_case=12, positive=positive, rng=np.random.default_rng(3))
    assert len(result) == 12 and len(drawn["patches"]) == 12
    for patch, info in zip(result, drawn["patches"]):
        assert patch.input.shape == size and patch.target.shape == size
        cx, cy, cz = info["centre"]
        in_fg = x.target.array[cz, cy, cx] != 0
        assert in_fg == (positive == 1.0)
        # the centre voxel of the patch is that voxel
        assert patch.target.array[size[2] // 2, size[1] // 2, size[0] // 2] == x.target.array[cz, cy, cx]
        assert np.allclose(_world(patch.input, tuple(s // 2 for s in size)), _world(x.input, (cx, cy, cz)))


def test_patches_on_real_labels_are_positive() -> None:
    x = _real_pair()
    result, drawn = aug.patches(x, size=(32, 32, 16), per_case=6, positive=1.0, rng=np.random.default_rng(0))
    assert all(p.input.shape == (32, 32, 16) for p in result)
    assert all(p.target.array[8, 16, 16] != 0 for p in result)


def test_patches_of_a_single_volume_are_uniform() -> None:
    img = _image()
    result, drawn = aug.patches(img, size=(4, 4, 4), per_case=5, positive=1.0, rng=np.random.default_rng(0))
    assert len(result) == 5 and all(isinstance(r, Volume) and r.shape == (4, 4, 4) for r in result)


def test_crops_refuse_a_pair_on_different_grids() -> None:
    from medasl.runtime.errors import DataError

    img = _image()
    moved = Volume(img.array > THRESHOLD, img.spacing, (0.0, 0.0, 0.0), img.direction, "labels")
    with pytest.raises(DataError) as err:
        aug.random_crop(Pair(img, moved), size=(4, 4, 4), rng=np.random.default_rng(0))
    assert err.value.code == "E1007"


# ----- intensity ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(INTENSITY))
def test_intensity_changes_the_image_only(name: str) -> None:
    x = _pair()
    result, _ = _run(name, x, 5)
    assert result.target is x.target
    assert not np.array_equal(result.input.array, x.input.array)
    assert result.input.array.dtype == np.float32
    assert result.input.same_grid(x.input)


def test_contrast_and_gamma_keep_the_range() -> None:
    x = _image()
    lo, hi = x.array.min(), x.array.max()
    for op in (aug.contrast, aug.gamma):
        result, _ = op(x, p=1.0, rng=np.random.default_rng(0))
        assert result.array.min() >= lo - 1e-4 and result.array.max() <= hi + 1e-4


def test_bias_field_is_smooth_and_positive() -> None:
    x = _image().with_array(np.ones((20, 30, 40), np.float32))
    result, drawn = aug.bias_field(x, coefficients=0.5, order=3, p=1.0, rng=np.random.default_rng(0))
    assert len(drawn["coefficients"]) == 20  # monomials of degree <= 3 in 3 variables
    field = result.array
    assert field.min() > 0
    assert np.abs(np.diff(field, axis=2)).max() < 0.2 * field.max()


def test_stain_jitter_identity_and_dtype() -> None:
    x = _rgb()
    same = aug.replay("stain_jitter", x, {"applied": True, "scale": [1.0] * 3, "shift": [0.0] * 3})
    assert np.array_equal(same.array, x.array)
    result, _ = aug.stain_jitter(x, sigma=0.05, p=1.0, rng=np.random.default_rng(0))
    assert result.array.dtype == np.uint8 and result.array.shape == x.array.shape


def test_real_ct_noise_is_float_and_reproducible() -> None:
    x = _real_pair()
    r1, d1 = aug.gaussian_noise(x, std=10.0, p=1.0, rng=np.random.default_rng(0))
    assert r1.input.array.dtype == np.float32 and r1.target is x.target
    assert np.array_equal(aug.replay("gaussian_noise", x, d1).input.array, r1.input.array)
