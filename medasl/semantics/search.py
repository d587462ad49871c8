"""Search spaces of parameters: `param lr = 1e-3 search loguniform(1e-4, 1e-2)`.

Checked here so that a tuning run never starts with bounds hyperopt would reject or,
worse, silently accept (a default outside its own range, a log scale through zero).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from medasl.diagnostics import label, secondary
from medasl.ir.graph import Const, OpRef, Ref, format_value
from medasl.ir.types import FLOAT, INT, UNKNOWN, Fn, Ty, TyLike, format_type, with_attr
from medasl.semantics.matching import ERROR, Mismatch, fit
from medasl.semantics.suggest import did_you_mean
from medasl.syntax import ast

if TYPE_CHECKING:
    from medasl.semantics.checker import PipelineChecker, Val

# kind -> (number of bounds, element type of the bounds)
NUMERIC_SPACES: dict[str, tuple[int, TyLike]] = {
    "uniform": (2, FLOAT),
    "loguniform": (2, FLOAT),
    "quniform": (3, FLOAT),
    "int": (2, INT),
}
SPACES = (*NUMERIC_SPACES, "choice")


def check_search(stmt: ast.Param, default: Val, ptype: TyLike, pc: PipelineChecker) -> dict[str, object] | None:
    space = stmt.search
    assert space is not None
    if space.kind not in SPACES:
        pc.error("E0503", f"unknown search space `{space.kind}`", label(space.kind_span, "not a search space"),
                 help=did_you_mean(space.kind, SPACES) or f"search spaces are {', '.join(SPACES)}")
        return None
    if any(a.name is not None for a in space.args):
        named = next(a for a in space.args if a.name is not None)
        pc.error("E0501", f"`{space.kind}` takes its bounds in order, without names",
                 label(named.name_span or named.span, "named argument"),
                 help=f"write `{space.kind}(low, high)`" if space.kind != "choice" else "write `choice(a, b, c)`")
        return None
    if space.kind == "choice":
        return _choice(stmt, default, ptype, pc)
    return _numeric(stmt, default, ptype, pc)


def _numeric(stmt: ast.Param, default: Val, ptype: TyLike, pc: PipelineChecker) -> dict[str, object] | None:
    space = stmt.search
    assert space is not None
    count, bound_type = NUMERIC_SPACES[space.kind]
    if len(space.args) != count:
        shape = {"quniform": "quniform(low, high, step)"}.get(space.kind, f"{space.kind}(low, high)")
        pc.error("E0501", f"`{space.kind}` takes {count} numbers, given {len(space.args)}",
                 label(space.span, f"write `{shape}`"))
        return None
    values = []
    for arg in space.args:
        val = pc.expr(arg.value)
        if val.type == ERROR:
            return None
        if not (isinstance(val.value, Const) and val.type in (INT, FLOAT)):
            pc.error("E0501", f"the bounds of `{space.kind}` must be numbers, found {format_type(val.type)}",
                     label(arg.span, "not a number"))
            return None
        if bound_type == INT and val.type != INT:
            pc.error("E0501", "the bounds of `int` must be whole numbers", label(arg.span, "not a whole number"),
                     help="use `quniform(low, high, step)` or `uniform(low, high)` for real numbers")
            return None
        values.append(val.value.value)
    if ptype not in (INT, FLOAT) and ptype != ERROR:
        pc.error("E0504", f"`{space.kind}` searches numbers, but `{stmt.name}` is {format_type(ptype)}",
                 label(space.span, "a numeric search space"), secondary(stmt.default.span, f"this is {format_type(ptype)}"),
                 help="use `choice(...)` to search among values that are not numbers")
        return None
    if ptype == INT and bound_type != INT:
        pc.warning("W0005", f"`{stmt.name}` is a whole number but `{space.kind}` draws real numbers",
                   label(space.kind_span, "draws real numbers"),
                   help=f"use `int({values[0]}, {values[1]})` to search whole numbers")
    low, high = values[0], values[1]
    if not low < high:
        pc.error("E0501", f"the lower bound of `{space.kind}` must be below the upper bound, found {low} and {high}",
                 label(space.span, "empty range"), help=f"write `{space.kind}({high}, {low}{', ...' if count == 3 else ''})`")
        return None
    if space.kind == "loguniform" and low <= 0:
        pc.error("E0501", f"`loguniform` needs bounds above zero, found {low}",
                 label(space.args[0].span, "a log scale cannot reach 0 or below"),
                 help="use `uniform(low, high)` for a range that includes zero")
        return None
    if space.kind == "quniform":
        step = values[2]
        if not 0 < step <= high - low:
            pc.error("E0501", f"the step of `quniform` must be above zero and at most {high - low}, found {step}",
                     label(space.args[2].span, "invalid step"))
            return None
    if isinstance(default.value, Const) and isinstance(default.value.value, int | float):
        d = default.value.value
        if not low <= d <= high:
            pc.error("E0502", f"the default {d} of `{stmt.name}` lies outside its search range [{low}, {high}]",
                     label(stmt.default.span, "outside the range"), secondary(space.span, "searched range"),
                     help="the default is the first trial and the value of a plain run: put it inside the range")
            return None
    return {"kind": space.kind, "args": values}


def _choice(stmt: ast.Param, default: Val, ptype: TyLike, pc: PipelineChecker) -> dict[str, object] | None:
    space = stmt.search
    assert space is not None
    if len(space.args) < 2:
        pc.error("E0501", "`choice` needs at least two options", label(space.span, "nothing to choose from"),
                 help="list the alternatives: `choice(a, b, c)`")
        return None
    options = []
    ok = True
    for arg in space.args:
        val = pc.expr(arg.value, ptype if isinstance(ptype, Ty) else None)
        if val.type == ERROR:
            ok = False
            continue
        try:
            fit(val.type, _open_attributes(ptype, val.type), {})
        except Mismatch:
            if isinstance(val.type, Fn) and isinstance(ptype, Fn) and isinstance(val.value, OpRef):
                kind, wanted = _result_kind(val.type), _result_kind(ptype)
                if kind != wanted:
                    plural = wanted.split(" ", 1)[1] + ("es" if wanted.endswith("s") else "s")
                    pc.error("E0504", f"`{val.value.op}` is {kind}, but the choices of `{stmt.name}` are {plural}",
                             label(arg.span, f"{kind}, not {wanted}"),
                             secondary(stmt.default.span, f"the default is {wanted}"),
                             help=did_you_mean(val.value.op + "_loss", _ops_returning(pc, ptype)) if wanted == "a loss" else None)
                    ok = False
                    continue
            pc.error("E0504", f"every option of `choice` must be of the type of `{stmt.name}`, {format_type(ptype)}; "
                     f"found {format_type(val.type)}",
                     label(arg.span, f"this is {format_type(val.type)}"),
                     secondary(stmt.default.span, f"the default is {format_type(ptype)}"))
            ok = False
            continue
        options.append(_option(val, pc))
    if not ok:
        return None
    if _option(default, pc) not in options:
        pc.error("E0502", f"the default of `{stmt.name}` is not one of its choices",
                 label(stmt.default.span, "not among the choices"), secondary(space.span, "the choices"),
                 help="add the default to the choices")
        return None
    return {"kind": "choice", "args": options}


def _open_attributes(ptype: TyLike, option: TyLike) -> TyLike:
    """The parameter's type with the attributes that an option of the same kind may
    change: a U-Net and an FCN down-sample by different factors. Each trial checks the
    pipeline again with the option it draws (`medasc tune`), so the rules that read such
    an attribute (a crop divisible by the network) are applied to the option itself."""
    if isinstance(ptype, Ty) and isinstance(option, Ty) and ptype.name == option.name == "Model":
        return with_attr(ptype, "downsample", UNKNOWN)
    return ptype


def _result_kind(t: Fn) -> str:
    name = t.result.name if isinstance(t.result, Ty) else "value"
    return {"Loss": "a loss", "Metric": "a metric"}.get(name, f"a {name}")


def _ops_returning(pc: PipelineChecker, t: Fn) -> list[str]:
    kind = "loss" if _result_kind(t) == "a loss" else "metric"
    return [op.name for op in pc.loader.std.all_ops().values() if op.has(kind)]


def _option(val: Val, pc: PipelineChecker) -> object:
    if isinstance(val.value, OpRef):
        return "@" + val.value.op
    if isinstance(val.value, Const):
        return val.value.value
    if isinstance(val.value, Ref) and val.value.node in pc.graph.nodes:
        # a network written as an option (`choice(unet2d(...), fcn2d(...))`): the call as
        # written, so that the default is recognised among the options and the space names
        # each option by what it builds, not by an internal node name
        node = pc.graph.nodes[val.value.node]
        return f"{node.op}({', '.join(f'{k}={format_value(v)}' for k, v in node.args)})"
    return str(val.value)
