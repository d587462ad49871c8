"""Common sub-expression elimination: two nodes computing the same thing become one.

Two nodes are the same computation when their operator, version, lifting, type and
arguments are equal, with references compared after earlier merges. Random nodes are
never merged (each draws from a seed of its own, so two `flip`s written twice are two
draws), nor are writers (each writes its own files). The first node stays; the other's
readers read it, and a user's name or objective moves to it when it had none.
"""

from __future__ import annotations

import json

from medasl.ir.graph import Graph, Node, Ref, _json_value, _value_json, map_arg
from medasl.ir.types import type_to_json
from medasl.passes.manager import Pass


def _key(node: Node, canonical: dict[str, str]) -> str:
    args = [[k, _value_json(map_arg(v, lambda r: Ref(canonical.get(r.node, r.node))))] for k, v in node.args]
    payload = [node.op, node.version, list(node.lift), args, type_to_json(node.type), _json_value(node.search)]
    return json.dumps(payload, sort_keys=True, default=str)


def run(graph: Graph) -> None:
    seen: dict[str, str] = {}  # key -> the node that stays
    canonical: dict[str, str] = {}
    for node in list(graph.nodes.values()):
        if node.random or {"writer", "report"} & node.traits or node.op == "param":
            continue
        key = _key(node, canonical)
        first = seen.setdefault(key, node.id)
        if first == node.id:
            continue
        kept = graph.nodes[first]
        if node.binding and kept.binding is None:
            kept.binding = node.binding
        if node.goal and kept.goal is None:
            kept.goal = node.goal
        if node.binding and kept.binding != node.binding or node.goal and kept.goal != node.goal:
            continue  # both are results the user named: keep both, they are listed under their names
        canonical[node.id] = first
        graph.replace_all_uses_with(node.id, Ref(first))
        graph.remove(node.id)


PASS = Pass("eliminate_common", 1, run, "merge nodes that compute the same value")
