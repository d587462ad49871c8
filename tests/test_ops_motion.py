"""std.aug `motion` (medasl/ops/aug.py): the TorchIO RandomMotion algorithm with NumPy
FFTs and SimpleITK resampling keeps the module's conventions: bit-identical for a seed,
different for another, replay through JSON gives the same bits, p=0 returns the input,
a pair's target is untouched, the grid is kept, and without motion nothing changes."""

from __future__ import annotations

import json

import pytest

np = pytest.importorskip("numpy", reason="the runtime needs numpy (pip install -e '.[run]')")
pytest.importorskip("SimpleITK", reason="the runtime needs SimpleITK (pip install -e '.[run]')")

from medasl.ops import aug  # noqa: E402 (after the skips, so a front-end-only install skips cleanly)
from medasl.runtime.values import Pair, Volume  # noqa: E402

DIRECTION = (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)  # not the identity, on purpose


def _head(dtype: type = np.float32) -> Volume:
    """A bright ellipsoid with an inner structure on a dark background, like a head MR."""
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in (16, 24, 28)], indexing="ij")
    r2 = (x / 0.7) ** 2 + (y / 0.8) ** 2 + (z / 0.75) ** 2
    array = 200.0 * (r2 <= 1.0) + 150.0 * (((x - 0.2) / 0.2) ** 2 + (y / 0.3) ** 2 + (z / 0.3) ** 2 <= 1.0)
    return Volume(array.astype(dtype), (1.2, 1.0, 2.0), (10.0, -20.0, 5.0), DIRECTION, "image", "MR")


def _pair() -> Pair[Volume, Volume]:
    img = _head()
    return Pair(img, img.with_array((img.array > 100).astype(np.uint8), kind="labels"))


def _run(x: object, seed: int, **kw: float) -> tuple[object, dict]:
    args = {"degrees": 10.0, "translation": 10.0, "p": 1.0, **kw}
    return aug.motion(x, **args, rng=np.random.default_rng(seed))


def test_registered_and_replayable() -> None:
    assert aug.OPERATORS["motion"] is aug.motion


def test_same_seed_is_bit_identical_and_another_differs() -> None:
    x = _head()
    r1, d1 = _run(x, 3)
    r2, d2 = _run(x, 3)
    r3, d3 = _run(x, 4)
    assert d1 == d2 and np.array_equal(r1.array, r2.array)
    assert d1 != d3 and not np.array_equal(r1.array, r3.array)
    assert d1["applied"] is True and len(d1["degrees"]) == len(d1["translation"]) == len(d1["times"]) == 2
    assert all(abs(a) <= 10.0 for row in d1["degrees"] for a in row)
    assert all(abs(t) <= 10.0 for row in d1["translation"] for t in row)
    assert d1["times"] == sorted(d1["times"]) and all(0 < t < 1 for t in d1["times"])


def test_replay_through_json_is_bit_identical() -> None:
    x = _pair()
    result, drawn = _run(x, 11)
    again = aug.replay("motion", x, json.loads(json.dumps(drawn)))
    assert np.array_equal(again.input.array, result.input.array) and again.input.array.dtype == result.input.array.dtype


def test_p_zero_returns_the_input() -> None:
    x = _head()
    result, drawn = _run(x, 1, p=0.0)
    assert result is x and drawn == {"applied": False}


def test_pair_target_untouched_and_grid_kept() -> None:
    x = _pair()
    result, _ = _run(x, 5)
    assert result.target is x.target
    out = result.input
    assert out.same_grid(x.input) and out.array.shape == x.input.array.shape
    assert (out.spacing, out.origin, out.direction, out.modality) == (x.input.spacing, x.input.origin,
                                                                        x.input.direction, "MR")
    assert out.array.dtype == np.float32 and np.all(np.isfinite(out.array))
    # a real artefact, but the image stays recognisable: the still image fills the k-space centre
    diff = np.abs(out.array - x.input.array)
    assert diff.mean() > 1.0
    assert np.corrcoef(out.array.ravel(), x.input.array.ravel())[0, 1] > 0.7


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16])
def test_no_motion_changes_nothing(dtype: type) -> None:
    x = _head(dtype)
    result, drawn = _run(x, 2, degrees=0.0, translation=0.0)
    assert drawn["applied"] is True
    assert result.array.dtype == (np.float64 if dtype == np.float64 else np.float32)
    assert np.allclose(result.array, x.array.astype(np.float64), atol=1e-3)


def test_negative_values_keep_their_sign_without_motion() -> None:
    x = _head()
    z = x.with_array((x.array - x.array.mean()) / x.array.std())  # a z-scored image
    result, _ = _run(z, 2, degrees=0.0, translation=0.0)
    assert np.allclose(result.array, z.array, atol=1e-5)


def test_larger_motion_gives_a_larger_artefact() -> None:
    x = _head()
    small, _ = _run(x, 9, degrees=1.0, translation=1.0)
    large, _ = _run(x, 9, degrees=15.0, translation=15.0)
    error = [float(np.abs(r.array - x.array).mean()) for r in (small, large)]
    assert error[0] < error[1]


def test_refuses_2d() -> None:
    flat = Volume(np.zeros((8, 8), np.float32), (1.0, 1.0), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="3-D"):
        _run(flat, 0)
