"""std.report: report files for the `report` statement (stdlib/report.medas).

Each public function implements the operator of the same name; the executor binds them
by name (see `OPERATORS`) and calls them with keyword arguments named as in the
signature. Like the std.io writers, every writer creates the parent folders, writes
through a temporary file beside the target and renames it into place (a killed run
never leaves a half-written report that looks complete), and returns the list of files
written (`list[pathlib.Path]`). A path without an extension gets the format's.

`metrics` is a list (or tuple) of `values.Measured`; one `Measured` alone is accepted.
NaN marks an undefined case (values.Measured): it is an empty cell in Excel, `nan` in
CSV, `null` in JSON and `NaN` in HTML.

Runtime-only keyword arguments: `html` also takes `figures` (a list of
`(name, values.Figure)` pairs: every figure the pipeline `show`s, named by its binding)
and `metrics` (every metric of the pipeline). They are not declared in the stdlib
signature; the executor passes them.
"""

from __future__ import annotations

import base64
import csv as csv_module
import datetime
import html as html_module
import json as json_module
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from medasl import __version__
from medasl.ops.viz import summary
from medasl.runtime import outputs
from medasl.runtime.values import Figure, Measured

PathLike = str | os.PathLike[str]

_STATS = ("n", "mean", "std", "median", "q1", "q3")


# ===== shared helpers =====================================================================


def _write(op: str, path: PathLike, write: Callable[[Path], None]) -> list[Path]:
    """Write the report with `write(file)` and commit it whole (`outputs.commit`: a
    private file beside the target, fsynced, renamed into place), with the format's
    extension added when `path` has none of its own."""
    return outputs.commit(outputs.with_suffix(op, Path(path)), write)


def _metrics(metrics: object) -> list[Measured]:
    """The metrics as a list (one Measured alone, or a list or tuple of them)."""
    if metrics is None:
        return []
    items = [metrics] if isinstance(metrics, Measured) else list(metrics)  # type: ignore[call-overload]
    for m in items:
        if not isinstance(m, Measured):
            raise TypeError(f"a report lists metrics (Measured values), not {type(m).__name__}")
    return items


def _figures(figures: object) -> list[tuple[str, Figure]]:
    """The figures as (name, Figure) pairs (a mapping, or a list of pairs or Figures)."""
    if figures is None:
        return []
    items = list(figures.items()) if isinstance(figures, Mapping) else list(figures)  # type: ignore[call-overload]
    out = []
    for i, item in enumerate(items):
        name, fig = (item.title or f"figure {i + 1}", item) if isinstance(item, Figure) else item
        if not isinstance(fig, Figure):
            raise TypeError(f"a report shows figures (Figure values), not {type(fig).__name__}")
        out.append((str(name), fig))
    return out


def _finite(v: float) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None


def _stats(m: Measured) -> dict[str, float]:
    return summary(m.per_case.values())


def _spread(m: Measured) -> float:
    """The sample standard deviation over the folds of a cross-validated metric."""
    from medasl.ops.data import fold_spread

    return fold_spread(m)


def _cross_validated(ms: list[Measured]) -> list[Measured]:
    """The cross-validated metrics (`cross_validated`: a value per fold) among `ms`."""
    return [m for m in ms if m.per_fold]


def _pooled(m: Measured) -> bool:
    """A metric with one value over all cases pooled (AUC, accuracy, F1, FROC): it has no
    per-case values, so no per-case statistics either."""
    return not m.per_case


def _text_cell(cell: object) -> None:
    """Make an openpyxl cell holding text a text cell: openpyxl stores a string starting
    with `=` as a formula, so a case id `=HYPERLINK(...)` from the data would run when the
    workbook is opened. `quotePrefix` also keeps Excel from reading it as one on editing."""
    if isinstance(cell.value, str):  # type: ignore[attr-defined]
        cell.data_type = "s"  # type: ignore[attr-defined]
        cell.quotePrefix = True  # type: ignore[attr-defined]


def _append_row(sheet: object, row: list[object]) -> None:
    sheet.append(row)  # type: ignore[attr-defined]
    for cell in sheet[sheet.max_row]:  # type: ignore[attr-defined]
        _text_cell(cell)


# ===== documents ==========================================================================


def _fmt(v: float) -> str:
    v = float(v)
    return "NaN" if math.isnan(v) else f"{v:.6g}"


