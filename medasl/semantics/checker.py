"""AST -> typed IR: name resolution, type inference through pipes and transforms,
slot checking with lifting and conversions, and the domain checks.

The checker walks each pipeline's bindings on demand (so they may be written in any
order), inlines user transforms at each use, and builds the IR graph as it goes.
Every problem becomes a diagnostic; checking continues past errors, with the faulty
value typed `ERROR` so that one mistake is reported once.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

from medasl.diagnostics import Diagnostics, Label, label, secondary
from medasl.ir.graph import Const, Graph, Node, OpRef, Ref, Tup, Value
from medasl.ir.types import (
    BOOL,
    BYTES,
    CONSTRUCTORS,
    DEG,
    FIELDS,
    FLOAT,
    INT,
    MM,
    PATH,
    SPATIAL_KINDS,
    STR,
    UNKNOWN,
    Fn,
    Ty,
    TyLike,
    attr,
    dataset,
    format_type,
    vec,
)
from medasl.semantics import domain, folds, search, traits
from medasl.semantics.matching import (
    ERROR,
    Mismatch,
    finalize,
    fit,
    fit_attr,
    merge,
)
from medasl.semantics.modules import FileScope, Loader, Module, stdlib
from medasl.semantics.outputs import check_outputs
from medasl.semantics.signatures import (
    EnumDef,
    OpSig,
    TypeContext,
    TypeError_,
    fresh_vars,
    type_from_ast,
    without_overrides,
)
from medasl.semantics.suggest import did_you_mean
from medasl.source import SourceFile, Span
from medasl.syntax import ast
from medasl.syntax.parser import MAX_MAGNITUDE, check_nesting, number_text

UNIT_SCALE = {"mm": ("mm", 1.0), "cm": ("mm", 10.0), "um": ("mm", 0.001),
              "deg": ("deg", 1.0), "rad": ("deg", 57.29577951308232),
              "GB": ("bytes", 1024.0**3), "MB": ("bytes", 1024.0**2)}
UNIT_TYPES = {"mm": MM, "deg": DEG, "bytes": BYTES}
RESOURCE_KEYS = {"gpus": INT, "cpus": INT, "workers": INT, "memory": BYTES, "gpu_memory": BYTES}
SHOWABLE = ("Figure", "Table", "Metric")


@dataclass
class Val:
    """A checked expression: its IR value, its type, where it was written and, for a
    name, where that name was defined."""

    value: Value
    type: TyLike
    span: Span
    origin: Span | None = None
    origin_name: str | None = None


@dataclass
class CheckResult:
    graphs: list[Graph]
    diagnostics: Diagnostics
    sources: dict[str, SourceFile]


def check_source(source: SourceFile, diags: Diagnostics | None = None,
                 overrides: dict[str, str] | None = None) -> CheckResult:
    """Parse and check one file: the whole front end in one call. `overrides` gives
    parameters other values (`medasc run --set name=value`): each is parsed as a medas
    expression and checked as that parameter's default would be, so the graph is typed
    and checked with the values the run will use."""
    from medasl.syntax.parser import parse

    diags = diags if diags is not None else Diagnostics()
    sources = {source.name: source}
    tree = parse(source, diags)
    if tree is None:
        return CheckResult([], diags, sources)
    before = len(diags.items)
    result = check_module(tree, source, diags, sources, Overrides(dict(overrides or {}), diags, sources))
    if overrides:  # a mistake shown in the file may come from a `--set` value: say which were given
        given = "this check used " + ", ".join(f"--set {k}={v}" for k, v in overrides.items())
        diags.items[before:] = [replace(d, notes=(*d.notes, given))
                                if d.span is not None and not d.span.file.startswith("--set ") else d
                                for d in diags.items[before:]]
    return result


def override_source(name: str, text: str) -> SourceFile:
    """A `--set name=text` value as a small medas file, so that it is read by the
    language's own grammar (units, tuples, operators) and its diagnostics can show it."""
    value = text.strip()
    if value.startswith("@"):  # `--set loss=@dice_loss`, as the IR prints operator values, reads as `dice_loss`
        value = value[1:]
    return SourceFile(f"--set {name}", f"pipeline set {{\n  param {name} = {value}\n}}\n")


@dataclass
class Overrides:
    """The `--set` values of a check: their text, and each parsed once (as the default
    of a parameter `name` in a small file of its own) when a pipeline asks for it."""

    texts: dict[str, str]
    diags: Diagnostics
    sources: dict[str, SourceFile]
    parsed: dict[str, ast.Expr | None] = field(default_factory=dict)

    def expr(self, name: str) -> ast.Expr | None:
        from medasl.syntax.parser import parse

        if name not in self.parsed:
            source = override_source(name, self.texts[name])
            self.sources[source.name] = source
            tree = parse(source, self.diags)
            items = tree.items if tree is not None else ()
            stmts = items[0].stmts if len(items) == 1 and isinstance(items[0], ast.Pipeline) else ()
            found = len(stmts) == 1 and isinstance(stmts[0], ast.Param) and stmts[0].search is None
            if not found and tree is not None:
                self.diags.error("E0001", f"`--set {name}={self.texts[name]}`: the value is not one medas expression",
                                 help="give a value as it would be written in the file, e.g. --set lr=0.001 or "
                                 "--set \"spacing=(1.5, 1.5, 2) mm\"")
            self.parsed[name] = stmts[0].default if found else None  # type: ignore[union-attr]
        return self.parsed[name]

    def text_value(self, name: str) -> tuple[str, Span] | None:
        """A value for a text or path parameter as the shell gives it (`--set root=data/lits`),
        unless it is written as a medas string (`--set 'root="data/lits"'`)."""
        text = self.texts[name].strip()
        if len(text) >= 2 and text[0] == text[-1] == '"':
            return None
        column = len(f"  param {name} = ") + 1
        return text, Span(f"--set {name}", 2, column, 2, column + max(len(text), 1))


