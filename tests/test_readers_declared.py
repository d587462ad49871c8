"""What a pipeline declares a file to be is checked when the file is read (issue 10):
label values outside the declared classes are E1040 naming the file and the values, a
file of another dimension than declared is E1041, and a file declared a label map is
read as one. Each test runs `medasc run` as a user would."""

from __future__ import annotations

from pathlib import Path

import pytest

np = pytest.importorskip("numpy", reason="running needs the run extra (pip install -e '.[run]')")
sitk = pytest.importorskip("SimpleITK", reason="running needs the run extra (pip install -e '.[run]')")
pytest.importorskip("rich", reason="running needs the run extra (pip install -e '.[run]')")

from tests.conftest import write_nifti_file  # noqa: E402
from tests.test_cli import run_text  # noqa: E402


def _mask(values: tuple[int, ...] = (0, 255)) -> np.ndarray:
    a = np.full((4, 8, 8), values[0], dtype=np.uint8)
    a[1:3, 2:5, 2:5] = values[1]
    return a


def test_a_mask_holding_255_declared_two_classes_is_e1040(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: read without a diagnostic, and one_hot then made 256 channels."""
    monkeypatch.chdir(tmp_path)
    write_nifti_file(tmp_path / "mask.nii.gz", _mask())
    code, err = run_text(tmp_path, """import std.io
pipeline p {
  mask = nifti("mask.nii.gz") as LabelMap[3, 2]
  w = write_nifti(one_hot(mask), "onehot.nii.gz")
}
""")
    assert code == 1, err
    assert "error[E1040]" in err and "mask.nii.gz" in err and "255" in err and "values found: 0, 255" in err
    assert "select_labels(labels=(255,))" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "p" / "onehot.nii.gz").exists()


def test_the_fix_the_diagnostic_gives_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Declaring 256 values and keeping 255 as class 1 gives a two-channel one-hot map."""
    monkeypatch.chdir(tmp_path)
    write_nifti_file(tmp_path / "mask.nii.gz", _mask())
    code, err = run_text(tmp_path, """import std.io, std.pre
pipeline p {
  mask = nifti("mask.nii.gz") as LabelMap[3, 256] |> select_labels(labels=(255,))
  w = write_nifti(one_hot(mask), "onehot.nii.gz")
}
""")
    assert code == 0, err
    written = sitk.ReadImage(str(tmp_path / "out" / "p" / "onehot.nii.gz"))
    assert written.GetNumberOfComponentsPerPixel() == 2
    channels = sitk.GetArrayFromImage(written)
    assert np.array_equal(channels[..., 1], (_mask() == 255).astype(np.uint8))


def test_a_folder_label_outside_the_classes_names_its_case(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    ct = np.zeros((4, 8, 8), dtype=np.int16)
    for case, values in (("a", (0, 1)), ("b", (0, 2))):
        write_nifti_file(tmp_path / "data" / f"{case}_ct.nii.gz", ct)
        write_nifti_file(tmp_path / "data" / f"{case}_seg.nii.gz", _mask(values))
    code, err = run_text(tmp_path, """import std.io
pipeline p {
  cases = folder("data", image="*_ct.nii.gz", label="*_seg.nii.gz") as Dataset<Pair<Image[3, CT], LabelMap[3, 2]>>
  w = write_nifti(cases.label, "*_seg.nii.gz")
}
""")
    assert code == 1, err
    assert "error[E1040]" in err and "b_seg.nii.gz" in err and "a_seg.nii.gz" not in err.split("error[E1040]")[1]


def test_a_2d_nifti_declared_3d_is_e1041_not_a_crash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: `resample` crashed with exit 70 (`spacing needs 2 values, got 3`)."""
    monkeypatch.chdir(tmp_path)
    img = sitk.GetImageFromArray(np.zeros((8, 8), dtype=np.int16))
    sitk.WriteImage(img, str(tmp_path / "flat.nii.gz"))
    code, err = run_text(tmp_path, """import std.io, std.pre
pipeline p {
  ct = nifti("flat.nii.gz") as Image[3, CT]
  w = write_nifti(ct |> resample(spacing=(2.0, 2.0, 2.0) mm), "r.nii.gz")
}
""")
    assert code == 1, err
    assert "error[E1041]" in err and "flat.nii.gz is a 2-D image (8x8)" in err and "declares it 3-D" in err
    assert "Traceback" not in err


def test_a_3d_file_one_slice_thick_declared_2d_is_that_slice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    slab = np.arange(48, dtype=np.int16).reshape(1, 6, 8)
    write_nifti_file(tmp_path / "slab.nii.gz", slab, spacing=(0.5, 0.7, 3.0), origin=(10.0, 20.0, 30.0))
    code, err = run_text(tmp_path, """import std.io, std.pre
pipeline p {
  xr = nifti("slab.nii.gz") as Image[2, XR]
  w = write_nifti(xr |> resize((4, 3)), "small.nii.gz")
}
""")
    assert code == 0, err
    out = sitk.ReadImage(str(tmp_path / "out" / "p" / "small.nii.gz"))
    assert out.GetDimension() == 2 and out.GetSize() == (4, 3)
    assert out.GetOrigin()[0] > 9.0  # the geometry came along, not a 1 mm grid at 0


def test_a_png_declared_3d_is_refused_before_running(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, err = run_text(tmp_path, """import std.io
pipeline p {
  x = png("x.png") as Image[3, XR]
}
""")
    assert code == 1 and "error[E0202]" in err and "Traceback" not in err
