"""README.md stays true: its test command is the one CI runs, and its first pipeline
checks clean."""

from __future__ import annotations

import re

from medasl.semantics.checker import check_source
from medasl.source import SourceFile
from tests.conftest import ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")


def _code_blocks(text: str) -> list[str]:
    return re.findall(r"```\n(.*?)```", text, flags=re.S)


def test_ci_runs_the_readme_test_command() -> None:
    test_command = next(b.strip() for b in _code_blocks(README) if "pytest" in b)
    ci_lines = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test_command in ci_lines


def test_first_pipeline_checks_clean() -> None:
    block = next(b for b in _code_blocks(README) if b.startswith("import std."))
    result = check_source(SourceFile("README.md", block))
    assert [d.code for d in result.diagnostics] == []
    assert result.graphs and result.graphs[0].name == "liver"


def test_error_example_is_what_check_prints() -> None:
    block = next(b for b in _code_blocks(README) if b.startswith("$ medasc check"))
    expected = (ROOT / "tests/golden/diagnostics/001_window_on_mr.expected").read_text(encoding="utf-8")
    assert block.split("\n", 1)[1].strip() == expected.strip()


def test_language_reference_example_checks_clean() -> None:
    text = (ROOT / "docs" / "language.md").read_text(encoding="utf-8")
    block = next(b for b in _code_blocks(text) if b.startswith("import std.io, std.pre, std.data"))
    result = check_source(SourceFile("docs/language.md", block))
    assert [d.code for d in result.diagnostics] == []
