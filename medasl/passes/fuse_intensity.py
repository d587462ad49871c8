"""Intensity fusion: a chain of element-wise steps on one case (window, clip, rescale,
zscore, percentile_rescale and the random gamma, contrast, brightness, gaussian_noise)
becomes one step, run by `medasl.runtime.fused_intensity` with torch: affine maps and
clips folded together, one pass over the voxels plus the reductions the chain needs.

Rules (data, below): the operators the kernel accepts; `zscore` with a mask is not
fused (it reads a second input); where the chain makes a training's cases,
deterministic and random steps are not mixed (the deterministic part is stored once,
the random part drawn anew in every epoch).
"""

from __future__ import annotations

from medasl.ir.graph import Graph, Node
from medasl.passes.chains import find_chains, fuse
from medasl.passes.manager import Pass

OP = "fused_intensity"
FUSABLE = frozenset({"window", "clip", "rescale", "zscore", "percentile_rescale",
                     "gamma", "contrast", "brightness", "gaussian_noise"})
"""The operators `medasl.runtime.fused_intensity` accepts."""


def accepts(node: Node) -> bool:
    return node.op in FUSABLE and "intensity" in node.traits


def run(graph: Graph) -> None:
    for chain in find_chains(graph, accepts):
        fuse(graph, chain, OP)


PASS = Pass("fuse_intensity", 2, run, "one pass over the voxels per chain of element-wise steps")
