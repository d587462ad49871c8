"""The fusion passes, the executor's glue and the kernels together: random chains of
spatial and intensity steps run through the `-O2` plan and the `-O0` plan (every
operator as written) on one case, with the executor's code (`runtime.apply`).

Claimed and checked: the passes fuse what they should (a fused step for every run of
two or more fusable steps); geometry equal to 1e-6 mm; every random step draws the
same in both; chains whose spatial steps only move whole voxels (crop_or_pad, flip,
random_crop) give the same label maps, and images within 1e-3 of the image's range (or
largest magnitude, where a window leaves almost no range). That bound is loose on
purpose: the unfused chain itself amplifies float32 rounding (a rescale of a nearly
constant image), while a wrong parameter, order or seed in the glue gives differences
of the order of the image; tests/test_fused_intensity.py holds the kernel to a bound
that follows rounding through the chain.
Chains that interpolate are compared by the kernel's own tests, which bound the
difference one interpolation instead of several makes (tests/test_fused_spatial.py).
"""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medasl.ops import io
from medasl.runtime.apply import apply_chain
from medasl.runtime.session import plans
from medasl.runtime.values import Pair
from medasl.semantics.checker import check_source
from medasl.source import SourceFile

INDEX_STEPS = {
    "crop_or_pad": "crop_or_pad(({a}, {b}, 16))",
    "flip": "flip(axis={axis}, p=1.0)",
    "random_crop": "random_crop((12, 12, 8))",
}
INTERPOLATING_STEPS = {
    "resample": "resample(spacing=({s}, {s}, 2.5) mm)",
    "rotate": "rotate(angle=12 deg, p=1.0)",
    "affine": "affine(scale=0.1, shear=5 deg, translate=2 mm, p=1.0)",
    "random_rescale": "random_rescale(scale=(0.9, 1.1), p=1.0)",
}
INTENSITY_STEPS = {
    "window": "window(level={level}, width=400)",
    "clip": "clip(-200, 200)",
    "rescale": "rescale(0, 1)",
    "zscore": "zscore",
    "gamma": "gamma(log_gamma=0.3, p=1.0)",
    "brightness": "brightness(factor=0.2, p=1.0)",
    "contrast": "contrast(factor=0.2, p=1.0)",
    "noise": "gaussian_noise(std=0.05, p=1.0)",
}
CASE = io.phantom(cases=1, size=(24, 20, 16), spacing=(1.5, 1.5, 3.0), seed=4)[0]


def _flat_draws(drawn: dict[str, object]) -> dict[str, object]:
    """A fused step records its steps' draws by their ids: the same shape as unfused."""
    flat: dict[str, object] = {}
    for step, value in drawn.items():
        if isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
            flat.update(value)  # type: ignore[arg-type]
        else:
            flat[step] = value
    return flat


NORMALIZING = {"rescale", "zscore", "gamma"}  # stretch the image's range to a fixed one
COMPRESSING = {"window", "clip"}  # may squeeze it to a few float32 steps


def _numerically_tame(kinds: list[str]) -> list[str]:
    """The chain without normalizing steps after a compressing one: `window |> window |>
    rescale` stretches a range of a few float32 steps back to [0, 1], where the unfused
    chain keeps only its rounding (the fused one, folded, is exact); comparing the two
    there says nothing about the glue this file tests."""
    kept: list[str] = []
    for kind in kinds:
        if kind in NORMALIZING and COMPRESSING & set(kept):
            continue
        kept.append(kind)
    return kept


@st.composite
def chains(draw: st.DrawFn, interpolating: bool) -> list[str]:
    spatial = {**INDEX_STEPS, **(INTERPOLATING_STEPS if interpolating else {})}
    kinds = _numerically_tame(draw(st.lists(st.sampled_from(sorted(spatial) + sorted(INTENSITY_STEPS)),
                                            min_size=2, max_size=7)))
    return [{**spatial, **INTENSITY_STEPS}[k].format(a=draw(st.sampled_from([16, 20, 28])),
                                                   b=draw(st.sampled_from([12, 20, 24])),
                                                   axis=draw(st.integers(0, 2)), s=draw(st.sampled_from([1.2, 2.0])),
                                                   level=draw(st.integers(-50, 80))) for k in kinds]


def _both(chain: list[str]) -> tuple[object, object]:
    text = ("import std.io, std.pre, std.aug\npipeline p {\n  cases = phantom(cases=1, size=(24, 20, 16), "
            "spacing=(1.5, 1.5, 3.0) mm, seed=4)\n  y = cases |> " + " |> ".join(chain) +
            '\n  w = write_nifti(y.image, "y/*.nii.gz")\n}\n')
    result = check_source(SourceFile("p.medas", text))
    assert not result.diagnostics.has_errors, [d.message for d in result.diagnostics.errors]
    (o0,) = plans(result.graphs, {}, 0)
    (o2,) = plans(result.graphs, {}, 2)
    runs = {}
    for name, plan in (("O0", o0), ("O2", o2)):
        runs[name] = apply_chain(plan, "cases", CASE.value, CASE.id, seed=11)
        chain = [s.id for s in plan.steps.values() if s.id != "cases" and not s.writes and "selection" not in s.traits]
        assert list(runs[name].steps) == chain  # the whole chain ran
    fused = [s for s in o2.steps.values() if s.fused]
    assert sum(len(s.fused) for s in fused) + len(o2.steps) - len(fused) == len(o0.steps)
    return runs["O0"], runs["O2"]


def _check_common(reference: object, fused: object) -> tuple[Pair, Pair]:
    a, b = reference.value, fused.value  # type: ignore[attr-defined]
    assert isinstance(a, Pair) and isinstance(b, Pair)
    for x, y in ((a.input, b.input), (a.target, b.target)):
        assert x.array.shape == y.array.shape
        np.testing.assert_allclose(y.spacing, x.spacing, atol=1e-6)
        np.testing.assert_allclose(y.origin, x.origin, atol=1e-6)
        np.testing.assert_allclose(y.direction, x.direction, atol=1e-6)
    assert _flat_draws(fused.drawn) == _flat_draws(reference.drawn)  # type: ignore[attr-defined]
    return a, b


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chains(interpolating=False))
def test_index_chains_fused_equal_the_operators(chain: list[str]) -> None:
    a, b = _check_common(*_both(chain))
    np.testing.assert_array_equal(b.target.array, a.target.array)
    scale = max(float(np.ptp(a.input.array)), float(np.max(np.abs(a.input.array)))) or 1.0
    assert float(np.max(np.abs(a.input.array.astype(np.float64) - b.input.array))) <= 1e-3 * scale


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chains(interpolating=True))
def test_interpolating_chains_keep_geometry_and_draws(chain: list[str]) -> None:
    _check_common(*_both(chain))
