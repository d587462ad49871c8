"""std.pre operators (medasl/ops/pre.py) against SimpleITK, scikit-image and NumPy
formulas on the real samples in ../shared/data."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

np = pytest.importorskip("numpy", reason="the runtime needs numpy (pip install -e '.[run]')")
sitk = pytest.importorskip("SimpleITK", reason="the runtime needs SimpleITK (pip install -e '.[run]')")
pytest.importorskip("skimage", reason="std.pre needs scikit-image (pip install -e '.[run]')")
pytest.importorskip("scipy", reason="std.pre needs scipy (pip install -e '.[run]')")

from medasl.ops import io, pre  # noqa: E402 (after the skips)
from medasl.runtime.errors import DataError  # noqa: E402
from medasl.runtime.values import Pair, Volume  # noqa: E402
from tests.conftest import shared_data  # noqa: E402

DATA = shared_data(module=True)

CT = DATA / "ct_abdomen_totalsegmentator" / "example_ct_sm.nii.gz"
SEG = DATA / "ct_abdomen_totalsegmentator" / "example_seg.nii.gz"
MRI = DATA / "brain_mri_t1" / "tiny_anatomical_monai" / "anatomical.nii"
HISTO = DATA / "histo_nuclei_dsb2018"


@pytest.fixture(scope="module")
def ct() -> Volume:
    return io.nifti(CT)


@pytest.fixture(scope="module")
def seg() -> Volume:
    v = io.nifti(SEG)
    return v.with_array(v.array, kind="labels")


@pytest.fixture(scope="module")
def mri() -> Volume:
    return io.nifti(MRI)


def he_tiles() -> list[Path]:
    rows = list(csv.DictReader((HISTO / "index.csv").open()))
    return [HISTO / "images" / f"{r['file_stem']}.png" for r in rows if r["kind"] == "HE_tissue"]


def geometry(v: Volume | sitk.Image) -> tuple:
    if isinstance(v, Volume):
        v = v.to_sitk()
    return v.GetSize(), v.GetSpacing(), v.GetOrigin(), v.GetDirection()


# ----- geometry ---------------------------------------------------------------------------


def test_resample_linear_matches_sitk(ct: Volume) -> None:
    out = pre.resample(ct, (2.0, 2.5, 4.0))
    img = sitk.Cast(ct.to_sitk(), sitk.sitkFloat32)
    size = [int(np.ceil(n * o / s)) for n, o, s in zip(ct.shape, ct.spacing, (2.0, 2.5, 4.0))]
    ref = sitk.Resample(img, size, sitk.Transform(), sitk.sitkLinear, ct.origin, (2.0, 2.5, 4.0), ct.direction,
                        float(ct.array.min()))
    assert out.shape == tuple(size) == (183, 122, 23)
    assert out.origin == ct.origin and out.direction == ct.direction and out.spacing == (2.0, 2.5, 4.0)
    assert out.array.dtype == np.float32
    assert np.max(np.abs(out.array - sitk.GetArrayFromImage(ref))) <= 1e-6


def test_resample_labels_nearest_exact_and_no_new_values(seg: Volume) -> None:
    out = pre.resample(seg, (1.7, 2.2, 4.5))
    size = [int(np.ceil(n * o / s)) for n, o, s in zip(seg.shape, seg.spacing, (1.7, 2.2, 4.5))]
    ref = sitk.Resample(seg.to_sitk(), size, sitk.Transform(), sitk.sitkNearestNeighbor, seg.origin,
                        (1.7, 2.2, 4.5), seg.direction, 0.0)
    assert np.array_equal(out.array, sitk.GetArrayFromImage(ref))
    assert out.array.dtype == seg.array.dtype and out.kind == "labels"
    assert set(np.unique(out.array)) <= set(np.unique(seg.array))


def test_label_interpolation_guard(seg: Volume) -> None:
    for interp in ("linear", "bspline"):
        with pytest.raises(ValueError, match="nearest"):
            pre.resample(seg, (2.0, 2.0, 2.0), interp=interp)


def test_resample_to_reference_grid(ct: Volume, seg: Volume) -> None:
    ref = pre.resample(ct, (2.0, 2.0, 5.0))
    out = pre.resample_to(seg, ref)
    assert out.same_grid(ref)
    assert set(np.unique(out.array)) <= set(np.unique(seg.array))
    back = pre.resample_to(pre.resample_to(seg, seg), seg)
    assert np.array_equal(back.array, seg.array)  # onto its own grid: the identity


def test_reorient_round_trip_exact(ct: Volume) -> None:
    lps = pre.reorient(ct, to="LPS")
    assert lps.direction == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    assert sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(lps.direction) == "LPS"
    back = pre.reorient(lps, to="RAS")
    assert np.array_equal(back.array, ct.array)
    assert back.same_grid(ct, tol=1e-9)
    # same physical voxel before and after: the voxel value at one world point agrees
    p = ct.to_sitk().TransformIndexToPhysicalPoint((10, 20, 5))
    idx = lps.to_sitk().TransformPhysicalPointToIndex(p)
    assert lps.array[idx[2], idx[1], idx[0]] == ct.array[5, 20, 10]


@pytest.mark.parametrize("size", [(100, 90, 30), (140, 120, 40), (101, 111, 17)])
def test_crop_or_pad_keeps_world_positions(ct: Volume, size: tuple[int, int, int]) -> None:
    out = pre.crop_or_pad(ct, size)
    assert out.shape == size and out.spacing == ct.spacing and out.direction == ct.direction
    before, after = ct.to_sitk(), out.to_sitk()
    # a voxel kept by the crop/pad: the centre voxel of the overlap
    starts = [n // 2 - m // 2 if n >= m else -((m - n) // 2) for n, m in zip(ct.shape, size)]
    for out_index in [(m // 2, m // 3, m // 4) for m in [min(size)]] + [(s // 2 for s in size)]:
        out_index = tuple(int(i) for i in out_index)
        in_index = tuple(i + s for i, s in zip(out_index, starts))
        if all(0 <= i < n for i, n in zip(in_index, ct.shape)):
            assert np.allclose(after.TransformIndexToPhysicalPoint(out_index),
                               before.TransformIndexToPhysicalPoint(in_index), atol=1e-6)
            assert after[out_index] == before[in_index]
    if size[0] > ct.shape[0]:  # padded with the image minimum
        assert out.array[:, :, 0].max() == ct.array.min()


def test_crop_or_pad_labels_pad_with_background(seg: Volume) -> None:
    out = pre.crop_or_pad(seg, (130, 110, 34))
    assert out.array[0].max() == 0 and out.array.sum(dtype=np.int64) == seg.array.sum(dtype=np.int64)


def test_resize_keeps_extent(ct: Volume, seg: Volume) -> None:
    out = pre.resize(ct, (61, 50, 15))
    assert out.shape == (61, 50, 15)
    assert np.allclose(np.array(out.spacing) * out.shape, np.array(ct.spacing) * ct.shape)
    corner = ct.to_sitk().TransformContinuousIndexToPhysicalPoint((-0.5, -0.5, -0.5))
    assert np.allclose(out.to_sitk().TransformContinuousIndexToPhysicalPoint((-0.5, -0.5, -0.5)), corner)
    labels = pre.resize(seg, (61, 50, 15))
    assert set(np.unique(labels.array)) <= set(np.unique(seg.array))


def test_crop_foreground(seg: Volume) -> None:
    out = pre.crop_foreground(seg, margin=2)
    zs, ys, xs = np.nonzero(seg.array)
    expected = tuple(min(int(a.max()) + 3, n) - max(int(a.min()) - 2, 0)
                     for a, n in zip((xs, ys, zs), seg.shape))
    assert out.shape == expected
    assert np.count_nonzero(out.array) == np.count_nonzero(seg.array)
    img = seg.with_array(seg.array.astype(np.float32), kind="image")
    pair = pre.crop_foreground(Pair(img, seg), margin=1)
    assert pair.input.same_grid(pair.target)
    assert np.array_equal(pair.input.array, pair.target.array.astype(np.float32))


# ----- intensity ---------------------------------------------------------------------------


def test_window_clip_rescale(ct: Volume) -> None:
    a = ct.array.astype(np.float64)
    w = pre.window(ct, level=40.0, width=400.0).array
    assert w.dtype == np.float32 and w.min() == 0.0 and w.max() == 1.0
    assert np.allclose(w, (np.clip(a, -160, 240) + 160) / 400, atol=1e-6)
    c = pre.clip(ct, low=-100.0, high=200.0).array
    assert np.array_equal(c, np.clip(a, -100, 200).astype(np.float32))
    r = pre.rescale(ct, low=-1.0, high=2.0).array
    assert np.allclose(r, (a - a.min()) / (a.max() - a.min()) * 3 - 1, atol=1e-5)


def test_zscore(ct: Volume, seg: Volume) -> None:
    a = ct.array.astype(np.float64)
    z = pre.zscore(ct).array
    assert np.allclose(z, (a - a.mean()) / a.std(), atol=1e-5)
    z = pre.zscore(ct, mask=seg).array
    m = seg.array > 0
    assert np.allclose(z, (a - a[m].mean()) / a[m].std(), atol=1e-5)
    assert abs(float(z[m].mean())) < 1e-4 and abs(float(z[m].std()) - 1) < 1e-4
    other = Volume(seg.array, seg.spacing, (0.0, 0.0, 0.0), seg.direction, "labels")
    with pytest.raises(DataError) as err:
        pre.zscore(ct, mask=other)
    assert err.value.code == "E1007"


def test_percentile_rescale(mri: Volume) -> None:
    a = mri.array.astype(np.float64)
    lo, hi = np.percentile(a, [1.0, 99.0])
    p = pre.percentile_rescale(mri, lower=1.0, upper=99.0).array
    assert np.allclose(p, np.clip((a - lo) / (hi - lo), 0, 1), atol=1e-6)


def test_n4_matches_direct_sitk(mri: Volume) -> None:
    out = pre.n4_bias_correction(mri, shrink=2, iterations=5, levels=2)
    img = sitk.Cast(sitk.ReadImage(str(MRI)), sitk.sitkFloat32)
    mask = sitk.OtsuThreshold(img, 0, 1, 200)
    n4 = sitk.N4BiasFieldCorrectionImageFilter()
    n4.SetMaximumNumberOfIterations([5, 5])
    n4.Execute(sitk.Shrink(img, [2, 2, 2]), sitk.Shrink(mask, [2, 2, 2]))
    ref = sitk.GetArrayFromImage(img / sitk.Exp(n4.GetLogBiasFieldAsImage(img)))
    scale = float(np.abs(ref).max())
    assert np.max(np.abs(out.array - ref)) <= 1e-5 * scale
    assert not np.allclose(out.array, mri.array)  # it did correct something


# ----- registration ------------------------------------------------------------------------


SHIFT = (3.0, 2.0, -4.0)


def shifted(mri: Volume) -> Volume:
    """moving(p) = fixed(p + SHIFT): the registration must find a translation of -SHIFT."""
    f = sitk.Cast(mri.to_sitk(), sitk.sitkFloat32)
    return Volume.from_sitk(sitk.Resample(f, f, sitk.TranslationTransform(3, SHIFT), sitk.sitkLinear, 0.0),
                            "image", "MR")


def test_register_rigid_recovers_shift(mri: Volume) -> None:
    moving = shifted(mri)
    f, m = sitk.Cast(mri.to_sitk(), sitk.sitkFloat32), moving.to_sitk()
    t = sitk.Euler3DTransform(pre._innermost(pre._rigid_transform(f, m, "mattes", 200, 3, 0.1)))
    assert np.allclose(t.GetTranslation(), [-s for s in SHIFT], atol=1.0)  # within half a 2 mm voxel
    out = pre.register_rigid(moving, mri)
    assert out.same_grid(mri)
    # inside the brain, away from the border the shift emptied, the result is the fixed image
    inner = (slice(4, -4), slice(4, -4), slice(4, -4))
    fixed = mri.array.astype(np.float64)[inner]
    err_after = np.abs(out.array[inner] - fixed).mean()
    err_before = np.abs(moving.array[inner] - fixed).mean()
    assert err_after < 0.4 * err_before  # linear interpolation twice blurs what is left


def test_register_affine_matches_direct_sitk(mri: Volume) -> None:
    moving = shifted(mri)
    out = pre.register_affine(moving, mri, iterations=50, levels=2, sampling=0.2)
    f, m = sitk.Cast(mri.to_sitk(), sitk.sitkFloat32), moving.to_sitk()

    def run(initial: sitk.Transform) -> sitk.Transform:
        reg = sitk.ImageRegistrationMethod()
        reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=50)
        reg.SetMetricSamplingStrategy(reg.RANDOM)
        reg.SetMetricSamplingPercentage(0.2, 1)
        reg.SetInterpolator(sitk.sitkLinear)
        reg.SetOptimizerAsRegularStepGradientDescent(learningRate=2.0, minStep=1e-4, numberOfIterations=50)
        reg.SetOptimizerScalesFromPhysicalShift()
        reg.SetShrinkFactorsPerLevel([2, 1])
        reg.SetSmoothingSigmasPerLevel([1.0, 0.0])
        reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
        reg.SetInitialTransform(initial, inPlace=False)
        return reg.Execute(f, m)

    rigid = sitk.Euler3DTransform(sitk.CompositeTransform(run(sitk.CenteredTransformInitializer(
        f, m, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.GEOMETRY))).GetBackTransform())
    affine = sitk.AffineTransform(3)
    affine.SetCenter(rigid.GetCenter())
    affine.SetMatrix(rigid.GetMatrix())
    affine.SetTranslation(rigid.GetTranslation())
    ref = sitk.GetArrayFromImage(sitk.Resample(m, f, run(affine), sitk.sitkLinear, float(moving.array.min())))
    # ITK's multithreaded metric sums may differ in the last bits between runs
    assert np.max(np.abs(out.array - ref)) <= 1e-3 * float(np.abs(ref).max())


# ----- pathology stains --------------------------------------------------------------------


def test_hed_matches_skimage() -> None:
    from skimage.color import rgb2hed

    x = io.png(he_tiles()[0])
    out = pre.stain_deconvolve_hed(x)
    assert out.array.shape == x.array.shape[:2] + (3,)
    assert np.max(np.abs(out.array - rgb2hed(x.array[..., :3]))) <= 1e-6


def lab_mean(rgb: np.ndarray) -> np.ndarray:
    from skimage.color import rgb2lab

    return rgb2lab(rgb[..., :3]).reshape(-1, 3).mean(axis=0)


def test_macenko_moves_toward_reference() -> None:
    tiles = he_tiles()
    x, ref_path = io.png(tiles[0]), tiles[2]
    ref = io.png(ref_path).array
    out = pre.stain_normalize_macenko(x, reference=str(ref_path))
    assert out.array.dtype == np.uint8 and out.array.shape == x.array.shape[:2] + (3,)
    # Expressed in the reference's stain vectors, the output's 99th-percentile H and E
    # concentrations are the reference's within 6% (measured: within 4%), and much
    # closer than the input's (input about 25% off on eosin for this tile pair).
    he_ref, c_ref = pre._macenko_stains(ref[..., :3], 1.0, 0.15, 240.0)

    def concentrations(rgb: np.ndarray) -> np.ndarray:
        od = -np.log((rgb.reshape(-1, 3).astype(np.float64) + 1.0) / 240.0)
        return np.percentile(np.linalg.lstsq(he_ref, od.T, rcond=None)[0], 99, axis=1)

    c_out, c_x = concentrations(out.array), concentrations(x.array[..., :3])
    assert np.all(np.abs(c_out - c_ref) < 0.06 * c_ref)
    assert np.abs(c_out - c_ref).max() < 0.5 * np.abs(c_x - c_ref).max()
    default = pre.stain_normalize_macenko(x)
    assert default.array.dtype == np.uint8 and np.isfinite(default.array).all()


def test_reinhard_matches_reference_lab_means() -> None:
    tiles = he_tiles()
    x, ref_path = io.png(tiles[0]), tiles[2]
    ref = io.png(ref_path).array
    out = pre.stain_normalize_reinhard(x, reference=str(ref_path))
    assert out.array.dtype == np.uint8 and out.array.shape == x.array.shape[:2] + (3,)
    before = np.linalg.norm(lab_mean(x.array) - lab_mean(ref))
    after = np.linalg.norm(lab_mean(out.array) - lab_mean(ref))
    assert after < 0.25 * before  # clipping to the RGB gamut keeps it from being exact
    assert pre.stain_normalize_reinhard(x).array.dtype == np.uint8


def test_missing_reference_is_data_error() -> None:
    x = io.png(he_tiles()[0])
    with pytest.raises(DataError) as err:
        pre.stain_normalize_reinhard(x, reference="/nonexistent/ref.png")
    assert err.value.code == "E1001"


# ----- masks ------------------------------------------------------------------------------


def test_threshold_and_otsu(ct: Volume) -> None:
    t = pre.threshold_mask(ct, low=-100.0, high=200.0)
    assert t.kind == "labels" and np.array_equal(t.array, ((ct.array >= -100) & (ct.array <= 200)).astype(np.uint8))
    assert np.array_equal(pre.threshold_mask(ct, low=0.0).array, (ct.array >= 0).astype(np.uint8))
    o = pre.otsu_mask(ct)
    assert set(np.unique(o.array)) == {0, 1}
    ref = sitk.GetArrayFromImage(sitk.OtsuThreshold(ct.to_sitk(), 0, 1, 128))
    assert np.array_equal(o.array, ref)


def test_body_mask_covers_body(ct: Volume, seg: Volume) -> None:
    body = pre.body_mask(ct).array.astype(bool)
    organs = seg.array > 0
    assert body[organs].mean() > 0.99  # the organs lie inside the body
    assert body[ct.array > 0].mean() > 0.95  # soft tissue and bone are body
    assert (ct.array[~body] < -500).mean() > 0.95  # outside is air (and the table, if any)
    assert 0.2 < body.mean() < 0.95


def test_connected_components_counts_blobs() -> None:
    a = np.zeros((20, 30, 40), np.uint8)
    a[2:6, 2:8, 2:9] = 1
    a[10:15, 10:20, 10:12] = 2
    a[16:19, 25:29, 30:39] = 1
    a[17, 3, 3] = 1  # 1 voxel alone
    a[7, 25, 2] = a[8, 26, 3] = 1  # touching only at a corner
    v = Volume(a, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1), "labels")
    out = pre.connected_components(v)
    assert out.kind == "instances" and int(out.array.max()) == 6
    assert int(pre.connected_components(v, connectivity=3).array.max()) == 5
    b = a.copy()
    b[17, 3, 3] = b[7, 25, 2] = b[8, 26, 3] = 0
    assert int(pre.connected_components(v.with_array(b)).array.max()) == 3


def test_operator_table() -> None:
    assert all(callable(f) and f.__name__ == name for name, f in pre.OPERATORS.items())


def test_select_labels_keeps_and_renumbers_classes() -> None:
    seg = io.nifti(DATA / "ct_abdomen_totalsegmentator" / "example_seg.nii.gz")
    seg = seg.with_array(seg.array, kind="labels")
    source = np.asarray(seg.array)
    liver = pre.select_labels(seg, (5,))
    assert int((liver.array == 1).sum()) == 38634 == int((source == 5).sum())  # the README's count
    assert set(np.unique(liver.array)) == {0, 1} and liver.same_grid(seg)
    organs = pre.select_labels(seg, (5, 1, 2, 3))
    for index, value in enumerate((5, 1, 2, 3), start=1):
        np.testing.assert_array_equal(organs.array == index, source == value)
    merged = pre.select_labels(seg, (2, 3), merge=True)
    np.testing.assert_array_equal(merged.array == 1, (source == 2) | (source == 3))
