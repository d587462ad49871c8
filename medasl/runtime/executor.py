"""Running a plan: every step's cache key is known before it runs, results go to the
cache, and a step whose key is already there is not run again.

How a step becomes work (`prepare`):

- a *source* (`folder`, `phantom`, ...) is listed in the main process, then each case
  is one task, keyed by the operator, its parameters, the case and the content digests
  of the files the case reads;
- a *mapped* step (`resample[map]`) is one task per case, its dataset inputs zipped by
  case id; the key holds the references of that case's inputs, so changing one
  parameter re-runs exactly the cases downstream of it;
- a *selection* (`field`, `split`, `take`, ...) only regroups references and runs in
  the main process; it is never stored;
- anything else is one task over whole values (datasets are handed over as sequences
  read from the cache on demand).

The `Executor` interface is what a multi-GPU or Ray executor implements later: it gets
the plan and the options and reports through a `Reporter`. `LocalExecutor` schedules
steps whose inputs are ready concurrently (threads), and runs tasks either in the main
process, one at a time, or in a pool of worker processes that read their inputs from the cache and commit their
results themselves, so the main process never holds the images and memory stays
bounded by the workers' current cases.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

from medasl.lower.plan import OpValue, Plan, Step, to_json
from medasl.runtime import registry
from medasl.runtime.cache import Cache, CacheKey, Explanation, diff_parts
from medasl.runtime.digests import DigestMemo, file_digest, folder_digest, sha256_json
from medasl.runtime.errors import DataError, Interrupted
from medasl.runtime.outputs import Claims, OutputRoot, outside_failure
from medasl.runtime.tasks import (
    CacheCheckpoints,
    Hooks,
    MissingInput,
    Recipe,
    Task,
    TaskResult,
    case_number,
    files_intact,
    load_ref,
    member,
    record,
    resume_note,
    run_task,
)
from medasl.runtime.values import Case, CaseSpec, OperatorRef

# ----- values in the executor: references, never images ---------------------------------


@dataclass(frozen=True)
class Single:
    """One stored value."""

    ref: str

    def digest(self) -> str:
        return self.ref


@dataclass(frozen=True)
class Cases:
    """A dataset: (case id, reference) in order."""

    items: tuple[tuple[str, str], ...]

    def digest(self) -> str:
        return sha256_json([list(item) for item in self.items])


@dataclass(frozen=True)
class Parts:
    """A `Split` (named parts) or `Folds` (numbered parts) of a dataset."""

    parts: dict[str, Cases]

    def digest(self) -> str:
        return sha256_json({name: [list(i) for i in c.items] for name, c in self.parts.items()})


RunValue = Single | Cases | Parts


# ----- options, outcomes, failures -----------------------------------------------------


@dataclass(frozen=True)
class RunOptions:
    cache: Cache
    out_dir: Path
    seed: int = 0
    device: str = "cpu"
    workers: int = 1
    force: frozenset[str] = frozenset()  # step ids to recompute, with everything downstream
    allow_outside_out: bool = False  # --allow-outside-out: writers may write outside `out_dir`


@dataclass
class StepOutcome:
    step: str
    tasks: int = 0
    computed: int = 0
    cached: int = 0
    seconds: float = 0.0  # wall time of the step
    busy: float = 0.0  # summed time of its tasks
    fused_into: str | None = None

    @property
    def status(self) -> str:
        if self.fused_into:
            return "fused"
        if self.tasks == 0:
            return "selected"
        if self.computed == 0:
            return "cached"
        return "ran" if self.cached == 0 else "partly cached"


@dataclass
class RunResult:
    plan: Plan
    values: dict[str, RunValue]
    outcomes: dict[str, StepOutcome]
    seconds: float


class RunFailure(Exception):
    """A step failed because of the user's data or resources; the run stops, results
    computed so far stay in the cache. Rendered as a diagnostic at the step's span."""

    def __init__(self, code: str, message: str, step: Step, case: str | None = None, path: str | None = None,
                 help: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.step, self.case, self.path, self.help = code, message, step, case, path, help
        self.more: list[RunFailure] = []  # other cases of the same step that failed too


class Reporter(Protocol):
    """What the executor tells the outside world (progress bars, the run log)."""

    def step_started(self, step: Step, tasks: int) -> None: ...

    def task_done(self, step: Step, result: TaskResult) -> None: ...

    def step_finished(self, step: Step, outcome: StepOutcome) -> None: ...

    def epoch(self, step: Step, record: dict[str, object]) -> None:
        """A training step finished an epoch (`record`: epoch, epochs, loss, lr, val_<metric>, seconds)."""


class Executor(Protocol):
    def run(self, plan: Plan, options: RunOptions, reporter: Reporter) -> RunResult: ...


# ----- from a step to tasks -------------------------------------------------------------


def node_seed(run_seed: int, step_id: str) -> int:
    """The seed of one random step: from the run's seed and the step's name, so that
    editing another step does not change this one's draws."""
    return int(sha256_json([int(run_seed), step_id])[:15], 16)


def fused_seeds(step: Step, run_seed: int) -> list[int]:
    """The seeds of the steps a fused step replaced: each draws with the seed it has unfused."""
    return [node_seed(run_seed, original) for original in step.fused]


@dataclass
class Prepared:
    tasks: list[Task]
    value: RunValue
    fused_into: str | None = None  # the step this one is computed with (its tasks are in that step's)


class Preparer:
    """Turns steps into tasks and result references; shared by runs and dry runs."""

    def __init__(self, plan: Plan, options: RunOptions, memo: DigestMemo) -> None:
        self.plan, self.options, self.memo = plan, options, memo
        self.users = {sid: [s.id for s in plan.steps.values() if sid in s.inputs.values()] for sid in plan.steps}
        self.inline: dict[str, dict[str | None, Task]] = {}  # fused step -> its task per case
        self.tasks_of: dict[str, dict[str, Task]] = {}  # mapped step -> its task per case
        self.output_root = OutputRoot(options.out_dir, options.allow_outside_out)
        self.claims = Claims()  # the file each output writes: two on one file are E2012

    def fuses_into(self, step: Step) -> str | None:
        """The step that computes `step` in memory, case by case, instead of storing it:
        its one user, when the `place_storage` pass decided so (store = "memory")."""
        users = self.users[step.id]
        return users[0] if step.store == "memory" and len(users) == 1 else None

    def _fused(self, step: Step, tasks: list[Task], value: RunValue) -> Prepared:
        """Tasks as prepared, or, for a step fused into the next, kept for that step's chain."""
        user = self.fuses_into(step)
        if user is None:
            return Prepared(tasks, value)
        self.inline[step.id] = {t.case: t for t in tasks}
        return Prepared([], value, fused_into=user)

    def _index_id(self, step: Step, case: str | None) -> str:
        name = f"{self.plan.pipeline}/{step.id}"
        return f"{name}#{case}" if case is not None else name

    def _sources(self, step: Step, params: dict[str, object], writes: bool) -> dict[str, str]:
        """Content digests of the files and folders named by path parameters (those a
        writer writes are its output, not its input)."""
        sources: dict[str, str] = {}
        if writes:
            return sources
        for name in step.path_params:
            value = params.get(name)
            if not isinstance(value, str):
                continue
            path = Path(value)
            try:
                if path.is_dir():
                    sources[name] = folder_digest(path, memo=self.memo)
                elif path.is_file():
                    sources[name] = file_digest(path, self.memo)
                else:
                    sources[name] = "missing"  # the operator reports E1001 when it runs
            except OSError as exc:  # `png("/")`: a folder with unreadable parts, a file without permission
                raise DataError("E1032", f"cannot read `{value}`, named by `{name}` of `{step.op}`: "
                                f"{exc.strerror or exc}" + (f" (`{exc.filename}`)" if exc.filename else ""), value,
                                help="check the path and its permissions") from None
        return sources

    def _params(self, step: Step, case: str | None) -> dict[str, object]:
        """The step's constant arguments for one case: a writer's `path` resolved."""
        params = dict(step.params)
        if step.writes:
            params["path"] = self._writer_path(step, case)
        if step.fused and step.random:
            params["seeds"] = fused_seeds(step, self.options.seed)
        return params

    def _writer_path(self, step: Step, case: str | None) -> str:
        """The file a writer writes for `case` (the output-path rule, `runtime/outputs.py`):
        inside `--out` unless allowed (E2011), and written by no other output (E2012)."""
        target = self.output_root.target(step.op, str(step.params["path"]), case)
        why = self.output_root.escapes(target)
        if why is not None:
            failure = outside_failure(target, self.output_root, why)
            raise RunFailure(failure.code, failure.message, step, case, failure.path, failure.help)
        owner = f"`{step.label}`" + (f" (case {case})" if case is not None else "")
        other = self.claims.claim(target, owner)
        if other is not None:
            raise RunFailure("E2012", f"{owner} and {other} would both write {target}", step, case, str(target),
                             help="give each output its own file: put `*` (the case id) in a dataset writer's "
                             "path, and give two writers different paths")
        return str(target)

    def prepare(self, step: Step, values: dict[str, RunValue]) -> Prepared:
        if step.op in registry.SELECTIONS:
            return Prepared([], select(step, {k: values[v] for k, v in step.inputs.items()}, self.options.cache))
        source = registry.source(step.op)
        if source is not None and not step.inputs:
            return self._source(step, source)
        if step.mapped or (step.op in registry.PER_CASE and "reduce" not in step.lift):
            return self._mapped(step, values)
        return self._whole(step, values)

    def _key(self, step: Step, params: dict[str, object], inputs: dict[str, str], sources: dict[str, str],
             case: str | None) -> tuple[CacheKey, tuple[int, int] | None]:
        seed = node_seed(self.options.seed, step.id) if step.random else None
        key_params = {"ir": step.hash, "args": to_json(params), "lift": list(step.lift)}
        if step.random and case is not None:
            key_params["case"] = case
        key = CacheKey(step.op, step.version, key_params, inputs, sources, seed)
        rng = (seed, case_number(case or "")) if seed is not None else None
        return key, rng

    def _source(self, step: Step, source: object) -> Prepared:
        specs: list[CaseSpec] = source.list(**step.params)  # type: ignore[attr-defined]
        tasks, items = [], []
        for spec in specs:
            sources = {f: file_digest(f, self.memo) for f in spec.files}
            key = CacheKey(step.op, step.version, {"ir": step.hash, "args": to_json(step.params), "case": spec.id,
                                                   "spec": to_json(spec.args)}, {}, sources)
            tasks.append(Task(key, step.id, step.op, spec.id, dict(step.params), spec=spec, modality=step.modality,
                              module=step.module, declared=step.declared,
                              index_id=self._index_id(step, spec.id)))
            items.append((spec.id, key.digest()))
        return self._fused(step, tasks, Cases(tuple(items)))

    def _mapped(self, step: Step, values: dict[str, RunValue]) -> Prepared:
        datasets = {arg: values[sid] for arg, sid in step.inputs.items() if arg in step.dataset_inputs}
        singles = {arg: values[sid] for arg, sid in step.inputs.items() if arg not in step.dataset_inputs}
        ids = _zip_ids(step, datasets)
        lifted = next(iter(datasets), None)
        by_case = {arg: dict(cases.items) for arg, cases in datasets.items()}  # type: ignore[union-attr]
        upstream = self.inline.get(step.inputs[lifted], {}) if lifted is not None else {}
        tasks, items = [], []
        expand = registry.EXPANDS.get(step.op)
        for case in ids:
            refs = {arg: found[case] for arg, found in by_case.items()}
            refs.update({arg: v.ref for arg, v in singles.items() if isinstance(v, Single)})
            params, writes = self._params(step, case), step.writes
            key, rng = self._key(step, params, refs, self._sources(step, params, writes), case)
            before = upstream.get(case)
            chain = (*before.chain, replace(before, chain=())) if before is not None else ()
            tasks.append(Task(key, step.id, step.op, case, call_params(params), refs=refs, lift=step.lift, module=step.module,
                              lifted_arg=lifted, rng_seed=rng, writes=writes, index_id=self._index_id(step, case),
                              chain=chain, device=self.options.device))
            if expand is not None:
                items += [(f"{case}.{k}", f"{key.digest()}/{k}") for k in range(int(step.params[expand]))]  # type: ignore[arg-type]
            else:
                items.append((case, key.digest()))
        self.tasks_of[step.id] = {t.case: t for t in tasks if t.case is not None}
        return self._fused(step, tasks, Cases(tuple(items)))

    def recipes(self, step: Step) -> dict[str, Recipe]:
        """For `train`: how each training case was made from stored data, when random
        steps took part (the chain of the task that stored it, and the `patches` drawn
        before it), so that training draws them anew in every epoch. Keyed by the case
        ids of the training data (`c.k` for the k-th patch of case `c`)."""
        if step.op != "train" or "data" not in step.inputs:
            return {}
        data = self.plan.steps[step.inputs["data"]]
        recipes = {}
        for case, task in self.tasks_of.get(data.id, {}).items():
            stages = (*task.chain, replace(task, chain=()))
            if data.op in registry.EXPANDS:  # the training cases are this task's patches
                for k in range(int(data.params[registry.EXPANDS[data.op]])):  # type: ignore[arg-type]
                    recipes[f"{case}.{k}"] = Recipe(stages, (len(stages) - 1, k))
                continue
            recipe = self._after_patches(stages, case) or Recipe(stages)
            if any(stage.rng_seed is not None for stage in recipe.stages):
                recipes[case] = recipe
        return recipes

    def _after_patches(self, stages: tuple[Task, ...], case: str) -> Recipe | None:
        """A recipe starting at the patch sampling that made case `c.k`, when its first
        stage reads a stored patch: patch positions are then drawn anew too."""
        first = stages[0]
        source = self.plan.steps[first.step].inputs.get(first.lifted_arg or "")
        if source is None or self.plan.steps[source].op not in registry.EXPANDS or "." not in case:
            return None
        base, _, k = case.rpartition(".")
        sampler = self.tasks_of.get(source, {}).get(base)
        if sampler is None or not k.isdigit():
            return None
        before = (*sampler.chain, replace(sampler, chain=()))
        return Recipe((*before, *stages), (len(before) - 1, int(k)))

    def _whole(self, step: Step, values: dict[str, RunValue]) -> Prepared:
        refs, datasets, inputs = {}, {}, {}
        for arg, sid in step.inputs.items():
            value = values[sid]
            inputs[arg] = value.digest()
            if isinstance(value, Single):
                refs[arg] = value.ref
            elif isinstance(value, Cases):
                datasets[arg] = value.items
            else:
                raise RunFailure("E2001", f"`{step.op}` cannot take a split or folds as a whole yet", step)
        params, writes = self._params(step, None), step.writes
        key, rng = self._key(step, params, inputs, self._sources(step, params, writes), None)
        task = Task(key, step.id, step.op, None, call_params(params), refs=refs, datasets=datasets, lift=step.lift,
                    module=step.module, declared=step.declared,
                    lifted_arg=next(iter(step.inputs), None), rng_seed=rng, writes=writes,
                    index_id=self._index_id(step, None), device=self.options.device, recipes=self.recipes(step))
        return Prepared([task], Single(key.digest()))


def call_params(params: dict[str, object]) -> dict[str, object]:
    """A step's constant arguments as its function receives them: operator values as
    `OperatorRef`s, with the conversions the checker attached (`metric.pred=@argmax`)
    folded into the operator they belong to."""
    converted: dict[str, object] = {}
    for name, value in params.items():
        if "." not in name:
            converted[name] = _operator_ref(value)
    for name, value in params.items():
        if "." in name:
            owner, _, slot = name.partition(".")
            ref = converted.get(owner)
            if isinstance(ref, OperatorRef):
                converted[owner] = replace(ref, inputs={**ref.inputs, slot: _operator_ref(value)})
    return converted


def _operator_ref(value: object) -> object:
    if isinstance(value, OpValue):
        return OperatorRef(value.op, {k: _operator_ref(v) for k, v in value.args})
    return value


def _zip_ids(step: Step, datasets: dict[str, RunValue]) -> list[str]:
    """The case ids a mapped step runs over: those of its first dataset input, which every
    other dataset input must have too (E1013 otherwise)."""
    lists = {}
    for arg, value in datasets.items():
        if not isinstance(value, Cases):
            raise RunFailure("E2001", f"`{step.op}` over a split is not supported; select a part with `.train`", step)
        lists[arg] = [case for case, _ in value.items]
    if not lists:
        return []
    first_arg, first = next(iter(lists.items()))
    for arg, ids in lists.items():
        missing, extra = sorted(set(first) - set(ids)), sorted(set(ids) - set(first))
        if missing or extra:
            shown = ", ".join((missing or extra)[:5])
            raise RunFailure("E1013", f"`{step.label}` pairs `{first_arg}` and `{arg}` case by case, but "
                             f"{len(missing or extra)} case(s) are only in `{first_arg if missing else arg}`: {shown}",
                             step, help="both datasets must come from the same cases (the same part of a split)")
    return first


# ----- selections --------------------------------------------------------------------


def select(step: Step, inputs: dict[str, RunValue], cache: Cache) -> RunValue:
    """Run a selection on references: the data operators only look at case ids (and, to
    stratify, at class labels, which are read from the cache)."""
    from medasl.ops import data  # NumPy-free, but only the runtime needs it

    if step.op == "field":
        base, name = inputs["_"], str(step.params["name"])
        if isinstance(base, Parts):
            return base.parts[name]
        if isinstance(base, Cases):
            return Cases(tuple((case, member(ref, name)) for case, ref in base.items))
        assert isinstance(base, Single)
        return Single(member(base.ref, name))

    def cases(value: RunValue, load: bool = False) -> list[Case]:
        assert isinstance(value, Cases)
        return [Case(cid, load_ref(cache, ref) if load else ref) for cid, ref in value.items]

    refs = {cid: ref for v in inputs.values() if isinstance(v, Cases) for cid, ref in v.items}

    def back(found: Iterable[Case]) -> Cases:
        return Cases(tuple((c.id, refs[c.id]) for c in found))

    args = dict(step.params)
    op = registry.function(step.op)
    if step.op == "fold":
        folds = inputs["folds"]
        assert isinstance(folds, Parts)
        refs.update({cid: ref for part in folds.parts.values() for cid, ref in part.items})
        args["folds"] = data.Folds([cases(folds.parts[str(k)]) for k in range(len(folds.parts))])
    for arg, value in inputs.items():
        if arg != "folds":
            args[arg] = cases(value, load=bool(step.params.get("stratify")))
    result = op(**args)
    if isinstance(result, data.Split):
        return Parts({"train": back(result.train), "val": back(result.val), "test": back(result.test)})
    if isinstance(result, data.Folds):
        return Parts({str(k): back(f) for k, f in enumerate(result.folds)})
    return back(result)  # type: ignore[arg-type]


# ----- running -----------------------------------------------------------------------


PR_SET_PDEATHSIG = 1  # linux/prctl.h


_TRACKER_FILTER = "ignore:resource_tracker:UserWarning"


def _quiet_resource_tracker() -> None:
    """After Ctrl-C stops the workers, multiprocessing's resource tracker (a process of
    its own, started with the pool) may warn that a semaphore of the pool "leaked" while
    reporting in the same breath that it no longer exists: the pool unlinked it, and the
    stopped worker's message saying so came too late. The tracker removes any that
    remain in any case; its warnings are for multiprocessing's developers, not for a
    user who pressed Ctrl-C, so it starts with them off (it takes the `-W` options of
    sys.warnoptions). tests/test_interrupt.py checks that no semaphore is left behind."""
    if _TRACKER_FILTER not in sys.warnoptions:
        sys.warnoptions.append(_TRACKER_FILTER)


def _init_worker(threads: int, parent: int) -> None:
    """Set up a worker process. Ctrl-C in a terminal reaches the whole process group:
    workers ignore it and the run (`parent`) decides, stopping them itself. A worker
    exits when the run dies, even by `kill -9`, which gives the run no chance to."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent(parent)
    import SimpleITK as sitk  # noqa: N813 (the alias SimpleITK documents)

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)


def _die_with_parent(parent: int) -> None:
    """On Linux the kernel kills this process when the thread that spawned it ends
    (prctl PR_SET_PDEATHSIG; the pool is shut down before the step threads that start
    workers end). A thread that compares the parent's pid every second covers the other
    systems, and a parent that died before the prctl call is caught at once."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent,), name="medasl-watch-parent", daemon=True).start()


def _watch_parent(parent: int) -> None:
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:  # reparented: the run is gone
            os._exit(1)


class LocalExecutor:
    """This machine: steps concurrently when independent, tasks in `workers` processes
    (or in this process when `workers` is 1)."""

    def __init__(self) -> None:
        self._pool: cf.ProcessPoolExecutor | None = None
        self._pool_lock = threading.Lock()  # two steps may ask for the pool at once
        self._cancel = threading.Event()  # set on Ctrl-C: step threads stop between tasks, trainings between batches

    def _workers(self, options: RunOptions) -> cf.ProcessPoolExecutor | None:
        if options.workers <= 1:
            return None
        with self._pool_lock:
            if self._cancel.is_set():
                raise KeyboardInterrupt  # Ctrl-C: no new pool once the old one is stopped
            if self._pool is None:
                _quiet_resource_tracker()
                threads = max(1, (os.cpu_count() or 1) // options.workers)
                self._pool = cf.ProcessPoolExecutor(options.workers, mp_context=multiprocessing.get_context("spawn"),
                                                    initializer=_init_worker, initargs=(threads, os.getpid()))
            return self._pool

    def stop(self) -> None:
        """Stop the run at its next safe point, as Ctrl-C does (a training at its next
        batch, keeping its finished epochs): `medasc tune` stops a hopeless trial early."""
        self._cancel.set()

    def _close_pool(self, stop_now: bool = False) -> None:
        """Shut the worker pool down; with `stop_now` (Ctrl-C) without waiting for the
        cases in progress: their workers are terminated (what they committed stays)."""
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is None:
            return
        if stop_now:
            workers = list(getattr(pool, "_processes", None) or {})  # pids; private, but stable since Python 3.2
            pool.shutdown(wait=False, cancel_futures=True)
            for pid in workers:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGTERM)
        pool.shutdown(wait=True, cancel_futures=True)

    def run(self, plan: Plan, options: RunOptions, reporter: Reporter) -> RunResult:
        clock = time.perf_counter()
        values: dict[str, RunValue] = {}
        outcomes: dict[str, StepOutcome] = {}
        forced = plan.downstream(set(options.force))
        with options.cache.digest_memo() as memo:
            preparer = Preparer(plan, options, memo)
            try:
                self._schedule(plan, options, reporter, preparer, forced, values, outcomes)
            finally:
                self._close_pool()
        return RunResult(plan, values, outcomes, time.perf_counter() - clock)

    def _schedule(self, plan: Plan, options: RunOptions, reporter: Reporter, preparer: Preparer, forced: set[str],
                  values: dict[str, RunValue], outcomes: dict[str, StepOutcome]) -> None:
        remaining = list(plan.steps.values())
        running: dict[cf.Future[StepOutcome], Step] = {}
        failure: BaseException | None = None
        with cf.ThreadPoolExecutor(max_workers=4, thread_name_prefix="medasl-step") as threads:
            try:
                while remaining or running:
                    if failure is None:
                        for step in [s for s in remaining if all(i in outcomes for i in s.inputs.values())]:
                            remaining.remove(step)
                            running[threads.submit(self._step, step, options, reporter, preparer, step.id in forced,
                                                   values)] = step
                    if not running:
                        break
                    done, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
                    for future in done:
                        step = running.pop(future)
                        try:
                            outcomes[step.id] = future.result()
                        except BaseException as exc:  # noqa: BLE001 - re-raised once running steps stop
                            failure = failure or exc
                    if failure is not None and remaining:
                        remaining.clear()
            except KeyboardInterrupt:
                raise self._interrupted(running) from None
            finally:
                self._close_pool()  # while the step threads that started the workers live (see _die_with_parent)
        if failure is not None:
            raise failure

    def _interrupted(self, running: dict[cf.Future[StepOutcome], Step]) -> Interrupted:
        """Ctrl-C: every running step stops at its next safe point (between tasks; a
        training between batches), workers at once; wait for that (a second Ctrl-C
        does not: `medasc run` exits at once then). What the stopped trainings kept."""
        self._cancel.set()
        self._close_pool(stop_now=True)
        cf.wait(running)
        notes = []
        for future, step in running.items():
            stopped = future.exception()
            if isinstance(stopped, Interrupted):
                notes += [f"`{step.label}` {note}" for note in stopped.notes]
        return Interrupted(*notes)

    def _step(self, step: Step, options: RunOptions, reporter: Reporter, preparer: Preparer, force: bool,
              values: dict[str, RunValue]) -> StepOutcome:
        clock = time.perf_counter()
        try:
            prepared = preparer.prepare(step, values)
        except DataError as exc:
            raise _data_failure(exc, step, None) from None
        values[step.id] = prepared.value
        outcome = StepOutcome(step.id, tasks=len(prepared.tasks), fused_into=prepared.fused_into)
        reporter.step_started(step, len(prepared.tasks))
        if force:
            for task in prepared.tasks:
                options.cache.discard(task.key)
                if task.op == "train":
                    CacheCheckpoints(options.cache, task.key).clear()  # else it "resumes" at its last epoch
        failures: list[RunFailure] = []
        hooks = Hooks(progress=lambda record: reporter.epoch(step, record), stop=self._cancel.is_set)
        for result in self._run_tasks(preparer.plan.steps, prepared.tasks, options, hooks, preparer.memo.digest):
            if isinstance(result, RunFailure):
                failures.append(result)  # the other cases still run: all bad files are named at once
                continue
            outcome.computed += result.computed
            outcome.cached += not result.computed
            outcome.busy += result.seconds
            reporter.task_done(step, result)
        if failures:
            failures[0].more = failures[1:]
            raise failures[0]
        outcome.seconds = time.perf_counter() - clock
        reporter.step_finished(step, outcome)
        return outcome

    def _run_tasks(self, steps: dict[str, Step], tasks: Sequence[Task], options: RunOptions,
                   hooks: Hooks, digest: Callable[[Path], str] | None = None) -> Iterable[TaskResult | RunFailure]:
        root = str(options.cache.root)
        todo = []
        for task in tasks:  # cached results are reported without a round trip to a worker
            entry = options.cache.lookup(task.key, node_id=task.index_id)  # names a damaged entry
            # A writer whose files are intact (sizes and digests; `digest` reads each unchanged
            # file at most once) is cached too: checked here, so that a cached run starts no
            # worker process (run_task checks the same, and rewrites them).
            if entry is None or (task.writes and not files_intact(entry.manifest, digest)):
                todo.append(task)
                continue
            record(options.cache, task)
            yield TaskResult(task.key.digest(), False, 0.0, task.step, task.case)
        pool = self._workers(options) if len(todo) > 1 else None
        if pool is None:
            for task in todo:
                if self._cancel.is_set():
                    raise KeyboardInterrupt
                yield _guarded(steps, task, lambda t=task: _in_process(root, t, hooks))
            return
        futures = {pool.submit(run_task, root, task): task for task in todo}
        try:
            for future in cf.as_completed(futures):
                if self._cancel.is_set():
                    raise KeyboardInterrupt  # Ctrl-C: the pool was shut down, its workers stopped
                yield _guarded(steps, futures[future], future.result)
        finally:
            for future in futures:
                future.cancel()


_COMPUTING = threading.Lock()
"""Held while a task computes in this process. Independent steps are scheduled in threads,
but their operators run one at a time here: SimpleITK, NumPy and torch each use every
core already, and native libraries are not all safe to call from two threads at once.
Parallel work across cases goes to worker processes (`--workers`)."""


def _in_process(root: str, task: Task, hooks: Hooks) -> TaskResult:
    with _COMPUTING:
        if hooks.stop is not None and hooks.stop():
            raise KeyboardInterrupt  # Ctrl-C while this task waited for its turn
        return run_task(root, task, hooks)


def _guarded(steps: dict[str, Step], task: Task, call: Callable[[], TaskResult]) -> TaskResult | RunFailure:
    """Run one task; the user's data problems come back as a `RunFailure` for the step
    (of a fused chain, the one that failed) and case; anything else is a bug and
    propagates with its traceback."""
    step = steps[task.step]
    try:
        return call()
    except DataError as exc:
        return _data_failure(exc, steps.get(getattr(exc, "step", task.step), step), task.case)
    except MemoryError:
        return RunFailure("E2002", f"out of memory while running `{step.op}`" +
                          (f" on case {task.case}" if task.case else ""), step, task.case,
                          help="results computed so far are kept; rerun with `--workers 1` or smaller sizes")
    except MissingInput as exc:
        return RunFailure("E2004", str(exc), step, task.case, help="run again: missing results are recomputed")


def _data_failure(exc: DataError, step: Step, case: str | None) -> RunFailure:
    return RunFailure(exc.code, exc.message, step, case, exc.path, exc.help)


# ----- dry runs ------------------------------------------------------------------------


@dataclass
class StepPreview:
    """What a run would do with one step: how many of its results are cached, new or
    stale, and why."""

    step: str
    tasks: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)
    unknown: str | None = None  # why the step's work cannot be known before running
    fused_into: str | None = None

    @property
    def status(self) -> str:
        if self.unknown:
            return "unknown"
        if self.fused_into:
            return "fused"
        if self.tasks == 0:
            return "selected"
        for status in ("forced", "stale", "new"):
            if self.counts.get(status):
                return status
        return "cached"


