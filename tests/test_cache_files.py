"""What a run leaves in the cache per case (issue 9): at most three files per entry (a
small result is its manifest alone), one index journal per step rather than a file per
case and step, no lock files, and `--dry-run` still says what changed per case."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

pytest.importorskip("SimpleITK", reason="running needs the run extra (pip install -e '.[run]')")
pytest.importorskip("rich", reason="running needs the run extra (pip install -e '.[run]')")

from tests.test_cli import run as cli  # noqa: E402

CASES = 6
PIPELINE = """import std.io, std.pre
pipeline tiny {
  cases = phantom(cases=6, size=(12, 12, 8), seed=3)
  prepared = cases |> window(level=40, width=400) |> rescale(0, 1)
  written = write_nifti(prepared.image, "out/*_ct.nii.gz")
}
"""


def _run(tmp_path: Path, text: str, *args: str) -> tuple[int, str, str]:
    path = tmp_path / "tiny.medas"
    path.write_text(text)
    return cli("run", str(path), "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "out"), *args)


def test_a_run_over_small_cases_leaves_few_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = _run(tmp_path, PIPELINE)
    assert code == 0, err
    root = tmp_path / "cache" / "results"
    entries = [p for p in root.glob("??/*") if p.is_dir()]
    assert len(entries) >= 2 * CASES  # at least the prepared cases and what the writer wrote
    for entry in entries:
        names = sorted(os.listdir(entry))
        assert "manifest.json" in names and len(names) <= 3, names
        assert json.loads((entry / "manifest.json").read_text())["format"] == 2
    small = [e for e in entries if os.listdir(e) == ["manifest.json"]]
    assert len(small) >= 2 * CASES  # 12x12x8 voxels fit in the manifest
    journals = sorted(p.name for p in (root / "index").iterdir())
    assert journals and all(name.endswith(".jsonl") for name in journals)
    assert len(journals) <= 5  # one per step, whatever the number of cases
    assert not list((root / "locks").glob("*.lock")) if (root / "locks").is_dir() else True
    total = sum(len(files) for _, _, files in os.walk(root))
    assert total <= len(entries) * 3 + len(journals) + 2  # + the digest memo and a lock of its own


def test_dry_run_names_the_change_of_each_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert _run(tmp_path, PIPELINE)[0] == 0
    code, out, err = _run(tmp_path, PIPELINE.replace("level=40", "level=50"), "--dry-run")
    assert code == 0, err
    text = out + err
    # read from the step journals: every case stale, and why (the fusion passes may show
    # the change as one of a fused chain's parameters)
    assert "level" in text and "50" in text and f"{CASES} stale" in text, text
    assert "no earlier result" not in text, text
