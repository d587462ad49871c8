"""One trial: the pipeline checked again with the trial's values, then run on the shared cache.

A trial is exactly `medasc run FILE --set ... --seed S --out <study>/trials/trial-NNN`
done in-process: the same checker (so a sampled combination it refuses, say a crop the
network cannot divide, is a failed trial with that diagnostic's code), the same passes,
the same executor and run log. What the trial finds (the objective, the trainings'
per-epoch history, how many results it computed) comes back as plain data, so that a
trial can also run in a worker process (`--parallel`).
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from medasl.tune.study import FAILED, OK, STOPPED

STORAGE_CODES = ("E2010", "E2013", "E2020", "E2021")
"""A full or read-only disk stops the whole study: every later trial would fail the same way."""

MIN_PEERS = 3
"""The median rule compares a trial with at least this many earlier trials."""


@dataclass
class TrialSpec:
    """Everything a trial needs, as plain data."""

    file: str
    pipeline: str
    number: int
    sets: dict[str, str]  # the study's fixed `--set` values and the trial's own
    out: str  # the trial's `--out` folder
    cache: str
    seed: int = 0
    device: str = "cpu"
    workers: int = 1
    level: int = 2
    allow_outside_out: bool = False
    early_stop: bool = False
    peers: list[dict[str, list[dict[str, object]]]] = field(default_factory=list)  # earlier trials' histories


@dataclass
class TrialOutcome:
    status: str
    objective: float | None = None
    code: str | None = None
    message: str | None = None
    history: dict[str, list[dict[str, object]]] = field(default_factory=dict)
    seconds: float = 0.0
    overhead: float = 0.0
    computed: int = 0
    cached: int = 0


class StudyStopped(Exception):
    """A problem that every later trial would meet too (a full disk): the study stops."""

    def __init__(self, code: str, message: str, help: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.help = code, message, help


class MedianRule:
    """Early stopping: a training whose best validation value so far is worse than the
    median of the earlier trials' best values at the same epoch is stopped (the rule of
    Google Vizier and Optuna's MedianPruner). Also a reporter that keeps every epoch."""

    def __init__(self, peers: list[dict[str, list[dict[str, object]]]], enabled: bool, stop: object) -> None:
        self.peers = peers
        self.enabled = enabled
        self.stop = stop
        self.history: dict[str, list[dict[str, object]]] = {}
        self.stopped: str | None = None

    def step_started(self, step: object, tasks: int) -> None:
        pass

    def task_done(self, step: object, result: object) -> None:
        pass

    def step_finished(self, step: object, outcome: object) -> None:
        pass

    def epoch(self, step: object, record: dict[str, object]) -> None:
        label = step.label  # type: ignore[attr-defined]
        kept = {k: v for k, v in record.items() if k != "epochs"}
        self.history.setdefault(label, []).append(kept)
        if not self.enabled or self.stopped is not None:
            return
        key = next((k for k in record if k.startswith("val_")), None)
        if key is None or record.get("epoch") == record.get("epochs"):
            return  # nothing to compare, or nothing left to save: the training has just finished
        from medasl.ops.metrics import GOALS

        goal = GOALS.get(key[4:], "max")
        epoch = int(record["epoch"])  # type: ignore[call-overload]
        mine = _best_until(self.history[label], key, epoch, goal)
        others = [b for peer in self.peers if (b := _best_until(peer.get(label, []), key, epoch, goal)) is not None
                  and _reached(peer.get(label, []), epoch)]
        if mine is None or len(others) < MIN_PEERS:
            return
        median = statistics.median(others)
        if (mine < median) if goal == "max" else (mine > median):
            self.stopped = (f"`{label}` stopped early in epoch {epoch}: its best {key} so far, {mine:.4g}, is "
                            f"worse than the median of {len(others)} earlier trials at that epoch, {median:.4g}")
            self.stop()  # type: ignore[operator]


def _best_until(history: list[dict[str, object]], key: str, epoch: int, goal: str) -> float | None:
    values = [float(r[key]) for r in history if key in r and int(r["epoch"]) <= epoch  # type: ignore[call-overload, arg-type]
              and not math.isnan(float(r[key]))]  # type: ignore[arg-type]
    if not values:
        return None
    return max(values) if goal == "max" else min(values)


def _reached(history: list[dict[str, object]], epoch: int) -> bool:
    return any(int(r["epoch"]) >= epoch for r in history)  # type: ignore[call-overload]


def run_trial(spec: TrialSpec) -> TrialOutcome:
    """Check and run one trial; the user's mistakes become a failed outcome with their
    code, a bug propagates (exit 70), Ctrl-C propagates (the study stops, resumable)."""
    clock = time.perf_counter()
    outcome = _run(spec)
    outcome.seconds = time.perf_counter() - clock
    return outcome


