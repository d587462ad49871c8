"""Does a plug fit a slot? Matching of an actual type against a signature type.

`fit(actual, expected, subst)` binds the signature's variables in `subst` or raises
`Mismatch` saying which part disagrees. Actual types hold no variables, only `UNKNOWN`
attributes (a number nobody knows yet), which fit anything: the checker rejects what
is certainly wrong, not what it cannot prove right. Modality is the exception: an
undeclared modality (`Any`) does not fit a slot that needs CT, because windowing an image
of unknown modality in Hounsfield units is exactly the silent mistake we exist to catch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from medasl.ir.types import (
    CONSTRUCTORS,
    SPATIAL_KINDS,
    UNKNOWN,
    AttrValue,
    Fn,
    Ty,
    TyLike,
    Var,
    format_type,
)
from medasl.semantics.signatures import Override, ParamRef

ERROR = Ty("<error>")  # the type of a value whose checking already failed; fits anywhere

Subst = dict[str, object]

# Values that fit a slot of another scalar type: a whole number is a real number, and a
# string literal names a file.
IMPLICIT = {("int", "float"), ("str", "path")}
LISTABLE = ("Metric", "Figure", "Table", "Report")


@dataclass
class Mismatch(Exception):
    """`actual` does not fit `expected`; `attr` names the disagreeing attribute, if one."""

    actual: TyLike
    expected: TyLike
    attr: str | None = None
    actual_value: object = None
    expected_value: object = None

    def __str__(self) -> str:
        return f"expected {format_type(self.expected)}, found {format_type(self.actual)}"


Converter = Callable[[TyLike, TyLike, int], bool]


def _empty_tuple(t: TyLike) -> bool:
    return isinstance(t, Ty) and t.name == "Vec" and t.attrs[:1] == (0,)


def fit(actual: TyLike, expected: TyLike, subst: Subst, converter: Converter | None = None) -> None:
    """Fit `actual` into `expected`. `converter(value, slot, i)` is asked, inside function
    types only, whether a conversion can make a value fit the function's i-th parameter."""
    if actual == ERROR or expected == ERROR:
        return
    if isinstance(expected, Var):
        _fit_var(actual, expected, subst)
        return
    if isinstance(expected, Override):
        expected = resolve(expected, subst)
        if isinstance(expected, Override):  # base still unknown: fit the base
            fit(actual, expected.base, subst)
            return
    if isinstance(expected, Ty) and expected.name == "Any":
        return
    if _empty_tuple(actual) and isinstance(expected, Ty) and expected.name == "Vec" and expected.params:
        actual = Ty("Vec", actual.attrs, expected.params)  # type: ignore[union-attr]  # `()` has no element to disagree
    if isinstance(expected, Fn):
        if not isinstance(actual, Fn):
            raise Mismatch(actual, expected)
        fit_fn(actual, expected, subst, converter)
        return
    if isinstance(actual, Fn) or isinstance(actual, Var):
        raise Mismatch(actual, expected)
    assert isinstance(expected, Ty) and isinstance(actual, Ty)
    if actual.name == "PerFold" and expected.name != "PerFold" and _is_metric(actual.params[0]):
        # a metric over the folds of a cross-validation is one metric where one fits (a
        # report, `show`, an objective): its value is the mean over the folds
        actual = actual.params[0]  # type: ignore[assignment]
    if expected.name == "List" and actual.name != "List":
        # a tuple fits a list slot; one metric, figure or table is a list of one
        if actual.name == "Vec":
            fit(actual.params[0], expected.params[0], subst, converter)
            return
        if actual.name in LISTABLE:
            fit(actual, expected.params[0], subst, converter)
            return
    if expected.name == "Spatial":
        if actual.name not in SPATIAL_KINDS:
            raise Mismatch(actual, expected)
        fit_attr(actual.attrs[0], expected.attrs[0], "dim", subst, actual, expected)
        return
    if actual.name != expected.name:
        if (actual.name, expected.name) in IMPLICIT:
            return
        raise Mismatch(actual, expected)
    cons = CONSTRUCTORS.get(expected.name)
    names = cons.attrs if cons else ()
    # modality first: a stain operator given a 3D CT is wrong because of CT, not of 3D
    order = sorted(range(len(expected.attrs)), key=lambda i: names[i] != "modality" if i < len(names) else True)
    for i in order:
        fit_attr(actual.attrs[i], expected.attrs[i], names[i] if i < len(names) else "length", subst, actual, expected)
    if len(actual.params) != len(expected.params):
        raise Mismatch(actual, expected)
    for a, e in zip(actual.params, expected.params):
        try:
            fit(a, e, subst, converter)
        except Mismatch as inner:
            if inner.attr is not None or isinstance(inner.expected, Fn):
                raise
            # a structural disagreement inside: report the whole types, not a fragment
            raise Mismatch(actual, expected) from None


def _is_metric(t: TyLike) -> bool:
    return isinstance(t, Ty) and t.name == "Metric"


def _fit_var(actual: TyLike, var: Var, subst: Subst) -> None:
    if var.name in subst:
        bound = subst[var.name]
        fit(actual, bound, subst)  # type: ignore[arg-type]
        subst[var.name] = merge(bound, actual)  # type: ignore[arg-type]
        return
    if var.bound is not None:
        try:
            fit(actual, var.bound, subst)
        except Mismatch as exc:
            raise Mismatch(actual, var.bound, exc.attr, exc.actual_value, exc.expected_value) from None
    subst[var.name] = actual


