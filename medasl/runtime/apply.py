"""A plan's per-case chain applied to one value in memory, with the executor's own code
(`tasks._compute_stage`, the same seeds): what a run computes for one case between a
step and the end of its chain, without the cache. Benchmarks time the `-O0` and `-O2`
code paths with it, and tests compare them on random chains."""

from __future__ import annotations

from dataclasses import dataclass

from medasl.lower.plan import Plan, Step
from medasl.runtime.cache import CacheKey
from medasl.runtime.executor import call_params, fused_seeds, node_seed
from medasl.runtime.tasks import Task, _compute_stage, case_number


@dataclass(frozen=True)
class Applied:
    value: object
    steps: tuple[str, ...]  # the plan steps applied, in order
    drawn: dict[str, object]  # what random steps drew, by step


def chain_after(plan: Plan, start: str) -> list[Step]:
    """The per-case steps that follow `start` one after the other: each maps over the one
    before as its only input, writes nothing and is the only reader of that one."""
    chain: list[Step] = []
    current = start
    while True:
        readers = [s for s in plan.steps.values() if current in s.inputs.values()]
        if len(readers) != 1:
            return chain
        step = readers[0]
        if not step.mapped or step.writes or "selection" in step.traits or len(step.inputs) != 1:
            return chain
        chain.append(step)
        current = step.id


def apply_chain(plan: Plan, start: str, value: object, case: str = "case", seed: int = 0,
                device: str = "cpu") -> Applied:
    """`value` (what step `start` gives for case `case`) through the chain after it."""
    info: dict[str, object] = {}
    steps = chain_after(plan, start)
    for step in steps:
        params = dict(step.params)
        if step.fused and step.random:
            params["seeds"] = fused_seeds(step, seed)
        lifted = next(iter(step.inputs))
        rng = (node_seed(seed, step.id), case_number(case)) if step.random else None
        task = Task(CacheKey(step.op, step.version, {}), step.id, step.op, case, call_params(params),
                    refs={lifted: ""}, lift=step.lift, lifted_arg=lifted, rng_seed=rng, device=device,
                    module=step.module)
        value = _compute_stage(None, task, value, info)  # type: ignore[arg-type]  # nothing is read from a cache
    return Applied(value, tuple(s.id for s in steps), dict(info.get("drawn", {})))  # type: ignore[call-overload]
