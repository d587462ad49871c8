"""The standard library catalog: documented, versioned, and its defaults fit their
own parameter types. Also: the JSON snapshot gives back exactly what parsing gives."""

from __future__ import annotations

import pytest

from medasl.ir.types import BOOL, DEG, FLOAT, INT, MM, STR, Ty, TyLike, vec
from medasl.semantics import snapshot
from medasl.semantics.matching import Mismatch, finalize, fit
from medasl.semantics.modules import STDLIB_DIR, Stdlib, stdlib
from medasl.syntax import ast

STD = stdlib()
OPS = STD.all_ops()

REQUIRED_AREAS = {"io", "pre", "aug", "data", "nets", "losses", "train", "post", "metrics", "viz", "report"}


def test_areas() -> None:
    assert {m.split(".")[1] for m in STD.modules} == REQUIRED_AREAS


@pytest.mark.parametrize("name", sorted(OPS))
def test_documented_and_versioned(name: str) -> None:
    op = OPS[name]
    assert op.summary, f"{name} has no `##` summary"
    assert op.has("version")


def _default_type(expr: ast.Expr, slot: TyLike) -> TyLike | None:
    if isinstance(expr, ast.Number):
        if expr.unit in ("mm", "cm", "um"):
            return MM
        if expr.unit in ("deg", "rad"):
            return DEG
        return INT if isinstance(expr.value, int) else FLOAT
    if isinstance(expr, ast.String):
        return STR
    if isinstance(expr, ast.Bool):
        return BOOL
    if isinstance(expr, ast.Tuple):
        inner = slot.params[0] if isinstance(slot, Ty) and slot.params else None
        items = [_default_type(i, inner) for i in expr.items]  # type: ignore[arg-type]
        elem = MM if expr.unit in ("mm", "cm", "um") else (FLOAT if FLOAT in items else items[0])
        return vec(elem, len(items))  # type: ignore[arg-type]
    if isinstance(expr, ast.Name):
        if expr.id == "none":
            return None
        assert isinstance(slot, Ty) and slot.name in STD.enums, f"`{expr.id}` given to a {slot} slot"
        assert expr.id in STD.enums[slot.name].values
        return None
    if isinstance(expr, ast.Call):
        assert isinstance(expr.func, ast.Name) and expr.func.id in OPS
        return finalize(OPS[expr.func.id].result)
    raise AssertionError(f"unexpected default {expr}")


PARAMS_WITH_DEFAULTS = [(op.name, p.name) for op in OPS.values() for p in op.params if p.default is not None]


@pytest.mark.parametrize(("op_name", "param_name"), PARAMS_WITH_DEFAULTS)
def test_default_fits_its_slot(op_name: str, param_name: str) -> None:
    param = OPS[op_name].param(param_name)
    assert param is not None and param.default is not None
    actual = _default_type(param.default, param.type)
    if actual is not None:
        try:
            fit(actual, param.type, {})
        except Mismatch as exc:
            pytest.fail(f"{op_name}({param_name}=...): default {exc}")


def test_snapshot_round_trip() -> None:
    fresh = Stdlib.__new__(Stdlib)
    fresh.modules, fresh.sources = {}, {}
    files = sorted(STDLIB_DIR.glob("*.medas"))
    for path in files:
        from medasl.source import SourceFile

        fresh.sources[f"<std.{path.stem}>"] = SourceFile(f"<std.{path.stem}>", path.read_text())
    fresh._build(files)
    again = snapshot.loads(snapshot.dumps((fresh.modules, fresh.enums)))
    assert again == (fresh.modules, fresh.enums)
