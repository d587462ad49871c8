"""Spatial operators and augmentations on pairs whose target is a class, boxes, a label
map or instances, run with `medasc run` at -O0 and at the default -O2 (where the fusion
passes turn these chains into `fused_spatial` steps), plus the box geometry checked
against independent arithmetic.

What is claimed (docs/language.md, Lifting; medasl/ops/aug.py): a `Class` is carried
along unchanged; `Boxes` (world mm) move with the image: flipped, cropped, padded,
resampled, rotated (a rotated box becomes the axis-aligned box around its rotated
corners), deformed, and clipped to the new grid; label maps and instances are moved by
nearest neighbour and never gain values. -O0 and -O2 agree.

Until issue 10, random spatial augmentation of (image, class) pairs crashed (`'int'
object has no attribute 'with_array'`) and every spatial operator crashed on (image,
boxes) pairs (`'Boxes' object has no attribute 'kind'`)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813

from medasl.ops import aug, io
from medasl.runtime.cache import Cache
from medasl.runtime.tasks import load_ref
from medasl.runtime.values import Boxes, Pair, Volume
from tests.conftest import shared_data
from tests.test_cli import run

DATA = shared_data(module=True)

CHAINS_2D = {
    "flipped": "flip(axis=1, p=1.0)",
    "rotated": "rotate(angle=20 deg, p=1.0)",
    "affined": "affine(scale=0.1, shear=5 deg, translate=4 mm, p=1.0)",
    "rescaled": "random_rescale(p=1.0)",
    "warped": "elastic(sigma=12 mm, magnitude=6 mm, p=1.0)",
    "cropped": "random_crop((96, 80))",
    "padded": "crop_or_pad((300, 600))",
    "resampled": "resample(spacing=(3.0, 3.0) mm)",
    "resized": "resize((64, 48))",
    "foreground": "crop_foreground(threshold=100)",
    "tiles": "patches((64, 64), per_case=2)",
    "chained": "resample(spacing=(2.0, 2.0) mm) |> crop_or_pad((120, 120)) |> flip(axis=0, p=1.0) "
               "|> rotate(angle=15 deg, p=1.0) |> random_crop((100, 100))",
}
"""Every spatial operator of std.pre and std.aug on 2-D pairs (reorient's codes are 3-D:
it is in CHAINS_3D), one binding each, and a chain the fusion pass fuses."""

CHAINS_3D = {
    "flip_x": "flip(axis=0, p=1.0)",
    "flip_y": "flip(axis=1, p=1.0)",
    "flip_z": "flip(axis=2, p=1.0)",
    "rotated": "rotate(angle=25 deg, p=1.0)",
    "affined": "affine(scale=0.15, shear=5 deg, translate=3 mm, p=1.0)",
    "rescaled": "random_rescale(scale=(0.8, 1.25), p=1.0)",
    "warped": "elastic(sigma=6 mm, magnitude=3 mm, p=1.0)",
    "cropped": "random_crop((24, 24, 12))",
    "outside": "crop_or_pad((6, 6, 6))",  # the centre of the grid, away from the object: its box is dropped
    "padded": "crop_or_pad((30, 30, 30))",
    "resampled": "resample(spacing=(2.0, 2.0, 2.0) mm)",
    "resized": "resize((24, 20, 10))",
    "reoriented": "reorient(to=RAS)",
    "foreground": "crop_foreground(margin=1)",
    "tiles": "patches((16, 16, 8), per_case=3, positive=1.0)",
    "chained": "resample(spacing=(1.8, 1.8, 1.8) mm) |> crop_or_pad((28, 28, 28)) |> flip(axis=1, p=1.0) "
               "|> rotate(angle=20 deg, p=1.0) |> random_crop((24, 24, 24))",
}


def _pipeline(source: str, chains: dict[str, str]) -> str:
    lines = ["import std.io, std.pre, std.aug", "pipeline pairs {", f"  {source}"]
    for name, chain in chains.items():
        lines += [f"  {name} = cases |> {chain}", f'  report write_nifti({name}.image, "{name}/*.nii.gz")']
    return "\n".join([*lines, "}", ""])


def _run(tmp_path: Path, name: str, text: str, level: str, fused: bool = True) -> dict[str, dict[str, object]]:
    """Run `text` at -O`level`; the value of each bound step for each case, read back from
    the run's cache (every binding here has two readers, so it is stored). At -O2, whether
    the fusion pass made `fused_spatial` steps must be `fused`."""
    file = tmp_path / f"{name}.medas"
    file.write_text(text)
    out, cache_dir = tmp_path / f"{name}-out{level}", tmp_path / f"{name}-cache{level}"
    code, _, err = run("run", str(file), f"-O{level}", "--cache-dir", str(cache_dir), "--out", str(out))
    assert code == 0, err
    if level == "2":
        assert ("fused_spatial" in err) == fused  # whether the fusion pass took part
    (log,) = (out / "pairs" / "logs").glob("run-*.jsonl")
    events = [json.loads(line) for line in log.read_text().splitlines()]
    cache = Cache(next(e["cache"] for e in events if e["event"] == "run"))
    values: dict[str, dict[str, object]] = {}
    for event in events:
        if event["event"] == "computed" and event["step"] in CHAINS_2D | CHAINS_3D:
            value = load_ref(cache, event["entry"])
            found = values.setdefault(event["step"], {})
            if isinstance(value, list):  # `patches`: case c gives cases c.0, c.1, ...
                found.update({f"{event['case']}.{i}": v for i, v in enumerate(value)})
            else:
                found[event["case"]] = value
    return values


def _same_geometry(a: Volume, b: Volume, what: str) -> None:
    assert a.shape == b.shape, what  # spatial sizes (an RGB image has a channel axis more than its label)
    for get in ("spacing", "origin", "direction"):
        np.testing.assert_allclose(getattr(a, get), getattr(b, get), atol=1e-6, err_msg=what)


def _close_images(a: Volume, b: Volume, what: str) -> None:
    """-O2 samples once where -O0 interpolates step by step: the same image up to that
    blur (a wrong draw, order or grid moves the content and fails by far)."""
    _same_geometry(a, b, what)
    assert a.array.shape == b.array.shape, what
    x, y = a.array.astype(np.float64).ravel(), b.array.astype(np.float64).ravel()
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        np.testing.assert_allclose(x, y, err_msg=what)
        return
    correlation = float(np.corrcoef(x, y)[0, 1])
    assert correlation >= 0.95, what


def _cases(values: dict[str, dict[str, object]], chains: dict[str, str]) -> None:
    assert set(values) == set(chains), set(chains) ^ set(values)


# ===== class targets: carried unchanged ======================================================


@pytest.fixture(scope="module")
def xray_classes(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, int]]:
    """The two chest X-rays as (image, class) pairs: `classified` over a table naming
    each file's finding (1 Cardiomegaly, 0 No Finding, as the shared data's CSV says)."""
    table = tmp_path_factory.mktemp("xray") / "labels.csv"
    rows = list(csv.DictReader((DATA / "chest_xray_nih" / "labels_Data_Entry_2017_v2020_subset.csv").open()))
    findings = {r["Image Index"].removesuffix(".png"): int(r["Finding Labels"] != "No Finding") for r in rows}
    table.write_text("id,finding\n" + "".join(f"{k},{v}\n" for k, v in findings.items()))
    assert sorted(findings.values()) == [0, 1]
    source = (f'cases = classified("{DATA / "chest_xray_nih"}", "*.png", labels="{table}", column="finding") '
              "as Pair<Image[2, XR], Class[2]>")
    return source, findings


def test_class_pairs_go_through_every_spatial_operator(tmp_path: Path, xray_classes: tuple[str, dict[str, int]]
                                                       ) -> None:
    source, findings = xray_classes
    text = _pipeline(source, CHAINS_2D)
    runs = {level: _run(tmp_path, "classes", text, level) for level in ("0", "2")}
    for level, values in runs.items():
        _cases(values, CHAINS_2D)
        for step, by_case in values.items():
            expected_cases = {f"{c}.{i}" for c in findings for i in range(2)} if step == "tiles" else set(findings)
            assert set(by_case) == expected_cases, step
            for case, value in by_case.items():
                assert isinstance(value, Pair) and isinstance(value.input, Volume), (level, step)
                assert value.target == findings[case.split(".")[0]], (level, step, case)  # the class, unchanged
    for step, by_case in runs["0"].items():
        for case, value in by_case.items():
            _close_images(value.input, runs["2"][step][case].input, f"{step} {case}")  # type: ignore[attr-defined]


# ===== instances: nearest neighbour, ids kept ================================================


def test_instance_pairs_keep_their_ids(tmp_path: Path) -> None:
    nuclei = DATA / "histo_nuclei_dsb2018"
    source = (f'cases = instance_folder("{nuclei}", image="images/4*.png", label="instance_labels/4*.png") '
              "as Pair<Image[2, Path], Instances[2]>")
    originals = {p.stem[1:]: sitk.GetArrayFromImage(sitk.ReadImage(str(p)))
                 for p in (nuclei / "instance_labels").glob("4*.png")}
    runs = {level: _run(tmp_path, "instances", _pipeline(source, CHAINS_2D), level) for level in ("0", "2")}
    for level, values in runs.items():
        _cases(values, CHAINS_2D)
        for step, by_case in values.items():
            for case, value in by_case.items():
                original = originals[case.split(".")[0]]
                assert value.target.kind == "instances" and value.target.array.dtype == original.dtype, (level, step)
                assert set(np.unique(value.target.array)) <= set(np.unique(original)), (level, step)  # no new ids
                _same_geometry(value.input, value.target, f"{level} {step}")
    for step, by_case in runs["0"].items():
        for case, value in by_case.items():
            fused = runs["2"][step][case]
            _close_images(value.input, fused.input, f"{step} {case}")
            _labels_differ_on_boundaries(value.target.array, fused.target.array, step)


def _labels_differ_on_boundaries(reference: np.ndarray, fused: np.ndarray, what: str) -> None:
    """-O2 rounds to the nearest voxel once where -O0 rounds after every step: a voxel may
    take the id of a neighbour, never one from elsewhere (a wrong draw or grid would)."""
    for index in zip(*np.nonzero(reference != fused)):
        around = reference[tuple(slice(max(i - 2, 0), i + 3) for i in index)]
        assert fused[index] in around, (what, index)


# ===== boxes: moved with the image ===========================================================


@pytest.fixture(scope="module")
def cube_case(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One CT-like case with a 12 mm cube, as an image with a label map and as the LUNA16
    annotation of the same cube. Anisotropic voxels and a direction that swaps and
    mirrors the x and y axes, so that index and world coordinates cannot be confused."""
    root = tmp_path_factory.mktemp("cube")
    size, spacing, origin = (40, 36, 20), (1.5, 1.2, 2.4), (20.0, -15.0, 100.0)
    direction = (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)
    ct = np.full(size[::-1], -1000, np.int16)
    ct[2:18, 4:32, 4:36] = 40  # a body, for crop_foreground
    label = np.zeros(size[::-1], np.uint8)
    label[3:8, 20:30, 6:14] = 1  # 8 x 10 x 5 voxels: 12 mm along each axis, off centre
    ct[label > 0] = 200
    for array, folder in ((ct, "images"), (label, "labels")):
        image = sitk.GetImageFromArray(array)
        image.SetSpacing(spacing)
        image.SetOrigin(origin)
        image.SetDirection(direction)
        (root / folder).mkdir()
        sitk.WriteImage(image, str(root / folder / "case1.nii.gz"))
    found = io.mask_to_boxes(Volume(label, spacing, origin, direction, kind="labels"))
    np.testing.assert_allclose(found.hi[0] - found.lo[0], 12.0)  # a cube, as LUNA16 annotations give
    centre = (found.lo[0] + found.hi[0]) / 2
    (root / "cube.csv").write_text("seriesuid,coordX,coordY,coordZ,diameter_mm\n"
                                   f"case1,{float(centre[0])!r},{float(centre[1])!r},{float(centre[2])!r},12.0\n")
    return root


