"""The applications' smoke settings run end to end on the shared sample data: a trained
model, predictions on the original scan grids, metrics, figures and reports. (The
quickstart is tested in tests/test_run_models.py, nuclei in tests/test_example_nuclei.py.)"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="training needs the run extra (pip install -e '.[run]')")
pytest.importorskip("monai", reason="training needs the run extra (pip install -e '.[run]')")

import SimpleITK as sitk  # noqa: E402, N813

from tests.conftest import ROOT, shared_data  # noqa: E402
from tests.test_cli import run  # noqa: E402
from tests.test_run_models import constant_predictor, metric_inputs  # noqa: E402

DATA = shared_data(module=True)


def _metrics(err: str) -> dict[str, float]:
    """`name = metric value ...` lines printed after a run."""
    found = {}
    for line in err.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[1] == "=" and parts[2].isidentifier():
            try:
                found[parts[0]] = float(parts[3])
            except ValueError:
                continue
    return found


def _run_example(name: str, tmp_path: Path) -> str:
    code, _, err = run("run", str(ROOT / "examples" / f"{name}.medas"), "--cache-dir", str(tmp_path / "cache"),
                       "--out", str(tmp_path / "out"))
    assert code == 0, err
    return err


def _beats_a_constant_predictor(example: str, tmp_path: Path, found: dict[str, float], measured: str,
                                metric: str, choices: range, **options: object) -> None:
    """Training learned something: the run's `measured` beats the best predictor that
    ignores the images (one label everywhere, one class for all) on the same cases."""
    cases = metric_inputs(ROOT / "examples" / f"{example}.medas", tmp_path / "cache", measured)["target"]
    trivial = constant_predictor(metric, cases, choices, **options)
    assert found[measured] > trivial, (measured, found[measured], trivial)


def test_liver_smoke(tmp_path: Path) -> None:
    err = _run_example("liver", tmp_path)
    metrics = _metrics(err)
    assert 0.0 <= metrics["score"] <= 1.0 and metrics["boundary"] >= 0.0, metrics
    # No check that training learned: the smoke setting (4 epochs on one case) predicts liver
    # everywhere, its Dice (0.1307) is that of the constant predictor (issue 10's report).
    out = tmp_path / "out" / "liver_contour"
    for name in ("liver.html", "liver_dice.xlsx", "liver_hd95.xlsx", "figures/loss_curve.png"):
        assert (out / name).stat().st_size > 0, name


def test_thorax_smoke_writes_contours_on_the_dicom_grid(tmp_path: Path) -> None:
    err = _run_example("thorax_organs", tmp_path)
    metrics = _metrics(err)
    assert 0.0 <= metrics["overlap"] <= 1.0 and 0.0 <= metrics["surface"] <= 1.0, metrics
    assert math.isfinite(metrics["boundary"])
    # about 0.13 and 0.08 against 0.03 for the best organ everywhere
    _beats_a_constant_predictor("thorax_organs", tmp_path, metrics, "overlap", "dice", range(5))
    _beats_a_constant_predictor("thorax_organs", tmp_path, metrics, "surface", "surface_dice", range(5),
                                tolerance=3.0)
    (contours,) = (tmp_path / "out" / "thorax_organs" / "out" / "thorax").glob("*_organs.nii.gz")
    written = sitk.ReadImage(str(contours))
    reader = sitk.ImageSeriesReader()
    dicom = DATA / "ct_dicom_series_totalsegmentator" / "dicom"
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(dicom)))
    series = reader.Execute()
    assert written.GetSize() == series.GetSize()
    for got, want in ((written.GetSpacing(), series.GetSpacing()), (written.GetOrigin(), series.GetOrigin()),
                      (written.GetDirection(), series.GetDirection())):
        assert all(abs(a - b) < 1e-3 for a, b in zip(got, want)), (got, want)
    values = set(sitk.GetArrayFromImage(written).ravel().tolist())
    assert values <= {0, 1, 2, 3, 4}  # label values only: never interpolated


LUNG_SERIES = "1.3.6.1.4.1.14519.5.2.1.6655.2359.207154000096236603057216610983"


def test_lung_nodules_smoke_detects_in_world_mm_and_classifies_cubes(tmp_path: Path) -> None:
    """Both pipelines on the one annotated chest CT (train and validate on it: `k=1`)."""
    err = _run_example("lung_nodules", tmp_path)
    metrics = _metrics(err)
    assert 0.0 <= metrics["cpm"] <= 1.0 and 0.0 <= metrics["val_auc"] <= 1.0, metrics
    assert 0.0 <= metrics["val_accuracy"] <= 1.0
    # training learned: better than one class for every cube, and than no detections (CPM 0)
    _beats_a_constant_predictor("lung_nodules", tmp_path, metrics, "val_auc", "auc", range(2))
    _beats_a_constant_predictor("lung_nodules", tmp_path, metrics, "val_accuracy", "accuracy", range(2))
    assert metrics["cpm"] > 0.0, metrics
    detection = tmp_path / "out" / "lung_nodule_detection"
    (candidates,) = (detection / "out" / "luna16").glob("*_candidates.csv")
    assert candidates.name == f"{LUNG_SERIES}_candidates.csv"
    with open(candidates, newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows and {r["seriesuid"] for r in rows} == {LUNG_SERIES}  # the case id, as LUNA16 submissions want
    # candidates lie in the scan (world mm, LPS): x -173..158, y -294..37, z 80..312 (loose: boxes may stick out)
    for r in rows:
        x, y, z = (float(r[k]) for k in ("coordX", "coordY", "coordZ"))
        assert -200 < x < 190 and -320 < y < 70 and 40 < z < 350, r
    malignancy = tmp_path / "out" / "nodule_malignancy"
    for path in (detection / "lung_nodule_detection.html", detection / "luna16_froc.csv",
                 detection / "figures" / "froc_curve.png", malignancy / "nodule_malignancy.html",
                 malignancy / "malignancy_auc.csv", malignancy / "figures" / "grad_cam.png",
                 malignancy / "figures" / "roc_curve.png"):
        assert path.stat().st_size > 0, path
    assert list((detection / "figures").glob("box_overlay*.png"))
