"""Hashing: every node's structural hash (operator, version, arguments, type, and the
hashes of its inputs; never names or spans), computed after all other passes so that
it describes what will run. The executor's cache keys start from these hashes."""

from __future__ import annotations

from medasl.ir.graph import Graph
from medasl.passes.manager import Pass


def run(graph: Graph) -> None:
    graph.compute_hashes()


PASS = Pass("hash", 0, run, "structural hash of every node, the base of cache keys")
