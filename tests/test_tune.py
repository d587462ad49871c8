"""`medasc tune` (issue 11): a small study on generated phantoms, seconds per trial.

One study of five trials (annealing, whose proposals depend on earlier results) is run
once for the module; the tests read its study.json, run logs and report. The resume
test kills a second run of the same study with SIGKILL during its third trial, runs the
same command again and compares the result with the uninterrupted study.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("hyperopt")
pytest.importorskip("torch")

from click.testing import CliRunner  # noqa: E402

from medasl import cli  # noqa: E402
from medasl.runtime.cache import Cache  # noqa: E402
from medasl.runtime.tasks import load_ref  # noqa: E402
from medasl.runtime.values import Measured  # noqa: E402
from tests.conftest import ROOT  # noqa: E402

STUDY = """\
import std.io, std.pre, std.nets, std.losses, std.train, std.metrics, std.post

pipeline tiny {
  param lr = 1e-2 search loguniform(1e-3, 1e-1)
  param window: int = 32 search choice(24, 32)
  param epochs: int = 2 search int(1, 3)
  param net = unet3d(in_channels=1, classes=2, channels=(4, 8, 16, 32, 64))
      search choice(unet3d(in_channels=1, classes=2, channels=(4, 8, 16, 32, 64)),
                    segresnet(in_channels=1, classes=2, filters=8))
  cases = phantom(cases=4, size=(32, 32, 16), seed=3) |> rescale(0, 1)
  fit = train(net, cases, loss=dice_ce, optimizer=adam(lr=lr), epochs=epochs, batch=2, validate=cases, metric=dice)
  pred = infer(fit, cases.image, window=(window, window, 16)) |> argmax
  score = dice(pred, cases.label) maximize
}
"""
TRIALS = "5"
ARGS = ("--trials", TRIALS, "--algo", "anneal", "--seed", "0")
SHARED_STEPS = {"phantom", "cases"}  # upstream of every searched parameter (`cases`: the rescale)


def tune(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli.main, ["tune", *args])
    return result.exit_code, result.stderr


def study_of(out: Path) -> dict[str, object]:
    return json.loads((out / "tiny" / "study.json").read_text())


def run_logs(folder: Path) -> list[list[dict[str, object]]]:
    return [[json.loads(line) for line in log.read_text().splitlines()]
            for log in sorted(folder.glob("tiny/logs/run-*.jsonl"))]


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, object], str]:
    """(file, study folder, study.json, output) of one uninterrupted study."""
    root = tmp_path_factory.mktemp("study")
    file = root / "tiny.medas"
    file.write_text(STUDY)
    code, err = tune(str(file), *ARGS, "--cache-dir", str(root / "cache"), "--out", str(root / "out"))
    assert code == 0, err
    return file, root / "out" / "tiny", study_of(root / "out"), err


def test_a_study_runs_its_trials(study: tuple[Path, Path, dict[str, object], str]) -> None:
    _, folder, data, err = study
    trials = data["trials"]
    assert [t["number"] for t in trials] == [1, 2, 3, 4, 5]
    assert all(t["status"] in ("ok", "failed") for t in trials)
    assert trials[0]["sets"] == {"lr": "0.01", "window": "32", "epochs": "2",
                                 "net": "unet3d(in_channels=1, classes=2, channels=(4, 8, 16, 32, 64))"}  # the defaults
    ok = [t for t in trials if t["status"] == "ok"]
    assert len(ok) >= 3
    for t in ok:
        assert isinstance(t["objective"], float) and 0.0 <= t["objective"] <= 1.0
        epochs = t["history"]["fit"]
        assert [r["epoch"] for r in epochs] == list(range(1, int(t["sets"]["epochs"]) + 1))
        assert all("loss" in r and "val_dice" in r for r in epochs)
        assert t["seconds"] > 0 and (folder / t["folder"] / "tiny" / "run.txt").is_file()
    best = max(ok, key=lambda t: t["objective"])
    assert data["best"] == best["number"]
    assert f"best: trial {best['number']}" in err and "reproduce it with:\n  medasc run " in err
    report = (folder / "tune.html").read_text()
    assert "medasc run " in report and f"Best: trial {best['number']}" in report
    assert all((folder / "figures" / f"{name}.png").stat().st_size > 2000
               for name in ("optimization_history", "parallel_coordinates", "param_importance"))


def test_a_refused_combination_is_a_failed_trial_with_its_code(study: tuple[Path, Path, dict[str, object], str]) -> None:
    """window 24 with the U-Net (down-sampling 16) is refused by the checker (E0230);
    with SegResNet (8) it runs. The study goes on after it."""
    _, folder, data, err = study
    failed = [t for t in data["trials"] if t["status"] == "failed"]
    assert failed, "the seed was chosen so that the study draws window 24 with the U-Net"
    for t in failed:
        assert t["code"] == "E0230" and "not divisible by 16" in t["message"]
        assert t["sets"]["window"] == "24" and t["sets"]["net"].startswith("unet3d")
        assert t["objective"] is None and t["computed"] == 0
    assert min(t["number"] for t in failed) < int(TRIALS)  # trials after it ran
    assert "failed, error[E0230]" in err
    assert any(t["sets"]["window"] == "24" and t["status"] == "ok" for t in data["trials"]), \
        "window 24 runs with SegResNet (the checker sees each trial's own network)"


def test_shared_steps_are_computed_once_for_the_study(study: tuple[Path, Path, dict[str, object], str]) -> None:
    file, folder, data, _ = study
    computed: dict[str, int] = {}
    for trial in data["trials"]:
        for log in run_logs(folder / trial["folder"]):
            for event in log:
                if event["event"] == "computed":
                    computed[event["step"]] = computed.get(event["step"], 0) + 1
    assert computed["cases"] == 4, "the 4 rescaled phantoms: computed in the first trial only"
    assert "phantom" not in computed  # computed within `cases`' per-case chain, never stored alone
    assert computed["fit"] == sum(t["status"] == "ok" for t in data["trials"])  # every trial trains its own
    code, err = tune(str(file), *ARGS, "--out", str(folder.parent), "--dry-run")
    assert code == 0, err
    shared = err.split("steps shared by all trials")[1].split("steps each trial recomputes")[0]
    each = err.split("steps each trial recomputes")[1]
    assert "cases (rescale" in shared and "fit (train" not in shared
    assert "fit (train, line 11): reads epochs, lr, net" in each and "infer" in each
    assert "loguniform(0.001, 0.1)   (default 0.01: trial 1)" in err and "int(1, 3)" in err
    assert "trials so far: 5 finished" in err
    assert "unet3d (unet3d, line 7): reads net" in each, "the default network is the value of one choice"


def test_the_best_trial_is_reproduced_by_its_command_line(study: tuple[Path, Path, dict[str, object], str],
                                                          tmp_path: Path) -> None:
    """The printed `medasc run ... --set` line, on an empty cache, gives the same objective."""
    file, _, data, err = study
    line = err.split("reproduce it with:\n  ")[1].splitlines()[0]
    import shlex

    words = shlex.split(line)
    assert words[:3] == ["medasc", "run", str(file)]
    result = CliRunner().invoke(cli.main, [*words[1:], "--cache-dir", str(tmp_path / "cache"),
                                           "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.stderr
    (log,) = run_logs(tmp_path / "out")
    (entry,) = [e["entry"] for e in log if e["event"] == "computed" and e["step"] == "score"]
    measured = load_ref(Cache(tmp_path / "cache" / "results"), str(entry))
    assert isinstance(measured, Measured)
    best = next(t for t in data["trials"] if t["number"] == data["best"])
    assert measured.value == best["objective"]


def test_a_killed_study_resumes_with_the_same_trials(study: tuple[Path, Path, dict[str, object], str],
                                                    tmp_path: Path) -> None:
    """SIGKILL while trial 3 runs; the same command again ends with every trial, runs no
    finished trial again, and proposes what the uninterrupted study proposed."""
    file, _, uninterrupted, _ = study
    out, cache = tmp_path / "out", tmp_path / "cache"
    command = [sys.executable, "-m", "medasl.cli", "tune", str(file), *ARGS, "--cache-dir", str(cache),
               "--out", str(out)]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            path = out / "tiny" / "study.json"
            if path.exists() and any(t["number"] == 3 and t["status"] == "running" for t in study_of(out)["trials"]):
                break
            time.sleep(0.05)
        else:
            pytest.fail("trial 3 never started")
        time.sleep(1.0)  # into its check, plan or training
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
    killed = study_of(out)
    assert [t["status"] for t in killed["trials"] if t["number"] <= 3][-1] == "running"
    before = {t["number"]: t for t in killed["trials"] if t["status"] in ("ok", "failed")}
    assert set(before) == {1, 2}
    logs_before = {n: len(run_logs(out / "tiny" / t["folder"])) for n, t in before.items()}
    code, err = tune(str(file), *ARGS, "--cache-dir", str(cache), "--out", str(out))
    assert code == 0, err
    resumed = study_of(out)
    assert [t["number"] for t in resumed["trials"]] == [1, 2, 3, 4, 5]
    assert all(t["status"] in ("ok", "failed") for t in resumed["trials"])
    for number, record in before.items():
        assert resumed["trials"][number - 1] == record, "a finished trial is kept as it was"
        assert len(run_logs(out / "tiny" / record["folder"])) == logs_before[number], "and is not run again"
    assert "trial 1/5" not in err and "trial 2/5" not in err and "trial 3/5" in err
    assert [t["sets"] for t in resumed["trials"]] == [t["sets"] for t in uninterrupted["trials"]]
    assert [t["objective"] for t in resumed["trials"]] == [t["objective"] for t in uninterrupted["trials"]]


def test_resuming_with_other_settings_is_refused(study: tuple[Path, Path, dict[str, object], str]) -> None:
    file, folder, _, _ = study
    code, err = tune(str(file), "--trials", TRIALS, "--algo", "tpe", "--out", str(folder.parent), "--dry-run")
    assert code == 1 and "error[E2061]" in err and "algo" in err and "--algo anneal" in err


def test_a_pipeline_without_objective_or_search_is_refused(tmp_path: Path) -> None:
    file = tmp_path / "p.medas"
    file.write_text(STUDY.replace(" maximize", ""))
    code, err = tune(str(file), "--dry-run", "--out", str(tmp_path / "out"))
    assert code == 1 and "error[E2062]" in err
    file.write_text(STUDY)
    sets = ["--set", "lr=0.01", "--set", "window=32", "--set", "epochs=1", "--set", "net=segresnet(filters=8)"]
    code, err = tune(str(file), "--dry-run", "--out", str(tmp_path / "out"), *sets)
    assert code == 1 and "error[E2063]" in err


def test_parallel_trials_give_the_same_study(study: tuple[Path, Path, dict[str, object], str],
                                             tmp_path: Path) -> None:
    """Two worker processes, an empty cache: the same trials, values and objectives as
    one trial at a time (proposals come in rounds of 4 whatever --parallel is)."""
    file, _, sequential, _ = study
    code, err = tune(str(file), *ARGS, "--parallel", "2", "--cache-dir", str(tmp_path / "cache"),
                     "--out", str(tmp_path / "out"))
    assert code == 0, err
    parallel = study_of(tmp_path / "out")
    assert parallel["batch"] == sequential["batch"] == 4
    keep = ("number", "status", "sets", "objective", "code")
    assert [{k: t[k] for k in keep} for t in parallel["trials"]] == [{k: t[k] for k in keep}
                                                                     for t in sequential["trials"]]
    assert "trial 2 -> failed, error[E0230]" in err  # results name their trial: they come in any order


def test_early_stopping_by_the_median_rule(tmp_path: Path) -> None:
    """Off by default; with --early-stop a training whose best validation Dice is below
    the median of at least 3 earlier trials at that epoch stops, and says so."""
    file = tmp_path / "tiny.medas"
    file.write_text(STUDY)
    args = ["--trials", "8", "--algo", "rand", "--batch", "1", "--cache-dir", str(tmp_path / "cache")]
    code, err = tune(str(file), *args, "--early-stop", "--out", str(tmp_path / "out"))
    assert code == 0, err
    trials = study_of(tmp_path / "out")["trials"]
    stopped = [t for t in trials if t["status"] == "stopped early"]
    assert stopped and all(t["number"] > 4 for t in stopped)  # 3 earlier trials with a history at least
    for t in stopped:
        assert "is worse than the median of" in t["message"] and t["objective"] is None
        last = t["history"]["fit"][-1]
        assert last["epoch"] < int(t["sets"]["epochs"]), "never stopped at its last epoch"
    assert "stopped early: `fit` stopped early in epoch" in err
    code, err = tune(str(file), *args, "--out", str(tmp_path / "plain"))
    assert code == 0, err
    assert all(t["status"] in ("ok", "failed") for t in study_of(tmp_path / "plain")["trials"])


def test_a_timeout_starts_no_new_trial_and_the_same_command_goes_on(tmp_path: Path) -> None:
    """`--timeout T`: no trial starts once T seconds have passed (here at once); the study
    is saved and running it again without the timeout runs the trials it did not start."""
    file = tmp_path / "tiny.medas"
    file.write_text(STUDY)
    args = ("--trials", "1", "--algo", "rand", "--seed", "0", "--cache-dir", str(tmp_path / "cache"),
            "--out", str(tmp_path / "out"))
    code, err = tune(str(file), *args, "--timeout", "1e-9")
    assert code == 0, err
    assert "timeout" in err and "no new trial is started" in err, err
    assert not [t for t in study_of(tmp_path / "out")["trials"] if t["status"] == "ok"]
    code, err = tune(str(file), *args)
    assert code == 0, err
    assert [t["status"] for t in study_of(tmp_path / "out")["trials"]] == ["ok"]
