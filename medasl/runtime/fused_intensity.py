"""The fused intensity kernel (issue 9, "Intensity fusion"): a chain of element-wise
intensity steps on one case run as one folded computation with torch on the run's device.

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

import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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
the torch reductions other devices use on the CPU as well."""


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
    passes over the voxels as the chain allows, with torch on `device`.

    Returns the result and, for each random step (by its index in `steps`), what it drew:
    the same `drawn` dict the unfused operator returns. A chain in which no step changes
    the image (only random steps, none applied) returns `x` itself, as the operators do.
    The result is float32, or float64 when the input is float64 and only std.aug steps
    (which keep float64) were applied.
    """
    import numpy as np
    import torch

    from medasl.ops import aug, pre
    from medasl.runtime.values import Pair

    vol = x.input if isinstance(x, Pair) else x
    draws: dict[int, dict] = {}
    plan: list[tuple[str, dict[str, Any]]] = []
    for i, step in enumerate(steps):
        if step.op not in INTENSITY_OPS:
            raise ValueError(f"{step.op!r} is not a fusable intensity operator ({', '.join(sorted(INTENSITY_OPS))})")
        if step.op in RANDOM_OPS:
            if step.seed is None:
                raise ValueError(f"step {i} ({step.op}) is random and needs a seed")
            draw: Callable[..., dict] = getattr(aug, f"draw_{step.op}")
            drawn = draw(np.random.default_rng(list(step.seed)), **step.params)
            draws[i] = drawn
            if drawn["applied"]:
                plan.append((step.op, drawn))
        else:
            plan.append((step.op, _bound(getattr(pre, step.op), step)))
    if not plan:
        return x, draws

    array = vol.array
    if array.dtype.kind == "f" and array.dtype.itemsize == 2:
        array = array.astype(np.float32)  # as the operators do; a float16 buffer would also sum in float16
    elif not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))  # torch takes native byte order only
    array = np.ascontiguousarray(array)
    wide = array.dtype == np.float64 or (array.dtype.kind in "iu" and array.dtype.itemsize > 2)
    compute = torch.float64 if wide else torch.float32
    # the original dtype, compared as std.aug compares it (a big-endian float64 gives float32 there)
    keeps_f64 = vol.array.dtype == np.float64 and all(op in RANDOM_OPS for op, _ in plan)
    folded = _Folded(torch.from_numpy(array).to(device), compute)
    for op, args in plan:
        _STEPS[op](folded, args)
    out = folded.result().to(torch.float64 if keeps_f64 else torch.float32).cpu().numpy()
    result = vol.with_array(out)
    return (Pair(result, x.target) if isinstance(x, Pair) else result), draws


def _bound(fn: Callable[..., object], step: IntensityStep) -> dict[str, Any]:
    """`step.params` bound to the std.pre operator's signature, its defaults filled in, so
    that defaults and argument names have one source (TypeError on an unknown name)."""
    bound = inspect.signature(fn).bind(None, **step.params)
    bound.apply_defaults()
    args = dict(bound.arguments)
    args.pop(next(iter(inspect.signature(fn).parameters)))
    if args.get("mask") is not None:
        raise ValueError("zscore with a mask is not fusable (its statistics come from another volume)")
    return args


# ===== the folded image ======================================================================


class _Folded:
    """The image `v = clamp(s * base + t, lo, hi)` (a constant `t` when `s == 0`), with
    the statistics of `base` computed so far (cleared whenever `base` changes)."""

    def __init__(self, base: torch.Tensor, dtype: torch.dtype) -> None:
        import torch

        self.dtype = dtype
        self.cpu = base.device.type == "cpu"
        self.numpy = self.cpu and _NUMPY_ON_CPU
        self.base = base
        self.owned = False
        if dtype == torch.float64 and base.dtype != dtype:
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
        import torch

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
        if self.owned:
            self.base.clamp_(*bounds)
        else:  # one pass that also makes the buffer
            self.base = torch.clamp(self.base, *bounds, out=self._new_buffer())
            self.owned = True
        self.lo, self.hi = -math.inf, math.inf
        if "min" in self.stats:
            # torch rounds the bounds to the buffer's type, and clamping is monotone: the new
            # min/max follow exactly from the old, without another pass
            bl, bh = self._rounded(bl), self._rounded(bh)
            mn, mx = self.stats["min"], self.stats["max"]
            self.stats = {"min": min(max(mn, bl), bh), "max": min(max(mx, bl), bh)}
        else:
            self.stats.clear()

    def _rounded(self, value: float) -> float:
        """`value` as the buffer's type holds it (round to nearest; beyond float32, inf)."""
        import numpy as np
        import torch

        if self.dtype == torch.float64 or math.isinf(value):
            return value
        with np.errstate(over="ignore"):
            return float(np.float32(value))

    # ----- writing the buffer ----------------------------------------------------------------

    def _new_buffer(self) -> torch.Tensor:
        """An uninitialised float buffer of base's shape. On the CPU NumPy allocates it:
        its allocator reuses the memory of a freed image, where a fresh torch allocation of
        tens of MB pays the page faults again (measured: a clamp into a NumPy buffer took
        two thirds of the time of one into a new torch tensor)."""
        import numpy as np
        import torch

        if self.cpu:
            np_dtype = np.float64 if self.dtype == torch.float64 else np.float32
            return torch.from_numpy(np.empty(tuple(self.base.shape), dtype=np_dtype))
        return torch.empty(self.base.shape, dtype=self.dtype, device=self.base.device)

    def _own(self) -> None:
        """Make base a float buffer of our own (the input is never written to)."""
        if not self.owned:
            self.base = self._new_buffer().copy_(self.base)
            self.owned = True

    def materialize(self) -> None:
        """Write v into the buffer: base <- v, and the folded map becomes the identity."""
        import torch

        if self.s == 0:
            self.base = self._new_buffer().fill_(self.t)
        elif self.s != 1 or self.t != 0:
            out = self.base if self.owned else self._new_buffer()
            if max(abs(self.s), abs(self.t)) >= torch.finfo(self.dtype).max:
                # a factor beyond float32 (rescaling a range of subnormals): in float64
                out.copy_(self.base.to(torch.float64).mul_(self.s).add_(self.t))
            elif self._cancels():
                # v = s * (base - c) with c = -t / s near the voxels' values (a large offset
                # taken off, as zscore or rescale of an image far from 0 do): s * base + t
                # would round s, then s * base, at the offset's magnitude. base - c_hi is
                # exact (Sterbenz), and c's remainder c_lo is added in the scaled units.
                c = -self.t / self.s
                c_hi = self._rounded(c)
                torch.sub(self.base, c_hi, out=out)
                torch.add(torch.tensor(-self.s * (c - c_hi), dtype=self.dtype, device=out.device), out,
                          alpha=self.s, out=out)
            else:
                # One pass for the multiply-add, reading the input directly on the first write.
                torch.add(torch.tensor(self.t, dtype=self.dtype, device=out.device), self.base, alpha=self.s, out=out)
            self.base = out
        else:
            self._own()
        self.owned = True
        if self.clamped:
            self.base.clamp_(None if self.lo == -math.inf else self.lo, None if self.hi == math.inf else self.hi)
        self.s, self.t, self.lo, self.hi = 1.0, 0.0, -math.inf, math.inf
        self.stats.clear()

    def _cancels(self) -> bool:
        """Whether s * base + t would cancel: the offset t is over 16 times every value of v
        (known only when base's min/max are; otherwise the plain form is used)."""
        if "min" not in self.stats:
            return False
        a, b = self._mapped_base_range()
        return abs(self.t) > 16.0 * max(abs(a), abs(b))

    def add_field(self, noise: torch.Tensor, std: float) -> None:
        """v <- v + std * noise, folded into base when no clamp is pending:
        s * (base + std/s * noise) + t."""
        import torch

        if self.s != 0:
            self._settle_clamp()
        if self.s == 0 or abs(std / self.s) >= torch.finfo(self.dtype).max:
            self.materialize()
        if self.owned:
            self.base.add_(noise, alpha=std / self.s)
        else:  # one pass that also makes the buffer
            self.base = torch.add(self.base, noise, alpha=std / self.s, out=self._new_buffer())
            self.owned = True
        self.stats.clear()

    def power(self, g: float) -> None:
        """base <- base ** g (base in [0, 1])."""
        self.materialize()
        self.base.pow_(g)
        self.stats.clear()

    def result(self) -> torch.Tensor:
        self.materialize()
        return self.base

    # ----- statistics of base ----------------------------------------------------------------

    def _base_minmax(self) -> tuple[float, float]:
        if "min" not in self.stats:
            if self.numpy:
                a = self.base.numpy()
                self.stats["min"], self.stats["max"] = float(a.min()), float(a.max())
            else:
                mn, mx = self.base.aminmax()
                self.stats["min"], self.stats["max"] = float(mn), float(mx)
        return self.stats["min"], self.stats["max"]

    def _base_moments(self) -> tuple[float, float]:
        """Mean and population variance of base."""
        import numpy as np
        import torch

        if "mean" in self.stats:
            return self.stats["mean"], self.stats["var"]
        mn, mx = self._base_minmax()
        if mn == mx:
            mean, var = mn, 0.0
        elif self.numpy:
            flat = self.base.numpy().reshape(-1)
            n = flat.size
            tmp = np.empty(min(n, _CHUNK), dtype=np.float64 if flat.dtype == np.float64 else np.float32)
            # Sums about c, an estimate of the mean representable in tmp's type: the
            # pairwise float32 sums then err by eps * spread, not eps * |mean|.
            c = float(tmp.dtype.type(min(max(float(flat.sum()) / n, mn), mx)))
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
            v, m = torch.var_mean(self.base.to(torch.float64), correction=0)
            mean, var = float(m), float(v)
        self.stats["mean"], self.stats["var"] = mean, var
        return mean, var

    def _base_percentiles(self, qs: Sequence[float]) -> list[float]:
        """NumPy's `linear` percentiles of base: the same virtual index, the same two order
        statistics around it and the same interpolation as `np.percentile`."""
        import numpy as np
        import torch

        n = self.base.numel()
        where = []
        for q in qs:
            qf = float(np.true_divide(q, 100))
            virtual = n * qf + (1.0 + qf * (1.0 - 1.0 - 1.0)) - 1.0  # numpy's _compute_virtual_index, alpha=beta=1
            prev = min(max(math.floor(virtual), 0), n - 1)
            where.append((virtual, prev, min(prev + 1, n - 1)))
        kth = sorted({k for _, p, nx in where for k in (p, nx)})
        if self.numpy:
            part = np.partition(self.base.numpy().reshape(-1), kth)
            picked = {k: float(part[k]) for k in kth}
        else:
            ordered = torch.sort(self.base.reshape(-1)).values
            picked = {k: float(ordered[k]) for k in kth}
        out = []
        for virtual, prev, nxt in where:
            a, b = picked[prev], picked[nxt]
            g = virtual - prev
            out.append(b - (b - a) * (1 - g) if g >= 0.5 else a + (b - a) * g)  # numpy's _lerp
        return out


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
    v.affine(1.0 / width, -low / width)


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
    scale = (high - low) / (mx - mn)
    v.affine(scale, low - mn * scale)


