"""`atrophy_phantom` (std.io): a simulated AD / CN cohort made from the real MNI152 T1
template in the shared data. Geometry, determinism, balanced classes, that the simulated
atrophy is where it should be and measurable, and the usual diagnostics for bad files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

np = pytest.importorskip("numpy", reason="the runtime needs numpy (pip install -e '.[run]')")
sitk = pytest.importorskip("SimpleITK", reason="the runtime needs SimpleITK (pip install -e '.[run]')")
pytest.importorskip("scipy", reason="the runtime needs scipy (pip install -e '.[run]')")

from medasl.ops import io  # noqa: E402 (after the skips, so a front-end-only install skips cleanly)
from medasl.runtime.errors import DataError  # noqa: E402
from medasl.runtime.values import CaseSpec, Pair, Volume  # noqa: E402
from tests.conftest import shared_data  # noqa: E402
from tests.test_cli import run  # noqa: E402

MNI = shared_data(module=True) / "brain_mri_t1" / "mni152_2009a_nilearn"
T1 = MNI / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
GM = MNI / "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz"


@pytest.fixture(scope="module")
def cohort() -> list:
    """Eight cases at 4 mm (small, quick), seed 3."""
    return io.atrophy_phantom(T1, GM, cases=8, spacing=(4.0, 4.0, 4.0), seed=3)


def _ras_world(vol: Volume) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """RAS mm of every voxel centre, computed independently of the operator with SimpleITK."""
    img = sitk.Image([int(n) for n in reversed(vol.array.shape)], sitk.sitkUInt8)
    img.SetSpacing(vol.spacing)
    img.SetOrigin(vol.origin)
    img.SetDirection(vol.direction)
    nz, ny, nx = vol.array.shape
    k, j, i = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
    d = np.asarray(vol.direction).reshape(3, 3)
    idx = np.stack([i, j, k], -1) * np.asarray(vol.spacing)
    lps = idx @ d.T + np.asarray(vol.origin)
    # spot-check the formula against SimpleITK itself
    assert np.allclose(lps[1, 2, 3], img.TransformIndexToPhysicalPoint((3, 2, 1)))
    return -lps[..., 0], -lps[..., 1], lps[..., 2]


def test_geometry_follows_the_template_at_the_asked_spacing(cohort: list) -> None:
    template = sitk.ReadImage(str(T1))
    for case in cohort:
        pair = case.value
        assert isinstance(pair, Pair) and isinstance(pair.input, Volume)
        vol = pair.input
        assert vol.spacing == (4.0, 4.0, 4.0)
        assert np.allclose(vol.direction, template.GetDirection())
        assert np.allclose(vol.origin, template.GetOrigin())
        size = [round(n / 4.0) for n in template.GetSize()]  # 1 mm template
        assert list(reversed(vol.array.shape)) == size
        assert vol.modality == "MR" and vol.kind == "image" and vol.array.dtype == np.float32
        assert np.isfinite(vol.array).all() and float(vol.array.min()) >= 0.0  # a magnitude image


def test_same_seed_same_cases_and_case_i_does_not_depend_on_how_many() -> None:
    a = io.atrophy_phantom(T1, GM, cases=3, spacing=(4.0, 4.0, 4.0), seed=11)
    b = io.atrophy_phantom(T1, GM, cases=3, spacing=(4.0, 4.0, 4.0), seed=11)
    more = io.SOURCES["atrophy_phantom"].list(template=T1, gm=GM, cases=6, spacing=(4.0, 4.0, 4.0), seed=11)
    other = io.atrophy_phantom(T1, GM, cases=3, spacing=(4.0, 4.0, 4.0), seed=12)
    for x, y in zip(a, b):
        assert x.id == y.id and x.value.target == y.value.target
        assert np.array_equal(x.value.input.array, y.value.input.array)
    assert np.array_equal(io.SOURCES["atrophy_phantom"].load(more[2]).input.array, a[2].value.input.array)
    assert not np.array_equal(other[0].value.input.array, a[0].value.input.array)


@pytest.mark.parametrize("n", [0, 1, 7, 12])
def test_classes_are_balanced(n: int) -> None:
    specs = io.SOURCES["atrophy_phantom"].list(template=T1, gm=GM, cases=n, spacing=(3.0, 3.0, 3.0), seed=0)
    assert [s.id for s in specs] == [f"subj{i:03d}" for i in range(n)]
    assert sum(s.args["class"] for s in specs) == n // 2
    assert all(s.args["classes"] == ["CN", "AD"] for s in specs)
    assert all(s.files == (str(T1), str(GM)) for s in specs)


def test_ad_cases_have_medial_temporal_atrophy_and_larger_ventricles(cohort: list) -> None:
    vol0 = cohort[0].value.input
    x, y, z = _ras_world(vol0)
    # both medial temporal lobes (hippocampus, amygdala) and the lateral ventricles, MNI mm
    mtl = np.zeros(x.shape, dtype=bool)
    for cx in (25.0, -25.0):
        mtl |= ((x - cx) / 6.0) ** 2 + ((y + 20.0) / 10.0) ** 2 + ((z + 15.0) / 6.0) ** 2 <= 1.0
    ventricles = (np.abs(x) < 20) & (y > -40) & (y < 20) & (z > 5) & (z < 30)
    assert mtl.sum() >= 20 and ventricles.sum() >= 200
    rows: dict[int, list[tuple[float, int]]] = {0: [], 1: []}
    for case in cohort:
        a = case.value.input.array
        brain = float(np.median(a[a > 0.3 * np.percentile(a, 99)]))  # bias and gain differ per case
        rows[case.value.target].append((float(a[mtl].mean()) / brain, int((a[ventricles] < 0.6 * brain).sum())))
    cn, ad = np.array(rows[0]), np.array(rows[1])
    assert len(cn) == len(ad) == 4
    # every AD case below every CN case: the effect is larger than warps, bias and noise
    assert ad[:, 0].max() < cn[:, 0].min(), (cn, ad)
    assert ad[:, 1].min() > 1.5 * cn[:, 1].max(), (cn, ad)


def test_the_prepared_template_is_plausible() -> None:
    """The MTL weight sits in the temporal lobes, not at the back of the brain; the
    ventricles were found, dark as CSF; listing and loading agree (JSON-safe specs)."""
    base = io._brain_template(str(T1), str(GM), (io._stamp(str(T1)), io._stamp(str(GM))))
    ref = base.reference
    vol = Volume(base.t1, ref.GetSpacing(), ref.GetOrigin(), ref.GetDirection())
    x, y, z = _ras_world(vol)
    peak = np.unravel_index(int(np.argmax(base.mtl)), base.mtl.shape)
    assert abs(abs(float(x[peak])) - 25.0) <= 1.0 and abs(float(y[peak]) + 20.0) <= 1.0
    assert base.mtl[y < -70].max() < 1e-3  # the occipital lobe is spared
    inside = base.ventricle_mm == 0.0
    assert 5.0 < inside.sum() / 1000.0 < 40.0  # ml (1 mm voxels): lateral + third ventricles
    assert np.abs(x[inside]).max() < 30.0 and 40.0 < base.csf < 0.6 * base.wm
    specs = io.SOURCES["atrophy_phantom"].list(template=T1, gm=GM, cases=2, spacing=(4.0, 4.0, 4.0), seed=5)
    rebuilt = [CaseSpec(s.id, s.files, json.loads(json.dumps(s.args))) for s in specs]
    for s, r in zip(specs, rebuilt):
        a, b = io.SOURCES["atrophy_phantom"].load(s), io.SOURCES["atrophy_phantom"].load(r)
        assert isinstance(a.target, int) and a.target == b.target
        assert np.array_equal(a.input.array, b.input.array)


def test_missing_template_is_e1001(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        io.atrophy_phantom(tmp_path / "nothing.nii.gz", GM, cases=2)
    assert info.value.code == "E1001" and "nothing.nii.gz" in str(info.value)


def test_gm_map_on_another_grid_is_e1007(tmp_path: Path) -> None:
    small = tmp_path / "gm.nii.gz"
    sitk.WriteImage(sitk.Image([10, 10, 10], sitk.sitkUInt8), str(small))
    with pytest.raises(DataError) as info:
        io.atrophy_phantom(T1, small, cases=1)
    assert info.value.code == "E1007"


def test_missing_template_through_medasc_run_exits_1(tmp_path: Path) -> None:
    program = tmp_path / "p.medas"
    program.write_text(f"""import std.io, std.data
pipeline sim {{
  cases = atrophy_phantom("{tmp_path / 'no_template.nii.gz'}", "{GM}", cases=4)
  folds = split(cases, val=0.5, seed=1, stratify=true)
}}
""")
    code, _, err = run("run", str(program), "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "out"))
    assert code == 1 and "error[E1001]" in err and "no_template.nii.gz" in err, err
    assert "Traceback" not in err
