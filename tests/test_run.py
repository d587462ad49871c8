"""`medasc run`: results equal the operators called directly, reruns are cached, and bad
input, bad options and unimplemented operators give diagnostics with the right exit code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("SimpleITK", reason="running needs the run extra (pip install -e '.[run]')")
pytest.importorskip("rich", reason="running needs the run extra (pip install -e '.[run]')")

import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402, N813

from medasl.lower.plan import OpValue  # noqa: E402
from medasl.ops import aug, io, pre  # noqa: E402
from medasl.runtime.cache import Cache  # noqa: E402
from medasl.runtime.tasks import case_number  # noqa: E402
from tests.conftest import ROOT  # noqa: E402
from tests.test_cli import run_text  # noqa: E402

PHANTOM = """import std.io, std.data, std.pre, std.aug
pipeline prep {
  cases = phantom(cases=4, size=(32, 32, 24), seed=5)
  folds = split(cases, val=0.25, seed=1)
  prepped = folds.train |> resample(spacing=(2.5, 2.5, 2.5) mm) |> window(level=40, width=400)
                        |> crop_or_pad((24, 24, 24)) |> rotate(angle=10 deg, p=1.0)
  written = write_nifti(prepped.image, "train/*_ct.nii.gz")
  written_labels = write_nifti(prepped.label, "train/*_seg.nii.gz")
}
"""

FOLDER = """import std.io, std.pre
pipeline bad {
  cases = folder("data", image="*_ct.nii.gz", label="*_seg.nii.gz") as Dataset<Pair<Image[3, CT], LabelMap[3, 2]>>
  prepped = cases |> resample(spacing=(3.0, 3.0, 3.0) mm)
  written = write_nifti(prepped.image, "out/*.nii.gz")
}
"""


def _computed(tmp_path: Path, pipeline: str) -> list[dict[str, object]]:
    """The `computed` events of the latest run log."""
    logs = sorted((tmp_path / "out" / pipeline / "logs").glob("run-*.jsonl"))
    events = [json.loads(line) for line in logs[-1].read_text().splitlines()]
    return [e for e in events if e["event"] == "computed"]


def _volume(path: Path) -> sitk.Image:
    return sitk.ReadImage(str(path))


# ----- results -------------------------------------------------------------------------


@pytest.mark.parametrize(("level", "tolerance", "label_band"), [("0", 1e-6, 0.0), ("2", 1e-5, 0.01)])
def test_results_equal_the_operators_called_directly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, level: str,
                                                     tolerance: float, label_band: float) -> None:
    """-O0 runs the operators as written; -O2 fuses crop_or_pad and rotate into one
    sampling (float32 rounding of the composed transform; a label may flip where a
    nearest-neighbour tie rounds the other way)."""
    monkeypatch.chdir(tmp_path)
    code, err = run_text(tmp_path, PHANTOM, f"-O{level}")
    assert code == 0, err
    from medasl.ops import data
    from medasl.runtime.executor import node_seed

    train = data.split(io.phantom(cases=4, size=(32, 32, 24), seed=5), val=0.25, seed=1).train
    assert len(train) == 3
    for case in train:
        x = case.value
        x = type(x)(pre.resample(x.input, (2.5, 2.5, 2.5)), pre.resample(x.target, (2.5, 2.5, 2.5)))
        x = type(x)(pre.window(x.input, 40, 400), x.target)
        x = type(x)(pre.crop_or_pad(x.input, (24, 24, 24)), pre.crop_or_pad(x.target, (24, 24, 24)))
        rng = np.random.default_rng([node_seed(0, "prepped"), case_number(case.id)])
        x, _ = aug.rotate(x, angle=10.0, p=1.0, rng=rng)
        written = _volume(tmp_path / "out" / "prep" / "train" / f"{case.id}_ct.nii.gz")
        np.testing.assert_allclose(sitk.GetArrayFromImage(written), x.input.array, rtol=0, atol=tolerance)
        np.testing.assert_allclose(written.GetSpacing(), x.input.spacing, rtol=1e-6)
        np.testing.assert_allclose(written.GetOrigin(), x.input.origin, atol=1e-4)
        labels = sitk.GetArrayFromImage(_volume(tmp_path / "out" / "prep" / "train" / f"{case.id}_seg.nii.gz"))
        assert np.mean(labels != x.target.array) <= label_band
        assert set(np.unique(labels)) <= {0, 1}


def test_a_second_run_computes_nothing(tmp_path: Path) -> None:
    assert run_text(tmp_path, PHANTOM)[0] == 0
    assert _computed(tmp_path, "prep")
    code, err = run_text(tmp_path, PHANTOM)
    assert code == 0, err
    assert _computed(tmp_path, "prep") == []
    assert "cached" in err


def test_a_deleted_output_file_is_written_again(tmp_path: Path) -> None:
    assert run_text(tmp_path, PHANTOM)[0] == 0
    victim = next((tmp_path / "out" / "prep" / "train").glob("*_ct.nii.gz"))
    victim.unlink()
    assert run_text(tmp_path, PHANTOM)[0] == 0
    assert victim.exists()
    assert [e["step"] for e in _computed(tmp_path, "prep")] == ["written"]


def test_workers_give_the_same_results(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    assert run_text(one, PHANTOM, "--workers", "1")[0] == 0
    code, err = run_text(two, PHANTOM, "--workers", "2")
    assert code == 0, err
    # Writers' keys hold their (different) output folders; every other result is the same.
    digests = [{e.digest for e in Cache(d / "cache" / "results").entries() if not e.op.startswith("write_")}
               for d in (one, two)]
    assert digests[0] == digests[1] and digests[0]
    for path in (one / "out" / "prep" / "train").glob("*.nii.gz"):
        twin = two / "out" / "prep" / "train" / path.name
        np.testing.assert_array_equal(sitk.GetArrayFromImage(_volume(path)), sitk.GetArrayFromImage(_volume(twin)))


def test_dry_run_computes_nothing(tmp_path: Path) -> None:
    code, err = run_text(tmp_path, PHANTOM, "--dry-run")
    assert code == 0, err
    assert "new" in err and "dry run" in err
    assert Cache(tmp_path / "cache" / "results").entries() == []
    assert not (tmp_path / "out" / "prep" / "train").exists()


def test_single_image_pipeline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    case = io.phantom(cases=1, size=(16, 16, 8))[0]
    io.write_nifti(case.value.input, tmp_path / "ct.nii.gz")
    text = (ROOT / "tests" / "test_cli.py").read_text().split('GOOD = """', 1)[1].split('"""', 1)[0]
    code, err = run_text(tmp_path, text)
    assert code == 0, err
    written = sitk.GetArrayFromImage(_volume(tmp_path / "out" / "p" / "out.nii.gz"))
    expected = pre.rescale(pre.window(io.nifti(tmp_path / "ct.nii.gz"), 40, 400), 0, 1).array
    np.testing.assert_allclose(written, expected, atol=1e-6)
    io.write_nifti(io.phantom(cases=2, size=(16, 16, 8))[1].value.input, tmp_path / "ct.nii.gz")
    assert run_text(tmp_path, text)[0] == 0
    assert {e["step"] for e in _computed(tmp_path, "p")} == {"ct", "window", "x", "write_nifti"}


# ----- bad data --------------------------------------------------------------------------


def _folder_data(tmp_path: Path, cases: int = 3) -> None:
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    for case in io.phantom(cases=cases, size=(16, 16, 8), seed=1):
        io.write_nifti(case.value.input, data / f"{case.id}_ct.nii.gz")
        io.write_nifti(case.value.target, data / f"{case.id}_seg.nii.gz")


def test_missing_folder_names_it_and_the_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, err = run_text(tmp_path, FOLDER)
    assert code == 1
    assert "error[E1001]" in err and "data" in err
    assert "p.medas:3:" in err and "Traceback" not in err


def test_truncated_file_fails_its_case_and_keeps_the_others(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    _folder_data(tmp_path)
    broken = tmp_path / "data" / "case001_ct.nii.gz"
    broken.write_bytes(broken.read_bytes()[:2000])
    code, err = run_text(tmp_path, FOLDER, "--workers", "1")
    assert code == 1
    assert "error[E1002]" in err and "case001_ct.nii.gz" in err and "on case case001" in err
    assert "p.medas:3:" in err and "Traceback" not in err
    assert "resumes" in err
    kept = {e.node_id for e in Cache(tmp_path / "cache" / "results").entries()}
    assert "bad/prepped#case000" in kept  # reading is fused into `prepped`: one result per case
    # Fixing the file resumes: the good cases are not read again.
    _folder_data(tmp_path)
    assert run_text(tmp_path, FOLDER)[0] == 0
    read_again = {e["case"] for e in _computed(tmp_path, "bad") if e["step"] == "prepped"}
    assert read_again == {"case001"}


def test_every_bad_case_of_a_step_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    _folder_data(tmp_path, cases=4)
    for case in ("case000", "case002"):
        (tmp_path / "data" / f"{case}_ct.nii.gz").write_bytes(b"not an image")
    code, err = run_text(tmp_path, FOLDER)
    assert code == 1
    assert err.count("error[E1002]") == 2 and "on case case000" in err and "on case case002" in err


def test_label_on_another_grid_is_e1007(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    _folder_data(tmp_path, cases=2)
    label = io.nifti(tmp_path / "data" / "case000_seg.nii.gz")
    label.spacing = (3.0, 3.0, 3.0)
    io.write_nifti(label, tmp_path / "data" / "case000_seg.nii.gz")
    code, err = run_text(tmp_path, FOLDER)
    assert code == 1 and "error[E1007]" in err and "case000" in err


def test_nan_values_are_e1008(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    _folder_data(tmp_path, cases=2)
    image = io.nifti(tmp_path / "data" / "case001_ct.nii.gz")
    array = image.array.astype(np.float32)
    array[2, 3, 4] = np.nan
    io.write_nifti(image.with_array(array), tmp_path / "data" / "case001_ct.nii.gz")
    code, err = run_text(tmp_path, FOLDER)
    assert code == 1 and "error[E1008]" in err and "case001_ct.nii.gz" in err


# ----- refusals before anything runs ------------------------------------------------------


def test_unimplemented_operators_refuse_to_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from medasl.runtime import registry

    monkeypatch.delitem(registry._AREAS, "parallel_coordinates")  # every std operator runs: as one not written yet
    text = PHANTOM.replace("  written = write", "  score = dice(prepped.label, prepped.label)\n"
                           "  show parallel_coordinates(\"study.json\")\n  written = write")
    text = text.replace("import std.io,", "import std.viz, std.metrics, std.io,")
    code, err = run_text(tmp_path, text)
    assert code == 1
    assert "error[E2001]" in err and "`parallel_coordinates`" in err
    assert Cache(tmp_path / "cache" / "results").entries() == []


def test_missing_gpu_is_e2003(tmp_path: Path) -> None:
    try:
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has a GPU")
    except ImportError:
        pass
    code, err = run_text(tmp_path, PHANTOM, "--device", "cuda:0")
    assert code == 1 and "error[E2003]" in err


@pytest.mark.parametrize("args", [("--device", "gpu"), ("--set", "nothing=1"), ("--set", "noequals"),
                                  ("--force", "no_such_step"), ("--pipeline", "other")])
def test_command_line_misuse_exits_2(tmp_path: Path, args: tuple[str, ...]) -> None:
    code, err = run_text(tmp_path, PHANTOM, *args)
    assert code == 2, err


def test_a_file_with_errors_runs_nothing(tmp_path: Path) -> None:
    code, err = run_text(tmp_path, PHANTOM.replace("window(level=40", "window(levl=40"))
    assert code == 1 and "error[" in err
    assert not (tmp_path / "cache" / "results").exists() or Cache(tmp_path / "cache" / "results").entries() == []


# ----- lowering: parameters and --set ------------------------------------------------------

SEARCHED = """import std.io, std.pre
pipeline p {
  param level: float = 40 search uniform(0, 100)
  param width: int = 400
  param side: int = 32
  ct = nifti("ct.nii.gz") as Image[3, CT]
  x = ct |> window(level=level, width=width) |> crop_or_pad((side, side, 16))
}
"""


def _checked(text: str, overrides: dict[str, str] | None = None) -> tuple[list[object], object]:
    from medasl.diagnostics import Diagnostics
    from medasl.semantics.checker import check_source
    from medasl.source import SourceFile

    diags = Diagnostics()
    result = check_source(SourceFile("p.medas", text), diags, overrides)
    return result.graphs, diags


def _plan(text: str, overrides: dict[str, str] | None = None, level: int = 0) -> object:
    """The plan `medasc run -O<level> --set ...` runs."""
    from medasl.runtime.session import plans

    graphs, diags = _checked(text, overrides)
    assert not diags.has_errors, diags.items  # type: ignore[attr-defined]
    return plans(graphs, overrides or {}, level)[0]  # type: ignore[arg-type]


def test_parameters_are_folded_into_their_uses() -> None:
    plan = _plan(SEARCHED)
    assert "level" not in plan.steps
    assert plan.steps["window"].params == {"level": 40.0, "width": 400}
    assert plan.steps["window"].inputs == {"x": "ct"}
    assert plan.steps["x"].params == {"size": (32, 32, 16)}  # a parameter inside a tuple
    plan = _plan(SEARCHED, {"level": "55", "width": "300", "side": "48"})
    assert plan.steps["window"].params == {"level": 55.0, "width": 300}
    assert plan.steps["x"].params == {"size": (48, 48, 16)}
    assert plan.params == {"level": 55.0, "width": 300, "side": 48}


@pytest.mark.parametrize(("override", "code"), [({"width": "3.5"}, "E0201"), ({"width": "wide"}, "E0101"),
                                                ({"width": "(1,"}, "E0001"), ({"side": "-4"}, "E0241"),
                                                ({"level": "500"}, "E0502")])
def test_overrides_the_checker_refuses_are_diagnostics(override: dict[str, str], code: str) -> None:
    _, diags = _checked(SEARCHED, override)
    assert [d.code for d in diags.errors] == [code], diags.items  # type: ignore[attr-defined]


def test_an_override_of_no_parameter_is_a_usage_error() -> None:
    from medasl.runtime.session import UsageProblem

    with pytest.raises(UsageProblem, match="no pipeline has a parameter `depth`"):
        _plan(SEARCHED, {"depth": "1"})


OVERRIDABLE = """import std.io, std.pre, std.losses
pipeline p {
  param n: int = 1
  param f: float = 1.0
  param b: bool = false
  param s: str = "a"
  param sp = (1.0, 1.0, 1.0) mm
  param loss = dice_ce
  ct = nifti(s) as Image[3, CT]
  x = ct |> window(level=f, width=400) |> crop_or_pad((n, n, n)) |> resample(spacing=sp)
}
"""


@pytest.mark.parametrize(("name", "text", "value"), [
    ("n", "3", 3), ("f", "-2.5", -2.5), ("f", "1e-3", 1e-3), ("f", "2", 2), ("b", "true", True), ("s", '"a b"', "a b"), ("s", "data/x y.nii.gz", "data/x y.nii.gz"),
    ("loss", "dice_loss", OpValue("dice_loss")), ("loss", "@dice_loss", OpValue("dice_loss")),
    ("sp", "(2, 2.5, 3) mm", (2.0, 2.5, 3.0)), ("sp", "(0.2, 0.2, 0.3) cm", (2.0, 2.0, 3.0)),
])
def test_set_values_are_medas_expressions(name: str, text: str, value: object) -> None:
    plan = _plan(OVERRIDABLE, {name: text})
    assert plan.params[name] == pytest.approx(value) if isinstance(value, tuple) else plan.params[name] == value


CLASSIFIED = """import std.io, std.data, std.pre
pipeline cls {
  cases = classified("imgs", "*.png", labels="labels.csv", column="finding") as Dataset<Pair<Image[2, XR], Class[2]>>
  folds = split(cases, val=0.25, seed=3, stratify=true)
  train = folds.train |> rescale(0, 1)
  saved = write_png(train.image, "train/*.png")
}
"""


def test_a_stratified_split_reads_classes_from_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import csv

    from medasl.ops import data

    monkeypatch.chdir(tmp_path)
    (tmp_path / "imgs").mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(20):
        sitk.WriteImage(sitk.GetImageFromArray((rng.random((8, 8)) * 255).astype(np.uint8)), f"imgs/x{i:02d}.png")
        rows.append((f"x{i:02d}", "pneumonia" if i % 4 == 0 else "normal"))
    with open("labels.csv", "w", newline="") as f:
        csv.writer(f).writerows([("id", "finding"), *rows])
    code, err = run_text(tmp_path, CLASSIFIED, "--dry-run")
    assert code == 0 and "unknown" in err  # the classes are not read before the run
    code, err = run_text(tmp_path, CLASSIFIED)
    assert code == 0, err
    expected = data.split(io.classified("imgs", "*.png", "labels.csv", "finding"), val=0.25, seed=3, stratify=True)
    written = sorted(p.name[: -len(".png")] for p in (tmp_path / "out" / "cls" / "train").glob("*.png"))
    assert written == [c.id for c in expected.train]


SINGLE_FOLD = """import std.io, std.data
pipeline cv {
  param k: int = 1
  cases = phantom(cases=3)
  folds = fold(kfold(cases, k=k), 0)
}
"""


def test_a_single_fold_is_announced() -> None:
    from medasl.runtime.session import notices

    (note,) = notices(_plan(SINGLE_FOLD), "cpu")  # type: ignore[arg-type]
    assert note.startswith("note: `kfold` (p.medas:5)") and "training and validation are the same cases" in note
    assert notices(_plan(SINGLE_FOLD, {"k": "3"}), "cpu") == []  # type: ignore[arg-type]