@pytest.mark.parametrize("level", ["0", "2"])
def test_boxes_move_as_the_label_map_of_the_same_object(tmp_path: Path, cube_case: Path, level: str) -> None:
    """The same chains, with the same draws (same step names and case id), on (image,
    label map) and on (image, boxes) pairs of one object: the boxes equal the box around
    the moved label map to a voxel of the grid they end on, and the images are equal
    (at -O2 close: the boxes' chains are left unfused, the label map's sampled once)."""
    labels = _run(tmp_path, "labels", _pipeline(
        f'cases = folder("{cube_case}", image="images/*.nii.gz", label="labels/*.nii.gz") '
        "as Pair<Image[3, CT], LabelMap[3, 2]>", CHAINS_3D), level, fused=True)
    boxes = _run(tmp_path, "boxes", _pipeline(
        f'scans = images("{cube_case}", "images/*.nii.gz") as Dataset<Image[3, CT]>\n'
        f'  cases = boxed(scans, csv_annotations("{cube_case / "cube.csv"}"))', CHAINS_3D), level, fused=False)
    _cases(boxes, CHAINS_3D)
    for step, by_case in boxes.items():
        assert set(by_case) == ({f"case1.{i}" for i in range(3)} if step == "tiles" else {"case1"}), step
        for case, value in by_case.items():
            reference = labels[step][case]
            assert isinstance(value.target, Boxes), step
            if level == "0":
                np.testing.assert_array_equal(value.input.array, reference.input.array, err_msg=step)  # same draws
            _close_images(value.input, reference.input, step)
            assert set(np.unique(reference.target.array)) <= {0, 1} and reference.target.array.dtype == np.uint8
            expected = io.mask_to_boxes(reference.target)
            assert len(value.target) == len(expected), step  # `outside` loses the box, as its label map the cube
            if step == "outside":
                assert len(expected) == 0
            # nearest neighbour moves the label map's edge by up to a voxel per interpolation
            # (half a voxel of the grid read, half of the grid written); the boxes move exactly
            tolerance = max(value.input.spacing) * (2 if step == "chained" else 1) + 1e-6
            for i in range(len(expected)):
                np.testing.assert_allclose(value.target.lo[i], expected.lo[i], atol=tolerance, err_msg=step)
                np.testing.assert_allclose(value.target.hi[i], expected.hi[i], atol=tolerance, err_msg=step)
            if not step.startswith(("rotated", "affined", "rescaled", "warped", "resampled", "resized", "chained")):
                # whole voxels moved: exactly the label map's box
                np.testing.assert_allclose(value.target.lo, expected.lo, atol=1e-6, err_msg=step)
                np.testing.assert_allclose(value.target.hi, expected.hi, atol=1e-6, err_msg=step)


