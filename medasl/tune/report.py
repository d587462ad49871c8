"""The study's report: `<out>/<pipeline>/tune.html` and its figures in `figures/`.

The trial table (values, status, objective, time, what each computed, its folder, the
code and message of a failed trial), the best values and the exact `medasc run ...
--set` line that reproduces the best trial, the optimization history, the parallel
coordinates and the parameter importance (medasl/ops/viz.py draws the three figures,
the same functions `show optimization_history(...)` etc. run in a pipeline). Written
from study.json alone, so a report can be redrawn at any time.
"""

from __future__ import annotations

import base64
import html
import json
import os
import tempfile
from dataclasses import asdict
from pathlib import Path

from medasl.tune.driver import Prepared, reproduce_command
from medasl.tune.study import OK


def write_report(prepared: Prepared) -> Path:
    from medasl.ops.viz import optimization_history_figure, parallel_coordinates_figure, param_importance_figure

    study, folder = prepared.study, prepared.folder
    data = study.to_json()
    data["trials"] = [asdict(t) for t in study.trials]
    data = json.loads(json.dumps(data))  # what the file holds: the figures read the same data from `show`
    figures = [optimization_history_figure(data), parallel_coordinates_figure(data), param_importance_figure(data)]
    names = ["optimization_history", "parallel_coordinates", "param_importance"]
    (folder / "figures").mkdir(parents=True, exist_ok=True)
    for name, figure in zip(names, figures):
        _write(folder / "figures" / f"{name}.png", figure.png)
    best = study.best()
    names_in_order = [d["name"] for d in study.space]
    rows = []
    for t in study.trials:
        cells = [str(t.number), html.escape(t.status)]
        cells += [html.escape(str(t.values.get(name, ""))) for name in names_in_order]
        cells.append("" if t.objective is None else f"{t.objective:.6g}")
        cells.append(f"{t.seconds:.1f} s")
        cells.append(f"{t.computed} / {t.cached}")
        cells.append(f'<a href="{html.escape(t.folder)}/{html.escape(study.pipeline)}">{html.escape(t.folder)}</a>')
        cells.append(html.escape(f"error[{t.code}]: {t.message}" if t.code else (t.message or "")))
        style = ' class="best"' if best is not None and t.number == best.number else ""
        rows.append(f"<tr{style}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    header = ["trial", "status", *names_in_order, study.objective, "time", "computed / cached", "folder", "note"]
    finished = sum(t.status == OK for t in study.trials)
    parts = [
        "<!DOCTYPE html>", '<html><head><meta charset="utf-8">',
        f"<title>Study of {html.escape(study.pipeline)}</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}tr.best{background:#e6f4e6}"
        "code{background:#f4f4f4;padding:4px;display:block;white-space:pre-wrap}</style></head><body>",
        f"<h1>Study of <code style='display:inline'>{html.escape(study.pipeline)}</code></h1>",
        f"<p>{html.escape(study.file)}: {study.goal}imize <b>{html.escape(study.objective)}</b> with hyperopt "
        f"({html.escape(study.algo)}, seed {study.seed}, rounds of {study.batch}); {len(study.trials)} trials, "
        f"{finished} ok.</p>",
    ]
    if best is not None:
        parts.append(f"<h2>Best: trial {best.number}, {html.escape(study.objective)} = {best.objective:.6g}</h2>")
        parts.append("<ul>" + "".join(f"<li>{html.escape(k)} = {html.escape(v)}</li>" for k, v in best.sets.items())
                     + "</ul>")
        command = reproduce_command(study, best, prepared.request.level, prepared.request.pipeline)
        parts.append(f"<p>Reproduce it:</p><code>{html.escape(command)}</code>")
    parts.append("<h2>Trials</h2><table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"
                 + "".join(rows) + "</table>")
    for figure in figures:
        encoded = base64.b64encode(figure.png).decode()
        parts.append(f"<h2>{html.escape(figure.title)}</h2><img src=\"data:image/png;base64,{encoded}\">")
    parts.append("</body></html>")
    target = folder / "tune.html"
    _write(target, "\n".join(parts).encode())
    return target


def _write(target: Path, content: bytes) -> None:
    """Whole or not at all: a temporary file renamed into place."""
    fd, temporary = tempfile.mkstemp(prefix=f".{target.name}-", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
