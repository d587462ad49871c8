"""The output-path rule: writers and reports write inside --out unless the run allows
otherwise (E2011), case ids from the data become plain file names, and two outputs that
would land on one file are an error (E2012 at run time; E0260 and E0261 at check time
are golden tests 100-103)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest.importorskip("SimpleITK", reason="running needs the run extra (pip install -e '.[run]')")
pytest.importorskip("rich", reason="running needs the run extra (pip install -e '.[run]')")

from medasl.ops import io  # noqa: E402
from medasl.runtime import outputs  # noqa: E402
from medasl.runtime.cache import Cache  # noqa: E402
from tests.test_cli import run_text  # noqa: E402

PHANTOM = """import std.io, std.report
pipeline p {{
  cases = phantom(cases=2, size=(16, 16, 8), seed=5)
  written = write_nifti(cases.image, {path})
}}
"""

TABLE = """import std.io
pipeline p {
  cases = datalist("data/cases.csv") as Dataset<Pair<Image[3, CT], LabelMap[3, 2]>>
  written = write_nifti(cases.image, "ct/*.nii.gz")
}
"""


def _run(tmp_path: Path, text: str, *args: str) -> tuple[int, str]:
    return run_text(tmp_path, text, "--workers", "1", *args)


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and "logs" not in p.parts)


def _nothing_ran(tmp_path: Path) -> bool:
    return Cache(tmp_path / "cache" / "results").entries() == []


@pytest.mark.parametrize("path", ['"../escaped/*.nii.gz"', '"ct/../../../escaped/*.nii.gz"', '"{abs}/*.nii.gz"'])
def test_a_path_leaving_out_is_refused_before_anything_runs(tmp_path: Path, path: str) -> None:
    elsewhere = tmp_path / "elsewhere"
    code, err = _run(tmp_path, PHANTOM.format(path=path.format(abs=elsewhere)))
    assert code == 1, err
    assert "error[E2011]" in err and "--allow-outside-out" in err and "Traceback" not in err
    assert _nothing_ran(tmp_path)
    assert not elsewhere.exists() and not (tmp_path / "escaped").exists() and not (tmp_path / "out" / "escaped").exists()


def test_allow_outside_out_writes_there(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    code, err = _run(tmp_path, PHANTOM.format(path=f'"{elsewhere}/*.nii.gz"'), "--allow-outside-out")
    assert code == 0, err
    assert _files(elsewhere) == ["case000.nii.gz", "case001.nii.gz"]


def test_a_report_leaving_out_is_refused(tmp_path: Path) -> None:
    text = PHANTOM.format(path='"ct/*.nii.gz"').replace("}\n", '  report html("../../report.html")\n}\n')
    code, err = _run(tmp_path, text)
    assert code == 1 and "error[E2011]" in err, err
    assert not (tmp_path / "report.html").exists() and _nothing_ran(tmp_path)


def test_a_link_inside_out_that_points_outside_is_refused(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "out" / "p").mkdir(parents=True)
    os.symlink(elsewhere, tmp_path / "out" / "p" / "ct")
    code, err = _run(tmp_path, PHANTOM.format(path='"ct/*.nii.gz"'))
    assert code == 1, err
    assert "error[E2011]" in err and "symbolic link" in err
    assert list(elsewhere.iterdir()) == []
    assert _run(tmp_path, PHANTOM.format(path='"ct/*.nii.gz"'), "--allow-outside-out")[0] == 0
    assert _files(elsewhere) == ["case000.nii.gz", "case001.nii.gz"]


def _table(tmp_path: Path, ids: list[str]) -> None:
    data = tmp_path / "data"
    case = io.phantom(cases=1, size=(8, 8, 4))[0].value
    io.write_nifti(case.input, data / "ct.nii.gz")
    io.write_nifti(case.target, data / "seg.nii.gz")
    rows = "".join(f'"{i}",ct.nii.gz,seg.nii.gz\n' for i in ids)
    (data / "cases.csv").write_text("id,image,label\n" + rows)


def test_case_ids_from_the_data_cannot_choose_the_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    _table(tmp_path, ["../../../pwned", "/tmp/absolute", "sub dir/x", ".hidden", "plain-01"])
    code, err = _run(tmp_path, TABLE)
    assert code == 0, err
    assert _files(tmp_path / "out") == sorted(f"p/ct/{name}.nii.gz" for name in
                                              ["_._.._.._pwned", "_tmp_absolute", "sub_dir_x", "_hidden", "plain-01"])
    assert not (tmp_path.parent / "pwned.nii.gz").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "data", "out", "p.medas"]


def test_two_case_ids_on_one_file_name_are_e2012(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    _table(tmp_path, ["a/b", "a_b"])
    code, err = _run(tmp_path, TABLE)
    assert code == 1, err
    assert "error[E2012]" in err and "a/b" in err and "a_b" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "p" / "ct").exists()


def test_a_path_from_set_that_collects_every_case_is_e2012(tmp_path: Path) -> None:
    text = ('import std.io\npipeline p {\n  param dest = "ct/*.nii.gz"\n'
            '  cases = phantom(cases=2, size=(16, 16, 8), seed=5)\n  written = write_nifti(cases.image, dest)\n'
            '  labels = write_nifti(cases.label, "labels/*.nii.gz")\n}\n')
    assert _run(tmp_path, text)[0] == 0
    code, err = _run(tmp_path, text, "--set", "dest=all.nii.gz")
    assert code == 1 and "error[E2012]" in err and "every case" in err, err
    code, err = _run(tmp_path, text, "--set", "dest=labels/*")
    assert code == 1 and "error[E2012]" in err and "both write" in err, err


def test_case_file_names() -> None:
    assert outputs.case_file_name("LIDC-IDRI-0001") == "LIDC-IDRI-0001"
    assert outputs.case_file_name("1.3.6.1.4.1.14519") == "1.3.6.1.4.1.14519"
    assert outputs.case_file_name("..") == "_."
    assert outputs.case_file_name("a\\b\x00c") == "a_b_c"
    assert outputs.case_file_name("") == "_"
    assert outputs.case_file_name("=HYPERLINK(x)") == "_HYPERLINK_x_"


def test_dataset_writers_called_directly_sanitize_case_ids(tmp_path: Path) -> None:
    from medasl.runtime.values import Case

    volume = io.phantom(cases=1, size=(8, 8, 4))[0].value.input
    written = io.write_nifti([Case("../x", volume)], tmp_path / "out" / "*.nii.gz")
    assert written == [tmp_path / "out" / "_._x.nii.gz"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_shown_figures_of_hostile_case_ids_stay_in_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    _table(tmp_path, ["../../../pwned", "plain-01"])
    text = TABLE.replace("import std.io", "import std.io, std.viz").replace(
        "}\n", "  show overlay(cases.image, cases.label)\n}\n")
    code, err = _run(tmp_path, text)
    assert code == 0, err
    figures = sorted(p.name for p in (tmp_path / "out" / "p" / "figures").iterdir())
    assert figures == ["overlay-_._.._.._pwned.png", "overlay-plain-01.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "data", "out", "p.medas"]
