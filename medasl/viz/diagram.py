"""The pipeline as a Graphviz diagram: `medasc graph FILE -o out.svg`.

Nodes are grouped by stage (io, pre, aug, nets, train, ...), edges carry the port type
that flows along them, conversions the checker inserted are drawn dashed and orange,
parameters under search are marked with their space, objectives with their direction,
and `show`/`report` sinks are drawn as outputs. Built with the `graphviz` package;
rendering needs the `dot` binary, and without it the `.dot` text is written instead.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import graphviz

from medasl.ir.graph import Const, Graph, Node, Ref, format_literal, format_value, refs
from medasl.ir.types import format_type

FORMATS = ("svg", "png", "pdf", "dot")

STAGE_TITLES = {
    "params": "parameters", "io": "data sources", "data": "datasets", "pre": "pre-processing",
    "aug": "augmentation", "nets": "networks", "losses": "losses", "train": "training",
    "post": "post-processing", "metrics": "metrics", "viz": "pictures", "report": "reports",
}
STAGE_COLORS = {
    "params": "#f3f3f3", "io": "#e8f1fb", "data": "#eef6ee", "pre": "#fdf3e3", "aug": "#fbe9ef",
    "nets": "#efeafb", "losses": "#efeafb", "train": "#e9f7f7", "post": "#f6f6e4",
    "metrics": "#e6f4ea", "viz": "#f4f0e8", "report": "#f4f0e8",
}
MAX_LABEL = 38


def _short(text: str, limit: int = MAX_LABEL) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _node_label(node: Node) -> str:
    title = node.binding or node.id
    lines = [f"<B>{_html(title)}</B>"] if node.binding else []
    op = node.op
    if node.lift:
        op += f" [{', '.join(node.lift)}]"
    if node.op == "param":
        default = node.args[0][1]
        lines = [f"<B>{_html(node.id)}</B> = {_html(_short(format_value(default)))}"]
        if node.search:
            args = ", ".join(map(str, node.search["args"]))
            lines.append(f"<I>search {_html(_short(node.search['kind'] + '(' + args + ')'))}</I>")
        return "<" + "<BR/>".join(lines) + ">"
    lines.append(_html(op))
    if node.fused:  # what the fused step replaced, one operator a line
        chain = node.arg("chain")
        for step in chain.value if isinstance(chain, Const) else ():  # type: ignore[union-attr]
            options = ", ".join(f"{k}={format_literal(v)}" for k, v in step["params"].items())
            lines.append(f'<FONT POINT-SIZE="9">{_html(_short(step["op"] + "(" + options + ")", 40))}</FONT>')
    for key, value in node.args:
        if key.startswith("_") or isinstance(value, Ref) or (node.fused and key == "chain"):
            continue
        lines.append(f'<FONT POINT-SIZE="9">{_html(key)}={_html(_short(format_value(value), 28))}</FONT>')
    if node.goal:
        lines.append(f"<B>{node.goal}</B>")
    return "<" + "<BR/>".join(lines) + ">"


def _html(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def build(graphs: list[Graph]) -> graphviz.Digraph:
    """One diagram; several pipelines are drawn side by side, each in its own frame."""
    title = f"pipeline {graphs[0].name}" if len(graphs) == 1 else ""
    dot = graphviz.Digraph(graphs[0].name, graph_attr={
        "rankdir": "TB", "fontname": "Helvetica", "label": title, "labelloc": "t",
        "fontsize": "16", "compound": "true", "newrank": "true", "nodesep": "0.35", "ranksep": "0.55",
    }, node_attr={"fontname": "Helvetica", "fontsize": "11", "shape": "box", "style": "rounded,filled",
                  "fillcolor": "white"}, edge_attr={"fontname": "Helvetica", "fontsize": "8", "color": "#555555"})
    if len(graphs) == 1:
        _draw(dot, graphs[0], "")
        return dot
    for graph in graphs:
        with dot.subgraph(name=f"cluster_pipeline_{graph.name}") as frame:
            frame.attr(label=f"pipeline {graph.name}", fontsize="16", style="rounded", color="#888888")
            _draw(frame, graph, f"{graph.name}.")
    return dot


def _draw(dot: graphviz.Digraph, graph: Graph, prefix: str) -> None:
    by_stage: dict[str, list[Node]] = {}
    for node in graph.nodes.values():
        by_stage.setdefault(node.stage or "data", []).append(node)
    for stage, nodes in by_stage.items():
        with dot.subgraph(name=f"cluster_{prefix}{stage}") as sub:
            sub.attr(label=STAGE_TITLES.get(stage, stage), style="rounded,filled",
                     fillcolor=STAGE_COLORS.get(stage, "#f7f7f7"), color="#bbbbbb")
            for node in nodes:
                attrs = {}
                if node.conversion:
                    attrs = {"style": "rounded,dashed,filled", "color": "#d9822b", "fillcolor": "#fff4e6"}
                elif node.op == "param":
                    attrs = {"shape": "note", "style": "filled",
                             "fillcolor": "#fff7c2" if node.search else "white"}
                elif node.goal:
                    attrs = {"penwidth": "2", "color": "#2b7a3d"}
                elif node.fused:
                    attrs = {"penwidth": "2", "color": "#6a3d9a"}
                if node.random:
                    attrs["peripheries"] = "2"
                sub.node(prefix + node.id, _node_label(node), **attrs)
    for node in graph.nodes.values():
        for key, value in node.args:
            for source in refs(value):
                src = graph.nodes.get(source)
                if src is None:
                    continue
                style = {"style": "dashed", "color": "#d9822b"} if node.conversion or src.conversion else {}
                if src.op == "param":
                    style = {"style": "dotted", "arrowhead": "empty"}
                edge_label = "" if src.op == "param" else _short(format_type(src.type), 40)
                if edge_label and not key.startswith("_") and key not in ("x", "data"):
                    edge_label = f"{key}: {edge_label}"
                dot.edge(prefix + source, prefix + node.id, label=_html(edge_label), **style)
    for kind, ids in (("show", graph.shows), ("report", graph.reports)):
        for node_id in ids:
            sink = f"{prefix}{kind}_{node_id}"
            dot.node(sink, kind, shape="doubleoctagon" if kind == "report" else "octagon",
                     style="filled", fillcolor="#e6f4ea")
            dot.edge(prefix + node_id, sink)


def render_graph(graphs: list[Graph], output: Path, fmt: str) -> str:
    """Write the diagram; returns a line for the user saying what was written."""
    dot = build(graphs)
    output.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "dot":
        output.write_text(dot.source, encoding="utf-8")
        return f"wrote {output}"
    if shutil.which("dot") is None:
        fallback = output.with_suffix(".dot")
        fallback.write_text(dot.source, encoding="utf-8")
        return (f"wrote {fallback} instead of {output}: the Graphviz `dot` program is not installed.\n"
                f"Install it (Debian/Ubuntu: `apt-get install graphviz`, macOS: `brew install graphviz`),"
                f" or render the file with `dot -T{fmt} {fallback} -o {output}`.")
    output.write_bytes(dot.pipe(format=fmt))
    return f"wrote {output}"