def fit_attr(
    actual: AttrValue, expected: object, name: str, subst: Subst, at: Ty, et: Ty
) -> None:
    if expected is UNKNOWN or actual == expected or name in ("grid", "shape"):
        # grids (and the sizes they have) are compared by semantics/grids.py where values
        # meet voxel by voxel; elsewhere sizes may differ (a network trained on patches
        # validates and infers on whole volumes)
        return
    if isinstance(expected, Var):
        bound = subst.get(expected.name, None)
        if bound is None or bound is UNKNOWN:
            subst[expected.name] = actual
            return
        if actual is UNKNOWN:
            return
        if name == "modality" and bound == "Any":
            subst[expected.name] = actual
            return
        if bound != actual and not (name == "modality" and actual == "Any"):
            raise Mismatch(at, resolve(et, subst), name, actual, bound)
        return
    if name == "modality":
        if expected == "Any":
            return
        raise Mismatch(at, et, name, actual, expected)
    if name == "goal" and expected == "any":
        return
    if actual is UNKNOWN:
        return
    raise Mismatch(at, resolve(et, subst), name, actual, expected)


def fit_fn(actual: Fn, expected: Fn, subst: Subst, converter: Converter | None = None) -> None:
    """A function value fits a function slot when the slot's arguments fit its
    parameters (contravariance) and its result fits the slot's result."""
    if len(actual.params) != len(expected.params):
        raise Mismatch(actual, expected)
    inner: Subst = {}
    for index, (a_param, e_param) in enumerate(zip(actual.params, expected.params)):
        value = resolve(e_param, subst)
        if has_vars(value):
            # the slot's variable is not known yet: learn it from the function
            fit(finalize(resolve(a_param, inner)), e_param, subst)
        else:
            try:
                fit(value, a_param, inner)
            except Mismatch:
                if converter is None or not converter(value, resolve(a_param, inner), index):
                    raise
    fit(finalize(resolve(actual.result, inner)), expected.result, subst)


# ----- substitution ------------------------------------------------------------------


def resolve(t: TyLike | Override, subst: Subst, params: dict[str, object] | None = None) -> TyLike:
    """Apply a substitution (and parameter values, for `ParamRef`s) to a type."""
    if isinstance(t, Var):
        if t.name in subst:
            bound = subst[t.name]
            return resolve(bound, subst, params) if isinstance(bound, Ty | Fn | Var) else t  # type: ignore[arg-type]
        return t
    if isinstance(t, Fn):
        return Fn(tuple(resolve(p, subst, params) for p in t.params), resolve(t.result, subst, params))
    if isinstance(t, Override):
        base = resolve(t.base, subst, params)
        value = _resolve_attr(t.value, subst, params)
        if isinstance(base, Ty) and base.name in CONSTRUCTORS:
            cons = CONSTRUCTORS[base.name]
            if t.attr in cons.attrs:
                attrs = list(base.attrs)
                attrs[cons.attrs.index(t.attr)] = value
                return Ty(base.name, tuple(attrs), base.params)
            return base
        return Override(base, t.attr, value)  # type: ignore[return-value]
    return Ty(
        t.name,
        tuple(_resolve_attr(a, subst, params) for a in t.attrs),
        tuple(resolve(p, subst, params) for p in t.params),
    )


def _resolve_attr(value: object, subst: Subst, params: dict[str, object] | None) -> AttrValue:
    if isinstance(value, Var):
        bound = subst.get(value.name)
        return value if bound is None else bound  # type: ignore[return-value]
    if isinstance(value, ParamRef):
        if params is None:
            return value  # type: ignore[return-value]
        known = params.get(value.name, UNKNOWN)
        return known if isinstance(known, int | tuple | str) else UNKNOWN  # type: ignore[return-value]
    return value  # type: ignore[return-value]


def finalize(t: TyLike | Override) -> TyLike:
    """Replace variables nobody bound: attributes become unknown (modality `Any`),
    type variables `Any`. The result is an actual type."""
    if isinstance(t, Var):
        return Ty("Any")
    if isinstance(t, Override):
        return finalize(t.base)
    if isinstance(t, Fn):
        return Fn(tuple(finalize(p) for p in t.params), finalize(t.result))
    cons = CONSTRUCTORS.get(t.name)
    attrs = []
    for i, a in enumerate(t.attrs):
        if isinstance(a, Var | ParamRef):
            name = cons.attrs[i] if cons and i < len(cons.attrs) else ""
            a = {"modality": "Any", "goal": "any"}.get(name, UNKNOWN)
        attrs.append(a)
    return Ty(t.name, tuple(attrs), tuple(finalize(p) for p in t.params))


def has_vars(t: TyLike | Override) -> bool:
    if isinstance(t, Var | Override):
        return True
    if isinstance(t, Fn):
        return any(has_vars(p) for p in t.params) or has_vars(t.result)
    return any(isinstance(a, Var | ParamRef) for a in t.attrs) or any(has_vars(p) for p in t.params)


def merge(known: TyLike, other: TyLike) -> TyLike:
    """The more precise of two fitting types: unknown attributes filled from the other."""
    if not (isinstance(known, Ty) and isinstance(other, Ty)) or known.name != other.name:
        return known
    cons = CONSTRUCTORS.get(known.name)
    attrs = []
    for i, (a, b) in enumerate(zip(known.attrs, other.attrs)):
        name = cons.attrs[i] if cons and i < len(cons.attrs) else ""
        if a is UNKNOWN or (name == "modality" and a == "Any"):
            attrs.append(b)
        else:
            attrs.append(a)
    params = tuple(merge(a, b) for a, b in zip(known.params, other.params))
    return Ty(known.name, tuple(attrs), params)


def format_sig_type(t: TyLike | Override) -> str:
    if isinstance(t, Override):
        return f"{format_sig_type(t.base)}{{{t.attr}={t.value}}}"
    return format_type(t)
