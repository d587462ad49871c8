"""Checking one operator call: binding arguments to slots, lifting over datasets and
pairs, inserting conversions, the domain checks, and the IR node it becomes."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from medasl.diagnostics import label, secondary
from medasl.ir.graph import Const, OpRef, Ref, Tup, Value
from medasl.ir.types import (
    COLLECTIONS,
    CONSTRUCTORS,
    SPATIAL_KINDS,
    UNKNOWN,
    Fn,
    Ty,
    TyLike,
    attr,
    dataset,
    format_type,
    with_attr,
)
from medasl.semantics import domain, folds, grids
from medasl.semantics.matching import ERROR, Mismatch, Subst, finalize, fit, merge, resolve
from medasl.semantics.signatures import OpSig, ParamSig, fresh_vars
from medasl.semantics.suggest import did_you_mean
from medasl.source import Span
from medasl.syntax import ast

if TYPE_CHECKING:
    from medasl.semantics.checker import PipelineChecker, Val

DEVICE_HINT = "on"


@dataclass
class ArgMismatch(Exception):
    param: ParamSig
    mismatch: Mismatch
    subst: Subst  # what the attempt had learnt, to print the slot as precisely as known
    slot: TyLike  # the parameter's type with this attempt's variables
    note: str | None = None
    in_pair_label: bool = False  # the label of a pair did not fit


@dataclass
class Attempt:
    subst: Subst
    conversions: dict[str, OpSig]  # parameter -> conversion inserted before the call
    fn_conversions: dict[str, dict[int, OpSig]]  # function parameter -> its inputs' conversions
    mapping: dict[str, object]  # signature variable -> this attempt's fresh variable


class CallChecker:
    def __init__(self, pc: PipelineChecker, op: OpSig, span: Span, func_span: Span) -> None:
        self.pc = pc
        self.op = op
        self.span = span
        self.func_span = func_span
        self.piped: Val | None = None
        self._grid: str | None = None
        self.values: dict[str, Val] = {}
        self.allow_conversions = True

    def new_grid(self) -> str:
        """The grid this call creates (one per call: image and label share it). The same
        operator with the same arguments on the same grids makes the same grid, so that
        a transform written twice (`folds.val |> prep`) gives comparable values; a random
        operator makes a grid of its own at each place it is written."""
        if self._grid is None:
            identity = [self.op.name, str(self.span) if self.op.has("random") else ""]
            for name, val in sorted(self.values.items()):
                on = grids.grids_in(val.type)
                identity.append(f"{name}={on if on else val.value}")
            self._grid = self.pc.new_grid("\n".join(identity), f"`{self.op.name}`", self.span)
        return self._grid

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
            help_text = f"signature: {op.signature_text()}"
            if piped is not None:
                help_text = f"with `|>` the value on the left is already the first argument; {help_text}"
            self.pc.error("E0106", f"`{op.name}` takes at most {len(params)} positional argument"
                          f"{'s' if len(params) != 1 else ''}, given {len(positional)}",
                          label(extra[2], "one too many"), help=help_text)
            ok = False
        for p, given in zip(params, positional):
            exprs[p.name] = given
        names = [p.name for p in params]
        misspelt = False
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
                if not self._enum_value(a.value):  # `orientaton=RAS`: RAS is fine, the name is not
                    self.pc.expr(a.value)
                ok, misspelt = False, True
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
        if missing and not misspelt:  # a misspelt name is reported once, as unknown
            given_data = [p for p in params if p.required and p.name in exprs]
            if (op.has("loss") or op.has("metric") or op.has("fn")) and not given_data:
                bound = tuple((k, v.value) for k, v in values.items())
                return self.pc.op_value(op, bound, self.span)
            listed = ", ".join(f"`{p.name}: {format_type(finalize(p.type))}`" for p in missing)
            self.pc.error("E0105", f"`{op.name}` is missing {listed}", label(self.span, "missing argument"),
                          help=f"signature: {op.signature_text()}")
            ok = False
        if not ok or any(v.type == ERROR for v in values.values()):
            return Val(Const(None), ERROR, self.span)
        per_fold = folds.lift_call(self, values, device, expected)  # once for every fold of a cross-validation
        if per_fold is not None:
            return per_fold
        return self._typed(values, device, expected)

    def _enum_value(self, e: ast.Expr) -> bool:
        """Whether `e` is a bare name that some enum in scope holds: the value of an
        argument whose name is misspelt is then no mistake of its own to report."""
        return isinstance(e, ast.Name) and any(e.id in enum.values for enum in self.pc.file_scope.enums.values())

    # ----- typing with lifting ------------------------------------------------------------

    def _typed(self, values: dict[str, Val], device: ast.Arg | None, expected: TyLike | None) -> Val:
        from medasl.semantics.checker import Val

        op = self.op
        self.values = values
        first = op.params[0].name if op.params else None
        # conversions are the last resort: lifting over datasets and pairs comes first,
        # so that a pair given to `window` stays a pair instead of losing its label
        try:
            attempt, result, lift, types = self._lift(values, conversions=False)
        except ArgMismatch as without:
            try:
                attempt, result, lift, types = self._lift(values, conversions=True)
            except ArgMismatch as with_conversions:
                # a precise disagreement (modality, 2D/3D, classes) beats a vaguer one
                am = without if without.mismatch.attr is not None else with_conversions
                self._report(am, values, member_of_pair=am.in_pair_label)
                return Val(Const(None), ERROR, self.span)
        paired = any(mode in ("pair", "image") for mode in lift)
        if not paired and first in types:
            domain.check_interpolation(self, types[first], values)
        domain.check_patterns(self, values)
        grids.check_agreement(self, values, types)
        domain.check_ranges(self, values)
        domain.check_limits(self, values, types)
        reduce = op.has("metric") and "map" in lift
        for mode in reversed(lift):
            if mode == "map" and not reduce:
                result = dataset(result)
        node_lift = tuple("reduce" if (m == "map" and reduce) else m for m in lift)
        domain.check_divisible(self, attempt, values)
        args = self._ir_args(values, attempt, node_lift, device)
        node = self.pc.add_node(op.name, args, result, self.span, stage=op.stage, lift=node_lift,
                             version=op.version, random=op.has("random"))
        return Val(Ref(node.id), result, self.span)

    def _lift(self, values: dict[str, Val], conversions: bool
              ) -> tuple[Attempt, TyLike, list[str], dict[str, TyLike]]:
        """Fit the arguments, unwrapping datasets (`map`) and pairs until they fit;
        raises the last ArgMismatch when nothing does."""
        op = self.op
        self.allow_conversions = conversions
        types = {k: v.type for k, v in values.items()}
        lift: list[str] = []
        first = op.params[0].name if op.params else None
        while True:
            try:
                attempt = self._attempt(types, values)
                return attempt, self._result(attempt, values, types), lift, types
            except ArgMismatch:
                actual_first = types.get(first) if first else None
                if _is(actual_first, "Dataset") and not _is(op.params[0].type, *COLLECTIONS):
                    for p in op.params:
                        if p.name in types and _is(types[p.name], "Dataset") and not _is(p.type, *COLLECTIONS):
                            types[p.name] = types[p.name].params[0]  # type: ignore[union-attr]
                    lift.append("map")
                    continue
                if _is(actual_first, "Pair") and (op.has("spatial") or op.has("intensity")) and not _is(op.params[0].type, "Pair"):
                    attempt, result, mode = self._pair(types, values, first)  # type: ignore[arg-type]
                    lift.append(mode)
                    return attempt, result, lift, types
                if _is(actual_first, "Pair") and _is(op.params[0].type, "LabelMap", "Instances", "OneHot"):
                    attempt, result = self._label_member(types, values, first)  # type: ignore[arg-type]
                    lift.append("label")
                    return attempt, result, lift, types
                raise

    def _attempt(self, types: dict[str, TyLike], values: dict[str, Val]) -> Attempt:
        mapping: dict[str, object] = {}
        expected = {p.name: fresh_vars(p.type, mapping) for p in self.op.params}  # type: ignore[arg-type]
        subst: Subst = {}
        conversions: dict[str, OpSig] = {}
        fn_conversions: dict[str, dict[int, OpSig]] = {}
        # functions last: their slot types are learnt from the data arguments
        order = sorted((p for p in self.op.params if p.name in types), key=lambda p: isinstance(p.type, Fn))
        for p in order:
            actual = types[p.name]
            if actual == Ty("None"):
                if p.default is None:
                    raise ArgMismatch(p, Mismatch(actual, expected[p.name]), subst, expected[p.name])
                continue
            def converter(value: TyLike, slot: TyLike, index: int, name: str = p.name) -> bool:
                if not self.allow_conversions:
                    return False
                conv, _ = self._conversion(value, slot, {})
                if conv is not None:
                    fn_conversions.setdefault(name, {})[index] = conv
                return conv is not None

            try:
                fit(actual, expected[p.name], subst, converter)
            except Mismatch as m:
                if not self.allow_conversions:
                    raise ArgMismatch(p, m, subst, expected[p.name]) from None
                conv, after = self._conversion(actual, expected[p.name], subst)
                if conv is None:
                    if after is not None:  # converted, it would still not fit: say why
                        raise ArgMismatch(p, after[1], subst, expected[p.name],
                                          f"after converting it with `{after[0]}`") from None
                    raise ArgMismatch(p, m, subst, expected[p.name]) from None
                conversions[p.name] = conv
        return Attempt(subst, conversions, fn_conversions, mapping)

    def _conversion(self, actual: TyLike, expected: TyLike, subst: Subst
                    ) -> tuple[OpSig | None, tuple[str, Mismatch] | None]:
        """A conversion that makes `actual` fit; else, the mismatch left after the first
        conversion that accepts `actual` (the more telling error)."""
        if _is(actual, "Dataset") and _is(expected, "Dataset"):  # convert case by case
            return self._conversion(actual.params[0], expected.params[0], subst)  # type: ignore[union-attr]
        after = None
        for conv in self.pc.loader.std.conversions():
            trial = dict(subst)
            mapping: dict[str, object] = {}
            inner: Subst = {}
            try:
                fit(actual, fresh_vars(conv.params[0].type, mapping), inner)  # type: ignore[arg-type]
            except Mismatch:
                continue
            produced = finalize(resolve(fresh_vars(conv.result, mapping), inner))  # type: ignore[arg-type]
            try:
                fit(produced, expected, trial)
            except Mismatch as m:
                after = after or (conv.name, m)
                continue
            subst.clear()
            subst.update(trial)
            return conv, None
        return None, after

    def _result(self, attempt: Attempt, values: dict[str, Val], types: dict[str, TyLike]) -> TyLike:
        consts = {k: v.value.value for k, v in values.items() if isinstance(v.value, Const)}
        for p in self.op.params:
            if p.name not in consts and p.default is not None:
                literal = domain.default_literal(p.default)
                if isinstance(literal, Const):
                    consts[p.name] = literal.value
        for k, v in values.items():  # a param's value is known unless it is searched
            if isinstance(v.value, Ref | Tup):
                literal = domain.literal_with_defaults(self.pc.graph, v.value)
                if literal is not None:
                    consts[k] = literal
        consts = {k: _tuple_ints(v) for k, v in consts.items()}
        result = finalize(resolve(fresh_vars(self.op.result, attempt.mapping), attempt.subst, consts))  # type: ignore[arg-type]
        primary = types.get(self.op.params[0].name) if self.op.params else None
        if self.op.has("intensity") and primary is not None:
            result = merge(result, primary)  # intensities change; shape and geometry do not
        result = _kept_classes(self.op, result, consts)
        return grids.place(self, self._network(result, consts, types), types)

    def _network(self, result: TyLike, consts: dict[str, object], types: dict[str, TyLike]) -> TyLike:
        """A network's type: shape-free (a fully convolutional network trained on patches
        runs on whole volumes), with its down-sampling factor, declared by
        `@downsample(16)` or `@downsample(strides)` (the product of a tuple parameter)
        and kept by training."""
        if not _is(result, "Model", "Trained"):
            return result
        assert isinstance(result, Ty)
        result = Ty(result.name, result.attrs, tuple(grids.without_grid(_without_shape(p)) for p in result.params))
        spec = self.op.attrs.get("downsample")
        factor: object = None
        if spec:
            value = spec[0] if isinstance(spec[0], int) else consts.get(str(spec[0]))
            if isinstance(value, int):
                factor = value
            elif isinstance(value, tuple) and all(isinstance(v, int) for v in value):
                factor = math.prod(value)
        else:
            for t in types.values():
                if folds.is_per_fold(t):  # `ensemble(fits)`: the fold models' factor
                    t = t.params[0]  # type: ignore[union-attr]
                if _is(t, "Model", "Trained"):
                    factor = attr(t, "downsample")  # type: ignore[arg-type]
        return with_attr(result, "downsample", factor) if isinstance(factor, int) else result

    def _pair(self, types: dict[str, TyLike], values: dict[str, Val], first: str) -> tuple[Attempt, TyLike, str]:
        """A pair given to a one-image operator. Spatial operators move both members
        with the same geometry; a target without a voxel grid (a class, boxes in world
        coordinates) is carried along; intensity operators touch the image only."""
        pair = types[first]
        assert isinstance(pair, Ty)
        image_t, label_t = pair.params
        on_grid = isinstance(label_t, Ty) and label_t.name in SPATIAL_KINDS
        members = [image_t, label_t] if self.op.has("spatial") and on_grid else [image_t]
        results: list[TyLike] = []
        attempt = None
        for member in members:
            trial = dict(types)
            trial[first] = member
            try:
                attempt = self._attempt(trial, values)
                self._no_member_conversion(attempt, first, member)
            except ArgMismatch as am:
                am.in_pair_label = member is label_t
                raise
            domain.check_interpolation(self, member, values)
            results.append(self._result(attempt, values, trial))
        assert attempt is not None
        if len(results) == 2:
            return attempt, Ty("Pair", (), (results[0], results[1])), "pair"
        moves_target = self.op.has("spatial") and isinstance(label_t, Ty) and label_t.name in ("Boxes", "Points")
        return attempt, Ty("Pair", (), (results[0], label_t)), "pair" if moves_target else "image"

    def _label_member(self, types: dict[str, TyLike], values: dict[str, Val], first: str) -> tuple[Attempt, TyLike]:
        """A pair given to an operator on label maps (`select_labels`, `largest_component`):
        it applies to the label, and the image passes through (`[label]`)."""
        pair = types[first]
        assert isinstance(pair, Ty)
        image_t, label_t = pair.params
        trial = dict(types)
        trial[first] = label_t
        try:
            attempt = self._attempt(trial, values)
            self._no_member_conversion(attempt, first, label_t)
        except ArgMismatch as am:
            am.in_pair_label = True
            raise
        return attempt, Ty("Pair", (), (image_t, self._result(attempt, values, trial)))

    def _no_member_conversion(self, attempt: Attempt, first: str, member: TyLike) -> None:
        """A member of a pair fits only as it is: a conversion node converts a whole value,
        and cannot reach into a pair (it would be given the pair, and crash)."""
        if first in attempt.conversions:
            param = self.op.params[0]
            raise ArgMismatch(param, Mismatch(member, param.type), attempt.subst, param.type)

    # ----- IR arguments ---------------------------------------------------------------------

    def _ir_args(self, values: dict[str, Val], attempt: Attempt, lift: tuple[str, ...],
                 device: ast.Arg | None) -> tuple[tuple[str, Value], ...]:
        args: list[tuple[str, Value]] = []
        for p in self.op.params:
            if p.name in values:
                value = values[p.name].value
                conv = attempt.conversions.get(p.name)
                if conv is not None:
                    value = self._converted(conv, values[p.name])
                args.append((p.name, value))
                for index, fn_conv in sorted(attempt.fn_conversions.get(p.name, {}).items()):
                    args.append((f"{p.name}.{self._fn_input_name(value, index)}", OpRef(fn_conv.name)))
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

    def _converted(self, conv: OpSig, val: Val) -> Value:
        """The node converting `val` (one per value and conversion, however often used)."""
        key = (str(val.value), conv.name)
        if key not in self.pc.conversions_memo:
            produced, depth = _converted_type(conv, val.type)
            # the argument is named as the conversion declares it (`x`), as a call written by
            # the user would be: the runtime binds arguments to the implementation by name
            node = self.pc.add_node(conv.name, ((conv.params[0].name, val.value),), produced, val.span, stage=conv.stage,
                                 lift=("map",) * depth, conversion=True, version=conv.version)
            self.pc.conversions_memo[key] = node.id
        return Ref(self.pc.conversions_memo[key])

    def _fn_input_name(self, value: Value, index: int) -> str:
        """The name of a function value's index-th input (`pred`, `target`), for the IR."""
        if isinstance(value, OpRef):
            op = self.pc.loader.std.find_op(value.op)
            if op is not None:
                bound = {k for k, _ in value.args}
                names = [p.name for p in op.params if p.required and p.name not in bound]
                if index < len(names):
                    return names[index]
        return f"input{index + 1}"

    # ----- mismatch reports -----------------------------------------------------------------

    def _alternatives(self, am: ArgMismatch) -> list[str]:
        """Operators of the same kind (losses, metrics) that would fit a function slot."""
        slot = am.slot
        if not isinstance(slot, Fn):
            return []
        kind = "loss" if isinstance(slot.result, Ty) and slot.result.name == "Loss" else "metric"
        names = []
        for op in self.pc.loader.std.all_ops().values():
            if not op.has(kind):
                continue
            value = self.pc.op_value(op, (), self.span)
            trial = dict(am.subst)
            try:
                fit(value.type, resolve(am.slot, trial), trial)
            except Mismatch:
                continue
            names.append(op.name)
        return names[:4]

    def _report(self, am: ArgMismatch, values: dict[str, Val], member_of_pair: bool = False) -> None:
        from medasl.semantics.checker import Val

        val = values[am.param.name]
        if self.piped is not None and val is self.piped:
            # `x |> op`: the operator is what does not fit what flows into it
            val = Val(val.value, val.type, self.func_span, val.origin or val.span, val.origin_name or "the input")
        alternatives = self._alternatives(am) if isinstance(am.param.type, Fn) else []
        domain.report_mismatch(self.pc, am.mismatch, val, am.slot, f"`{am.param.name}`", self.op,
                               member_of_pair=member_of_pair, subst=am.subst, note=am.note,
                               alternatives=alternatives, values=values)