def check_module(
    tree: ast.Module, source: SourceFile, diags: Diagnostics, sources: dict[str, SourceFile],
    overrides: Overrides | None = None,
) -> CheckResult:
    if not check_nesting(tree, diags):
        return CheckResult([], diags, sources)
    loader = Loader(diags, sources)
    base_dir = Path(source.name).resolve().parent
    scope = loader.scope_for(tree, base_dir)
    sources.update(loader.std.sources)
    graphs = []
    seen: dict[str, Span] = {}
    for item in tree.items:
        if isinstance(item, ast.Pipeline):
            if item.name in seen:
                diags.error("E0103", f"pipeline `{item.name}` is defined twice",
                            label(item.name_span, "second definition"),
                            secondary(seen[item.name], "first definition"))
                continue
            seen[item.name] = item.name_span
            checker = PipelineChecker(item, scope, loader, diags, overrides or Overrides({}, diags, sources))
            try:
                graphs.append(checker.run())
            except RecursionError:
                # the parser bounds nesting within one expression (E0114 there, with its place);
                # values, transforms and calls can still nest through one another without end
                diags.error("E0114", f"pipeline `{item.name}` nests values, transforms and calls too deeply to check",
                            label(item.name_span, "nested too deeply"),
                            help="write the values in the order they are made (each after what it uses),"
                            " and give inner values names of their own")
    _check_unused_imports(tree, scope, graphs, diags)
    return CheckResult(graphs, diags, sources)


def _check_unused_imports(tree: ast.Module, scope: FileScope, graphs: list[Graph], diags: Diagnostics) -> None:
    if diags.has_errors or not any(isinstance(i, ast.Pipeline) for i in tree.items):
        return  # with errors the graph is incomplete; a module's imports serve its importers
    all_ops = stdlib().all_ops()
    used_modules = {all_ops[op].module for g in graphs for op in _ops_used(g) if op in all_ops}
    for module, span in scope.imported_std.items():
        if module not in used_modules and not domain.module_used_by_types(module, graphs):
            diags.warning("W0004", f"`{module}` is imported but nothing from it is used",
                          label(span, "unused import"), help="remove it from the import line")


def _ops_used(graph: Graph) -> set[str]:
    """Operators a graph calls, passes as values or searches over."""

    def walk(value: Value) -> set[str]:
        if isinstance(value, OpRef):
            return {value.op}.union(*(walk(v) for _, v in value.args))
        return set()

    used: set[str] = set()
    for node in graph.nodes.values():
        used.add(node.op)
        for _, v in node.args:
            used |= walk(v)
        for choice in (node.search or {}).get("args", ()):
            if isinstance(choice, str) and choice.startswith("@"):
                used.add(choice[1:])
    return used


@dataclass
class _Frame:
    """One inlined use of a user transform: its parameters and where it was used."""

    name: str
    params: dict[str, Val]
    use_span: Span
    in_pipeline: bool  # defined in the pipeline, so it sees the pipeline's values (lexical scope)