def _zscore(v: _Folded, a: dict[str, Any]) -> None:
    mean, std = v.mean_std()
    d = std if std > 0 else 1.0
    v.affine(1.0 / d, -mean / d)


def _percentile_rescale(v: _Folded, a: dict[str, Any]) -> None:
    lower, upper = float(a["lower"]), float(a["upper"])
    if not 0.0 <= lower < upper <= 100.0:
        raise ValueError(f"percentiles need 0 <= lower < upper <= 100, got {lower} and {upper}")
    lo, hi = v.percentiles([lower, upper])
    if hi == lo:
        v.constant(0.0)
        return
    v.affine(1.0 / (hi - lo), -lo / (hi - lo))
    v.clamp(0.0, 1.0)


def _gamma(v: _Folded, d: dict[str, Any]) -> None:
    mn, mx = v.minmax()
    if mx <= mn:
        return
    v.affine(1.0 / (mx - mn), -mn / (mx - mn))
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
    import torch

    from medasl.ops.aug import noise_field

    field_ = noise_field(d, tuple(v.base.shape))
    # The float64 field is rounded to the buffer's type before it is added (the operator adds
    # in float64 and rounds once): one rounding more, and twice as fast as adding float64.
    v.add_field(torch.from_numpy(field_).to(device=v.base.device, dtype=v.dtype), float(d["std"]))


_STEPS: dict[str, Callable[[_Folded, dict[str, Any]], None]] = {
    "window": _window, "clip": _clip, "rescale": _rescale, "zscore": _zscore,
    "percentile_rescale": _percentile_rescale, "gamma": _gamma, "contrast": _contrast,
    "brightness": _brightness, "gaussian_noise": _gaussian_noise,
}
