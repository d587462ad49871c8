"""Every conversion the checker inserts (`@conversion` operators of the standard library:
`dicom_to_image`, `instances_to_labels`, `labels_to_instances`, `one_hot`,
`onehot_to_labels`, `argmax`, `pair_input`) runs end to end with `medasc run` on real
data, at -O0 and at the default -O2, and gives the values its documentation promises.

Until issue 10 every one of them crashed (`unexpected keyword argument '_'`): the checker
named the converted argument `_`, the implementations take `x`, and no example used an
inserted conversion, so no test ran one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813

from medasl.ops import io, metrics, post
from medasl.runtime.values import Volume
from medasl.semantics.modules import stdlib
from tests.conftest import shared_data
from tests.test_cli import run

DATA = shared_data(module=True)
SERIES = DATA / "ct_dicom_series_totalsegmentator" / "dicom"
NUCLEI = DATA / "histo_nuclei_dsb2018"
NUCLEI_CASES = f'instance_folder("{NUCLEI}", image="images/4*.png", label="instance_labels/4*.png") ' \
               "as Pair<Image[2, Path], Instances[2]>"


def _run(tmp_path: Path, text: str, level: str) -> Path:
    """Run `text` at -O`level`; the folder its pipeline wrote to. Fails on any diagnostic
    exit, and checks that the checker really inserted conversions."""
    file = tmp_path / "conv.medas"
    file.write_text(text)
    code, ir, err = run("compile", "--emit", "ir", "-O0", str(file))
    assert code == 0, err
    assert ",conversion]" in ir or "[conversion]" in ir, ir
    out = tmp_path / f"out{level}"
    code, _, err = run("run", str(file), f"-O{level}", "--cache-dir", str(tmp_path / f"cache{level}"), "--out", str(out))
    assert code == 0, err
    return out / "conv"


def _inserted(text: str, tmp_path: Path) -> set[str]:
    """The operators of the conversions the checker inserted into `text`'s IR."""
    file = tmp_path / "inserted.medas"
    file.write_text(text)
    code, ir, err = run("compile", "--emit", "ir", "-O0", str(file))
    assert code == 0, err
    return {line.split("= ", 1)[1].split("[", 1)[0] for line in ir.splitlines() if "conversion]" in line}


def _array(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def _masks() -> dict[str, np.ndarray]:
    """The nucleus instance masks the pipelines read, by the case id `4*` gives them."""
    return {p.stem[1:]: _array(p) for p in sorted((NUCLEI / "instance_labels").glob("4*.png"))}


DICOM = f"""import std.io, std.pre
pipeline conv {{
  series = dicom_series("{SERIES}") as DicomSeries[CT]
  scans = dicom_folder("{SERIES.parent}") as Dataset<DicomSeries[CT]>
  report write_nifti(series, "series.nii"), write_nifti(scans, "scans/*.nii"),
         write_nifti(series |> clip(low=-1024, high=3071), "clipped.nii")
}}
"""


@pytest.mark.parametrize("level", ["0", "2"])
def test_dicom_series_becomes_the_image_simpleitk_reads(tmp_path: Path, level: str) -> None:
    """DicomSeries -> Image (one series, and case by case in a dataset of series): the HU
    values and the geometry of SimpleITK's ImageSeriesReader."""
    out = _run(tmp_path, DICOM, level)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(SERIES)))
    reference = reader.Execute()
    expected = sitk.GetArrayFromImage(reference).astype(np.float64)
    assert expected.min() == -1024 and expected.max() > 1000  # Hounsfield units, not stored values
    written = sorted(out.rglob("*.nii"))
    assert [p.relative_to(out).as_posix() for p in written] == ["clipped.nii", "scans/dicom.nii",
                                                                  "series.nii"]
    for path in written:
        image = sitk.ReadImage(str(path))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(image).astype(np.float64), expected, err_msg=path.name)
        for get in (sitk.Image.GetSpacing, sitk.Image.GetOrigin, sitk.Image.GetDirection):
            np.testing.assert_allclose(get(image), get(reference), atol=1e-4, err_msg=path.name)


LABELS = f"""import std.io, std.post, std.metrics, std.report
pipeline conv {{
  cases = {NUCLEI_CASES}
  fg = cases.label |> fill_holes
  score = aji(instances_to_labels(cases.label), cases.label) maximize
  report write_nifti(one_hot(cases.label), "onehot/*.nii.gz"), write_nifti(fg, "fg/*.nii.gz"),
         write_nifti(one_hot(fg) |> fill_holes, "via_onehot/*.nii.gz"), write_nifti(fg |> fill_holes, "filled/*.nii.gz"),
         write_nifti(fg |> onehot_to_labels, "round_trip/*.nii.gz"), json("score.json", score)
}}
"""


