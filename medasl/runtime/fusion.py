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
    tail = tuple(rng_seed[1:]) if rng_seed else ()
    if op == "fused_spatial":
        from medasl.runtime.fused_spatial import SpatialStep, fused_spatial

        kernel, make = fused_spatial, SpatialStep
    else:
        from medasl.runtime.fused_intensity import IntensityStep, fused_intensity

        kernel, make = fused_intensity, IntensityStep  # type: ignore[assignment]
    steps = [make(str(s["op"]), _call_params(s["params"]),  # type: ignore[arg-type]
                  (int(seeds[i]), *tail) if seeds is not None and rng_seed is not None else None)
             for i, s in enumerate(chain)]
    value, drawn = kernel(x, steps, device=device)  # type: ignore[arg-type, operator]
    return value, {str(chain[i]["id"]): d for i, d in drawn.items()}


def _call_params(params: dict[str, object]) -> dict[str, object]:
    """Constant arguments as the operators take them (tuples, not JSON lists)."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in params.items()}
