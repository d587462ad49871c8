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
from collections.abc import Callable
from dataclasses import dataclass, field

from medasl.ir.types import TyLike, format_type, type_from_json, type_to_json
from medasl.source import Span


@dataclass(frozen=True)
class Ref:
    """The output of another node."""

    node: str


@dataclass(frozen=True)
class Const:
    """A literal: number, string, bool, tuple of literals, enum value; `unit` after
    conversion (mm, deg). A Const never holds a reference: a tuple that mixes values of
    other nodes with literals is a `Tup`."""

    value: object
    unit: str | None = None


@dataclass(frozen=True)
class OpRef:
    """An operator used as a value (a loss or a metric), with the options bound to it."""

    op: str
    args: tuple[tuple[str, Value], ...] = ()


@dataclass(frozen=True)
class Tup:
    """A tuple (or list) written with values of other nodes in it: `(crop, crop, 48)`,
    `(dice_score, hd)`. Its references are uses like any argument's."""

    items: tuple[Value, ...]
    unit: str | None = None
    kind: str = "tuple"  # or "list"


Value = Ref | Const | OpRef | Tup


def map_arg(value: Value, fn: Callable[[Ref], Value]) -> Value:
    """`value` with every reference in it (nested in tuples and operator options)
    replaced by `fn(ref)`: the one traversal every walker of arguments uses."""
    if isinstance(value, Ref):
        return fn(value)
    if isinstance(value, OpRef):
        return OpRef(value.op, tuple((k, map_arg(v, fn)) for k, v in value.args))
    if isinstance(value, Tup):
        return Tup(tuple(map_arg(v, fn) for v in value.items), value.unit, value.kind)
    return value


def refs(value: Value) -> list[str]:
    """The nodes a value reads, in order (with repeats)."""
    found: list[str] = []

    def visit(ref: Ref) -> Ref:
        found.append(ref.node)
        return ref

    map_arg(value, visit)
    return found


TRAITS = ("source", "selection", "spatial", "intensity", "random", "writer", "report", "network", "metric",
          "expands", "expensive")
"""What a node does, as passes and the runtime need to know it (see docs/compiler.md)."""


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
    module: str = ""  # std.pre, ...; "" for the checker's own nodes (param, field)
    traits: frozenset[str] = frozenset()  # a subset of TRAITS
    interp: str | None = None  # spatial nodes: how images are interpolated (labels: always nearest)
    store: str | None = None  # set by `place_storage`: why the result is stored, or None
    fused: tuple[str, ...] = ()  # a fused node: the ids of the nodes it replaced, in order
    path_params: tuple[str, ...] = ()  # arguments naming files or folders (their content is an input)

    def inputs(self) -> list[str]:
        return [node for _, v in self.args for node in refs(v)]

    def arg(self, name: str) -> Value | None:
        return dict(self.args).get(name)


class GraphError(Exception):
    """The IR is not well formed: a bug in the checker or in a pass, never the user's."""


