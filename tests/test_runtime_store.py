"""Values written into a cache entry folder and read back: exact, pickle-free, and damage reads as StoreError."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medasl.runtime import store
from medasl.runtime.store import StoreError, load_value, save_value
from medasl.runtime.values import Annotations, Boxes, Case, DicomSeries, Pair, Volume
from tests.conftest import shared_data


def bits(x: float) -> bytes:
    return struct.pack("<d", x)


def same(a: object, b: object) -> bool:
    """Structural equality that also requires equal types and bit-equal floats (nan == nan)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        if math.isnan(a):  # NaN is stored as "nan": its sign bit and payload mean nothing
            return math.isnan(b)  # type: ignore[arg-type]
        return bits(a) == bits(b)  # type: ignore[arg-type]
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))  # type: ignore[arg-type]
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)  # type: ignore[index]
    return a == b


def roundtrip(value: object, tmp: Path, mmap: bool = True) -> object:
    save_value(value, tmp)
    return load_value(tmp, mmap=mmap)


def same_volume(a: Volume, b: Volume) -> None:
    assert a.array.dtype == b.array.dtype and a.array.shape == b.array.shape
    assert np.array_equal(a.array, b.array)
    for name in ("spacing", "origin", "direction"):
        assert type(getattr(b, name)) is tuple
        assert [bits(x) for x in getattr(a, name)] == [bits(x) for x in getattr(b, name)], name
    assert (a.kind, a.modality, a.source) == (b.kind, b.modality, b.source)


# ----- scalars and structures ----------------------------------------------------------

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
)
structures = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.lists(inner, max_size=4).map(tuple),
        st.dictionaries(st.text(max_size=8), inner, max_size=4),
    ),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=structures)
def test_nested_scalars_round_trip(value: object, tmp_path_factory: pytest.TempPathFactory) -> None:
    tmp = tmp_path_factory.mktemp("v")
    assert same(roundtrip(value, tmp), value)


def test_special_floats_and_int_float_distinct(tmp_path: Path) -> None:
    value = [1, 1.0, -0.0, 0.1, math.nan, math.inf, -math.inf, 5e-324, 1.7976931348623157e308, True, None, "$"]
    assert same(roundtrip(value, tmp_path), value)
    doc = json.loads((tmp_path / "value.json").read_text())
    assert doc["format"] == store.FORMAT == 2


def test_dict_with_tag_like_keys_is_not_confused(tmp_path: Path) -> None:
    value = {"$": "Volume", "items": [1, (2,)], "repr": "nan"}
    assert same(roundtrip(value, tmp_path), value)


# ----- arrays ------------------------------------------------------------------------

DTYPES = [np.bool_, np.uint8, np.int16, np.uint16, np.int32, np.int64, np.float32, np.float64]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mmap", [True, False])
def test_array_round_trip(dtype: type, mmap: bool, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    array = (rng.normal(0, 1000, (3, 4, 5))).astype(dtype)
    back = roundtrip(array, tmp_path, mmap=mmap)
    assert isinstance(back, np.ndarray)
    assert back.dtype == array.dtype and back.shape == array.shape and np.array_equal(back, array)
    assert back.flags.writeable is (not mmap)


def test_odd_arrays(tmp_path: Path) -> None:
    values = [np.zeros((0, 3)), np.array(3.5), np.arange(12).reshape(3, 4).T, np.arange(4, dtype=">i4"),
              np.array(["a", "bc"]), np.array([1 + 2j])]
    back = roundtrip(values, tmp_path)
    assert isinstance(back, list)
    for a, b in zip(values, back):
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)


def test_numpy_scalars(tmp_path: Path) -> None:
    values = (np.float32(0.1), np.float64(np.nan), np.float16(1.5), np.int64(-(2**62)), np.uint64(2**64 - 1),
              np.bool_(True), np.int8(-3), np.complex64(1 - 1j))
    back = roundtrip(values, tmp_path)
    assert isinstance(back, tuple)
    for a, b in zip(values, back):
        assert type(a) is type(b) and a.tobytes() == b.tobytes()


