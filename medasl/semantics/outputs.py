"""Check-time part of the output-path rule (medasl/runtime/outputs.py): outputs whose
paths are written in the file and would land on one file.

- E0260: a writer mapped over a dataset with a path without `*`: every case would
  overwrite the one before;
- E0261: two writers (or reports) naming the same file, once the format's extension is
  added and the path normalized;
- W0010: a path that leaves the output folder (absolute, or `..` climbing out of it):
  `medasc run` refuses it (E2011) unless given `--allow-outside-out`, which only the run
  can decide, so the checker warns.

Paths that come from parameters (`--set`) or case ids are only known when running;
`medasc run` checks those (E2012, E2011).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from medasl.diagnostics import Label, label, secondary
from medasl.ir.graph import Const, Graph, Node
from medasl.runtime.outputs import climbs_out, pattern_target

Report = Callable[..., None]  # PipelineChecker.error / .warning(code, message, *labels, help=...)


def _literal_path(node: Node) -> str | None:
    """The path a writer's node writes to, when it is written in the file."""
    if node.stage not in ("output", "report") or "path" not in node.path_params:
        return None
    value = dict(node.args).get("path")
    return value.value if isinstance(value, Const) and isinstance(value.value, str) else None


def check_outputs(graph: Graph, error: Report, warning: Report) -> None:
    """E0260, E0261 and W0010 for the writers of `graph` whose paths are literals."""
    first_of: dict[str, Node] = {}
    for node in graph.nodes.values():
        pattern = _literal_path(node)
        if pattern is None or Path(pattern).name in ("", ".", ".."):
            continue  # no file named: E0249, reported where the call is checked
        if "map" in node.lift and "*" not in pattern:
            here: tuple[Label, ...] = (label(node.span, f"every case is written to `{pattern}`"),) if node.span else ()
            folder, _, name = pattern.rpartition("/")
            example = f"{folder}/*_{name}" if folder else f"*_{name}"
            error("E0260", f"`{node.op}` writes each case of a dataset to the one file `{pattern}`: every case "
                  "would overwrite the one before", *here,
                  help=f"put `*` in the file name, which becomes each case's id: `{example}`")
        if climbs_out(pattern):
            where = (label(node.span, "writes outside the output folder"),) if node.span else ()
            warning("W0010", f"`{node.op}` writes to `{pattern}`, outside the output folder (`--out DIR/<pipeline>`)",
                    *where, help="`medasc run` refuses this unless given --allow-outside-out; a relative path "
                    "without `..` stays inside")
        target = pattern_target(node.op, pattern)
        first = first_of.setdefault(target, node)
        if first is not node:
            labels = ((label(node.span, f"writes `{target}`"),) if node.span else ()) + \
                ((secondary(first.span, "which this writes too"),) if first.span else ())
            error("E0261", f"two outputs write the same file `{target}`", *labels,
                  help="give each writer its own path")