@dataclass
class Graph:
    """The IR of one pipeline: nodes in topological order, plus its sinks.

    `users` is maintained: change a node's arguments through `set_args`, add nodes with
    `add`, move them with `move_after` / `move_to_end`, and remove them with `remove` (after
    `replace_all_uses_with`).
    Code that edits `node.args` directly calls `rebuild_users()` afterwards."""

    name: str
    nodes: dict[str, Node] = field(default_factory=dict)
    shows: list[str] = field(default_factory=list)
    reports: list[str] = field(default_factory=list)
    resources: dict[str, Const] = field(default_factory=dict)
    params: dict[str, Value] = field(default_factory=dict)  # set by `specialize`: each folded parameter's value
    searches: dict[str, dict[str, object]] = field(default_factory=dict)  # and the search spaces of those searched
    _users: dict[str, dict[str, None]] = field(default_factory=dict, repr=False)

    # ----- editing ---------------------------------------------------------------------

    def add(self, node: Node) -> Node:
        self.nodes[node.id] = node
        self._use(node)
        return node

    def set_args(self, node: Node, args: tuple[tuple[str, Value], ...]) -> None:
        self._unuse(node)
        node.args = args
        self._use(node)

    def replace_all_uses_with(self, old: str, new: Value) -> list[str]:
        """Make every reader of `old` (arguments and sinks) read `new` instead; the users changed."""
        changed = list(self.users(old))
        for user_id in changed:
            user = self.nodes[user_id]
            self.set_args(user, tuple((k, map_arg(v, lambda r: new if r.node == old else r)) for k, v in user.args))
        if isinstance(new, Ref):
            self.shows = [new.node if s == old else s for s in self.shows]
            self.reports = [new.node if s == old else s for s in self.reports]
        return changed

    def remove(self, node_id: str) -> None:
        if self.users(node_id) or node_id in self.shows or node_id in self.reports:
            raise GraphError(f"cannot remove `{node_id}`: it is still used")
        node = self.nodes.pop(node_id)
        self._unuse(node)
        self._users.pop(node_id, None)

    def users(self, node_id: str) -> list[str]:
        """The nodes reading `node_id`, in the order they started reading it."""
        return list(self._users.get(node_id, {}))

    def rebuild_users(self) -> None:
        self._users = {}
        for node in self.nodes.values():
            self._use(node)

    def _use(self, node: Node) -> None:
        for ref in node.inputs():
            self._users.setdefault(ref, {})[node.id] = None

    def _unuse(self, node: Node) -> None:
        for ref in node.inputs():
            self._users.get(ref, {}).pop(node.id, None)

    def move_after(self, node_id: str, after: str) -> None:
        """Put a node just after another (after a pass made it read that one)."""
        node = self.nodes.pop(node_id)
        order = list(self.nodes.items())
        at = [k for k, _ in order].index(after) + 1
        self.nodes = dict(order[:at] + [(node_id, node)] + order[at:])

    def move_to_end(self, node_id: str) -> None:
        """Put a node last (after a pass made it read nodes defined after it)."""
        self.nodes[node_id] = self.nodes.pop(node_id)

    def rename(self, old: str, new: str) -> None:
        """Give node `old` the id `new`, keeping its place and every use of it."""
        node = self.nodes[old]
        readers = self.users(old)
        self._unuse(node)
        if next(reversed(self.nodes)) == old:  # the usual case while checking: the newest node
            del self.nodes[old]
            self.nodes[new] = node
        else:
            self.nodes = {(new if k == old else k): v for k, v in self.nodes.items()}
        node.id = new
        self._use(node)
        self._users[new] = self._users.pop(old, {})
        for reader in readers:
            user = self.nodes[reader]
            self.set_args(user, tuple((k, map_arg(v, lambda r: Ref(new) if r.node == old else r))
                                      for k, v in user.args))
        for sink in (self.shows, self.reports):
            sink[:] = [new if s == old else s for s in sink]

    # ----- checking --------------------------------------------------------------------

    def verify(self) -> None:
        """Raise `GraphError` unless the graph is well formed: every reference names a
        node defined before its user (so there is no cycle), every node has a type and
        constants hold no references, sinks name nodes, and `users` is up to date."""
        seen: set[str] = set()
        expected: dict[str, set[str]] = {}
        for key, node in self.nodes.items():
            if key != node.id:
                raise GraphError(f"node `{node.id}` is filed under `{key}`")
            if node.type is None:
                raise GraphError(f"node `{node.id}` has no type")
            for name, value in node.args:
                _check_value(node.id, name, value)
                for ref in refs(value):
                    if ref not in seen:
                        where = "later" if ref in self.nodes else "nowhere"
                        raise GraphError(f"`{node.id}` reads `{ref}` ({name}), which is defined {where}")
                    expected.setdefault(ref, set()).add(node.id)
            seen.add(node.id)
        for sink in (*self.shows, *self.reports):
            if sink not in self.nodes:
                raise GraphError(f"a sink names `{sink}`, which is not a node")
        actual = {k: set(v) for k, v in self._users.items() if v}
        if actual != expected:
            raise GraphError(f"`users` is out of date: {_users_diff(actual, expected)}")

    # ----- forms -----------------------------------------------------------------------

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
            "resources": {k: _value_json(v) for k, v in self.resources.items()},
            "params": {k: _value_json(v) for k, v in self.params.items()},
            "searches": _json_value(self.searches),
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Graph:
        """The graph `to_json` wrote (`medasc compile --emit ir --format json` reads back)."""
        graph = cls(str(data["pipeline"]), shows=list(data.get("shows", [])),  # type: ignore[arg-type]
                    reports=list(data.get("reports", [])))  # type: ignore[arg-type]
        for item in data["nodes"]:  # type: ignore[attr-defined]
            graph.add(_node_from_json(item))
        graph.resources = {k: _value_from_json(v) for k, v in dict(data.get("resources", {})).items()}  # type: ignore[misc]
        graph.params = {k: _value_from_json(v) for k, v in dict(data.get("params", {})).items()}  # type: ignore[misc]
        graph.searches = _literal_from_json(dict(data.get("searches", {})))  # type: ignore[assignment, arg-type]
        return graph

    def copy(self) -> Graph:
        """A deep copy (passes work on copies: the checked graph stays as it was)."""
        return Graph.from_json(self.to_json())


