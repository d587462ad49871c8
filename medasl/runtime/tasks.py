"""One unit of work: an operator applied to one case (or to one whole value), its
result committed to the cache. Tasks are plain data so that a worker process can run
them; whatever runs a task needs only the cache root.

A value in the cache is named by a *reference*: the digest of the entry that holds it,
optionally followed by a path inside the stored value (`<digest>/input` is the image of
a stored pair, `<digest>/2` the third patch of a case). Selections (`field`, `split`)
and case-by-case datasets are lists of references, never copies.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from medasl.runtime import fusion, registry
from medasl.runtime.cache import Cache, CacheKey, PendingEntry
from medasl.runtime.digests import write_json_atomic
from medasl.runtime.errors import DataError
from medasl.runtime.outputs import files_intact, written_record
from medasl.runtime.store import StoreError, encode_value, load_value, save_value
from medasl.runtime.values import Case, CaseSpec, Measured, Network, Pair, Volume, carried

PAIR_MEMBERS = {"image": "input", "label": "target", "input": "input", "target": "target"}


class MissingInput(RuntimeError):
    """An input a task reads is not in the cache (removed by `cache gc` during the run)."""


# ----- references --------------------------------------------------------------------


def load_ref(cache: Cache, ref: str) -> object:
    """The value a reference names, arrays memory-mapped from the cache."""
    digest, *parts = ref.split("/")
    entry = cache.lookup(digest)
    if entry is None:
        raise MissingInput(f"cache entry {digest[:12]} disappeared during the run")
    try:
        value = load_value(entry.path, doc=entry.value_doc)  # small values are in the manifest, read already
    except StoreError as exc:
        raise MissingInput(f"cache entry {digest[:12]} is damaged: {exc}") from exc
    for part in parts:
        value = getattr(value, part) if isinstance(value, Pair) else value[int(part)]  # type: ignore[index]
    return value


def member(ref: str, name: str) -> str:
    """The reference of a pair's member (`image`/`label` as the language calls them)."""
    return f"{ref}/{PAIR_MEMBERS[name]}"


class CachedCases(Sequence[Case]):
    """A dataset handed whole to an operator: cases read from the cache only when asked
    for, so a long dataset never has to fit in memory."""

    def __init__(self, cache_root: str, cases: Sequence[tuple[str, str]]) -> None:
        self.cache_root = cache_root
        self.cases = list(cases)

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, index: int) -> Case:  # type: ignore[override]
        case_id, ref = self.cases[index]
        return Case(case_id, load_ref(Cache(self.cache_root), ref))

    def __iter__(self) -> Iterator[Case]:
        return (self[i] for i in range(len(self)))


# ----- training checkpoints -----------------------------------------------------------


@dataclass
class Hooks:
    """Callbacks into the process that started a task (only for tasks run in it)."""

    progress: Callable[[dict[str, object]], None] | None = None
    stop: Callable[[], bool] | None = None  # true once the user pressed Ctrl-C: a training stops at its next batch


