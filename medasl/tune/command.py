"""`medasc tune` after the file is checked: the dry run, the study, the summary.

medasl/cli.py parses the options, checks the file (with the fixed `--set` values) and
prints its diagnostics; everything after that is here.
"""

from __future__ import annotations

from collections.abc import Callable

from medasl.ir.graph import Graph
from medasl.source import SourceFile
from medasl.tune.driver import (
    Prepared,
    TuneRequest,
    finished_count,
    prepare,
    reproduce_command,
    run_study,
)
from medasl.tune.study import FAILED, OK, RUNNING, STOPPED

Say = Callable[[str], None]


def per_trial_steps(graph: Graph, searched: set[str], plan: object) -> dict[str, set[str]]:
    """For each step of `plan`, the searched parameters whose value its result depends
    on; a step with none is computed once for the whole study (its cache key is the
    same in every trial)."""
    reads: dict[str, set[str]] = {}
    for node in graph.nodes.values():  # the checked graph still has its `param` nodes; topological order
        found = {node.id} if node.id in searched else set()
        for source in node.inputs():
            found |= reads.get(source, set())
        reads[node.id] = found
    for node in graph.nodes.values():
        if node.id in searched:  # the default's own steps (`unet3d(...)` of `param net`) are the trial's value
            for source in node.inputs():
                reads[source] = reads[source] | {node.id}
    depends: dict[str, set[str]] = {}
    for step in plan.steps.values():  # type: ignore[attr-defined]
        found = set()
        for node_id in (step.id, *step.fused):
            found |= reads.get(node_id, set())
        for source in step.inputs.values():
            found |= depends.get(source, set())
        depends[step.id] = found
    return depends


def dry_run(prepared: Prepared, say: Say) -> None:
    """The space, the study so far, the steps shared by all trials and those each trial
    recomputes; nothing runs."""
    from medasl.runtime import session

    study, request = prepared.study, prepared.request
    say(f"study of pipeline `{study.pipeline}`: {study.goal}imize `{study.objective}` with {study.algo} "
        f"(seed {study.seed}, proposed in rounds of {study.batch}), {request.trials} trials")
    say(f"study file: {prepared.path}" + ("" if prepared.path.exists() else " (new)"))
    say("space:")
    width = max(len(d.name) for d in prepared.space.dimensions)
    for d in prepared.space.dimensions:
        default = d.options[int(d.default)] if d.kind == "choice" else d.value(d.default)[1]
        say(f"  {d.name:<{width}}  {d.describe()}   (default {default}: trial 1)")
    if study.sets:
        say("fixed: " + ", ".join(f"{k}={v}" for k, v in study.sets.items()))
    done = finished_count(study)
    if study.trials:
        counts = {s: sum(t.status == s for t in study.trials) for s in (OK, FAILED, STOPPED)}
        running = [t.number for t in study.trials if t.status == RUNNING]
        say(f"trials so far: {done} finished ({', '.join(f'{n} {s}' for s, n in counts.items() if n) or 'none'})"
            + (f"; trial {', '.join(map(str, running))} was interrupted and runs again first, resuming from "
               "what the cache kept" if running else ""))
    plan = session.plans([prepared.graph], dict(study.sets), request.level)[0]
    depends = per_trial_steps(prepared.graph, {d.name for d in prepared.space.dimensions}, plan)
    shown = [s for s in plan.steps.values() if s.op != "field"]
    shared = [s for s in shown if not depends[s.id]]
    each = [s for s in shown if depends[s.id]]
    say(f"steps shared by all trials (computed once for the whole study): {len(shared)}")
    for step in shared:
        say(f"  {step.label} ({step.op}{', line ' + str(step.span.line) if step.span else ''})")
    say(f"steps each trial recomputes: {len(each)}")
    for step in each:
        say(f"  {step.label} ({step.op}{', line ' + str(step.span.line) if step.span else ''}): "
            f"reads {', '.join(sorted(depends[step.id]))}")


def prepare_only(request: TuneRequest, graphs: list[Graph], source: SourceFile) -> Prepared:
    """The study to run (TuneProblem when it cannot be), before anything runs."""
    return prepare(request, graphs, source)


def run(prepared: Prepared, dry: bool, say: Say) -> Prepared:
    request = prepared.request
    if dry:
        dry_run(prepared, say)
        return prepared
    study = prepared.study
    say(f"study of pipeline `{study.pipeline}`: {study.goal}imize `{study.objective}` with {study.algo}, "
        f"{request.trials} trials; {finished_count(study)} finished before; study file {prepared.path}")
    try:
        run_study(prepared, say)
    finally:
        summarize(prepared, say)
    return prepared


def summarize(prepared: Prepared, say: Say) -> None:
    """The best trial and the command that reproduces it, and the report."""
    from medasl.tune.report import write_report

    study, request = prepared.study, prepared.request
    counts = {s: sum(t.status == s for t in study.trials) for s in (OK, FAILED, STOPPED)}
    say(f"{finished_count(study)} of {request.trials} trials finished: "
        + ", ".join(f"{n} {s}" for s, n in counts.items() if n))
    best = study.best()
    if best is not None:
        say(f"best: trial {best.number}, {study.objective} = {best.objective:.6g} with "
            + ", ".join(f"{k}={v}" for k, v in best.sets.items()))
        say("reproduce it with:\n  " + reproduce_command(study, best, request.level, request.pipeline))
    if study.trials:
        report = write_report(prepared)
        say(f"report: {report}")
