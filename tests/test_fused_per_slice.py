"""Per-slice sampling (issue 9, "where an axis is left untouched, sample in 2-D per slice"):
`rotate(in_plane=true)`, the CPU's choice of the per-slice path for chains that keep
every slice a slice, and interpolating steps given to the kernel alone.

Checked against the established implementation: an in-plane rotation of a 3-D volume
equals SimpleITK's 2-D rotation of every slice; the fused chain equals the unfused
operators (images to 1e-4 of the intensity range, geometry to 1e-6 mm) and the one
SimpleITK resampling of the composed map."""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813 (the alias SimpleITK documents)

import medasl.runtime.fused_spatial as fs
from medasl.ops import aug
from medasl.runtime.fused_spatial import SpatialStep, fused_spatial, unfused_spatial
from medasl.runtime.values import Volume

IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def _ct(shape_zyx: tuple[int, int, int] = (12, 70, 90), direction: tuple[float, ...] = IDENTITY,
        spacing: tuple[float, float, float] = (0.8, 0.8, 3.0)) -> Volume:
    """A smooth CT-like volume whose slices all differ."""
    z, y, x = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in shape_zyx), indexing="ij")
    a = 300 * np.cos(x / 7.0) * np.sin(y / 9.0 + z / 3.0) + 40 * z - 200
    return Volume(a.astype(np.float32), spacing, (5.0, -3.0, 10.0), direction, kind="image", modality="CT")


def _rotated_slices(vol: Volume, degrees: float) -> np.ndarray:
    """Every slice rotated in 2-D by SimpleITK about the slice's centre (identity direction)."""
    out = []
    for plane in vol.array:
        img = sitk.GetImageFromArray(plane)
        img.SetSpacing(vol.spacing[:2])
        img.SetOrigin(vol.origin[:2])
        centre = img.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2.0 for n in img.GetSize()])
        rotation = sitk.Euler2DTransform(centre, math.radians(degrees))
        out.append(sitk.GetArrayFromImage(sitk.Resample(img, img, rotation, sitk.sitkLinear, float(vol.array.min()))))
    return np.stack(out)


def test_in_plane_rotation_is_simpleitks_2d_rotation_of_every_slice() -> None:
    vol = _ct()
    out, drawn = aug.rotate(vol, angle=15.0, p=1.0, in_plane=True, rng=np.random.default_rng(3))
    assert len(drawn["angles"]) == 1 and abs(drawn["angles"][0]) <= 15.0
    np.testing.assert_allclose(out.array, _rotated_slices(vol, drawn["angles"][0]), atol=1e-3)
    assert (out.spacing, out.origin, out.direction) == (vol.spacing, vol.origin, vol.direction)


def test_in_plane_rotation_turns_about_the_slice_axis_whatever_the_direction() -> None:
    """With a sagittal direction (slice axis = world x) each output slice still comes from
    its own input slice: changing one input slice changes that output slice only."""
    sagittal = (0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    vol = _ct(direction=sagittal)
    out, drawn = aug.rotate(vol, angle=20.0, p=1.0, in_plane=True, rng=np.random.default_rng(5))
    changed = vol.with_array(vol.array.copy())
    changed.array[4] += 500.0
    again = aug.replay("rotate", changed, drawn)
    differs = np.abs(again.array - out.array).reshape(len(out.array), -1).max(axis=1) > 1e-3
    assert differs.tolist() == [k == 4 for k in range(len(out.array))]
    # and it is a real rotation in the slice plane, not the identity
    assert np.abs(out.array - vol.array).max() > 10.0


def test_chains_keeping_slices_take_the_per_slice_path_and_agree_with_the_operators(
        monkeypatch: pytest.MonkeyPatch) -> None:
    vol = _ct((10, 96, 80))
    chain = [SpatialStep("resample", {"spacing": (1.1, 1.3, 3.0)}), SpatialStep("crop_or_pad", {"size": (72, 80, 10)}),
             SpatialStep("flip", {"axis": 0, "p": 1.0}, (1,)),
             SpatialStep("rotate", {"angle": 12.0, "p": 1.0, "in_plane": True}, (2,))]
    stages, _ = fs._plan(vol, chain)
    assert fs._keeps_slices(stages)
    # the CPU path samples with 2-D grid_sample calls only (per slice), not SimpleITK
    import torch.nn.functional as F  # noqa: N812 (the alias torch documents)

    calls: list[int] = []
    real = F.grid_sample

    def counting(inp, grid, **kw):  # type: ignore[no-untyped-def]
        calls.append(inp.dim())
        return real(inp, grid, **kw)

    monkeypatch.setattr(F, "grid_sample", counting)
    (f, df), (u, du) = fused_spatial(vol, chain), unfused_spatial(vol, chain)
    assert calls and set(calls) == {4}
    assert df == du
    np.testing.assert_allclose([*f.spacing, *f.origin, *f.direction], [*u.spacing, *u.origin, *u.direction], atol=1e-6)
    # away from the fill region (which the unfused chain blends over one voxel), within
    # the difference between interpolating once and twice on this smooth image
    span = float(vol.array.max() - vol.array.min())
    from scipy.ndimage import binary_dilation

    filled = (f.array <= vol.array.min() + 1e-3) | (u.array <= vol.array.min() + 1e-3)
    inside = ~binary_dilation(filled, structure=np.ones((1, 5, 5), bool))  # 2 voxels in plane
    assert inside.mean() > 0.5
    assert np.abs(f.array - u.array)[inside].max() < 0.01 * span
    # and the per-slice path equals one SimpleITK resampling of the composed map
    monkeypatch.setattr(fs, "_keeps_slices", lambda stages: False)
    s, _ = fused_spatial(vol, chain)
    assert np.abs(s.array - f.array).max() < 1e-4 * span


def test_a_step_alone_runs_in_the_kernel_only_on_large_volumes() -> None:
    step = [SpatialStep("resample", {"spacing": (2.0, 2.0, 3.0)})]
    small = _ct((12, 64, 64))  # 49 k voxels
    large = Volume(np.zeros((20, 256, 256), np.int16), (0.8, 0.8, 3.0), (0, 0, 0), IDENTITY, kind="image")
    assert not fs.worth_fusing(step, "cpu", small) and fs.worth_fusing(step, "cpu", large)
    assert fs.worth_fusing(step, "cuda", small)
    assert not fs.worth_fusing([SpatialStep("elastic", {"p": 1.0}, (1,))], "cpu", large)


def test_integer_input_is_sampled_without_a_whole_float_copy() -> None:
    """int16 CT in, float32 out, equal to sampling its float32 copy."""
    vol = _ct((8, 60, 60))
    ints = vol.with_array(np.rint(vol.array).astype(np.int16))
    chain = [SpatialStep("resample", {"spacing": (1.3, 1.3, 3.0)})]
    a, _ = fused_spatial(ints, chain)
    b, _ = fused_spatial(ints.with_array(ints.array.astype(np.float32)), chain)
    assert a.array.dtype == np.float32
    np.testing.assert_allclose(a.array, b.array, atol=1e-3)
