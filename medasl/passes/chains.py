"""Finding fusable chains: runs of per-case steps, each the only reader of the one
before, that a fused kernel can compute in one go. Shared by `fuse_spatial` and
`fuse_intensity`, which differ only in the operators they accept (their rules, as data)."""

from __future__ import annotations

from collections.abc import Callable

from medasl.ir.graph import Const, Graph, Node, OpRef, Ref, Tup, Value
from medasl.passes.place_storage import augmenting


def _plain(value: Value) -> object:
    if isinstance(value, Const):
        return value.value
    if isinstance(value, Tup):
        return tuple(_plain(v) for v in value.items)
    if isinstance(value, OpRef):
        return {"op": value.op, "args": {k: _plain(v) for k, v in value.args}}
    raise ValueError("a reference is not a constant")


def only_input(node: Node) -> str | None:
    """The node `node` reads, when it reads exactly one (as its first argument) and all
    its other arguments are constants."""
    first = node.args[0][1] if node.args else None
    if not isinstance(first, Ref) or len(node.inputs()) != 1:
        return None
    return first.node


def links(graph: Graph, before: Node, after: Node, accepts: Callable[[Node], bool], training: set[str]) -> bool:
    """Whether `before` can be computed inside `after`'s fused step. Where the chain makes
    a training's cases (`training`), deterministic and random steps are not mixed: the
    deterministic prefix is stored once and the random suffix drawn anew in every epoch."""
    mixes = before.random != after.random and after.id in training
    return (accepts(before) and accepts(after) and only_input(before) is not None and only_input(after) == before.id
            and graph.users(before.id) == [after.id] and before.id not in graph.shows
            and before.lift == after.lift and "map" in after.lift and not mixes and not before.goal)


def find_chains(graph: Graph, accepts: Callable[[Node], bool],
                compatible: Callable[[list[Node]], bool] = lambda chain: True,
                alone: Callable[[Node], bool] = lambda node: False) -> list[list[Node]]:
    """Maximal chains (in graph order) of nodes that `accepts`, each linked to the next,
    and that `compatible` allows as a whole: two or more nodes, or one that `alone`
    accepts (a step the kernel runs faster than its operator even by itself)."""
    chains: list[list[Node]] = []
    taken: set[str] = set()
    training = augmenting(graph)
    for node in graph.nodes.values():  # topological order: a chain is met at its first node
        if node.id in taken or not accepts(node):
            continue
        chain = [node]
        while True:
            users = graph.users(chain[-1].id)
            following = graph.nodes[users[0]] if len(users) == 1 else None
            if following is None or not links(graph, chain[-1], following, accepts, training) \
                    or not compatible([*chain, following]):
                break
            chain.append(following)
        if len(chain) > 1 or (alone(node) and compatible(chain) and only_input(node) is not None
                              and "map" in node.lift):
            chains.append(chain)
            taken.update(n.id for n in chain)
    return chains


def fuse(graph: Graph, chain: list[Node], op: str) -> Node:
    """Replace `chain` by one node applying `op` to the chain's input with the steps as
    data (`chain`: operator, node id and constant arguments of each). The last node
    becomes the fused one: it keeps its id, name, type and readers."""
    last, first = chain[-1], chain[0]
    steps = tuple({"op": n.op, "id": n.id, "params": {k: _plain(v) for k, v in n.args[1:]}} for n in chain)
    graph.set_args(last, ((first.args[0][0], first.args[0][1]), ("chain", Const(steps))))
    last.fused = tuple(n.id for n in chain)
    last.op, last.module, last.version = op, "", 1
    last.random = any(n.random for n in chain)
    last.traits = frozenset().union(*(n.traits for n in chain)) - {"expensive"}
    last.binding = last.binding or next((n.binding for n in reversed(chain) if n.binding), None)
    for node in reversed(chain[:-1]):
        graph.remove(node.id)
    return last
