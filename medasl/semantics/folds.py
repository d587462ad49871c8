"""Cross-validation in the checker: values per fold of a `kfold`, and operators lifted
over them (docs/language.md, "Cross-validation").

`folds = kfold(cases, k=5)` is `Folds<T>`. Its parts `folds.train`, `folds.val` and
`folds.test` are values *per fold*, `PerFold[5]<Dataset<T>>`: one value for every fold.
An operator given a per-fold value where it expects one value is applied to every fold
separately (the way `map` applies an operator to every case of a dataset), so

    fits  = train(net, folds.train |> prep, loss=dice_ce)      # PerFold[5]<Trained<...>>
    pred  = infer(fits, folds.val.image |> prep) |> argmax      # PerFold[5]<Dataset<LabelMap>>
    score = dice(pred, folds.val.label) maximize                # PerFold[5]<Metric[max]>

trains and evaluates five models. Nothing per fold happens at run time: the checker
writes the pipeline out once per fold, so every fold's steps are ordinary steps with
cache keys of their own (`<binding>_fold<i>`), and the runtime needs no notion of folds.

In the IR a per-fold value is a tuple of references, one per fold (`Tup`), except for a
metric: the fold values of a metric are collected by a `cross_validated` node (their
mean is its value, the per-fold values and their spread are kept for reports), so that
a per-fold metric can be shown, reported and optimized like one metric.

Values of two different `kfold`s never meet in one call (E0530): fold 2 of one
partition has nothing to do with fold 2 of another.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from medasl.diagnostics import label, secondary
from medasl.ir.graph import Const, Ref, Tup
from medasl.ir.types import Ty, TyLike, dataset, format_type
from medasl.semantics.matching import ERROR, Mismatch, fit
from medasl.semantics.signatures import fresh_vars

if TYPE_CHECKING:
    from medasl.ir.graph import Value
    from medasl.semantics.calls import CallChecker
    from medasl.semantics.checker import PipelineChecker, Val
    from medasl.source import Span

PER_FOLD = "PerFold"
SUMMARY_OP = "cross_validated"
MAX_FOLDS = 100  # a k beyond this is a mistake (and would write the pipeline out that often)


def per_fold(inner: TyLike, k: int, folds: str) -> Ty:
    """`PerFold[k]<inner>` of the partition made by node `folds`."""
    return Ty(PER_FOLD, (k, folds), (inner,))


def is_per_fold(t: object) -> bool:
    return isinstance(t, Ty) and t.name == PER_FOLD


def partition(t: Ty) -> str:
    """The node id of the `kfold` a per-fold value comes from."""
    return str(t.attrs[1])


def metric_inside(t: object) -> bool:
    """Whether `t` is `PerFold<Metric[G]>`: the cross-validated metric, which fits where
    one metric fits (its value is the mean over the folds)."""
    return is_per_fold(t) and isinstance(t.params[0], Ty) and t.params[0].name == "Metric"  # type: ignore[union-attr]


def members(pc: PipelineChecker, val: Val) -> list[Val]:
    """The value of every fold of a per-fold value, in fold order."""
    from medasl.semantics.checker import Val

    assert isinstance(val.type, Ty)
    inner = val.type.params[0]
    value: Value = val.value
    if isinstance(value, Ref) and pc.graph.nodes[value.node].op == SUMMARY_OP:
        value = pc.graph.nodes[value.node].args[0][1]
    assert isinstance(value, Tup), value
    return [Val(item, inner, val.span, val.origin, val.origin_name) for item in value.items]


def collect(pc: PipelineChecker, results: list[Val], k: int, folds: str, span: Span) -> Val:
    """One per-fold value from the value of every fold."""
    from medasl.semantics.checker import Val

    inner = results[0].type
    t = per_fold(inner, k, folds)
    items = tuple(r.value for r in results)
    if isinstance(inner, Ty) and inner.name == "Metric":
        node = pc.add_node(SUMMARY_OP, (("per_fold", Tup(items, kind="list")),), t, span, stage="metrics")
        return Val(Ref(node.id), t, span)
    return Val(Tup(items), t, span)


# ----- `folds.train`: the parts of a kfold, per fold ------------------------------------------


def parts(pc: PipelineChecker, base: Val, name: str, span: Span, name_span: Span) -> Val:
    """`folds.train` (`.val`, `.test`) of a `Folds<T>`: the part of every fold, made by
    `fold(folds, i)` for i in 0..k-1 (the nodes a pipeline used to write by hand)."""
    from medasl.semantics.checker import Val

    assert isinstance(base.type, Ty)
    element = base.type.params[0]
    source = pc.graph.nodes.get(base.value.node) if isinstance(base.value, Ref) else None
    k = _fold_count(pc, source)
    if k is None or source is None:
        pc.error("E0531", "the number of folds must be known before running to use every fold",
                 label(base.span, "`k` is not a known number here"),
                 help="give `kfold` a literal `k` (or a parameter that is not searched), e.g. "
                 "`kfold(cases, k=5, seed=0)`; tune `k` in separate studies")
        return Val(Const(None), ERROR, span)
    results = []
    for index in range(k):
        fold_id = _fold_node(pc, source.id, element, index, span)
        key = (str(Ref(fold_id)), name)
        if key not in pc.fields_memo:
            node = pc.add_node("field", (("_", Ref(fold_id)), ("name", Const(name))), dataset(element), span,
                               stage=source.stage, prefix=f"{fold_id}_{name}")
            pc.fields_memo[key] = Val(Ref(node.id), dataset(element), span)
        results.append(pc.fields_memo[key])
    return Val(Tup(tuple(r.value for r in results)), per_fold(dataset(element), k, source.id), span)


def _fold_count(pc: PipelineChecker, source: object) -> int | None:
    from medasl.semantics import domain
    from medasl.semantics.modules import stdlib

    if source is None or getattr(source, "op", None) != "kfold":
        return None
    given = dict(source.args).get("k")  # type: ignore[attr-defined]
    if given is None:
        default = next(p.default for p in stdlib().find_op("kfold").params if p.name == "k")  # type: ignore[union-attr]
        literal = domain.default_literal(default)
        k = literal.value if isinstance(literal, Const) else None
    else:
        k = domain.literal_with_defaults(pc.graph, given)
    if isinstance(k, int) and not isinstance(k, bool) and 1 <= k <= MAX_FOLDS:
        return k
    return None


def _fold_node(pc: PipelineChecker, source: str, element: TyLike, index: int, span: Span) -> str:
    key = (source, index)
    if key not in pc.folds_memo:
        node = pc.add_node("fold", (("folds", Ref(source)), ("index", Const(index))), Ty("Split", (), (element,)),
                           span, stage=pc.graph.nodes[source].stage, prefix=f"{source}_fold{index}")
        pc.folds_memo[key] = node.id
    return pc.folds_memo[key]


# ----- an operator applied to every fold -----------------------------------------------------


def lift_call(call: CallChecker, values: dict[str, Val], device: object, expected: TyLike | None) -> Val | None:
    """The call applied to every fold, when a per-fold value is given where the operator
    expects one value; None when no argument needs it (the call is checked as usual)."""
    from medasl.semantics.calls import CallChecker
    from medasl.semantics.checker import Val

    lifted = [name for name, val in values.items() if is_per_fold(val.type) and not _fits_as_is(call, name, val)]
    if not lifted:
        return None
    first = values[lifted[0]]
    assert isinstance(first.type, Ty)
    for name in lifted[1:]:
        other = values[name]
        assert isinstance(other.type, Ty)
        if partition(other.type) != partition(first.type) or other.type.attrs[0] != first.type.attrs[0]:
            _mixed(call, lifted[0], first, name, other)
            return Val(Const(None), ERROR, call.span)
    k = first.type.attrs[0]
    assert isinstance(k, int)
    folds = {name: members(call.pc, values[name]) for name in lifted}
    results = []
    diags = call.pc.diags.items
    for index in range(k):
        before = len(diags)
        one = {name: (folds[name][index] if name in folds else val) for name, val in values.items()}
        result = CallChecker(call.pc, call.op, call.span, call.func_span)._typed(one, device, expected)  # type: ignore[arg-type]
        if result.type == ERROR:  # said once, not once per fold; with the reason it is said of one fold's value
            given = ", ".join(f"argument `{name}` is {format_type(values[name].type)}" for name in lifted)
            note = f"{given}, a value for each fold: `{call.op.name}` is applied to the value of each fold"
            diags[before:] = [replace(d, notes=(*d.notes, note)) for d in diags[before:]]
            return result
        results.append(result)
    return collect(call.pc, results, k, partition(first.type), call.span)


def _fits_as_is(call: CallChecker, name: str, val: Val) -> bool:
    """Whether the operator takes the per-fold value whole (`ensemble(fits)`, a report
    listing a cross-validated metric)."""
    param = call.op.param(name)
    if param is None:
        return False
    try:
        fit(val.type, fresh_vars(param.type, {}), {})  # type: ignore[arg-type]
    except Mismatch:
        return False
    return True


def _mixed(call: CallChecker, a_name: str, a: Val, b_name: str, b: Val) -> None:
    def origin(v: Val) -> str:
        assert isinstance(v.type, Ty)
        node = call.pc.graph.nodes.get(partition(v.type))
        return f"`{node.binding or node.id}`" if node is not None else "another kfold"

    call.pc.error("E0530", f"`{call.op.name}` mixes the folds of two cross-validations: `{a_name}` is per fold of "
                  f"{origin(a)}, `{b_name}` per fold of {origin(b)}",
                  label(b.span, f"per fold of {origin(b)}"), secondary(a.span, f"per fold of {origin(a)}"),
                  help="fold i of one partition has nothing to do with fold i of another: make both values from "
                  "the same `kfold`")


# ----- naming --------------------------------------------------------------------------------


def name_members(pc: PipelineChecker, val: Val, name: str) -> Val:
    """Give the unnamed nodes of a bound per-fold value the names `<name>_fold<i>`, by
    which the run log, `--dry-run` and `--force` know them; the value, renamed."""
    from medasl.semantics.checker import Val

    if not is_per_fold(val.type):
        return val
    renamed = []
    for index, member in enumerate(members(pc, val)):
        value = member.value
        if isinstance(value, Ref) and value.node in pc.graph.nodes:
            node = pc.graph.nodes[value.node]
            wanted = f"{name}_fold{index}"
            taken = wanted in pc.graph.nodes or wanted in pc.bindings or wanted in pc.params
            if node.binding is None and node.id not in pc.bindings and node.id not in pc.params and not taken:
                pc._rename(node, wanted)  # noqa: SLF001 - the checker's own renaming keeps its memos right
                value = Ref(wanted)
        renamed.append(value)
    if isinstance(val.value, Tup):
        return Val(Tup(tuple(renamed)), val.type, val.span, val.origin, val.origin_name)
    return val  # a metric's summary node: renaming updated its arguments


__all__ = ["PER_FOLD", "SUMMARY_OP", "per_fold", "is_per_fold", "metric_inside", "members", "parts",
           "lift_call", "name_members"]
