"""std.io readers and writers (medasl/ops/io.py) against SimpleITK on the real samples in
../shared/data, and every bad-input path giving its DataError code."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

np = pytest.importorskip("numpy", reason="the runtime needs numpy (pip install -e '.[run]')")
sitk = pytest.importorskip("SimpleITK", reason="the runtime needs SimpleITK (pip install -e '.[run]')")

from medasl.ops import io  # noqa: E402 (after the skips, so a front-end-only install skips cleanly)
from medasl.runtime.errors import DataError  # noqa: E402
from medasl.runtime.values import Case, Pair, Volume  # noqa: E402
from tests.conftest import shared_data, write_nifti_file  # noqa: E402

DATA = shared_data(module=True)

TS_DICOM = DATA / "ct_dicom_series_totalsegmentator" / "dicom"
TS_LABEL = DATA / "ct_dicom_series_totalsegmentator" / "example_seg_dicom.nii.gz"
LUNG_DICOM = DATA / "lung_ct_tumor_lungpetctdx" / "dicom"
SMALL_DICOM = DATA / "dicom_small_pydicom"
CT_NIFTI = DATA / "ct_abdomen_totalsegmentator" / "example_ct_sm.nii.gz"
HISTO = DATA / "histo_nuclei_dsb2018"


def sitk_series(folder: Path) -> sitk.Image:
    """The reference: SimpleITK's own series reader, as its documentation shows it."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


def max_geometry_difference(vol: Volume, ref: sitk.Image) -> float:
    return max(float(np.max(np.abs(np.subtract(a, b)))) for a, b in (
        (vol.spacing, ref.GetSpacing()), (vol.origin, ref.GetOrigin()), (vol.direction, ref.GetDirection())))


def error_of(call, *args: object, **kwargs: object) -> DataError:  # type: ignore[no-untyped-def]
    with pytest.raises(DataError) as info:
        call(*args, **kwargs)
    return info.value



# ----- DICOM --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ts_ct() -> Volume:
    return io.dicom_to_image(x=io.dicom_series(path=TS_DICOM))


@pytest.mark.parametrize("folder", [TS_DICOM, LUNG_DICOM], ids=["totalsegmentator", "lungpetctdx"])
def test_dicom_series_equals_simpleitk(folder: Path) -> None:
    series = io.dicom_series(path=folder)
    vol = io.dicom_to_image(x=series)
    ref = sitk_series(folder)
    ref_array = sitk.GetArrayFromImage(ref)
    assert vol.array.dtype == ref_array.dtype == np.int16
    assert np.array_equal(vol.array, ref_array)  # exact, HU as SimpleITK gives them
    assert vol.shape == ref.GetSize()
    assert max_geometry_difference(vol, ref) <= 1e-6
    assert vol.modality == "CT" and vol.kind == "image"
    assert vol.array.min() == -1024  # rescale intercept applied: air is HU, not raw 0


