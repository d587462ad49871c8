"""The pass manager: runs the passes of an optimization level in order on a copy of
the checked graph, verifies the graph after each one, and can print it after any.

    -O0  specialize, wire_reports, place_storage, hash            (what a run needs)
    -O1  + eliminate_common, eliminate_dead                        (graph clean-up)
    -O2  + commute_pointwise, fuse_spatial, fuse_intensity         (the default of `run`)
    -O3  the same as -O2 for now (network passes come with compiled inference)

Every pass is one file of this package with one job; docs/compiler.md states each
pass's contract.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from medasl.ir.graph import Graph

LEVELS = (0, 1, 2, 3)
DEFAULT_LEVEL = 2


@dataclass(frozen=True)
class Pass:
    name: str
    level: int  # the lowest -O level that runs it
    run: Callable[[Graph], None]  # edits the graph in place
    summary: str


@dataclass
class Optimized:
    graph: Graph
    ran: list[str] = field(default_factory=list)
    printed: list[str] = field(default_factory=list)  # the IR after each pass asked for by `print_after`


class PassError(Exception):
    """A pass left the graph malformed: a bug in medasl (exit 70), never the user's."""


def pipeline_passes() -> list[Pass]:
    from medasl.passes import (
        commute_pointwise,
        eliminate_common,
        eliminate_dead,
        fuse_intensity,
        fuse_spatial,
        hash,
        place_storage,
        specialize,
        wire_reports,
    )

    return [specialize.PASS, wire_reports.PASS, eliminate_common.PASS, commute_pointwise.PASS, fuse_spatial.PASS, fuse_intensity.PASS,
            eliminate_dead.PASS, place_storage.PASS, hash.PASS]


def pass_names() -> list[str]:
    return [p.name for p in pipeline_passes()]


def optimize(graph: Graph, level: int = DEFAULT_LEVEL, print_after: tuple[str, ...] = (),
             verify: bool = True) -> Optimized:
    """The optimized copy of `graph` (the checked graph is left as it was)."""
    if level not in LEVELS:
        raise ValueError(f"no optimization level {level}")
    unknown = sorted(set(print_after) - set(pass_names()))
    if unknown:
        raise ValueError(f"no pass `{unknown[0]}`; the passes are {', '.join(pass_names())}")
    result = Optimized(graph.copy())
    for step in pipeline_passes():
        if step.level > level:
            continue
        step.run(result.graph)
        result.ran.append(step.name)
        if verify:
            try:
                result.graph.verify()
            except Exception as exc:  # noqa: BLE001 - any malformation is the pass's bug
                raise PassError(f"the graph is malformed after pass `{step.name}`: {exc}") from exc
        if step.name in print_after:
            result.printed.append(f"# IR after {step.name} (-O{level})\n{result.graph.dump()}")
    return result