def test_boxes_are_the_same_at_o0_and_o2(tmp_path: Path, cube_case: Path) -> None:
    text = _pipeline(f'scans = images("{cube_case}", "images/*.nii.gz") as Dataset<Image[3, CT]>\n'
                     f'  cases = boxed(scans, csv_annotations("{cube_case / "cube.csv"}"))', CHAINS_3D)
    o0, o2 = (_run(tmp_path, "boxes", text, level, fused=False) for level in ("0", "2"))
    for step, by_case in o0.items():
        for case, value in by_case.items():
            np.testing.assert_array_equal(value.target.lo, o2[step][case].target.lo, err_msg=step)
            np.testing.assert_array_equal(value.target.hi, o2[step][case].target.hi, err_msg=step)
            np.testing.assert_array_equal(value.target.classes, o2[step][case].target.classes, err_msg=step)


# ===== box geometry by hand ==================================================================

GRID_2D = dict(spacing=(0.5, 1.0), origin=(-10.0, 4.0), direction=(1.0, 0.0, 0.0, 1.0))


def _image_2d() -> Volume:
    return Volume(np.zeros((40, 60), np.float32), kind="image", **GRID_2D)  # x 60 voxels of 0.5 mm, y 40 of 1 mm


def _boxes(*corners: tuple[float, float, float, float]) -> Boxes:
    lo = np.array([c[:2] for c in corners], dtype=np.float64)
    hi = np.array([c[2:] for c in corners], dtype=np.float64)
    return Boxes(lo, hi, np.arange(1, len(corners) + 1), np.linspace(0.9, 0.5, len(corners)))