def test_dicom_series_geometry_of_totalsegmentator(ts_ct: Volume) -> None:
    """The values the data README states, so a change in SimpleITK's reading shows."""
    assert ts_ct.shape == (512, 512, 20)
    assert ts_ct.spacing == pytest.approx((0.9765625, 0.9765625, 2.0))
    assert ts_ct.origin == pytest.approx((-249.51171875, -437.51171875, -804.5))
    assert ts_ct.direction == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def test_totalsegmentator_label_lines_up_with_dicom(ts_ct: Volume) -> None:
    """The label NIfTI is stored with its y axis flipped (direction diag(1, -1, 1), origin
    y = 61.5) but covers the same physical voxels as the DICOM series.

    What this proves: (1) medasl's loaders keep both files' geometry exactly enough that
    re-storing the label on the image grid without interpolation (`aligned_to`) gives
    the same voxels as SimpleITK's nearest-neighbour resampling through world
    coordinates; (2) the result is anatomically right, not just self-consistent: the
    liver label falls on liver HU, solid organs and bones on tissue, which fails
    badly if the flip is ignored (the naive array overlay puts the liver on air and fat).
    """
    names = json.loads((TS_LABEL.parent / "labels_total.json").read_text())
    label = io.nifti(path=TS_LABEL)
    assert label.direction == (1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)
    assert not label.same_grid(ts_ct)

    aligned = io.as_labels(label).aligned_to(ts_ct)
    assert aligned is not None and aligned.same_grid(ts_ct, tol=1e-9)
    resampled = sitk.Resample(label.to_sitk(), ts_ct.to_sitk(), sitk.Transform(), sitk.sitkNearestNeighbor, 0,
                              sitk.sitkUInt8)
    assert np.array_equal(aligned.array, sitk.GetArrayFromImage(resampled))
    assert np.count_nonzero(aligned.array) == np.count_nonzero(label.array)  # nothing fell off the grid

    hu = ts_ct.array
    liver = aligned.array == 5
    assert names["5"] == "liver" and liver.sum() == 366_708
    assert 0 < hu[liver].mean() < 200
    gas_filled = [k for k, n in names.items() if n in ("colon", "stomach", "small_bowel", "duodenum", "esophagus",
                                                      "trachea") or n.startswith("lung")]
    solid = (aligned.array > 0) & ~np.isin(aligned.array, [int(k) for k in gas_filled])
    assert (hu[solid] > -500).mean() > 0.99
    bones = np.isin(aligned.array, [k for k in range(1, 200) if names.get(str(k), "").startswith(("rib_", "vertebrae",
                                                                                                    "humerus"))])
    assert np.median(hu[bones]) > 150

    # The same checks on the arrays overlaid naively (ignoring the flip) fail: the test can tell.
    assert not 0 < hu[label.array == 5].mean() < 200


def test_folder_pairs_flipped_label_onto_dicom_grid(tmp_path: Path, ts_ct: Volume) -> None:
    """`folder` re-stores a label that shares the image's physical grid in another axis
    order, instead of calling it a geometry mismatch."""
    io.write_nifti(ts_ct, tmp_path / "ct-ts.nii.gz")
    shutil.copy(TS_LABEL, tmp_path / "seg-ts.nii.gz")
    (case,) = io.folder(root=tmp_path, image="ct-*.nii.gz", label="seg-*.nii.gz")
    assert case.id == "ts"
    assert case.value.target.same_grid(case.value.input, tol=1e-6)
    assert 0 < case.value.input.array[case.value.target.array == 5].mean() < 200


def test_dicom_series_several_is_e1004_and_uid_chooses() -> None:
    err = error_of(io.dicom_series, path=SMALL_DICOM)
    assert err.code == "E1004"
    ct_uid = "1.3.6.1.4.1.5962.1.3.1.1.20040119072730.12322"
    assert ct_uid in err.message and '"SmartScore - Gated 0.5 sec", 5 slices' in err.message
    assert "uid=" in (err.help or "")
    series = io.dicom_series(path=SMALL_DICOM, uid=ct_uid)
    vol = io.dicom_to_image(x=series)
    assert np.array_equal(vol.array, sitk.GetArrayFromImage(sitk.ReadImage(str(SMALL_DICOM / "CT_small.dcm"))))
    assert error_of(io.dicom_series, path=SMALL_DICOM, uid="1.2.3").code == "E1003"


def test_dicom_series_small_ct_series_with_subfolders() -> None:
    vol = io.dicom_to_image(x=io.dicom_series(path=SMALL_DICOM / "dicomdirtests" / "98892001" / "CT5N"))
    assert vol.shape == (16, 16, 5) and vol.spacing[2] == pytest.approx(2.5)


def test_dicom_series_with_gap_or_mixed_orientation_is_e1010() -> None:
    """SimpleITK reads these with wrong geometry and only a warning (a scout plus three
    slices 200 mm away; a 7-image MR with non-parallel slices)."""
    gap = error_of(io.dicom_to_image, io.dicom_series(path=SMALL_DICOM / "dicomdirtests" / "77654033" / "CT2"))
    assert gap.code == "E1010" and "missing slice" in gap.message
    tilted = error_of(io.dicom_to_image, io.dicom_series(path=SMALL_DICOM / "dicomdirtests" / "98892003" / "MR700"))
    assert tilted.code == "E1010" and "not parallel" in tilted.message


