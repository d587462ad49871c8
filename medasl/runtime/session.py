"""`medasc run`: check a file, lower its pipelines, and run them (or preview the run).

This is the glue between the command line and the executor; it decides what the user
sees: diagnostics for anything wrong in their file or data (exit 1), usage errors for
a bad `--set` or `--force` (exit 2), and a timing table and the run log otherwise.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from medasl.diagnostics import Diagnostic, Diagnostics, Label, Severity
from medasl.ir.graph import Graph
from medasl.ir.types import Ty
from medasl.lower.plan import OpValue, Plan, Step, lower
from medasl.passes import DEFAULT_LEVEL, optimize
from medasl.runtime import registry
from medasl.runtime.cache import Cache, Damage
from medasl.runtime.errors import DataError
from medasl.runtime.executor import Cases, LocalExecutor, RunFailure, RunOptions, RunResult, Single, preview
from medasl.runtime.outputs import OutputRoot, case_file_name, commit, outside_failure, refusals
from medasl.runtime.progress import ConsoleReporter, Reporters, RunLog, preview_table, timing_table


class UsageProblem(Exception):
    """A mistake on the command line (exit 2)."""


@dataclass
class RunRequest:
    overrides: dict[str, str]
    out: Path
    cache: Cache
    seed: int = 0
    device: str = "cpu"
    workers: int = 0  # 0: decide from the machine
    force: tuple[str, ...] = ()
    dry_run: bool = False
    allow_outside_out: bool = False  # --allow-outside-out (the output-path rule, runtime/outputs.py)


def default_workers() -> int:
    """Worker processes when none are asked for: none on a small machine (ITK already
    uses every core inside one process), else one per two cores, at most eight."""
    cores = os.cpu_count() or 1
    return 1 if cores <= 2 else min(cores // 2, 8)


def check_overrides(graphs: list[Graph], overrides: dict[str, str]) -> None:
    """Each `--set` must name a parameter of at least one of the pipelines."""
    params = {n.id for g in graphs for n in g.nodes.values() if n.op == "param"}
    for name in overrides:
        if name not in params:
            have = ", ".join(sorted(params)) or "none"
            raise UsageProblem(f"--set {name}=…: no pipeline has a parameter `{name}` (parameters: {have})")


def plans(graphs: list[Graph], overrides: dict[str, str], level: int = DEFAULT_LEVEL) -> list[Plan]:
    """Optimize and lower every pipeline. The graphs were checked with the `--set` values
    as the parameters' defaults (a value outside its search space is E0502 there)."""
    check_overrides(graphs, overrides)
    return [lower(optimize(graph, level).graph, level) for graph in graphs]


def unimplemented(plan: Plan) -> Diagnostics:
    """E2001 for each operator the pipeline uses that has no implementation yet."""
    diags = Diagnostics()
    seen: set[str] = set()
    for step in plan.steps.values():
        for op in (step.op, *_operator_values(step.params.values())):
            if registry.implemented(op) or op in seen:
                continue
            seen.add(op)
            missing = registry.missing_dependency(op)
            why = f"needs {missing}, which is not installed" if missing else "cannot run yet"
            labels = (Label(step.span, f"`{op}` ({registry.area(op) or 'user module'}) {why}"),) if step.span else ()
            diags.error("E2001", f"pipeline `{plan.pipeline}` uses `{op}`, which this version of medasl cannot run"
                        + (f" here: {why}" if missing else ""), *labels,
                        help="install the run extra: pip install -e '.[run]'" if missing else
                        "the README lists what runs today; `medasc check` and `medasc graph` work on every pipeline")
    return diags


def _operator_values(values: object) -> list[str]:
    """The operators passed as values (`loss=@dice_ce`, `metric.pred=@argmax`) among constants."""
    found: list[str] = []
    for value in values:  # type: ignore[attr-defined]
        if isinstance(value, OpValue):
            found.append(value.op)
            found += _operator_values(v for _, v in value.args)
    return found


