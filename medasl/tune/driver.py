"""The study loop of `medasc tune`: propose, check, run, record, resume.

The loop is deterministic given the study's seed: trials are proposed in rounds of
`batch` (medasl/tune/propose.py), each round from the finished rounds before it, and
the early-stopping rule compares a trial with the same earlier rounds. Running the
trials of a round one after the other or in `--parallel K` worker processes thus gives
the same trials with the same values.

The study is saved (study.json, atomically) when a trial is proposed, when it starts
and when it ends. Killing `medasc tune` at any moment and running the same command
again resumes: finished trials are kept, a trial left `running` runs again with its
recorded values (the cache gives back what it finished; a training resumes from its
last epoch checkpoint), and the missing trials are proposed as they would have been.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import hashlib
import math
import multiprocessing
import os
import shlex
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from medasl.diagnostics import Diagnostics
from medasl.ir.graph import Graph
from medasl.source import SourceFile
from medasl.tune.space import Space
from medasl.tune.study import FINISHED, OK, RUNNING, STOPPED, Study, TrialRecord, load, save
from medasl.tune.trial import TrialOutcome, TrialSpec, run_trial

DEFAULT_BATCH = 4
"""Trials proposed together when `--batch` is not given (and `--parallel` is at most 4):
a fixed number, so that `--parallel 1` and `--parallel 2` give the same study."""


@dataclass
class TuneRequest:
    file: str
    trials: int = 20
    algo: str = "tpe"
    seed: int = 0
    parallel: int = 1
    batch: int | None = None
    timeout: float | None = None  # seconds after which no new trial starts
    sets: dict[str, str] = field(default_factory=dict)
    out: Path = Path("results/tune")
    cache: Path = Path.home() / ".cache" / "medasl" / "results"
    device: str = "cpu"
    workers: int = 1  # per-case worker processes inside each trial
    level: int = 2
    pipeline: str | None = None
    early_stop: bool = False
    allow_outside_out: bool = False


@dataclass
class Prepared:
    """A study ready to run: the checked pipeline with the fixed values, its space."""

    request: TuneRequest
    graph: Graph
    space: Space
    study: Study
    folder: Path
    diags: Diagnostics  # warnings to show (W0030)

    @property
    def path(self) -> Path:
        return self.folder / "study.json"


class TuneProblem(Exception):
    """The file cannot be tuned as asked, or the study in `--out` cannot be resumed:
    a coded diagnostic, exit 1."""

    def __init__(self, code: str, message: str, help: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.help = code, message, help


def file_digest(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def prepare(request: TuneRequest, graphs: list[Graph], source: SourceFile) -> Prepared:
    """The pipeline to tune, its space and its study (loaded from `--out` when one is
    there, after checking that it is the same study)."""
    from medasl.syntax.parser import parse
    from medasl.tune.space import read_space

    graph = _pick(graphs, request.pipeline)
    objective = next((n for n in graph.nodes.values() if n.goal), None)
    if objective is None:
        raise TuneProblem("E2062", f"pipeline `{graph.name}` has no objective to tune",
                          help="mark one metric binding with `maximize` or `minimize`, e.g. "
                          "`score = dice(pred, val.label) maximize`")
    tree = parse(source, Diagnostics())
    assert tree is not None  # the file was checked
    space = read_space(graph, tree, source)
    space = Space(space.pipeline, tuple(d for d in space.dimensions if d.name not in request.sets))
    if not space.dimensions:
        fixed = [d for d in request.sets if any(n.id == d and n.search for n in graph.nodes.values())]
        raise TuneProblem("E2063", f"pipeline `{graph.name}` has nothing to search" +
                          (f": {', '.join(f'`{n}`' for n in fixed)} fixed by --set" if fixed else ""),
                          help="give a parameter a search space, e.g. `param lr = 1e-3 search loguniform(1e-4, 1e-2)`")
    batch = request.batch or max(DEFAULT_BATCH, request.parallel)
    fresh = Study(request.file, file_digest(request.file), graph.name, objective.binding or objective.id,
                  "max" if objective.goal == "maximize" else "min", request.algo, request.seed, batch,
                  dict(request.sets), space.to_json())
    folder = request.out / graph.name
    diags = Diagnostics()
    from medasl.tune.study import StudyFileProblem

    try:
        found = load(folder / "study.json")
    except StudyFileProblem as exc:
        raise TuneProblem("E2064", str(exc), help="move the folder away (or give another --out) to start a new "
                          "study; the cache keeps every result, so finished trials are not computed again") from None
    if found is not None:
        if request.batch is None:
            fresh.batch = found.batch  # resuming with another --parallel keeps the study's rounds
        differs = [k for k, v in fresh.settings().items() if found.settings()[k] != v]
        if differs:
            raise TuneProblem("E2061", f"the study in {folder} was made with other settings ({', '.join(differs)} "
                              "differ), so it cannot be continued by this command",
                              help=f"give another --out for a new study, or run it with its own settings: "
                              f"{_settings_text(found)}")
        if found.file_sha256 != fresh.file_sha256:
            diags.warning("W0030", f"`{request.file}` changed since the study in {folder} started; its "
                          f"{sum(t.finished for t in found.trials)} finished trials ran on the earlier version",
                          help="give another --out to start a new study of the new version")
        fresh = found
    return Prepared(request, graph, space, fresh, folder, diags)


def _settings_text(study: Study) -> str:
    parts = [f"--algo {study.algo}", f"--seed {study.seed}", f"--batch {study.batch}"]
    parts += [f"--set {shlex.quote(f'{k}={v}')}" for k, v in study.sets.items()]
    return " ".join(parts)


def _pick(graphs: list[Graph], name: str | None) -> Graph:
    if name is not None:
        return next(g for g in graphs if g.name == name)
    with_goal = [g for g in graphs if any(n.goal for n in g.nodes.values())]
    return (with_goal or graphs)[0]


def reproduce_command(study: Study, record: TrialRecord, level: int = 2, pipeline: str | None = None) -> str:
    """The `medasc run` line that computes trial `record` again, exactly."""
    parts = ["medasc", "run", study.file]
    for name, text in {**study.sets, **record.sets}.items():
        parts += ["--set", f"{name}={text}"]
    if study.seed:
        parts += ["--seed", str(study.seed)]
    if level != 2:
        parts.append(f"-O{level}")
    if pipeline:
        parts += ["--pipeline", pipeline]
    return shlex.join(parts)


# ----- the loop ------------------------------------------------------------------------


Say = Callable[[str], None]


def run_study(prepared: Prepared, say: Say) -> Study:
    """Run the missing trials, round by round; returns the study as saved."""
    from medasl.tune.propose import propose

    study, request = prepared.study, prepared.request
    deadline = time.monotonic() + request.timeout if request.timeout else None
    save(study, prepared.path)
    for first in range(1, request.trials + 1, study.batch):
        numbers = list(range(first, min(first + study.batch, request.trials + 1)))
        todo = []
        for number in numbers:
            record = _find(study, number)
            if record is None:
                raw = propose(study, prepared.space, number)
                values, sets = prepared.space.values(raw)
                record = TrialRecord(number, raw, values, sets, folder=f"trials/trial-{number:03d}")
                study.trials.append(record)
            if not record.finished:
                todo.append(record)
        study.trials.sort(key=lambda t: t.number)
        save(study, prepared.path)
        if not todo:
            continue
        if deadline is not None and time.monotonic() >= deadline:
            say(f"timeout: {request.timeout:g} s passed; no new trial is started (run the same command to go on)")
            break
        peers = [t.history for t in study.trials if t.number < first and t.status in (OK, STOPPED)]
        if request.parallel <= 1:
            for record in todo:
                if deadline is not None and time.monotonic() >= deadline:
                    say(f"timeout: {request.timeout:g} s passed; no new trial is started")
                    return study
                _started(prepared, record, say)
                _finished(prepared, record, run_trial(_spec(prepared, record, peers)), say)
        else:
            _run_parallel(prepared, todo, peers, say)
    return study


def _find(study: Study, number: int) -> TrialRecord | None:
    return next((t for t in study.trials if t.number == number), None)


def _spec(prepared: Prepared, record: TrialRecord, peers: list[dict[str, list[dict[str, object]]]],
          device: str | None = None, workers: int | None = None) -> TrialSpec:
    request = prepared.request
    return TrialSpec(request.file, prepared.study.pipeline, record.number, {**prepared.study.sets, **record.sets},
                     str(prepared.folder / record.folder), str(request.cache), prepared.study.seed,
                     device or request.device, workers or request.workers, request.level,
                     request.allow_outside_out, request.early_stop, peers)


def _started(prepared: Prepared, record: TrialRecord, say: Say) -> None:
    record.status = RUNNING
    save(prepared.study, prepared.path)
    values = "  ".join(f"{k}={v}" for k, v in record.sets.items())
    say(f"trial {record.number}/{prepared.request.trials}: {values}")


def _finished(prepared: Prepared, record: TrialRecord, outcome: TrialOutcome, say: Say) -> None:
    for key, value in asdict(outcome).items():
        setattr(record, key, value)
    save(prepared.study, prepared.path)
    study = prepared.study
    took = f"{outcome.seconds:.1f} s, {outcome.computed} computed, {outcome.cached} cached"
    # trials in worker processes end in any order: their lines name them
    arrow = f"  trial {record.number} -> " if prepared.request.parallel > 1 else "  -> "
    if record.status == OK:
        best = study.best()
        mark = "  (best so far)" if best is not None and best.number == record.number else ""
        say(f"{arrow}{study.objective} = {record.objective:.6g} ({took}){mark}")
    elif record.status == STOPPED:
        say(f"{arrow}stopped early: {record.message} ({took})")
    else:
        say(f"{arrow}failed, error[{record.code}]: {record.message} ({took})")


def _run_parallel(prepared: Prepared, todo: list[TrialRecord], peers: list[dict[str, list[dict[str, object]]]],
                  say: Say) -> None:
    """The trials of one round in worker processes, at most `--parallel` at once. A
    worker dies with the study (kill -9 included), leaving its trial `running`."""
    from medasl.runtime.executor import RunFailure  # noqa: F401 - imported here so that workers find it

    request = prepared.request
    gpus = _gpu_count(request.device)
    cores = os.cpu_count() or 1
    threads = max(1, cores // request.parallel)
    pool = cf.ProcessPoolExecutor(request.parallel, mp_context=multiprocessing.get_context("spawn"),
                                  initializer=_init_trial_worker, initargs=(threads, os.getpid()))
    futures: dict[cf.Future[TrialOutcome], TrialRecord] = {}
    try:
        for record in todo:
            device = f"cuda:{(record.number - 1) % gpus}" if gpus > 1 else request.device
            _started(prepared, record, say)
            futures[pool.submit(run_trial, _spec(prepared, record, peers, device, 1))] = record
        for future in cf.as_completed(futures):
            _finished(prepared, futures[future], future.result(), say)
    except BaseException:
        workers = list(getattr(pool, "_processes", None) or {})  # pids; private, but stable since Python 3.2
        pool.shutdown(wait=False, cancel_futures=True)
        for pid in workers:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)  # their trials stay `running`: the next command runs them again
        raise
    pool.shutdown(wait=True)


def _gpu_count(device: str) -> int:
    if not device.startswith("cuda"):
        return 0
    import torch

    return torch.cuda.device_count()


def _init_trial_worker(threads: int, parent: int) -> None:
    """A trial worker: dies with the study, ignores Ctrl-C (the study stops it), and
    shares the cores with the other workers."""
    from medasl.runtime.executor import _init_worker

    _init_worker(threads, parent)
    import torch

    torch.set_num_threads(threads)


# ----- summaries -----------------------------------------------------------------------


def finished_count(study: Study) -> int:
    return sum(t.status in FINISHED for t in study.trials)


def objective_text(value: float | None) -> str:
    return "" if value is None or not math.isfinite(value) else f"{value:.6g}"
