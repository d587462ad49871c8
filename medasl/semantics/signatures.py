"""Operator signatures: `op` declarations turned into typed records the checker uses.

Types written in signatures and in `as` ascriptions are converted here from AST to
`medasl.ir.types`. Signature types may mention type variables (`D`, `S`), parameters
of the same op (`ProbMap[3, classes]`) and overrides (`S{shape=size}`); those are
resolved per call by `instantiate`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from itertools import count

from medasl.ir.types import (
    CONSTRUCTORS,
    MODALITIES,
    UNKNOWN,
    AttrValue,
    Fn,
    Ty,
    TyLike,
    Var,
)
from medasl.source import Span
from medasl.syntax import ast

TYPE_VAR_NAME = re.compile(r"^[A-Z][0-9]*$")
GOALS = ("max", "min")


@dataclass(frozen=True)
class ParamRef:
    """An attribute given by the value of one of the op's own parameters."""

    name: str

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class Override:
    """`base{attr=value}`: base with one attribute replaced."""

    base: TyLike
    attr: str
    value: AttrValue | ParamRef


@dataclass(frozen=True)
class EnumDef:
    name: str
    values: tuple[str, ...]
    module: str
    docs: tuple[str, ...] = ()


@dataclass
class ParamSig:
    name: str
    type: TyLike
    default: ast.Expr | None
    span: Span | None = None

    @property
    def required(self) -> bool:
        return self.default is None


@dataclass
class OpSig:
    name: str
    module: str
    params: list[ParamSig]
    result: TyLike
    attrs: dict[str, tuple[object, ...]]
    docs: tuple[str, ...] = ()
    span: Span | None = None

    @property
    def area(self) -> str:
        return self.module.rsplit(".", 1)[-1]

    @property
    def stage(self) -> str:
        stage = self.attrs.get("stage")
        return str(stage[0]) if stage else self.area

    @property
    def version(self) -> int:
        version = self.attrs.get("version")
        return int(version[0]) if version else 1  # type: ignore[arg-type]

    @property
    def summary(self) -> str:
        return self.docs[0] if self.docs else ""

    def has(self, attribute: str) -> bool:
        return attribute in self.attrs

    def param(self, name: str) -> ParamSig | None:
        for p in self.params:
            if p.name == name:
                return p
        return None

    def signature_text(self, defaults: bool = False) -> str:
        """`name(x: S, spacing: mm[D]) -> S`; with `defaults`, each optional parameter
        with its default as written (`interp: Interp = auto`, `mask: ... = none`)."""
        from medasl.semantics.matching import format_sig_type

        params = ", ".join(f"{p.name}: {format_sig_type(p.type)}"
                           + (f" = {expr_text(p.default)}" if defaults and p.default is not None else "")
                           for p in self.params)
        return f"{self.name}({params}) -> {format_sig_type(self.result)}"


def expr_text(e: ast.Expr) -> str:
    """A default value as medas text (defaults are literals, names and calls of literals)."""
    if isinstance(e, ast.Number):
        return e.text + (f" {e.unit}" if e.unit else "")
    if isinstance(e, ast.String):
        return '"' + e.value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(e, ast.Bool):
        return "true" if e.value else "false"
    if isinstance(e, ast.Name):
        return e.id
    if isinstance(e, ast.Tuple):
        items = ", ".join(expr_text(i) for i in e.items)
        return f"({items}{',' if len(e.items) == 1 else ''})" + (f" {e.unit}" if e.unit else "")
    if isinstance(e, ast.ListExpr):
        return "[" + ", ".join(expr_text(i) for i in e.items) + "]"
    if isinstance(e, ast.Call):
        args = ", ".join((f"{a.name}=" if a.name else "") + expr_text(a.value) for a in e.args)
        return f"{expr_text(e.func)}({args})"
    if isinstance(e, ast.Field):
        return f"{expr_text(e.value)}.{e.name}"
    return "..."


@dataclass
class TypeContext:
    """What a type expression may refer to besides constructors."""

    enums: dict[str, EnumDef] = field(default_factory=dict)
    type_vars: dict[str, Var] = field(default_factory=dict)
    param_names: frozenset[str] = frozenset()
    allow_implicit_vars: bool = True


