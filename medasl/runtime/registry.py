"""Which Python function runs each operator: the `OPERATORS` tables of medasl/ops/*.py.

An operator of `std.<area>` is implemented in `medasl/ops/<area>.py`; a module is
imported only when one of its operators runs, so a pipeline without networks runs
without PyTorch installed. Besides the function, the executor needs to know a few
things about how an operator is called, and they are stated here once rather than
spread over the executor:

- source datasets (`folder`, `phantom`, ...) are listed first and read case by case
  (`medasl.ops.io.SOURCES`), so that reading can be cached and resumed per case;
- selections (`field`, `split`, `take`, ...) only regroup cases; they run in the main
  process on case references and are never stored;
- random operators (std.aug) take `rng` and return `(result, drawn)`; they are given a
  whole `Pair`, so that image and label get one draw; so is `crop_foreground`, whose
  box comes from the image and applies to both;
- `patches` and `box_patches` turn one case into `per_case` cases;
- `infer` and `boxed` take a whole dataset in the language but run case by case;
- `boxed` and `write_boxes` are told the id of their case (it names their rows);
- `html` collects every figure the pipeline shows and every metric it computes.

Whether an operator exists (`implemented`, `area`, `source`) is answered from the
tables below without importing its module: a fully cached run or a dry run computes
nothing, so it must not pay for PyTorch, MONAI, SimpleITK or matplotlib (seconds and
hundreds of MB) to learn that. tests/test_registry_tables.py compares the tables with
the modules' `OPERATORS`, `SOURCES` and top-level imports.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from types import ModuleType

from medasl.lower.plan import COLLECTING_REPORTS
from medasl.runtime.fusion import FUSED_OPS
from medasl.semantics.traits import EXPANDS, SELECTIONS, SOURCES  # noqa: F401 - the executor reads them here

TAKES_PAIRS = frozenset({"crop_foreground"})
PER_CASE = {"infer": "data", "boxed": "images", "paired": "input"}  # operator -> the dataset argument it is applied to case by case
GETS_CASE_ID = {"boxed": "case", "write_boxes": "case"}  # operator -> the parameter through which it learns the id of its case
COLLECTS = COLLECTING_REPORTS  # report operators given the shown figures and the metrics

OPERATORS: dict[str, frozenset[str]] = {
    "io": frozenset({
        "atrophy_phantom", "boxed", "boxes_to_mask", "classified", "csv_annotations", "datalist", "dicom_file",
        "dicom_folder", "dicom_seg", "dicom_series", "dicom_to_image", "folder", "images", "instance_folder",
        "instances_to_labels", "jpeg", "labels_to_instances", "mask_folder", "mask_to_boxes", "mha", "nifti", "nrrd", "numpy",
        "one_hot", "onehot_to_labels", "pair_input", "phantom", "png", "slide_tiles", "stacked_classified",
        "stacked_labels", "tiff", "write_boxes",
        "write_mha", "write_nifti", "write_nrrd", "write_png"}),
    "pre": frozenset({
        "body_mask", "clip", "connected_components", "crop_foreground", "crop_or_pad", "histogram_match",
        "lung_mask", "n4_bias_correction", "otsu_mask", "percentile_rescale", "register_affine", "register_rigid",
        "reorient", "resample", "resample_to", "rescale", "resize", "select_labels", "stain_deconvolve_hed",
        "stain_normalize_macenko", "stain_normalize_reinhard", "threshold_mask", "window", "zscore"}),
    "aug": frozenset({
        "affine", "bias_field", "box_patches", "brightness", "contrast", "elastic", "flip", "gamma",
        "gaussian_blur", "gaussian_noise", "motion", "patches", "random_crop", "random_rescale", "rotate",
        "stain_jitter"}),
    "data": frozenset({"concat", "cross_validated", "fold", "kfold", "paired", "shuffle", "split", "subset", "take"}),
    "nets": frozenset({
        "densenet2d", "densenet3d", "dual_path_classifier", "fcn2d", "nodule_detector", "resnet2d", "resnet3d",
        "segresnet", "swin_unetr", "unet2d", "unet3d", "vnet"}),
    "losses": frozenset({
        "box_loss", "ce_class", "cross_entropy", "dice_bce", "dice_ce", "dice_focal", "dice_loss", "focal",
        "focal_class", "generalized_dice", "lovasz", "tversky"}),
    "train": frozenset({
        "adam", "adamw", "constant", "cosine", "ensemble", "infer", "load_trained", "plateau", "poly", "sgd",
        "step_lr", "train"}),
    "post": frozenset({
        "argmax", "binarize", "fill_holes", "largest_component", "nms", "predicted_class", "remove_small",
        "smooth", "watershed_instances"}),
    "metrics": frozenset({
        "accuracy", "aji", "assd", "auc", "dice", "f1", "froc", "hd95", "iou", "panoptic_quality", "sensitivity",
        "specificity", "surface_dice"}),
    "viz": frozenset({
        "box_overlay", "confusion_matrix", "froc_curve", "grad_cam", "loss_curve", "mesh", "metric_boxplot",
        "metric_curve", "metrics_table", "occlusion", "optimization_history", "overlay", "parallel_coordinates",
        "param_importance", "roc_curve", "saliency", "tsne"}),
    "report": frozenset({"csv", "excel", "html", "json"}),
}
"""area -> the operators `medasl.ops.<area>.OPERATORS` implements (the keys of that table)."""

# SELECTIONS (regroup cases), EXPANDS (one case becomes several) and SOURCES (the keys of
# `medasl.ops.io.SOURCES`) are node facts the compiler reads too: one table, in semantics.

NEEDS: dict[str, tuple[str, ...]] = {
    "io": ("numpy",),  # SimpleITK is imported on first use: listing a phantom or a folder needs none of it
    "pre": ("numpy", "SimpleITK"),
    "aug": ("numpy", "SimpleITK"),
    "data": (),
    "nets": ("torch",),
    "losses": ("numpy", "torch", "monai"),
    "train": ("numpy", "torch"),
    "post": ("numpy", "SimpleITK", "scipy"),
    "metrics": ("numpy",),
    "viz": ("matplotlib", "numpy"),
    "report": ("matplotlib", "numpy"),  # through viz
}
"""area -> the libraries importing `medasl.ops.<area>` imports (not those its operators import when they run)."""

_AREAS = {op: name for name, ops in OPERATORS.items() for op in ops}
_MODULES: dict[str, ModuleType | None] = {}


def area(op: str) -> str | None:
    """`pre` for `resample`: the std module declaring `op`, or None for a user's operator."""
    if op in _AREAS:  # the common case, without parsing the stdlib (a worker process has not)
        return _AREAS[op]
    from medasl.semantics.modules import stdlib

    sig = stdlib().find_op(op)
    return sig.module.removeprefix("std.") if sig is not None else None


