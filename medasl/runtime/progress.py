"""What a run shows and keeps: progress bars, the timing table, and the run log.

The executor reports through the `Reporter` protocol (medasl/runtime/executor.py);
`Reporters` fans those calls out to the terminal (rich) and to the run log, a JSON-lines
file under `<out>/logs/` with one record per step and per computed case: enough to see
afterwards what ran, what was cached, how long each part took and, for random steps,
which cache entry holds the parameters drawn for each case.
"""

from __future__ import annotations

import csv
import json
import os
import secrets
import threading
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from medasl.lower.plan import Plan, Step
from medasl.runtime.executor import StepOutcome, StepPreview
from medasl.runtime.tasks import TaskResult


class ConsoleReporter:
    """One progress bar per step with several cases, shown while it runs (terminals only)."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=console, transient=True,
                                 disable=not console.is_terminal)
        self.bars: dict[str, TaskID] = {}
        self.lock = threading.Lock()

    def __enter__(self) -> ConsoleReporter:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def step_started(self, step: Step, tasks: int) -> None:
        if tasks > 1:
            with self.lock:
                self.bars[step.id] = self.progress.add_task(f"{step.label} ({step.op})", total=tasks)

    def task_done(self, step: Step, result: TaskResult) -> None:
        bar = self.bars.get(step.id)
        if bar is not None:
            self.progress.advance(bar)

    def step_finished(self, step: Step, outcome: StepOutcome) -> None:
        with self.lock:
            bar = self.bars.pop(step.id, None)
        if bar is not None:
            self.progress.remove_task(bar)

    def epoch(self, step: Step, record: dict[str, object]) -> None:
        """A bar over the epochs of a training, and one printed line per epoch."""
        with self.lock:
            bar = self.bars.get(step.id)
            if bar is None:
                bar = self.bars[step.id] = self.progress.add_task(f"{step.label} (train)", total=record["epochs"])
        self.progress.update(bar, completed=record["epoch"])
        values = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items()
                           if k not in ("epoch", "epochs"))
        self.progress.console.print(f"{step.label}: epoch {record['epoch']}/{record['epochs']}  {values}")


class RunLog:
    """Appends one JSON record per event to `<out>/logs/run-<time>-<pid>-<random>.jsonl`."""

    def __init__(self, folder: Path, plan: Plan, source: str, settings: dict[str, object]) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        now = time.time()
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now)) + f".{int(now * 1000) % 1000:03d}"
        self.path = folder / f"run-{stamp}-{os.getpid()}-{secrets.token_hex(2)}.jsonl"
        self.lock = threading.Lock()
        self._file = self.path.open("a", encoding="utf-8")
        self.write("run", pipeline=plan.pipeline, file=source, params=_jsonable(plan.params), **settings)

    def write(self, event: str, **fields: object) -> None:
        record = {"time": round(time.time(), 3), "event": event, **fields}
        with self.lock:
            self._file.write(json.dumps(record, default=str) + "\n")
            self._file.flush()

    def close(self, **fields: object) -> None:
        self.write("end", **fields)
        self._file.close()

    def step_started(self, step: Step, tasks: int) -> None:
        self.write("step", step=step.id, op=step.op, tasks=tasks, at=step.location())

    def task_done(self, step: Step, result: TaskResult) -> None:
        if result.computed:
            self.write("computed", step=step.id, case=result.case, entry=result.digest,
                       seconds=round(result.seconds, 4))

    def step_finished(self, step: Step, outcome: StepOutcome) -> None:
        self.write("done", step=step.id, status=outcome.status, computed=outcome.computed, cached=outcome.cached,
                   seconds=round(outcome.seconds, 4))

    def epoch(self, step: Step, record: dict[str, object]) -> None:
        """One line in the run log, and one row in `<logs>/<step>-epochs.csv`."""
        self.write("epoch", step=step.id, **record)
        table = self.path.parent / f"{step.label}-epochs.csv"
        columns = [k for k in record if k != "epochs"]
        with self.lock:
            new = not table.exists() or record.get("epoch") == 1
            with table.open("w" if new else "a", newline="", encoding="utf-8") as f:
                writer = csv.writer(f)
                if new:
                    writer.writerow(columns)
                writer.writerow([record[k] for k in columns])


def _jsonable(value: object) -> object:
    return json.loads(json.dumps(value, default=str))


class Reporters:
    """Several reporters as one."""

    def __init__(self, *reporters: object) -> None:
        self.reporters = reporters

    def step_started(self, step: Step, tasks: int) -> None:
        for r in self.reporters:
            r.step_started(step, tasks)  # type: ignore[attr-defined]

    def task_done(self, step: Step, result: TaskResult) -> None:
        for r in self.reporters:
            r.task_done(step, result)  # type: ignore[attr-defined]

    def step_finished(self, step: Step, outcome: StepOutcome) -> None:
        for r in self.reporters:
            r.step_finished(step, outcome)  # type: ignore[attr-defined]

    def epoch(self, step: Step, record: dict[str, object]) -> None:
        for r in self.reporters:
            r.epoch(step, record)  # type: ignore[attr-defined]


def _shown(plan: Plan) -> list[Step]:
    """The steps a table lists: `.train`, `.image` and other field selections are left out."""
    return [s for s in plan.steps.values() if s.op != "field"]


def _line(step: Step) -> str:
    return str(step.span.line) if step.span else ""


def _seconds(value: float) -> str:
    return f"{value:.2f} s" if value < 60 else f"{int(value // 60)} min {value % 60:.0f} s"


def timing_table(plan: Plan, outcomes: dict[str, StepOutcome], total: float) -> Table:
    """One row per step: what it is, how many results it computed or found, and its time."""
    table = Table(title=f"pipeline {plan.pipeline}: {_seconds(total)}", title_justify="left")
    for column in ("step", "operator", "line", "status", "results", "time"):
        table.add_column(column, justify="right" if column in ("results", "time") else "left")
    for step in _shown(plan):
        outcome = outcomes.get(step.id)
        if outcome is None:
            table.add_row(step.label, step.op, _line(step), "not run", "", "")
            continue
        results = ", ".join(f"{n} {what}" for n, what in ((outcome.computed, "new"), (outcome.cached, "cached")) if n)
        if outcome.fused_into:
            results = f"with `{plan.steps[outcome.fused_into].label}`"
        table.add_row(step.label, step.op, _line(step), outcome.status, results, _seconds(outcome.seconds))
    return table


def preview_table(plan: Plan, previews: dict[str, StepPreview]) -> Table:
    """`--dry-run`: each step as cached, stale or new, and why."""
    table = Table(title=f"pipeline {plan.pipeline}: dry run (nothing is computed)", title_justify="left")
    for column in ("step", "operator", "line", "status", "results", "why"):
        table.add_column(column)
    for step in _shown(plan):
        found = previews[step.id]
        counts = ", ".join(f"{n} {status}" for status, n in sorted(found.counts.items()))
        why = found.unknown or "; ".join(found.reasons[:3]) + (" …" if len(found.reasons) > 3 else "")
        if found.fused_into and not found.reasons:
            why = f"computed with `{plan.steps[found.fused_into].label}`, case by case; not stored"
        table.add_row(step.label, step.op, _line(step), found.status, counts, why)
    return table
