"""std.report: every writer writes readable files holding the metrics it was given,
creates folders, leaves no temporary files and returns what it wrote."""

from __future__ import annotations

import base64
import csv
import inspect
import json
import math
import re
from pathlib import Path

from medasl import __version__
from medasl.ops import report, viz
from medasl.runtime.values import Figure, Measured, Network, Trained
from medasl.semantics.modules import stdlib

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

DICE = Measured("dice", "max", 0.75, {"case-1": 0.7, "case-2": 0.8, "empty": float("nan")},
                {"liver": 0.9, "tumour": 0.6})
HD = Measured("hd95 <mm>", "min", 4.5, {"case-1": 3.0, "case-2": 6.0})
AUC = Measured("auc", "max", 0.91)


def test_operators_match_the_stdlib() -> None:
    declared = stdlib().modules["std.report"].ops
    assert set(declared) == set(report.OPERATORS)
    for name, func in report.OPERATORS.items():
        params = inspect.signature(func).parameters
        assert [p.name for p in declared[name].params] == list(params)[: len(declared[name].params)]
    # the runtime-only arguments of html are keyword-only
    params = inspect.signature(report.html).parameters
    assert params["figures"].kind is inspect.Parameter.KEYWORD_ONLY
    assert params["metrics"].kind is inspect.Parameter.KEYWORD_ONLY


def _no_temp_files(folder: Path) -> None:
    assert not [p for p in folder.iterdir() if p.name.startswith(".tmp-")]


def test_excel(tmp_path: Path) -> None:
    from openpyxl import load_workbook

    written = report.excel(path=tmp_path / "out" / "scores.xlsx", metrics=[DICE, HD, AUC])
    assert written == [tmp_path / "out" / "scores.xlsx"]
    _no_temp_files(tmp_path / "out")
    wb = load_workbook(written[0])
    assert wb.sheetnames == ["summary", "dice", "hd95 <mm>", "auc"]
    rows = list(wb["summary"].values)
    assert rows[0][:3] == ("metric", "goal", "value")
    assert [r[:4] for r in rows[1:]] == [("dice", "max", 0.75, 2), ("hd95 <mm>", "min", 4.5, 2), ("auc", "max", 0.91, 0)]
    assert rows[2][4] == 4.5  # the mean of the per-case values
    dice = list(wb["dice"].values)
    assert [r[:2] for r in dice] == [("case", "value"), ("case-1", 0.7), ("case-2", 0.8), ("empty", None)]
    assert [r[3:5] for r in dice[:3]] == [("class", "value"), ("liver", 0.9), ("tumour", 0.6)]
    assert list(wb["auc"].values) == [("case", "value")]
    # one metric alone, and a path without extension
    assert report.excel(tmp_path / "one", DICE) == [tmp_path / "one.xlsx"]


def test_csv(tmp_path: Path) -> None:
    written = report.csv(tmp_path / "a" / "b" / "scores.csv", (DICE, HD))
    with open(written[0], newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["metric", "case", "class", "value"]
    dice = [r for r in rows if r["metric"] == "dice"]
    assert {(r["case"], r["class"]) for r in dice} == {("", ""), ("case-1", ""), ("case-2", ""), ("empty", ""),
                                                       ("", "liver"), ("", "tumour")}
    values = {(r["metric"], r["case"], r["class"]): float(r["value"]) for r in rows}
    assert values[("dice", "case-1", "")] == 0.7 and values[("hd95 <mm>", "", "")] == 4.5
    assert math.isnan(values[("dice", "empty", "")])
    assert values[("dice", "", "tumour")] == 0.6


def test_json(tmp_path: Path) -> None:
    written = report.json(tmp_path / "scores.json", [DICE, AUC])
    doc = json.loads(written[0].read_text(encoding="utf-8"))
    assert [d["metric"] for d in doc] == ["dice", "auc"]
    assert doc[0]["value"] == 0.75 and doc[0]["goal"] == "max"
    assert doc[0]["per_case"] == {"case-1": 0.7, "case-2": 0.8, "empty": None}
    assert doc[0]["per_class"] == {"liver": 0.9, "tumour": 0.6}
    assert doc[0]["summary"]["n"] == 2 and math.isclose(doc[0]["summary"]["mean"], 0.75)
    assert doc[1]["summary"]["mean"] is None and doc[1]["per_case"] == {}


def test_html(tmp_path: Path) -> None:
    history = [{"epoch": e, "loss": 1.0 / (e + 1), "lr": 1e-3, "seconds": 1.0} for e in range(3)]
    curve = viz.loss_curve(Trained(Network("n", {}, None), history))
    figures = [("curve", curve), ("box <plot>", viz.metric_boxplot(DICE))]
    title = "Liver <study> & \"friends\""
    written = report.html(tmp_path / "rep" / "report.html", title, figures=figures, metrics=[DICE, HD])
    assert written == [tmp_path / "rep" / "report.html"]
    _no_temp_files(tmp_path / "rep")
    text = written[0].read_text(encoding="utf-8")
    assert "<title>Liver &lt;study&gt; &amp; &quot;friends&quot;</title>" in text
    assert title not in text and "box &lt;plot&gt;" in text and "hd95 &lt;mm&gt;" in text
    assert f"medasl {__version__}" in text and "Generated at" in text
    images = re.findall(r'<img [^>]*src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    assert len(images) == 2
    decoded = [base64.b64decode(i, validate=True) for i in images]
    assert all(d.startswith(PNG_SIGNATURE) for d in decoded)
    assert decoded[0] == curve.png
    for v in ("0.75", "0.7", "0.8", "4.5", "0.9", "0.6", "NaN", "case-2", "class liver"):
        assert f">{v}<" in text
    # nothing to show: still a page; written again in place
    assert report.html(tmp_path / "rep" / "report.html")[0].read_text(encoding="utf-8").count("<img") == 0


def test_figures_as_a_mapping_or_bare(tmp_path: Path) -> None:
    fig = Figure("t", viz.metric_boxplot(DICE).png)
    text = report.html(tmp_path / "r", figures={"a": fig}, metrics=DICE)[0].read_text(encoding="utf-8")
    assert text.count("<img") == 1 and "<title>medasl report</title>" in text
    assert report.html(tmp_path / "s.html", figures=[fig])[0].read_text(encoding="utf-8").count("<img") == 1