def test_dicom_series_errors(tmp_path: Path) -> None:
    assert error_of(io.dicom_series, path=tmp_path / "nope").code == "E1001"
    (tmp_path / "empty").mkdir()
    assert error_of(io.dicom_series, path=tmp_path / "empty").code == "E1005"
    assert error_of(io.dicom_series, path=DATA / "chest_xray_nih").code == "E1003"
    # header-only DICOM objects and DICOMDIRs are not images
    assert error_of(io.dicom_series, path=SMALL_DICOM / "dicomdirtests" / "TINY_ALPHA").code == "E1003"


def test_truncated_slice_in_series_is_e1002_naming_it(tmp_path: Path) -> None:
    """GDCM does not recognise a truncated slice and would drop it from the series."""
    files = sorted(LUNG_DICOM.glob("*.dcm"))[:4]
    for f in files:
        shutil.copy(f, tmp_path / f.name)
    victim = tmp_path / files[2].name
    victim.write_bytes(victim.read_bytes()[:-5000])
    err = error_of(io.dicom_series, path=tmp_path)
    assert err.code == "E1002" and files[2].name in err.message and err.path == str(victim)


def test_single_dicom_equals_simpleitk() -> None:
    """A single frame is SimpleITK's volume one slice thick as a 2-D image (issue 10)."""
    path = SMALL_DICOM / "CT_small.dcm"
    vol = io.dicom_file(path=path)
    ref = sitk.ReadImage(str(path))[:, :, 0]
    assert np.array_equal(vol.array, sitk.GetArrayFromImage(ref))
    assert vol.array.dtype == sitk.GetArrayFromImage(ref).dtype
    assert max_geometry_difference(vol, ref) <= 1e-6
    assert vol.modality == "CT" and vol.array.min() < -800  # HU (intercept -1024 applied), air around the body
    mr = io.dicom_file(path=SMALL_DICOM / "MR_small.dcm")
    assert mr.shape == (64, 64) and mr.modality == "MR" and mr.array.dtype == np.int16


def test_dicom_file_errors(tmp_path: Path) -> None:
    err = error_of(io.dicom_file, path=DATA / "chest_xray_nih" / "00000001_000.png")
    assert err.code == "E1003" and "00000001_000.png" in err.message
    assert error_of(io.dicom_file, path=DATA / "README.md").code == "E1003"
    dicomdir = error_of(io.dicom_file, path=SMALL_DICOM / "dicomdirtests" / "DICOMDIR")
    assert dicomdir.code == "E1003" and "without an image" in dicomdir.message
    truncated = tmp_path / "cut.dcm"
    truncated.write_bytes((SMALL_DICOM / "CT_small.dcm").read_bytes()[:-3000])
    err = error_of(io.dicom_file, path=truncated)
    assert err.code == "E1002" and "cut.dcm" in err.message and "truncated" in err.message
    assert error_of(io.dicom_file, path=tmp_path / "none.dcm").code == "E1001"


# ----- NIfTI and friends ----------------------------------------------------------------------


def test_nifti_equals_simpleitk() -> None:
    vol = io.nifti(path=CT_NIFTI)
    ref = sitk.ReadImage(str(CT_NIFTI))
    assert np.array_equal(vol.array, sitk.GetArrayFromImage(ref))
    assert max_geometry_difference(vol, ref) == 0.0
    assert vol.shape == (122, 101, 30) and vol.source == str(CT_NIFTI)


