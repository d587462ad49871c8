"""Checking one operator call: binding arguments to slots, lifting over datasets and
pairs, inserting conversions, the domain checks, and the IR node it becomes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from medasl.diagnostics import label, secondary
from medasl.ir.graph import Const, OpRef, Ref, Value
from medasl.ir.types import UNKNOWN, Fn, Ty, TyLike, dataset, format_type
from medasl.semantics import domain
from medasl.semantics.matching import ERROR, Mismatch, Subst, finalize, fit, merge, resolve
from medasl.semantics.signatures import OpSig, ParamSig, fresh_vars
from medasl.semantics.suggest import did_you_mean
from medasl.source import Span
from medasl.syntax import ast

if TYPE_CHECKING:
    from medasl.semantics.checker import PipelineChecker, Val

DEVICE_HINT = "on"
COLLECTIONS = ("Dataset", "Split", "Folds")


@dataclass
class ArgMismatch(Exception):
    param: ParamSig
    mismatch: Mismatch


@dataclass
class Attempt:
    subst: Subst
    conversions: dict[str, OpSig]  # parameter -> conversion inserted before the call
    fn_conversions: dict[str, OpSig]  # function parameter -> conversion of its input
    mapping: dict[str, object]  # signature variable -> this attempt's fresh variable


class CallChecker:
    def __init__(self, pc: PipelineChecker, op: OpSig, span: Span, func_span: Span) -> None:
        self.pc = pc
        self.op = op
        self.span = span
        self.func_span = func_span
        self.piped: Val | None = None

    # ----- binding arguments to parameters ----------------------------------------------

    def check(self, args: tuple[ast.Arg, ...], piped: Val | None, expected: TyLike | None) -> Val:
        from medasl.semantics.checker import Val

        op = self.op
        self.piped = piped
        exprs: dict[str, tuple[ast.Expr | None, Val | None, Span]] = {}
        positional: list[tuple[ast.Expr | None, Val | None, Span]] = []
        if piped is not None:
            positional.append((None, piped, piped.span))
        device: ast.Arg | None = None
        ok = True
        for a in args:
            if a.name is None:
                positional.append((a.value, None, a.span))
        params = op.params
        if len(positional) > len(params):
            extra = positional[len(params)]
            self.pc.error("E0106", f"`{op.name}` takes at most {len(params)} positional argument"
                          f"{'s' if len(params) != 1 else ''}, given {len(positional)}",
                          label(extra[2], "one too many"), help=f"signature: {op.signature_text()}")
            ok = False
        for p, given in zip(params, positional):
            exprs[p.name] = given
        names = [p.name for p in params]
        for a in args:
            if a.name is None:
                continue
            span = a.name_span or a.span
            if a.name == DEVICE_HINT and op.param(DEVICE_HINT) is None:
                device = a
                continue
            if a.name not in names:
                self.pc.error("E0104", f"`{op.name}` has no parameter `{a.name}`",
                              label(span, "unknown parameter"),
                              help=did_you_mean(a.name, names) or f"its parameters are {', '.join(names) or 'none'}")
                self.pc.expr(a.value)
                ok = False
                continue
            if a.name in exprs:
                self.pc.error("E0107", f"`{a.name}` is given twice", label(span, "given again here"),
                              secondary(exprs[a.name][2], "first given here"))
                ok = False
                continue
            exprs[a.name] = (a.value, None, a.span)
        missing = [p for p in params if p.required and p.name not in exprs]
        values: dict[str, Val] = {}
        for p in params:
            if p.name in exprs:
                e, v, _ = exprs[p.name]
                values[p.name] = v if v is not None else self.pc.expr(e, _enum_hint(p.type))  # type: ignore[arg-type]
        if missing:
            given_data = [p for p in params if p.required and p.name in exprs]
            if (op.has("loss") or op.has("metric") or op.has("fn")) and not given_data:
                bound = tuple((k, v.value) for k, v in values.items())
                return self.pc._op_value(op, bound, self.span)
            listed = ", ".join(f"`{p.name}: {format_type(finalize(p.type))}`" for p in missing)
            self.pc.error("E0105", f"`{op.name}` is missing {listed}", label(self.span, "missing argument"),
                          help=f"signature: {op.signature_text()}")
            ok = False
        if not ok or any(v.type == ERROR for v in values.values()):
            return Val(Const(None), ERROR, self.span)
        return self._typed(values, device, expected)

    # ----- typing with lifting ------------------------------------------------------------

    def _typed(self, values: dict[str, Val], device: ast.Arg | None, expected: TyLike | None) -> Val:
        from medasl.semantics.checker import Val

        op = self.op
        types = {k: v.type for k, v in values.items()}
        lift: list[str] = []
        first = op.params[0].name if op.params else None
        result: TyLike
        while True:
            try:
                attempt = self._attempt(types, values)
                result = self._result(attempt, values, types)
                break
            except ArgMismatch as am:
                actual_first = types.get(first) if first else None
                if _is(actual_first, "Dataset") and not _is(op.params[0].type, *COLLECTIONS):
                    for p in op.params:
                        if p.name in types and _is(types[p.name], "Dataset") and not _is(p.type, *COLLECTIONS):
                            types[p.name] = types[p.name].params[0]  # type: ignore[union-attr]
                    lift.append("map")
                    continue
                if _is(actual_first, "Pair") and (op.has("spatial") or op.has("intensity")) and not _is(op.params[0].type, "Pair"):
                    pair = self._pair(types, values, first)  # type: ignore[arg-type]
                    if pair is None:
                        return Val(Const(None), ERROR, self.span)
                    attempt, result, mode = pair
                    lift.append(mode)
                    break
                self._report(am, values)
                return Val(Const(None), ERROR, self.span)
        reduce = op.has("metric") and "map" in lift
        for mode in reversed(lift):
            if mode == "map" and not reduce:
                result = dataset(result)
        node_lift = tuple("mean" if (m == "map" and reduce) else m for m in lift)
        domain.check_divisible(self, attempt, values)
        args = self._ir_args(values, attempt, node_lift, device)
        node = self.pc._node(op.name, args, result, self.span, stage=op.stage, lift=node_lift,
                             version=op.version, random=op.has("random"))
        return Val(Ref(node.id), result, self.span)

    def _attempt(self, types: dict[str, TyLike], values: dict[str, Val]) -> Attempt:
        mapping: dict[str, object] = {}
        expected = {p.name: fresh_vars(p.type, mapping) for p in self.op.params}  # type: ignore[arg-type]
        subst: Subst = {}
        conversions: dict[str, OpSig] = {}
        fn_conversions: dict[str, OpSig] = {}
        # functions last: their slot types are learnt from the data arguments
        order = sorted((p for p in self.op.params if p.name in types), key=lambda p: isinstance(p.type, Fn))
        for p in order:
            actual = types[p.name]
            if actual == Ty("None"):
                if p.default is None:
                    raise ArgMismatch(p, Mismatch(actual, expected[p.name]))
                continue
            def converter(value: TyLike, slot: TyLike, name: str = p.name) -> bool:
                conv = self._conversion(value, slot, {})
                if conv is not None:
                    fn_conversions[name] = conv
                return conv is not None

            try:
                fit(actual, expected[p.name], subst, converter)
            except Mismatch as m:
                conv = self._conversion(actual, expected[p.name], subst)
                if conv is None:
                    raise ArgMismatch(p, m) from None
                conversions[p.name] = conv
        return Attempt(subst, conversions, fn_conversions, mapping)

    def _conversion(self, actual: TyLike, expected: TyLike, subst: Subst) -> OpSig | None:
        for conv in self.pc.loader.std.all_ops().values():
            if not conv.has("conversion") or not conv.params:
                continue
            trial = dict(subst)
            mapping: dict[str, object] = {}
            try:
                inner: Subst = {}
                fit(actual, fresh_vars(conv.params[0].type, mapping), inner)  # type: ignore[arg-type]
                produced = finalize(resolve(fresh_vars(conv.result, mapping), inner))  # type: ignore[arg-type]
                fit(produced, expected, trial)
            except Mismatch:
                continue
            subst.clear()
            subst.update(trial)
            return conv
        return None

    def _result(self, attempt: Attempt, values: dict[str, Val], types: dict[str, TyLike]) -> TyLike:
        consts = {k: v.value.value for k, v in values.items() if isinstance(v.value, Const)}
        for p in self.op.params:
            if p.name not in consts and p.default is not None:
                literal = domain.default_literal(p.default)
                if isinstance(literal, Const):
                    consts[p.name] = literal.value
        for k, v in values.items():  # a param's value is known unless it is searched
            if isinstance(v.value, Ref) and v.value.node in self.pc.graph.nodes:
                node = self.pc.graph.nodes[v.value.node]
                if node.op == "param" and node.search is None and isinstance(node.args[0][1], Const):
                    consts[k] = node.args[0][1].value
        consts = {k: _tuple_ints(v) for k, v in consts.items()}
        result = finalize(resolve(fresh_vars(self.op.result, attempt.mapping), attempt.subst, consts))  # type: ignore[arg-type]
        primary = types.get(self.op.params[0].name) if self.op.params else None
        if self.op.has("intensity") and primary is not None:
            result = merge(result, primary)  # intensities change; shape and geometry do not
        return result

    def _pair(self, types: dict[str, TyLike], values: dict[str, Val], first: str) -> tuple[Attempt, TyLike, str] | None:
        pair = types[first]
        assert isinstance(pair, Ty)
        image_t, label_t = pair.params
        members = [image_t, label_t] if self.op.has("spatial") else [image_t]
        results: list[TyLike] = []
        attempt = None
        for member in members:
            trial = dict(types)
            trial[first] = member
            try:
                attempt = self._attempt(trial, values)
            except ArgMismatch as am:
                self._report(am, values, member_of_pair=member is label_t)
                return None
            domain.check_interpolation(self, member, values)
            results.append(self._result(attempt, values, trial))
        assert attempt is not None
        if self.op.has("spatial"):
            return attempt, Ty("Pair", (), (results[0], results[1])), "pair"
        return attempt, Ty("Pair", (), (results[0], label_t)), "image"

    # ----- IR arguments ---------------------------------------------------------------------

    def _ir_args(self, values: dict[str, Val], attempt: Attempt, lift: tuple[str, ...],
                 device: ast.Arg | None) -> tuple[tuple[str, Value], ...]:
        args: list[tuple[str, Value]] = []
        for p in self.op.params:
            if p.name in values:
                value = values[p.name].value
                conv = attempt.conversions.get(p.name)
                if conv is not None:
                    produced = finalize(resolve(_first_conv_result(conv, values[p.name].type), {}))
                    inner_lift = tuple(m for m in lift if m == "map")
                    if inner_lift:
                        produced = dataset(produced)
                    node = self.pc._node(conv.name, (("_", value),), produced, values[p.name].span,
                                         stage=conv.stage, lift=inner_lift, conversion=True, version=conv.version)
                    value = Ref(node.id)
                fn_conv = attempt.fn_conversions.get(p.name)
                if fn_conv is not None and isinstance(value, OpRef):
                    value = OpRef(value.op, (*value.args, ("convert_input", OpRef(fn_conv.name))))
                args.append((p.name, value))
            elif p.default is not None:
                literal = domain.default_literal(p.default)
                if isinstance(literal, OpRef) or (literal is not None and literal.value is not None):
                    args.append((p.name, literal))
        if device is not None:
            val = self.pc.expr(device.value, self.pc.enum("Device") and Ty("Device"))
            if isinstance(val.value, Const) and val.value.value in ("auto", "cpu", "gpu"):
                args.append((DEVICE_HINT, val.value))
            elif val.type != ERROR:
                self.pc.error("E0208", "a device hint is `cpu`, `gpu` or `auto`",
                              label(device.value.span, "not a device"))
        return tuple(args)

    # ----- mismatch reports -----------------------------------------------------------------

    def _report(self, am: ArgMismatch, values: dict[str, Val], member_of_pair: bool = False) -> None:
        from medasl.semantics.checker import Val

        val = values[am.param.name]
        if self.piped is not None and val is self.piped:
            # `x |> op`: the operator is what does not fit what flows into it
            val = Val(val.value, val.type, self.func_span, val.origin or val.span, val.origin_name or "the input")
        domain.report_mismatch(self.pc, am.mismatch, val, am.param.type, f"`{am.param.name}`", self.op,
                               member_of_pair=member_of_pair)


def _first_conv_result(conv: OpSig, actual: TyLike) -> TyLike:
    mapping: dict[str, object] = {}
    subst: Subst = {}
    inner = actual.params[0] if _is(actual, "Dataset") and not _is(conv.params[0].type, "Dataset") else actual  # type: ignore[union-attr]
    fit(inner, fresh_vars(conv.params[0].type, mapping), subst)  # type: ignore[arg-type]
    return resolve(fresh_vars(conv.result, mapping), subst)  # type: ignore[arg-type]


def _is(t: object, *names: str) -> bool:
    return isinstance(t, Ty) and t.name in names


def _enum_hint(t: TyLike) -> TyLike | None:
    """The expected type passed down to an argument: enums resolve bare names."""
    return t if isinstance(t, Ty) and (t.name not in ("Any",)) else None


def _tuple_ints(value: object) -> object:
    if isinstance(value, tuple) and all(isinstance(v, int | float) for v in value):
        return tuple(int(v) if float(v).is_integer() else v for v in value)
    return value


__all__ = ["CallChecker", "UNKNOWN"]
