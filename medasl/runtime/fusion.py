"""Running the steps the fusion passes made (`fused_spatial`, `fused_intensity`): the
chain recorded in the step becomes the kernels' step lists, each random step with the
generator seed it would have had unfused, so a fused run draws what `-O0` draws.

A random step's generator is `default_rng([step seed, case number, (epoch)])` where the
step seed comes from the run's seed and the step's id (`executor.node_seed`); a fused
step is given its steps' seeds (`seeds`) and its own `(seed, case number, (epoch))`,
whose tail it shares with every step it replaced.
"""

from __future__ import annotations

from collections.abc import Sequence

FUSED_OPS = frozenset({"fused_spatial", "fused_intensity"})


def run_fused(op: str, x: object, chain: Sequence[dict[str, object]], seeds: Sequence[int] | None,
              rng_seed: tuple[int, ...] | None, device: str = "cpu") -> tuple[object, dict[str, object]]:
    """The fused step's value and what its random steps drew, by their node ids."""
    if op == "fused_spatial":
        from medasl.runtime.fused_spatial import SpatialStep, fused_spatial, unfused_spatial, worth_fusing

        steps = [_step(SpatialStep, s, i, seeds, rng_seed) for i, s in enumerate(chain)]
        if worth_fusing(steps, device, x):  # type: ignore[arg-type]
            value, drawn = fused_spatial(x, steps, device=device)  # type: ignore[arg-type]
        else:  # slower fused on this device (elastic on the CPU): the operators, with the same draws
            value, drawn = unfused_spatial(x, steps)  # type: ignore[arg-type]
    else:
        from medasl.runtime.fused_intensity import IntensityStep, fused_intensity

        steps = [_step(IntensityStep, s, i, seeds, rng_seed) for i, s in enumerate(chain)]
        value, drawn = fused_intensity(x, steps, device=device)  # type: ignore[arg-type]
    return value, {str(chain[i]["id"]): d for i, d in drawn.items()}


def _step(make: type, step: dict[str, object], index: int, seeds: Sequence[int] | None,
          rng_seed: tuple[int, ...] | None) -> object:
    """A kernel's step: operator, arguments, and the generator seed it has unfused."""
    seed = (int(seeds[index]), *rng_seed[1:]) if seeds is not None and rng_seed is not None else None
    return make(str(step["op"]), dict(step["params"]), seed)  # type: ignore[arg-type, call-overload]