@pytest.mark.parametrize("name", ["cut.nii.gz", "cut.nii"])
def test_truncated_nifti_is_e1002_naming_the_file(tmp_path: Path, name: str) -> None:
    """SimpleITK itself reads these without error, filling the lost half with zeros."""
    full = tmp_path / ("full" + name[3:])
    sitk.WriteImage(sitk.ReadImage(str(CT_NIFTI)), str(full))
    data = full.read_bytes()
    cut = tmp_path / name
    cut.write_bytes(data[: len(data) * 2 // 3])
    err = error_of(io.nifti, path=cut)
    assert err.code == "E1002" and name in err.message and "truncated" in err.message
    assert err.path == str(cut)


def test_corrupt_and_missing_files(tmp_path: Path) -> None:
    missing = error_of(io.nifti, path=tmp_path / "ct.nii.gz")
    assert missing.code == "E1001" and "ct.nii.gz" in missing.message
    garbage = tmp_path / "junk.nii.gz"
    garbage.write_bytes(b"this is not an image at all" * 10)
    err = error_of(io.nifti, path=garbage)
    assert err.code == "E1002" and "junk.nii.gz" in err.message
    not_png = error_of(io.png, path=CT_NIFTI)  # the reader is fixed by the operator, not guessed
    assert not_png.code == "E1002"
    cut_png = tmp_path / "cut.png"
    cut_png.write_bytes((DATA / "chest_xray_nih" / "00000001_000.png").read_bytes()[:5000])
    assert error_of(io.png, path=cut_png).code == "E1002"
    assert error_of(io.nifti, path=tmp_path).code == "E1001"  # a folder is not a file


def test_nan_and_infinite_values_are_e1008(tmp_path: Path) -> None:
    array = np.zeros((4, 5, 6), dtype=np.float32)
    array[1, 2, 3] = np.nan
    array[2, 0, 0] = np.inf
    path = write_nifti_file(tmp_path / "nan.nii.gz", array)
    err = error_of(io.nifti, path=path)
    assert err.code == "E1008" and "nan.nii.gz" in err.message
    assert "1 NaN, 1 infinite" in err.message and "(3, 2, 1)" in err.message
    np.save(tmp_path / "nan.npy", array)
    assert error_of(io.numpy, path=tmp_path / "nan.npy").code == "E1008"


def test_numpy_reader(tmp_path: Path) -> None:
    npz = DATA / "pneumoniamnist_subset" / "pneumoniamnist_val.npz"
    assert error_of(io.numpy, path=npz).code == "E1043"  # two arrays (images, labels): which one?
    vol = io.numpy(path=npz, key="images")
    assert vol.array.shape == (524, 28, 28) and vol.dim == 3 and vol.spacing == (1.0, 1.0, 1.0)
    rgb = np.zeros((8, 9, 3), dtype=np.uint8)
    np.save(tmp_path / "rgb.npy", rgb)
    assert io.numpy(path=tmp_path / "rgb.npy").channels == 3
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    assert error_of(io.numpy, path=tmp_path / "obj.npy").code == "E1002"  # never unpickled


def test_nrrd_and_mha_readers(tmp_path: Path) -> None:
    ref = sitk.ReadImage(str(CT_NIFTI))
    for name, reader in (("ct.nrrd", io.nrrd), ("ct.mha", io.mha), ("ct.mhd", io.mha)):
        sitk.WriteImage(ref, str(tmp_path / name))
        vol = reader(path=tmp_path / name)
        assert np.array_equal(vol.array, sitk.GetArrayFromImage(ref))
        assert max_geometry_difference(vol, ref) <= 1e-6
    (tmp_path / "ct.raw").unlink()
    err = error_of(io.mha, path=tmp_path / "ct.mhd")
    assert err.code == "E1001" and "ct.raw" in err.message


# ----- 2-D pictures -------------------------------------------------------------------------


def test_png_gray_rgba_and_16bit_labels() -> None:
    xray = io.png(path=DATA / "chest_xray_nih" / "00000001_000.png")
    assert xray.array.shape == (512, 512) and xray.array.dtype == np.uint8 and xray.channels == 1
    assert xray.dim == 2 and xray.spacing == (1.0, 1.0) and xray.array.max() > 200

    tile = io.png(path=HISTO / "images" / "4193474b2f1c72f7.png")
    assert tile.array.shape == (256, 320, 3) and tile.array.dtype == np.uint8  # RGBA, alpha dropped
    rgba = sitk.GetArrayFromImage(sitk.ReadImage(str(HISTO / "images" / "4193474b2f1c72f7.png")))
    assert np.array_equal(tile.array, rgba[..., :3])
    assert tile.shape == (320, 256)  # (x, y) as SimpleITK's GetSize

    labels = io.png(path=HISTO / "instance_labels" / "4193474b2f1c72f7.png")
    assert labels.array.dtype == np.uint16 and labels.array.shape == (256, 320)
    assert labels.array.max() == 12  # 12 nuclei, per index.csv


def test_instance_folder_pairs_histology_tiles() -> None:
    cases = io.instance_folder(root=HISTO, image="images/*.png", label="instance_labels/*.png")
    header, *rows = (HISTO / "index.csv").read_text().splitlines()
    column = header.split(",").index("max_label")
    index = {row.split(",")[0]: row.split(",") for row in rows}
    assert len(cases) == 9 and [c.id for c in cases] == sorted(index)
    for case in cases:
        image, target = case.value.input, case.value.target
        assert target.kind == "instances" and target.array.dtype == np.uint16
        assert image.channels == 3 and image.array.shape[:2] == target.array.shape
        assert int(target.array.max()) == int(index[case.id][column])


def test_tiff_and_jpeg_readers(tmp_path: Path) -> None:
    gray = (np.arange(20 * 30).reshape(20, 30) % 256).astype(np.uint8)
    sitk.WriteImage(sitk.GetImageFromArray(gray), str(tmp_path / "g.tif"))
    vol = io.tiff(path=tmp_path / "g.tif")
    assert vol.dim == 2 and np.array_equal(vol.array, gray)
    rgb = np.stack([gray, gray // 2, 255 - gray], axis=-1)
    sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(tmp_path / "c.jpg"))
    photo = io.jpeg(path=tmp_path / "c.jpg")
    assert photo.array.shape == (20, 30, 3) and photo.array.dtype == np.uint8 and photo.spacing == (1.0, 1.0)
    assert error_of(io.jpeg, path=tmp_path / "g.tif").code == "E1002"


# ----- folder datasets --------------------------------------------------------------------------


def make_pairs(root: Path, ids: list[str], shape: tuple[int, int, int] = (6, 7, 8)) -> None:
    rng = np.random.default_rng(0)
    for cid in ids:
        write_nifti_file(root / f"img-{cid}.nii.gz", rng.normal(size=shape).astype(np.float32), (1.5, 1.5, 2.0))
        write_nifti_file(root / f"seg-{cid}.nii.gz", (rng.random(shape) > 0.5).astype(np.float32), (1.5, 1.5, 2.0))


def test_folder_pairs_by_id(tmp_path: Path) -> None:
    make_pairs(tmp_path, ["b", "a", "c10"])
    cases = io.folder(root=tmp_path, image="img-*.nii.gz", label="seg-*.nii.gz")
    assert [c.id for c in cases] == ["a", "b", "c10"]
    case = cases[0]
    assert isinstance(case, Case) and isinstance(case.value, Pair)
    assert case.value.input.source == str(tmp_path / "img-a.nii.gz")
    assert case.value.target.kind == "labels" and case.value.target.array.dtype == np.uint8  # float file -> integers
    assert set(np.unique(case.value.target.array)) == {0, 1}
    no_labels = io.folder(root=tmp_path, image="img-*.nii.gz")
    assert len(no_labels) == 3 and not no_labels[0].value.target.array.any()


def test_folder_same_id_in_every_star(tmp_path: Path) -> None:
    for cid in ("p1", "p2"):
        write_nifti_file(tmp_path / f"case_{cid}" / f"case_{cid}_ct.nii.gz", np.zeros((2, 3, 4), np.int16))
        write_nifti_file(tmp_path / f"case_{cid}" / f"case_{cid}_seg.nii.gz", np.ones((2, 3, 4), np.uint8))
    write_nifti_file(tmp_path / "case_p1" / "case_p9_ct.nii.gz", np.zeros((2, 3, 4), np.int16))  # ids disagree
    cases = io.folder(root=tmp_path, image="case_*/case_*_ct.nii.gz", label="case_*/case_*_seg.nii.gz")
    assert [c.id for c in cases] == ["p1", "p2"]


def test_folder_overlapping_patterns(tmp_path: Path) -> None:
    """`*.nii.gz` also matches the labels; they go to the more specific pattern."""
    for cid in ("a", "b"):
        write_nifti_file(tmp_path / f"{cid}.nii.gz", np.zeros((2, 3, 4), np.int16))
        write_nifti_file(tmp_path / f"{cid}_seg.nii.gz", np.ones((2, 3, 4), np.uint8))
    cases = io.folder(root=tmp_path, image="*.nii.gz", label="*_seg.nii.gz")
    assert [c.id for c in cases] == ["a", "b"]


def test_folder_unpaired_is_e1006_naming_files(tmp_path: Path) -> None:
    make_pairs(tmp_path, ["a", "b"])
    (tmp_path / "seg-b.nii.gz").unlink()
    write_nifti_file(tmp_path / "seg-zz.nii.gz", np.zeros((6, 7, 8), np.uint8))
    err = error_of(io.folder, root=tmp_path, image="img-*.nii.gz", label="seg-*.nii.gz")
    assert err.code == "E1006"
    assert "img-b.nii.gz" in err.message and "seg-zz.nii.gz" in err.message and "img-a" not in err.message


def test_folder_empty_is_e1005(tmp_path: Path) -> None:
    assert error_of(io.folder, root=tmp_path, image="img-*.nii.gz", label="seg-*.nii.gz").code == "E1005"
    make_pairs(tmp_path, ["a"])
    err = error_of(io.folder, root=tmp_path, image="ct-*.nii.gz", label="seg-*.nii.gz")
    assert err.code == "E1005" and "ct-*.nii.gz" in err.message
    assert error_of(io.images, root=tmp_path, pattern="*.png").code == "E1005"
    assert error_of(io.folder, root=tmp_path / "nope", image="*.nii.gz").code == "E1001"


@pytest.mark.parametrize(("change", "words"), [
    ({"shape": (6, 7, 9)}, ["size (8, 7, 6) vs (9, 7, 6)"]),
    ({"spacing": (1.5, 1.5, 2.5)}, ["spacing", "2.5"]),
    ({"origin": (0.0, 10.0, 0.0)}, ["origin", "(0, 10, 0)"]),
])
def test_folder_geometry_mismatch_is_e1007(tmp_path: Path, change: dict, words: list[str]) -> None:
    make_pairs(tmp_path, ["a"])
    shape = change.get("shape", (6, 7, 8))
    write_nifti_file(tmp_path / "seg-a.nii.gz", np.zeros(shape, np.uint8), change.get("spacing", (1.5, 1.5, 2.0)),
                     change.get("origin", (0.0, 0.0, 0.0)))
    err = error_of(io.folder, root=tmp_path, image="img-*.nii.gz", label="seg-*.nii.gz")
    assert err.code == "E1007" and "seg-a.nii.gz" in err.message
    for word in words:
        assert word in err.message


def test_folder_label_with_fractions_is_e1009(tmp_path: Path) -> None:
    make_pairs(tmp_path, ["a"])
    write_nifti_file(tmp_path / "seg-a.nii.gz", np.full((6, 7, 8), 0.25, np.float32), (1.5, 1.5, 2.0))
    assert error_of(io.folder, root=tmp_path, image="img-*.nii.gz", label="seg-*.nii.gz").code == "E1009"


def test_images_dataset() -> None:
    cases = io.images(root=DATA / "chest_xray_nih", pattern="*_000.png")
    assert [c.id for c in cases] == ["00000001", "00027426"]
    assert all(c.value.array.shape == (512, 512) for c in cases)


# ----- phantom ---------------------------------------------------------------------------------


def test_phantom_is_deterministic_per_seed() -> None:
    a = io.phantom(cases=3, size=(32, 30, 20), spacing=(2.0, 2.0, 3.0), seed=7)
    b = io.phantom(cases=3, size=(32, 30, 20), spacing=(2.0, 2.0, 3.0), seed=7)
    c = io.phantom(cases=3, size=(32, 30, 20), spacing=(2.0, 2.0, 3.0), seed=8)
    for x, y, z in zip(a, b, c):
        assert x.id == y.id
        assert np.array_equal(x.value.input.array, y.value.input.array)
        assert np.array_equal(x.value.target.array, y.value.target.array)
        assert not np.array_equal(x.value.input.array, z.value.input.array)
        assert not np.array_equal(x.value.target.array, z.value.target.array)
    first = io.phantom(cases=1, size=(32, 30, 20), spacing=(2.0, 2.0, 3.0), seed=7)[0]
    assert np.array_equal(first.value.input.array, a[0].value.input.array)  # case i depends on (seed, i) only
    assert not np.array_equal(a[0].value.input.array, a[1].value.input.array)  # cases differ


def test_phantom_looks_like_ct() -> None:
    for case in io.phantom(cases=4, seed=0):
        image, label = case.value.input, case.value.target
        assert image.shape == label.shape == (64, 64, 48) and image.spacing == (2.0, 2.0, 3.0)
        assert image.array.dtype == np.int16 and image.modality == "CT"
        assert label.kind == "labels" and set(np.unique(label.array)) == {0, 1}
        hu = image.array
        assert np.median(hu[label.array == 1]) == pytest.approx(55, abs=15)
        assert np.median(hu[hu < -500]) == pytest.approx(-1000, abs=10)
        body = (hu > -500) & (label.array == 0) & (hu < 200)
        assert np.median(hu[body]) == pytest.approx(40, abs=10)
        assert image.same_grid(label)


# ----- writers --------------------------------------------------------------------------------


def oblique_volume() -> Volume:
    c, s = np.cos(0.3), np.sin(0.3)
    array = np.random.default_rng(1).integers(-1000, 1000, size=(5, 6, 7)).astype(np.int16)
    return Volume(array, (0.661468, 0.3333333333333, 2.123456789), (-158.135803, 12.3456789012345, -75.699997),
                  (c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0), "image", "CT", None)


@pytest.mark.parametrize(("writer", "reader", "name", "tol"), [
    (io.write_nrrd, io.nrrd, "x.nrrd", 1e-12),
    (io.write_mha, io.mha, "x.mha", 1e-12),
    (io.write_mha, io.mha, "x.mhd", 1e-12),
    (io.write_nifti, io.nifti, "x.nii.gz", 1e-6),  # NIfTI stores geometry as float32
])
def test_writers_round_trip_geometry(tmp_path: Path, writer, reader, name: str, tol: float) -> None:  # type: ignore[no-untyped-def]
    vol = oblique_volume()
    written, *data_file = writer(vol, tmp_path / "out" / name)  # .mhd: also its data file, .zraw
    assert written == tmp_path / "out" / name and len(data_file) == name.endswith(".mhd")
    back = reader(path=written)
    assert np.array_equal(back.array, vol.array) and back.array.dtype == vol.array.dtype
    assert back.same_grid(vol, tol=tol)
    assert not [p for p in os.listdir(written.parent) if p.startswith(".tmp-")]


def test_nifti_writer_is_exact_for_float32_geometry(tmp_path: Path, ts_ct: Volume) -> None:
    (written,) = io.write_nifti(ts_ct, tmp_path / "ct")  # extension added
    assert written.name == "ct.nii.gz"
    back = io.nifti(path=written)
    assert back.spacing == ts_ct.spacing and back.origin == ts_ct.origin and back.direction == ts_ct.direction
    assert np.array_equal(back.array, ts_ct.array)


def test_write_dataset_and_png(tmp_path: Path) -> None:
    cases = io.phantom(cases=2, size=(16, 16, 8), seed=3)
    labels = [Case(c.id, c.value.target) for c in cases]
    written = io.write_nrrd(labels, tmp_path / "labels" / "*_seg.nrrd")
    assert [p.name for p in written] == ["case000_seg.nrrd", "case001_seg.nrrd"]
    assert np.array_equal(io.nrrd(path=written[1]).array, cases[1].value.target.array)

    instances = io.png(path=HISTO / "instance_labels" / "4193474b2f1c72f7.png")
    (out,) = io.write_png(Volume(instances.array, (1.0, 1.0), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0), "instances"),
                          tmp_path / "inst.png")
    assert np.array_equal(io.png(path=out).array, instances.array)
    tile = io.png(path=HISTO / "images" / "4193474b2f1c72f7.png")
    (out,) = io.write_png(tile, tmp_path / "tile.png")
    assert np.array_equal(io.png(path=out).array, tile.array)
    ct_slice = Volume(cases[0].value.input.array[4], (2.0, 2.0), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0), "image", "CT")
    (out,) = io.write_png(ct_slice, tmp_path / "slice.png")
    pixels = io.png(path=out).array
    assert pixels.dtype == np.uint8 and pixels.min() == 0 and pixels.max() == 255


# ----- values -----------------------------------------------------------------------------------


def test_volume_sitk_round_trip_and_shape() -> None:
    vol = oblique_volume()
    img = vol.to_sitk()
    assert img.GetSize() == vol.shape == (7, 6, 5) and vol.dim == 3
    back = Volume.from_sitk(img, "image", "CT")
    assert np.array_equal(back.array, vol.array) and back.same_grid(vol, tol=0.0)
    rgb = Volume(np.zeros((4, 5, 3), np.uint8), (0.5, 0.5), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0))
    assert rgb.to_sitk().GetNumberOfComponentsPerPixel() == 3 and rgb.shape == (5, 4) and rgb.channels == 3