@dataclass
class PipelineChecker:
    """Checks one pipeline and builds its IR graph. Bindings and parameters are checked
    on demand, memoized in `values`; `in_progress` detects cycles; `frames` is the stack
    of user transforms being inlined (for their parameters and for error context)."""

    pipeline: ast.Pipeline
    file_scope: FileScope
    loader: Loader
    diags: Diagnostics
    overrides: Overrides | None = None  # the `--set` values
    graph: Graph = field(init=False)
    bindings: dict[str, ast.Binding] = field(default_factory=dict)
    params: dict[str, ast.Param] = field(default_factory=dict)
    transforms: dict[str, ast.TransformDef] = field(default_factory=dict)
    values: dict[str, Val] = field(default_factory=dict)
    in_progress: list[str] = field(default_factory=list)
    used: set[str] = field(default_factory=set)
    frames: list[_Frame] = field(default_factory=list)
    counter: dict[str, int] = field(default_factory=dict)
    reported: set[tuple[str, Span | None, str]] = field(default_factory=set)
    fields_memo: dict[tuple[str, str], Val] = field(default_factory=dict)
    conversions_memo: dict[tuple[str, str], str] = field(default_factory=dict)
    objective: ast.Binding | None = None
    folds_memo: dict[tuple[str, int], str] = field(default_factory=dict)  # (kfold node, index) -> its `fold` node
    grids: dict[str, tuple[str, Span]] = field(default_factory=dict)  # token -> what made it, where

    def __post_init__(self) -> None:
        self.graph = Graph(self.pipeline.name)

    # ----- diagnostics -------------------------------------------------------------

    def error(self, code: str, message: str, *labels: Label, help: str | None = None,
              notes: tuple[str, ...] = ()) -> None:
        self._emit("error", code, message, labels, help, notes)

    def warning(self, code: str, message: str, *labels: Label, help: str | None = None) -> None:
        self._emit("warning", code, message, labels, help, ())

    def _emit(self, severity: str, code: str, message: str, labels: tuple[Label, ...],
              help: str | None, notes: tuple[str, ...]) -> None:
        primary = labels[0].span if labels else None
        key = (code, primary, message)
        if key in self.reported:
            return  # the same mistake inside a transform used twice
        self.reported.add(key)
        context = tuple(secondary(f.use_span, f"in this use of `{f.name}`") for f in reversed(self.frames))
        emit = self.diags.error if severity == "error" else self.diags.warning
        emit(code, message, *labels, *context, help=help, notes=notes)

    # ----- statements ----------------------------------------------------------------

    def run(self) -> Graph:
        self._collect()
        for name in self.params:
            self._param(name)
        for name in self.bindings:
            self._binding(name)
        for stmt in self.pipeline.stmts:
            if isinstance(stmt, ast.Show):
                self._sinks(stmt.values, self.graph.shows, "show")
            elif isinstance(stmt, ast.Report):
                self._sinks(stmt.values, self.graph.reports, "report")
            elif isinstance(stmt, ast.Resources):
                self._resources(stmt)
        self._check_transforms_used()
        self._check_unused()
        check_outputs(self.graph, self.error, self.warning)
        self.graph.compute_hashes()
        return self.graph

    def _collect(self) -> None:
        seen: dict[str, Span] = {}
        for stmt in self.pipeline.stmts:
            if isinstance(stmt, ast.Param | ast.Binding | ast.TransformDef):
                if stmt.name in seen:
                    self.error("E0103", f"`{stmt.name}` is defined twice in pipeline `{self.pipeline.name}`",
                               label(stmt.name_span, "second definition"),
                               secondary(seen[stmt.name], "first definition"),
                               help="give each value its own name")
                    continue
                seen[stmt.name] = stmt.name_span
                if isinstance(stmt, ast.Param):
                    self.params[stmt.name] = stmt
                elif isinstance(stmt, ast.Binding):
                    self.bindings[stmt.name] = stmt
                else:
                    self.transforms[stmt.name] = stmt

    def _param(self, name: str) -> Val:
        if name in self.values:
            return self.values[name]
        stmt = self.params[name]
        if name in self.in_progress:
            return self._cycle(name, stmt.name_span)
        declared = None
        origin = stmt.span  # where the value is written: the default, or a `--set`
        if stmt.type is not None:
            declared = self._type(stmt.type)
        self.in_progress.append(name)
        try:
            default = self.expr(stmt.default, declared)
            ptype = declared if declared is not None else default.type
            if declared is not None:
                self._fit_value(default, declared, f"the default of `{name}`")
            given = self._override(name, declared or ptype) if ptype != ERROR else None
            if given is not None and given.type != ERROR:
                # the value stands where the default was: it must fit a declared type; without
                # one it gives the parameter its type (`--set "liver=(1, 2)"` for `liver = (5,)`),
                # and every use checks it as it would check that default
                if declared is None or self._fit_value(given, declared, f"`--set {name}`"):
                    default, ptype, origin = given, declared or given.type, given.span
            space = search.check_search(stmt, default, ptype, self) if stmt.search is not None else None
        finally:
            self.in_progress.pop()
        node = self.graph.add(Node(name, "param", (("default", default.value),), ptype, stmt.span,
                                   stage="params", binding=name, search=space))
        val = Val(Ref(node.id), ptype, stmt.name_span, origin, name)
        self.values[name] = val
        return val

    def _override(self, name: str, ptype: TyLike) -> Val | None:
        """The `--set` value of parameter `name`, checked as its default would be."""
        if self.overrides is None or name not in self.overrides.texts:
            return None
        text = self.overrides.text_value(name) if ptype in (STR, PATH) else None
        if text is not None:
            return Val(Const(text[0]), ptype, text[1])
        expr = self.overrides.expr(name)
        return self.expr(expr, ptype) if expr is not None else Val(Const(None), ERROR, self.pipeline.name_span)

    def _binding(self, name: str) -> Val:
        if name in self.values:
            return self.values[name]
        stmt = self.bindings[name]
        if name in self.in_progress:
            return self._cycle(name, stmt.name_span)
        self.in_progress.append(name)
        frames, self.frames = self.frames, []  # a binding is checked in the pipeline's scope
        try:
            val = self.expr(stmt.value)
        finally:
            self.frames = frames
            self.in_progress.pop()
        if isinstance(val.value, Ref) and val.value.node in self.graph.nodes:
            node = self.graph.nodes[val.value.node]
            if node.binding is None and node.id not in self.bindings and node.id not in self.params:
                self._rename(node, name)
                node.binding = name
                val = Val(Ref(node.id), val.type, val.span)
        val = folds.name_members(self, val, name)  # `fits_fold0`, `fits_fold1`, ...
        if stmt.goal is not None:
            domain.check_goal(stmt, val, self)
            if self.objective is not None:
                first = self.objective
                self.error("E0303", f"`{stmt.name}` is a second objective; `{first.name}` is already {first.goal}d",
                           label(stmt.span, "second objective"), secondary(first.span, "the objective"),
                           help="a pipeline has one objective for tuning; report the other metric instead,"
                           f" e.g. `report excel(\"scores.xlsx\", ({first.name}, {stmt.name}))`")
            else:
                self.objective = stmt
            if isinstance(val.value, Ref) and val.value.node in self.graph.nodes:
                self.graph.nodes[val.value.node].goal = stmt.goal
        val = Val(val.value, val.type, stmt.name_span, stmt.value.span, name)
        self.values[name] = val
        return val

    def new_grid(self, identity: str, made_by: str, span: Span) -> str:
        """The token of the grid a computation makes; the same computation, the same grid."""
        token = "g" + hashlib.sha256(identity.encode()).hexdigest()[:12]
        self.grids.setdefault(token, (made_by, span))
        return token

    def describe_grid(self, token: str) -> str:
        made_by, span = self.grids[token]
        return f"{made_by} (line {span.line})"

    def _sees_pipeline(self) -> bool:
        """Whether the code being checked may name the pipeline's values: a transform
        written outside the pipeline sees only its parameters and its module's imports."""
        return not self.frames or self.frames[-1].in_pipeline

    def _cycle(self, name: str, span: Span) -> Val:
        cycle = self.in_progress[self.in_progress.index(name):] + [name]
        self.error("E0401", f"`{name}` depends on itself: {' -> '.join(cycle)}", label(span, "defined here"),
                   help="a pipeline is a graph without cycles; break the chain with a new value")
        return Val(Const(None), ERROR, span)

    def _rename(self, node: Node, new_id: str) -> None:
        """Give a node its binding's name (nodes are created before names are known)."""
        old = node.id
        self.graph.rename(old, new_id)
        if node.op == "field":  # later uses of the same field find it under its new name
            key = (str(node.args[0][1]), str(node.args[1][1].value))  # type: ignore[union-attr]
            if key in self.fields_memo:
                cached = self.fields_memo[key]
                self.fields_memo[key] = Val(Ref(new_id), cached.type, cached.span)

    def _sinks(self, exprs: tuple[ast.Expr, ...], out: list[str], what: str) -> None:
        for e in exprs:
            val = self.expr(e)
            t = val.type
            targets = [val.value]
            if folds.is_per_fold(t):
                # a metric shows its folds together (one summary node); anything else, such as
                # `show loss_curve(fits)`, is shown for every fold
                if not folds.metric_inside(t):
                    targets = [one.value for one in folds.members(self, val)]
                t = t.params[0]  # type: ignore[union-attr]
            inner = t.params[0] if isinstance(t, Ty) and t.name == "Dataset" else t
            ok = (what == "show" and isinstance(inner, Ty) and inner.name in SHOWABLE) or (
                what == "report" and isinstance(inner, Ty) and inner.name == "Report"
            )
            if t != ERROR and not ok:
                wanted = "a figure, a table or a metric" if what == "show" else "a report, such as `html(...)` or `excel(...)`"
                self.error("E0210", f"`{what}` expects {wanted}, found {format_type(t)}",
                           label(e.span, f"this is {format_type(t)}"),
                           help="draw it first, e.g. `overlay(image, labels)` or `loss_curve(fit)`" if what == "show"
                           else "write it with a report operator, e.g. `excel(\"scores.xlsx\", score)`")
                continue
            out += [target.node for target in targets if isinstance(target, Ref)]

    def _resources(self, stmt: ast.Resources) -> None:
        for arg in stmt.args:
            name = arg.name or ""
            span = arg.name_span or arg.span
            if name not in RESOURCE_KEYS:
                self.error("E0601", f"unknown resource `{name}`", label(span, "not a resource"),
                           help=did_you_mean(name, RESOURCE_KEYS) or f"resources are {', '.join(RESOURCE_KEYS)}")
                continue
            val = self.expr(arg.value, RESOURCE_KEYS[name])
            if self._fit_value(val, RESOURCE_KEYS[name], f"resource `{name}`"):
                if isinstance(val.value, Const):
                    self.graph.resources[name] = val.value

    def _check_transforms_used(self) -> None:
        for name, t in self.transforms.items():
            if name not in self.used:
                self.warning("W0003", f"transform `{name}` is never used", label(t.name_span, "defined here"),
                             help=f"apply it with `data |> {name}`, or remove it")

    def _check_unused(self) -> None:
        sinks = set(self.graph.shows) | set(self.graph.reports)
        for name, stmt in self.bindings.items():
            val = self.values.get(name)
            node_id = val.value.node if val is not None and isinstance(val.value, Ref) else name
            writes = node_id in self.graph.nodes and self.graph.nodes[node_id].stage == "output"
            if name in self.used or stmt.goal is not None or node_id in sinks or writes or (val is not None and val.type == ERROR):
                continue
            self.warning("W0001", f"`{name}` is computed but never used", label(stmt.name_span, "never used"),
                         help="use it, `show` it, `report` it, or mark it `maximize`/`minimize`; otherwise remove it")
        for name, stmt in self.params.items():
            if name not in self.used:
                self.warning("W0002", f"parameter `{name}` is never used", label(stmt.name_span, "never used"),
                             help=f"pass it to an operator, e.g. `optimizer=adam(lr={name})`, or remove it")

    # ----- types ------------------------------------------------------------------------

    def _type(self, texpr: ast.TypeExpr) -> TyLike | None:
        if not domain.check_written_type(self, texpr):
            return None
        ctx = TypeContext(enums=self.file_scope.enums, allow_implicit_vars=False)
        try:
            t = type_from_ast(texpr, ctx)
        except TypeError_ as exc:
            self.error("E0113", exc.message, label(exc.span, "not a valid type"), help=exc.help)
            return None
        return finalize(t)

    def _fit_value(self, val: Val, expected: TyLike, what: str) -> bool:
        try:
            fit(val.type, expected, {})
        except Mismatch as m:
            domain.report_mismatch(self, m, val, expected, what, None)
            return False
        return True

    # ----- expressions ------------------------------------------------------------------

    def expr(self, e: ast.Expr, expected: TyLike | None = None) -> Val:
        if isinstance(e, ast.Number):
            return self._number(e)
        if isinstance(e, ast.String):
            return Val(Const(e.value), STR, e.span)
        if isinstance(e, ast.Bool):
            return Val(Const(e.value), BOOL, e.span)
        if isinstance(e, ast.Tuple):
            return self._tuple(e, expected)
        if isinstance(e, ast.ListExpr):
            items = [self.expr(i) for i in e.items]
            elem = items[0].type if items else Ty("Any")
            if all(isinstance(i.value, Const) for i in items):
                return Val(Const(tuple(_const(i) for i in items)), Ty("List", (), (elem,)), e.span)
            return Val(Tup(tuple(i.value for i in items), kind="list"), Ty("List", (), (elem,)), e.span)
        if isinstance(e, ast.Name):
            return self._name(e, expected)
        if isinstance(e, ast.Field):
            return self._field(e)
        if isinstance(e, ast.Call):
            return self._call_expr(e, None, expected)
        if isinstance(e, ast.Pipe):
            return self._pipe(e, expected)
        if isinstance(e, ast.Ascription):
            return self._ascription(e)
        raise AssertionError(f"unknown expression {e!r}")

    def _number(self, e: ast.Number) -> Val:
        base, scale = UNIT_SCALE[e.unit] if e.unit is not None else (None, 1.0)
        value = e.value * scale if scale != 1.0 else e.value
        if not math.isfinite(value) or abs(value) > MAX_MAGNITUDE:  # `1e999`, `--set n=99999999999999999999`
            self.error("E0242", f"the number `{number_text(e.text)}` is too large", label(e.span, "too large to use"),
                       help=f"numbers are limited to ±2^53 (about {MAX_MAGNITUDE:.4g}); write the value the operator"
                       " needs, in the unit it takes")
            return Val(Const(None), ERROR, e.span)
        if base is None:
            return Val(Const(e.value), INT if isinstance(e.value, int) else FLOAT, e.span)
        return Val(Const(float(value), base), UNIT_TYPES[base], e.span)

    def _tuple(self, e: ast.Tuple, expected: TyLike | None) -> Val:
        elem_expected = expected.params[0] if isinstance(expected, Ty) and expected.name == "Vec" else None
        items = [self.expr(i, elem_expected) for i in e.items]
        if e.unit is not None:
            base, scale = UNIT_SCALE[e.unit]
            bad = [i for i in items if i.type not in (INT, FLOAT) or not isinstance(i.value, Const)]
            for item in bad:
                if item.type == ERROR and isinstance(item.value, Const) and item.value.value is None:
                    continue  # reported where it was found (a number too large)
                if isinstance(item.value, Const) or item.type == ERROR:
                    self.error("E0207", f"a unit applies to numbers, found {format_type(item.type)}",
                               label(item.span, "not a number"))
                else:
                    self.error("E0207", "a unit applies to numbers written in place, not to a named value",
                               label(item.span, "a named value"),
                               help="give the value its unit where it is defined, e.g. `param size = 1.5 mm`")
            if bad:
                return Val(Const(None), ERROR, e.span)
            values = tuple(float(_const(i)) * scale for i in items)  # type: ignore[arg-type]
            if any(not math.isfinite(v) or abs(v) > MAX_MAGNITUDE for v in values):  # `(1e308, 1, 1) cm`
                self.error("E0242", f"a number of this tuple is too large in {base}", label(e.span, "too large to use"),
                           help=f"numbers are limited to ±2^53 (about {MAX_MAGNITUDE:.4g})")
                return Val(Const(None), ERROR, e.span)
            return Val(Const(values, base), vec(UNIT_TYPES[base], len(items)), e.span)
        if any(i.type == ERROR for i in items):
            return Val(Const(None), ERROR, e.span)
        elem = _common_type([i.type for i in items])
        if all(isinstance(i.value, Const) for i in items):
            return Val(Const(tuple(_const(i) for i in items), items[0].value.unit if items else None),  # type: ignore[union-attr]
                       vec(elem, len(items)), e.span)
        return Val(Tup(tuple(i.value for i in items)), vec(elem, len(items)), e.span)

    def _name(self, e: ast.Name, expected: TyLike | None) -> Val:
        name = e.id
        if isinstance(expected, Ty) and expected.name in self.file_scope.enums:
            enum = self.file_scope.enums[expected.name]
            if name in enum.values:
                return Val(Const(name), expected, e.span)
        for frame in reversed(self.frames[-1:]):
            if name in frame.params:
                v = frame.params[name]
                return Val(v.value, v.type, e.span, v.origin, v.origin_name)
        if name in self.params and self._sees_pipeline():
            self.used.add(name)
            v = self._param(name)
            return Val(v.value, v.type, e.span, v.origin, name)
        if name in self.bindings and self._sees_pipeline():
            self.used.add(name)
            v = self._binding(name)
            return Val(v.value, v.type, e.span, v.origin, name)
        if name == "none":
            return Val(Const(None), Ty("None"), e.span)
        op = self.file_scope.ops.get(name)
        if op is not None:
            return self.op_value(op, (), e.span)
        if name in self.transforms or name in self.file_scope.transforms:
            self.used.add(name)
            self.error("E0110", f"transform `{name}` is used without its input",
                       label(e.span, "a transform, not a value"),
                       help=f"apply it to data: `data |> {name}`")
            return Val(Const(None), ERROR, e.span)
        return self._unknown_name(e, expected)

    def _unknown_name(self, e: ast.Name, expected: TyLike | None) -> Val:
        name = e.id
        if isinstance(expected, Ty) and expected.name in self.file_scope.enums:
            enum = self.file_scope.enums[expected.name]
            self.error("E0208", f"`{name}` is not a valid {enum.name}",
                       label(e.span, f"expected one of {', '.join(enum.values)}"),
                       help=did_you_mean(name, enum.values))
            return Val(Const(None), ERROR, e.span)
        std_op = self.loader.std.find_op(name)
        if std_op is not None:
            self.error("E0101", f"`{name}` is not imported", label(e.span, f"`{name}` is in {std_op.module}"),
                       help=f"add `import {std_op.module}` at the top of the file")
            return Val(Const(None), ERROR, e.span)
        if not self._sees_pipeline() and (name in self.params or name in self.bindings or name in self.transforms):
            self.error("E0101", f"`{name}` is not visible in transform `{self.frames[-1].name}`",
                       label(e.span, "defined in the pipeline, not here"),
                       help="a transform written outside a pipeline sees only its own inputs and its file's"
                       f" imports: pass `{name}` to it as an input")
            return Val(Const(None), ERROR, e.span)
        pipeline_names = [*self.params, *self.bindings, *self.transforms] if self._sees_pipeline() else []
        candidates = [*pipeline_names, *self.file_scope.ops, *self.file_scope.transforms]
        if self.frames:
            candidates.extend(self.frames[-1].params)
        hint = did_you_mean(name, candidates)
        if hint is None:
            near = did_you_mean(name, self.loader.std.all_ops())
            if near is not None:
                hint = f"{near} (add its module to the imports)"
        self.error("E0101", f"unknown name `{name}`", label(e.span, "not defined"), help=hint)
        return Val(Const(None), ERROR, e.span)

    def _field(self, e: ast.Field) -> Val:
        if isinstance(e.value, ast.Name) and e.value.id in self.file_scope.failed_aliases:
            return Val(Const(None), ERROR, e.span)  # its import is reported already
        if isinstance(e.value, ast.Name) and e.value.id in self.file_scope.aliases:
            module = self.file_scope.aliases[e.value.id]
            if e.name in module.ops:
                return self.op_value(module.ops[e.name], (), e.span)
            self.error("E0109", f"module `{e.value.id}` has no operator `{e.name}`",
                       label(e.name_span, "not found"),
                       help=did_you_mean(e.name, [*module.ops, *module.transforms]))
            return Val(Const(None), ERROR, e.span)
        base = self.expr(e.value)
        if base.type == ERROR:
            return Val(Const(None), ERROR, e.span)
        return self._field_of(base, e)

    def _field_of(self, base: Val, e: ast.Field) -> Val:
        """Field `e.name` of the checked value `base`."""
        if folds.is_per_fold(base.type):  # `folds.val.image`: the field of every fold's value
            assert isinstance(base.type, Ty)
            found = [self._field_of(one, e) for one in folds.members(self, base)]
            if any(f.type == ERROR for f in found):
                return Val(Const(None), ERROR, e.span)
            return folds.collect(self, found, base.type.attrs[0], folds.partition(base.type), e.span)  # type: ignore[arg-type]
        if isinstance(base.type, Ty) and base.type.name == "Folds" and e.name in FIELDS["Split"]:
            return folds.parts(self, base, e.name, e.span, e.name_span)
        t = base.type
        lift: tuple[str, ...] = ()
        if isinstance(t, Ty) and t.name == "Dataset" and isinstance(t.params[0], Ty) and t.params[0].name == "Pair":
            lift, container, inner = ("map",), t, t.params[0]
        else:
            container, inner = None, t
        fields = FIELDS.get(inner.name, {}) if isinstance(inner, Ty) else {}
        if e.name not in fields:
            where = f"{format_type(t)}"
            avail = ", ".join(f"`.{f}`" for f in fields) if fields else "no fields"
            self.error("E0109", f"{where} has no field `{e.name}`", label(e.name_span, f"{format_type(t)} has {avail}"),
                       help=did_you_mean(e.name, fields))
            return Val(Const(None), ERROR, e.span)
        assert isinstance(inner, Ty)
        ftype = inner.params[fields[e.name]]
        if inner.name == "Split":
            ftype = dataset(ftype)
        if container is not None:
            ftype = dataset(ftype)
        key = (str(base.value), e.name)
        if key in self.fields_memo:
            cached = self.fields_memo[key]
            return Val(cached.value, cached.type, e.span)
        node = self.add_node("field", (("_", base.value), ("name", Const(e.name))), ftype, e.span,
                          stage=self._stage_of(base.value), lift=lift,
                          prefix=f"{_value_name(base.value)}_{e.name}")
        val = Val(Ref(node.id), ftype, e.span)
        self.fields_memo[key] = val
        return val

    def _stage_of(self, value: Value) -> str:
        if isinstance(value, Ref) and value.node in self.graph.nodes:
            return self.graph.nodes[value.node].stage
        return "data"

    def _ascription(self, e: ast.Ascription) -> Val:
        val = self.expr(e.value)
        declared = self._type(e.type)
        if declared is None or val.type == ERROR:
            return Val(val.value, ERROR, e.span)
        actual = val.type
        wrap = 0
        while isinstance(actual, Ty) and actual.name == "Dataset" and not (
            isinstance(declared, Ty) and declared.name == "Dataset"
        ):
            actual, wrap = actual.params[0], wrap + 1
        try:
            _refine(actual, declared)
        except Mismatch as m:
            self.error("E0202", f"this value is {format_type(val.type)}; it cannot be declared {format_type(declared)}",
                       label(e.type.span, domain.describe_mismatch(m)),
                       secondary(e.value.span, f"this is {format_type(val.type)}"))
            return Val(val.value, ERROR, e.span)
        result = merge(declared, actual)  # what the user declared, plus what the checker knows
        for _ in range(wrap):
            result = dataset(result)
        if isinstance(val.value, Ref) and val.value.node in self.graph.nodes:
            self.graph.nodes[val.value.node].type = result
        return Val(val.value, result, e.span, val.origin, val.origin_name)

    # ----- calls ------------------------------------------------------------------------

    def _pipe(self, e: ast.Pipe, expected: TyLike | None) -> Val:
        # a chain `a |> f |> g |> ...` nests to the left: walk it in a loop, not by
        # recursion, so that pipelines of thousands of steps are fine
        steps = []
        node: ast.Expr = e
        while isinstance(node, ast.Pipe):
            steps.append(node)
            node = node.left
        value = self.expr(node)
        for step in reversed(steps):
            value = self._pipe_step(step, value, expected if step is e else None)
        return value

    def _pipe_step(self, e: ast.Pipe, left: Val, expected: TyLike | None) -> Val:
        right = e.right
        if isinstance(right, ast.Name | ast.Field):
            return self._apply(right, (), left, e.span, expected)
        if isinstance(right, ast.Call) and isinstance(right.func, ast.Name | ast.Field):
            return self._apply(right.func, right.args, left, e.span, expected)
        help_text = "write `x |> resample(spacing=(1, 1, 1) mm)` or `x |> my_transform`"
        if isinstance(right, ast.Ascription):
            help_text = ("`as` binds tighter than `|>`: declare the type where the data is read, or put the"
                         " pipe in parentheses: `(x |> op(...)) as Type`")
        self.error("E0110", "the right side of `|>` must be an operator or a transform",
                   label(right.span, "not an operator"), help=help_text)
        return Val(Const(None), ERROR, e.span)

    def _call_expr(self, e: ast.Call, piped: Val | None, expected: TyLike | None) -> Val:
        if isinstance(e.func, ast.Name | ast.Field):
            return self._apply(e.func, e.args, piped, e.span, expected)
        self.error("E0108", "only operators and transforms can be called", label(e.func.span, "not callable"))
        return Val(Const(None), ERROR, e.span)

    def _apply(self, func: ast.Name | ast.Field, args: tuple[ast.Arg, ...], piped: Val | None,
               span: Span, expected: TyLike | None) -> Val:
        target = self._callee(func)
        if target is None:
            for a in args:
                self.expr(a.value)
            return Val(Const(None), ERROR, span)
        if isinstance(target, ast.TransformDef):
            return self._inline(target, args, piped, span, func.span)
        return self.call_op(target, args, piped, span, func.span, expected)

    def _callee(self, func: ast.Name | ast.Field) -> OpSig | ast.TransformDef | None:
        if isinstance(func, ast.Field):
            if isinstance(func.value, ast.Name) and func.value.id in self.file_scope.failed_aliases:
                return None  # its import is reported already
            if isinstance(func.value, ast.Name) and func.value.id in self.file_scope.aliases:
                module: Module = self.file_scope.aliases[func.value.id]
                if func.name in module.transforms:
                    self.used.add(func.name)
                    return module.transforms[func.name]
                if func.name in module.ops:
                    return module.ops[func.name]
                self.error("E0109", f"module `{func.value.id}` has no transform or operator `{func.name}`",
                           label(func.name_span, "not found"),
                           help=did_you_mean(func.name, [*module.ops, *module.transforms]))
                return None
            self.error("E0108", "only operators and transforms can be called", label(func.span, "not callable"))
            return None
        name = func.id
        if name in self.transforms and self._sees_pipeline():
            self.used.add(name)
            return self.transforms[name]
        if name in self.file_scope.transforms:
            self.used.add(name)
            return self.file_scope.transforms[name]
        if name in self.file_scope.ops:
            return self.file_scope.ops[name]
        if (self._sees_pipeline() and (name in self.bindings or name in self.params)) or (
                self.frames and name in self.frames[-1].params):
            self.used.add(name)
            self.error("E0108", f"`{name}` is a value, not an operator", label(func.span, "cannot be called"))
            return None
        self._unknown_name(func, None)
        return None

    def _inline(self, t: ast.TransformDef, args: tuple[ast.Arg, ...], piped: Val | None,
                span: Span, func_span: Span) -> Val:
        if any(f.name == t.name for f in self.frames):
            chain = " -> ".join([f.name for f in self.frames] + [t.name])
            self.error("E0401", f"transform `{t.name}` uses itself: {chain}", label(func_span, "recursive use"),
                       help="transforms are expanded where they are used, so they cannot be recursive")
            return Val(Const(None), ERROR, span)
        given: list[Val] = [piped] if piped is not None else []
        named: dict[str, Val] = {}
        for a in args:
            if a.name is None:
                given.append(self.expr(a.value))
            else:
                named[a.name] = self.expr(a.value)
        names = [p.name for p in t.params]
        bound: dict[str, Val] = {}
        for pname, v in zip(names, given):
            bound[pname] = v
        for key, v in named.items():
            if key not in names:
                self.error("E0104", f"transform `{t.name}` has no parameter `{key}`",
                           label(v.span, "unknown parameter"), help=did_you_mean(key, names))
                continue
            bound[key] = v
        if len(given) > len(names) or len(bound) < len(names):
            self.error("E0115", f"transform `{t.name}` takes {len(names)} input{'s' if len(names) != 1 else ''}"
                       f" ({', '.join(names)}), given {len(given) + len(named)}",
                       label(span, "wrong number of inputs"), secondary(t.name_span, "defined here"))
            return Val(Const(None), ERROR, span)
        for p in t.params:
            if p.type is not None:
                declared = self._type(p.type)
                if declared is not None:
                    self._fit_value(bound[p.name], declared, f"`{p.name}` of transform `{t.name}`")
        self.frames.append(_Frame(t.name, bound, span, in_pipeline=self.transforms.get(t.name) is t))
        outer, self.file_scope = self.file_scope, self.file_scope.home_of(t)
        try:
            result = self.expr(t.body)
        finally:
            self.frames.pop()
            self.file_scope = outer
        return Val(result.value, result.type, span)

    def op_value(self, op: OpSig, bound_args: tuple[tuple[str, Value], ...], span: Span) -> Val:
        """An operator used as a value: its required data parameters become the function's."""
        mapping: dict[str, object] = {}
        bound_names = {k for k, _ in bound_args}
        params = tuple(without_overrides(fresh_vars(p.type, mapping))
                       for p in op.params if p.required and p.name not in bound_names)  # type: ignore[arg-type]
        result = without_overrides(fresh_vars(op.result, mapping))  # type: ignore[arg-type]
        return Val(OpRef(op.name, bound_args), Fn(params, result), span)

    def call_op(self, op: OpSig, args: tuple[ast.Arg, ...], piped: Val | None, span: Span,
                func_span: Span, expected: TyLike | None) -> Val:
        from medasl.semantics.calls import CallChecker

        return CallChecker(self, op, span, func_span).check(args, piped, expected)

    # ----- IR building ------------------------------------------------------------------

    def add_node(self, op: str, args: tuple[tuple[str, Value], ...], type_: TyLike, span: Span | None,
              stage: str, lift: tuple[str, ...] = (), prefix: str | None = None, **kw: object) -> Node:
        base = prefix or op
        n = self.counter.get(base, 0) + 1
        self.counter[base] = n
        node_id = f"{base}_{n}" if n > 1 or base in self.bindings or base in self.params else base
        while node_id in self.graph.nodes or node_id in self.bindings or node_id in self.params:
            n += 1
            self.counter[base] = n
            node_id = f"{base}_{n}"
        sig = stdlib().find_op(op)
        return self.graph.add(Node(node_id, op, args, type_, span, stage=stage, lift=lift,
                                   module=sig.module if sig else "", traits=traits.traits(sig, op, stage),
                                   interp=traits.interpolation(sig, dict(args), type_),
                                   path_params=traits.path_params(sig), **kw))  # type: ignore[arg-type]

    def enum(self, name: str) -> EnumDef | None:
        return self.file_scope.enums.get(name)