def preview(plan: Plan, options: RunOptions) -> dict[str, StepPreview]:
    """Each step as cached, stale (with what changed) or new, without running or
    writing anything except the source-digest memo."""
    values: dict[str, RunValue] = {}
    previews: dict[str, StepPreview] = {}
    forced = plan.downstream(set(options.force))
    with options.cache.digest_memo() as memo:
        preparer = Preparer(plan, options, memo)
        for step in plan.steps.values():
            found = StepPreview(step.id)
            previews[step.id] = found
            blocked = [i for i in step.inputs.values() if previews[i].unknown]
            if blocked:
                found.unknown = f"follows `{plan.steps[blocked[0]].label}`"
                continue
            try:
                prepared = preparer.prepare(step, values)
            except MissingInput:
                found.unknown = "needs data that is not computed yet"
                continue
            except DataError as exc:
                raise _data_failure(exc, step, None) from None
            values[step.id] = prepared.value
            found.tasks = len(prepared.tasks) or len(preparer.inline.get(step.id, {}))
            found.fused_into = prepared.fused_into
            tasks = prepared.tasks or list(preparer.inline.get(step.id, {}).values())
            for task in tasks:
                explanation = _explain(options.cache, task, fused=prepared.fused_into is not None,
                                       digest=memo.digest)
                status = "forced" if step.id in forced else explanation.status
                found.counts[status] = found.counts.get(status, 0) + 1
                resumes = resume_note(options.cache, task) if status in ("new", "stale") else None
                if resumes is not None and resumes not in found.reasons:
                    found.reasons.insert(0, resumes)  # an interrupted training: first, before why it is not cached
                new_anyway = resumes is not None and status == "new"  # "no earlier result" would only confuse
                for reason in [] if new_anyway else _reasons(plan, step, explanation):
                    if reason not in found.reasons:
                        found.reasons.append(reason)
    return previews


