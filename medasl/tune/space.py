"""The search space of a study: one dimension per `param ... search` clause.

The checker has already checked every clause (medasl/semantics/search.py: bounds,
kinds, the default inside its range or among its choices); this module only reads the
result. A trial's value for a parameter is written as the `--set` text that gives it
(`--set lr=0.0012`, `--set "net=fcn2d(in_channels=3, classes=2)"`), so a trial is the
pipeline checked again with those values, exactly as `medasc run --set` would check
it, and the best trial's command line reproduces it.

Numbers come from hyperopt as floats: `int(lo, hi)` is searched as `quniform(lo - 0.5,
hi + 0.5, 1)` rounded and clamped, which gives every whole number the same prior
probability (hyperopt's `uniformint` gives the two ends half of it) and keeps the
order that TPE models; a choice is searched by its index.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from medasl.ir.graph import Const, Graph, OpRef, Ref, format_value
from medasl.ir.types import INT, format_type
from medasl.source import SourceFile, Span
from medasl.syntax import ast


@dataclass(frozen=True)
class Dimension:
    """One searched parameter."""

    name: str
    kind: str  # uniform | loguniform | quniform | int | choice
    bounds: tuple[float, ...]  # numeric kinds: low, high (and step for quniform)
    options: tuple[str, ...]  # choice: each option as written in the file (a medas expression)
    labels: tuple[object, ...]  # choice: each option as the checker recorded it (numbers stay numbers)
    default: float  # the default as hyperopt sees it: a number, or the index of a choice
    whole: bool  # the parameter is an `int`
    unit: str | None  # the unit of the default (`mm`, `deg`), given to every drawn number
    type_text: str

    def describe(self) -> str:
        if self.kind == "choice":
            return f"choice({', '.join(self.options)})"
        bounds = [int(b) for b in self.bounds] if self.kind == "int" else self.bounds
        return f"{self.kind}({', '.join(_number(b) for b in bounds)})"

    def hyperopt(self) -> object:
        from hyperopt import hp

        if self.kind == "choice":
            return hp.choice(self.name, list(range(len(self.options))))
        low, high = self.bounds[0], self.bounds[1]
        if self.kind == "uniform":
            return hp.uniform(self.name, low, high)
        if self.kind == "loguniform":
            return hp.loguniform(self.name, math.log(low), math.log(high))
        if self.kind == "quniform":
            return hp.quniform(self.name, low, high, self.bounds[2])
        return hp.quniform(self.name, low - 0.5, high + 0.5, 1)  # int(lo, hi), inclusive (module docstring)

    def value(self, raw: float) -> tuple[object, str]:
        """A value hyperopt drew: what it is (for tables and plots) and its `--set` text."""
        if self.kind == "choice":
            index = int(raw)
            label = self.labels[index]
            shown = label if isinstance(label, int | float) and not isinstance(label, bool) else self.options[index]
            return shown, self.options[index]
        number = float(raw)
        if self.kind == "int":
            number = min(max(round(number), self.bounds[0]), self.bounds[1])
        if self.whole or self.kind == "int":
            number = int(round(number))
        text = _number(number)
        return number, f"{text} {self.unit}" if self.unit else text


def _number(value: float) -> str:
    """A number as medas reads it back to the same float: `repr` round-trips exactly
    (and writes `3.0` for a float, so a float parameter stays a float)."""
    return repr(value)


def _plain(value: object) -> object:
    """A choice's label as JSON holds it: numbers and text as they are, others as text."""
    return value if isinstance(value, int | float | str | bool) or value is None else str(value)


@dataclass(frozen=True)
class Space:
    pipeline: str
    dimensions: tuple[Dimension, ...]

    def hyperopt(self) -> dict[str, object]:
        return {d.name: d.hyperopt() for d in self.dimensions}

    def to_json(self) -> list[dict[str, object]]:
        """What makes two studies comparable: resuming with another space is refused."""
        return [{"name": d.name, "kind": d.kind, "bounds": list(d.bounds), "options": list(d.options),
                 "labels": [_plain(v) for v in d.labels], "type": d.type_text} for d in self.dimensions]

    def defaults(self) -> dict[str, float]:
        return {d.name: d.default for d in self.dimensions}

    def values(self, raw: dict[str, float]) -> tuple[dict[str, object], dict[str, str]]:
        """Hyperopt's draw as (values, `--set` texts), by parameter name."""
        values, sets = {}, {}
        for d in self.dimensions:
            values[d.name], sets[d.name] = d.value(raw[d.name])
        return values, sets


