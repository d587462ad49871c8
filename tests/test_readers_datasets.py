"""Datasets in the layouts users have (issue 10): stacked arrays (MedMNIST's .npz),
instance maps from one mask file per object (Data Science Bowl 2018), pairs of two
datasets read separately, matched by case id. Real samples from ../shared/data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

np = pytest.importorskip("numpy", reason="running needs the run extra (pip install -e '.[run]')")
sitk = pytest.importorskip("SimpleITK", reason="running needs the run extra (pip install -e '.[run]')")
pytest.importorskip("rich", reason="running needs the run extra (pip install -e '.[run]')")

from medasl.ops import io  # noqa: E402
from medasl.runtime.errors import DataError  # noqa: E402
from tests.conftest import shared_data, write_nifti_file  # noqa: E402
from tests.test_cli import run as cli  # noqa: E402

DATA = shared_data(module=True)
MNIST = DATA / "pneumoniamnist_subset" / "pneumoniamnist_val.npz"
DSB = DATA / "histo_nuclei_dsb2018"


def _run(tmp_path: Path, text: str) -> tuple[int, str]:
    (tmp_path / "p.medas").write_text(text)
    code, _, err = cli("run", "p.medas", "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "out"))
    return code, err


# ----- stacked arrays -------------------------------------------------------------------


def test_medmnist_npz_is_a_dataset_of_image_class_pairs() -> None:
    """Before: `numpy()` read only the first array, as one 524x28x28 'volume'."""
    with np.load(MNIST) as arrays:
        images, labels = arrays["images"], arrays["labels"]
    cases = io.stacked_classified(MNIST)
    assert len(cases) == 524 and cases[0].id == "0000" and cases[-1].id == "0523"
    for k in (0, 17, 523):
        image, label = cases[k].value.input, cases[k].value.target
        assert image.dim == 2 and image.shape == (28, 28) and np.array_equal(image.array, images[k])
        assert label == int(labels[k, 0])
    assert sum(c.value.target for c in cases) == 389  # the README's 389 pneumonia cases


def test_stack_errors_name_the_arrays(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        io.stacked_classified(MNIST, images="train_images", labels="train_labels")
    assert info.value.code == "E1043" and "images, labels" in info.value.message
    with pytest.raises(DataError) as info:
        io.numpy(MNIST)
    assert info.value.code == "E1043" and "key=" in info.value.message
    assert io.numpy(MNIST, key="images").array.shape == (524, 28, 28)  # chosen by key
    np.savez(tmp_path / "bad.npz", images=np.zeros((3, 8, 8)), labels=np.zeros(4, dtype=np.uint8))
    with pytest.raises(DataError) as info:
        io.stacked_classified(tmp_path / "bad.npz")
    assert info.value.code == "E1043" and "3 images but 4 labels" in info.value.message


def test_a_folder_of_npy_stacks_with_label_maps(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    np.save(tmp_path / "x.npy", rng.integers(0, 255, (3, 6, 8), dtype=np.uint8))
    np.save(tmp_path / "y.npy", rng.integers(0, 2, (3, 6, 8), dtype=np.uint8))
    cases = io.stacked_labels(tmp_path, images="x", labels="y")
    assert [c.id for c in cases] == ["0000", "0001", "0002"]
    assert cases[2].value.target.kind == "labels"
    assert np.array_equal(cases[2].value.target.array, np.load(tmp_path / "y.npy")[2])


def test_a_stacked_dataset_runs_with_its_declared_classes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, err = _run(tmp_path, f"""import std.io, std.data
pipeline p {{
  cases = stacked_classified("{MNIST}") as Dataset<Pair<Image[2, XR], Class[2]>>
  few = take(cases, n=3)
  w = write_png(few.image, "*.png")
}}
""")
    assert code == 0, err
    assert sorted(f.name for f in (tmp_path / "out" / "p").glob("*.png")) == ["0000.png", "0001.png", "0002.png"]
    np.savez(tmp_path / "three.npz", images=np.zeros((2, 8, 8), dtype=np.uint8), labels=np.array([0, 2]))
    code, err = _run(tmp_path, """import std.io
pipeline p {
  cases = stacked_classified("three.npz") as Dataset<Pair<Image[2, XR], Class[2]>>
  w = write_png(cases.image, "*.png")
}
""")
    assert code == 1 and "error[E1040]" in err and "class 2 is outside 0..1" in err


# ----- one mask file per object ---------------------------------------------------------


def test_dsb_masks_make_the_instance_map_the_sample_derived(tmp_path: Path) -> None:
    """Object k is the k-th mask file in name order: the README's derived instance PNG."""
    cases = io.mask_folder(DSB / "original_layout_example", image="*/images/*.png", masks="*/masks")
    assert len(cases) == 1
    case = cases[0]
    image, instances = case.value.input, case.value.target
    reference = sitk.GetArrayFromImage(sitk.ReadImage(str(DSB / "instance_labels" / f"{case.id[:16]}.png")))
    assert instances.kind == "instances" and np.array_equal(instances.array, reference)
    assert int(instances.array.max()) == 98 and image.array.shape[:2] == reference.shape


