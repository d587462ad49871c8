"""std.metrics: evaluation metrics (stdlib/metrics.medas).

Each public function implements the operator of the same name (see `OPERATORS`). There
are two kinds:

- PER-CASE metrics (every metric not in `DATASET_LEVEL`) take one case's prediction and
  target `Volume`s and return a float. The executor applies them case by case and
  `reduce` turns the per-case values into the `Measured` value of the study.
- DATASET-LEVEL metrics (`DATASET_LEVEL`: accuracy, auc, f1, froc) pool all cases, as
  their definitions require: `pred` is a list over cases (class scores, numpy `(K,)`, or
  `Boxes`), `target` the matching list (`int` classes, or `Boxes`); they return a float.

Label-map metrics (dice, iou, sensitivity, specificity, hd95, assd, surface_dice):

- `pred` must lie on `target`'s grid (`Volume.aligned_to`, so an exact re-storage such
  as a flipped axis is accepted); otherwise DataError E1007 says how the grids differ.
- They are computed per class for the classes present in EITHER map (the foreground
  classes, plus background 0 with `include_background`) and averaged over those
  classes, skipping NaN; `per_class(name, pred, target, ...)` gives the per-class values.
- Distances are in mm: the target's spacing, reversed to the array's `(z, y, x)` order.
- Edge cases, per class (the class is in at least one map):
  dice, iou: 0 when it is in one map only. sensitivity: NaN when the target lacks it
  (no positives). specificity: NaN when the target is that class everywhere (no
  negatives). hd95, assd: the diagonal of the image in mm (the largest distance the
  grid allows) when one map lacks the class, so a missed or hallucinated structure is
  penalised rather than skipped. surface_dice: 0 when one map lacks it.
- A case with no class to compare (empty prediction and empty target): dice, iou,
  specificity and surface_dice 1.0 (nothing to find, nothing wrongly found);
  sensitivity, hd95 and assd NaN (undefined; `reduce` skips NaN).

Instance metrics (aji, panoptic_quality) take instance maps (0 background, every other
value one object); both 1.0 when neither map has an object, 0.0 when only one has.

All metrics are implemented with NumPy, except the surface distances, which are
computed per class with MONAI (compute_hausdorff_distance, percentile 95;
compute_average_surface_distance, symmetric; compute_surface_dice).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence

import numpy as np

from medasl.runtime.errors import DataError
from medasl.runtime.values import Boxes, Measured, Volume

NAN = float("nan")

DATASET_LEVEL: frozenset[str] = frozenset({"accuracy", "auc", "f1", "froc"})
"""The metrics that pool all cases (lists of per-case values in, one float out)."""

GOALS: dict[str, str] = {
    "dice": "max", "iou": "max", "sensitivity": "max", "specificity": "max",
    "hd95": "min", "assd": "min", "surface_dice": "max",
    "aji": "max", "panoptic_quality": "max",
    "accuracy": "max", "auc": "max", "f1": "max", "froc": "max",
}
"""Which way each metric is better (`Metric[max]` / `Metric[min]` in stdlib/metrics.medas)."""

_EMPTY_CASE = {"dice": 1.0, "iou": 1.0, "sensitivity": NAN, "specificity": 1.0,
               "hd95": NAN, "assd": NAN, "surface_dice": 1.0}
_LABEL_METRICS = frozenset(_EMPTY_CASE)
LABEL_METRICS = _LABEL_METRICS
"""The label-map metrics, computed per class (`per_class`, `by_class`)."""


# ===== shared helpers ======================================================================


def _pair(pred: Volume, target: Volume, what: str = "label map") -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """The two arrays on the target's grid and the spacing in array order, or E1007."""
    aligned = pred.aligned_to(target)
    if aligned is None:
        diffs = "; ".join(target.grid_differences(pred))
        raise DataError("E1007", f"the predicted {what} is not on the target's grid ({diffs})",
                        pred.source or target.source,
                        help="resample the prediction onto the target first (`resample_to(pred, target)`)")
    p, t = _single(aligned, what), _single(target, what)
    return p, t, tuple(reversed(target.spacing))


def _single(x: Volume, what: str) -> np.ndarray:
    a = np.asarray(x.array)
    if a.ndim == x.dim + 1 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim != x.dim:
        raise ValueError(f"a {what} has one value per voxel, got an array of shape {a.shape} "
                         "(apply `argmax` to a probability map first)")
    return a


