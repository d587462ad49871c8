"""The front-end commands (`check`, `graph`, `compile --emit`) must stay light: they run in
editors and CI on machines without a GPU stack. Each runs in a fresh interpreter under
`python -X importtime`, and no heavy package may appear among the imported modules."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "SimpleITK", "monai", "numpy", "scipy", "rich")

# A small pipeline that uses every standard module, so that no operator's import can hide.
SMALL = """\
import std.io, std.data, std.pre, std.aug, std.nets, std.losses, std.train
import std.post, std.metrics, std.viz, std.report

pipeline small {
  param lr = 1e-3 search loguniform(1e-5, 1e-2)
  cases = folder("data", image="img-*.nii.gz", label="seg-*.nii.gz") as Dataset<Pair<Image[3, CT], LabelMap[3, 2]>>
  parts = split(cases, val=0.2)
  prep(x) = x |> resample(spacing=(1.5, 1.5, 2.0) mm) |> window(level=40, width=400)
  train_cases = parts.train |> prep |> flip(axis=0) |> patches(size=(96, 96, 64))
  net = unet3d(classes=2)
  fit = train(net, train_cases, loss=dice_ce, optimizer=adam(lr), epochs=10)
  pred = infer(fit, parts.val.image |> prep, window=(128, 128, 96))
  labels = pred |> argmax |> largest_component |> resample_to(parts.val.image)
  score = dice(labels, parts.val.label) maximize
  show loss_curve(fit), overlay(parts.val.image, labels)
  report excel("scores.xlsx", score), html("report.html")
}
"""


@pytest.fixture(scope="module")
def small_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("light") / "small.medas"
    path.write_text(SMALL, encoding="utf-8")
    return path


def _inputs(small_file: Path) -> list[Path]:
    examples = sorted((ROOT / "examples").glob("*.medas"))
    return [small_file, *examples[:1]]


def imported_modules(args: list[str]) -> tuple[set[str], subprocess.CompletedProcess]:
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "medasl.cli", *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    modules = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines()
               if line.startswith("import time:")}
    return modules, proc


def assert_light(args: list[str]) -> None:
    modules, proc = imported_modules(args)
    assert proc.returncode == 0, f"medasc {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    assert "medasl.syntax.parser" in modules, "importtime output not understood (the parser was not imported)"
    heavy = sorted(m for m in modules if m.split(".")[0] in HEAVY)
    assert not heavy, f"`medasc {' '.join(args)}` imported {', '.join(heavy)}"


def test_check_is_light(small_file: Path) -> None:
    for path in _inputs(small_file):
        assert_light(["check", str(path)])


def test_graph_is_light(small_file: Path, tmp_path: Path) -> None:
    for path in _inputs(small_file):
        assert_light(["graph", str(path), "-o", str(tmp_path / f"{path.stem}.dot")])


def test_compile_emit_is_light(small_file: Path) -> None:
    for path in _inputs(small_file):
        assert_light(["compile", "--emit", "ir", str(path)])
        assert_light(["compile", "--emit", "ast", str(path)])
