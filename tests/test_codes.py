"""Every diagnostic code the sources can report is documented, and documented examples
are real medas."""

from __future__ import annotations

import re

import pytest

from medasl.codes import CODES, explain
from medasl.diagnostics import Diagnostics
from medasl.source import SourceFile
from medasl.syntax.parser import parse
from tests.conftest import ROOT

CODE_PATTERN = re.compile(r'"([EW]\d{4})"')


def _codes_in_sources() -> set[str]:
    found = set()
    for path in (ROOT / "medasl").rglob("*.py"):
        if path.name == "codes.py":
            continue
        found.update(CODE_PATTERN.findall(path.read_text(encoding="utf-8")))
    return found


def test_every_reported_code_is_explained() -> None:
    missing = _codes_in_sources() - set(CODES)
    assert not missing, f"codes without an explanation in medasl/codes.py: {sorted(missing)}"


def test_no_explanation_for_a_code_nobody_reports() -> None:
    assert set(CODES) - _codes_in_sources() == set()


@pytest.mark.parametrize("code", sorted(CODES))
def test_explanation_renders(code: str) -> None:
    text = explain(code)
    assert text is not None and text.startswith(f"{code}: {CODES[code].title}")


@pytest.mark.parametrize("code", sorted(c for c, e in CODES.items() if e.fix))
def test_fixed_example_parses(code: str) -> None:
    fix = CODES[code].fix
    text = fix if fix.startswith(("import", "pipeline")) else "pipeline example {\n" + fix + "\n}\n"
    diags = Diagnostics()
    assert parse(SourceFile("fix.medas", text), diags) is not None, diags.items
