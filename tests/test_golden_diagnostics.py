"""Golden tests: each wrong program in tests/golden/diagnostics/ and its exact
rendered diagnostics. A program's first line says what it gets wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from medasl.diagnostics import render_all_text
from medasl.semantics.checker import check_source
from medasl.source import SourceFile
from tests.conftest import ROOT, compare_golden

CASES = sorted((ROOT / "tests" / "golden" / "diagnostics").glob("*.medas"))


def render_check(path: Path) -> str:
    relative = path.relative_to(ROOT).as_posix()
    source = SourceFile(relative, path.read_text(encoding="utf-8"))
    result = check_source(source)
    return render_all_text(result.diagnostics.sorted(), result.sources) + "\n"


@pytest.mark.parametrize("case", CASES, ids=[c.stem for c in CASES])
def test_diagnostics(case: Path) -> None:
    rendered = render_check(case)
    assert "error" in rendered or "warning" in rendered, f"{case.name} produced no diagnostic"
    compare_golden(rendered, case.with_suffix(".expected"))


def test_enough_distinct_cases() -> None:
    codes = set()
    for case in CASES:
        expected = case.with_suffix(".expected")
        if expected.exists():
            text = expected.read_text(encoding="utf-8")
            codes.update(line.split("]")[0].split("[")[1] for line in text.splitlines()
                         if line.startswith(("error[", "warning[")))
    assert len(CASES) >= 30
    assert len(codes) >= 25, sorted(codes)
