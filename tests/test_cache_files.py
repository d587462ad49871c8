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
        assert json.loads((entry / "manifest.json").read_text())["format"] == 3
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


def test_an_entry_written_before_issue_9_still_loads(tmp_path: Path) -> None:
    """Manifest format 1, the value in value.json and one .npy per array, as earlier
    versions committed it: read as it was, never recomputed nor misread."""
    import numpy as np

    from medasl.runtime.cache import Cache, CacheKey
    from medasl.runtime.tasks import load_ref
    from medasl.runtime.values import Pair, Volume

    cache = Cache(tmp_path / "cache")
    key = CacheKey("phantom", 1, {"case": "old"})
    image, labels = np.arange(60, dtype=np.int16).reshape(3, 4, 5), np.ones((3, 4, 5), np.uint8)
    geometry = {"spacing": [1.0, 1.0, 2.5], "origin": [0.0, 0.0, 0.0], "direction": [1, 0, 0, 0, 1, 0, 0, 0, 1],
                "modality": "CT", "source": None}

    def volume(index: int, array: np.ndarray, kind: str) -> dict[str, object]:
        return {"$": "Volume", "array": {"index": index, "dtype": array.dtype.str, "shape": list(array.shape)},
                "kind": kind, **geometry}

    with cache.write(key) as pending:
        np.save(pending.path / "value.0.npy", image, allow_pickle=False)
        np.save(pending.path / "value.1.npy", labels, allow_pickle=False)
        doc = {"format": 1, "value": {"$": "Pair", "input": volume(0, image, "image"),
                                      "target": volume(1, labels, "labels")}}
        (pending.path / "value.json").write_text(json.dumps(doc, indent=1))
    manifest_path = cache.entry_path(key) / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    assert "value" not in manifest
    manifest["format"] = 1
    manifest_path.write_text(json.dumps(manifest, indent=1))
    value = load_ref(Cache(tmp_path / "cache"), key.digest())
    assert isinstance(value, Pair) and isinstance(value.input, Volume)
    assert np.array_equal(value.input.array, image) and np.array_equal(value.target.array, labels)
    assert value.target.kind == "labels" and not value.input.array.flags.writeable