def test_aligned_to_handles_permuted_axes() -> None:
    """A volume stored with axes permuted and flipped comes back exactly, matching
    SimpleITK's nearest-neighbour resampling onto the reference grid."""
    ref = oblique_volume()
    img = ref.to_sitk()
    flipped = sitk.PermuteAxes(sitk.Flip(img, [True, False, True]), [2, 0, 1])
    other = Volume.from_sitk(flipped, "labels", "Any")
    assert not other.same_grid(ref)
    back = other.aligned_to(ref)
    assert back is not None and np.array_equal(back.array, ref.array)
    shifted = Volume(other.array, other.spacing, tuple(o + 0.5 for o in other.origin), other.direction, "labels")
    assert shifted.aligned_to(ref) is None  # half a voxel off: would need interpolation


def _dead_pid() -> int:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, check=True)
    return int(done.stdout)


def _tiny() -> Volume:
    return Volume(np.zeros((2, 2, 2), np.int16), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))


def test_a_killed_writers_leftovers_are_removed_by_the_next_writer(tmp_path: Path) -> None:
    dead, out = _dead_pid(), tmp_path / "out"
    out.mkdir()
    leftovers = [out / f".tmp-{dead}-0123abcd-x.nii.gz", out / f".tmp-{dead}-89abcdef-other.nii.gz"]
    alive = out / f".tmp-{os.getpid()}-0123abcd-busy.nii.gz"  # a live writer's: kept
    foreign = out / f".tmp-{dead}-notours"  # not a writer's name: kept
    for path in (*leftovers, alive, foreign):
        path.write_bytes(b"half")
    io.write_nifti(_tiny(), out / "x.nii.gz")
    assert sorted(p.name for p in out.iterdir()) == sorted([alive.name, foreign.name, "x.nii.gz"])


def test_writing_many_files_into_one_folder_lists_it_rarely(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Listing the folder before every write made filling it quadratic; a listing is now
    paid for by as many writes as the folder held, and leftovers still go."""
    out = tmp_path / "many"
    listings = []
    real = os.scandir

    def counting(path: object = ".") -> object:
        if Path(str(path)) == out:
            listings.append(path)
        return real(path)  # type: ignore[arg-type]

    monkeypatch.setattr(io.os, "scandir", counting)
    io.write_nifti(_tiny(), out / "first.nii.gz")
    leftover = out / f".tmp-{_dead_pid()}-0123abcd-late.nii.gz"  # a writer killed after the first listing
    leftover.write_bytes(b"half")
    for i in range(300):
        io.write_nifti(_tiny(), out / f"f{i:03d}.nii.gz")
    assert len(list(out.glob("*.nii.gz"))) == 301
    assert 2 <= len(listings) <= 8, len(listings)
    assert not leftover.exists()