def test_a_rotated_box_is_the_box_around_its_rotated_corners() -> None:
    image = _image_2d()
    box = _boxes((0.0, 18.0, 4.0, 22.0))  # near the centre: the rotated box stays on the grid
    moved, drawn = aug.rotate(Pair(image, box), angle=30.0, p=1.0, rng=np.random.default_rng(3))
    assert abs(drawn["angles"][0]) > 10
    theta = np.radians(drawn["angles"][0])
    centre = np.array([-10.0 + 0.5 * 59 / 2, 4.0 + 39 / 2])
    # resampling reads output point q at R(theta)(q - c) + c: content at p goes to R(-theta)(p - c) + c
    back = np.array([[np.cos(theta), np.sin(theta)], [-np.sin(theta), np.cos(theta)]])
    corners = np.array([[0.0, 18.0], [0.0, 22.0], [4.0, 18.0], [4.0, 22.0]])
    went = (corners - centre) @ back.T + centre
    np.testing.assert_allclose(moved.target.lo[0], went.min(axis=0), atol=1e-9)
    np.testing.assert_allclose(moved.target.hi[0], went.max(axis=0), atol=1e-9)
    assert moved.target.classes.tolist() == [1] and moved.target.scores.tolist() == [0.9]
    assert aug.replay("rotate", Pair(image, box), drawn).target.lo.tolist() == moved.target.lo.tolist()


