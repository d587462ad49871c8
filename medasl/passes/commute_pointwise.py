"""Commuting: a monotone element-wise step followed by a step that only moves whole
voxels swap places, so that spatial steps meet and `fuse_spatial` can make one
sampling of them (and the element-wise step touches only the voxels that are kept).

`window(x) |> crop_or_pad` = `crop_or_pad(x) |> window`, exactly: a crop keeps values,
and a pad fills images with their minimum, which a non-decreasing map sends to the
minimum of its result. The same holds for flip, reorient and random_crop (whose draw
depends on the shape only). Steps with reductions (rescale, zscore, percentiles) do not
commute with a crop, and nothing commutes exactly with an interpolation: those stay.

Rules (data, below): which element-wise steps commute (non-decreasing, no reduction,
deterministic) and which spatial steps they commute with (whole voxels only).
"""

from __future__ import annotations

from medasl.ir.graph import Graph, Node, Ref
from medasl.passes.chains import only_input
from medasl.passes.manager import Pass

MONOTONE_POINTWISE = frozenset({"window", "clip"})
WHOLE_VOXEL = frozenset({"crop_or_pad", "flip", "random_crop", "reorient"})
def _swappable(graph: Graph, first: Node, second: Node) -> bool:
    return (first.op in MONOTONE_POINTWISE and second.op in WHOLE_VOXEL and not first.random
            and only_input(second) == first.id and graph.users(first.id) == [second.id]
            and first.id not in graph.shows and not first.binding and "map" in first.lift and "map" in second.lift)


def _swap(graph: Graph, first: Node, second: Node) -> None:
    """`second(first(x))` -> `first(second(x))`: each node keeps its id (a random step's
    seed comes from it) and options; the readers of the chain's result and the user's
    name for it move to the node that now gives it."""
    source = first.args[0][1]
    graph.replace_all_uses_with(second.id, Ref(first.id))
    graph.set_args(second, ((second.args[0][0], source), *second.args[1:]))
    graph.set_args(first, ((first.args[0][0], Ref(second.id)), *first.args[1:]))
    graph.move_after(first.id, second.id)
    first.type = second.type  # the values change in `first`, on the grid `second` makes
    first.binding, second.binding = second.binding, None
    first.goal, second.goal = second.goal, None


def run(graph: Graph) -> None:
    changed = True
    while changed:  # bubble whole-voxel steps towards the start of their chain
        changed = False
        for node in list(graph.nodes.values()):
            users = graph.users(node.id)
            if len(users) == 1 and _swappable(graph, node, graph.nodes[users[0]]):
                _swap(graph, node, graph.nodes[users[0]])
                changed = True


PASS = Pass("commute_pointwise", 2, run, "move whole-voxel steps before monotone element-wise ones (exact)")
