"""DICOM data a user has (issue 10): segmentations (DICOM SEG, binary and Label Map)
read as label maps whose values are the segment numbers and whose names are the
segment labels, with a Dice of 1.0 against the segmentation they were made from;
a single-frame DICOM read as a 2-D image; MONOCHROME1 inverted as documented.

The SEG files are made at test time with highdicom from the real CT series in
../shared/data (TotalSegmentator's example, liver and spleen of its label map)."""

from __future__ import annotations

from pathlib import Path

import pytest

np = pytest.importorskip("numpy", reason="running needs the run extra (pip install -e '.[run]')")
sitk = pytest.importorskip("SimpleITK", reason="running needs the run extra (pip install -e '.[run]')")
pydicom = pytest.importorskip("pydicom", reason="running needs the run extra (pip install -e '.[run]')")
hd = pytest.importorskip("highdicom", reason="DICOM SEG needs highdicom (pip install -e '.[run]')")
pytest.importorskip("rich", reason="running needs the run extra (pip install -e '.[run]')")

from medasl.ops import io  # noqa: E402
from medasl.runtime.errors import DataError  # noqa: E402
from tests.conftest import shared_data  # noqa: E402
from tests.test_cli import run as cli  # noqa: E402

DATA = shared_data(module=True)
CT_SERIES = DATA / "ct_dicom_series_totalsegmentator" / "dicom"
CT_LABELS = DATA / "ct_dicom_series_totalsegmentator" / "example_seg_dicom.nii.gz"
XRAY_PNG = DATA / "chest_xray_nih" / "00000001_000.png"
MR_SMALL = DATA / "dicom_small_pydicom" / "MR_small.dcm"
LIVER, SPLEEN = 5, 1  # TotalSegmentator's label values (labels_total.json)


def _series() -> tuple[list[pydicom.Dataset], sitk.Image]:
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(CT_SERIES))
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    datasets = []
    for f in files:
        ds = pydicom.dcmread(f)
        # the de-identified sample blanked these; highdicom needs them to reference its sources
        ds.SOPClassUID = ds.SOPClassUID or ds.file_meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = hd.UID()
        datasets.append(ds)
    return datasets, reader.Execute()