def _check_value(node: str, name: str, value: Value) -> None:
    if isinstance(value, Const):
        if _holds_value(value.value):
            raise GraphError(f"`{node}`'s argument `{name}` hides a reference in a constant")
    elif isinstance(value, OpRef):
        for k, v in value.args:
            _check_value(node, f"{name}.{k}", v)
    elif isinstance(value, Tup):
        for v in value.items:
            _check_value(node, name, v)
    elif not isinstance(value, Ref):
        raise GraphError(f"`{node}`'s argument `{name}` is not an IR value: {value!r}")


def _holds_value(value: object) -> bool:
    if isinstance(value, Ref | Const | OpRef | Tup):
        return True
    if isinstance(value, tuple | list):
        return any(_holds_value(v) for v in value)
    if isinstance(value, dict):
        return any(_holds_value(v) for v in value.values())
    return False


def _users_diff(actual: dict[str, set[str]], expected: dict[str, set[str]]) -> str:
    for key in sorted(set(actual) | set(expected)):
        if actual.get(key, set()) != expected.get(key, set()):
            return f"users of `{key}` recorded as {sorted(actual.get(key, set()))}, " \
                   f"read by {sorted(expected.get(key, set()))}"
    return "?"


# ----- JSON -------------------------------------------------------------------------


def _value_json(value: Value, hashes: dict[str, Node] | None = None) -> object:
    """An IR value as JSON; with `hashes`, references are replaced by the structural
    hash of the node they read (for hashing)."""
    if isinstance(value, Ref):
        if hashes is not None:
            return {"ref": hashes[value.node].hash}
        return {"ref": value.node}
    if isinstance(value, OpRef):
        return {"op": value.op, "args": {k: _value_json(v, hashes) for k, v in value.args}}
    if isinstance(value, Tup):
        return {"tuple": [_value_json(v, hashes) for v in value.items], "unit": value.unit, "kind": value.kind}
    return {"const": _json_value(value.value), "unit": value.unit}


def _value_from_json(data: object) -> Value:
    assert isinstance(data, dict)
    if "ref" in data:
        return Ref(str(data["ref"]))
    if "op" in data:
        return OpRef(str(data["op"]), tuple((k, _value_from_json(v)) for k, v in dict(data["args"]).items()))
    if "tuple" in data:
        return Tup(tuple(_value_from_json(v) for v in data["tuple"]), data.get("unit"), data.get("kind", "tuple"))
    return Const(_literal_from_json(data["const"]), data.get("unit"))


def _json_value(value: object) -> object:
    if isinstance(value, tuple | list):
        return [_json_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, Const):
        return _json_value(value.value)
    return value


