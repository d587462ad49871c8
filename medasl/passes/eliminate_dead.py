"""Dead-step elimination: nodes whose result nobody can see are removed.

What a user can see: what is shown or reported, what a writer writes, the objective,
and every value the user named (a named value is a result they asked for, and `medasc
run` lists it). A node only counts when one of these reads it, directly or not; what
is left are the checker's helper nodes and the leftovers of other passes (a field
selection no longer read after fusion, a duplicate after common sub-expression
elimination).
"""

from __future__ import annotations

from medasl.ir.graph import Graph, Node
from medasl.passes.manager import Pass


def is_root(node: Node) -> bool:
    return bool(node.binding or node.goal or {"writer", "report"} & node.traits)


def run(graph: Graph) -> None:
    live = {n.id for n in graph.nodes.values() if is_root(n)} | set(graph.shows) | set(graph.reports)
    for node in reversed(list(graph.nodes.values())):  # users come after what they read
        if node.id in live:
            live.update(node.inputs())
    for node_id in reversed([n for n in graph.nodes if n not in live]):
        graph.remove(node_id)


PASS = Pass("eliminate_dead", 1, run, "remove nodes no result depends on")