@pytest.mark.parametrize("level", ["0", "2"])
def test_label_conversions_give_what_they_document(tmp_path: Path, level: str) -> None:
    """Instances -> LabelMap is mask > 0; LabelMap -> Instances numbers the components
    (scikit-image's label, face connectivity); LabelMap -> OneHot and back are lossless."""
    assert _inserted(LABELS, tmp_path) == {"instances_to_labels", "labels_to_instances", "one_hot",
                                           "onehot_to_labels"}
    out = _run(tmp_path, LABELS, level)
    masks = _masks()
    assert len(masks) == 2
    for case, mask in masks.items():
        onehot = _array(out / "onehot" / f"{case}.nii.gz")  # (y, x, class): channels last
        assert onehot.shape == (*mask.shape, 2)
        np.testing.assert_array_equal(onehot[..., 1], (mask > 0).astype(np.uint8))
        np.testing.assert_array_equal(onehot[..., 0], (mask == 0).astype(np.uint8))
        fg = _array(out / "fg" / f"{case}.nii.gz")
        assert set(np.unique(fg)) == {0, 1}
        np.testing.assert_array_equal(_array(out / "via_onehot" / f"{case}.nii.gz"),
                                      _array(out / "filled" / f"{case}.nii.gz"))
        np.testing.assert_array_equal(_array(out / "round_trip" / f"{case}.nii.gz"), fg)
    score = json.loads((out / "score.json").read_text())[0]
    for case, mask in masks.items():
        grid = dict(spacing=(1.0, 1.0), origin=(0.0, 0.0), direction=(1.0, 0.0, 0.0, 1.0))
        target = Volume(mask, kind="instances", **grid)
        components = io.labels_to_instances(Volume((mask > 0).astype(np.uint8), kind="labels", **grid))
        assert score["per_case"][case] == pytest.approx(metrics.aji(components, target), abs=1e-12)
        assert score["per_case"][case] < 1  # touching nuclei merge: the conversion really numbered components


NETWORK = f"""import std.io, std.pre, std.nets, std.losses, std.train, std.post, std.metrics, std.report
pipeline conv {{
  cases = {NUCLEI_CASES}
  small = cases |> instances_to_labels |> crop_or_pad((64, 64)) |> rescale(0, 1)
  fit = train(fcn2d(in_channels=3, classes=2, width=4), small, loss=dice_ce, epochs=1, batch=2, on=cpu)
  probs = infer(fit, small, on=cpu)
  score = dice(probs, small.label) maximize
  report write_nifti(probs, "probs/*.nii.gz"), write_nifti(largest_component(probs), "largest/*.nii.gz"),
         write_nifti(small.label, "label/*.nii.gz"), json("score.json", score)
}}
"""


def test_network_outputs_get_argmax_and_pairs_their_inputs(tmp_path: Path) -> None:
    """`infer` on a dataset of pairs runs on their images (pair_input); probabilities
    where labels are expected become labels by argmax over the classes."""
    assert _inserted(NETWORK, tmp_path) == {"pair_input", "argmax"}
    out = _run(tmp_path, NETWORK, "2")
    score = json.loads((out / "score.json").read_text())[0]
    grid = dict(spacing=(1.0, 1.0), origin=(0.0, 0.0), direction=(1.0, 0.0, 0.0, 1.0))
    for case in _masks():
        probs = _array(out / "probs" / f"{case}.nii.gz")
        assert probs.shape == (64, 64, 2)  # the network ran on the 64 x 64 images of the pairs
        labels = Volume(np.argmax(probs, axis=-1).astype(np.uint8), kind="labels", **grid)
        target = Volume(_array(out / "label" / f"{case}.nii.gz"), kind="labels", **grid)
        np.testing.assert_array_equal(_array(out / "largest" / f"{case}.nii.gz"), post.largest_component(labels).array)
        assert score["per_case"][case] == pytest.approx(metrics.dice(labels, target), abs=1e-6)


def test_every_conversion_of_the_standard_library_is_run_here() -> None:
    """A conversion added to the standard library needs a run test in this file."""
    tested = {"dicom_to_image", "instances_to_labels", "labels_to_instances", "one_hot", "onehot_to_labels",
              "argmax", "pair_input"}
    assert {op.name for op in stdlib().conversions()} == tested