def without_searches(source: SourceFile, tree: ast.Module, names: set[str]) -> SourceFile:
    """The file with the `search ...` clauses of parameters `names` blanked out (spaces,
    so every line and column stays where it was): the text a trial is checked as.

    The checker treats a searched parameter as unknown where a rule needs a literal (a
    window divisible by the network's down-sampling, E0230), because across a study it
    takes many values; in a trial it has one, given by `--set`, and is checked as a
    plain parameter would be, so a combination a rule refuses is refused before the
    trial runs."""
    lines = source.text.split("\n")
    for item in tree.items:
        if not isinstance(item, ast.Pipeline):
            continue
        for stmt in item.stmts:
            if isinstance(stmt, ast.Param) and stmt.search is not None and stmt.name in names:
                start, end = stmt.default.span, stmt.search.span
                _blank(lines, start.end_line, start.end_column, end.end_line, end.end_column)
    return SourceFile(source.name, "\n".join(lines))


def _blank(lines: list[str], line: int, column: int, end_line: int, end_column: int) -> None:
    """Spaces over [line:column, end_line:end_column) (1-based lines and columns)."""
    for number in range(line, end_line + 1):
        text = lines[number - 1]
        first = column - 1 if number == line else 0
        last = end_column - 1 if number == end_line else len(text)
        lines[number - 1] = text[:first] + " " * (last - first) + text[last:]


def span_text(source: SourceFile, span: Span) -> str:
    lines = source.text.splitlines()[span.line - 1:span.end_line]
    if not lines:
        return ""
    if len(lines) == 1:
        return lines[0][span.column - 1:span.end_column - 1]
    lines[0] = lines[0][span.column - 1:]
    lines[-1] = lines[-1][:span.end_column - 1]
    return " ".join(line.strip() for line in lines)


def read_space(graph: Graph, tree: ast.Module, source: SourceFile) -> Space:
    """The dimensions of pipeline `graph` (checked, before the passes: its `param` nodes
    still carry their spaces), with each choice's options as written in `tree`."""
    written = {stmt.name: stmt for item in tree.items if isinstance(item, ast.Pipeline) and item.name == graph.name
               for stmt in item.stmts if isinstance(stmt, ast.Param) and stmt.search is not None}
    dimensions = []
    for node in graph.nodes.values():
        if node.op != "param" or not node.search or node.id not in written:
            continue
        stmt = written[node.id]
        kind = str(node.search["kind"])
        args = list(node.search["args"])  # type: ignore[call-overload]
        default = node.arg("default")
        unit = default.unit if isinstance(default, Const) else None
        if kind == "choice":
            options = tuple(span_text(source, a.value.span) for a in stmt.search.args)  # type: ignore[union-attr]
            recorded = _recorded(default, graph)
            index = args.index(recorded) if recorded in args else 0
            dimensions.append(Dimension(node.id, kind, (), options, tuple(args), float(index), node.type == INT, None,
                                        format_type(node.type)))
            continue
        start = default.value if isinstance(default, Const) and isinstance(default.value, int | float) else args[0]
        dimensions.append(Dimension(node.id, kind, tuple(float(a) for a in args), (), (), float(start),  # type: ignore[arg-type]
                                    node.type == INT, unit, format_type(node.type)))
    return Space(graph.name, tuple(dimensions))


def _recorded(default: object, graph: Graph) -> object:
    """The default as the checker records a choice's options (medasl/semantics/search.py)."""
    if isinstance(default, OpRef):
        return "@" + default.op
    if isinstance(default, Const):
        return default.value
    if isinstance(default, Ref) and default.node in graph.nodes:
        node = graph.nodes[default.node]
        return f"{node.op}({', '.join(f'{k}={format_value(v)}' for k, v in node.args)})"
    return None
