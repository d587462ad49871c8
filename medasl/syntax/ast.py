"""The abstract syntax tree. Every node carries the span of the text it came from.

The AST is exactly what the user wrote, with no names resolved and no types checked;
`medasc compile --emit ast` prints it with `dump`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from medasl.source import Span

# ----- types as written -------------------------------------------------------


@dataclass(frozen=True)
class TypeArg:
    """One argument inside `[...]` of a type: 3, CT, D, ?, (128, 128), shape=(...)."""

    kind: str  # "number" | "name" | "unknown" | "shape" | "named"
    value: object  # int | str | None | tuple[int, ...] | (str, TypeArg)
    span: Span


@dataclass(frozen=True)
class TypeApp:
    """`Name[index]<params>{overrides}`, e.g. `Image[3, CT]`, `Pair<A, B>`, `S{shape=?}`."""

    name: str
    index: tuple[TypeArg, ...]
    params: tuple[TypeExpr, ...]
    overrides: tuple[tuple[str, TypeArg], ...]
    span: Span


@dataclass(frozen=True)
class FnType:
    """`(A, B) -> R`: the type of an operator passed as a value (a loss, a metric)."""

    params: tuple[TypeExpr, ...]
    result: TypeExpr
    span: Span


TypeExpr = TypeApp | FnType

# ----- expressions ------------------------------------------------------------


@dataclass(frozen=True)
class Name:
    id: str
    span: Span


@dataclass(frozen=True)
class Number:
    value: float | int
    text: str
    unit: str | None
    span: Span


@dataclass(frozen=True)
class String:
    value: str
    span: Span


@dataclass(frozen=True)
class Bool:
    value: bool
    span: Span


@dataclass(frozen=True)
class Tuple:
    items: tuple[Expr, ...]
    unit: str | None
    span: Span


@dataclass(frozen=True)
class ListExpr:
    items: tuple[Expr, ...]
    span: Span


@dataclass(frozen=True)
class Field:
    value: Expr
    name: str
    name_span: Span
    span: Span


@dataclass(frozen=True)
class Arg:
    """A call argument; `name` is None for a positional one."""

    name: str | None
    value: Expr
    span: Span
    name_span: Span | None = None


@dataclass(frozen=True)
class Call:
    func: Expr
    args: tuple[Arg, ...]
    span: Span


@dataclass(frozen=True)
class Pipe:
    """`left |> right`: right is a transform or a call whose first slot takes left."""

    left: Expr
    right: Expr
    span: Span


@dataclass(frozen=True)
class Ascription:
    """`expr as Type`: declares (and checks) what a source holds."""

    value: Expr
    type: TypeExpr
    span: Span


Expr = Name | Number | String | Bool | Tuple | ListExpr | Field | Call | Pipe | Ascription

# ----- statements and items ---------------------------------------------------


@dataclass(frozen=True)
class SearchSpace:
    kind: str
    kind_span: Span
    args: tuple[Arg, ...]
    span: Span


@dataclass(frozen=True)
class Param:
    name: str
    type: TypeExpr | None
    default: Expr
    search: SearchSpace | None
    span: Span
    name_span: Span
    docs: tuple[str, ...] = ()


@dataclass(frozen=True)
class Binding:
    name: str
    value: Expr
    goal: str | None  # "maximize" | "minimize"
    span: Span
    name_span: Span
    docs: tuple[str, ...] = ()


@dataclass(frozen=True)
class FParam:
    name: str
    type: TypeExpr | None
    span: Span


@dataclass(frozen=True)
class TransformDef:
    """A user transform: `prep(x) = x |> resample(...) |> window(...)`."""

    name: str
    params: tuple[FParam, ...]
    body: Expr
    span: Span
    name_span: Span
    docs: tuple[str, ...] = ()


@dataclass(frozen=True)
class Show:
    values: tuple[Expr, ...]
    span: Span
    docs: tuple[str, ...] = ()


@dataclass(frozen=True)
class Report:
    values: tuple[Expr, ...]
    span: Span
    docs: tuple[str, ...] = ()


@dataclass(frozen=True)
class Resources:
    args: tuple[Arg, ...]
    span: Span
    docs: tuple[str, ...] = ()


Stmt = Param | Binding | TransformDef | Show | Report | Resources


@dataclass(frozen=True)
class Pipeline:
    name: str
    stmts: tuple[Stmt, ...]
    span: Span
    name_span: Span
    docs: tuple[str, ...] = ()


@dataclass(frozen=True)
class Import:
    """`import std.pre` (module=('std', 'pre')) or `import "lib.medas" as lib` (file=...)."""

    module: tuple[str, ...] | None
    file: str | None
    alias: str | None
    span: Span
    docs: tuple[str, ...] = ()


@dataclass(frozen=True)
class Attribute:
    name: str
    args: tuple[object, ...]
    span: Span


@dataclass(frozen=True)
class TypeVar:
    name: str
    bound: TypeExpr | None
    span: Span


@dataclass(frozen=True)
class OpParam:
    name: str
    type: TypeExpr
    default: Expr | None
    span: Span


@dataclass(frozen=True)
class OpDecl:
    """An operator signature: `@spatial op resample(x: S, spacing: mm[D]) -> S`."""

    name: str
    attributes: tuple[Attribute, ...]
    type_vars: tuple[TypeVar, ...]
    params: tuple[OpParam, ...]
    result: TypeExpr
    span: Span
    name_span: Span
    docs: tuple[str, ...] = ()


@dataclass(frozen=True)
class EnumDecl:
    name: str
    values: tuple[str, ...]
    span: Span
    docs: tuple[str, ...] = ()


Item = Import | Pipeline | OpDecl | EnumDecl | TransformDef


@dataclass(frozen=True)
class Module:
    file: str
    items: tuple[Item, ...] = field(default=())


# ----- printing ---------------------------------------------------------------


def dump(node: object, indent: int = 0) -> str:
    """An indented, span-annotated dump of an AST (for `--emit ast` and snapshots).
    Walked with a stack of its own: a chain of thousands of `|>` is as deep as it is long."""
    out: list[str] = []
    todo: list[tuple[object, int] | str] = [(node, indent)]  # a node to dump at a depth, or a line
    while todo:
        item = todo.pop()
        if isinstance(item, str):
            out.append(item)
            continue
        value, depth = item
        pad = "  " * depth
        if isinstance(value, tuple):
            if not value:
                out.append(f"{pad}[]")
            todo.extend((v, depth) for v in reversed(value))
            continue
        if not hasattr(value, "__dataclass_fields__"):
            out.append(f"{pad}{value!r}")
            continue
        span = getattr(value, "span", None)
        where = f" @{span.line}:{span.column}" if isinstance(span, Span) else ""
        simple: list[str] = []
        nested: list[tuple[object, int] | str] = []
        for f in fields(value):  # type: ignore[arg-type]
            if f.name in ("span", "name_span", "kind_span") or f.name == "file":
                continue
            child = getattr(value, f.name)
            if child is None or child == ():
                continue
            if isinstance(child, tuple) and all(isinstance(v, str) for v in child):
                simple.append(f"{f.name}={list(child)!r}")
            elif hasattr(child, "__dataclass_fields__") or isinstance(child, tuple):
                nested += [f"{pad}  {f.name}:", (child, depth + 2)]
            else:
                simple.append(f"{f.name}={child!r}")
        out.append(f"{pad}{type(value).__name__}{where}" + (" " + " ".join(simple) if simple else ""))
        todo.extend(reversed(nested))
    return "\n".join(out)
