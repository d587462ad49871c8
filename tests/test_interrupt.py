"""Interrupting `medasc run`: Ctrl-C during a training stops it at the next batch, keeps
the finished epochs, says how to resume and exits 130; the same command then continues
to the weights of an uninterrupted run, and `--dry-run` says from which epoch. A second
Ctrl-C exits at once without a native crash. Workers (`--workers 2`) die with their run,
even when it is killed with `kill -9`.

Every run is a real `python -m medasl.cli run` process in a session of its own, so that
a signal sent to its process group reaches it (and its workers) as a terminal's Ctrl-C
would. The tests wait for what a run prints or starts, never for a fixed time.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="training needs the run extra (pip install -e '.[run]')")
pytest.importorskip("monai", reason="training needs the run extra (pip install -e '.[run]')")

from medasl.ops import train as training  # noqa: E402
from medasl.runtime.cache import Cache, CacheKey  # noqa: E402
from medasl.runtime.errors import Interrupted  # noqa: E402
from medasl.runtime.tasks import CacheCheckpoints  # noqa: E402
from medasl.runtime.values import OperatorRef  # noqa: E402
from tests.test_ops_train import Memory, _net, _weights, cases  # noqa: E402, F401 (cases: a fixture)
from tests.test_run_models import SMALL, _events, _trained_outputs  # noqa: E402

ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
EPOCHS = 10
CRASHES = ("Fatal Python error", "core dumped", "Aborted", "terminate called", "Traceback")

# One batch of a few seconds on a CPU: a second Ctrl-C comes while the first still waits for it.
SLOW_BATCHES = """import std.io, std.pre, std.nets, std.losses, std.train
pipeline slow {
  cases = phantom(cases=4, size=(64, 64, 48), seed=2)
  ready = cases |> window(level=40, width=400) |> rescale(0, 1)
  net = unet3d(in_channels=1, classes=2, channels=(16, 32, 64, 128, 256), res_units=2)
  fit = train(net, ready, loss=dice_ce, epochs=50, batch=4)
}
"""

# Per-case work for two worker processes: a few seconds per case.
PER_CASE = """import std.io, std.pre
pipeline prep {
  cases = phantom(cases=30, size=(64, 64, 48), seed=3)
  done = cases |> resample(spacing=(1.0, 1.0, 1.0) mm) |> window(level=40, width=400)
  saved = write_nifti(done.image, "x/*_ct.nii.gz")
}
"""


# ----- helpers -------------------------------------------------------------------------


def _args(file: Path, cache: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "medasl.cli", "run", str(file), "--cache-dir", str(cache), "--out", str(out),
            *extra]


def _medasc(file: Path, cache: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(_args(file, cache, out, *extra), capture_output=True, text=True, env=ENV, timeout=600)
    assert done.returncode == 0, done.stderr
    return done


def _start(file: Path, cache: Path, out: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(_args(file, cache, out, *extra), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env=ENV, start_new_session=True)


def _read_until(process: subprocess.Popen[str], text: str) -> str:
    """What the run printed up to the first line containing `text` (stderr, line by line)."""
    assert process.stderr is not None
    seen = []
    for line in process.stderr:
        seen.append(line)
        if text in line:
            return "".join(seen)
    process.wait(timeout=60)
    pytest.fail(f"the run ended (exit {process.returncode}) before printing {text!r}:\n{''.join(seen)}")


def _ctrl_c(process: subprocess.Popen[str]) -> None:
    """SIGINT to the run's process group, as a terminal sends it (and to its workers)."""
    with contextlib.suppress(ProcessLookupError):  # it may have exited already
        os.killpg(process.pid, signal.SIGINT)


def _epochs(out: Path, pipeline: str) -> list[int]:
    """The epochs the latest run logged."""
    return [int(e["epoch"]) for e in _events(out, pipeline)[-1] if e.get("event") == "epoch"]  # type: ignore[call-overload]


def _children(pid: int) -> set[int]:
    """The live child processes of `pid` (from /proc; zombies count as gone)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _workers_of(process: subprocess.Popen[str], out: Path) -> set[int]:
    """Wait until the run's two worker processes are at work (a first case is computed);
    their pids."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        workers = {pid for pid in _children(process.pid)
                   if "spawn_main" in Path(f"/proc/{pid}/cmdline").read_text(errors="replace")}
        logs = _events(out, "prep") if (out / "prep" / "logs").is_dir() else []
        if len(workers) >= 2 and logs and any(e.get("event") == "computed" for e in logs[-1]):
            return workers
        if process.poll() is not None:
            pytest.fail(f"the run ended before starting its workers:\n{process.stderr.read() if process.stderr else ''}")
        time.sleep(0.1)
    pytest.fail("the run started no workers")