def _nanmean(values: Sequence[float]) -> float:
    arr = np.asarray(list(values), dtype=float)
    if arr.size == 0 or np.all(np.isnan(arr)):
        return NAN
    return float(np.nanmean(arr))


def _diagonal(shape: tuple[int, ...], spacing: tuple[float, ...]) -> float:
    return float(math.sqrt(sum((n * s) ** 2 for n, s in zip(shape, spacing))))


def _considered(p: np.ndarray, t: np.ndarray, include_background: bool) -> list[int]:
    classes = set(np.unique(p).tolist()) | set(np.unique(t).tolist())
    if not include_background:
        classes.discard(0)
    return sorted(int(c) for c in classes)


def _surface(name: str, pm: np.ndarray, tm: np.ndarray, spacing: tuple[float, ...], tolerance: float) -> float:
    import torch

    yp = torch.from_numpy(np.ascontiguousarray(pm)[None, None])
    y = torch.from_numpy(np.ascontiguousarray(tm)[None, None])
    with warnings.catch_warnings():
        # MONAI 1.5+ warns about an argument its own edge finder passes (always_return_as_numpy)
        warnings.simplefilter("ignore", FutureWarning)
        return _monai_surface(name, yp, y, spacing, tolerance)


def _monai_surface(name: str, yp: object, y: object, spacing: tuple[float, ...], tolerance: float) -> float:
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance, compute_surface_dice

    if name == "hd95":
        v = compute_hausdorff_distance(yp, y, include_background=True, percentile=95, spacing=list(spacing))
    elif name == "assd":
        v = compute_average_surface_distance(yp, y, include_background=True, symmetric=True, spacing=list(spacing))
    else:
        v = compute_surface_dice(yp, y, class_thresholds=[float(tolerance)], include_background=True,
                                 spacing=list(spacing))
    return float(v.reshape(-1)[0])


def _class_value(name: str, pm: np.ndarray, tm: np.ndarray, spacing: tuple[float, ...], tolerance: float) -> float:
    n_p, n_t = int(np.count_nonzero(pm)), int(np.count_nonzero(tm))
    tp = int(np.count_nonzero(pm & tm))
    if name == "dice":
        return 2.0 * tp / (n_p + n_t)
    if name == "iou":
        return tp / (n_p + n_t - tp)
    if name == "sensitivity":
        return tp / n_t if n_t else NAN
    if name == "specificity":
        negatives = pm.size - n_t
        return (negatives - (n_p - tp)) / negatives if negatives else NAN
    if n_p == 0 or n_t == 0:
        return 0.0 if name == "surface_dice" else _diagonal(pm.shape, spacing)
    return _surface(name, pm, tm, spacing, tolerance)


def _label_metric(name: str, pred: Volume, target: Volume, include_background: bool, tolerance: float = 1.0,
                  label: int | None = None) -> float:
    values = per_class(name, pred, target, include_background=include_background, tolerance=tolerance, label=label)
    if not values:
        return _EMPTY_CASE[name]
    return _nanmean(list(values.values()))


def per_class(name: str, pred: Volume, target: Volume, include_background: bool = False,
              tolerance: float = 1.0, label: int | None = None) -> dict[int, float]:
    """The label-map metric `name` of one case per class, for the classes present in
    either map (background 0 only with `include_background`), or for class `label` only
    (when either map holds it); `tolerance` (mm) is used by surface_dice only. Empty when
    no class is present."""
    if name not in _LABEL_METRICS:
        raise ValueError(f"{name} is not a per-class label-map metric ({', '.join(sorted(_LABEL_METRICS))})")
    p, t, spacing = _pair(pred, target)
    considered = _considered(p, t, bool(include_background))
    if label is not None:
        considered = [c for c in _considered(p, t, True) if c == int(label)]
    return {c: _class_value(name, p == c, t == c, spacing, tolerance) for c in considered}


def class_names(*maps: Volume) -> dict[int, str]:
    """The names of label values the maps carry (a DICOM SEG's segment labels), the
    target's first: `{1: "liver", 2: "spleen"}`."""
    names: dict[int, str] = {}
    for vol in reversed(maps):
        names.update(dict(vol.names))
    return names


