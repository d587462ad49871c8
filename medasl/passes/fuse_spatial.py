"""Spatial fusion: a chain of spatial steps on one case becomes one step with one
output grid, one composed transform (plus one displacement field where `elastic`
takes part) and ONE interpolation, run by `medasl.runtime.fused_spatial` with torch
(nearest neighbour for label maps, linear or what was asked for images). Besides
speed, one interpolation is more accurate than several.

Rules (data, below): the operators the kernel accepts; `crop_foreground` only first
(its box depends on the data); `resample_to` is not fused (it reads a second input);
where the chain makes a training's cases, deterministic and random steps are not
mixed, so the deterministic prefix is stored once and the random suffix is one
sampling drawn anew in every epoch (elsewhere they are one sampling); the steps must
agree on how images are interpolated (B-spline is never fused). Intensity steps between
spatial steps end a chain: clipping and normalizing do not commute with interpolation.
Pairs whose target is `Boxes` are not fused: each step moves and clips the boxes with
its own geometry (`values.carried`), where the kernel composes voxel maps only; a
`Class` target is carried along by the kernel.
A step that interpolates is given to the kernel even alone (`ALONE`): where the map keeps
every slice a slice (resampling in plane, an in-plane rotation) the kernel samples in
2-D per slice, which is faster than the operator's 3-D resampling; the runtime runs the
operator instead where the kernel does not pay (`fused_spatial.worth_fusing`).
"""

from __future__ import annotations

from medasl.ir.graph import Graph, Node
from medasl.ir.types import Ty
from medasl.passes.chains import find_chains, fuse
from medasl.passes.manager import Pass

OP = "fused_spatial"
FUSABLE = frozenset({"resample", "reorient", "crop_or_pad", "resize", "crop_foreground",
                     "flip", "rotate", "affine", "random_rescale", "elastic", "random_crop"})
"""The operators `medasl.runtime.fused_spatial` accepts, less `resample_to` (a second input)."""
INTERPOLATING = frozenset({"resample", "resize", "rotate", "affine", "random_rescale", "elastic"})
"""The operators that interpolate (the others move whole voxels)."""
ALONE = INTERPOLATING - {"elastic"}
"""Operators lowered to the kernel even when no other spatial step joins them (elastic is
left unfused on the CPU anyway: drawing its field costs what fusing would save)."""


def accepts(node: Node) -> bool:
    return node.op in FUSABLE and "spatial" in node.traits and not _moves_boxes(node)


def _moves_boxes(node: Node) -> bool:
    """Whether the step gives (image, boxes) pairs, case by case or not."""
    t = node.type
    while isinstance(t, Ty) and t.name == "Dataset" and t.params:
        t = t.params[0]
    return (isinstance(t, Ty) and t.name == "Pair" and len(t.params) == 2 and isinstance(t.params[1], Ty)
            and t.params[1].name == "Boxes")


def _interpolation(node: Node) -> str | None:
    """How the step interpolates images (the node's `interp`, from the checker), if it does."""
    return node.interp if node.op in INTERPOLATING else None


def compatible(chain: list[Node]) -> bool:
    if any(n.op == "crop_foreground" for n in chain[1:]):
        return False
    modes = {m for m in (_interpolation(n) for n in chain) if m is not None}
    return len(modes) <= 1 and "bspline" not in modes


def run(graph: Graph) -> None:
    for chain in find_chains(graph, accepts, compatible, alone=lambda node: node.op in ALONE):
        fuse(graph, chain, OP)


PASS = Pass("fuse_spatial", 2, run, "one grid, one transform, one interpolation per chain of spatial steps")