def _gone(pids: set[int], within: float = 30.0) -> set[int]:
    """Those of `pids` still alive after waiting up to `within` seconds (a liveness bound)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    return {p for p in pids if _alive(p)}


# ----- training ------------------------------------------------------------------------


def test_train_stops_at_the_next_batch_once_asked_and_keeps_the_finished_epochs(cases: list) -> None:  # noqa: F811
    """`stop` is asked before every batch: true in the middle of epoch 2, `train` raises
    `Interrupted` there; epoch 1 is the last checkpoint, and resuming from it gives the
    weights of an uninterrupted training."""
    options = {"optimizer": training.adam(lr=3e-3), "epochs": 3, "batch": 1}
    whole = training.train(_net(), cases, OperatorRef("dice_ce"), checkpoints=Memory(), **options)
    asked = []

    def stop() -> bool:
        asked.append(1)
        return len(asked) > len(cases) + 1  # epoch 1 (one batch per case), then one batch of epoch 2

    memory = Memory()
    with pytest.raises(Interrupted) as stopped:
        training.train(_net(), cases, OperatorRef("dice_ce"), checkpoints=memory, stop=stop, **options)
    assert stopped.value.notes == ["stopped in epoch 2 of 3: epoch 1 is kept; the same command resumes at epoch 2"]
    assert sorted(memory.saved) == [1]
    resumed = training.train(_net(), cases, OperatorRef("dice_ce"), checkpoints=memory, **options)
    a, b = _weights(whole), _weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_cache_checkpoints_say_which_epoch_finished_and_force_forgets_them(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "results")
    checkpoints = CacheCheckpoints(cache, CacheKey("train", 2, {"epochs": 5}))
    assert checkpoints.finished_epoch() is None
    for epoch in (1, 2, 3):
        checkpoints.save(epoch, {"epoch": epoch})
    assert checkpoints.finished_epoch() == 3 and checkpoints.latest() == {"epoch": 3}
    checkpoints.clear()
    assert checkpoints.finished_epoch() is None and checkpoints.latest() is None


def test_ctrl_c_during_training_stops_it_and_the_same_command_resumes_to_the_same_weights(tmp_path: Path) -> None:
    file = tmp_path / "small.medas"
    file.write_text(SMALL.replace("EPOCHS", str(EPOCHS)))
    _medasc(file, tmp_path / "ref", tmp_path / "o1")

    cache, out = tmp_path / "cache", tmp_path / "o2"
    process = _start(file, cache, out)
    printed = _read_until(process, "fit: epoch 2/")
    _ctrl_c(process)
    _, rest = process.communicate(timeout=120)
    printed += rest
    assert process.returncode == 130, printed
    done = _epochs(out, "small")
    assert done[0] == 1 and 2 <= done[-1] < EPOCHS, done  # stopped at the next batch, not at the end of training
    last = done[-1]
    assert f"`fit` stopped in epoch {last + 1} of {EPOCHS}: epochs 1-{last} are kept" in printed, printed
    assert f"to resume, run the same command:\n  medasc run {file}" in printed, printed
    assert not any(crash in printed for crash in CRASHES), printed

    preview = _medasc(file, cache, out, "--dry-run")
    assert f"resumes from epoch {last + 1} of {EPOCHS}: epochs 1-{last} were finished" in preview.stderr, \
        preview.stderr

    _medasc(file, cache, out)
    assert _epochs(out, "small") == list(range(last + 1, EPOCHS + 1))  # continued, not restarted
    assert _trained_outputs(cache) == _trained_outputs(tmp_path / "ref")

    _medasc(file, cache, out, "--force", "fit")  # trains again from the start, not from the last checkpoint
    assert _epochs(out, "small") == list(range(1, EPOCHS + 1))
    assert _trained_outputs(cache) == _trained_outputs(tmp_path / "ref")


def test_a_second_ctrl_c_exits_at_once_without_a_native_crash(tmp_path: Path) -> None:
    file = tmp_path / "slow.medas"
    file.write_text(SLOW_BATCHES)
    cache, out = tmp_path / "cache", tmp_path / "out"
    process = _start(file, cache, out)
    printed = _read_until(process, "fit: epoch 1/")
    _ctrl_c(process)
    time.sleep(0.1)  # the first is handled; the batch in progress takes longer than this
    _ctrl_c(process)
    _, rest = process.communicate(timeout=120)
    printed += rest
    assert process.returncode == 130, printed  # not -6 (SIGABRT: a core dump) nor -2
    assert not any(crash in printed for crash in CRASHES), printed
    preview = _medasc(file, cache, out, "--dry-run")
    assert "resumes from epoch 2 of 50" in preview.stderr or "resumes from epoch 3 of 50" in preview.stderr, \
        preview.stderr


# ----- workers ---------------------------------------------------------------------------


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads processes from /proc")
def test_kill_9_of_a_run_with_workers_leaves_no_worker_alive(tmp_path: Path) -> None:
    file = tmp_path / "prep.medas"
    file.write_text(PER_CASE)
    process = _start(file, tmp_path / "cache", tmp_path / "out", "--workers", "2")
    workers = _workers_of(process, tmp_path / "out")
    helpers = _children(process.pid)  # the workers and multiprocessing's resource tracker
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=60)
    left = _gone(helpers)
    for pid in left:  # the test's own clean-up: the assertion below reports them
        os.kill(pid, signal.SIGKILL)
    assert not left, f"still running after their run was killed: {left} (workers {workers})"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads processes from /proc")
def test_ctrl_c_with_workers_stops_them_and_exits_130(tmp_path: Path) -> None:
    file = tmp_path / "prep.medas"
    file.write_text(PER_CASE)
    semaphores = set(Path("/dev/shm").glob("sem.mp-*"))
    process = _start(file, tmp_path / "cache", tmp_path / "out", "--workers", "2")
    workers = _workers_of(process, tmp_path / "out")
    helpers = _children(process.pid)
    _ctrl_c(process)
    _, printed = process.communicate(timeout=120)
    assert process.returncode == 130, printed
    assert "to resume, run the same command" in printed, printed
    assert not any(crash in printed for crash in CRASHES), printed  # workers ignore Ctrl-C: no traceback of theirs
    assert "leaked" not in printed, printed  # no warning of multiprocessing's resource tracker either
    assert not _gone(helpers), f"still running after their run stopped (workers {workers})"
    # the pool's semaphores are gone once its processes are (the tracker removes any left)
    assert not set(Path("/dev/shm").glob("sem.mp-*")) - semaphores