_MISSING: dict[str, str] = {}  # area -> the library its module could not import


def _module(name: str) -> ModuleType | None:
    """medasl.ops.<name>, or None when it does not exist yet or its dependencies are missing."""
    if name not in _MODULES:
        try:
            _MODULES[name] = importlib.import_module(f"medasl.ops.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"medasl.ops.{name}" and exc.name not in ("torch", "monai", "matplotlib", "openpyxl",
                                                                     "sklearn", "safetensors"):
                raise
            if exc.name != f"medasl.ops.{name}":
                _MISSING[name] = exc.name
            _MODULES[name] = None
    return _MODULES[name]


_INSTALLED: dict[str, bool] = {}


def _installed(library: str) -> bool:
    """Whether `library` can be imported, found without importing it (find_spec reads no module)."""
    if library not in _INSTALLED:
        _INSTALLED[library] = library in sys.modules or importlib.util.find_spec(library) is not None
    return _INSTALLED[library]


def missing_dependency(op: str) -> str | None:
    """The library an operator's module needs but cannot import (torch, monai, ...), if any."""
    name = area(op)
    if name is None or name not in NEEDS:
        return None
    if name in _MISSING:  # an import was tried and failed
        return _MISSING[name]
    return next((lib for lib in NEEDS[name] if not _installed(lib)), None)


def implemented(op: str) -> bool:
    """Whether `op` can run: it has a function, or it is one of the executor's selections.
    Answered from the tables, so that asking imports no operator module."""
    if op in SELECTIONS or op in FUSED_OPS:
        return True
    return op in _AREAS and missing_dependency(op) is None


def function(op: str) -> Callable[..., object]:
    name = area(op)
    module = _module(name) if name else None
    if module is None:
        raise KeyError(f"no implementation of `{op}`")
    return module.OPERATORS[op]


def source(op: str) -> object | None:
    """The two-phase form (list, then load each case) of a source dataset operator."""
    if op not in SOURCES:  # answered without importing medasl.ops.io, asked of every step
        return None
    module = _module("io")
    return getattr(module, "SOURCES", {}).get(op)
