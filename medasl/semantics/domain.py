"""Medical-imaging rules and the wording of type errors in the user's vocabulary.

Most domain rules are ordinary slot types declared in the standard library (`window`
takes `Image[D, CT]`); this module words their failures (modality, dimensionality,
classes, units) and holds the rules that are not types: interpolation of label maps,
sizes divisible by a network's down-sampling, and objectives against metric goals.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from medasl.diagnostics import label, secondary
from medasl.ir.graph import Const, Graph, OpRef, Ref, Tup
from medasl.ir.types import (
    CONSTRUCTORS,
    LABEL_KINDS,
    MODALITY_DOCS,
    UNKNOWN,
    Fn,
    Ty,
    TyLike,
    Var,
    attr,
    first_image,
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
                    op: OpSig | None, member_of_pair: bool = False, subst: dict | None = None,
                    note: str | None = None, alternatives: list[str] | None = None,
                    values: dict[str, Val] | None = None) -> None:
    """Word a failed fit as precisely as the disagreement allows."""
    subst = subst or {}
    found = format_type(val.type)
    who = f"`{op.name}`" if op else what
    origin = []
    who_is = "the input"
    if val.origin is not None and val.origin_name is not None and val.origin != val.span:
        who_is = "the input" if val.origin_name == "the input" else f"`{val.origin_name}`"
        origin = [secondary(val.origin, f"{who_is} is {found}")]
    first_slot = op is not None and bool(op.params) and what == f"`{op.params[0].name}`"
    hint = _hint(op, m) if op is not None and first_slot else None
    slot_text = f" for {what}" if op is not None and not first_slot else ""
    notes = tuple(n for n in (
        f"inside a pair, `{op.name}` applies to the label too" if member_of_pair and op else None,
        f"{note}, the value is {format_type(m.actual)}" if note else None) if n)
    expected_full = resolve(slot, subst)
    needs = _slot_phrase(resolve(m.expected, subst))

    unit = _missing_unit(val.type, expected_full)
    if unit is not None:
        pc.error("E0206", f"{who} needs a unit{slot_text}: this number has none",
                 label(val.span, f"write it with `{unit}`"), *origin,
                 help=f"for example `{_example_with_unit(val, unit)}`")
        return
    wrong_unit = _wrong_unit(val.type, expected_full)
    if wrong_unit is not None:
        given, wanted = wrong_unit
        pc.error("E0207", f"{who} needs {UNIT_KINDS[wanted]}{slot_text}, but this is {UNIT_KINDS[given]}",
                 label(val.span, f"{UNIT_KINDS[given]}, not {UNIT_KINDS[wanted]}"), *origin,
                 help=f"write it in {' or '.join(UNIT_WORDS[wanted])}")
        return
    count = _needs_tuple(val.type, expected_full)
    if count is not None:
        pc.error("E0209", f"{who} expects {count} values{slot_text}, found one",
                 label(val.span, "one value"), *origin,
                 help=f"give one value per axis, e.g. `{_example_tuple(val, count)}`")
        return
    if m.attr == "modality":
        needs_mod, found_mod = str(m.expected_value), m.actual_value
        msg = f"{who} expects {_modality_phrase(needs_mod)}, found {format_type(m.actual)}"
        if found_mod == "Any":
            hint = f"declare what the image is where it is read, e.g. `nifti(\"scan.nii.gz\") as Image[3, {needs_mod}]`"
            msg = f"{who} expects {_modality_phrase(needs_mod)}, but the modality of this image is not declared"
            if origin:
                origin = [secondary(val.origin, f"{who_is} has no declared modality")]  # type: ignore[arg-type]
        pc.error("E0203", msg, label(val.span, f"needs {format_type(finalize(m.expected))}"), *origin,
                 help=hint, notes=notes)
        return
    if m.attr == "dim":
        pc.error("E0204", f"{who} expects {m.expected_value}D data{slot_text}, found {m.actual_value}D",
                 label(val.span, f"this is {found}"), *origin, help=hint or _dim_help(op, m), notes=notes)
        return
    if m.attr == "classes":
        if isinstance(slot, Fn) and values and "model" in values:
            _classes_disagree(pc, m, val, values)
            return
        pc.error("E0205", f"{who} expects {m.expected_value} classes{slot_text}, found {m.actual_value}",
                 label(val.span, f"this is {found}"), *origin,
                 help=hint or "the network's `classes`, the label maps and the metrics must agree on the number"
                 " of classes (background included)", notes=notes)
        return
    if m.attr == "length":
        pc.error("E0209", f"{who} expects {m.expected_value} values{slot_text}, found {m.actual_value}",
                 label(val.span, f"{m.actual_value} values"), *origin,
                 help=hint or "give one value per spatial axis of the image", notes=notes)
        return
    if isinstance(val.type, Fn) and isinstance(slot, Fn):
        name = f"`{val.value.op}`" if isinstance(val.value, OpRef) else "this function"
        where = what if what == who else f"{what} of {who}"
        message = (f"{name} does not fit {where}: it takes {_kind_phrase(m.expected)}, "
                   f"but would be given {_kind_phrase(m.actual)}")
        help_text = hint or (f"operators that fit here: {', '.join(f'`{a}`' for a in alternatives)}"
                             if alternatives else "choose an operator made for these inputs")
        pc.error("E0211", message, label(val.span, f"takes {format_type(m.expected)}"), *origin, help=help_text)
        return
    if isinstance(slot, Fn) or isinstance(val.type, Fn):
        pc.error("E0201", f"{who} expects a function{slot_text}, found {found}",
                 label(val.span, f"this is {found}"), *origin,
                 help=hint or "pass an operator by name, e.g. `loss=dice_ce` or `metric=dice`")
        return
    if isinstance(val.type, Ty) and val.type.name == "Vec" and not (isinstance(expected_full, Ty)
                                                                     and expected_full.name in ("Vec", "List")):
        length = val.type.attrs[0]
        found = f"a tuple of {length} values" if isinstance(length, int) else "a tuple"
        hint = hint or (f"a tuple groups values for one parameter that takes several; here give each value"
                        f" to its own parameter (`medasc ops {op.name}` lists them)" if op else None)
    elif hint is None and _mentions(expected_full, "Pair") and not _mentions(val.type, "Pair"):
        hint = ("this needs images with their labels: read them as pairs, "
                "e.g. `folder(root, image=\"*_ct.nii.gz\", label=\"*_seg.nii.gz\")`")
    full_needs = _slot_phrase(expected_full)
    pc.error("E0201", f"{who} expects {full_needs}{slot_text}, found {found}",
             label(val.span, f"expected {needs if m.attr else full_needs}"), *origin, help=hint, notes=notes)


def _hint(op: OpSig, m: Mismatch) -> str | None:
    """An operator's `@hint`: `@hint("text")` for any value that does not fit its first
    slot; `@hint(MR, "text", PET, "text")` only for a value of that modality (a hint about
    MR intensities says nothing useful about a label map or a string)."""
    args = op.attrs.get("hint", ())
    if len(args) == 1:
        return str(args[0])
    for modality, text in zip(args[::2], args[1::2]):
        if m.attr == "modality" and m.actual_value == modality:
            return str(text)
    return None


def _slot_phrase(t: TyLike) -> str:
    """A slot type in words a user can act on: variables a signature left open print as
    `Any`, and an open spatial slot as what it accepts."""
    if isinstance(t, Var) and isinstance(t.bound, Ty) and t.bound.name == "Spatial":
        dim = t.bound.attrs[0]
        return "an image or a label map" + (f" ({dim}D)" if isinstance(dim, int) else "")
    return format_type(finalize(t))


UNIT_KINDS = {"mm": "a length", "deg": "an angle", "bytes": "an amount of memory"}
UNIT_WORDS = {"mm": ("mm", "cm", "um"), "deg": ("deg", "rad"), "bytes": ("GB", "MB")}


def _unit_of(t: TyLike) -> str | None:
    """The scalar inside a type: `mm` for `mm` and for `mm[3]`."""
    if isinstance(t, Ty) and t.name == "Vec":
        t = t.params[0]
    return t.name if isinstance(t, Ty) else None


def _missing_unit(actual: TyLike, slot: TyLike) -> str | None:
    slot_unit, actual_unit = _unit_of(slot), _unit_of(actual)
    if slot_unit in UNIT_WORDS and actual_unit in ("int", "float"):
        return UNIT_WORDS[slot_unit][0] if slot_unit != "bytes" else "GB"
    return None


def _wrong_unit(actual: TyLike, slot: TyLike) -> tuple[str, str] | None:
    slot_unit, actual_unit = _unit_of(slot), _unit_of(actual)
    if slot_unit in UNIT_WORDS and actual_unit in UNIT_WORDS and slot_unit != actual_unit:
        return actual_unit, slot_unit  # type: ignore[return-value]
    return None


def _needs_tuple(actual: TyLike, slot: TyLike) -> int | str | None:
    """A single value given where one per axis is expected: how many are needed."""
    if isinstance(slot, Ty) and slot.name == "Vec" and isinstance(actual, Ty) and actual.name not in ("Vec", "Any"):
        length = slot.attrs[0]
        return length if isinstance(length, int) else "several"
    return None


def _example_tuple(val: Val, count: int | str) -> str:
    value = val.value.value if isinstance(val.value, Const) else 1
    n = count if isinstance(count, int) else 3
    unit = f" {val.value.unit}" if isinstance(val.value, Const) and val.value.unit else ""
    return "(" + ", ".join([str(value)] * n) + ")" + unit


def _kind_phrase(t: TyLike) -> str:
    if isinstance(t, Ty) and t.name in CONSTRUCTORS and CONSTRUCTORS[t.name].doc:
        return f"{format_type(t)} ({CONSTRUCTORS[t.name].doc.split(':')[0].split(',')[0]})"
    return format_type(t)


def _mentions(t: TyLike, name: str) -> bool:
    if isinstance(t, Ty):
        return t.name == name or any(_mentions(p, name) for p in t.params)
    return False


def _classes_disagree(pc: PipelineChecker, m: Mismatch, val: Val, values: dict[str, Val]) -> None:
    """Classes disagree, found through a loss or metric: either the function itself
    needs a number of classes the network does not predict, or the network and the
    labels disagree."""
    model = values["model"]
    output = model.type.params[1] if isinstance(model.type, Ty) and len(model.type.params) == 2 else None
    predicted = attr(output, "classes") if isinstance(output, Ty) and output.name in CONSTRUCTORS and \
        "classes" in CONSTRUCTORS[output.name].attrs else UNKNOWN
    fn = val.value.op if isinstance(val.value, OpRef) else None
    if fn is not None and m.actual_value == predicted:
        op = pc.loader.std.find_op(fn)
        hint = str(op.attrs["hint"][0]) if op is not None and op.attrs.get("hint") else None
        pc.error("E0205", f"`{fn}` works with {m.expected_value} classes, but the network predicts {predicted}",
                 label(val.span, f"for {m.expected_value} classes"), secondary(model.span, f"predicts {predicted} classes"),
                 help=hint or f"choose one made for {predicted} classes")
        return
    network = predicted if isinstance(predicted, int) else m.expected_value
    data = values.get("data")
    primary = label(data.span, f"labels with {m.actual_value} classes") if data is not None else label(val.span)
    pc.error("E0205", f"the network predicts {network} classes, but the labels have {m.actual_value}",
             primary, secondary(model.span, f"predicts {network} classes"),
             help=f"set `classes={m.actual_value}` on the network (background counts as a class),"
             " or declare the labels with the right number of classes")


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


def check_patterns(cc: CallChecker, values: dict[str, Val]) -> None:
    """File patterns that pair images with labels need a `*`: the part it matches is the
    case identifier that pairs them."""
    for param in cc.op.attrs.get("pattern", ()):
        val = values.get(str(param))
        # a pattern may come from a parameter (and its `--set` value) as well as a literal
        pattern = literal_with_defaults(cc.pc.graph, val.value) if val is not None else None
        if not isinstance(pattern, str):
            continue
        if "*" not in pattern:
            cc.pc.error("E0240", f"the pattern `{param}` of `{cc.op.name}` has no `*`",
                        label(val.span, "matches one file name only"),
                        help="`*` stands for the case identifier, e.g. `image=\"*_ct.nii.gz\", label=\"*_seg.nii.gz\"`;"
                        " every `*` in one pattern must match the same identifier")


def check_ranges(cc: CallChecker, values: dict[str, Val]) -> None:
    """`@positive(a, b)`: sizes, spacings, widths, counts above zero; `@fraction(p)`:
    probabilities and proportions between 0 and 1."""
    for attribute, ok, wanted in (("positive", lambda v: v > 0, "above zero"),
                                  ("fraction", lambda v: 0 <= v <= 1, "between 0 and 1")):
        for param in cc.op.attrs.get(attribute, ()):
            val = values.get(str(param))
            raw = literal_with_defaults(cc.pc.graph, val.value) if val is not None else None
            if raw is None:
                continue
            numbers = raw if isinstance(raw, tuple) else (raw,)
            bad = [v for v in numbers if isinstance(v, int | float) and not isinstance(v, bool) and not ok(v)]
            if bad:
                shown = ", ".join(f"{v:g}" for v in bad)
                cc.pc.error("E0241", f"`{param}` of `{cc.op.name}` must be {wanted}, found {shown}",
                            label(val.span, f"not {wanted}"))


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
    literal = literal_with_defaults(cc.pc.graph, size_val.value)
    if isinstance(literal, tuple):
        size = literal
    else:
        image = first_image(size_val.type)
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
        return
    if size and all(isinstance(s, int | float) and int(s) == factor for s in size):
        # down-sampled `factor` times, the input is one voxel at the network's deepest
        # level, where its normalization has nothing to normalize (MONAI's instance norm
        # fails there, batch norm at a batch of one)
        bigger = tuple(int(s) for s in size[:-1]) + (2 * factor,)
        cc.pc.error("E0246", f"size {_tuple_text(size)} is too small for a network that down-samples by {factor}",
                    label(where, f"{factor} on every axis: one voxel at the deepest level"),
                    secondary(model.span, f"down-samples by {factor}"),
                    help=f"give at least one axis {2 * factor} voxels or more, e.g. {_tuple_text(bigger)},"
                    " or use a network with fewer down-sampling steps (`strides=`)")


def literal_with_defaults(graph: Graph, value: object) -> object:
    """The literal a value stands for, with the parameters in it replaced by their
    defaults (`(crop, crop, 48)`, `window=patch`), so that sizes and ranges made of
    parameters are checked like literals; None where a part is not a known literal (a
    searched parameter, another node's result). `--set` values are checked the same way:
    they become the parameters' defaults (see `check_source(..., overrides)`)."""
    if isinstance(value, Const):
        return value.value
    if isinstance(value, Tup):
        items = tuple(literal_with_defaults(graph, v) for v in value.items)
        return None if any(i is None for i in items) else items
    if isinstance(value, Ref):
        node = graph.nodes.get(value.node)
        if node is None or node.op != "param" or node.search is not None:
            return None
        return literal_with_defaults(graph, node.arg("default"))
    return None  # an operator value


def _round_up(n: int, factor: int) -> int:
    return -(-n // factor) * factor


def _tuple_text(size: tuple) -> str:
    return "(" + ", ".join(str(int(s)) for s in size) + ")"


def check_goal(stmt: ast.Binding, val: Val, pc: PipelineChecker) -> None:
    t = val.type
    if t == ERROR:
        return
    if isinstance(t, Ty) and t.name == "PerFold" and isinstance(t.params[0], Ty) and t.params[0].name == "Metric":
        t = t.params[0]  # cross-validated: the mean over the folds is optimized
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


__all__ = ["report_mismatch", "check_goal", "check_interpolation", "check_divisible", "check_patterns",
           "check_ranges"]


# ----- limits known at check time (issue 10) -------------------------------------------

# The most voxels a size written in a pipeline may ask for (E0247): 2**34 voxels is 64 GiB
# as float32, beyond any volume or whole-slide level a pipeline crops or resizes to.
# Below it, whether the machine has the memory is for the run to say (E2002).
MAX_VOXELS = 2**34

# The Hounsfield scale: air is -1000, dense bone about 3000; metal implants reach the
# top of 16-bit storage. A window entirely outside it makes every voxel 0 or 1 (W0006).
HU_RANGE = (-1024.0, 32767.0)


def _number_values(raw: object) -> list[float | int]:
    numbers = raw if isinstance(raw, tuple) else (raw,)
    return [v for v in numbers if isinstance(v, int | float) and not isinstance(v, bool)]


def _given_or_default(cc: CallChecker, values: dict[str, Val], name: str) -> object:
    """The literal value of parameter `name` in this call (its default when not given);
    None when it is not known at check time."""
    val = values.get(name)
    if val is not None:
        return literal_with_defaults(cc.pc.graph, val.value)
    param = cc.op.param(name)
    if param is None or param.default is None:
        return None
    literal = default_literal(param.default)
    return literal.value if isinstance(literal, Const) else None


def _member(t: TyLike, kinds: tuple[str, ...]) -> Ty | None:
    """The first value of one of `kinds` in a type (itself, or inside a dataset or pair)."""
    if not isinstance(t, Ty):
        return None
    if t.name in kinds:
        return t
    return next((found for p in t.params if (found := _member(p, kinds)) is not None), None)


def check_limits(cc: CallChecker, values: dict[str, Val], types: dict[str, TyLike]) -> None:
    """The rules on values that the standard library declares besides `@positive` and
    `@fraction`: `@range(p, low, high)`, `@multiple(p, k)`, `@divisor(p, k)`, `@axis(p)`,
    `@ordered(low, high)`,
    `@labels_of(x, labels)`, and the voxel count of a size that becomes a shape."""
    op = cc.op
    for spec in _specs(op, "range", 3):
        name, low, high = str(spec[0]), spec[1], spec[2]
        raw = _given_or_default(cc, values, name)
        reported = name in op.attrs.get("positive", ())  # values <= 0 are E0241 already
        bad = [v for v in _number_values(raw) if not (reported and v <= 0)
               and ((isinstance(low, int | float) and v < low) or (isinstance(high, int | float) and v > high))]
        if bad and name in values:
            wanted = (f"between {low} and {high}" if isinstance(high, int | float) else f"at least {low}")
            shown = ", ".join(f"{v:g}" for v in bad)
            cc.pc.error("E0241", f"`{name}` of `{op.name}` must be {wanted}, found {shown}",
                        label(values[name].span, f"not {wanted}"))
    for spec in (*_specs(op, "multiple", 2), *_specs(op, "divisor", 2)):
        name, k = str(spec[0]), spec[1]
        raw = _given_or_default(cc, values, name)
        multiple = spec in _specs(op, "multiple", 2)
        bad = [v for v in _number_values(raw) if isinstance(v, int) and isinstance(k, int) and v > 0
               and (v % k if multiple else k % v)]
        if bad and name in values:
            wanted = f"a multiple of {k}" if multiple else f"a divisor of {k}"
            choices = "" if multiple else " (" + ", ".join(str(d) for d in range(1, k + 1) if k % d == 0) + ")"
            cc.pc.error("E0241", f"`{name}` of `{op.name}` must be {wanted}{choices}, found {bad[0]:g}",
                        label(values[name].span, f"not {wanted}"),
                        help=f"the network's layers need it: see `medasc ops {op.name}`")
    for spec in _specs(op, "sum_below_one", 2):
        given = [(str(name), _given_or_default(cc, values, str(name))) for name in spec]
        numbers = [v for _, v in given if isinstance(v, int | float) and not isinstance(v, bool)]
        shown = [name for name, _ in given if name in values]
        if len(numbers) == len(given) and shown and sum(numbers) >= 1 and all(0 <= v <= 1 for v in numbers):
            names = " + ".join(f"`{name}`" for name, _ in given)
            cc.pc.error("E0241", f"{names} of `{op.name}` must be below 1, found {sum(numbers):g}",
                        label(values[shown[0]].span, "leaves nothing for the rest"),
                        help="these are the shares of the held-out parts; what remains (training) must not be empty")
    first = op.params[0].name if op.params else None
    spatial = _member(types.get(first), ("Image", "LabelMap", "ProbMap", "OneHot", "Instances")) if first else None
    dim = attr(spatial, "dim") if spatial is not None else UNKNOWN
    for spec in _specs(op, "axis", 1):
        name = str(spec[0])
        raw = _given_or_default(cc, values, name)
        if name not in values or not isinstance(raw, int) or isinstance(raw, bool):
            continue
        if raw < 0 or (isinstance(dim, int) and raw >= dim):
            axes = f"0 to {dim - 1}" if isinstance(dim, int) else "0, 1 or 2"
            cc.pc.error("E0243", f"`{op.name}` has no axis {raw}" + (f" on {dim}D data" if isinstance(dim, int) else ""),
                        label(values[name].span, f"the axes are {axes}"),
                        help="axis 0 is the first spatial axis (x), 1 the second (y), 2 the third (z)")
    for spec in _specs(op, "ordered", 2):
        low_name, high_name = str(spec[0]), str(spec[1])
        low, high = _given_or_default(cc, values, low_name), _given_or_default(cc, values, high_name)
        if (isinstance(low, int | float) and isinstance(high, int | float) and low > high
                and high_name in values and low_name in values):
            cc.pc.error("E0244", f"`{op.name}` needs `{low_name}` <= `{high_name}`, found {low:g} > {high:g}",
                        label(values[high_name].span, f"below `{low_name}`"),
                        secondary(values[low_name].span, f"`{low_name}` is {low:g}"),
                        help=f"swap them: `{low_name}={high:g}, {high_name}={low:g}`")
    for spec in _specs(op, "labels_of", 2):
        map_name, labels_name = str(spec[0]), str(spec[1])
        label_map = _member(types.get(map_name), ("LabelMap",))
        classes = attr(label_map, "classes") if label_map is not None else UNKNOWN
        raw = _given_or_default(cc, values, labels_name)
        if labels_name not in values or not isinstance(classes, int):
            continue
        bad = [v for v in _number_values(raw) if v < 0 or v >= classes]
        if bad:
            shown = ", ".join(f"{v:g}" for v in bad)
            cc.pc.error("E0245", f"label value{'s' if len(bad) > 1 else ''} {shown} cannot occur in {format_type(label_map)}",
                        label(values[labels_name].span, f"the values are 0 to {classes - 1}"),
                        secondary(values[map_name].span if map_name in values else cc.func_span,
                                  f"this has {classes} classes"),
                        help="a label map with K classes holds the values 0 .. K-1; choose among them, or"
                        " declare the map with the number of classes the file really has")
    for p in op.params:
        if p.name not in values or not (isinstance(p.type, Ty) and p.type.name == "path"):
            continue
        raw = _given_or_default(cc, values, p.name)
        if not isinstance(raw, str):
            continue
        if not raw.strip():
            cc.pc.error("E0249", f"`{p.name}` of `{op.name}` is an empty path", label(values[p.name].span, "no file named"),
                        help="give the file or folder, relative to where medasc runs (or to --out for what is written)")
        elif op.stage == "output" and Path(raw).name in ("", ".", ".."):
            cc.pc.error("E0249", f"`{p.name}` of `{op.name}` names a folder, not a file: `{raw}`",
                        label(values[p.name].span, "no file name"),
                        help=f"name the file to write, e.g. `{op.name}(..., \"{raw.rstrip('/') or '.'}/result\")`")
    for name in _shape_params(op.result):
        raw = _given_or_default(cc, values, name)
        numbers = _number_values(raw)
        if name not in values or not numbers or len(numbers) != len(raw if isinstance(raw, tuple) else (raw,)):
            continue
        voxels = 1
        for v in numbers:
            voxels *= max(int(v), 1)
        if voxels > MAX_VOXELS:
            cc.pc.error("E0247", f"a size of {_tuple_text(tuple(numbers))} is {voxels:.3g} voxels,"
                        f" more than the {MAX_VOXELS:.3g} a pipeline may ask for",
                        label(values[name].span, f"{voxels * 4 / 1024**3:.3g} GiB as float32"),
                        help="sizes are in voxels, not in mm or micrometres; to cover a large region, resample"
                        " to a coarser spacing first or take patches")


def _specs(op: OpSig, attribute: str, size: int) -> list[tuple[object, ...]]:
    """An attribute's arguments in groups of `size`: `@range(n, 0, _, k, 1, 10)` is two
    ranges (attributes are kept by name, so one attribute holds every rule of its kind)."""
    args = op.attrs.get(attribute, ())
    return [tuple(args[i:i + size]) for i in range(0, len(args) - size + 1, size)]


def _shape_params(t: object) -> set[str]:
    """The parameters a result's `shape` comes from (`S{shape=size}`, `Image[3, CT, shape=size]`)."""
    from medasl.semantics.signatures import Override, ParamRef

    if isinstance(t, Override):
        own = {t.value.name} if t.attr == "shape" and isinstance(t.value, ParamRef) else set()
        return own | _shape_params(t.base)
    if not isinstance(t, Ty):
        return set()
    cons = CONSTRUCTORS.get(t.name)
    own = set()
    if cons is not None and "shape" in cons.attrs:
        value = t.attrs[cons.attrs.index("shape")]
        if isinstance(value, ParamRef):
            own.add(value.name)
    for p in t.params:
        own |= _shape_params(p)
    return own


# the smallest value of a type's numeric attributes, and what a smaller one would mean
_ATTRIBUTE_MINIMUM = {
    "dim": (2, "medasl handles 2-D and 3-D data"),
    "classes": (2, "classes count the background too: a label map, probabilities or a classifier have at least 2"),
    "channels": (1, "an image has at least one channel"),
    "k": (1, "there is at least one fold"),
    "downsample": (1, "a network down-samples by a factor of at least 1"),
    "length": (0, "a tuple has no negative length"),
}


def check_written_type(pc: PipelineChecker, texpr: ast.TypeExpr) -> bool:
    """The numbers written in a type (`LabelMap[3, 0]`, `Image[7, CT]`, `shape=(0, 64)`)
    are ones the data can have (E0248); False when one is not."""
    ok = True
    todo: list[ast.TypeExpr] = [texpr]
    while todo:
        t = todo.pop()
        if isinstance(t, ast.FnType):
            todo.extend((*t.params, t.result))
            continue
        todo.extend(t.params)
        cons = CONSTRUCTORS.get(t.name)
        if cons is None:
            continue
        names = list(cons.attrs) if cons.attrs else ["length"]
        positional = 0
        for targ in t.index:
            if targ.kind == "named":
                name, inner = targ.value  # type: ignore[misc]
            else:
                name, inner = (names[positional] if positional < len(names) else ""), targ
                positional += 1
            ok &= _check_attribute(pc, t.name, name, inner)
    return ok


def _check_attribute(pc: PipelineChecker, type_name: str, name: str, targ: ast.TypeArg) -> bool:
    from medasl.syntax.parser import MAX_MAGNITUDE

    numbers = targ.value if targ.kind == "shape" else (targ.value,) if targ.kind == "number" else ()
    if any(not math.isfinite(v) or abs(v) > MAX_MAGNITUDE for v in numbers):  # type: ignore[union-attr, arg-type]
        pc.error("E0242", "a number in this type is too large", label(targ.span, "too large to use"),
                 help=f"numbers are limited to ±2^53 (about {MAX_MAGNITUDE:.4g})")
        return False
    if targ.kind == "shape" and name == "shape":
        bad = [v for v in targ.value if not isinstance(v, int) or v < 1]  # type: ignore[union-attr]
        if bad:
            pc.error("E0248", f"a shape holds whole numbers of voxels, at least 1 per axis; found {bad[0]}",
                     label(targ.span, "not a size"), help="write the size in voxels, e.g. `shape=(128, 128, 96)`")
            return False
        return True
    if targ.kind != "number" or name not in _ATTRIBUTE_MINIMUM:
        return True
    value = targ.value
    minimum, why = _ATTRIBUTE_MINIMUM[name]
    maximum = 3 if name == "dim" else None
    if isinstance(value, int) and minimum <= value and (maximum is None or value <= maximum):
        return True
    wanted = f"{minimum} or {maximum}" if maximum is not None and maximum == minimum + 1 else f"at least {minimum}"
    pc.error("E0248", f"`{type_name}` cannot have {name} {value}", label(targ.span, f"{name} must be {wanted}"),
             help=why)
    return False
