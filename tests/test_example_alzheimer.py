"""examples/alzheimer.medas runs end to end in its smoke setting: 16 subjects simulated
by `atrophy_phantom` from the MNI152 template in ../shared/data, a ResNet-10 for a few
epochs on the CPU, test AUC and accuracy, the figures (occlusion maps included) and the
JSON, Excel and HTML reports. The numbers prove nothing about real Alzheimer's disease."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="training needs the run extra (pip install -e '.[run]')")
pytest.importorskip("monai", reason="training needs the run extra (pip install -e '.[run]')")

from tests.conftest import ROOT  # noqa: E402
from tests.test_examples_smoke import _metrics, _run_example  # noqa: E402 (skips without the shared data)
from tests.test_run_models import constant_predictor, metric_inputs  # noqa: E402

EXAMPLE = ROOT / "examples" / "alzheimer.medas"

FIGURES = ("loss_curve", "metric_curve", "roc_curve", "confusion_matrix", "occlusion")
REPORTS = ("alzheimer_test_auc.json", "alzheimer_test_accuracy.xlsx", "alzheimer.html")


def test_the_alzheimer_example_runs_its_smoke_setting(tmp_path: Path) -> None:
    err = _run_example("alzheimer", tmp_path)
    metrics = _metrics(err)
    for name in ("val_auc", "test_auc", "test_accuracy"):
        assert 0.0 <= metrics[name] <= 1.0, metrics
    # learned: better than one class for every subject (AUC 0.5, accuracy of the larger
    # group) on the same subjects; the smoke run reaches AUC 1.0 and accuracy 0.75 on 4
    for name, metric in (("val_auc", "auc"), ("test_auc", "auc"), ("test_accuracy", "accuracy")):
        subjects = metric_inputs(EXAMPLE, tmp_path / "cache", name)["target"]
        assert len(subjects) == 4
        trivial = constant_predictor(metric, subjects, range(2))
        assert metrics[name] > trivial, (name, metrics[name], trivial)
    out = tmp_path / "out" / "alzheimer_t1"
    for name in (*REPORTS, *(f"figures/{f}.png" for f in FIGURES)):
        assert (out / name).stat().st_size > 0, name
    (auc,) = json.loads((out / "alzheimer_test_auc.json").read_text())
    assert auc["metric"] == "auc" and auc["value"] == metrics["test_auc"]