@pytest.fixture(scope="module")
def source() -> dict[str, object]:
    """The CT series, its liver (1) and spleen (2) on the series' grid, and SEG files of them."""
    datasets, ct = _series()
    labels = sitk.Resample(sitk.ReadImage(str(CT_LABELS)), ct, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    organs = sitk.GetArrayFromImage(labels)
    selected = np.zeros(organs.shape, dtype=np.uint8)
    selected[organs == LIVER], selected[organs == SPLEEN] = 1, 2
    assert np.count_nonzero(selected == 1) > 1000 and np.count_nonzero(selected == 2) > 1000
    return {"datasets": datasets, "ct": ct, "labels": selected}


def _write_seg(source: dict[str, object], kind: str, path: Path, frames: slice = slice(None)) -> Path:
    from pydicom.sr.codedict import codes

    descriptions = [
        hd.seg.SegmentDescription(segment_number=n, segment_label=name, segmented_property_category=codes.SCT.Organ,
                                  segmented_property_type=code, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)
        for n, name, code in ((1, "liver", codes.SCT.Liver), (2, "spleen", codes.SCT.Spleen))]
    datasets = source["datasets"][frames]  # type: ignore[index]
    seg = hd.seg.Segmentation(
        source_images=datasets, pixel_array=source["labels"][frames], segmentation_type=kind,  # type: ignore[index]
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=100,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="medasl tests", manufacturer_model_name="test",
        software_versions="1", device_serial_number="1")
    seg.save_as(path)
    return path


@pytest.mark.skipif(not hasattr(hd.seg.SegmentationTypeValues, "LABELMAP"), reason="highdicom without Label Map SEG")
@pytest.mark.parametrize("kind", ["BINARY", "LABELMAP"])
def test_seg_reads_as_the_label_map_it_was_made_from(source: dict[str, object], tmp_path: Path, kind: str) -> None:
    """Before: `dicom_file` gave the frames of a BINARY SEG stacked as 0/255 values (a
    Dice of 0), and reported a Label Map SEG as truncated or corrupt."""
    path = _write_seg(source, kind, tmp_path / f"{kind}.dcm")
    for reader in (io.dicom_seg, io.dicom_file):
        seg = reader(path)
        assert seg.kind == "labels" and seg.names == ((1, "liver"), (2, "spleen"))
        ct = source["ct"]
        assert seg.shape == ct.GetSize()  # type: ignore[attr-defined]
        assert np.allclose(seg.spacing, ct.GetSpacing()) and np.allclose(seg.origin, ct.GetOrigin())  # type: ignore[attr-defined]
        assert np.allclose(seg.direction, ct.GetDirection())  # type: ignore[attr-defined]
        assert np.array_equal(seg.array, source["labels"])


def test_seg_in_a_pipeline_scores_dice_1_by_class_name(source: dict[str, object], tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The segmentation a SEG was made from scores Dice 1.0 against it, per class under
    the segment labels; `label=1` scores the liver alone; a (Label Map) SEG covering only
    some slices is put back onto its whole series with `resample_to`."""
    monkeypatch.chdir(tmp_path)
    _write_seg(source, "BINARY", tmp_path / "full.dcm")
    _write_seg(source, "LABELMAP", tmp_path / "partial.dcm", frames=slice(3, 17))
    reference = sitk.GetImageFromArray(source["labels"])  # type: ignore[arg-type]
    reference.CopyInformation(source["ct"])  # type: ignore[arg-type]
    sitk.WriteImage(reference, str(tmp_path / "reference.nii.gz"))
    sitk.WriteImage(source["ct"], str(tmp_path / "ct.nii.gz"))  # type: ignore[arg-type]
    (tmp_path / "p.medas").write_text("""import std.io, std.pre, std.metrics, std.report
pipeline p {
  ct = nifti("ct.nii.gz") as Image[3, CT]
  full = dicom_file("full.dcm") as LabelMap[3, 3]
  partial = dicom_seg("partial.dcm") as LabelMap[3, 3]
  reference = nifti("reference.nii.gz") as LabelMap[3, 3]
  score = dice(reference, full)
  liver = dice(reference, full, label=1)
  back = dice(reference, resample_to(partial, ct))
  report json("scores.json", (score, liver, back))
}
""")
    code, _, err = cli("run", "p.medas", "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "out"))
    assert code == 0, err
    import json

    score, liver, back = json.loads((tmp_path / "out" / "p" / "scores.json").read_text())
    assert score["value"] == 1.0 and score["per_class"] == {"liver": 1.0, "spleen": 1.0}
    assert liver["value"] == 1.0 and liver["per_class"] == {"liver": 1.0}
    inside = np.zeros_like(source["labels"])  # type: ignore[arg-type]
    inside[3:17] = source["labels"][3:17]  # type: ignore[index]
    expected = {}
    for c in (1, 2):
        p, t = inside == c, source["labels"] == c
        expected[str(c)] = 2 * np.count_nonzero(p & t) / (np.count_nonzero(p) + np.count_nonzero(t))
    assert all(0.5 < v < 1.0 for v in expected.values())
    assert back["per_class"] == pytest.approx({"liver": expected["1"], "spleen": expected["2"]})


def test_full_seg_against_its_source_is_dice_1(source: dict[str, object], tmp_path: Path) -> None:
    from medasl.ops import metrics

    seg = io.dicom_file(_write_seg(source, "BINARY", tmp_path / "seg.dcm"))
    reference = seg.with_array(np.asarray(source["labels"])).with_names(())
    assert metrics.dice(seg, reference) == 1.0
    assert metrics.per_class("dice", seg, reference) == {1: 1.0, 2: 1.0}


def test_a_file_that_is_not_a_seg(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        io.dicom_seg(MR_SMALL)
    assert info.value.code == "E1042" and "not a segmentation" in info.value.message
    (tmp_path / "x.dcm").write_bytes(b"nonsense")
    with pytest.raises(DataError) as info:
        io.dicom_seg(tmp_path / "x.dcm")
    assert info.value.code == "E1003"


def _xray_dicom(path: Path, photometric: str = "MONOCHROME2") -> Path:
    """A DX radiograph made from a real chest X-ray PNG, 0.143 mm pixels."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian, generate_uid

    pixels = sitk.GetArrayFromImage(sitk.ReadImage(str(XRAY_PNG))).astype(np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = "DX", "test"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.ImagerPixelSpacing = ds.PixelSpacing = [0.143, 0.143]
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def test_a_single_frame_dicom_is_2d(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: 512x512x1, so `resize((256, 256))` on an X-ray crashed (exit 70)."""
    path = _xray_dicom(tmp_path / "chest.dcm")
    xray = io.dicom_file(path)
    assert xray.dim == 2 and xray.shape == (512, 512) and xray.modality == "XR"
    assert xray.spacing == pytest.approx((0.143, 0.143))
    assert np.array_equal(xray.array, sitk.GetArrayFromImage(sitk.ReadImage(str(XRAY_PNG))))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "p.medas").write_text("""import std.io, std.pre
pipeline p {
  xray = dicom_file("chest.dcm") as Image[2, XR]
  w = write_nifti(xray |> resize((256, 256)), "small.nii.gz")
}
""")
    code, _, err = cli("run", "p.medas", "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "out"))
    assert code == 0, err
    assert sitk.ReadImage(str(tmp_path / "out" / "p" / "small.nii.gz")).GetSize() == (256, 256)
    (tmp_path / "q.medas").write_text("""import std.io
pipeline q {
  xray = dicom_file("chest.dcm") as Image[3, XR]
}
""")
    code, _, err = cli("run", "q.medas", "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "out"))
    assert code == 1 and "error[E1041]" in err and "chest.dcm is a 2-D image (512x512)" in err


def test_a_single_ct_slice_keeps_its_in_plane_geometry() -> None:
    ref = sitk.ReadImage(str(DATA / "dicom_small_pydicom" / "CT_small.dcm"))
    ct = io.dicom_file(DATA / "dicom_small_pydicom" / "CT_small.dcm")
    assert ct.dim == 2 and ct.modality == "CT"
    assert ct.spacing == pytest.approx(ref.GetSpacing()[:2]) and ct.origin == pytest.approx(ref.GetOrigin()[:2])
    assert np.array_equal(ct.array, sitk.GetArrayFromImage(ref)[0])


def test_monochrome1_is_inverted_as_documented(tmp_path: Path) -> None:
    """MONOCHROME1 (higher values darker) comes out as 2^BitsStored - 1 - v."""
    stored = sitk.GetArrayFromImage(sitk.ReadImage(str(XRAY_PNG))).astype(np.int64)
    plain = io.dicom_file(_xray_dicom(tmp_path / "m2.dcm", "MONOCHROME2"))
    inverted = io.dicom_file(_xray_dicom(tmp_path / "m1.dcm", "MONOCHROME1"))
    assert np.array_equal(plain.array, stored)
    assert np.array_equal(inverted.array.astype(np.int64), 4095 - stored)