class CacheCheckpoints:
    """`train`'s per-epoch state as cache entries keyed by the training's own key and the
    epoch: a killed training resumes at its last finished epoch. Only the latest epoch is
    kept; its state is stored like any value (arrays as .npy, the rest JSON)."""

    def __init__(self, cache: Cache, train_key: CacheKey) -> None:
        self.cache, self.train_key = cache, train_key.digest()

    def _key(self, epoch: int) -> CacheKey:
        return CacheKey("train.checkpoint", 1, {"train": self.train_key, "epoch": epoch})

    def _candidates(self) -> tuple[int, ...]:
        """The epochs whose checkpoint may be the latest, newest first."""
        pointer = self.cache.root / "checkpoints" / f"{self.train_key}.json"
        try:
            epoch = int(json.loads(pointer.read_text())["epoch"])
        except (OSError, ValueError, KeyError, TypeError):
            return ()
        return tuple(e for e in (epoch, epoch - 1) if e > 0)  # the pointer may be one step ahead of a killed gc

    def latest(self) -> dict[str, object] | None:
        for candidate in self._candidates():
            entry = self.cache.lookup(self._key(candidate))
            if entry is not None:
                try:
                    state = load_value(entry.path, mmap=False)
                except StoreError:
                    continue
                if isinstance(state, dict):
                    return state
        return None

    def finished_epoch(self) -> int | None:
        """The last epoch a stopped training finished and committed (None: none), found
        without reading its state: what `--dry-run` says a run resumes from."""
        for candidate in self._candidates():
            if self.cache.lookup(self._key(candidate)) is not None:
                return candidate
        return None

    def clear(self) -> None:
        """Forget the checkpoints (`--force`: train from the start, not from the last epoch)."""
        for candidate in self._candidates():
            self.cache.discard(self._key(candidate))
        (self.cache.root / "checkpoints" / f"{self.train_key}.json").unlink(missing_ok=True)

    def save(self, epoch: int, state: dict[str, object]) -> None:
        with self.cache.write(self._key(epoch)) as pending:
            save_value(state, pending.path)
        write_json_atomic(self.cache.root / "checkpoints" / f"{self.train_key}.json", {"epoch": epoch})
        if epoch > 1:
            self.cache.discard(self._key(epoch - 1))


def resume_note(cache: Cache, task: Task) -> str | None:
    """For `--dry-run`: where a training that is not cached starts, when an earlier
    run of it was stopped (Ctrl-C, kill) after finishing some epochs."""
    if task.op != "train":
        return None
    done = CacheCheckpoints(cache, task.key).finished_epoch()
    if done is None:
        return None
    epochs = task.params.get("epochs")
    total = f" of {epochs}" if isinstance(epochs, int) else ""
    kept = "epoch 1 was" if done == 1 else f"epochs 1-{done} were"
    return f"resumes from epoch {done + 1}{total}: {kept} finished by an interrupted run"


@dataclass(frozen=True)
class Recipe:
    """How one training case is made from stored data: `stages` run in order, the first
    reading its input from the cache; with `pick = (i, k)`, stage `i` makes several cases
    (`patches`) and this case is its `k`-th."""

    stages: tuple[Task, ...]
    pick: tuple[int, int] | None = None


class EpochAugmenter:
    """The training cases of epoch `e`, augmented anew: the random steps that made a case
    (its `Recipe`) run again from their stored input with the generator
    `default_rng([step seed, case number, e])`. Epoch 1 uses the cached draw; every epoch
    is reproducible from the seed, so a resumed training continues exactly."""

    def __init__(self, cache: Cache, recipes: dict[str, Recipe]) -> None:
        self.cache, self.recipes = cache, recipes
        self._sampled: dict[tuple[str, int], object] = {}  # one patch draw per case and epoch, shared by its patches

    def __call__(self, case: str, epoch: int) -> object | None:
        recipe = self.recipes.get(case)
        if recipe is None:
            return None
        value: object = None
        for position, stage in enumerate(recipe.stages):
            again = replace(stage, rng_seed=(*stage.rng_seed, epoch)) if stage.rng_seed else stage
            if recipe.pick is not None and position == recipe.pick[0]:
                key = (stage.key.digest(), epoch)
                if key not in self._sampled:
                    self._sampled = {k: v for k, v in self._sampled.items() if k[1] == epoch}
                    self._sampled[key] = _compute_stage(self.cache, again, value, {})
                value = self._sampled[key][recipe.pick[1]]  # type: ignore[index]
            else:
                value = _compute_stage(self.cache, again, value, {})
        return value


# ----- tasks -------------------------------------------------------------------------