def by_class(name: str, cases: Sequence[tuple[Volume, Volume]], options: dict[str, object]) -> dict[str, float]:
    """The per-class means over cases of the label-map metric `name` (`options` as the
    operator takes them), keyed by the class's name where the label maps carry one
    (`liver`), else by its value (`1`). NaN values are left out of each mean."""
    values: dict[int, list[float]] = {}
    names: dict[int, str] = {}
    tolerance = float(options.get("tolerance", 1.0))  # type: ignore[arg-type]
    label = options.get("label")
    for pred, target in cases:
        found = per_class(name, pred, target, include_background=bool(options.get("include_background", False)),
                          tolerance=tolerance, label=None if label is None else int(label))  # type: ignore[arg-type]
        for c, v in found.items():
            values.setdefault(c, []).append(v)
        names.update(class_names(pred, target))
    return {names.get(c, str(c)): _nanmean(vs) for c, vs in sorted(values.items())}


# ===== overlap ==============================================================================


def dice(pred: Volume, target: Volume, include_background: bool = False, label: int | None = None) -> float:
    """Dice 2|P n T| / (|P| + |T|), mean over the classes present in either map (of
    class `label` only, when given)."""
    return _label_metric("dice", pred, target, include_background, label=label)


def iou(pred: Volume, target: Volume, include_background: bool = False, label: int | None = None) -> float:
    """Jaccard index |P n T| / |P u T|, mean over the classes present in either map."""
    return _label_metric("iou", pred, target, include_background, label=label)


def sensitivity(pred: Volume, target: Volume, include_background: bool = False, label: int | None = None) -> float:
    """TP / (TP + FN) per class, mean over classes (NaN for a class the target lacks)."""
    return _label_metric("sensitivity", pred, target, include_background, label=label)


def specificity(pred: Volume, target: Volume, include_background: bool = False, label: int | None = None) -> float:
    """TN / (TN + FP) per class, mean over classes."""
    return _label_metric("specificity", pred, target, include_background, label=label)


# ===== surface distance ======================================================================


def hd95(pred: Volume, target: Volume, include_background: bool = False, label: int | None = None) -> float:
    """95th percentile symmetric Hausdorff distance in mm (MONAI: the larger of the two
    directed 95th percentiles), mean over classes."""
    return _label_metric("hd95", pred, target, include_background, label=label)


def assd(pred: Volume, target: Volume, include_background: bool = False, label: int | None = None) -> float:
    """Average symmetric surface distance in mm (MONAI, symmetric=True), mean over classes."""
    return _label_metric("assd", pred, target, include_background, label=label)


def surface_dice(pred: Volume, target: Volume, tolerance: float = 1.0, include_background: bool = False,
                 label: int | None = None) -> float:
    """Normalized surface Dice at `tolerance` mm (MONAI compute_surface_dice), mean over classes."""
    return _label_metric("surface_dice", pred, target, include_background, float(tolerance), label=label)


# ===== instances ============================================================================