def _refine(actual: TyLike, declared: TyLike) -> None:
    """An ascription may fill in what is unknown (modality, dim, classes) but not
    contradict what is known."""
    if not isinstance(actual, Ty) or not isinstance(declared, Ty):
        if actual != declared and not (isinstance(actual, Ty) and actual.name == "Any"):
            raise Mismatch(actual, declared)
        return
    if actual.name == "Any":
        return
    if actual.name == "Image" and attr(actual, "modality") == "Any" and declared.name in SPATIAL_KINDS:
        # a reader cannot tell a label map from an image: the user's declaration can
        fit_attr(attr(actual, "dim"), attr(declared, "dim"), "dim", {}, actual, declared)
        return
    if actual.name != declared.name:
        raise Mismatch(actual, declared)
    cons = CONSTRUCTORS.get(actual.name)
    for i, (a, d) in enumerate(zip(actual.attrs, declared.attrs)):
        name = cons.attrs[i] if cons else ""
        if a is UNKNOWN or d is UNKNOWN or a == d:
            continue
        if name == "modality" and a == "Any":
            continue
        raise Mismatch(actual, declared, name, a, d)
    for a, d in zip(actual.params, declared.params):
        _refine(a, d)


def _common_type(types: list[TyLike]) -> TyLike:
    """The element type of a tuple: int and float make float; values of one constructor
    keep what they agree on (a Dice and an HD95 are both metrics)."""
    if not types:
        return Ty("Any")  # `()`: no element to say, so it fits a tuple of anything
    types = [t.params[0] if folds.metric_inside(t) else t for t in types]  # type: ignore[union-attr]
    names = {format_type(t) for t in types}
    if names <= {"int"}:
        return INT
    if names <= {"int", "float"}:
        return FLOAT
    if len(names) == 1:
        return types[0]
    first = types[0]
    if all(isinstance(t, Ty) and isinstance(first, Ty) and t.name == first.name and t.params == first.params
           for t in types):
        assert isinstance(first, Ty)
        cons = CONSTRUCTORS.get(first.name)
        attrs = []
        for i, value in enumerate(first.attrs):
            same = all(t.attrs[i] == value for t in types)  # type: ignore[union-attr]
            default = cons.defaults[i] if cons else UNKNOWN
            attrs.append(value if same else default)
        return Ty(first.name, tuple(attrs), first.params)
    return Ty("Any")


def _const(val: Val) -> object:
    return val.value.value if isinstance(val.value, Const) else None


def _value_name(value: Value) -> str:
    if isinstance(value, Ref):
        return value.node
    return "value"




__all__ = ["check_source", "check_module", "CheckResult", "PipelineChecker", "Val"]