def _converted_type(conv: OpSig, actual: TyLike) -> tuple[TyLike, int]:
    """The type a conversion produces from `actual`, applied inside as many datasets
    as it takes, and that number of datasets."""
    if _is(actual, "Dataset") and not _is(conv.params[0].type, "Dataset"):
        inner, depth = _converted_type(conv, actual.params[0])  # type: ignore[union-attr]
        return dataset(inner), depth + 1
    mapping: dict[str, object] = {}
    subst: Subst = {}
    fit(actual, fresh_vars(conv.params[0].type, mapping), subst)  # type: ignore[arg-type]
    return finalize(resolve(fresh_vars(conv.result, mapping), subst)), 0  # type: ignore[arg-type]


def _without_shape(t: TyLike) -> TyLike:
    if not isinstance(t, Ty):
        return t
    if t.name in CONSTRUCTORS and "shape" in CONSTRUCTORS[t.name].attrs:
        t = with_attr(t, "shape", UNKNOWN)
    return Ty(t.name, t.attrs, tuple(_without_shape(p) for p in t.params))


def _is(t: object, *names: str) -> bool:
    return isinstance(t, Ty) and t.name in names


def _enum_hint(t: TyLike) -> TyLike | None:
    """The expected type passed down to an argument: enums resolve bare names."""
    return t if isinstance(t, Ty) and (t.name not in ("Any",)) else None


def _kept_classes(op: OpSig, result: TyLike, consts: dict[str, object]) -> TyLike:
    """`@kept_classes(labels, merge)` (`select_labels`): a label map keeping the values
    `labels` has len(labels) classes and background, or one class and background with
    `merge`; the checker knows it when both are constants, so a network or loss with
    another number of classes is an error before anything runs."""
    spec = op.attrs.get("kept_classes")
    if not spec or len(spec) != 2 or not isinstance(result, Ty) or result.name != "LabelMap":
        return result
    labels, merge = consts.get(str(spec[0])), consts.get(str(spec[1]))
    if not isinstance(labels, tuple) or not isinstance(merge, bool):
        return result
    return with_attr(result, "classes", 2 if merge else len(labels) + 1)


def _tuple_ints(value: object) -> object:
    if isinstance(value, tuple) and all(isinstance(v, int | float) for v in value):
        return tuple(int(v) if float(v).is_integer() else v for v in value)
    return value


__all__ = ["CallChecker"]