def test_overlapping_masks_are_e1044_naming_both(tmp_path: Path) -> None:
    case = tmp_path / "c1"
    (case / "images").mkdir(parents=True)
    (case / "masks").mkdir()
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((8, 8), np.uint8)), str(case / "images" / "c1.png"))
    for name, rows in (("m1.png", slice(0, 4)), ("m2.png", slice(3, 6))):
        m = np.zeros((8, 8), np.uint8)
        m[rows, 2:5] = 255
        sitk.WriteImage(sitk.GetImageFromArray(m), str(case / "masks" / name))
    with pytest.raises(DataError) as info:
        io.mask_folder(tmp_path, image="*/images/*.png", masks="*/masks")
    assert info.value.code == "E1044" and "m1.png and m2.png overlap in 3 pixel(s)" in info.value.message
    shutil.rmtree(case / "masks")
    with pytest.raises(DataError) as info:
        io.mask_folder(tmp_path, image="*/images/*.png", masks="*/masks")
    assert info.value.code == "E1005"


# ----- pairs of separately read datasets ------------------------------------------------


def _two_folders(tmp_path: Path, cases: tuple[str, ...], masks: tuple[str, ...]) -> None:
    for c in cases:
        write_nifti_file(tmp_path / "scans" / f"{c}.nii.gz", np.full((4, 8, 8), 7, dtype=np.int16))
    for c in masks:
        m = np.zeros((4, 8, 8), np.uint8)
        m[1:3, 2:4, 2:4] = 1
        write_nifti_file(tmp_path / "masks" / f"{c}_mask.nii.gz", m)


PAIRED = """import std.io, std.data
pipeline p {
  cases = paired(images("scans", "*.nii.gz") as Dataset<Image[3, CT]>,
                 images("masks", "*_mask.nii.gz") as Dataset<LabelMap[3, 2]>)
  w = write_nifti(cases.label, "*_seg.nii.gz")
}
"""


def test_paired_matches_two_datasets_by_case_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    _two_folders(tmp_path, ("a", "b"), ("a", "b"))
    code, err = _run(tmp_path, PAIRED)
    assert code == 0, err
    written = sorted(f.name for f in (tmp_path / "out" / "p").glob("*.nii.gz"))
    assert written == ["a_seg.nii.gz", "b_seg.nii.gz"]


def test_paired_names_a_case_found_in_one_dataset_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    _two_folders(tmp_path, ("a", "b", "c"), ("a", "b"))
    code, err = _run(tmp_path, PAIRED)
    assert code == 1 and "error[E1013]" in err and ": c" in err and "Traceback" not in err


# ----- class names through select_labels --------------------------------------------------


def test_select_labels_renumbers_class_names() -> None:
    from medasl.ops import pre
    from medasl.runtime.values import Volume

    seg = Volume(np.array([[0, 1, 2, 3]], dtype=np.uint8), (1.0, 1.0), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0), "labels",
                 names=((1, "liver"), (2, "spleen"), (3, "kidney")))
    kept = pre.select_labels(seg, labels=(3, 1))
    assert kept.array.tolist() == [[0, 2, 0, 1]] and kept.names == ((1, "kidney"), (2, "liver"))
    assert pre.select_labels(seg, labels=(3, 1), merge=True).names == ()


def test_per_class_means_over_cases(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: `per_class` stayed empty in every report."""
    monkeypatch.chdir(tmp_path)
    ref = np.zeros((4, 8, 8), np.uint8)
    ref[0:2, 0:4, 0:4], ref[2:4, 4:8, 4:8] = 1, 2
    pred = ref.copy()
    pred[0, 0:4, 0:4] = 0  # class 1 loses half its voxels: Dice 2/3
    for case in ("a", "b"):
        write_nifti_file(tmp_path / "ref" / f"{case}.nii.gz", ref)
        write_nifti_file(tmp_path / "pred" / f"{case}.nii.gz", pred)
    code, err = _run(tmp_path, """import std.io, std.metrics, std.report
pipeline p {
  ref = images("ref", "*.nii.gz") as Dataset<LabelMap[3, 3]>
  pred = images("pred", "*.nii.gz") as Dataset<LabelMap[3, 3]>
  score = dice(pred, ref)
  second = dice(pred, ref, label=2)
  report json("scores.json", (score, second))
}
""")
    assert code == 0, err
    score, second = json.loads((tmp_path / "out" / "p" / "scores.json").read_text())
    assert score["per_class"] == pytest.approx({"1": 2 / 3, "2": 1.0})
    assert score["value"] == pytest.approx((2 / 3 + 1.0) / 2)
    assert second["value"] == 1.0 and second["per_class"] == {"2": 1.0}