@dataclass(frozen=True)
class Task:
    """Apply `op` once and commit the result under `key`.

    `refs` are the arguments read from the cache (one reference each; `datasets` whole
    datasets as (id, reference) pairs); `params` the constants. With a `chain`, the
    lifted argument is instead the value computed by the chain's last step. `spec` is set for a case
    of a source dataset, which is read rather than computed. `rng_seed` is set for a
    random operator: the generator of this case is `default_rng(rng_seed)`.
    """

    key: CacheKey
    step: str
    op: str
    case: str | None
    params: dict[str, object]
    refs: dict[str, str] = field(default_factory=dict)
    datasets: dict[str, tuple[tuple[str, str], ...]] = field(default_factory=dict)
    lift: tuple[str, ...] = ()
    lifted_arg: str | None = None
    spec: CaseSpec | None = None
    rng_seed: tuple[int, int] | None = None
    modality: str | None = None
    declared: object = None  # a reader's declared result (`Step.declared`): the data read is checked against it
    writes: bool = False
    index_id: str | None = None  # the name this result is remembered under, for `--dry-run`
    chain: tuple[Task, ...] = ()  # steps fused into this one: computed first, in memory, not stored
    device: str = "cpu"
    recipes: dict[str, Recipe] = field(default_factory=dict)  # train: how each training case is made
    module: str = ""  # the plan's std module of `op` (`std.pre`), so a worker needs no table or stdlib to place it


@dataclass(frozen=True)
class TaskResult:
    digest: str
    computed: bool
    seconds: float
    step: str
    case: str | None


def case_number(case_id: str) -> int:
    """A stable integer for a case id (for the case's random generator)."""
    return int.from_bytes(hashlib.sha256(case_id.encode()).digest()[:8], "little")


def run_task(cache_root: str, task: Task, hooks: Hooks | None = None) -> TaskResult:
    """Run one task unless its result is cached (and, for a writer, its files still exist).
    `hooks` reach the caller only when the task runs in its process (training progress)."""
    cache = Cache(cache_root)
    clock = time.perf_counter()
    entry = cache.lookup(task.key)
    if entry is not None and task.writes and not files_intact(entry.manifest):
        cache.discard(task.key)  # the user removed or changed a written file: write it again
        entry = None
    if entry is not None:
        record(cache, task)
        return TaskResult(task.key.digest(), False, time.perf_counter() - clock, task.step, task.case)
    entry, computed = cache.ensure(task.key, lambda pending: _produce(cache, task, pending, hooks),
                                   node_id=task.index_id, known_missing=True)  # just looked: straight to the lock
    record_chain(cache, task)
    return TaskResult(entry.digest, computed, time.perf_counter() - clock, task.step, task.case)


def record_chain(cache: Cache, task: Task) -> None:
    """Remember the keys of the steps fused into `task`: they are never stored, but
    `--dry-run` compares their keys too, to say which of them changed."""
    for stage in task.chain:
        if stage.index_id:
            cache.record(stage.index_id, stage.key)


def record(cache: Cache, task: Task) -> None:
    """Remember the key of a task found in the cache (and of its chain) as the latest of its step."""
    if task.index_id:
        cache.record(task.index_id, task.key)
    record_chain(cache, task)


def _produce(cache: Cache, task: Task, pending: PendingEntry, hooks: Hooks | None) -> None:
    value, info = compute(cache, task, hooks)
    # the value's JSON goes into the manifest (one file per small result); large arrays
    # into value.bin, whose digest the entry records without reading it back
    pending.value, digests = encode_value(value, pending.path)
    pending.digests.update(digests)
    pending.info.update(info)


def compute(cache: Cache, task: Task, hooks: Hooks | None = None) -> tuple[object, dict[str, object]]:
    """The task's value and what to record about it: the parameters each random step
    drew (by step), the files a writer wrote. The steps of `task.chain` run first, in
    memory, each feeding the next; only the last result is stored."""
    info: dict[str, object] = {}
    value: object = None
    for stage in (*task.chain, task):
        try:
            value = _compute_stage(cache, stage, value, info, hooks)  # the first stage reads its inputs from the cache
        except DataError as exc:
            exc.step = stage.step  # type: ignore[attr-defined]  # the diagnostic points at this stage's line
            raise
    if task.writes:
        files = [Path(p) for p in value]  # type: ignore[union-attr]
        info["files"] = written_record(files)  # size and sha256: `files_intact` checks both
        value = [str(p) for p in files]
    return value, info