def check_device(device: str) -> Diagnostics:
    """E2003 when `--device cuda:N` names a GPU this machine does not have."""
    diags = Diagnostics()
    if device == "cpu":
        return diags
    index = int(device.split(":", 1)[1]) if ":" in device else 0
    try:
        import torch
    except ImportError:
        diags.error("E2003", f"--device {device}: PyTorch is not installed, so no GPU can be used",
                    help="run with --device cpu, or install PyTorch with CUDA support")
        return diags
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if index >= count:
        diags.error("E2003", f"--device {device}: this machine has {count} CUDA device(s)",
                    help="run with --device cpu" + (f" or one of cuda:0..cuda:{count - 1}" if count else ""))
    return diags


def failure_diagnostic(failure: RunFailure) -> Diagnostic:
    """A step's failure as a diagnostic at the step's line, naming the case and file."""
    step = failure.step
    where = f" on case {failure.case}" if failure.case else ""
    labels = (Label(step.span, f"`{step.op}` failed here{where}"),) if step.span else ()
    notes = []
    if failure.path:
        notes.append(f"file: {failure.path}")
    notes.append("every result computed before this is kept in the cache: the same command resumes from here")
    return Diagnostic(failure.code, Severity.ERROR, failure.message, labels, failure.help, tuple(notes))


def forced_steps(plan: Plan, name: str) -> list[str]:
    """The steps `--force name` names: the step so called, or every fold's step of a value
    bound per fold of a cross-validation (`--force fits`: `fits_fold0`, `fits_fold1`, ...)."""
    step = plan.find(name)
    if step is not None:
        return [step.id]
    return [s.id for s in plan.steps.values() if re.fullmatch(re.escape(name) + r"_fold\d+", s.id)]


def options_for(plan: Plan, request: RunRequest) -> RunOptions:
    force = [sid for name in request.force for sid in forced_steps(plan, name)]
    return RunOptions(cache=request.cache, out_dir=(request.out / plan.pipeline).resolve(), seed=request.seed,
                      device=request.device, workers=request.workers or default_workers(),
                      force=frozenset(force), allow_outside_out=request.allow_outside_out)


def output_refusals(plan: Plan, request: RunRequest) -> Diagnostics:
    """The output-path rule, before anything runs: writers outside `--out`, two on one file."""
    return refusals(plan, OutputRoot(options_for(plan, request).out_dir, request.allow_outside_out))


def check_force(all_plans: list[Plan], names: tuple[str, ...]) -> None:
    for name in names:
        if not any(forced_steps(p, name) for p in all_plans):
            steps = sorted({s.label for p in all_plans for s in p.steps.values()})
            raise UsageProblem(f"--force {name}: no step of that name (steps: {', '.join(steps)})")


def notices(plan: Plan, device: str) -> list[str]:
    """What the user should know before the run starts: a step asking for a GPU on a
    CPU run, and a single cross-validation fold, whose validation is on training cases."""
    found = []
    for step in plan.steps.values():
        if step.params.get("on") == "gpu" and device == "cpu":
            found.append(f"warning: `{step.label}` ({step.location()}) asks for a GPU (`on=gpu`), but this run is on "
                         "the CPU; run with `--device cuda` to use one")
        if step.op == "kfold" and step.params.get("k") == 1:
            found.append(f"note: `{step.label}` ({step.location()}) makes a single fold (`k=1`): training and "
                         "validation are the same cases, so validation scores show fit, not performance on new cases")
    return found


def execute(plan: Plan, request: RunRequest, source: str, console: Console, reporter: object | None = None,
            executor: LocalExecutor | None = None) -> RunResult:
    """Run one plan with a progress display and a run log; print the timing table.
    `reporter` also receives the run's events (`medasc tune` follows the epochs), and
    `executor` may be given to stop the run from outside (`LocalExecutor.stop`)."""
    options = options_for(plan, request)
    for line in notices(plan, options.device):
        console.print(line)
    log = RunLog(options.out_dir / "logs", plan, source,
                 {"seed": options.seed, "device": options.device, "workers": options.workers,
                  "cache": str(options.cache.root), "force": sorted(options.force)})
    options.cache.on_damage = lambda damage: damaged_result(plan, damage, console, log)
    status = "failed"
    try:
        with ConsoleReporter(console) as progress:
            reporters = Reporters(progress, log, *([reporter] if reporter is not None else []))
            result = (executor or LocalExecutor()).run(plan, options, reporters)
        status = "ok"
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        log.close(status=status)
    console.print(timing_table(plan, result.outcomes, result.seconds))
    for line in _results(plan, result, options):
        console.print(line)
    console.print(f"run log: {log.path}")
    return result


