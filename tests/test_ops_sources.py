"""Source operators in two phases (medasl/ops/io.py `SOURCES`): listing is cheap and
reads no voxels, loading one case gives exactly what the eager operator gives, case
ids come in order, and the specs survive a JSON round trip (a worker process loads a
case from its spec alone)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

np = pytest.importorskip("numpy", reason="the runtime needs numpy (pip install -e '.[run]')")
sitk = pytest.importorskip("SimpleITK", reason="the runtime needs SimpleITK (pip install -e '.[run]')")

from medasl.ops import io  # noqa: E402 (after the skips, so a front-end-only install skips cleanly)
from medasl.runtime.errors import DataError  # noqa: E402
from medasl.runtime.values import CaseSpec, DicomSeries, Pair, Volume  # noqa: E402
from tests.conftest import SHARED_DATA, shared_data, write_nifti_file  # noqa: E402

LUNG_DICOM = SHARED_DATA / "lung_ct_tumor_lungpetctdx" / "dicom"
HISTO = SHARED_DATA / "histo_nuclei_dsb2018"


def _nifti(path: Path, array: np.ndarray, spacing: tuple[float, ...] = (1.0, 1.5, 2.0),
           origin: tuple[float, ...] = (3.0, -4.0, 5.0)) -> Path:
    return write_nifti_file(path, array, spacing, origin)


def _pairs(root: Path, ids: list[str]) -> None:
    rng = np.random.default_rng(1)
    for cid in ids:
        image = rng.normal(0, 100, (6, 7, 8)).astype(np.float32)
        _nifti(root / f"img-{cid}.nii.gz", image)
        _nifti(root / f"seg-{cid}.nii.gz", (image > 0).astype(np.uint8))


def _pngs(root: Path, ids: list[str]) -> None:
    rng = np.random.default_rng(2)
    root.mkdir(parents=True, exist_ok=True)
    for cid in ids:
        sitk.WriteImage(sitk.GetImageFromArray(rng.integers(0, 255, (9, 11), dtype=np.uint8)), str(root / f"{cid}.png"))


def _same_volume(a: Volume, b: Volume) -> None:
    assert a.array.dtype == b.array.dtype and np.array_equal(a.array, b.array)
    assert (a.spacing, a.origin, a.direction, a.kind, a.modality, a.source) == \
        (b.spacing, b.origin, b.direction, b.kind, b.modality, b.source)


def _same(a: Any, b: Any) -> None:
    if isinstance(a, Pair):
        assert isinstance(b, Pair)
        _same(a.input, b.input)
        _same(a.target, b.target)
    elif isinstance(a, Volume):
        _same_volume(a, b)
    else:
        assert type(a) is type(b) and a == b


def _check_source(name: str, **params: Any) -> list[CaseSpec]:
    """Listing + loading equals the eager operator; ids ordered; args plain JSON, and a
    spec rebuilt from JSON loads the same value."""
    source = io.SOURCES[name]
    specs = source.list(**params)
    eager = io.OPERATORS[name](**params)
    assert [s.id for s in specs] == [c.id for c in eager] == sorted(s.id for s in specs)
    for spec, case in zip(specs, eager):
        assert all(isinstance(f, str) for f in spec.files)
        text = json.dumps({"id": spec.id, "files": list(spec.files), "args": spec.args})
        back = json.loads(text)
        assert back["args"] == spec.args
        rebuilt = CaseSpec(back["id"], tuple(back["files"]), back["args"])
        _same(source.load(spec), case.value)
        _same(source.load(rebuilt), case.value)
    return specs


def test_every_dataset_source_is_listed() -> None:
    assert set(io.SOURCES) == {"folder", "instance_folder", "images", "dicom_folder", "phantom", "classified",
                               "slide_tiles", "datalist", "atrophy_phantom", "stacked_classified", "stacked_labels",
                               "mask_folder"}
    assert set(io.SOURCES) <= set(io.OPERATORS)


def test_folder_source(tmp_path: Path) -> None:
    _pairs(tmp_path, ["b", "a", "c10"])
    specs = _check_source("folder", root=tmp_path, image="img-*.nii.gz", label="seg-*.nii.gz")
    assert specs[0].files == (str(tmp_path / "img-a.nii.gz"), str(tmp_path / "seg-a.nii.gz"))
    specs = _check_source("folder", root=tmp_path, image="img-*.nii.gz")
    assert specs[0].files == (str(tmp_path / "img-a.nii.gz"),)


def test_images_source(tmp_path: Path) -> None:
    _pngs(tmp_path, ["x2", "x1"])
    specs = _check_source("images", root=tmp_path, pattern="*.png")
    assert [s.files for s in specs] == [(str(tmp_path / "x1.png"),), (str(tmp_path / "x2.png"),)]


def test_phantom_source() -> None:
    specs = _check_source("phantom", cases=3, size=(16, 12, 8), spacing=(2.0, 2.0, 3.0), seed=4)
    assert [s.files for s in specs] == [(), (), ()]
    # case i depends on (seed, i) only, however many cases are listed
    more = io.SOURCES["phantom"].list(cases=5, size=(16, 12, 8), spacing=(2.0, 2.0, 3.0), seed=4)
    _same(io.SOURCES["phantom"].load(more[2]), io.SOURCES["phantom"].load(specs[2]))


def test_instance_folder_source_on_histology() -> None:
    shared_data()
    specs = _check_source("instance_folder", root=HISTO, image="images/*.png", label="instance_labels/*.png")
    assert len(specs) == 9 and all(len(s.files) == 2 for s in specs)


def test_dicom_folder_source() -> None:
    shared_data()
    specs = _check_source("dicom_folder", root=LUNG_DICOM)
    (spec,) = specs
    assert len(spec.files) == 30 and all(Path(f).parent == LUNG_DICOM for f in spec.files)
    series = io.SOURCES["dicom_folder"].load(spec)
    assert isinstance(series, DicomSeries) and series.uid == spec.id and series.modality == "CT"


def test_listing_reads_no_voxels_a_corrupt_image_is_reported_at_load(tmp_path: Path) -> None:
    _pairs(tmp_path, ["a", "b"])
    bad = tmp_path / "img-b.nii.gz"
    bad.write_bytes(b"\x1f\x8b this is not a NIfTI image")
    specs = io.SOURCES["folder"].list(root=tmp_path, image="img-*.nii.gz", label="seg-*.nii.gz")
    assert [s.id for s in specs] == ["a", "b"]
    io.SOURCES["folder"].load(specs[0])
    with pytest.raises(DataError) as info:
        io.SOURCES["folder"].load(specs[1])
    assert info.value.code == "E1002" and str(bad) in str(info.value)
    with pytest.raises(DataError):
        io.folder(root=tmp_path, image="img-*.nii.gz", label="seg-*.nii.gz")
    # the same for unlabelled images
    specs = io.SOURCES["images"].list(root=tmp_path, pattern="img-*.nii.gz")
    with pytest.raises(DataError) as info:
        io.SOURCES["images"].load(specs[1])
    assert str(bad) in str(info.value)


def test_listing_errors_are_the_eager_ones(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError) as info:
        io.SOURCES["folder"].list(root=tmp_path / "empty", image="*.nii.gz", label="*_seg.nii.gz")
    assert info.value.code == "E1005"
    _pairs(tmp_path / "d", ["a", "b"])
    (tmp_path / "d" / "seg-b.nii.gz").unlink()
    with pytest.raises(DataError) as info:
        io.SOURCES["folder"].list(root=tmp_path / "d", image="img-*.nii.gz", label="seg-*.nii.gz")
    assert info.value.code == "E1006" and "img-b.nii.gz" in str(info.value)


def test_grid_mismatch_is_e1007_at_load(tmp_path: Path) -> None:
    _pairs(tmp_path, ["a"])
    _nifti(tmp_path / "seg-a.nii.gz", np.zeros((6, 7, 8), np.uint8), spacing=(2.0, 1.5, 2.0))
    (spec,) = io.SOURCES["folder"].list(root=tmp_path, image="img-*.nii.gz", label="seg-*.nii.gz")
    with pytest.raises(DataError) as info:
        io.SOURCES["folder"].load(spec)
    assert info.value.code == "E1007" and "seg-a.nii.gz" in str(info.value)


def test_classified_source(tmp_path: Path) -> None:
    _pngs(tmp_path / "img", ["p1", "p2", "p3"])
    table = tmp_path / "labels.csv"
    with open(table, "w", newline="") as f:
        csv.writer(f).writerows([["name", "finding"], ["p1", "10"], ["p2", "2"], ["p3", "2"], ["p9", "7"]])
    specs = _check_source("classified", root=tmp_path / "img", pattern="*.png", labels=table, column="finding",
                          id_column="name")
    assert [s.files for s in specs] == [(str(tmp_path / "img" / f"{c}.png"),) for c in ("p1", "p2", "p3")]
    assert specs[0].args["classes"] == ["2", "7", "10"]  # numeric order, every row of the table
    # corrupt image: listed, reported at load
    (tmp_path / "img" / "p2.png").write_bytes(b"not a png")
    specs = io.SOURCES["classified"].list(root=tmp_path / "img", pattern="*.png", labels=table, column="finding",
                                          id_column="name")
    with pytest.raises(DataError) as info:
        io.SOURCES["classified"].load(specs[1])
    assert "p2.png" in str(info.value)


def test_slide_tiles_source(tmp_path: Path) -> None:
    tifffile = pytest.importorskip("tifffile")
    pytest.importorskip("openslide")
    a = np.full((300, 400, 3), 235, np.uint8)
    a[40:260, 60:300] = (170, 70, 160)
    path = tmp_path / "slide.tif"
    with tifffile.TiffWriter(path) as t:
        t.write(a, tile=(64, 64), photometric="rgb")
        t.write(np.ascontiguousarray(a[::4, ::4]), tile=(64, 64), photometric="rgb", subfiletype=1)
    specs = _check_source("slide_tiles", path=path, size=(128, 128), level=0, tissue=0.5)
    assert all(s.files == (str(path),) for s in specs)
    assert len(specs) > 0


# ----- classified -------------------------------------------------------------------------------


def test_classified_maps_classes_in_sorted_order(tmp_path: Path) -> None:
    _pngs(tmp_path, ["a", "b", "c"])
    table = tmp_path / "t.csv"
    table.write_text("id,dx\na,pneumonia\nb,normal\nc,pneumonia\nz,effusion\n", encoding="utf-8-sig")
    cases = io.classified(root=tmp_path, pattern="*.png", labels=table, column="dx")
    assert cases.classes == ("effusion", "normal", "pneumonia")
    assert [(c.id, c.value.target) for c in cases] == [("a", 2), ("b", 1), ("c", 2)]
    assert all(type(c.value.target) is int and isinstance(c.value.input, Volume) for c in cases)


def test_classified_errors(tmp_path: Path) -> None:
    _pngs(tmp_path, ["a", "b"])
    table = tmp_path / "t.csv"
    table.write_text("id,dx\na,1\n")
    with pytest.raises(DataError) as info:
        io.classified(root=tmp_path, pattern="*.png", labels=table, column="dx")
    assert info.value.code == "E1006" and "b.png" in str(info.value) and str(table) in str(info.value)
    table.write_text("id,dx\na,1\nb,0\na,0\n")
    with pytest.raises(DataError) as info:
        io.classified(root=tmp_path, pattern="*.png", labels=table, column="dx")
    assert info.value.code == "E1012" and "line 4" in str(info.value)
    with pytest.raises(DataError) as info:
        io.classified(root=tmp_path, pattern="*.png", labels=table, column="finding")
    assert info.value.code == "E1002" and "finding" in str(info.value)
    with pytest.raises(DataError) as info:
        io.classified(root=tmp_path, pattern="*.png", labels=tmp_path / "none.csv", column="dx")
    assert info.value.code == "E1001"


# ----- slide_tiles ------------------------------------------------------------------------------


def _slide(path: Path, mpp: float | None = 0.5) -> np.ndarray:
    """A 400 x 300 pyramidal tiled TIFF (levels 1 and 1/4): glass with a stained block
    over x 60..299, y 40..259."""
    tifffile = pytest.importorskip("tifffile")
    pytest.importorskip("openslide")
    a = np.full((300, 400, 3), 235, np.uint8)
    a[40:260, 60:300] = (170, 70, 160)
    extra: dict[str, Any] = {}
    if mpp is not None:
        extra = {"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": "CENTIMETER"}
    with tifffile.TiffWriter(path) as t:
        t.write(a, tile=(64, 64), photometric="rgb", **extra)
        t.write(np.ascontiguousarray(a[::4, ::4]), tile=(64, 64), photometric="rgb", subfiletype=1)
    return a


def test_slide_tiles_tissue_padding_and_geometry(tmp_path: Path) -> None:
    path = tmp_path / "slide.tif"
    a = _slide(path)
    every = io.slide_tiles(path=path, size=(128, 128), level=0, tissue=0.0)
    assert [c.id for c in every] == [f"r{r:05d}_c{c:05d}" for r in range(3) for c in range(4)]
    for case in every:
        tile = case.value
        assert tile.array.shape == (128, 128, 3) and tile.array.dtype == np.uint8 and tile.modality == "Path"
        assert tile.spacing == (0.0005, 0.0005)
        row, col = int(case.id[1:6]), int(case.id[-5:])
        assert np.allclose(tile.origin, (col * 128 * 0.0005, row * 128 * 0.0005))
        region = a[row * 128: row * 128 + 128, col * 128: col * 128 + 128]
        h, w = region.shape[:2]
        assert np.array_equal(tile.array[:h, :w], region)
        assert (tile.array[h:] == 255).all() and (tile.array[:, w:] == 255).all()  # padded with white
    tissue = io.slide_tiles(path=path, size=(128, 128), level=0, tissue=0.5)
    # the block (x 60..299, y 40..259) covers r0c1 69%, r1c0 53%, r1c1 100%, r1c2 34%, r0c0 37%, ...
    assert {c.id for c in tissue} == {"r00000_c00001", "r00001_c00000", "r00001_c00001"}
    low = io.slide_tiles(path=path, size=(32, 32), level=1, tissue=0.0)
    assert low[0].value.spacing == (0.002, 0.002) and len(low) == 4 * 3
    assert np.array_equal(low[0].value.array[:32, :32], a[::4, ::4][:32, :32])


def test_slide_tiles_without_resolution_is_one_mm_per_pixel(tmp_path: Path) -> None:
    path = tmp_path / "slide.tif"
    _slide(path, mpp=None)
    (tile, *_) = io.slide_tiles(path=path, size=(100, 100), level=1, tissue=0.0)
    assert tile.value.spacing == (4.0, 4.0) and tile.value.origin == (1.5, 1.5)


def test_slide_tiles_errors(tmp_path: Path) -> None:
    path = tmp_path / "slide.tif"
    _slide(path)
    with pytest.raises(DataError) as info:
        io.slide_tiles(path=path, level=5)
    assert info.value.code == "E1005" and "level" in str(info.value)
    with pytest.raises(DataError) as info:
        io.slide_tiles(path=path, size=(256, 256), tissue=1.0)
    assert info.value.code == "E1005"
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"II*\0 not a slide")
    with pytest.raises(DataError) as info:
        io.slide_tiles(path=bad)
    assert info.value.code == "E1002" and str(bad) in str(info.value)
    with pytest.raises(DataError) as info:
        io.slide_tiles(path=tmp_path / "missing.svs")
    assert info.value.code == "E1001"


# ----- datalist ------------------------------------------------------------------------


def test_datalist_pairs_what_a_csv_table_lists(tmp_path: Path) -> None:
    _pairs(tmp_path / "data", ["a", "b"])
    table = tmp_path / "lists" / "cases.csv"
    table.parent.mkdir()
    table.write_text("id,image,label\nb,../data/img-b.nii.gz,../data/seg-b.nii.gz\n"
                     "a,../data/img-a.nii.gz,../data/seg-a.nii.gz\n")
    cases = io.datalist(table)
    assert [c.id for c in cases] == ["a", "b"]
    expected = io.folder(tmp_path / "data", image="img-*.nii.gz", label="seg-*.nii.gz")
    for got, want in zip(cases, expected):
        np.testing.assert_array_equal(got.value.input.array, want.value.input.array)
        np.testing.assert_array_equal(got.value.target.array, want.value.target.array)
    specs = io.SOURCES["datalist"].list(path=table)
    assert json.loads(json.dumps([s.args for s in specs])) == [s.args for s in specs]


def test_datalist_reads_a_decathlon_dataset_json(tmp_path: Path) -> None:
    _pairs(tmp_path, ["x1", "x2"])
    (tmp_path / "dataset.json").write_text(json.dumps({"name": "demo", "training": [
        {"image": "./img-x1.nii.gz", "label": "./seg-x1.nii.gz"},
        {"image": "./img-x2.nii.gz", "label": "./seg-x2.nii.gz"}]}))
    assert [c.id for c in io.datalist(tmp_path / "dataset.json")] == ["img-x1", "img-x2"]


def test_datalist_names_the_line_of_a_missing_file_and_repeated_ids(tmp_path: Path) -> None:
    _pairs(tmp_path, ["a"])
    table = tmp_path / "cases.csv"
    table.write_text("id,image,label\na,img-a.nii.gz,seg-a.nii.gz\nb,img-b.nii.gz,seg-b.nii.gz\n")
    with pytest.raises(DataError) as caught:
        io.SOURCES["datalist"].list(path=table)
    assert caught.value.code == "E1001" and "line 3" in caught.value.message and "img-b.nii.gz" in caught.value.message
    table.write_text("id,image,label\na,img-a.nii.gz,seg-a.nii.gz\na,img-a.nii.gz,seg-a.nii.gz\n")
    with pytest.raises(DataError) as caught:
        io.SOURCES["datalist"].list(path=table)
    assert caught.value.code == "E1012"


def test_datalist_reads_a_dicom_series_folder_and_realigns_its_label() -> None:
    shared = shared_data()
    table = Path(__file__).resolve().parents[1] / "examples" / "data" / "abdomen_ct.csv"
    cases = {c.id: c.value for c in io.datalist(table)}
    dicom = cases["ct_dicom"]
    series = io.dicom_to_image(io.dicom_series(shared / "ct_dicom_series_totalsegmentator" / "dicom"))
    np.testing.assert_array_equal(dicom.input.array, series.array)
    assert dicom.target.same_grid(series) and int((np.asarray(dicom.target.array) == 5).sum()) > 0
