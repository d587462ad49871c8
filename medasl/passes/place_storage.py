"""Storage placement: which results are stored in the cache, and which are computed
in memory as part of the step after them.

A chain of per-case steps (resample, window, rescale, crop, flip, ...) is stored only
at its end: storing each link costs more than most links take to compute, and
resuming mid-chain saves little. A node is computed in memory, in its user's chain
(`store = "memory"`), when all of these hold:

- it works case by case (mapped over a dataset, or a source read case by case), writes
  nothing and does not turn one case into several;
- it has exactly one user, which maps over it as its only dataset input (its first
  argument) and is not a selection;
- it is not expensive (N4, registration, training, ...: the cost rule; such results
  are always stored, so changing a parameter downstream never recomputes them);
- where the chain makes a training's cases, it is not the deterministic input of a
  random step: that input is stored so that training can draw the augmentations anew
  in every epoch from it (pre-processed once, augmented on the fly).

Every other node is stored (`store` names why), except selections, which only regroup
references to stored cases (`store = "never"`).
"""

from __future__ import annotations

from medasl.ir.graph import Graph, Node, Ref
from medasl.ir.types import is_dataset
from medasl.passes.manager import Pass

MEMORY, NEVER = "memory", "never"


def _dataset_args(graph: Graph, node: Node) -> list[str]:
    return [k for k, v in node.args if isinstance(v, Ref) and is_dataset(graph.nodes[v.node].type)]


def first_input(node: Node) -> tuple[str, str] | None:
    """The argument a lifted step is applied to, and the node it reads."""
    return next(((k, v.node) for k, v in node.args if isinstance(v, Ref)), None)


def _per_case(node: Node) -> bool:
    return "map" in node.lift or ("source" in node.traits and not node.inputs())


def augmenting(graph: Graph) -> set[str]:
    """The per-case nodes that make a training's cases (walking back from each `train`'s
    data along mapped steps)."""
    found: set[str] = set()
    for node in graph.nodes.values():
        data = node.arg("data") if node.op == "train" else None
        current = graph.nodes.get(data.node) if isinstance(data, Ref) else None
        while current is not None and current.id not in found and ("map" in current.lift
                                                                   or "expands" in current.traits):
            found.add(current.id)
            first = first_input(current)
            current = graph.nodes.get(first[1]) if first else None
    return found


def placement(graph: Graph, node: Node, training: set[str]) -> str:
    if "selection" in node.traits:
        return NEVER
    if "expensive" in node.traits:
        return "expensive"
    if "writer" in node.traits or "report" in node.traits:
        return "output"
    if not _per_case(node) or "expands" in node.traits:
        return "whole value"
    users = graph.users(node.id)
    if len(users) != 1:
        return "several users" if users else "result"
    user = graph.nodes[users[0]]
    first = first_input(user)
    if "map" not in user.lift or "selection" in user.traits or first is None or first[1] != node.id:
        return "end of chain"
    if _dataset_args(graph, user) != [first[0]]:
        return "end of chain"
    if user.random and not node.random and user.id in training:
        return "input of augmentation"
    return MEMORY


def run(graph: Graph) -> None:
    training = augmenting(graph)
    for node in graph.nodes.values():
        node.store = placement(graph, node, training)


PASS = Pass("place_storage", 0, run, "decide which results are stored and which are computed in memory")