def _compute_stage(cache: Cache, task: Task, upstream: object, info: dict[str, object],
                   hooks: Hooks | None = None) -> object:
    """One operator application; `upstream` (when not None) is the value of the lifted
    argument, computed by the previous stage of a chain instead of read from the cache."""
    if task.spec is not None:
        source = registry.source(task.op)
        assert source is not None
        return _conform(_declare_modality(source.load(task.spec), task.modality), task)  # type: ignore[attr-defined]
    area = task.module.removeprefix("std.") if task.module.startswith("std.") else registry.area(task.op)
    args: dict[str, object] = dict(task.params)
    for name, ref in task.refs.items():
        args[name] = upstream if upstream is not None and name == task.lifted_arg else load_ref(cache, ref)
    _gather_tuples(args)
    for name, cases in task.datasets.items():
        found = CachedCases(str(cache.root), cases)
        args[name] = found if area == "train" else [case.value for case in found]
    if area == "nets":
        from medasl.ops import nets

        return Network(task.op, dict(args), nets.build(task.op, args, seed=0))
    if task.op in registry.COLLECTS:
        _collect(args, task.datasets)
    elif area == "report" and isinstance(args.get("metrics"), Measured):
        args["metrics"] = [args["metrics"]]
    elif area == "report" and isinstance(args.get("metrics"), tuple):
        args["metrics"] = list(args["metrics"])  # type: ignore[arg-type]
    if task.op == "train":
        args.update(checkpoints=CacheCheckpoints(cache, task.key), device=task.device,
                    progress=hooks.progress if hooks is not None else None,
                    stop=hooks.stop if hooks is not None else None,
                    augment=EpochAugmenter(cache, task.recipes) if task.recipes else None)
    elif task.op == "infer":
        args["device"] = task.device
    if task.op in registry.GETS_CASE_ID:
        args[registry.GETS_CASE_ID[task.op]] = task.case
    if "reduce" in task.lift:
        return _reduce(task, args)
    if task.op in fusion.FUSED_OPS:
        value, drawn = fusion.run_fused(task.op, args[task.lifted_arg or "x"], args["chain"],  # type: ignore[arg-type]
                                        args.get("seeds"), task.rng_seed, task.device)  # type: ignore[arg-type]
        if drawn:
            info.setdefault("drawn", {})[task.step] = drawn  # type: ignore[index]
        return value
    function = registry.function(task.op)
    if task.rng_seed is not None:
        args["rng"] = np.random.default_rng(list(task.rng_seed))
        value, drawn = function(**args)  # random operators get the whole pair: one draw for both parts
        info.setdefault("drawn", {})[task.step] = drawn  # type: ignore[index]
        return value
    if task.lifted_arg is not None and task.op not in registry.TAKES_PAIRS and {"pair", "image", "label"} & set(task.lift):
        return _apply_to_members(function, args, task.lifted_arg, task.lift[-1])
    if area == "metrics":
        return _measured_once(task, function, args)
    return _conform(function(**args), task)


def _conform(value: object, task: Task) -> object:
    """What a reader gave, checked against what the pipeline declares it to be (label
    values within the classes, dimensions), and label maps made label maps."""
    if task.declared is None:
        return value
    from medasl.ops import io  # loaded already: a reader just ran

    return io.conform(value, task.declared)


def _gather_tuples(args: dict[str, object]) -> None:
    """Put the values read for a tuple's references (`metrics[0]`, `metrics[1]`) into
    its template (`metrics`, with None where they go): see `medasl.lower.plan`."""
    for name in [n for n in args if n.endswith("]") and "[" in n]:
        base, index = name[:-1].split("[", 1)
        template = args.get(base)
        if isinstance(template, tuple):
            items = list(template)
            items[int(index)] = args.pop(name)
            args[base] = tuple(items)