def _run(spec: TrialSpec) -> TrialOutcome:
    from medasl.diagnostics import Diagnostics
    from medasl.semantics.checker import check_source
    from medasl.source import SourceFile
    from medasl.syntax.parser import parse
    from medasl.tune.space import without_searches

    clock = time.perf_counter()
    diags = Diagnostics()
    source = SourceFile.read(spec.file)
    tree = parse(source, Diagnostics())
    if tree is not None:
        source = without_searches(source, tree, set(spec.sets))  # each value is one value here
    result = check_source(source, diags, spec.sets)
    if diags.has_errors:
        first = diags.sorted()[0] if diags.sorted()[0].severity.value == "error" else diags.errors[0]
        return _refused(first.code, first.message, clock)
    graphs = [g for g in result.graphs if g.name == spec.pipeline]
    from rich.console import Console

    from medasl.runtime import session
    from medasl.runtime.cache import Cache, storage_problem
    from medasl.runtime.errors import DataError
    from medasl.runtime.executor import LocalExecutor, RunFailure

    cache = Cache(Path(spec.cache))
    request = session.RunRequest(spec.sets, Path(spec.out), cache, spec.seed, spec.device, spec.workers,
                                 allow_outside_out=spec.allow_outside_out)
    plan = session.plans(graphs, spec.sets, spec.level)[0]
    refusals = session.unimplemented(plan)
    refusals.extend(session.output_refusals(plan, request))
    if refusals.has_errors:
        return _refused(refusals.errors[0].code, refusals.errors[0].message, clock)
    executor = LocalExecutor()
    rule = MedianRule(spec.peers, spec.early_stop, executor.stop)
    out_dir = Path(spec.out) / plan.pipeline
    out_dir.mkdir(parents=True, exist_ok=True)
    checked = time.perf_counter() - clock
    with (out_dir / "run.txt").open("w", encoding="utf-8") as text:
        console = Console(file=text, width=160, force_terminal=False, color_system=None)
        try:
            run = session.execute(plan, request, spec.file, console, reporter=rule, executor=executor)
        except RunFailure as failure:
            outcome = TrialOutcome(FAILED, code=failure.code, message=failure.message, history=rule.history)
            outcome.overhead = checked
            return outcome
        except KeyboardInterrupt:
            if rule.stopped is None:
                raise  # Ctrl-C: the study stops here and resumes with this trial
            return TrialOutcome(STOPPED, message=rule.stopped, history=rule.history, overhead=checked)
        except (OSError, DataError) as exc:
            problem = storage_problem(exc, cache.root)
            if problem is not None or (isinstance(exc, DataError) and exc.code in STORAGE_CODES):
                found = problem or exc
                raise StudyStopped(found.code, found.message, found.help) from None  # type: ignore[union-attr]
            raise
    after = time.perf_counter()
    outcome = TrialOutcome(OK, history=rule.history)
    outcome.computed = sum(o.computed for o in run.outcomes.values())
    outcome.cached = sum(o.cached for o in run.outcomes.values())
    _read_results(plan, run, cache, outcome)
    outcome.overhead = checked + (time.perf_counter() - after)
    return outcome


def _refused(code: str, message: str, clock: float) -> TrialOutcome:
    return TrialOutcome(FAILED, code=code, message=message, overhead=time.perf_counter() - clock)


def _read_results(plan: object, run: object, cache: object, outcome: TrialOutcome) -> None:
    """The objective and every training's full history (also the epochs a resumed
    training had finished before), from the cache."""
    from medasl.runtime.executor import Single
    from medasl.runtime.tasks import load_ref
    from medasl.runtime.values import Measured, Trained

    objective = plan.objective  # type: ignore[attr-defined]
    value = run.values.get(objective.id) if objective is not None else None  # type: ignore[attr-defined]
    measured = load_ref(cache, value.ref) if isinstance(value, Single) else None  # type: ignore[arg-type]
    if not isinstance(measured, Measured):
        outcome.status, outcome.code = FAILED, "E2060"
        outcome.message = "the trial gave no value for the objective"
        return
    if not math.isfinite(float(measured.value)):
        outcome.status, outcome.code = FAILED, "E2060"
        outcome.message = (f"the objective `{objective.label}` is {measured.value} for these values "
                           "(no case gave a number)")
        return
    outcome.objective = float(measured.value)
    for step in plan.steps.values():  # type: ignore[attr-defined]
        if step.op != "train" or not isinstance(run.values.get(step.id), Single):  # type: ignore[attr-defined]
            continue
        trained = load_ref(cache, run.values[step.id].ref)  # type: ignore[arg-type, attr-defined]
        if isinstance(trained, Trained):
            outcome.history[step.label] = [dict(r) for r in trained.history]
