"""The compiler's command line on the forms issue 9 found failing: `compile --emit ir
--format json` with parameters inside tuples, a tuple of metrics in a report, and
`--set` values with units, signs, zero and operators. Their diagnostics are golden
(tests/golden/compiler/, rewrite with MEDASL_UPDATE_GOLDEN=1 and review)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from medasl.ir.graph import Graph
from tests.conftest import ROOT, compare_golden
from tests.test_cli import run

GOLDEN = ROOT / "tests" / "golden" / "compiler"
TUPLES = str((GOLDEN / "tuples.medas").relative_to(ROOT))


def test_json_ir_of_parameters_in_tuples_reads_back() -> None:
    code, out, err = run("compile", "--emit", "ir", "--format", "json", TUPLES)
    assert code == 0, err
    (data,) = json.loads(out)
    graph = Graph.from_json(data)
    graph.verify()
    assert graph.to_json() == data
    assert graph.nodes["prepped"].inputs() == ["resample", "crop", "crop"]  # the references in the tuple are uses
    assert graph.users("crop") == ["prepped"]


@pytest.mark.parametrize("level", ["0", "1", "2", "3"])
def test_optimized_ir_folds_the_parameters(level: str) -> None:
    code, out, err = run("compile", "--emit", "ir", f"-O{level}", TUPLES)
    assert code == 0, err
    assert "param(" not in out and "size=(64, 64, 48)" in out and "metrics=(%dice_score, %hd)" in out


def test_print_after_a_pass() -> None:
    code, out, err = run("compile", "--emit", "ir", "--print-after", "specialize", "--print-after", "place_storage",
                         TUPLES)
    assert code == 0, err
    assert out.count("# IR after") == 2 and "# IR after specialize (-O2)" in out and "store(" in out
    code, _, err = run("compile", "--emit", "ir", "--print-after", "fold_everything", TUPLES)
    assert code == 2 and "no such pass" in err


def test_dry_run_with_a_tuple_of_metrics(tmp_path: Path) -> None:
    code, _, err = run("run", TUPLES, "--dry-run", "--cache-dir", str(tmp_path / "c"), "--out", str(tmp_path / "o"))
    assert code == 0, err
    assert re.search(r"excel\s+│\s+excel", err) and re.search(r"csv\s+│\s+csv", err)


SETS = {
    "units_vector": ("sp=(3, 3, 3) mm", 0),
    "units_scalar_for_a_vector": ("sp=3 mm", 1),
    "negative_without_unit": ("sp=-1", 1),
    "negative_count": ("n=-3", 1),
    "zero_count": ("n=0", 1),
    "operator_without_at": ("loss_fn=dice_loss", 0),
    "operator_with_at": ("loss_fn=@dice_loss", 0),
    "not_an_operator_of_that_kind": ("loss_fn=unet3d", 1),
    "size_not_divisible": ("crop=50", 1),
    "syntax": ("crop=(1,", 1),
    "no_such_parameter": ("depth=3", 2),
}


@pytest.mark.parametrize("name", sorted(SETS))
def test_set_values_are_checked_before_anything_runs(name: str, tmp_path: Path) -> None:
    value, expected = SETS[name]
    code, _, err = run("run", TUPLES, "--dry-run", "--set", value, "--cache-dir", str(tmp_path / "c"),
                       "--out", str(tmp_path / "o"))
    assert code == expected, err
    if expected == 0:
        assert "dry run" in err
    else:
        compare_golden(err, GOLDEN / f"set_{name}.expected")


def test_graph_draws_the_optimized_graph(tmp_path: Path) -> None:
    out = tmp_path / "g.dot"
    code, _, err = run("graph", str(ROOT / "examples" / "preprocess.medas"), "-O2", "-o", str(out))
    assert code == 0, err
    text = out.read_text()
    assert "fused_spatial" in text and "fused_intensity" in text and "rotate(angle=10.0, p=0.5, in_plane=" in text
    code, _, err = run("graph", str(ROOT / "examples" / "preprocess.medas"), "-o", str(out))
    assert code == 0 and "fused_" not in out.read_text()  # without -O: the graph as written


def _documented_set_commands() -> list[tuple[str, dict[str, str]]]:
    """Every `medasc run examples/X.medas --set ...` command written in the examples' headers
    (a command continues over lines ending in a backslash)."""
    import shlex

    found = []
    for example in sorted((ROOT / "examples").glob("*.medas")):
        lines = [line.lstrip("#").strip() for line in example.read_text().splitlines() if line.startswith("#")]
        text = "\n".join(lines).replace("\\\n", " ")
        for line in text.splitlines():
            if "medasc run" in line and "--set" in line:
                words = shlex.split(line[line.index("medasc run"):])
                sets = dict(w.split("=", 1) for w, flag in zip(words[1:], words) if flag == "--set")
                found.append((example.name, sets))
    return found


@pytest.mark.parametrize(("example", "sets"), _documented_set_commands())
def test_the_full_settings_the_examples_document_check_clean(example: str, sets: dict[str, str]) -> None:
    from medasl.semantics.checker import check_source
    from medasl.source import SourceFile

    path = ROOT / "examples" / example
    result = check_source(SourceFile(str(path.relative_to(ROOT)), path.read_text()), overrides=sets)
    assert not result.diagnostics.has_errors, [d.message for d in result.diagnostics.errors]
    params = {n.id for g in result.graphs for n in g.nodes.values() if n.op == "param"}
    assert set(sets) <= params


def test_there_are_documented_settings() -> None:
    assert len(_documented_set_commands()) >= 5


def test_compile_takes_set_values_and_folds_them() -> None:
    code, out, err = run("compile", "--emit", "ir", "-O2", "--set", "crop=32", "--set", "sp=(3, 3, 3) mm", TUPLES)
    assert code == 0, err
    assert "size: (32, 32, 48)" in out and "spacing: (3.0, 3.0, 3.0)" in out  # inside the fused step