def _collect(args: dict[str, object], datasets: dict[str, tuple[tuple[str, str], ...]]) -> None:
    """`html`'s runtime-only arguments: the figures the pipeline shows, named by the step
    that made them (a figure per case by its case too), and its metrics."""
    figures: list[tuple[str, object]] = []
    metrics: list[object] = []
    for name in [n for n in args if n.startswith(("figures.", "metrics."))]:
        value = args.pop(name)
        label = name.split(".", 1)[1]
        if name.startswith("metrics."):
            metrics.append(value)
        elif isinstance(value, list):
            cases = [case for case, _ in datasets.get(name, ())]
            figures += [(f"{label} {case}", v) for case, v in zip(cases, value)]
        else:
            figures.append((label, value))
    args["figures"], args["metrics"] = figures, metrics


def _reduce(task: Task, args: dict[str, object]) -> Measured:
    """A metric over a dataset: per case and averaged, or over all cases at once for the
    metrics that only exist for a set (AUC, accuracy, FROC)."""
    from medasl.ops import metrics

    function = registry.function(task.op)
    goal = metrics.GOALS[task.op]
    inputs = {name: cases for name, cases in task.datasets.items()}
    options = {k: v for k, v in args.items() if k not in inputs}
    if task.op in metrics.DATASET_LEVEL:
        value = float(function(**options, **{name: args[name] for name in inputs}))  # type: ignore[arg-type]
        return Measured(task.op, goal, value)
    ids = [case for case, _ in next(iter(inputs.values()))]
    per_case = {}
    for index, case in enumerate(ids):
        per_case[case] = float(function(**options, **{name: args[name][index] for name in inputs}))  # type: ignore[index]
    per_class = None
    if task.op in metrics.LABEL_METRICS and {"pred", "target"} <= inputs.keys():
        per_class = metrics.by_class(task.op, list(zip(args["pred"], args["target"])), options)  # type: ignore[call-overload]
    return metrics.reduce(task.op, per_case, goal, per_class)


def _measured_once(task: Task, function: Callable[..., object], args: dict[str, object]) -> Measured:
    """A metric of one prediction and one target (not datasets) is a `Metric` too, as
    the language types it: one value, per class for label maps."""
    from medasl.ops import metrics

    value = float(function(**args))  # type: ignore[arg-type]
    per_class = None
    if task.op in metrics.LABEL_METRICS:
        options = {k: v for k, v in args.items() if k not in ("pred", "target")}
        per_class = metrics.by_class(task.op, [(args["pred"], args["target"])], options)  # type: ignore[list-item]
    return Measured(task.op, metrics.GOALS[task.op], value, {}, dict(per_class or {}))


def _apply_to_members(function: Callable[..., object], args: dict[str, object], name: str, mode: str) -> object:
    """A deterministic operator lifted over a pair: applied to both members (`[pair]`),
    to the image only (`[image]`: intensities) or to the label only (`[label]`). A
    spatial operator's target without a voxel grid (boxes) follows the image: the
    std.pre operators move nothing in world coordinates, so boxes are only clipped to
    the new grid (`values.carried`)."""
    pair = args[name]
    if not isinstance(pair, Pair):
        return function(**args)
    image = pair.input if mode == "label" else function(**{**args, name: pair.input})
    if mode == "image":
        label = pair.target
    elif mode == "pair" and not isinstance(pair.target, Volume) and isinstance(image, Volume):
        label = carried(pair.target, image)
    else:
        label = function(**{**args, name: pair.target})
    return Pair(image, label)


def _declare_modality(value: object, modality: str | None) -> object:
    """Readers give the modality a file states; the pipeline's declaration (`as Image[3,
    CT]`) is what the checker verified, so images carry that one from here on."""
    if modality is None or modality == "Any":
        return value
    if isinstance(value, Volume) and value.kind == "image":
        value.modality = modality
    elif isinstance(value, Pair):
        _declare_modality(value.input, modality)
    return value
