"""The fused intensity kernel (medasl/runtime/fused_intensity.py) against the unfused
operators called in sequence, which stay the reference (`-O0`).

The tolerance. Both implementations round to float32 (the unfused chain after every
step, the fused one where it writes its buffer), so they differ by float32 rounding
carried through the chain, and a chain can amplify it: `rescale` of an image spanning
a thousandth of its magnitude amplifies its rounding a thousandfold, in both. The test
therefore checks a forward error bound propagated along the unfused chain (`_bound`):
each step multiplies the difference it receives by its Lipschitz factor on the actual
intermediate image (1/width for window, |high-low|/range for rescale, (2+max|z|)/std for
zscore, a Hölder bound for gamma, ...), capped by what the step's output range allows,
and adds 8 float32 epsilons of the magnitudes it computes with. The bound is deliberately
conservative (1e-5 to 1e-4 of the output range on CT-like chains, where the differences
observed are about 1e-7 of it); the realistic chains (`BENCH` and the chunked ones) are
also held to a plain 1e-5 of the output range.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medasl.ops import aug, pre
from medasl.runtime import fused_intensity as kernel
from medasl.runtime.fused_intensity import INTENSITY_OPS, RANDOM_OPS, IntensityStep, fused_intensity
from medasl.runtime.values import Pair, Volume

EPS = float(np.finfo(np.float32).eps)
C = 8.0  # epsilons of rounding charged per step and magnitude: a few roundings on each side
SCALE = float(os.environ.get("MEDASL_HYPOTHESIS_SCALE", "1"))
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _volume(array: np.ndarray, kind: str = "image") -> Volume:
    dim = array.ndim
    return Volume(array, tuple(0.5 + i for i in range(dim)), tuple(-10.0 * i for i in range(dim)),
                  tuple(np.eye(dim).ravel()), kind=kind, modality="CT", source="case.nii.gz")


def unfused(x: Volume | Pair, steps: list[IntensityStep]) -> tuple[Volume | Pair, dict[int, dict], list]:
    """The reference: the medasl.ops functions in sequence. Also returns each step's input
    and output image (for the error bound)."""
    draws: dict[int, dict] = {}
    trace = []
    for i, step in enumerate(steps):
        before = x.input if isinstance(x, Pair) else x
        if step.op in RANDOM_OPS:
            x, draws[i] = getattr(aug, step.op)(x, **step.params, rng=np.random.default_rng(list(step.seed)))
        else:
            fn = getattr(pre, step.op)
            x = Pair(fn(x.input, **step.params), x.target) if isinstance(x, Pair) else fn(x, **step.params)
        after = x.input if isinstance(x, Pair) else x
        trace.append((step, draws.get(i), before.array.astype(np.float64), after.array.astype(np.float64)))
    return x, draws, trace


def _mag(a: np.ndarray) -> float:
    return float(np.abs(a).max()) if a.size else 0.0


def _bound(trace: list) -> float:
    """A bound on |fused - unfused| at the end of the chain (see the module docstring)."""
    delta = 0.0
    for step, drawn, a, b in trace:
        p = step.params
        mag_in, mag_out = _mag(a), _mag(b)
        if step.op in RANDOM_OPS and not drawn["applied"]:
            continue
        if step.op == "window":
            low, width = p["level"] - p["width"] / 2, p["width"]
            delta = delta / width + C * EPS * ((mag_in + abs(low) + width) / width + 1)
        elif step.op == "clip":
            delta = delta + C * EPS * (mag_in + abs(p["low"]) + abs(p["high"]))
        elif step.op == "rescale":
            low, high = p.get("low", 0.0), p.get("high", 1.0)
            span, r = abs(high - low), float(np.ptp(a))
            gain = span / r if r > 0 else math.inf
            delta = min(3 * delta * gain if delta else 0.0, span) + C * EPS * (mag_out + (gain * mag_in if r > 0 else 0))
        elif step.op == "zscore":
            sd, m = float(a.std()), float(a.mean())
            lip = (2 + mag_out) / (sd - delta) if sd > 2 * delta else math.inf
            cap = 2 * math.sqrt(a.size) + 1  # |z| <= sqrt(n) for any image with a population std
            delta = min(delta * lip if delta else 0.0, cap) + C * EPS * (mag_out + ((mag_in + abs(m)) / sd if sd > 0 else 0))
        elif step.op == "percentile_rescale":
            plo, phi = np.percentile(a, [p.get("lower", 0.5), p.get("upper", 99.5)])
            r = float(phi - plo)
            lip = 3 / r if r > 0 else math.inf
            delta = min(delta * lip if delta else 0.0, 1.0) + C * EPS * (1 + ((mag_in + abs(plo)) / r if r > 0 else 0))
        elif step.op == "gamma":
            g, mn = drawn["gamma"], float(a.min())
            r = float(np.ptp(a))
            if r == 0:
                delta = 3 * delta + C * EPS * mag_out
            else:
                du = min(3 * delta / r + C * EPS * (mag_in + abs(mn)) / r, 1.0)
                delta = r * (du**g if g < 1 else g * du) + 3 * delta + C * EPS * mag_out
        elif step.op == "contrast":
            f, m = drawn["factor"], float(a.mean())
            delta = (abs(f) + abs(1 - f) + 1) * delta + C * EPS * (mag_out + abs(f) * mag_in + abs(1 - f) * abs(m))
        elif step.op == "brightness":
            delta = abs(drawn["factor"]) * delta + C * EPS * mag_out
        elif step.op == "gaussian_noise":
            delta = delta + C * EPS * (mag_out + mag_in)
    return delta


def check_chain(x: Volume | Pair, steps: list[IntensityStep]) -> float:
    """Fused vs unfused on one chain: same draws, dtype, shape and geometry, the label
    untouched, the input unchanged, values within `_bound`. Returns the difference relative
    to the output range (for the tests that state a plain tolerance)."""
    before = (x.input if isinstance(x, Pair) else x).array.copy()
    got, got_draws = fused_intensity(x, steps)
    want, want_draws, trace = unfused(x, steps)
    assert got_draws == want_draws
    assert np.array_equal((x.input if isinstance(x, Pair) else x).array, before), "the input was written to"
    if isinstance(x, Pair):
        assert isinstance(got, Pair) and got.target is x.target
        got_vol, want_vol = got.input, want.input
    else:
        got_vol, want_vol = got, want
    if want_vol is (x.input if isinstance(x, Pair) else x):
        assert got is x  # nothing applied: the value itself, as the operators return it
        return 0.0
    assert got_vol.array.dtype == want_vol.array.dtype
    assert got_vol.array.shape == want_vol.array.shape
    src = x.input if isinstance(x, Pair) else x
    assert (got_vol.spacing, got_vol.origin, got_vol.direction) == (src.spacing, src.origin, src.direction)
    assert (got_vol.kind, got_vol.modality, got_vol.source) == (src.kind, src.modality, src.source)
    g, w = got_vol.array.astype(np.float64), want_vol.array.astype(np.float64)
    assert np.all(np.isfinite(g))
    diff = float(np.abs(g - w).max())
    bound = _bound(trace)
    assert diff <= bound, f"|fused - unfused| = {diff:.3g} > bound {bound:.3g} for {steps}"
    return diff / max(float(np.ptp(w)), 1e-30)


# ===== plain cases ==============================================================================


@contextmanager
def torch_reductions() -> Iterator[None]:
    """Reduce with torch as on a GPU (this machine may have none), not with NumPy."""
    kernel._NUMPY_ON_CPU = False
    try:
        yield
    finally:
        kernel._NUMPY_ON_CPU = True


@contextmanager
def cpu_backend(name: str) -> Iterator[None]:
    """The element-wise passes on the CPU with `name` ("numpy" or "torch") whatever the
    image's size: the size threshold decides only which one runs, both must agree with
    the unfused operators."""
    before = kernel._NUMPY_MAX_VOXELS
    kernel._NUMPY_MAX_VOXELS = 2**62 if name == "numpy" else -1
    try:
        yield
    finally:
        kernel._NUMPY_MAX_VOXELS = before


BACKENDS = ("numpy", "torch")


def _ct(shape: tuple[int, ...] = (12, 20, 24), seed: int = 0) -> np.ndarray:
    """An int16 CT-like array: air, a noisy soft-tissue body, bone."""
    rng = np.random.default_rng(seed)
    a = np.full(shape, -1000, dtype=np.int16)
    body = rng.random(shape) < 0.6
    a[body] = np.rint(40 + 20 * rng.standard_normal(int(body.sum()))).astype(np.int16)
    a[rng.random(shape) < 0.05] = 700
    return a


BENCH = [IntensityStep("window", {"level": 70.0, "width": 340.0}), IntensityStep("rescale", {"low": 0.0, "high": 1.0}),
         IntensityStep("zscore", {})]


def test_benchmark_chain_within_1e_5_of_the_output_range() -> None:
    for array in (_ct(), _ct().astype(np.float32) + np.float32(0.25), _ct((40, 50)).astype(np.float64)):
        assert check_chain(_volume(array), BENCH) <= 1e-5


def test_images_larger_than_one_reduction_chunk() -> None:
    # 84000 voxels: the CPU variance sum runs over one full and one partial chunk
    assert kernel._CHUNK < 70 * 40 * 30 < 2 * kernel._CHUNK
    ct = _ct((70, 40, 30), seed=3)
    chains = [
        BENCH,
        [IntensityStep("clip", {"low": -200.0, "high": 500.0}), IntensityStep("percentile_rescale", {"lower": 1.0}),
         IntensityStep("contrast", {"p": 1.0}, (1, 2)), IntensityStep("zscore", {})],
        [IntensityStep("gaussian_noise", {"std": 30.0}, (3,)), IntensityStep("gamma", {"p": 1.0}, (4,)),
         IntensityStep("brightness", {"p": 1.0}, (5,)), IntensityStep("zscore", {})],
    ]
    for array in (ct, ct.astype(np.float32) + np.float32(3000.5)):  # a large offset: the sums centre first
        for chain in chains:
            for backend in BACKENDS:
                with cpu_backend(backend):
                    assert check_chain(_volume(array), chain) <= 1e-5
            with torch_reductions():
                assert check_chain(_volume(array), chain) <= 1e-5


def test_a_large_offset_costs_no_precision() -> None:
    # 3000.5 +- 1: normalising takes the offset off; folded as s * x + t in float32 that
    # would lose ~1e-5 of the range, as much as the rounding of s times 3000
    array = (3000.5 + np.random.default_rng(4).standard_normal((30, 40, 50))).astype(np.float32)
    for op in ("zscore", "rescale", "percentile_rescale"):
        assert check_chain(_volume(array), [IntensityStep(op, {})]) <= 1e-6
        # After brightness the unfused chain itself rounds at 3000 (3e-5 of the range here),
        # which the fused one folds away: only the propagated bound holds.
        check_chain(_volume(array), [IntensityStep("brightness", {"p": 1.0}, (2,)), IntensityStep(op, {})])


def test_other_voxel_types() -> None:
    # big-endian arrays (torch takes native order only), float16, unsigned and wide integers
    ct = _ct((8, 9, 10))
    chain = [IntensityStep("window", {"level": 40.0, "width": 400.0}), IntensityStep("zscore", {}),
             IntensityStep("gaussian_noise", {"std": 0.1}, (1,)), IntensityStep("percentile_rescale", {})]
    for dtype in (">i2", ">f4", ">f8", "float16", "uint16", "int32", "uint32", "int64"):
        array = (ct.astype(np.int64) + (1024 if dtype[0] == "u" else 0)).astype(dtype)
        assert check_chain(_volume(array), chain) <= 1e-5
    check_chain(_volume(ct.astype(">f8")), chain[2:3])  # float64 kept by noise alone


def test_every_operator_alone_and_defaults() -> None:
    x = _volume(_ct().astype(np.float32))
    for op in sorted(INTENSITY_OPS):
        params: dict[str, object] = {"level": 40.0, "width": 400.0} if op == "window" else {}
        if op == "clip":
            params = {"low": -200.0, "high": 300.0}
        if op in RANDOM_OPS:
            params["p"] = 1.0
        check_chain(x, [IntensityStep(op, params, (7, 3) if op in RANDOM_OPS else None)])


def test_constant_images_follow_the_operators_conventions() -> None:
    for dtype in (np.int16, np.float32, np.float64):
        x = _volume(np.full((4, 5, 6), 37, dtype=dtype))
        got, _ = fused_intensity(x, [IntensityStep("rescale", {"low": 2.0, "high": 3.0})])
        assert np.all(got.array == 2.0) and got.array.dtype == np.float32
        got, _ = fused_intensity(x, [IntensityStep("zscore", {})])
        assert np.all(got.array == 0.0)
        got, _ = fused_intensity(x, [IntensityStep("percentile_rescale", {})])
        assert np.all(got.array == 0.0)
        # a window that clips every voxel to one side makes a constant, which zscore keeps at 0
        got, _ = fused_intensity(x, [IntensityStep("window", {"level": 500.0, "width": 10.0}), IntensityStep("zscore", {})])
        assert np.all(got.array == 0.0)
        for op in ("gamma", "contrast"):
            check_chain(x, [IntensityStep(op, {"p": 1.0}, (1,))])


def test_pairs_change_the_image_only() -> None:
    image = _volume(_ct())
    label = _volume((image.array > 0).astype(np.uint8), kind="labels")
    steps = [*BENCH, IntensityStep("gaussian_noise", {"std": 0.1}, (5,)), IntensityStep("gamma", {"p": 1.0}, (6,))]
    check_chain(Pair(image, label), steps)


def test_noise_is_the_operators_noise() -> None:
    # Noise alone on a float64 image: the same NumPy field, float64 kept, equal to rounding.
    x = _volume(np.random.default_rng(1).normal(size=(6, 7, 8)))
    got, drawn = fused_intensity(x, [IntensityStep("gaussian_noise", {"std": 0.5}, (9,))])
    want, want_drawn = aug.gaussian_noise(x, std=0.5, rng=np.random.default_rng([9]))
    assert drawn == {0: want_drawn} and got.array.dtype == np.float64
    np.testing.assert_allclose(got.array, want.array, rtol=0, atol=1e-12)


def test_nothing_applied_returns_the_value_itself() -> None:
    x = _volume(_ct())
    steps = [IntensityStep("gamma", {"p": 0.0}, (1,)), IntensityStep("brightness", {"p": 0.0}, (2,))]
    got, drawn = fused_intensity(x, steps)
    assert got is x and drawn == {0: {"applied": False}, 1: {"applied": False}}


def test_invalid_chains_are_refused() -> None:
    x = _volume(_ct())
    with pytest.raises(ValueError, match="window width"):
        fused_intensity(x, [IntensityStep("window", {"level": 0.0, "width": 0.0})])
    with pytest.raises(ValueError, match="clip needs"):
        fused_intensity(x, [IntensityStep("clip", {"low": 2.0, "high": 1.0})])
    with pytest.raises(ValueError, match="percentiles need"):
        fused_intensity(x, [IntensityStep("percentile_rescale", {"lower": 60.0, "upper": 40.0})])
    with pytest.raises(ValueError, match="needs a seed"):
        fused_intensity(x, [IntensityStep("gamma", {"p": 1.0})])
    with pytest.raises(ValueError, match="not a fusable"):
        fused_intensity(x, [IntensityStep("gaussian_blur", {}, (1,))])
    with pytest.raises(ValueError, match="mask"):
        fused_intensity(x, [IntensityStep("zscore", {"mask": x})])
    with pytest.raises(TypeError):
        fused_intensity(x, [IntensityStep("rescale", {"lo": 0.0})])


def test_small_volumes_take_the_numpy_path_and_large_ones_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    x = _volume(_ct((8, 16, 16)).astype(np.float32))
    assert x.array.size <= kernel._NUMPY_MAX_VOXELS

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("torch used for a small volume on the CPU")

    with monkeypatch.context() as m:
        m.setattr(kernel, "_TorchArrays", refuse)
        assert check_chain(x, BENCH) <= 1e-5
    # above the threshold: torch, its passes on one thread, the caller's thread count restored
    monkeypatch.setattr(kernel, "_NUMPY_MAX_VOXELS", x.array.size - 1)
    seen: list[int] = []
    affine = kernel._TorchArrays.affine

    def spy(self: Any, *args: Any) -> Any:
        seen.append(torch.get_num_threads())
        return affine(self, *args)

    monkeypatch.setattr(kernel._TorchArrays, "affine", spy)
    threads = torch.get_num_threads()
    assert check_chain(x, BENCH) <= 1e-5
    assert seen and set(seen) == {1}
    assert torch.get_num_threads() == threads


def test_a_small_cpu_chain_does_not_import_torch() -> None:
    # torch's first import takes seconds: the NumPy path of a small volume must not pay it
    code = ("import sys, numpy as np\n"
            "from medasl.runtime.fused_intensity import IntensityStep, fused_intensity\n"
            "from medasl.runtime.values import Volume\n"
            "x = Volume(np.arange(2048, dtype=np.float32).reshape(8, 16, 16), (1.0,) * 3, (0.0,) * 3, (1, 0, 0, 0, 1, 0, 0, 0, 1))\n"
            "steps = [IntensityStep('window', {'level': 40.0, 'width': 400.0}), IntensityStep('zscore', {}),\n"
            "         IntensityStep('gaussian_noise', {'std': 0.1}, (1,)), IntensityStep('percentile_rescale', {})]\n"
            "fused_intensity(x, steps)\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_bound_parameters_are_cached_per_operator_and_parameters(monkeypatch: pytest.MonkeyPatch) -> None:
    x = _volume(_ct())
    fused_intensity(x, BENCH)
    # the same chain again binds nothing: inspect is not consulted
    monkeypatch.setattr(kernel, "_bind", lambda *a: pytest.fail("parameters bound again"))
    got, _ = fused_intensity(x, BENCH)
    want, _, _ = unfused(x, BENCH)
    np.testing.assert_allclose(got.array, want.array, rtol=0, atol=1e-5 * float(np.ptp(want.array)))
    monkeypatch.undo()
    # defaults are filled in and the cached dict is not changed by later calls with other values
    assert kernel._bound(IntensityStep("rescale", {"low": 2.0})) == {"low": 2.0, "high": 1.0}
    assert kernel._bound(IntensityStep("rescale", {"low": 3.0})) == {"low": 3.0, "high": 1.0}
    assert kernel._bound(IntensityStep("rescale", {"low": 2.0})) == {"low": 2.0, "high": 1.0}


def test_ranges_of_subnormals() -> None:
    # Found by the random chains. float64: 1 / range overflows where the operators divide.
    # float32: a clamp in the units of a subnormal base rounds its bounds to the subnormal grid.
    cases = [
        (np.array([[0.00012573, -0.0001321]]),
         [IntensityStep("clip", {"low": 0.0, "high": 0.0}),
          IntensityStep("gaussian_noise", {"std": 2.225073858507e-311, "p": 1.0}, (0, 0)),
          IntensityStep("percentile_rescale", {"lower": 0.0, "upper": 1.0})]),
        (np.full((1, 3), -1000.0, dtype=np.float32),
         [IntensityStep("zscore", {}), IntensityStep("gaussian_noise", {"std": 1.401298464324817e-45, "p": 1.0}, (0, 0)),
          IntensityStep("zscore", {}), IntensityStep("clip", {"low": 0.0, "high": 1.0}),
          IntensityStep("contrast", {"factor": 0.0, "p": 1.0}, (0, 0))]),
    ]
    for array, chain in cases:
        for backend in BACKENDS:
            with cpu_backend(backend):
                check_chain(_volume(array), chain)
    tiny = _volume(np.array([[1e-311, 3e-311, 2e-311]]))
    for op in ("rescale", "zscore", "percentile_rescale"):
        for backend in BACKENDS:
            with cpu_backend(backend):
                got, _ = fused_intensity(tiny, [IntensityStep(op, {})])
                want = getattr(pre, op)(tiny)
                np.testing.assert_allclose(got.array, want.array, rtol=0, atol=1e-6)


def test_importing_the_module_stays_light() -> None:
    # The compiler's passes import INTENSITY_OPS and IntensityStep from the front end.
    code = "import sys, medasl.runtime.fused_intensity; print(sorted({'numpy', 'torch'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ===== random chains ============================================================================


def _seed() -> st.SearchStrategy[tuple[int, ...]]:
    return st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 1000))


def _scaled(lo: float, hi: float) -> st.SearchStrategy[float]:
    """A value at the scale of HU or of normalised intensities (chains mix both)."""
    return st.sampled_from([1.0, 1000.0]).flatmap(lambda k: st.floats(lo * k, hi * k))


@st.composite
def steps(draw: st.DrawFn) -> IntensityStep:
    op = draw(st.sampled_from(sorted(INTENSITY_OPS)))
    p = draw(st.sampled_from([0.0, 0.5, 1.0, 1.0]))
    params: dict[str, Any]
    if op == "window":
        params = {"level": draw(_scaled(-1.0, 1.0)), "width": draw(_scaled(0.05, 2.0))}
    elif op == "clip":
        a, b = sorted([draw(_scaled(-1.0, 1.0)), draw(_scaled(-1.0, 1.0))])
        params = {"low": a, "high": b}
    elif op == "rescale":
        params = draw(st.sampled_from([{}, {"low": -1.0, "high": 1.0}, {"low": 1.0, "high": 0.0}, {"low": 0.0, "high": 255.0}]))
    elif op == "zscore":
        params = {}
    elif op == "percentile_rescale":
        lower = draw(st.floats(0.0, 40.0))
        params = {"lower": lower, "upper": draw(st.floats(lower + 1.0, 100.0))}
    elif op == "gamma":
        params = {"log_gamma": draw(st.floats(0.0, 0.7)), "p": p}
    elif op in ("contrast", "brightness"):
        params = {"factor": draw(st.floats(0.0, 0.5)), "p": p}
    else:
        params = {"std": draw(_scaled(0.0, 0.2)), "p": p}
    return IntensityStep(op, params, draw(_seed()) if op in RANDOM_OPS else None)


@st.composite
def images(draw: st.DrawFn) -> Volume | Pair:
    dim = draw(st.sampled_from([2, 3]))
    shape = tuple(draw(st.lists(st.integers(1, 7), min_size=dim, max_size=dim)))
    kind = draw(st.sampled_from(["ct", "float32", "float64", "constant", "two"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if kind == "ct":
        array = rng.integers(-1024, 3072, shape).astype(np.int16)
    elif kind in ("float32", "float64"):
        scale = draw(st.sampled_from([1e-3, 1.0, 500.0]))
        offset = draw(st.sampled_from([0.0, 1.0, -300.0]))
        array = (offset + scale * rng.standard_normal(shape)).astype(kind)
    elif kind == "constant":
        array = np.full(shape, draw(st.sampled_from([-1000.0, 0.0, 0.5, 40.0])), dtype=np.float32)
    else:  # two values: window and clip edges, ties in percentiles
        array = np.where(rng.random(shape) < 0.5, -1000, 40).astype(np.int16)
    x = _volume(array)
    if draw(st.booleans()):
        return Pair(x, _volume((array > 0).astype(np.uint8), kind="labels"))
    return x


@settings(max_examples=max(1, int(300 * SCALE)), **SETTINGS)
@given(images(), st.lists(steps(), min_size=1, max_size=6))
def test_random_chains_match_the_unfused_operators(x: Volume | Pair, chain: list[IntensityStep]) -> None:
    check_chain(x, chain)


@settings(max_examples=max(1, int(300 * SCALE)), **SETTINGS)
@given(images(), st.lists(steps(), min_size=1, max_size=6), st.sampled_from(BACKENDS))
def test_random_chains_on_both_cpu_backends(x: Volume | Pair, chain: list[IntensityStep], backend: str) -> None:
    # The images here are small, so the default above runs the NumPy path; both backends
    # are checked explicitly, whatever the size threshold is set to.
    with cpu_backend(backend):
        check_chain(x, chain)


@settings(max_examples=max(1, int(100 * SCALE)), **SETTINGS)
@given(images(), st.lists(steps(), min_size=1, max_size=6))
def test_random_chains_with_the_torch_reductions(x: Volume | Pair, chain: list[IntensityStep]) -> None:
    with torch_reductions():
        check_chain(x, chain)