def _reasons(plan: Plan, step: Step, explanation: Explanation) -> list[str]:
    """Why a result is stale, in the user's terms: a changed input names the step it
    comes from (digests mean nothing to a reader), a changed seed is said once."""
    if not explanation.changes:
        return list(explanation.reasons)
    reasons = []
    compiled = [c for c in explanation.changes if c.part == "param" and c.name == "ir"]
    if compiled and len(compiled) == len(explanation.changes):
        return ["the compiled step changed (another -O level, or a new version of medasl's passes)"]
    for change in explanation.changes:
        if change in compiled:
            continue  # the node's structural hash changes with any change below: said in the user's terms
        if change.part == "input" and change.name in step.inputs:
            reasons.append(f"input `{change.name}` changed (from `{plan.steps[step.inputs[change.name]].label}`)")
        elif change.part == "seed":
            reasons.append("the seed changed")
        elif change.part == "source":
            reasons.append(f"the file behind `{change.name}` changed")
        elif change.part == "param" and change.name and change.name.startswith("args."):
            reasons.append(replace(change, name=change.name[len("args."):]).describe())
        else:
            reasons.append(change.describe())
    return reasons


def _explain(cache: Cache, task: Task, fused: bool = False,
             digest: Callable[[Path], str] | None = None) -> Explanation:
    """cached, new or stale; a fused step is never stored, so it is `unchanged` or
    `stale` against the key it had when its chain last ran."""
    if fused:
        previous = cache.previous(task.key.op, task.index_id) if task.index_id else None
        if previous is None:
            return Explanation("new", task.key.digest(), ["no earlier result for this step"])
        if previous[0] == task.key.digest():
            return Explanation("unchanged", task.key.digest())
        changes = diff_parts(previous[1], task.key.parts())
        return Explanation("stale", task.key.digest(), [c.describe() for c in changes], changes, previous[0])
    explanation = cache.explain(task.key, task.index_id)
    if explanation.status == "cached" and task.writes:
        entry = cache.lookup(task.key)
        if entry is not None and not files_intact(entry.manifest, digest):
            return Explanation("new", explanation.digest, ["a file it wrote was removed or changed"])
    return explanation
