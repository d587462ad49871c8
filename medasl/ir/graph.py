"""The typed IR: a DAG of operator nodes with resolved arguments, types and spans.

A node's arguments are `Ref`s to other nodes, `Const`ants, or `OpRef`s (an operator
passed as a value, such as a loss, with the options it was given). The text form is
meant to be read in a review, one node per line, in the style of torch.fx:

    %cases: Dataset<Pair<Image[3, CT], LabelMap[3, 2]>> = folder(root="data", ...)  # liver.medas:9
    %n3: Dataset<Pair<Image[3, CT], LabelMap[3, 2]>> = resample[map,pair](%folds.train, ...)

Every node has a structural hash computed from its operator, version, constant
arguments and the hashes of its inputs; spans and names do not enter it, so the hash
is the base of the future cache key and stays put when a file is only reformatted.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from medasl.ir.types import TyLike, format_type, type_to_json
from medasl.source import Span


@dataclass(frozen=True)
class Ref:
    """The output of another node."""

    node: str


@dataclass(frozen=True)
class Const:
    """A literal: number, string, bool, tuple, enum value; `unit` after conversion (mm, deg)."""

    value: object
    unit: str | None = None


@dataclass(frozen=True)
class OpRef:
    """An operator used as a value (a loss or a metric), with the options bound to it."""

    op: str
    args: tuple[tuple[str, Value], ...] = ()


Value = Ref | Const | OpRef


@dataclass
class Node:
    id: str
    op: str
    args: tuple[tuple[str, Value], ...]
    type: TyLike
    span: Span | None
    stage: str = ""
    version: int = 1
    lift: tuple[str, ...] = ()  # "map" over a dataset, "pair" (both members), "image" (first only)
    conversion: bool = False  # inserted by the checker, not written by the user
    random: bool = False
    binding: str | None = None  # the user's name for this value, if any
    goal: str | None = None  # maximize | minimize for an objective
    search: dict[str, object] | None = None  # a param's search space
    hash: str = ""

    def inputs(self) -> list[str]:
        return [node for _, v in self.args for node in refs(v)]


def refs(value: Value) -> list[str]:
    """The nodes a value reads (an operator value reads those of its bound options)."""
    if isinstance(value, Ref):
        return [value.node]
    if isinstance(value, OpRef):
        return [n for _, v in value.args for n in refs(v)]
    return []


@dataclass
class Graph:
    """The IR of one pipeline: nodes in topological order, plus its sinks."""

    name: str
    nodes: dict[str, Node] = field(default_factory=dict)
    shows: list[str] = field(default_factory=list)
    reports: list[str] = field(default_factory=list)
    resources: dict[str, Const] = field(default_factory=dict)

    def add(self, node: Node) -> Node:
        self.nodes[node.id] = node
        return node

    def users(self, node_id: str) -> list[str]:
        return [n.id for n in self.nodes.values() if node_id in n.inputs()]

    def compute_hashes(self) -> None:
        for node in self.nodes.values():  # nodes are kept in topological order
            node.hash = structural_hash(node, self.nodes)

    def dump(self) -> str:
        return dump_graph(self)

    def to_json(self) -> dict[str, object]:
        return {
            "pipeline": self.name,
            "nodes": [_node_json(n) for n in self.nodes.values()],
            "shows": self.shows,
            "reports": self.reports,
            "resources": _json_value(self.resources),
        }


# ----- hashing ---------------------------------------------------------------------


def _value_json(value: Value, hashes: dict[str, Node] | None = None) -> object:
    if isinstance(value, Ref):
        if hashes is not None:
            return {"ref": hashes[value.node].hash}
        return {"ref": value.node}
    if isinstance(value, OpRef):
        return {"op": value.op, "args": {k: _value_json(v, hashes) for k, v in value.args}}
    return {"const": _json_value(value.value), "unit": value.unit}


def _json_value(value: object) -> object:
    if isinstance(value, tuple | list):
        return [_json_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, Const):
        return _json_value(value.value)
    return value


def structural_hash(node: Node, nodes: dict[str, Node]) -> str:
    """sha256 of what determines the node's result; independent of names and spans."""
    payload = {
        "op": node.op,
        "version": node.version,
        "lift": list(node.lift),
        "args": {k: _value_json(v, nodes) for k, v in node.args},
        "type": type_to_json(node.type),
        "search": _json_value(node.search),
    }
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


# ----- printing -----------------------------------------------------------------------


def format_value(value: Value) -> str:
    if isinstance(value, Ref):
        return f"%{value.node}"
    if isinstance(value, OpRef):
        if not value.args:
            return f"@{value.op}"
        inner = ", ".join(f"{k}={format_value(v)}" for k, v in value.args)
        return f"@{value.op}({inner})"
    return format_const(value)


def format_const(const: Const) -> str:
    if const.unit == "bytes" and isinstance(const.value, int | float):
        return f"{const.value / 1024**3:g} GB"  # stored in bytes, written as the user would
    text = _format_literal(const.value)
    return f"{text} {const.unit}" if const.unit else text


def _format_literal(value: object) -> str:
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple | list):
        inner = ", ".join(_format_literal(v) for v in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"  # `(5)` would read back as 5
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_format_literal(v)}" for k, v in value.items()) + "}"
    return repr(value)


def _node_line(node: Node) -> str:
    marks = list(node.lift)
    if node.conversion:
        marks.append("conversion")
    op = node.op + (f"[{','.join(marks)}]" if marks else "")
    args = ", ".join(f"{k}={format_value(v)}" if not k.startswith("_") else format_value(v)
                     for k, v in node.args)
    line = f"%{node.id}: {format_type(node.type)} = {op}({args})"
    if node.search:
        line += f" search {node.search['kind']}{_format_literal(tuple(node.search['args']))}"
    if node.goal:
        line += f" {node.goal}"
    if node.span is not None:
        line += f"  # {node.span.file.rsplit('/', 1)[-1]}:{node.span.line}"
    return line


def dump_graph(graph: Graph) -> str:
    lines = [f"pipeline {graph.name} {{"]
    stage = None
    for node in graph.nodes.values():
        if node.stage != stage:
            stage = node.stage
            lines.append(f"  # -- {stage or 'values'}")
        lines.append("  " + _node_line(node))
    if graph.resources:
        res = ", ".join(f"{k}={format_const(v)}" for k, v in graph.resources.items())
        lines.append(f"  resources {res}")
    for sink, ids in (("show", graph.shows), ("report", graph.reports)):
        if ids:
            lines.append(f"  {sink} " + ", ".join(f"%{i}" for i in ids))
    lines.append("}")
    return "\n".join(lines)


def _node_json(node: Node) -> dict[str, object]:
    return {
        "id": node.id,
        "op": node.op,
        "args": {k: _value_json(v) for k, v in node.args},
        "type": format_type(node.type),
        "stage": node.stage,
        "lift": list(node.lift),
        "conversion": node.conversion,
        "random": node.random,
        "binding": node.binding,
        "goal": node.goal,
        "search": _json_value(node.search),
        "span": node.span.to_json() if node.span else None,
        "hash": node.hash,
    }
