"""The fused intensity kernel (issue 9, "Intensity fusion"): a chain of element-wise
intensity steps on one case run as one folded computation with torch on the run's device
(with NumPy on the CPU for volumes up to a million voxels: "Array backends" below).

The unfused operators (`medasl.ops.pre.window`, `clip`, `rescale`, `zscore`,
`percentile_rescale`; `medasl.ops.aug.gaussian_noise`, `gamma`, `contrast`,
`brightness`) stay the reference implementation (`-O0`); `fused_intensity` gives their
result within float32 rounding, and the random steps draw exactly what the unfused
operator draws from the same generator (the `draw_*` functions of `medasl.ops.aug` are
shared, and so is `noise_field`, so noise is the same NumPy field).

How the chain is folded. The image after the steps folded so far is kept lazily as
`v = clamp(s * base + t, lo, hi)`: `base` is the input (never written to) or one float
buffer of our own, changed in place. Window, clip, rescale, zscore, percentile_rescale,
contrast and brightness are all an affine map and/or a clamp once their statistics are
known, and affine maps and clamps compose into one affine map and one clamp, so a
positive affine map followed by `rescale` or `zscore` cancels except for the clamp it
implies. The statistics come from the folded form where that is exact: min/max of `v`
from min/max of `base` (monotone maps), mean/std and percentiles likewise when the clamp
reaches no voxel. Only when a clamp does change voxels and a mean, std or percentile of
the clamped image is needed is the clamp applied to the buffer (one pass); gamma (not
affine) and noise apply the folded map first. The last step writes the buffer once and
converts once.

Array backends. The folding logic (`_Folded` and the steps) is written once; the passes
over the voxels go through one of two array backends with the same few methods:
`_NumpyArrays` (CPU) and `_TorchArrays` (any device). On the CPU a call's cost is mostly
fixed for small and mid-sized volumes, and torch's is high there: every torch call
dispatches for microseconds, and on a 2-core machine under load each multi-threaded pass
ends at an OpenMP barrier that waits for a descheduled thread (measured with load ~3: a
multiply-add plus clamp of a 64x64x48 float32 volume took 15 ms on 2 threads, 0.05 ms on
one). So on the CPU volumes of up to `_NUMPY_MAX_VOXELS` voxels run with NumPy (which
also spares the 1-1.7 s first import of torch), larger ones with torch on one thread (a
fused multiply-add pass, not NumPy's separate multiply and add; about even with NumPy
from 128x128x80 to 256x256x160). The parameters of a step, bound to the operator's signature, are cached
per (operator, parameters): `inspect` took longer than a small volume's whole chain.

Reductions: on the CPU they use NumPy on the tensor's memory (NumPy's SIMD min/max and
pairwise sums are several times faster than torch's float64-accumulating reductions
there and as accurate; the variance is summed about an estimate of the mean so that a
large mean does not cost precision); on other devices they use torch, in float64.
Percentiles are NumPy's `linear` method computed from the two order statistics around
each position (`np.partition` on the CPU, one sort elsewhere), since `torch.quantile`
refuses large tensors.

Precision: results are computed in float32 (float64 for float64 and wide-integer
inputs) and agree with the unfused chain within its own float32 rounding propagated
through the chain (tests/test_fused_intensity.py states the bound it checks); on CT-like
chains such as window, rescale, zscore the difference is about 1e-7 of the output range,
and the tests hold them to 1e-5. A chain that amplifies rounding (rescaling an image
whose range is a tiny fraction of its magnitude) amplifies it in both implementations.

This module is imported by the compiler's passes for `INTENSITY_OPS` and
`IntensityStep`, so its top level imports nothing heavy (no NumPy, no torch).
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import numpy as np
    import torch

    from medasl.runtime.values import Pair, Volume

INTENSITY_OPS: frozenset[str] = frozenset({
    "window", "clip", "rescale", "zscore", "percentile_rescale",
    "gamma", "contrast", "brightness", "gaussian_noise",
})
"""The operators `fused_intensity` runs (`zscore` only without a mask)."""

RANDOM_OPS: frozenset[str] = frozenset({"gamma", "contrast", "brightness", "gaussian_noise"})
"""The std.aug operators among `INTENSITY_OPS`: their steps need a seed."""

_CHUNK = 1 << 16
"""Elements per chunk of the CPU variance sum: a 256 KiB float32 chunk stays in cache
between the subtraction, the square and the sums."""

_NUMPY_ON_CPU = True
"""Reduce with NumPy on the CPU (see the module docstring). The tests switch it off to run
the torch reductions (and element-wise passes) other devices use on the CPU as well."""

_F32_MAX = 3.4028234663852886e38
"""The largest finite float32."""

_NUMPY_MAX_VOXELS = 1 << 26
"""On the CPU, volumes of up to this many voxels (a 512x512x256 CT) run their element-wise
passes with NumPy, larger ones with torch on one thread (see "Array backends" above).
Measured on the 2-core machine under load ~4: NumPy 25% faster at 64x64x48, even at
128x128x80 (1.3 M voxels), within 10% either way at 256x256x160 (32 ms against 30 ms
for window, rescale and zscore at load 1.4); so NumPy up to large volumes, which spares
a pre-processing run the import of torch (about 1 s per process)."""


@dataclass(frozen=True)
class IntensityStep:
    """One step of a fused chain: the operator, its keyword arguments as
    `medasl.ops.pre` / `medasl.ops.aug` take them (defaults as there), and for random
    operators the seed the unfused operator's generator gets:
    `np.random.default_rng(list(seed))`."""

    op: str
    params: dict[str, object] = field(default_factory=dict)
    seed: tuple[int, ...] | None = None


def fused_intensity(x: Volume | Pair, steps: Sequence[IntensityStep],
                    device: str = "cpu") -> tuple[Volume | Pair, dict[int, dict]]:
    """Apply the chain `steps` to `x` (a Volume, or the `input` of a Pair; the `target`
    is untouched) as the unfused operators called in sequence would, folded into as few
    passes over the voxels as the chain allows, with torch on `device` (NumPy for a CPU
    volume of up to `_NUMPY_MAX_VOXELS` voxels).

    Returns the result and, for each random step (by its index in `steps`), what it drew:
    the same `drawn` dict the unfused operator returns. A chain in which no step changes
    the image (only random steps, none applied) returns `x` itself, as the operators do.
    The result is float32, or float64 when the input is float64 and only std.aug steps
    (which keep float64) were applied.
    """
    import numpy as np

    Pair = _pair_type()  # noqa: N806 (the class)
    vol = x.input if isinstance(x, Pair) else x
    draws: dict[int, dict] = {}
    plan: list[tuple[str, dict[str, Any]]] = []
    for i, step in enumerate(steps):
        if step.op not in INTENSITY_OPS:
            raise ValueError(f"{step.op!r} is not a fusable intensity operator ({', '.join(sorted(INTENSITY_OPS))})")
        if step.op in RANDOM_OPS:
            if step.seed is None:
                raise ValueError(f"step {i} ({step.op}) is random and needs a seed")
            from medasl.ops import aug

            draw: Callable[..., dict] = getattr(aug, f"draw_{step.op}")
            drawn = draw(np.random.default_rng(list(step.seed)), **step.params)
            draws[i] = drawn
            if drawn["applied"]:
                plan.append((step.op, drawn))
        else:
            plan.append((step.op, _bound(step)))
    if not plan:
        return x, draws

    convert, wide, widen, f64 = _input_types(vol.array.dtype)
    array = np.ascontiguousarray(vol.array if convert is None else vol.array.astype(convert))
    keeps_f64 = f64 and all(op in RANDOM_OPS for op, _ in plan)
    if str(device) == "cpu" and _NUMPY_ON_CPU and array.size <= _NUMPY_MAX_VOXELS:
        out = _run(_numpy_arrays(wide), array, widen, plan, keeps_f64)
    else:
        xp = _TorchArrays(wide, device)
        with xp.cpu_threads():
            out = _run(xp, array, widen, plan, keeps_f64)
    result = vol.with_array(out)
    return (Pair(result, x.target) if isinstance(x, Pair) else result), draws


@functools.cache
def _pair_type() -> type[Pair]:
    """`medasl.runtime.values.Pair`, imported on first use (values imports NumPy); an import
    statement per call costs half a microsecond."""
    from medasl.runtime.values import Pair

    return Pair


@functools.cache
def _input_types(dtype: np.dtype) -> tuple[np.dtype | None, bool, bool, bool]:
    """For an input voxel type (cached: a small volume's chain takes microseconds): the
    type to convert it to first (None: none), whether the chain computes in float64
    (`wide`), whether the input is widened to float64 up front, and whether it is float64
    as std.aug compares it (a big-endian float64 gives float32 there)."""
    import numpy as np

    convert = None
    if dtype.kind == "f" and dtype.itemsize == 2:
        convert = np.dtype(np.float32)  # as the operators do; a float16 buffer would also sum in float16
    elif not dtype.isnative:
        convert = dtype.newbyteorder("=")  # torch takes native byte order only
    work = dtype if convert is None else convert
    wide = work == np.float64 or (work.kind in "iu" and work.itemsize > 2)
    return convert, wide, wide and work != np.float64, dtype == np.float64


def _run(xp: _Arrays, array: np.ndarray, widen: bool, plan: list[tuple[str, dict[str, Any]]],
         f64: bool) -> np.ndarray:
    """The folded chain on backend `xp`: the result as a NumPy float64 (`f64`) or float32 array."""
    folded = _Folded(xp.asarray(array), xp, xp.cpu and _NUMPY_ON_CPU, widen)
    for op, args in plan:
        _STEPS[op](folded, args)
    return xp.to_numpy(folded.result(), f64)


def _bound(step: IntensityStep) -> dict[str, Any]:
    """`step.params` bound to the std.pre operator's signature, its defaults filled in, so
    that defaults and argument names have one source (TypeError on an unknown name).
    Binding with `inspect` costs more than a small volume's whole computation, so it is
    cached per (operator, parameters); parameters that cannot be hashed are bound anew."""
    items = tuple(step.params.items())
    try:
        # 1, 1.0 and True are one key: harmless, as every step converts its numbers with float()
        return _bind_cached(step.op, items)
    except TypeError:
        # an unhashable parameter; or a wrong name, which _bind raises again
        return _bind(step.op, items)


def _bind(op: str, params: tuple[tuple[str, object], ...]) -> dict[str, Any]:
    signature = _signature(op)
    bound = signature.bind(None, **dict(params))
    bound.apply_defaults()
    args = dict(bound.arguments)
    args.pop(next(iter(signature.parameters)))
    if args.get("mask") is not None:
        raise ValueError("zscore with a mask is not fusable (its statistics come from another volume)")
    return args


@functools.lru_cache(maxsize=256)
def _bind_cached(op: str, params: tuple[tuple[str, object], ...]) -> dict[str, Any]:
    """`_bind`, cached: the dict is shared between calls, and the steps only read it."""
    return _bind(op, params)


@functools.cache
def _signature(op: str) -> inspect.Signature:
    from medasl.ops import pre

    return inspect.signature(getattr(pre, op))


# ===== the folded image ======================================================================


class _Folded:
    """The image `v = clamp(s * base + t, lo, hi)` (a constant `t` when `s == 0`), with
    the statistics of `base` computed so far (cleared whenever `base` changes)."""

    def __init__(self, base: Any, xp: _Arrays, numpy_stats: bool, widen: bool) -> None:
        self.xp = xp
        self.wide = xp.wide
        self.numpy = numpy_stats  # reductions with NumPy on base's memory (CPU only)
        self.base = base
        self.owned = False
        if widen:
            # A wide input is widened once up front: torch would otherwise compute an
            # int32 input's first multiply in float32.
            self._own()
        self.s, self.t, self.lo, self.hi = 1.0, 0.0, -math.inf, math.inf
        self.stats: dict[str, float] = {}

    # ----- folding -------------------------------------------------------------------------

    def affine(self, a: float, b: float) -> None:
        """v <- a * v + b."""
        if a == 0:
            self.constant(b)
            return
        self.s, self.t = a * self.s, a * self.t + b
        lo, hi = a * self.lo + b, a * self.hi + b
        self.lo, self.hi = (lo, hi) if a > 0 else (hi, lo)

    def normalize(self, sub: float, div: float) -> None:
        """v <- (v - sub) / div, div > 0: the affine map (1/div, -sub/div), unless the folded
        factor reaches beyond the float type (an image whose range is subnormal in it: 1/div
        may overflow even float64, where the operators' division does not, and a clamp in
        base's units would round its bounds to the subnormal grid); then base is scaled up by
        a power of two first, so that its values are normal numbers."""
        if self.s == 0:
            self.t = (self.t - sub) / div
            return
        a = 1.0 / div
        if abs(a * self.s) < self.xp.max:
            self.affine(a, -sub / div)
            return
        self._prescale(div)
        self.s, self.t = self.s / div, (self.t - sub) / div  # finite now: s / div is about 1

    def _prescale(self, div: float) -> None:
        """Write v into base, then base <- base * 2**k and s <- 2**-k with 2**k about 1/div:
        exact (powers of two), in factors of at most 2**100, which every float type holds."""
        self.materialize()
        k = max(-math.frexp(div)[1], 0)
        self.s = math.ldexp(1.0, -k)
        while k > 0:
            j = min(k, 100)
            self.xp.affine(self.base, math.ldexp(1.0, j), 0.0, self.base)
            k -= j

    def clamp(self, low: float, high: float) -> None:
        """v <- clamp(v, low, high), low <= high."""
        if self.s == 0:
            self.t = min(max(self.t, low), high)
            return
        lo, hi = max(self.lo, low), min(self.hi, high)
        if lo > hi:  # the intervals do not meet: every voxel lands on the same bound
            self.constant(high if self.lo > high else low)
        else:
            self.lo, self.hi = lo, hi

    def constant(self, c: float) -> None:
        self.s, self.t, self.lo, self.hi = 0.0, c, -math.inf, math.inf

    @property
    def clamped(self) -> bool:
        return self.lo > -math.inf or self.hi < math.inf

    # ----- statistics of v -------------------------------------------------------------------

    def minmax(self) -> tuple[float, float]:
        """min and max of v, from those of base (every folded map is monotone)."""
        if self.s == 0:
            return self.t, self.t
        a, b = self._mapped_base_range()
        mn, mx = min(max(a, self.lo), self.hi), min(max(b, self.lo), self.hi)
        if mn == mx:
            # v is constant: keep it as the constant itself, so that later steps give exact
            # values (s * base + t would cancel to a rounding residue, not to 0)
            self.constant(mn)
        return mn, mx

    def mean_std(self) -> tuple[float, float]:
        """Mean and population std of v."""
        mn, mx = self.minmax()
        if mn == mx:  # exactly 0, as the unfused std of a constant image, whatever rounding the sums have
            return mn, 0.0
        self._settle_clamp()
        mean, var = self._base_moments()
        return self.s * mean + self.t, abs(self.s) * math.sqrt(var)

    def percentiles(self, qs: Sequence[float]) -> list[float]:
        """NumPy's linear percentiles `qs` of v."""
        mn, mx = self.minmax()
        if mn == mx:
            return [mn] * len(qs)
        self._settle_clamp()
        # A decreasing map reverses the order: the q-th percentile of v is the image of
        # the (100 - q)-th of base (linear interpolation is symmetric).
        mirrored = [100.0 - q for q in qs] if self.s < 0 else list(qs)
        return [self.s * p + self.t for p in self._base_percentiles(mirrored)]

    def _mapped_base_range(self) -> tuple[float, float]:
        mn, mx = self._base_minmax()
        a, b = self.s * mn + self.t, self.s * mx + self.t
        return (a, b) if self.s > 0 else (b, a)

    def _settle_clamp(self) -> None:
        """Leave no clamp in the folded form, so that moments and percentiles of v are
        those of base mapped: a clamp no voxel reaches is dropped, one that changes voxels
        is applied to base (in base units, one pass)."""
        if not self.clamped:
            return
        a, b = self._mapped_base_range()
        if self.lo <= a and b <= self.hi:
            self.lo, self.hi = -math.inf, math.inf
            return
        bl, bh = (self.lo - self.t) / self.s, (self.hi - self.t) / self.s
        if self.s < 0:
            bl, bh = bh, bl
        bounds = (None if bl == -math.inf else bl, None if bh == math.inf else bh)
        # in place, or one pass that also makes the buffer
        self.base = self.xp.clamp(self.base, *bounds, out=self.base if self.owned else self._new_buffer())
        self.owned = True
        self.lo, self.hi = -math.inf, math.inf
        if "min" in self.stats:
            # both backends round the bounds to the buffer's type, and clamping is monotone: the new
            # min/max follow exactly from the old, without another pass
            bl, bh = self._rounded(bl), self._rounded(bh)
            mn, mx = self.stats["min"], self.stats["max"]
            self.stats = {"min": min(max(mn, bl), bh), "max": min(max(mx, bl), bh)}
        else:
            self.stats.clear()

    def _rounded(self, value: float) -> float:
        """`value` as the buffer's type holds it (round to nearest; beyond float32, inf)."""
        import numpy as np

        if self.wide or math.isinf(value):
            return value
        if abs(value) <= _F32_MAX:  # no overflow: spare the errstate context (microseconds per call)
            return float(np.float32(value))
        with np.errstate(over="ignore"):
            return float(np.float32(value))

    # ----- writing the buffer ----------------------------------------------------------------

    def _new_buffer(self) -> Any:
        """An uninitialised float buffer of base's shape."""
        return self.xp.empty_like(self.base)

    def _own(self) -> None:
        """Make base a float buffer of our own (the input is never written to)."""
        if not self.owned:
            self.base = self.xp.copy(self.base, self._new_buffer())
            self.owned = True

    def materialize(self) -> None:
        """Write v into the buffer: base <- v, and the folded map becomes the identity."""
        xp = self.xp
        if self.s == 0:
            self.base = xp.fill(self._new_buffer(), self.t)
        elif self.s != 1 or self.t != 0:
            out = self.base if self.owned else self._new_buffer()
            if max(abs(self.s), abs(self.t)) >= xp.max:
                # a factor beyond float32 (rescaling a range of subnormals): in float64
                xp.affine_wide(self.base, self.s, self.t, out)
            elif self._cancels():
                # v = s * (base - c) with c = -t / s near the voxels' values (a large offset
                # taken off, as zscore or rescale of an image far from 0 do): s * base + t
                # would round s, then s * base, at the offset's magnitude. base - c_hi is
                # exact (Sterbenz), and c's remainder c_lo is added in the scaled units.
                c = -self.t / self.s
                c_hi = self._rounded(c)
                xp.affine(xp.sub(self.base, c_hi, out), self.s, -self.s * (c - c_hi), out)
            else:
                # One pass for the multiply-add (torch), reading the input directly on the first write.
                xp.affine(self.base, self.s, self.t, out)
            self.base = out
        else:
            self._own()
        self.owned = True
        if self.clamped:
            xp.clamp(self.base, None if self.lo == -math.inf else self.lo, None if self.hi == math.inf else self.hi,
                     out=self.base)
        self.s, self.t, self.lo, self.hi = 1.0, 0.0, -math.inf, math.inf
        self.stats.clear()

    def _cancels(self) -> bool:
        """Whether s * base + t would cancel: the offset t is over 16 times every value of v
        (known only when base's min/max are; otherwise the plain form is used)."""
        if "min" not in self.stats:
            return False
        a, b = self._mapped_base_range()
        return abs(self.t) > 16.0 * max(abs(a), abs(b))

    def add_field(self, noise: np.ndarray, std: float) -> None:
        """v <- v + std * noise (a float64 NumPy field), folded into base when no clamp is
        pending: s * (base + std/s * noise) + t."""
        if self.s != 0:
            self._settle_clamp()
        if self.s == 0 or abs(std / self.s) >= self.xp.max:
            self.materialize()
        # in place, or one pass that also makes the buffer
        self.base = self.xp.add_field(self.base, noise, std / self.s, out=self.base if self.owned else self._new_buffer())
        self.owned = True
        self.stats.clear()

    def power(self, g: float) -> None:
        """base <- base ** g (base in [0, 1])."""
        self.materialize()
        self.xp.power(self.base, g)
        self.stats.clear()

    def result(self) -> Any:
        self.materialize()
        return self.base

    # ----- statistics of base ----------------------------------------------------------------

    def _base_minmax(self) -> tuple[float, float]:
        if "min" not in self.stats:
            if self.numpy:
                import numpy as np

                a = self.xp.numpy(self.base)
                # the reductions themselves: ndarray.min/max add a Python wrapper (0.4 us each)
                self.stats["min"] = float(np.minimum.reduce(a, axis=None))
                self.stats["max"] = float(np.maximum.reduce(a, axis=None))
            else:
                mn, mx = self.base.aminmax()
                self.stats["min"], self.stats["max"] = float(mn), float(mx)
        return self.stats["min"], self.stats["max"]

    def _base_moments(self) -> tuple[float, float]:
        """Mean and population variance of base."""
        import numpy as np

        if "mean" in self.stats:
            return self.stats["mean"], self.stats["var"]
        mn, mx = self._base_minmax()
        if mn == mx:
            mean, var = mn, 0.0
        elif self.numpy:
            flat = self.xp.numpy(self.base).reshape(-1)
            n = flat.size
            # Sums about c, an estimate of the mean: they then err by eps * spread, not eps * |mean|.
            c = min(max(float(flat.sum()) / n, mn), mx)
            if n <= _CHUNK:
                # One chunk: differences in float64 and a dot product, three calls where a
                # small image's whole chain costs tens of microseconds.
                d = np.subtract(flat, c, dtype=np.float64)
                s1, s2 = float(d.sum()), float(np.dot(d, d))
            else:
                tmp = np.empty(_CHUNK, dtype=np.float64 if flat.dtype == np.float64 else np.float32)
                c = float(tmp.dtype.type(c))  # representable in tmp's type, so that d is exactly chunk - c
                s1 = s2 = 0.0
                for start in range(0, n, _CHUNK):
                    chunk = flat[start:start + _CHUNK]
                    d = tmp[: chunk.size]
                    np.subtract(chunk, c, out=d, casting="same_kind")
                    s1 += float(d.sum())
                    np.square(d, out=d)
                    s2 += float(d.sum())
            mean = c + s1 / n
            var = max(s2 / n - (s1 / n) ** 2, 0.0)
        else:
            import torch

            v, m = torch.var_mean(self.base.to(torch.float64), correction=0)
            mean, var = float(m), float(v)
        self.stats["mean"], self.stats["var"] = mean, var
        return mean, var

    def _base_percentiles(self, qs: Sequence[float]) -> list[float]:
        """NumPy's `linear` percentiles of base: the same virtual index, the same two order
        statistics around it and the same interpolation as `np.percentile`."""
        import numpy as np

        n = math.prod(self.base.shape)
        where = []
        for q in qs:
            qf = float(np.true_divide(q, 100))
            virtual = n * qf + (1.0 + qf * (1.0 - 1.0 - 1.0)) - 1.0  # numpy's _compute_virtual_index, alpha=beta=1
            prev = min(max(math.floor(virtual), 0), n - 1)
            where.append((virtual, prev, min(prev + 1, n - 1)))
        kth = sorted({k for _, p, nx in where for k in (p, nx)})
        if self.numpy:
            part = np.partition(self.xp.numpy(self.base).reshape(-1), kth)
            picked = {k: float(part[k]) for k in kth}
        else:
            import torch

            ordered = torch.sort(self.base.reshape(-1)).values
            picked = {k: float(ordered[k]) for k in kth}
        out = []
        for virtual, prev, nxt in where:
            a, b = picked[prev], picked[nxt]
            g = virtual - prev
            out.append(b - (b - a) * (1 - g) if g >= 0.5 else a + (b - a) * g)  # numpy's _lerp
        return out


# ===== the array backends =====================================================================


class _Arrays(Protocol):
    """The passes over the voxels `_Folded` makes, on one backend's arrays. Every pass
    computes in the backend's float type (`wide`: float64, else float32), rounds scalars
    to it as torch does, writes into `out` (which may be the source) and returns it."""

    wide: bool
    cpu: bool
    max: float  # the largest finite value of the float type

    def asarray(self, a: np.ndarray) -> Any: ...

    def to_numpy(self, a: Any, f64: bool) -> np.ndarray:
        """`a` as a NumPy float64 (`f64`) or float32 array (possibly `a`'s own memory: `a` is ours)."""

    def numpy(self, a: Any) -> np.ndarray:
        """A NumPy view of `a` (CPU arrays only), for the NumPy reductions."""

    def empty_like(self, a: Any) -> Any: ...

    def copy(self, src: Any, out: Any) -> Any: ...

    def fill(self, out: Any, value: float) -> Any: ...

    def affine(self, src: Any, s: float, t: float, out: Any) -> Any:
        """out = s * src + t."""

    def affine_wide(self, src: Any, s: float, t: float, out: Any) -> Any:
        """out = s * src + t computed in float64 (factors beyond the float type)."""

    def sub(self, src: Any, c: float, out: Any) -> Any: ...

    def clamp(self, src: Any, lo: float | None, hi: float | None, out: Any) -> Any: ...

    def add_field(self, src: Any, field: np.ndarray, alpha: float, out: Any) -> Any:
        """out = src + alpha * field, the float64 field rounded to the float type first."""

    def power(self, a: Any, g: float) -> Any:
        """a <- a ** g, in place."""


class _NumpyArrays:
    """NumPy on the CPU: a microsecond per call and no thread pool, so a small volume's
    whole chain costs little more than its passes (see the module docstring)."""

    cpu = True

    def __init__(self, wide: bool) -> None:
        import numpy as np

        self.wide = wide
        self.dtype = np.dtype(np.float64 if wide else np.float32)
        self.type = self.dtype.type
        self.max = float(np.finfo(self.dtype).max)

    def _scalar(self, value: float) -> np.floating:
        """`value` rounded to the float type (beyond its range: inf, as torch converts)."""
        import numpy as np

        if -self.max <= value <= self.max:
            return self.type(value)
        with np.errstate(over="ignore"):
            return self.type(value)

    def asarray(self, a: np.ndarray) -> np.ndarray:
        return a

    def to_numpy(self, a: np.ndarray, f64: bool) -> np.ndarray:
        return a if a.dtype.itemsize == (8 if f64 else 4) else a.astype("f8" if f64 else "f4")

    def numpy(self, a: np.ndarray) -> np.ndarray:
        return a

    def empty_like(self, a: np.ndarray) -> np.ndarray:
        import numpy as np

        return np.empty(a.shape, dtype=self.dtype)

    def copy(self, src: np.ndarray, out: np.ndarray) -> np.ndarray:
        import numpy as np

        np.copyto(out, src)
        return out

    def fill(self, out: np.ndarray, value: float) -> np.ndarray:
        out.fill(self._scalar(value))
        return out

    def affine(self, src: np.ndarray, s: float, t: float, out: np.ndarray) -> np.ndarray:
        import numpy as np

        # dtype: an integer input and the factors are converted to the float type, as torch
        # converts them (no promotion to float64); s and t are finite in it (materialize)
        np.multiply(src, s, out=out, dtype=self.dtype)
        return np.add(out, t, out=out, dtype=self.dtype)

    def affine_wide(self, src: np.ndarray, s: float, t: float, out: np.ndarray) -> np.ndarray:
        import numpy as np

        with np.errstate(over="ignore"):  # beyond float32: inf, as torch's conversion gives
            np.copyto(out, src.astype(np.float64) * s + t, casting="same_kind")
        return out

    def sub(self, src: np.ndarray, c: float, out: np.ndarray) -> np.ndarray:
        import numpy as np

        return np.subtract(src, c, out=out, dtype=self.dtype)

    def clamp(self, src: np.ndarray, lo: float | None, hi: float | None, out: np.ndarray) -> np.ndarray:
        # The method, not np.clip: np.clip's wrapper costs 2 us, a small image's whole pass.
        # One-sided as clip with an infinite bound: np.maximum / np.minimum take 2 to 4 times longer.
        # The bounds are scalars of the float type, so an integer input is clipped as floats.
        mx, ty = self.max, self.type
        low = ty(-math.inf) if lo is None else ty(lo) if -mx <= lo <= mx else self._scalar(lo)
        high = ty(math.inf) if hi is None else ty(hi) if -mx <= hi <= mx else self._scalar(hi)
        return src.clip(low, high, out=out)

    def add_field(self, src: np.ndarray, field: np.ndarray, alpha: float, out: np.ndarray) -> np.ndarray:
        import numpy as np

        noise = field.astype(self.dtype, copy=False)  # the field is the caller's to spend
        np.multiply(noise, self._scalar(alpha), out=noise)
        return np.add(src, noise, out=out, dtype=self.dtype)

    def power(self, a: np.ndarray, g: float) -> np.ndarray:
        import numpy as np

        return np.power(a, self._scalar(g), out=a)


@functools.cache
def _numpy_arrays(wide: bool) -> _NumpyArrays:
    """The NumPy backends (they hold no state of a call), made once."""
    return _NumpyArrays(wide)


class _TorchArrays:
    """torch on `device` (every device; on the CPU for volumes above `_NUMPY_MAX_VOXELS`)."""

    def __init__(self, wide: bool, device: str) -> None:
        import torch

        self.wide = wide
        self.device = torch.device(device)
        self.cpu = self.device.type == "cpu"
        self.dtype = torch.float64 if wide else torch.float32
        self.max = float(torch.finfo(self.dtype).max)

    @contextmanager
    def cpu_threads(self) -> Iterator[None]:
        """torch's CPU passes on one thread (restored after): on a busy machine each
        multi-threaded pass waits at its barrier for a descheduled thread (module docstring)."""
        import torch

        before = torch.get_num_threads()
        if not self.cpu or before == 1:
            yield
            return
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(before)

    def asarray(self, a: np.ndarray) -> torch.Tensor:
        import torch

        return torch.from_numpy(a).to(self.device)

    def to_numpy(self, a: torch.Tensor, f64: bool) -> np.ndarray:
        import torch

        return a.to(torch.float64 if f64 else torch.float32).cpu().numpy()

    def numpy(self, a: torch.Tensor) -> np.ndarray:
        return a.numpy()

    def empty_like(self, a: torch.Tensor) -> torch.Tensor:
        """On the CPU NumPy allocates the buffer: its allocator reuses the memory of a freed
        image, where a fresh torch allocation of tens of MB pays the page faults again
        (measured: a clamp into a NumPy buffer took two thirds of the time of one into a new
        torch tensor)."""
        import numpy as np
        import torch

        if self.cpu:
            return torch.from_numpy(np.empty(tuple(a.shape), dtype=np.float64 if self.wide else np.float32))
        return torch.empty(a.shape, dtype=self.dtype, device=a.device)

    def copy(self, src: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return out.copy_(src)

    def fill(self, out: torch.Tensor, value: float) -> torch.Tensor:
        return out.fill_(value)

    def affine(self, src: torch.Tensor, s: float, t: float, out: torch.Tensor) -> torch.Tensor:
        import torch

        return torch.add(torch.tensor(t, dtype=self.dtype, device=out.device), src, alpha=s, out=out)

    def affine_wide(self, src: torch.Tensor, s: float, t: float, out: torch.Tensor) -> torch.Tensor:
        import torch

        return out.copy_(src.to(torch.float64).mul_(s).add_(t))

    def sub(self, src: torch.Tensor, c: float, out: torch.Tensor) -> torch.Tensor:
        import torch

        return torch.sub(src, c, out=out)

    def clamp(self, src: torch.Tensor, lo: float | None, hi: float | None, out: torch.Tensor) -> torch.Tensor:
        import torch

        if out is src:
            return src.clamp_(lo, hi)
        return torch.clamp(src, lo, hi, out=out)

    def add_field(self, src: torch.Tensor, field: np.ndarray, alpha: float, out: torch.Tensor) -> torch.Tensor:
        import torch

        # The float64 field is rounded to the buffer's type before it is added (the operator
        # adds in float64 and rounds once): one rounding more, and twice as fast as adding float64.
        noise = torch.from_numpy(field).to(device=self.device, dtype=self.dtype)
        return torch.add(src, noise, alpha=alpha, out=out)

    def power(self, a: torch.Tensor, g: float) -> torch.Tensor:
        return a.pow_(g)


# ===== the steps ==============================================================================


def _f32(value: float) -> float:
    """`value` rounded to float32, as window and clip round their bounds (they clip float32 arrays)."""
    import numpy as np

    return float(np.float32(value))


def _window(v: _Folded, a: dict[str, Any]) -> None:
    level, width = float(a["level"]), float(a["width"])
    if width <= 0:
        raise ValueError(f"window width must be positive, not {width}")
    low = level - width / 2.0
    v.clamp(_f32(low), _f32(low + width))
    v.normalize(low, width)


def _clip(v: _Folded, a: dict[str, Any]) -> None:
    low, high = float(a["low"]), float(a["high"])
    if low > high:
        raise ValueError(f"clip needs low <= high, got {low} > {high}")
    v.clamp(_f32(low), _f32(high))


def _rescale(v: _Folded, a: dict[str, Any]) -> None:
    low, high = float(a["low"]), float(a["high"])
    mn, mx = v.minmax()
    if mx == mn:
        v.constant(low)
        return
    v.normalize(mn, mx - mn)
    v.affine(high - low, low)


def _zscore(v: _Folded, a: dict[str, Any]) -> None:
    mean, std = v.mean_std()
    d = std if std > 0 else 1.0
    v.normalize(mean, d)


def _percentile_rescale(v: _Folded, a: dict[str, Any]) -> None:
    lower, upper = float(a["lower"]), float(a["upper"])
    if not 0.0 <= lower < upper <= 100.0:
        raise ValueError(f"percentiles need 0 <= lower < upper <= 100, got {lower} and {upper}")
    lo, hi = v.percentiles([lower, upper])
    if hi == lo:
        v.constant(0.0)
        return
    v.normalize(lo, hi - lo)
    v.clamp(0.0, 1.0)


def _gamma(v: _Folded, d: dict[str, Any]) -> None:
    mn, mx = v.minmax()
    if mx <= mn:
        return
    v.normalize(mn, mx - mn)
    v.clamp(0.0, 1.0)  # rounding may put the extremes a hair outside [0, 1]; the power needs u >= 0
    v.power(float(d["gamma"]))
    v.affine(mx - mn, mn)


def _contrast(v: _Folded, d: dict[str, Any]) -> None:
    mn, mx = v.minmax()
    mean = v.mean_std()[0]
    f = float(d["factor"])
    v.affine(f, (1.0 - f) * mean)
    v.clamp(mn, mx)


def _brightness(v: _Folded, d: dict[str, Any]) -> None:
    v.affine(float(d["factor"]), 0.0)


def _gaussian_noise(v: _Folded, d: dict[str, Any]) -> None:
    from medasl.ops.aug import noise_field

    v.add_field(noise_field(d, tuple(v.base.shape)), float(d["std"]))


_STEPS: dict[str, Callable[[_Folded, dict[str, Any]], None]] = {
    "window": _window, "clip": _clip, "rescale": _rescale, "zscore": _zscore,
    "percentile_rescale": _percentile_rescale, "gamma": _gamma, "contrast": _contrast,
    "brightness": _brightness, "gaussian_noise": _gaussian_noise,
}