def _literal_from_json(value: object) -> object:
    """JSON lists are the IR's tuples (literals are immutable)."""
    if isinstance(value, list):
        return tuple(_literal_from_json(v) for v in value)
    if isinstance(value, dict):
        return {k: _literal_from_json(v) for k, v in value.items()}
    return value


def _node_json(node: Node) -> dict[str, object]:
    return {
        "id": node.id,
        "op": node.op,
        "args": [[k, _value_json(v)] for k, v in node.args],
        "type": type_to_json(node.type, full=True),
        "type_text": format_type(node.type),
        "module": node.module,
        "stage": node.stage,
        "version": node.version,
        "lift": list(node.lift),
        "traits": sorted(node.traits),
        "interp": node.interp,
        "conversion": node.conversion,
        "random": node.random,
        "binding": node.binding,
        "goal": node.goal,
        "search": _json_value(node.search),
        "store": node.store,
        "fused": list(node.fused),
        "path_params": list(node.path_params),
        "span": node.span.to_json() if node.span else None,
        "hash": node.hash,
    }


def _node_from_json(data: dict[str, object]) -> Node:
    search = data.get("search")
    return Node(
        id=str(data["id"]), op=str(data["op"]),
        args=tuple((str(k), _value_from_json(v)) for k, v in data["args"]),  # type: ignore[attr-defined]
        type=type_from_json(data["type"]), span=Span.from_json(data["span"]) if data.get("span") else None,  # type: ignore[arg-type]
        stage=str(data.get("stage", "")), version=int(data.get("version", 1)),  # type: ignore[arg-type]
        lift=tuple(data.get("lift", ())), conversion=bool(data.get("conversion")),  # type: ignore[arg-type]
        random=bool(data.get("random")), binding=data.get("binding"), goal=data.get("goal"),  # type: ignore[arg-type]
        search=_literal_from_json(search) if isinstance(search, dict) else None,  # type: ignore[arg-type]
        hash=str(data.get("hash", "")), module=str(data.get("module", "")),
        traits=frozenset(data.get("traits", ())), interp=data.get("interp"),  # type: ignore[arg-type]
        store=data.get("store"), fused=tuple(data.get("fused", ())),  # type: ignore[arg-type]
        path_params=tuple(data.get("path_params", ())),  # type: ignore[arg-type]
    )


# ----- hashing ---------------------------------------------------------------------


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
    if node.fused:
        payload["fused"] = len(node.fused)
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
    if isinstance(value, Tup):
        inner = ", ".join(format_value(v) for v in value.items)
        text = f"[{inner}]" if value.kind == "list" else (f"({inner},)" if len(value.items) == 1 else f"({inner})")
        return f"{text} {value.unit}" if value.unit else text
    return format_const(value)


def format_const(const: Const) -> str:
    if const.unit == "bytes" and isinstance(const.value, int | float):
        return f"{const.value / 1024**3:g} GB"  # stored in bytes, written as the user would
    text = format_literal(const.value)
    return f"{text} {const.unit}" if const.unit else text


def format_literal(value: object) -> str:
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple | list):
        inner = ", ".join(format_literal(v) for v in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"  # `(5)` would read back as 5
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {format_literal(v)}" for k, v in value.items()) + "}"
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
        line += f" search {node.search['kind']}{format_literal(tuple(node.search['args']))}"
    if node.goal:
        line += f" {node.goal}"
    if node.fused:
        line += f" fuses {', '.join('%' + f for f in node.fused)}"
    if node.store:
        line += f" store({node.store})"
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
        res = ", ".join(f"{k}={format_value(v)}" for k, v in graph.resources.items())
        lines.append(f"  resources {res}")
    for sink, ids in (("show", graph.shows), ("report", graph.reports)):
        if ids:
            lines.append(f"  {sink} " + ", ".join(f"%{i}" for i in ids))
    lines.append("}")
    return "\n".join(lines)
