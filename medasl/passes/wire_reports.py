"""Report wiring: a collecting report (`html`) reads every figure the pipeline shows
and every metric it computes, as arguments `figures.<name>` and `metrics.<name>`.

The language lets `html("r.html")` be written without naming them; this pass makes
those reads real uses in the graph, so the report runs after them, its hash changes
when one of them changes, and dead-step elimination keeps them.
"""

from __future__ import annotations

from medasl.ir.graph import Graph, Node, Ref
from medasl.ir.types import Ty
from medasl.passes.manager import Pass

COLLECTING_REPORTS = frozenset({"html"})


def label(node: Node) -> str:
    """How the user knows a node: the name they bound, else its id."""
    return node.binding or node.id


def _is_metric(node: Node) -> bool:
    t = node.type
    if isinstance(t, Ty) and t.name == "PerFold":  # a cross-validated metric (`cross_validated`)
        t = t.params[0]
    return isinstance(t, Ty) and t.name == "Metric"


def _summarized(graph: Graph, node: Node) -> bool:
    """A fold's metric, which the report shows as a row of its cross-validated metric."""
    return any(graph.nodes[user].op == "cross_validated" for user in graph.users(node.id))


def run(graph: Graph) -> None:
    for node in [n for n in graph.nodes.values() if n.op in COLLECTING_REPORTS]:
        # a shown metric is among the metrics: it is no figure
        extra = [(f"figures.{label(graph.nodes[i])}", Ref(i)) for i in graph.shows
                 if i in graph.nodes and not _is_metric(graph.nodes[i])]
        extra += [(f"metrics.{label(m)}", Ref(m.id)) for m in graph.nodes.values()
                  if _is_metric(m) and not _summarized(graph, m)]
        have = {k for k, _ in node.args}
        graph.set_args(node, node.args + tuple(a for a in extra if a[0] not in have))
        graph.move_to_end(node.id)


PASS = Pass("wire_reports", 0, run, "give collecting reports the shown figures and the metrics as inputs")