def test_flipped_boxes_are_mirrored_about_the_grid_centre() -> None:
    image = _image_2d()  # x from -10.25 to 19.75 mm (voxel footprints), centre 4.75
    moved, _ = aug.flip(Pair(image, _boxes((-6.0, 10.0, -2.0, 16.0))), axis=0, p=1.0, rng=np.random.default_rng(0))
    np.testing.assert_allclose(moved.target.lo[0], [11.5, 10.0])
    np.testing.assert_allclose(moved.target.hi[0], [15.5, 16.0])


def test_crops_clip_boxes_and_drop_those_left_outside() -> None:
    image = _image_2d()
    boxes = _boxes((-6.0, 10.0, -2.0, 16.0), (-9.0, 5.0, 0.0, 8.0), (15.0, 30.0, 18.0, 40.0))
    window = {"start": [4, 4], "size": [20, 10]}  # voxels x 4..23, y 4..13: -8.25 .. 1.75 mm, 7.5 .. 17.5 mm
    moved = aug.replay("random_crop", Pair(image, boxes), window)
    np.testing.assert_allclose(moved.target.lo, [[-6.0, 10.0], [-8.25, 7.5]])
    np.testing.assert_allclose(moved.target.hi, [[-2.0, 16.0], [0.0, 8.0]])
    assert moved.target.classes.tolist() == [1, 2] and moved.target.scores.tolist() == [0.9, 0.7]
    padded = aug.replay("random_crop", Pair(image, boxes), {"start": [-10, -10], "size": [80, 60]})
    np.testing.assert_allclose(padded.target.lo, boxes.lo)  # a pad moves nothing
    np.testing.assert_allclose(padded.target.hi, boxes.hi)
