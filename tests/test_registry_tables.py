"""The registry answers whether an operator exists from tables, without importing the
operator modules (tests/test_cached_run_is_light.py shows why). These tests keep the
tables honest: they must say exactly what the modules' `OPERATORS`, `SOURCES` and
top-level imports say, and asking them must import nothing."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from medasl.runtime import registry
from medasl.semantics.modules import stdlib
from tests.conftest import ROOT

AREAS = sorted(registry.OPERATORS)


def test_every_operator_module_has_a_table() -> None:
    modules = {p.stem for p in (ROOT / "medasl" / "ops").glob("*.py") if p.stem != "__init__"}
    assert set(registry.OPERATORS) == modules
    assert set(registry.NEEDS) == modules


@pytest.mark.parametrize("area", AREAS)
def test_the_table_lists_the_modules_operators(area: str) -> None:
    for library in registry.NEEDS[area]:
        pytest.importorskip(library)
    module = importlib.import_module(f"medasl.ops.{area}")
    assert registry.OPERATORS[area] == frozenset(module.OPERATORS)


def test_the_table_lists_the_sources() -> None:
    from medasl.ops import io

    assert registry.SOURCES == frozenset(io.SOURCES)
    for op in registry.SOURCES:
        assert registry.source(op) is io.SOURCES[op]
    assert registry.source("resample") is None and registry.source("split") is None


@pytest.mark.parametrize("area", AREAS)
def test_each_operator_is_declared_in_its_area(area: str) -> None:
    """`area` answers from the table; it must agree with the stdlib, which it used to ask."""
    for op in registry.OPERATORS[area]:
        sig = stdlib().find_op(op)
        assert sig is not None and sig.module == f"std.{area}", op
        assert registry.area(op) == area


def _third_party_imports(area: str, seen: set[str] | None = None) -> set[str]:
    """The libraries importing medasl/ops/<area>.py imports: its module-level `import`
    statements (not those inside functions or under `if TYPE_CHECKING`), following the
    other operator modules it imports at module level."""
    seen = seen if seen is not None else set()
    seen.add(area)
    tree = ast.parse((ROOT / "medasl" / "ops" / f"{area}.py").read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in tree.body:
        names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                 [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else [])
        for name in names:
            top = name.split(".")[0]
            if name.startswith("medasl.ops."):
                other = name.split(".")[2]
                if other not in seen:
                    found |= _third_party_imports(other, seen)
            elif top not in sys.stdlib_module_names and top not in ("medasl", "__future__"):
                found.add(top)
    return found


@pytest.mark.parametrize("area", AREAS)
def test_needs_lists_what_importing_the_module_imports(area: str) -> None:
    assert set(registry.NEEDS[area]) == _third_party_imports(area)


PROBE = """
import sys
from pathlib import Path
from medasl.runtime import registry
from medasl.semantics.modules import stdlib

ops = sorted(stdlib().all_ops()) + ["no_such_operator"]
answers = [(registry.implemented(op), registry.area(op), registry.missing_dependency(op)) for op in ops]
assert sum(a[0] for a in answers) > 100, answers
for op in ops:
    registry.source(op) if op not in registry.SOURCES else None
print(" ".join(sorted(m for m in sys.modules if m.startswith("medasl.ops.") or m.split(".")[0] in
                      ("torch", "monai", "SimpleITK", "matplotlib", "numpy", "scipy"))))
"""


def test_asking_whether_operators_exist_imports_no_operator_module() -> None:
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == []


def test_a_missing_library_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without PyTorch, networks cannot run: `implemented` says so and names the library,
    from the tables alone (E2001 before anything runs)."""
    monkeypatch.setattr(registry, "_INSTALLED", {"torch": False})
    monkeypatch.setattr(registry, "_MISSING", {})
    assert not registry.implemented("unet3d") and registry.missing_dependency("unet3d") == "torch"
    assert not registry.implemented("dice_ce") and registry.missing_dependency("dice_ce") == "torch"
    assert registry.implemented("split") and registry.implemented("resample")
    assert registry.missing_dependency("resample") is None


def test_a_declared_operator_without_implementation_is_not_implemented(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(registry._AREAS, "parallel_coordinates")  # as an operator declared before it is written
    assert not registry.implemented("parallel_coordinates")
    assert registry.area("parallel_coordinates") == "viz"
    assert registry.missing_dependency("parallel_coordinates") is None  # not missing a library: not written yet
    assert registry.area("no_such_operator") is None and not registry.implemented("no_such_operator")


def test_a_missing_library_stops_the_run_with_e2001(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from tests.test_cli import run

    source = tmp_path / "nets.medas"
    source.write_text("import std.io, std.nets\npipeline p {\n  cases = phantom(cases=2)\n"
                      "  net = unet3d(in_channels=1, classes=2)\n}\n", encoding="utf-8")
    monkeypatch.setattr(registry, "_INSTALLED", {"torch": False})
    monkeypatch.setattr(registry, "_MISSING", {})
    code, _, err = run("run", str(source), "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "out"))
    assert code == 1, err
    assert "error[E2001]" in err and "`unet3d`" in err and "needs torch, which is not installed" in err
    assert not (tmp_path / "cache" / "results").exists() or not any((tmp_path / "cache" / "results").iterdir())