def test_mmap_arrays_are_read_only(tmp_path: Path) -> None:
    vol = Volume(np.ones((2, 3, 4), np.float32), (1, 1, 1), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    back = roundtrip(vol, tmp_path)
    assert isinstance(back, Volume) and not back.array.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        back.array[0, 0, 0] = 2
    writable = load_value(tmp_path, mmap=False)
    assert isinstance(writable, Volume) and writable.array.flags.writeable


# ----- value types ------------------------------------------------------------------


def make_volume(kind: str = "image", dtype: type = np.int16, channels: int = 0) -> Volume:
    shape = (4, 5, 6) if not channels else (5, 6, channels)
    spacing = (0.7421875, 0.7421875, 2.5) if not channels else (0.1, 1 / 3)
    origin = (-187.12890625, -163.3000030517578, 1e-17) if not channels else (0.0, -0.0)
    dim = len(spacing)
    direction = tuple(np.eye(dim).ravel() * math.cos(0.3)) if not channels else (1.0, 0.0, 0.0, -1.0)
    array = np.arange(int(np.prod(shape))).reshape(shape).astype(dtype)
    return Volume(array, spacing, origin, direction, kind=kind, modality="CT" if not channels else "RGB",
                  source="/data/x.nii.gz" if not channels else None)


@pytest.mark.parametrize("kind", ["image", "labels", "probs", "onehot", "instances"])
def test_volume(kind: str, tmp_path: Path) -> None:
    vol = make_volume(kind, np.float32 if kind in ("probs", "onehot") else np.uint16)
    back = roundtrip(vol, tmp_path)
    assert isinstance(back, Volume)
    same_volume(vol, back)


def test_rgb_volume(tmp_path: Path) -> None:
    vol = make_volume(dtype=np.uint8, channels=3)
    back = roundtrip(vol, tmp_path)
    assert isinstance(back, Volume) and back.channels == 3 and back.dim == 2
    same_volume(vol, back)


def test_pair_case_and_nested(tmp_path: Path) -> None:
    image, label = make_volume(), make_volume("labels", np.uint8)
    value = {"case": Case("s0001", Pair(image, label)), "pairs": [Pair(1, (2.5, None))], "path": Path("/a/b.nii")}
    back = roundtrip(value, tmp_path)
    assert isinstance(back, dict)
    case = back["case"]
    assert isinstance(case, Case) and case.id == "s0001" and isinstance(case.value, Pair)
    same_volume(image, case.value.input)
    same_volume(label, case.value.target)
    assert back["pairs"] == [Pair(1, (2.5, None))]
    assert back["path"] == Path("/a/b.nii") and isinstance(back["path"], Path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["value.json"]  # small arrays are inline


@pytest.mark.parametrize("n", [0, 3])
def test_boxes(n: int, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    lo = rng.normal(size=(n, 3))
    boxes = Boxes(lo, lo + 1.0, np.arange(1, n + 1), rng.random(n), source="seg.nii.gz")
    back = roundtrip(boxes, tmp_path)
    assert isinstance(back, Boxes) and len(back) == n and back.source == "seg.nii.gz"
    for name in ("lo", "hi", "classes", "scores"):
        a, b = getattr(boxes, name), getattr(back, name)
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)


def test_annotations(tmp_path: Path) -> None:
    """A table read by `csv_annotations` is cached like any step's value."""
    table = Annotations(("1.2.3", "1.2.3", "4.5"), np.array([[-62.6, -97.3, 212.0], [1.0, 2.0, 3.0], [0, 0, 0.5]]),
                        np.array([74.0, 5.5, 3.0]), np.array([1, 2, 1]), coords="voxel", source="a.csv",
                        lines=(2, 3, 5))
    back = roundtrip(table, tmp_path)
    assert isinstance(back, Annotations)
    assert (back.ids, back.coords, back.source, back.lines) == (table.ids, "voxel", "a.csv", (2, 3, 5))
    for name in ("centres", "diameters", "classes"):
        a, b = getattr(table, name), getattr(back, name)
        assert a.dtype == b.dtype and np.array_equal(a, b)
    assert list(back.rows("1.2.3")) == [0, 1]


def test_dicom_series(tmp_path: Path) -> None:
    series = DicomSeries("1.2.840.1", ("a/1.dcm", "a/2.dcm"), "CT chest", "CT", "a")
    assert roundtrip(series, tmp_path) == series


def test_several_names_in_one_folder(tmp_path: Path) -> None:
    save_value(np.arange(3), tmp_path, "image")
    save_value((np.ones(2),), tmp_path, "label")
    assert np.array_equal(load_value(tmp_path, "image"), np.arange(3))  # type: ignore[arg-type]
    label = load_value(tmp_path, "label")
    assert isinstance(label, tuple) and np.array_equal(label[0], np.ones(2))


# ----- refusals -----------------------------------------------------------------------


class Thing:
    pass


@pytest.mark.parametrize("value, pattern", [
    (Thing(), "Thing"),
    ({"a": [1, {2}]}, "set"),
    ({1: "x"}, "key 1"),
    (np.array([object()], dtype=object), "object"),
    (np.float64, "type"),
    (b"bytes", "bytes"),
])
def test_unknown_types_are_refused(value: object, pattern: str, tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=pattern):
        save_value(value, tmp_path)
    assert not list(tmp_path.iterdir()), "nothing is written when a value is refused"


def test_bad_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        save_value(1, tmp_path, "../x")


# ----- damage -------------------------------------------------------------------------


def saved_volume(tmp_path: Path) -> Path:
    save_value(make_volume(), tmp_path)
    return tmp_path


def test_missing_json(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no stored value"):
        load_value(tmp_path)


@pytest.mark.parametrize("text", ["{not json", "[]", '{"format": 3, "value": 1}', '{"format": 1}',
                                  '{"format": 1, "value": {"$": "Evil"}}',
                                  '{"format": 1, "value": {"$": "Volume", "kind": "image"}}',
                                  '{"format": 1, "value": {"$": "array", "index": -1, "dtype": "<f4", "shape": []}}',
                                  '{"format": 1, "value": {"$": "float", "repr": "1e400"}}',
                                  '{"format": 1, "value": {"$": "npscalar", "dtype": "|i1", "value": 300}}'])
def test_damaged_json(text: str, tmp_path: Path) -> None:
    (tmp_path / "value.json").write_text(text)
    with pytest.raises(StoreError):
        load_value(tmp_path)


def saved_format1(tmp_path: Path) -> Path:
    """A volume as format 1 wrote it (before issue 9): indented JSON and one .npy per array."""
    vol = make_volume()
    np.save(tmp_path / "value.0.npy", vol.array, allow_pickle=False)
    node = {"$": "Volume", "array": {"index": 0, "dtype": vol.array.dtype.str, "shape": list(vol.array.shape)},
            "spacing": list(vol.spacing), "origin": list(vol.origin), "direction": list(vol.direction),
            "kind": vol.kind, "modality": vol.modality, "source": vol.source}
    (tmp_path / "value.json").write_text(json.dumps({"format": 1, "value": node}, indent=1))
    return tmp_path


@pytest.mark.parametrize("mmap", [True, False])
def test_format_1_values_still_load(mmap: bool, tmp_path: Path) -> None:
    back = load_value(saved_format1(tmp_path), mmap=mmap)
    assert isinstance(back, Volume)
    same_volume(make_volume(), back)
    assert back.array.flags.writeable is (not mmap)


def test_missing_npy(tmp_path: Path) -> None:
    (saved_format1(tmp_path) / "value.0.npy").unlink()
    with pytest.raises(StoreError, match="missing array file"):
        load_value(tmp_path)


@pytest.mark.parametrize("mmap", [True, False])
def test_truncated_npy(mmap: bool, tmp_path: Path) -> None:
    path = saved_format1(tmp_path) / "value.0.npy"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(StoreError):
        load_value(tmp_path, mmap=mmap)


def test_npy_of_wrong_shape(tmp_path: Path) -> None:
    np.save(saved_format1(tmp_path) / "value.0.npy", np.zeros(3, np.int16))
    with pytest.raises(StoreError, match="expected"):
        load_value(tmp_path)


def test_garbage_npy(tmp_path: Path) -> None:
    (saved_format1(tmp_path) / "value.0.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(StoreError):
        load_value(tmp_path)


def big_pair() -> Pair:
    """An image and its labels too large to be inline: both go to value.bin."""
    image = np.arange(40 * 30 * 20, dtype=np.float32).reshape(20, 30, 40)
    labels = (image % 3 == 0).astype(np.uint8)
    geometry = ((1.0, 1.0, 2.5), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    return Pair(Volume(image, *geometry), Volume(labels, *geometry, kind="labels"))


@pytest.mark.parametrize("mmap", [True, False])
def test_large_arrays_share_one_data_file(mmap: bool, tmp_path: Path) -> None:
    value = {"pair": big_pair(), "small": np.arange(5), "transposed": np.arange(6000.0).reshape(60, 100).T,
             "big_endian": np.arange(5000, dtype=">i4")}
    save_value(value, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["value.bin", "value.json"]
    back = load_value(tmp_path, mmap=mmap)
    assert isinstance(back, dict) and isinstance(back["pair"], Pair)
    for got, want in [(back["pair"].input.array, value["pair"].input.array),
                      (back["pair"].target.array, value["pair"].target.array),
                      (back["small"], value["small"]), (back["transposed"], value["transposed"]),
                      (back["big_endian"], value["big_endian"])]:
        assert got.dtype == want.dtype and got.shape == want.shape and np.array_equal(got, want)
        assert got.flags.writeable is (not mmap)
    assert back["transposed"].flags.f_contiguous  # the layout is kept, as np.save kept it
    if mmap:
        assert isinstance(back["pair"].input.array, np.memmap)
    doc = json.loads((tmp_path / "value.json").read_text())
    offsets = [doc["value"]["items"]["pair"]["input"]["array"]["offset"],
               doc["value"]["items"]["pair"]["target"]["array"]["offset"]]
    assert all(o % store.ALIGN == 0 for o in offsets)


@pytest.mark.parametrize("mmap", [True, False])
def test_truncated_or_missing_data_file(mmap: bool, tmp_path: Path) -> None:
    save_value(big_pair(), tmp_path)
    blob = tmp_path / "value.bin"
    blob.write_bytes(blob.read_bytes()[:-10])
    with pytest.raises(StoreError, match="damaged array file"):
        load_value(tmp_path, mmap=mmap)
    blob.unlink()
    with pytest.raises(StoreError, match="missing array file"):
        load_value(tmp_path, mmap=mmap)


@pytest.mark.parametrize("data", ["not base64!", "AAAA"])
def test_damaged_inline_array(data: str, tmp_path: Path) -> None:
    save_value(np.arange(5, dtype=np.int16), tmp_path)
    doc = json.loads((tmp_path / "value.json").read_text())
    doc["value"]["data"] = data
    (tmp_path / "value.json").write_text(json.dumps(doc))
    with pytest.raises(StoreError):
        load_value(tmp_path)


def test_structured_arrays_keep_their_fields(tmp_path: Path) -> None:
    array = np.array([(1, 2.5), (3, -1.0)], dtype=[("id", "<i4"), ("score", "<f8")])
    back = roundtrip(array, tmp_path)
    assert isinstance(back, np.ndarray) and back.dtype == array.dtype and np.array_equal(back, array)


def test_no_pickle_in_module() -> None:
    source = Path(store.__file__).read_text(encoding="utf-8")
    assert "import pickle" not in source and "from pickle" not in source
    assert "allow_pickle=True" not in source


# ----- a real volume ------------------------------------------------------------------


def test_real_nifti_round_trip(tmp_path: Path) -> None:
    from medasl.ops import io

    path = shared_data() / "ct_abdomen_totalsegmentator" / "example_ct_sm.nii.gz"
    if not path.exists():
        pytest.skip(f"{path} is not in the shared data")
    vol = io.nifti(path=path)
    back = roundtrip(vol, tmp_path)
    assert isinstance(back, Volume)
    same_volume(vol, back)
    assert back.same_grid(vol, tol=0.0)