def _overlaps(p: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Intersections `(n_t, n_p)` between the objects of `t` and `p` and their areas."""
    _, p_inv = np.unique(p.ravel(), return_inverse=True)
    _, t_inv = np.unique(t.ravel(), return_inverse=True)
    p_ids = np.unique(p)
    t_ids = np.unique(t)
    # index 0 is background when present; shift so that objects are 0..n-1
    p_lab = p_inv - (1 if p_ids[0] == 0 else 0)
    t_lab = t_inv - (1 if t_ids[0] == 0 else 0)
    n_p = int(np.count_nonzero(p_ids)) if p_ids.size else 0
    n_t = int(np.count_nonzero(t_ids)) if t_ids.size else 0
    both = (p_lab >= 0) & (t_lab >= 0)
    inter = np.zeros((n_t, n_p), dtype=np.int64)
    np.add.at(inter, (t_lab[both], p_lab[both]), 1)
    area_p = np.bincount(p_lab[p_lab >= 0], minlength=n_p)
    area_t = np.bincount(t_lab[t_lab >= 0], minlength=n_t)
    return inter, area_t, area_p


def aji(pred: Volume, target: Volume) -> float:
    """Aggregated Jaccard index (Kumar et al. 2017): each target object G_i is matched to
    the predicted object S_j of highest IoU with it (a prediction may serve several
    targets, as in the published definition); C = sum |G_i n S_j|, U = sum |G_i u S_j|
    (|G_i| for a target overlapping no prediction), plus the area of every prediction
    matched to no target; AJI = C / U."""
    p, t, _ = _pair(pred, target, "instance map")
    inter, area_t, area_p = _overlaps(p, t)
    if inter.shape[0] == 0 and inter.shape[1] == 0:
        return 1.0
    if inter.shape[0] == 0 or inter.shape[1] == 0:
        return 0.0
    union = area_t[:, None] + area_p[None, :] - inter
    ious = inter / union
    best = np.argmax(ious, axis=1)
    matched = ious[np.arange(len(best)), best] > 0
    c = int(inter[np.arange(len(best)), best][matched].sum())
    u = int(union[np.arange(len(best)), best][matched].sum()) + int(area_t[~matched].sum())
    used = np.zeros(inter.shape[1], dtype=bool)
    used[best[matched]] = True
    u += int(area_p[~used].sum())
    return c / u


def panoptic_quality(pred: Volume, target: Volume) -> float:
    """Panoptic quality (Kirillov et al. 2019) of one class of objects: pairs with IoU
    above 0.5 are matches (unique by construction); PQ = sum of matched IoU /
    (TP + FP/2 + FN/2)."""
    p, t, _ = _pair(pred, target, "instance map")
    inter, area_t, area_p = _overlaps(p, t)
    n_t, n_p = inter.shape
    if n_t == 0 and n_p == 0:
        return 1.0
    union = area_t[:, None] + area_p[None, :] - inter
    ious = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    matched = ious > 0.5
    tp = int(matched.sum())
    fp, fn = n_p - tp, n_t - tp
    return float(ious[matched].sum() / (tp + 0.5 * fp + 0.5 * fn))


# ===== classification (dataset level) ======================================================


def _scores(pred: Sequence[object], target: Sequence[object]) -> tuple[np.ndarray, np.ndarray]:
    if len(pred) != len(target):
        raise ValueError(f"{len(pred)} predictions for {len(target)} targets")
    s = np.stack([np.asarray(p, dtype=float).reshape(-1) for p in pred]) if len(pred) else np.zeros((0, 0))
    y = np.asarray([int(v) for v in target], dtype=np.int64)
    return s, y


def _binary_auc(score: np.ndarray, positive: np.ndarray) -> float:
    """ROC AUC as the Mann-Whitney statistic (ties count one half); NaN without both classes."""
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return NAN
    from scipy.stats import rankdata

    ranks = rankdata(score)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def accuracy(pred: Sequence[np.ndarray], target: Sequence[int]) -> float:
    """Fraction of cases whose highest-scoring class (the first on ties) is the target."""
    s, y = _scores(pred, target)
    if y.size == 0:
        return NAN
    return float(np.mean(np.argmax(s, axis=1) == y))


def auc(pred: Sequence[np.ndarray], target: Sequence[int]) -> float:
    """ROC AUC. Two classes: of the class-1 score (a one-value score is the class-1
    probability). More: one-vs-rest per class, macro-averaged over the classes that have
    both positive and negative cases. NaN when no class has both."""
    s, y = _scores(pred, target)
    if y.size == 0:
        return NAN
    if s.shape[1] <= 2:
        return _binary_auc(s[:, -1], y == 1)
    return _nanmean([_binary_auc(s[:, c], y == c) for c in range(s.shape[1])])


def f1(pred: Sequence[np.ndarray], target: Sequence[int]) -> float:
    """F1 of the predicted classes (argmax): of class 1 for two classes; for more, the
    macro average over the classes in the targets or the predictions. A class with no
    true or predicted case has F1 0 (scikit-learn's zero_division default)."""
    s, y = _scores(pred, target)
    if y.size == 0:
        return NAN
    yhat = (s[:, 0] > 0.5).astype(np.int64) if s.shape[1] == 1 else np.argmax(s, axis=1)

    def one(c: int) -> float:
        tp = int(np.count_nonzero((yhat == c) & (y == c)))
        denom = int(np.count_nonzero(yhat == c)) + int(np.count_nonzero(y == c))
        return 2.0 * tp / denom if denom else 0.0

    if max(s.shape[1], 2) == 2:
        return one(1)
    return float(np.mean([one(int(c)) for c in np.union1d(y, yhat)]))


# ===== detection (dataset level) =============================================================


def _hits(det: Boxes, ref: Boxes) -> np.ndarray:
    """`(n_det, n_ref)`: whether each detection's centre lies inside the reference box or
    within its radius (half its largest side) of the reference box's centre."""
    c = (det.lo + det.hi) / 2.0
    inside = np.all((c[:, None, :] >= ref.lo[None]) & (c[:, None, :] <= ref.hi[None]), axis=2)
    rc = (ref.lo + ref.hi) / 2.0
    radius = np.max(ref.hi - ref.lo, axis=1) / 2.0
    near = np.linalg.norm(c[:, None, :] - rc[None], axis=2) <= radius[None]
    return inside | near


def froc(pred: Sequence[Boxes], target: Sequence[Boxes],
         fps: Sequence[float] = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)) -> float:
    """The LUNA16 FROC score (CPM, Setio et al. 2017): the mean, over the false-positive
    rates `fps` (per scan), of the sensitivity reached at that rate.

    Class-agnostic, as LUNA16. A detection HITS a reference box when its centre lies
    inside the box or within the box's radius (half its largest side) of the box's
    centre. A reference is found at threshold t when a detection of score >= t hits it
    (its score is the highest such score); detections hitting no reference are false
    positives; detections hitting an already found reference are neither (LUNA16 ignores
    duplicates). Sensitivity at rate f is read as the LUNA16 evaluation script
    (noduleCADEvaluationLUNA16.py) reads it, so that scores compare with published ones:
    the operating points are interpolated linearly (`np.interp`) on 10,001 evenly spaced
    rates from the smallest to the largest of `fps`, and the value at the grid rate
    nearest f is taken (beyond the last operating point the curve stays flat). NaN when
    there is no reference box in any scan.
    """
    rates, sens, n_scans, n_ref = froc_operating_points(pred, target)
    if n_ref == 0 or n_scans == 0:
        return NAN
    asked = np.asarray(fps, dtype=np.float64)
    grid = np.linspace(asked.min(), asked.max(), num=10001)
    curve = np.interp(grid, rates, sens)
    return float(np.mean([curve[np.argmin(np.abs(grid - f))] for f in asked]))


def froc_operating_points(pred: Sequence[Boxes], target: Sequence[Boxes]) -> tuple[np.ndarray, np.ndarray, int, int]:
    """The FROC curve's operating points, from the strictest score threshold down and
    starting at (0, 0): false positives per scan and sensitivity (NaN without reference
    boxes), with the number of scans and of reference boxes. The matching rule is
    `froc`'s (its docstring)."""
    if len(pred) != len(target):
        raise ValueError(f"{len(pred)} predicted box sets for {len(target)} targets")
    n_scans = len(target)
    found_scores: list[float] = []  # per reference: best hitting score, -inf if missed
    fp_scores: list[float] = []
    for det, ref in zip(pred, target):
        if len(ref) == 0:
            fp_scores.extend(det.scores.tolist())
            continue
        if len(det) == 0:
            found_scores.extend([-math.inf] * len(ref))
            continue
        hits = _hits(det, ref)
        fp_scores.extend(det.scores[~hits.any(axis=1)].tolist())
        best = np.where(hits, det.scores[:, None], -np.inf).max(axis=0)
        found_scores.extend(best.tolist())
    n_ref = len(found_scores)
    found = np.asarray(found_scores, dtype=np.float64)
    false = np.asarray(fp_scores, dtype=np.float64)
    thresholds = np.unique(np.concatenate([found[np.isfinite(found)], false]))[::-1]
    rates = [0.0] + [float(np.count_nonzero(false >= th)) / max(n_scans, 1) for th in thresholds]
    sens = [0.0] + [float(np.count_nonzero(found >= th)) / n_ref if n_ref else NAN for th in thresholds]
    return np.asarray(rates), np.asarray(sens), n_scans, n_ref


# ===== reduction ==============================================================================


def reduce(name: str, per_case: dict[str, float], goal: str | None = None,
           per_class: dict[str, float] | None = None) -> Measured:
    """The `Measured` value of a per-case metric: the mean over cases skipping NaN (NaN
    when every case is NaN or there is none), the per-case values kept. `goal` defaults
    to the metric's declared goal (`GOALS`)."""
    goal = goal or GOALS[name]
    if goal not in ("max", "min"):
        raise ValueError(f"goal must be max or min, not {goal!r}")
    values = {str(k): float(v) for k, v in per_case.items()}
    return Measured(name=name, goal=goal, value=_nanmean(list(values.values())), per_case=values,
                    per_class=dict(per_class or {}))


OPERATORS: dict[str, Callable[..., object]] = {
    "dice": dice, "iou": iou, "sensitivity": sensitivity, "specificity": specificity,
    "hd95": hd95, "assd": assd, "surface_dice": surface_dice,
    "aji": aji, "panoptic_quality": panoptic_quality,
    "accuracy": accuracy, "auc": auc, "f1": f1, "froc": froc,
}
"""The std.metrics operators implemented here, by the name of their stdlib signature."""
