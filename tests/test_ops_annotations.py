"""std.io annotations (medasl/ops/io.py): `csv_annotations` reads the LUNA16 layout,
`boxed` turns rows into world-mm cubes on each case (voxel centres through the image
geometry), `write_boxes` writes one submission-style table that reads back, and a
malformed table is a DataError naming the file and line. The real LUNA16-style table
and its DICOM series come from ../shared/data."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

np = pytest.importorskip("numpy", reason="the runtime needs numpy (pip install -e '.[run]')")
sitk = pytest.importorskip("SimpleITK", reason="the runtime needs SimpleITK (pip install -e '.[run]')")

from medasl.ops import io  # noqa: E402 (after the skips, so a front-end-only install skips cleanly)
from medasl.runtime.errors import DataError  # noqa: E402
from medasl.runtime.values import Boxes, Case, Pair, Volume  # noqa: E402
from tests.conftest import SHARED_DATA, shared_data  # noqa: E402

LUNG = SHARED_DATA / "lung_ct_tumor_lungpetctdx"
UID = "1.3.6.1.4.1.14519.5.2.1.6655.2359.207154000096236603057216610983"


def _table(path: Path, rows: list[list[object]]) -> Path:
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    return path


def _volume() -> Volume:
    direction = (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)
    return Volume(np.zeros((10, 20, 30), np.int16), (0.5, 0.75, 2.0), (10.0, -20.0, 5.0), direction, "image", "CT")


def test_luna16_table_on_the_real_series() -> None:
    shared_data()
    ann = io.csv_annotations(path=LUNG / "annotations_luna16_style.csv", coords="world")
    assert ann.ids == (UID,) and ann.coords == "world" and ann.lines == (2,)
    assert np.allclose(ann.centres, [[-62.63, -97.32, 212.0]]) and np.allclose(ann.diameters, [74.02])
    assert ann.classes.tolist() == [1]
    (scan,) = io.dicom_folder(root=LUNG / "dicom")
    assert scan.id == UID
    pair = io.boxed(images=scan.value, annotations=ann, case=scan.id)
    assert isinstance(pair, Pair)
    image, boxes = pair.input, pair.target
    assert isinstance(image, Volume) and image.shape == (512, 512, 30)
    assert isinstance(boxes, Boxes) and len(boxes) == 1 and boxes.scores.tolist() == [1.0]
    assert np.allclose(boxes.lo, [[-62.63 - 37.01, -97.32 - 37.01, 212.0 - 37.01]])
    assert np.allclose(boxes.hi, [[-62.63 + 37.01, -97.32 + 37.01, 212.0 + 37.01]])
    # the cube overlaps the box mask made from the per-slice annotations
    mask = io.boxes_to_mask(boxes, like=image)
    reference = sitk.GetArrayFromImage(sitk.ReadImage(str(LUNG / "tumor_bbox_mask.nii.gz")))
    overlap = np.logical_and(mask.array > 0, reference > 0).sum() / (reference > 0).sum()
    assert overlap > 0.8


def test_boxed_voxel_coordinates_use_the_geometry(tmp_path: Path) -> None:
    vol = _volume()
    table = _table(tmp_path / "a.csv", [["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm", "class"],
                                        ["c1", 4, 6, 2, 3.0, 2], ["c1", 0, 0, 0, 1.0, 1], ["other", 1, 1, 1, 1, 1]])
    ann = io.csv_annotations(path=table, coords="voxel")
    boxes = io.boxed(images=vol, annotations=ann, case="c1").target
    img = vol.to_sitk()
    for i, idx in enumerate([(4, 6, 2), (0, 0, 0)]):
        centre = np.array(img.TransformContinuousIndexToPhysicalPoint(idx))
        d = ann.diameters[i]
        assert np.allclose(boxes.lo[i], centre - d / 2) and np.allclose(boxes.hi[i], centre + d / 2)
    assert boxes.classes.tolist() == [2, 1]
    without = io.boxed(images=vol, annotations=ann, case="c2")
    empty = without.target
    assert len(empty) == 0 and empty.lo.shape == (0, 3) and without.input is vol


def test_a_case_without_rows_gets_no_boxes(tmp_path: Path) -> None:
    header_only = _table(tmp_path / "b.csv", [["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"]])
    assert len(io.boxed(images=_volume(), annotations=io.csv_annotations(path=header_only), case="c1").target) == 0


@pytest.mark.parametrize(("rows", "line", "words"), [
    ([["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"], ["a", 1, "x", 3, 4]], 2, ["coordY", "'x'"]),
    ([["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"], ["a", 1, 2, 3, 4], ["b", 1, 2, 3]], 3,
     ["4 fields"]),
    ([["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"], ["a", 1, 2, 3, -4]], 2, ["negative"]),
    ([["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm", "class"], ["a", 1, 2, 3, 4, 1.5]], 2, ["class"]),
    ([["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"], ["a", 1, 2, "nan", 4]], 2, ["coordZ"]),
    ([["seriesuid", "coordX", "coordY", "diameter_mm"], ["a", 1, 2, 4]], 1, ["coordZ"]),
])
def test_malformed_table_is_e1002_naming_file_and_line(tmp_path: Path, rows: list, line: int,
                                                       words: list[str]) -> None:
    table = _table(tmp_path / "bad.csv", rows)
    with pytest.raises(DataError) as info:
        io.csv_annotations(path=table)
    message = str(info.value)
    assert info.value.code == "E1002" and str(table) in message and f"line {line}" in message
    assert all(w in message for w in words), message


def test_missing_and_empty_tables(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        io.csv_annotations(path=tmp_path / "nope.csv")
    assert info.value.code == "E1001"
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError) as info:
        io.csv_annotations(path=tmp_path / "empty.csv")
    assert info.value.code == "E1002"


def test_write_boxes_round_trip(tmp_path: Path) -> None:
    b1 = Boxes([[-1.5, 2.0, 3.25], [0.0, 0.0, 0.0]], [[2.5, 6.0, 7.25], [1.0, 2.0, 3.0]], [1, 2], [0.9, 0.125])
    b2 = Boxes(np.zeros((0, 3)), np.zeros((0, 3)), [], [])
    written = io.write_boxes(x=[Case("s1", b1), Case("s2", Pair(_volume(), b2))], path=tmp_path / "out" / "sub")
    assert written == [tmp_path / "out" / "sub.csv"]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["sub.csv"]  # no temporary file left
    with open(written[0], newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm", "sizeX", "sizeY", "sizeZ",
                             "class", "probability"]
    assert [r["seriesuid"] for r in rows] == ["s1", "s1"]
    assert float(rows[0]["coordX"]) == 0.5 and float(rows[0]["sizeY"]) == 4.0
    assert float(rows[1]["probability"]) == 0.125 and rows[1]["class"] == "2"
    back = io.csv_annotations(path=written[0])
    assert np.array_equal(back.centres, (b1.lo + b1.hi) / 2) and back.classes.tolist() == [1, 2]
    # cubes from `boxed` come back exactly
    cube = Boxes([[1.0, 2.0, 3.0]], [[5.0, 6.0, 7.0]], [1], [1.0], source="/x/scan7.mha")
    (single,) = io.write_boxes(x=cube, path=tmp_path / "one.csv")
    again = io.csv_annotations(path=single)
    assert again.ids == ("scan7",) and again.diameters.tolist() == [4.0]
    # written case by case, a dataset's boxes are named by the case id, not the file
    (named,) = io.write_boxes(x=cube, path=tmp_path / "named.csv", case="1.2.840.99")
    assert io.csv_annotations(path=named).ids == ("1.2.840.99",)
    target = io.boxed(images=_volume(), annotations=again, case="scan7").target
    assert np.array_equal(target.lo, cube.lo) and np.array_equal(target.hi, cube.hi)


def test_write_boxes_replaces_atomically(tmp_path: Path) -> None:
    target = tmp_path / "b.csv"
    target.write_text("old")
    io.write_boxes(x=[Case("a", Boxes([[0.0, 0.0]], [[1.0, 1.0]], [1], [0.5]))], path=target)
    text = target.read_text().splitlines()
    assert text[0].startswith("seriesuid,") and text[1].split(",")[3] == ""  # 2-D: no z
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.csv"]