def _table(header: Iterable[str], rows: Iterable[Iterable[str]]) -> str:
    esc = html_module.escape
    head = "".join(f"<th>{esc(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in row) + "</tr>\n" for row in rows)
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody>\n</table>\n"


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 72em; color: #222; }
h1 { margin-bottom: 0.2em; }
.meta { color: #666; font-size: 0.9em; }
figure { margin: 1.5em 0; }
figure img { max-width: 100%; border: 1px solid #ddd; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
thead th { background: #f0f0f0; }
"""


def html(path: PathLike, title: str = "medasl report", *, figures: object = (), metrics: object = ()) -> list[Path]:
    """One self-contained HTML file: the title, when and by which medasl version it was
    generated, every figure (embedded as base64 PNG, under its name and title), a
    summary table of the metrics (value, goal, n, mean, std, median, quartiles and one
    column per class) and a per-case table (one row per case, one column per metric).
    All text is escaped.

    `figures` and `metrics` are runtime-only: the executor passes every figure the
    pipeline `show`s, as `(binding name, Figure)` pairs, and every metric."""
    esc = html_module.escape
    figs = _figures(figures)
    ms = _metrics(metrics)
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    parts = ["<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n",
             f"<title>{esc(str(title))}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n",
             f"<h1>{esc(str(title))}</h1>\n",
             f"<p class=\"meta\">Generated at {esc(now)} by medasl {esc(__version__)}.</p>\n"]
    if ms:
        classes = list(dict.fromkeys(c for m in ms for c in m.per_class))
        header = ["metric", "goal", "value", *_STATS, *(f"class {c}" for c in classes)]
        rows = []
        for m in ms:
            st = _stats(m)
            statistics = (["pooled", *("" for _ in _STATS[1:])] if _pooled(m)
                          else [str(st["n"]), *(_fmt(st[k]) for k in _STATS[1:])])
            rows.append([m.name, m.goal, _fmt(m.value), *statistics,
                         *(_fmt(m.per_class[c]) if c in m.per_class else "" for c in classes)])
        parts += ["<h2>Metrics</h2>\n", _table(header, rows)]
        folded = _cross_validated(ms)
        if folded:
            most = max(len(m.per_fold) for m in folded)
            rows = [[m.name, f"{_fmt(m.value)} \u00b1 {_fmt(_spread(m))}",
                     *(_fmt(v) for v in m.per_fold.values()), *("" for _ in range(most - len(m.per_fold)))]
                    for m in folded]
            parts += ["<h2>Cross-validation</h2>\n",
                      _table(["metric", "mean \u00b1 sd", *(f"fold {i}" for i in range(most))], rows),
                      "<p class=\"meta\">The value of a cross-validated metric is the mean over its folds; sd is "
                      "the sample standard deviation over the folds (n - 1). Its statistics above are over "
                      "the cases of every fold.</p>\n"]
        if any(_pooled(m) for m in ms):
            parts.append("<p class=\"meta\">pooled: one value computed over all cases at once (as AUC and "
                         "accuracy are); it has no per-case values, hence no n or spread.</p>\n")
        per_case = [m for m in ms if not _pooled(m)]
        cases = list(dict.fromkeys(cid for m in per_case for cid in m.per_case))
        if cases:
            rows = [[cid, *(_fmt(m.per_case[cid]) if cid in m.per_case else "" for m in per_case)] for cid in cases]
            parts += ["<h2>Metrics per case</h2>\n", _table(["case", *(m.name for m in per_case)], rows)]
    if figs:
        parts.append("<h2>Figures</h2>\n")
        for name, fig in figs:
            data = base64.b64encode(fig.png).decode("ascii")
            caption = name if not fig.title or fig.title == name else f"{name}: {fig.title}"
            parts.append(f"<figure>\n<img alt=\"{esc(caption)}\" src=\"data:image/png;base64,{data}\">\n"
                         f"<figcaption>{esc(caption)}</figcaption>\n</figure>\n")
    parts.append("</body>\n</html>\n")
    text = "".join(parts)
    return _write("html", path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


# ===== metric tables ======================================================================


_SHEET_FORBIDDEN = re.compile(r"[\[\]:*?/\\]")


def _sheet_names(ms: list[Measured]) -> list[str]:
    """One Excel sheet name per metric: forbidden characters replaced, at most 31
    characters, unique (case-insensitively, as Excel compares) and never `summary`."""
    used = {"summary"}
    names = []
    for m in ms:
        base = _SHEET_FORBIDDEN.sub("_", m.name).strip("'")[:31] or "metric"
        name, i = base, 2
        while name.lower() in used:
            suffix = f" ({i})"
            name, i = base[: 31 - len(suffix)] + suffix, i + 1
        used.add(name.lower())
        names.append(name)
    return names


def excel(path: PathLike, metrics: object) -> list[Path]:
    """An Excel workbook (openpyxl): a `summary` sheet with one row per metric (metric,
    goal, value, n, mean, std, median, q1, q3 over the per-case values), and one sheet
    per metric (named after it) with its per-case values (columns A-B: case, value) and,
    if any, its per-class means (columns D-E: class, value). NaN is an empty cell. Text
    (case ids and class names come from the data) is stored as text, never as a formula."""
    from openpyxl import Workbook

    ms = _metrics(metrics)
    wb = Workbook()
    ws = wb.active
    ws.title = "summary"
    _append_row(ws, ["metric", "goal", "value", *_STATS])
    for m in ms:
        st = _stats(m)
        _append_row(ws, [m.name, m.goal, _finite(m.value), st["n"], *(_finite(st[k]) for k in _STATS[1:])])
    for m, name in zip(ms, _sheet_names(ms)):
        sheet = wb.create_sheet(name)
        _append_row(sheet, ["case", "value"])
        for cid, v in m.per_case.items():
            _append_row(sheet, [str(cid), _finite(v)])
        if m.per_class:
            sheet.cell(row=1, column=4, value="class")
            sheet.cell(row=1, column=5, value="value")
            for r, (c, v) in enumerate(m.per_class.items(), start=2):
                _text_cell(sheet.cell(row=r, column=4, value=str(c)))
                sheet.cell(row=r, column=5, value=_finite(v))
        if m.per_fold:  # columns G-H: the value of every fold, their mean and sd
            folds = [(f"fold {i}", v) for i, v in m.per_fold.items()] + [("mean", m.value), ("sd", _spread(m))]
            sheet.cell(row=1, column=7, value="fold")
            sheet.cell(row=1, column=8, value="value")
            for r, (name, v) in enumerate(folds, start=2):
                sheet.cell(row=r, column=7, value=name)
                sheet.cell(row=r, column=8, value=_finite(v))
    return _write("excel", path, lambda tmp: wb.save(tmp))


def csv(path: PathLike, metrics: object) -> list[Path]:
    """A CSV file in long format, columns `metric, case, class, value`: one row per case
    (class empty), one per class mean (case empty), and one for the metric's value
    (case and class empty). With a cross-validated metric among them, a fifth column
    `fold`: the fold's index on one row per fold, `mean` on the metric's value and `sd`
    on a row of the standard deviation over the folds. NaN is written `nan`. Text cells that a spreadsheet would
    run as a formula (`=...`, `+...`, `-...`, `@...`) start with `'` (`outputs.csv_text`);
    values are numbers and written as they are, negative ones included."""
    ms = _metrics(metrics)

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv_module.writer(f)
            folded = bool(_cross_validated(ms))
            extra = [""] if folded else []
            w.writerow(["metric", "case", "class", "value", *(["fold"] if folded else [])])
            for m in ms:
                name = outputs.csv_text(m.name)
                w.writerow([name, "", "", repr(float(m.value)), *(["mean"] if m.per_fold else extra)])
                for index, v in m.per_fold.items():
                    w.writerow([name, "", "", repr(float(v)), index])
                if m.per_fold:
                    w.writerow([name, "", "", repr(_spread(m)), "sd"])
                for cid, v in m.per_case.items():
                    w.writerow([name, outputs.csv_text(cid), "", repr(float(v)), *extra])
                for c, v in m.per_class.items():
                    w.writerow([name, "", outputs.csv_text(c), repr(float(v)), *extra])

    return _write("csv", path, write)


def json(path: PathLike, metrics: object) -> list[Path]:
    """A JSON file: a list with one object per metric, `{"metric", "goal", "value",
    "summary": {n, mean, std, median, q1, q3}, "per_case": {case: value},
    "per_class": {class: value}}`, and for a cross-validated metric `"per_fold": {index:
    value}` and `"fold_sd"` (its value is the mean over the folds). NaN is `null` (JSON
    has no NaN)."""
    ms = _metrics(metrics)
    doc: list[dict[str, object]] = [{"metric": m.name, "goal": m.goal, "value": _finite(m.value),
            "summary": {k: (v if k == "n" else _finite(v)) for k, v in _stats(m).items()},
            "per_case": {str(k): _finite(v) for k, v in m.per_case.items()},
            "per_class": {str(k): _finite(v) for k, v in m.per_class.items()}} for m in ms]
    for entry, m in zip(doc, ms):
        if m.per_fold:
            entry["per_fold"] = {str(k): _finite(v) for k, v in m.per_fold.items()}
            entry["fold_sd"] = _finite(_spread(m))
    text = json_module.dumps(doc, indent=2, allow_nan=False) + "\n"
    return _write("json", path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


OPERATORS: dict[str, Callable[..., object]] = {"html": html, "excel": excel, "csv": csv, "json": json}
"""The std.report operators implemented here, by the name of their stdlib signature."""
