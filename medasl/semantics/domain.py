"""Medical-imaging rules and the wording of type errors in the user's vocabulary.

Most domain rules are ordinary slot types declared in the standard library (`window`
takes `Image[D, CT]`); this module words their failures (modality, dimensionality,
classes, units) and holds the rules that are not types: interpolation of label maps,
sizes divisible by a network's down-sampling, and objectives against metric goals.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from medasl.diagnostics import label, secondary
from medasl.ir.graph import Const, Graph, OpRef
from medasl.ir.types import (
    LABEL_KINDS,
    MODALITY_DOCS,
    UNKNOWN,
    Fn,
    Ty,
    TyLike,
    attr,
    format_type,
)
from medasl.semantics.matching import ERROR, Mismatch, finalize, resolve
from medasl.semantics.signatures import OpSig
from medasl.syntax import ast

if TYPE_CHECKING:
    from medasl.semantics.calls import Attempt, CallChecker
    from medasl.semantics.checker import PipelineChecker, Val

LINEAR_INTERPOLATIONS = ("linear", "bspline")


def describe_mismatch(m: Mismatch) -> str:
    if m.attr == "modality":
        return f"needs modality {m.expected_value}, found {m.actual_value}"
    if m.attr == "dim":
        return f"needs {m.expected_value}D, found {m.actual_value}D"
    if m.attr == "classes":
        return f"needs {m.expected_value} classes, found {m.actual_value}"
    if m.attr == "length":
        return f"needs {m.expected_value} values, found {m.actual_value}"
    return f"expected {format_type(finalize(m.expected))}"


def report_mismatch(pc: PipelineChecker, m: Mismatch, val: Val, slot: TyLike, what: str,
                    op: OpSig | None, member_of_pair: bool = False) -> None:
    """Word a failed fit as precisely as the disagreement allows."""
    found = format_type(val.type)
    needs = format_type(finalize(m.expected))
    who = f"`{op.name}`" if op else what
    origin = []
    who_is = "the input"
    if val.origin is not None and val.origin_name is not None and val.origin != val.span:
        who_is = "the input" if val.origin_name == "the input" else f"`{val.origin_name}`"
        origin = [secondary(val.origin, f"{who_is} is {found}")]
    hint = None
    if op is not None:
        hints = op.attrs.get("hint")
        if hints and what == f"`{op.params[0].name}`":
            hint = str(hints[0])
    slot_text = f" for {what}" if op is not None and what != f"`{op.params[0].name}`" else ""
    pair_note = (f"inside a pair, `{op.name}` applies to the label too",) if member_of_pair and op else ()
    actual_t, expected_t = m.actual, m.expected

    if _unitless(val.type, slot):
        unit = "mm" if "mm" in format_type(finalize(slot)) else "deg"
        pc.error("E0206", f"{who} needs a unit{slot_text}: this number has none",
                 label(val.span, f"write it with `{unit}`"),
                 help=f"for example `{_example_with_unit(val, unit)}`")
        return
    if m.attr == "modality":
        needs_mod = m.expected_value
        found_mod = m.actual_value
        msg = f"{who} expects {_modality_phrase(str(needs_mod))}, found {format_type(actual_t)}"
        if found_mod == "Any":
            hint = f"declare what the image is where it is read, e.g. `nifti(\"scan.nii.gz\") as Image[3, {needs_mod}]`"
            msg = f"{who} expects {_modality_phrase(str(needs_mod))}, but the modality of this image is not declared"
            if origin:
                origin = [secondary(val.origin, f"{who_is} has no declared modality")]
        pc.error("E0203", msg, label(val.span, f"needs {format_type(finalize(expected_t))}"), *origin,
                 help=hint, notes=pair_note)
        return
    if m.attr == "dim":
        pc.error("E0204", f"{who} expects {m.expected_value}D data{slot_text}, found {m.actual_value}D",
                 label(val.span, f"this is {found}"), *origin,
                 help=hint or _dim_help(op, m), notes=pair_note)
        return
    if m.attr == "classes":
        pc.error("E0205", f"{who} expects {m.expected_value} classes{slot_text}, found {m.actual_value}",
                 label(val.span, f"this is {found}"), *origin,
                 help=hint or "the network's `classes`, the label maps and the metrics must agree on the number of classes (background included)",
                 notes=pair_note)
        return
    if m.attr == "length":
        pc.error("E0209", f"{who} expects {m.expected_value} values{slot_text}, found {m.actual_value}",
                 label(val.span, f"{m.actual_value} values"), *origin,
                 help=hint or "give one value per spatial axis of the image", notes=pair_note)
        return
    if isinstance(val.type, Fn) and isinstance(slot, Fn):
        name = f"`{val.value.op}`" if isinstance(val.value, OpRef) else "this function"
        pc.error("E0211", f"{name} does not fit {what} of {who}: it takes {format_type(m.expected)}, "
                 f"but would be given {format_type(finalize(m.actual))}",
                 label(val.span, f"this is {found}"), *origin,
                 help=hint or "choose an operator made for these inputs (see `medasc explain E0211`)")
        return
    if isinstance(slot, Fn) or isinstance(val.type, Fn):
        pc.error("E0201", f"{who} expects a function{slot_text}, found {found}",
                 label(val.span, f"this is {found}"), *origin,
                 help=hint or "pass an operator by name, e.g. `loss=dice_ce` or `metric=dice`")
        return
    pc.error("E0201", f"{who} expects {needs}{slot_text}, found {found}",
             label(val.span, f"expected {needs}"), *origin, help=hint, notes=pair_note)


def _unitless(actual: TyLike, slot: TyLike) -> bool:
    slot_text = format_type(finalize(slot))
    if not (slot_text.startswith("mm") or slot_text.startswith("deg")):
        return False
    text = format_type(actual)
    return text in ("int", "float") or text.startswith("int[") or text.startswith("float[")


def _example_with_unit(val: Val, unit: str) -> str:
    value = val.value.value if isinstance(val.value, Const) else None
    if isinstance(value, tuple):
        return "(" + ", ".join(str(v) for v in value) + f") {unit}"
    return f"{value if value is not None else 1.0} {unit}"


def _modality_phrase(modality: str) -> str:
    if modality == "CT":
        return "a CT image in Hounsfield units"
    if modality == "Path":
        return "an RGB pathology image"
    return f"a {modality} image ({MODALITY_DOCS.get(modality, modality)})"


def _dim_help(op: OpSig | None, m: Mismatch) -> str:
    if op is not None and op.name in ("train", "infer"):
        return f"use a {m.actual_value}D network for {m.actual_value}D data (e.g. `unet{m.actual_value}d`)"
    return "check the dimensionality of the data and of the operator"


def check_interpolation(cc: CallChecker, member: TyLike, values: dict[str, Val]) -> None:
    """Label maps are never interpolated linearly: new, meaningless label values appear."""
    spec = cc.op.attrs.get("interp")
    if not spec or not (isinstance(member, Ty) and member.name in LABEL_KINDS):
        return
    param = str(spec[0])
    val = values.get(param)
    if val is None or not isinstance(val.value, Const):
        return
    if val.value.value in LINEAR_INTERPOLATIONS:
        cc.pc.error("E0220", f"`{cc.op.name}` would interpolate a label map with `{val.value.value}`",
                    label(val.span, "not allowed for label maps"), secondary(cc.func_span, f"applied to {format_type(member)}"),
                    help=f"use `{param}=auto` (nearest for labels, linear for images) or `{param}=nearest`",
                    notes=("linear interpolation of labels creates values between classes, e.g. 2.5 between kidney and spleen",))


def check_divisible(cc: CallChecker, attempt: Attempt, values: dict[str, Val]) -> None:
    """A crop/patch/window size must be divisible by the network's down-sampling factor."""
    spec = cc.op.attrs.get("divisible")
    if not spec or len(spec) < 2:
        return
    model_param, size_param = str(spec[0]), str(spec[1])
    model = values.get(model_param)
    size_val = values.get(size_param)
    if model is None or size_val is None or not isinstance(model.type, Ty):
        return
    factor = attr(model.type, "downsample") if model.type.name in ("Model", "Trained") else UNKNOWN
    if not isinstance(factor, int) or factor <= 1:
        return
    size = None
    where = size_val.span
    if isinstance(size_val.value, Const) and isinstance(size_val.value.value, tuple):
        size = size_val.value.value
    else:
        image = _first_image(size_val.type)
        if image is not None:
            shape = attr(image, "shape")
            size = shape if isinstance(shape, tuple) else None
    if not size:
        return
    bad = [int(s) for s in size if isinstance(s, int | float) and int(s) % factor]
    if bad:
        fixed = tuple(_round_up(int(s), factor) for s in size)
        cc.pc.error("E0230", f"size {_tuple_text(size)} is not divisible by {factor}, the down-sampling factor of the network",
                    label(where, f"{', '.join(map(str, bad))} not divisible by {factor}"),
                    secondary(model.span, f"down-samples by {factor}"),
                    help=f"use a multiple of {factor} on every axis, e.g. {_tuple_text(fixed)}")


