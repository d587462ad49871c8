"""Parameter specialization: every `param` node is folded into its uses.

A parameter's value is its default, which `--set` (and, later, a search trial) has
already replaced and the checker has checked by the same rules as a default
(`check_source(..., overrides)`). The pass replaces each use of the parameter by that
value (also inside tuples: `(crop, crop, 48)` becomes the constant `(64, 64, 48)`),
records the value in `graph.params` (and the search space in `graph.searches`) and
removes the node. Afterwards no node reads a parameter: changing one changes exactly
the hashes of the nodes downstream of its uses.
"""

from __future__ import annotations

from medasl.ir.graph import Const, Graph, OpRef, Tup, Value
from medasl.passes.manager import Pass


def fold_constants(value: Value) -> Value:
    """A tuple whose items are all constants becomes one constant (as the checker writes
    a literal tuple), inside operator options too."""
    if isinstance(value, OpRef):
        return OpRef(value.op, tuple((k, fold_constants(v)) for k, v in value.args))
    if not isinstance(value, Tup):
        return value
    items = tuple(fold_constants(v) for v in value.items)
    if all(isinstance(i, Const) for i in items):
        units = {i.unit for i in items if isinstance(i, Const)} - {None}
        unit = value.unit or (units.pop() if len(units) == 1 else None)
        return Const(tuple(i.value for i in items if isinstance(i, Const)), unit)
    return Tup(items, value.unit, value.kind)


def run(graph: Graph) -> None:
    for node in [n for n in graph.nodes.values() if n.op == "param"]:
        value = fold_constants(node.arg("default") or Const(None))
        for user_id in graph.replace_all_uses_with(node.id, value):
            user = graph.nodes[user_id]
            graph.set_args(user, tuple((k, fold_constants(v)) for k, v in user.args))
        graph.params[node.id] = value
        if node.search:
            graph.searches[node.id] = dict(node.search)
        graph.remove(node.id)


PASS = Pass("specialize", 0, run, "fold parameter values (defaults or --set) into their uses")
