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