def _first_image(t: TyLike) -> Ty | None:
    if not isinstance(t, Ty):
        return None
    if t.name == "Image":
        return t
    for p in t.params:
        found = _first_image(p)
        if found is not None:
            return found
    return None


def _round_up(n: int, factor: int) -> int:
    return -(-n // factor) * factor


def _tuple_text(size: tuple) -> str:
    return "(" + ", ".join(str(int(s)) for s in size) + ")"


def check_goal(stmt: ast.Binding, val: Val, pc: PipelineChecker) -> None:
    t = val.type
    if t == ERROR:
        return
    if not (isinstance(t, Ty) and t.name == "Metric"):
        pc.error("E0301", f"only a metric can be an objective; `{stmt.name}` is {format_type(t)}",
                 label(stmt.value.span, f"this is {format_type(t)}"),
                 help="compute a metric, e.g. `score = dice(pred, folds.val.label) maximize`")
        return
    goal = attr(t, "goal")
    wanted = {"maximize": "max", "minimize": "min"}[stmt.goal]  # type: ignore[index]
    if goal in ("max", "min") and goal != wanted:
        better = "higher" if goal == "max" else "lower"
        right = "maximize" if goal == "max" else "minimize"
        pc.error("E0302", f"`{stmt.name}` is {stmt.goal}d, but for this metric {better} is better",
                 label(stmt.span, f"should be `{right}`"),
                 help=f"write `{right}`; {stmt.goal} would select the worst model")


def default_literal(expr: ast.Expr) -> Const | OpRef | None:
    """A parameter default from the standard library as an IR value (literals only)."""
    from medasl.semantics.checker import UNIT_SCALE

    if isinstance(expr, ast.Number):
        if expr.unit:
            base, scale = UNIT_SCALE[expr.unit]
            return Const(float(expr.value) * scale, base)
        return Const(expr.value)
    if isinstance(expr, ast.String | ast.Bool):
        return Const(expr.value)
    if isinstance(expr, ast.Name):
        return Const(None if expr.id == "none" else expr.id)
    if isinstance(expr, ast.Tuple):
        items = [default_literal(i) for i in expr.items]
        if all(isinstance(i, Const) for i in items):
            values = tuple(i.value for i in items)  # type: ignore[union-attr]
            if expr.unit:
                base, scale = UNIT_SCALE[expr.unit]
                return Const(tuple(float(v) * scale for v in values), base)
            return Const(values)
    if isinstance(expr, ast.Call) and isinstance(expr.func, ast.Name):
        args = []
        for a in expr.args:
            lit = default_literal(a.value)
            if a.name and lit is not None:
                args.append((a.name, lit))
        return OpRef(expr.func.id, tuple(args))
    return None


def module_used_by_types(module: str, graphs: list[Graph]) -> bool:
    """Whether a module is needed even though none of its operators appears as a node
    (its enums are used as argument values)."""
    from medasl.semantics.modules import stdlib

    enum_values = {v for e in stdlib().modules[module].enums.values() for v in e.values}
    if not enum_values:
        return False
    for graph in graphs:
        for node in graph.nodes.values():
            for _, v in node.args:
                if isinstance(v, Const) and isinstance(v.value, str) and v.value in enum_values:
                    return True
    return False


__all__ = ["report_mismatch", "check_goal", "check_interpolation", "check_divisible", "resolve"]
