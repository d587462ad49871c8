"""Every example checks clean (no errors, no warnings), and its typed IR matches the
snapshot in tests/golden/ir/ (rewrite with MEDASL_UPDATE_GOLDEN=1 and review the diff)."""

from __future__ import annotations

from pathlib import Path

import pytest

from medasl.diagnostics import render_all_text
from medasl.semantics.checker import check_source
from medasl.source import SourceFile
from tests.conftest import ROOT, compare_golden

EXAMPLES = sorted((ROOT / "examples").glob("*.medas"))
APPLICATIONS = {"quickstart", "liver", "thorax_organs", "lung_nodules", "alzheimer", "nuclei"}


def test_the_applications_are_there() -> None:
    assert APPLICATIONS <= {e.stem for e in EXAMPLES}


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.stem for e in EXAMPLES])
def test_example_checks_clean_and_matches_ir_snapshot(example: Path) -> None:
    relative = example.relative_to(ROOT).as_posix()
    result = check_source(SourceFile(relative, example.read_text(encoding="utf-8")))
    assert len(result.diagnostics) == 0, render_all_text(result.diagnostics.sorted(), result.sources)
    dump = "\n\n".join(g.dump() for g in result.graphs) + "\n"
    compare_golden(dump, ROOT / "tests" / "golden" / "ir" / f"{example.stem}.ir")


def test_every_example_previews_cleanly(tmp_path: Path) -> None:
    """`medasc run --dry-run` on each example: every one runs by default (its smoke
    setting), so every preview lists its steps without a diagnostic."""
    from tests.test_cli import run

    for example in sorted((ROOT / "examples").glob("*.medas")):
        code, _, err = run("run", str(example), "--dry-run", "--cache-dir", str(tmp_path / "cache"),
                           "--out", str(tmp_path / "out"))
        assert code == 0 and "dry run" in err and "error" not in err, (example.name, err)


def test_the_main_job_runs_the_preprocess_example(tmp_path: Path) -> None:
    from tests.test_cli import run

    args = ("run", str(ROOT / "examples" / "preprocess.medas"), "--cache-dir", str(tmp_path / "cache"),
            "--out", str(tmp_path / "out"))
    code, _, err = run(*args)
    assert code == 0, err
    written = sorted(p.name for p in (tmp_path / "out" / "preprocess" / "val").iterdir())
    assert len(written) == 8 and all(name.endswith(".nii.gz") for name in written)
    code, _, err = run(*args)
    assert code == 0 and "ran" not in err.split("run log")[0].split("┩", 1)[1]  # all cached the second time
