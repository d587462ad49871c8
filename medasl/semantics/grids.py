"""Voxel grids: which values live on the same grid (spacing, origin, direction, size).

A metric, an overlay or a mask operation compares values voxel by voxel, which is only
meaningful on one grid. A prediction made on resampled, cropped images and a label read
from disk are on different grids even when both are `LabelMap[3, 2]`; comparing them
runs, and gives a wrong number. The checker gives each grid a token:

- a reader (an operator with no spatial input) creates a grid: image and label of one
  case share it;
- a `@spatial` operator creates a new grid (once per call, shared by image and label),
  except `@grid_of(param)` operators, which resample onto that parameter's grid;
- any other operator keeps the grid of its spatial inputs, which must agree.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from medasl.diagnostics import label, secondary
from medasl.ir.types import COLLECTIONS, SPATIAL_KINDS, UNKNOWN, Fn, Ty, TyLike, attr, with_attr

if TYPE_CHECKING:
    from medasl.semantics.calls import CallChecker
    from medasl.semantics.checker import Val

NETWORKS = ("Model", "Trained")  # a network's types describe inputs, not a grid


def grids_in(t: TyLike) -> list[str]:
    """The grid tokens of the spatial values inside a type, in order, without repeats."""
    found: list[str] = []

    def walk(u: TyLike) -> None:
        if not isinstance(u, Ty) or u.name in NETWORKS:
            return
        if u.name in SPATIAL_KINDS:
            grid = attr(u, "grid")
            if isinstance(grid, str) and grid not in found:
                found.append(grid)
        for p in u.params:
            walk(p)

    walk(t)
    return found


def on_grid(t: TyLike, grid: str, replace: bool, shape: object = UNKNOWN) -> TyLike:
    """`t` with its spatial values on `grid` (only those on no known grid, unless
    `replace`); a grid has a size, so values put on a known grid get its `shape`."""
    if isinstance(t, Fn) or not isinstance(t, Ty) or t.name in NETWORKS:
        return t
    if t.name in SPATIAL_KINDS and (replace or attr(t, "grid") is UNKNOWN):
        t = with_attr(t, "grid", grid)
        if shape is not UNKNOWN and attr(t, "shape") is UNKNOWN:
            t = with_attr(t, "shape", shape)  # type: ignore[arg-type]
    return Ty(t.name, t.attrs, tuple(on_grid(p, grid, replace, shape) for p in t.params))


def _shape_on(t: TyLike, grid: str) -> object:
    """The shape of a spatial value on `grid` inside `t`, if one is known."""
    if not isinstance(t, Ty) or t.name in NETWORKS:
        return UNKNOWN
    if t.name in SPATIAL_KINDS and attr(t, "grid") == grid:
        return attr(t, "shape")
    for p in t.params:
        shape = _shape_on(p, grid)
        if shape is not UNKNOWN:
            return shape
    return UNKNOWN


def without_grid(t: TyLike) -> TyLike:
    if not isinstance(t, Ty):
        return t
    if t.name in SPATIAL_KINDS:
        t = with_attr(t, "grid", UNKNOWN)
    return Ty(t.name, t.attrs, tuple(without_grid(p) for p in t.params))


def place(cc: CallChecker, result: TyLike, types: dict[str, TyLike]) -> TyLike:
    """Put the result of a call on its grid."""
    op = cc.op
    target = op.attrs.get("grid_of")
    if target:
        grids = grids_in(types.get(str(target[0]), Ty("Any")))
        return on_grid(result, grids[0], replace=True) if grids else without_grid(result)
    if op.has("spatial"):
        return on_grid(result, cc.new_grid(), replace=True)
    inputs = [(g, t) for t in types.values() for g in grids_in(t)]
    if inputs:
        grid, source = inputs[0]
        return on_grid(result, grid, replace=False, shape=_shape_on(source, grid))
    return on_grid(result, cc.new_grid(), replace=False)


def check_agreement(cc: CallChecker, values: dict[str, Val], types: dict[str, TyLike]) -> None:
    """The spatial inputs of an operator that is not spatial must share one grid. Only
    case-level inputs count: whole datasets (training and validation data) are not
    compared voxel by voxel."""
    if cc.op.has("spatial") or cc.op.has("grid_of"):
        return
    seen: dict[str, str] = {}  # grid -> the first parameter on it
    for param in cc.op.params:
        t = types.get(param.name)
        if t is None or (isinstance(param.type, Ty) and param.type.name in COLLECTIONS):
            continue
        for grid in grids_in(t):
            seen.setdefault(grid, param.name)
    if len(seen) < 2:
        return
    (grid_a, param_a), (grid_b, param_b) = list(seen.items())[:2]
    described_a, described_b = cc.pc.describe_grid(grid_a), cc.pc.describe_grid(grid_b)
    cc.pc.error(
        "E0250",
        f"`{cc.op.name}` compares `{param_a}` and `{param_b}` voxel by voxel, but they are on different grids",
        label(values[param_b].span, f"on the grid of {described_b}"),
        secondary(values[param_a].span, f"on the grid of {described_a}"),
        help="resample one onto the other's grid first with `resample_to(x, reference)`: a prediction made on"
        " resampled or cropped images goes back onto the original image before it is compared",
    )