class TypeError_(Exception):  # noqa: N801 - distinguishes from the builtin
    def __init__(self, message: str, span: Span, help: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.span = span
        self.help = help


def type_from_ast(texpr: ast.TypeExpr, ctx: TypeContext) -> TyLike:
    """Convert a written type; raises TypeError_ for an unknown or malformed type."""
    if isinstance(texpr, ast.FnType):
        return Fn(tuple(type_from_ast(p, ctx) for p in texpr.params), type_from_ast(texpr.result, ctx))
    name = texpr.name
    if name in ctx.type_vars or (
        ctx.allow_implicit_vars and TYPE_VAR_NAME.match(name) and name not in CONSTRUCTORS
    ):
        var = ctx.type_vars.setdefault(name, Var(name))
        base: TyLike = var
    elif name in ctx.enums:
        base = Ty(name)
    elif name in CONSTRUCTORS or name == "Spatial":
        base = _constructor_type(texpr, ctx)
    else:
        from medasl.semantics.suggest import did_you_mean

        known = list(CONSTRUCTORS) + list(ctx.enums)
        raise TypeError_(
            f"unknown type `{name}`", texpr.span, did_you_mean(name, known)
        )
    for attr_name, targ in texpr.overrides:
        base = Override(base, attr_name, _attr_value(targ, attr_name, ctx))  # type: ignore[assignment]
    return base


def _constructor_type(texpr: ast.TypeApp, ctx: TypeContext) -> Ty:
    name = texpr.name
    if name == "Spatial":  # a bound: any spatial kind of the given dimensionality
        dim = _attr_value(texpr.index[0], "dim", ctx) if texpr.index else UNKNOWN
        return Ty("Spatial", (dim,))
    cons = CONSTRUCTORS[name]
    params = tuple(type_from_ast(p, ctx) for p in texpr.params)
    if cons.params != len(params) and not (cons.params == 1 and name == "Vec"):
        raise TypeError_(
            f"`{name}` takes {cons.params} type parameter{'s' if cons.params != 1 else ''} in `<...>`,"
            f" found {len(params)}",
            texpr.span,
        )
    if not cons.attrs and texpr.index:
        # `mm[3]`, `int[D]`: a fixed-length tuple of a scalar
        if len(texpr.index) != 1:
            raise TypeError_(f"a tuple type takes one length, like `{name}[3]`", texpr.span)
        length = _attr_value(texpr.index[0], "length", ctx)
        return Ty("Vec", (length,), (Ty(name),))
    values: list[AttrValue] = list(cons.defaults)
    positional = 0
    for targ in texpr.index:
        if targ.kind == "named":
            key, inner = targ.value  # type: ignore[misc]
            if key not in cons.attrs:
                raise TypeError_(
                    f"`{name}` has no attribute `{key}`; it has {', '.join(cons.attrs)}", targ.span
                )
            values[cons.attrs.index(key)] = _attr_value(inner, key, ctx)
        else:
            if positional >= max(cons.positional, 0) or positional >= len(cons.attrs):
                raise TypeError_(
                    f"`{name}` takes {cons.positional} value{'s' if cons.positional != 1 else ''}"
                    f" in `[...]`: {', '.join(cons.attrs[: cons.positional]) or 'none'}",
                    targ.span,
                )
            attr_name = cons.attrs[positional]
            values[positional] = _attr_value(targ, attr_name, ctx)
            positional += 1
    return Ty(name, tuple(values), params)


def _attr_value(targ: ast.TypeArg, attr_name: str, ctx: TypeContext) -> AttrValue | ParamRef:  # type: ignore[return]
    kind, value = targ.kind, targ.value
    if kind == "unknown":
        return UNKNOWN
    numbers = value if kind == "shape" else (value,) if kind == "number" else ()
    if any(not math.isfinite(v) for v in numbers):  # type: ignore[union-attr]
        raise TypeError_(f"a number in `{attr_name}` is too large", targ.span)  # beyond int(): no traceback
    if kind == "shape":
        return tuple(value)  # type: ignore[arg-type]
    if kind == "number":
        return int(value)  # type: ignore[arg-type]
    if kind == "name":
        text = str(value)
        if text == "_":
            return UNKNOWN
        if text in ctx.param_names:
            return ParamRef(text)
        if text in ctx.type_vars or (ctx.allow_implicit_vars and TYPE_VAR_NAME.match(text)):
            return ctx.type_vars.setdefault(text, Var(text))
        if attr_name == "modality":
            if text not in MODALITIES:
                from medasl.semantics.suggest import did_you_mean

                raise TypeError_(
                    f"unknown modality `{text}`",
                    targ.span,
                    did_you_mean(text, MODALITIES) or f"modalities are {', '.join(MODALITIES)}",
                )
            return text
        if attr_name == "goal":
            if text not in GOALS:
                raise TypeError_(f"a metric's goal is `max` or `min`, found `{text}`", targ.span)
            return text
        if attr_name == "dtype":
            return text
        raise TypeError_(f"`{attr_name}` must be a number here, found `{text}`", targ.span)
    raise TypeError_(f"unexpected `{attr_name}` value", targ.span)


# ----- instantiation ---------------------------------------------------------------

_fresh = count(1)


def fresh_vars(t: TyLike, mapping: dict[str, Var]) -> TyLike:
    """Rename the variables of a signature type apart, so two calls never share them."""

    def attr(v: object) -> object:
        if isinstance(v, Var):
            return _rename(v, mapping)
        return v

    if isinstance(t, Var):
        return _rename(t, mapping)
    if isinstance(t, Fn):
        return Fn(tuple(fresh_vars(p, mapping) for p in t.params), fresh_vars(t.result, mapping))
    if isinstance(t, Override):
        return Override(fresh_vars(t.base, mapping), t.attr, attr(t.value))  # type: ignore[arg-type]
    return Ty(t.name, tuple(attr(a) for a in t.attrs), tuple(fresh_vars(p, mapping) for p in t.params))  # type: ignore[arg-type]


def _rename(v: Var, mapping: dict[str, Var]) -> Var:
    if v.name not in mapping:
        bound = fresh_vars(v.bound, mapping) if v.bound is not None else None
        mapping[v.name] = Var(f"{v.name}'{next(_fresh)}", bound)  # type: ignore[arg-type]
    return mapping[v.name]


def without_overrides(t: TyLike | Override) -> TyLike:
    """`S{shape=?}` as plain `S`: what an operator's type says when the operator is a
    value (a function), where the overridden attribute depends on arguments not given."""
    if isinstance(t, Override):
        return without_overrides(t.base)
    if isinstance(t, Fn):
        return Fn(tuple(without_overrides(p) for p in t.params), without_overrides(t.result))
    if isinstance(t, Ty):
        return Ty(t.name, t.attrs, tuple(without_overrides(p) for p in t.params))
    return t


def signature_from_decl(decl: ast.OpDecl, module: str, enums: dict[str, EnumDef]) -> OpSig:
    """Build an OpSig; malformed types raise TypeError_ (a stdlib or user-module bug)."""
    ctx = TypeContext(enums=enums, param_names=frozenset(p.name for p in decl.params))
    for tv in decl.type_vars:
        ctx.type_vars[tv.name] = Var(tv.name)
    for tv in decl.type_vars:
        if tv.bound is not None:
            ctx.type_vars[tv.name] = Var(tv.name, type_from_ast(tv.bound, ctx))  # type: ignore[arg-type]
    params = [ParamSig(p.name, type_from_ast(p.type, ctx), p.default, p.span) for p in decl.params]
    # re-resolve so that every use of a bounded variable carries its bound
    params = [ParamSig(p.name, _rebind(p.type, ctx), p.default, p.span) for p in params]
    result = _rebind(type_from_ast(decl.result, ctx), ctx)
    attrs = {a.name: a.args for a in decl.attributes}
    return OpSig(decl.name, module, params, result, attrs, decl.docs, decl.name_span)


def _rebind(t: TyLike, ctx: TypeContext) -> TyLike:
    if isinstance(t, Var):
        return ctx.type_vars.get(t.name, t)
    if isinstance(t, Fn):
        return Fn(tuple(_rebind(p, ctx) for p in t.params), _rebind(t.result, ctx))
    if isinstance(t, Override):
        return Override(_rebind(t.base, ctx), t.attr, t.value)  # type: ignore[arg-type]
    return Ty(t.name, t.attrs, tuple(_rebind(p, ctx) for p in t.params))