def damaged_result(plan: Plan, damage: Damage, console: Console, log: RunLog) -> None:
    """W0015 when a cached result is found damaged: the run computes it again."""
    step = plan.steps.get(damage.step_id or "") if (damage.node_id or "").startswith(f"{plan.pipeline}/") else None
    what = (f"`{step.label}`" + (f" ({step.location()})" if step.location() else "") if step is not None
            else f"entry {damage.digest[:12]}")
    case = f" for case {damage.case}" if damage.case else ""
    code = "W0015"
    console.print(f"warning[{code}]: the cached result of {what}{case} is damaged ({damage.problem}); "
                  "it is computed again", markup=False, highlight=False)
    log.write("damaged", step=step.id if step is not None else None, case=damage.case, entry=damage.digest,
              problem=damage.problem)


def _results(plan: Plan, result: RunResult, options: RunOptions) -> list[str]:
    """What the run found: every metric (objective first), the shown figures (written as
    PNG files under `<out>/figures/`) and the files the writers and reports wrote."""
    from medasl.runtime.tasks import load_ref
    from medasl.runtime.values import Figure, Measured

    lines: list[str] = []
    cache = options.cache
    metric_steps = sorted((s for s in plan.steps.values() if _is_metric(s.value_type)),
                          key=lambda s: s.binding is None)
    for step in metric_steps:
        value = result.values.get(step.id)
        if isinstance(value, Single):
            measured = load_ref(cache, value.ref)
            if isinstance(measured, Measured):
                count = len(measured.per_case)
                cases = f" over {count} case{'s' * (count != 1)}" if count else ""
                if measured.per_fold:  # cross-validated: mean +- sd over the folds, and each fold
                    from medasl.ops.data import fold_spread

                    folds = ", ".join(f"{float(v):.4f}" for v in measured.per_fold.values())
                    cases = (f" +- {fold_spread(measured):.4f} (mean +- sd over {len(measured.per_fold)} folds: "
                             f"{folds})")
                lines.append(f"{step.label} = {measured.name} {measured.value:.4f}{cases} (better when "
                             f"{'higher' if measured.goal == 'max' else 'lower'})")
    figures = options.out_dir / "figures"
    for sid in plan.shows:
        value = result.values.get(sid)
        label = plan.steps[sid].label
        pictures = ([(label, value.ref)] if isinstance(value, Single) else
                    [(f"{label}-{case_file_name(case)}", ref) for case, ref in value.items]
                    if isinstance(value, Cases) else [])
        for name, ref in pictures:
            figure = load_ref(cache, ref)
            if isinstance(figure, Figure):
                _write_figure(figures / f"{name}.png", figure.png, plan.steps[sid], options)
        if pictures:
            lines.append(f"figure {label}: {figures / (pictures[0][0] + '.png')}" +
                         (f" (and {len(pictures) - 1} more)" if len(pictures) > 1 else ""))
    for step in plan.steps.values():
        value = result.values.get(step.id)
        if step.stage == "report" and isinstance(value, Single):
            written = load_ref(cache, value.ref)
            if isinstance(written, list) and written:
                lines.append(f"report: {written[0]}" + (f" (and {len(written) - 1} more)" if len(written) > 1 else ""))
    return lines


def _is_metric(t: object) -> bool:
    """A metric, or a cross-validated one (`PerFold<Metric[G]>`)."""
    if isinstance(t, Ty) and t.name == "PerFold":
        t = t.params[0]
    return isinstance(t, Ty) and t.name == "Metric"


def _write_figure(target: Path, png: bytes, step: Step, options: RunOptions) -> None:
    """A shown figure, written under `<out>/figures` like every output: by the output-path
    rule (a case id is a plain file name; no link leads out) and committed whole."""
    root = OutputRoot(options.out_dir, options.allow_outside_out)
    try:
        why = root.escapes(target)
        if why is not None:
            raise outside_failure(target, root, why)
        commit(target, lambda path: path.write_bytes(png))
    except DataError as exc:
        raise RunFailure(exc.code, exc.message, step, None, exc.path, exc.help) from None


def show_preview(plan: Plan, request: RunRequest, console: Console) -> None:
    console.print(preview_table(plan, preview(plan, options_for(plan, request))))
