"""The `medasc` commands: output, files written and exit codes (0, 1, 2, 70)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from medasl import cli
from tests.conftest import ROOT

GOOD = """import std.io, std.pre
pipeline p {
  ct = nifti("ct.nii.gz") as Image[3, CT]
  x = ct |> window(level=40, width=400) |> rescale(0, 1)
  report write_nifti(x, "out.nii.gz")
}
"""
BAD = (ROOT / "tests/golden/diagnostics/001_window_on_mr.medas").as_posix()


@pytest.fixture
def good(tmp_path: Path) -> str:
    path = tmp_path / "good.medas"
    path.write_text(GOOD)
    return str(path)


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli.main, list(args))
    return result.exit_code, result.stdout, result.stderr


def run_text(tmp_path: Path, text: str, *args: str, name: str = "p.medas") -> tuple[int, str]:
    """`medasc run` of `text` written to tmp_path/name, with its cache and --out in
    tmp_path: the exit code and what it printed to stderr."""
    path = tmp_path / name
    path.write_text(text)
    code, _, err = run("run", str(path), "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "out"), *args)
    return code, err


def test_check_ok(good: str) -> None:
    code, _, err = run("check", good)
    assert code == 0, err
    assert "ok: 1 file checked" in err


def test_check_error_exit_1() -> None:
    code, _, err = run("check", BAD)
    assert code == 1
    assert "error[E0203]" in err and "error: 1 error" in err


def test_check_json() -> None:
    code, out, _ = run("check", "--message-format", "json", BAD)
    assert code == 1
    payload = json.loads(out)
    assert payload["errors"] == 1
    (diag,) = payload["diagnostics"]
    assert diag["code"] == "E0203"
    assert diag["labels"][0]["span"] == {"file": BAD, "line": 6, "column": 13, "end_line": 6, "end_column": 19}


def test_missing_file_is_a_user_error(tmp_path: Path) -> None:
    code, _, err = run("check", str(tmp_path / "nope.medas"))
    assert code == 1
    assert "error[E0010]: cannot read" in err
    assert "Traceback" not in err


def test_usage_errors_exit_2(good: str) -> None:
    assert run("check")[0] == 2
    assert run("check", "--message-format", "xml", good)[0] == 2
    assert run("graph", good, "-o", "x.jpg")[0] == 2
    assert run("explain", "E9999")[0] == 2
    assert run("ops", "resampel")[0] == 2


def test_deny_warnings(tmp_path: Path) -> None:
    path = tmp_path / "w.medas"
    path.write_text('import std.io\npipeline p {\n  unused = nifti("a.nii.gz")\n}\n')
    assert run("check", str(path))[0] == 0
    code, _, err = run("check", "--deny-warnings", str(path))
    assert code == 1 and "W0001" in err


def test_internal_error_exit_70(good: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import medasl.semantics.checker as checker

    def boom(*_: object, **__: object) -> None:
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(checker, "check_source", boom)
    code, _, err = run("check", good)
    assert code == 70
    assert "internal compiler error" in err and "Please report it" in err


def test_graph_writes_dot_and_svg(good: str, tmp_path: Path) -> None:
    dot = tmp_path / "p.dot"
    assert run("graph", good, "-o", str(dot))[0] == 0
    text = dot.read_text()
    assert "cluster_pre" in text and "Image[3, CT]" in text
    svg = tmp_path / "p.svg"
    code, _, err = run("graph", good, "-o", str(svg))
    assert code == 0, err
    if "instead of" in err:  # no Graphviz `dot` binary on this machine
        assert svg.with_suffix(".dot").exists()
    else:
        assert svg.read_text().lstrip().startswith("<?xml")


def test_graph_refuses_a_file_with_errors(tmp_path: Path) -> None:
    code, _, err = run("graph", BAD, "-o", str(tmp_path / "x.svg"))
    assert code == 1 and "E0203" in err
    assert not (tmp_path / "x.svg").exists()


def test_compile_emit(good: str) -> None:
    code, out, _ = run("compile", "--emit", "ir", good)
    assert code == 0
    assert "%x: Image[3, CT] = rescale(" in out
    code, out, _ = run("compile", "--emit", "ast", good)
    assert code == 0 and out.startswith("Module")
    code, out, _ = run("compile", "--emit", "ir", "--format", "json", good)
    nodes = json.loads(out)[0]["nodes"]
    assert [n["op"] for n in nodes] == ["nifti", "window", "rescale", "write_nifti"]
    assert all(len(n["hash"]) == 64 for n in nodes)


def test_explain_and_ops() -> None:
    code, out, _ = run("explain", "e0220")
    assert code == 0 and "label map" in out and "For example" in out
    code, out, _ = run("ops", "resample")
    assert code == 0 and out.startswith("std.pre.resample(") and "@spatial" in out
    code, out, _ = run("ops")
    assert code == 0 and "std.metrics:" in out and "hd95" in out


def test_graph_without_dot_writes_dot_text_and_says_how_to_render(
        good: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import medasl.viz.diagram as diagram

    monkeypatch.setattr(diagram.shutil, "which", lambda _: None)
    svg = tmp_path / "p.svg"
    code, _, err = run("graph", good, "-o", str(svg))
    assert code == 0
    assert not svg.exists()
    assert svg.with_suffix(".dot").read_text().startswith("digraph")
    assert "apt-get install graphviz" in err and f"dot -Tsvg {svg.with_suffix('.dot')} -o {svg}" in err


def test_graph_draws_every_pipeline_of_a_file(tmp_path: Path) -> None:
    path = tmp_path / "two.medas"
    path.write_text(GOOD + GOOD.replace("pipeline p", "pipeline q").split("\n", 1)[1])
    dot = tmp_path / "two.dot"
    assert run("graph", str(path), "-o", str(dot))[0] == 0
    text = dot.read_text()
    assert "cluster_pipeline_p" in text and "cluster_pipeline_q" in text
    assert run("graph", str(path), "-o", str(dot), "--pipeline", "q")[0] == 0
    assert "cluster_pipeline" not in dot.read_text()
    assert run("graph", str(path), "-o", str(dot), "--pipeline", "r")[0] == 2
