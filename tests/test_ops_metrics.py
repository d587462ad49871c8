"""std.metrics (medasl/ops/metrics.py) against MONAI (overlap, confusion matrix, surface
distances, panoptic quality), scikit-learn (accuracy, AUC, F1), and hand-computed
examples (AJI after Kumar et al. 2017, the LUNA16 FROC rule)."""

from __future__ import annotations

import math

import pytest

np = pytest.importorskip("numpy", reason="the runtime needs numpy")
torch = pytest.importorskip("torch", reason="the MONAI comparisons need torch")
mm = pytest.importorskip("monai.metrics", reason="the surface metrics need MONAI")

from medasl.ops import metrics  # noqa: E402 (after the skips)
from medasl.runtime.errors import DataError  # noqa: E402
from medasl.runtime.values import Boxes, Measured, Volume  # noqa: E402

SPACING = (0.7, 1.1, 2.5)  # (x, y, z) mm: anisotropic, so a reversed spacing shows
ORIGIN = (3.0, -4.0, 12.0)
EYE = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
K = 3

# MONAI's own surface-distance helpers pass an argument MONAI has deprecated
pytestmark = pytest.mark.filterwarnings("ignore:.*always_return_as_numpy:FutureWarning")


def _vol(a: np.ndarray, kind: str = "labels", spacing: tuple[float, ...] = SPACING) -> Volume:
    dim = a.ndim
    direction = EYE if dim == 3 else (1.0, 0.0, 0.0, 1.0)
    return Volume(a, spacing[:dim], ORIGIN[:dim], direction, kind=kind)


def _blobs(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two overlapping multi-class label maps (every class in both)."""
    rng = np.random.default_rng(seed)
    shape = (8, 16, 14)
    zz, yy, xx = np.indices(shape)
    t = np.zeros(shape, dtype=np.uint8)
    p = np.zeros(shape, dtype=np.uint8)
    for c, (cz, cy, cx) in zip((1, 2), ((3, 5, 5), (4, 10, 9))):
        r = 2.5 + rng.random()
        t[(zz - cz) ** 2 * 2 + (yy - cy) ** 2 + (xx - cx) ** 2 < r**2 * 2] = c
        dz, dy, dx = rng.integers(-1, 2, 3)
        p[(zz - cz - dz) ** 2 * 2 + (yy - cy - dy) ** 2 + (xx - cx - dx) ** 2 < (r + 0.5) ** 2 * 2] = c
    return p, t


def _onehot(a: np.ndarray, k: int = K) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.from_numpy(a.astype(np.int64)), k).movedim(-1, 0)[None].float()


ARRAY_SPACING = list(reversed(SPACING))


@pytest.fixture(params=[0, 1])
def pair(request) -> tuple[np.ndarray, np.ndarray]:
    return _blobs(request.param)


# ----- overlap ------------------------------------------------------------------------------


def test_dice_and_iou_equal_monai(pair) -> None:
    p, t = pair
    yp, y = _onehot(p), _onehot(t)
    for include in (False, True):
        ref = mm.compute_dice(yp, y, include_background=include)[0].numpy()
        assert metrics.dice(_vol(p), _vol(t), include_background=include) == pytest.approx(float(ref.mean()))
        got = metrics.per_class("dice", _vol(p), _vol(t), include_background=include)
        assert list(got.values()) == pytest.approx(ref.tolist())
        ref_iou = mm.compute_iou(yp, y, include_background=include)[0].numpy()
        assert metrics.iou(_vol(p), _vol(t), include_background=include) == pytest.approx(float(ref_iou.mean()))
    # the class objects of MONAI agree as well
    dm = mm.DiceMetric(include_background=False, reduction="mean")
    dm(yp, y)
    assert metrics.dice(_vol(p), _vol(t)) == pytest.approx(float(dm.aggregate()))
    iou_metric = mm.MeanIoU(include_background=False, reduction="mean")
    iou_metric(yp, y)
    assert metrics.iou(_vol(p), _vol(t)) == pytest.approx(float(iou_metric.aggregate()))


@pytest.mark.parametrize("name", ["sensitivity", "specificity"])
def test_sensitivity_specificity_equal_monai_confusion_matrix(pair, name) -> None:
    p, t = pair
    for include in (False, True):
        cm = mm.get_confusion_matrix(_onehot(p), _onehot(t), include_background=include)
        ref = mm.compute_confusion_matrix_metric(name, cm)[0].numpy()
        assert metrics.OPERATORS[name](_vol(p), _vol(t), include_background=include) == pytest.approx(
            float(ref.mean()))
    cmm = mm.ConfusionMatrixMetric(include_background=False, metric_name=name, compute_sample=True,
                                  reduction="mean")
    cmm(_onehot(p), _onehot(t))
    assert metrics.OPERATORS[name](_vol(p), _vol(t)) == pytest.approx(float(cmm.aggregate()[0]))


# ----- surface distances ---------------------------------------------------------------------


def test_hd95_and_assd_equal_monai_with_spacing(pair) -> None:
    p, t = pair
    yp, y = _onehot(p), _onehot(t)
    ref = mm.compute_hausdorff_distance(yp, y, include_background=False, percentile=95, spacing=ARRAY_SPACING)
    assert metrics.hd95(_vol(p), _vol(t)) == pytest.approx(float(ref.mean()), rel=1e-6)
    ref = mm.compute_average_surface_distance(yp, y, include_background=False, symmetric=True,
                                              spacing=ARRAY_SPACING)
    assert metrics.assd(_vol(p), _vol(t)) == pytest.approx(float(ref.mean()), rel=1e-6)
    ref = mm.compute_surface_dice(yp, y, class_thresholds=[2.0, 2.0], include_background=False,
                                  spacing=ARRAY_SPACING)
    assert metrics.surface_dice(_vol(p), _vol(t), tolerance=2.0) == pytest.approx(float(ref.mean()), rel=1e-6)


def test_distances_are_in_mm_along_the_right_axes() -> None:
    # one voxel each, 3 voxels apart along x (array axis 2): 3 * 0.7 mm, not 3 * 2.5 mm
    p = np.zeros((5, 5, 9), dtype=np.uint8)
    t = np.zeros_like(p)
    p[2, 2, 2] = 1
    t[2, 2, 5] = 1
    assert metrics.hd95(_vol(p), _vol(t)) == pytest.approx(3 * 0.7)
    assert metrics.assd(_vol(p), _vol(t)) == pytest.approx(3 * 0.7)
    # and along z (array axis 0): 2 * 2.5 mm
    p2 = np.zeros((5, 5, 9), dtype=np.uint8)
    p2[4, 2, 5] = 1
    assert metrics.hd95(_vol(p2), _vol(t)) == pytest.approx(2 * 2.5)
    assert metrics.surface_dice(_vol(p2), _vol(t), tolerance=5.0) == pytest.approx(1.0)
    assert metrics.surface_dice(_vol(p2), _vol(t), tolerance=4.9) == pytest.approx(0.0)


def test_edge_cases() -> None:
    empty = np.zeros((4, 5, 6), dtype=np.uint8)
    full = empty.copy()
    full[1:3, 1:4, 1:5] = 1
    e, f = _vol(empty), _vol(full)
    # nothing in either map
    assert metrics.dice(e, e) == 1.0 and metrics.iou(e, e) == 1.0
    assert metrics.specificity(e, e) == 1.0 and metrics.surface_dice(e, e) == 1.0
    for name in ("sensitivity", "hd95", "assd"):
        assert math.isnan(metrics.OPERATORS[name](e, e))
    assert metrics.per_class("dice", e, e) == {}
    # a missed structure / a hallucinated structure
    diagonal = math.sqrt((6 * 0.7) ** 2 + (5 * 1.1) ** 2 + (4 * 2.5) ** 2)
    for a, b in ((e, f), (f, e)):
        assert metrics.dice(a, b) == 0.0 and metrics.iou(a, b) == 0.0
        assert metrics.hd95(a, b) == pytest.approx(diagonal) and metrics.assd(a, b) == pytest.approx(diagonal)
        assert metrics.surface_dice(a, b) == 0.0
    assert metrics.sensitivity(e, f) == 0.0
    assert math.isnan(metrics.sensitivity(f, e))  # the target has no positives
    # perfect
    assert metrics.dice(f, f) == 1.0 and metrics.hd95(f, f) == 0.0


def test_grid_mismatch_is_e1007() -> None:
    p, t = _blobs(0)
    other = Volume(p, (0.7, 1.1, 3.0), ORIGIN, EYE, kind="labels")
    with pytest.raises(DataError) as info:
        metrics.dice(other, _vol(t))
    assert info.value.code == "E1007" and "spacing" in info.value.message
    # a flipped storage of the same grid is accepted
    flipped_dir = (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    n = p.shape[2]
    flipped = Volume(p[:, :, ::-1].copy(), SPACING, (ORIGIN[0] + (n - 1) * 0.7, ORIGIN[1], ORIGIN[2]), flipped_dir,
                     kind="labels")
    assert metrics.dice(flipped, _vol(t)) == pytest.approx(metrics.dice(_vol(p), _vol(t)))


# ----- instances ------------------------------------------------------------------------------


def test_aji_hand_computed() -> None:
    # 1-D strips written as 2-D arrays; target objects A (ids 1) and B (2), predictions
    t = np.array([[1, 1, 1, 1, 0, 0, 2, 2, 2, 0, 0, 0]])
    p = np.array([[5, 5, 5, 0, 0, 0, 0, 7, 7, 7, 9, 9]])
    # A ~ 5: I=3, U=4.  B ~ 7: I=2, U=4.  prediction 9 unmatched: +2 to the union
    assert metrics.aji(_vol(p, "instances"), _vol(t, "instances")) == pytest.approx((3 + 2) / (4 + 4 + 2))
    # a target overlapping nothing adds its area to the union only
    t2 = np.array([[1, 1, 0, 0, 2, 2, 0, 0]])
    p2 = np.array([[3, 3, 0, 0, 0, 0, 0, 0]])
    assert metrics.aji(_vol(p2, "instances"), _vol(t2, "instances")) == pytest.approx(2 / (2 + 2))
    # one prediction covering two targets serves both (the published definition)
    t3 = np.array([[1, 1, 2, 2]])
    p3 = np.array([[4, 4, 4, 4]])
    assert metrics.aji(_vol(p3, "instances"), _vol(t3, "instances")) == pytest.approx((2 + 2) / (4 + 4))
    z = np.zeros((3, 3), dtype=np.int32)
    assert metrics.aji(_vol(z, "instances"), _vol(z, "instances")) == 1.0
    assert metrics.aji(_vol(z, "instances"), _vol(t3[:, :3].repeat(3, 0), "instances")) == 0.0


def _instances(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    t = np.zeros((40, 40), dtype=np.int32)
    p = np.zeros_like(t)
    yy, xx = np.indices(t.shape)
    for i in range(6):
        cy, cx = rng.integers(5, 35, 2)
        r = rng.integers(3, 6)
        t[(yy - cy) ** 2 + (xx - cx) ** 2 < r**2] = i + 1
        if i < 5:
            sy, sx = rng.integers(-2, 3, 2)
            p[(yy - cy - sy) ** 2 + (xx - cx - sx) ** 2 < r**2] = 10 + 3 * i
    p[0:3, 0:3] = 99  # a false positive
    return p, t


@pytest.mark.parametrize("seed", range(3))
def test_panoptic_quality_equals_monai(seed: int) -> None:
    p, t = _instances(seed)
    ref = mm.compute_panoptic_quality(torch.from_numpy(p), torch.from_numpy(t), metric_name="pq")
    assert metrics.panoptic_quality(_vol(p, "instances"), _vol(t, "instances")) == pytest.approx(float(ref), abs=1e-5)


# ----- classification -------------------------------------------------------------------------


def _classification(k: int, n: int = 60, seed: int = 0) -> tuple[list[np.ndarray], list[int]]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) + 1.2 * np.eye(k)[y]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    probs[3] = probs[4]  # a tie in scores
    return list(probs), [int(v) for v in y]


@pytest.mark.parametrize("k", [2, 4])
def test_classification_metrics_equal_sklearn(k: int) -> None:
    skm = pytest.importorskip("sklearn.metrics")
    pred, target = _classification(k, seed=k)
    s = np.stack(pred)
    yhat = np.argmax(s, 1)
    assert metrics.accuracy(pred, target) == pytest.approx(skm.accuracy_score(target, yhat))
    if k == 2:
        assert metrics.auc(pred, target) == pytest.approx(skm.roc_auc_score(target, s[:, 1]))
        assert metrics.f1(pred, target) == pytest.approx(skm.f1_score(target, yhat))
    else:
        assert metrics.auc(pred, target) == pytest.approx(skm.roc_auc_score(target, s, multi_class="ovr",
                                                                            average="macro"))
        assert metrics.f1(pred, target) == pytest.approx(skm.f1_score(target, yhat, average="macro"))


def test_classification_edge_cases() -> None:
    assert math.isnan(metrics.accuracy([], []))
    assert math.isnan(metrics.auc([np.array([0.2, 0.8])] * 3, [1, 1, 1]))  # one class only


# ----- FROC -------------------------------------------------------------------------------------


def _boxes(centres: list[tuple[float, float, float]], size: float, scores: list[float]) -> Boxes:
    c = np.asarray(centres, dtype=float).reshape(-1, 3)
    return Boxes(c - size / 2, c + size / 2, np.ones(len(c), dtype=int), scores)


def test_froc_hand_made() -> None:
    # scan 1: references R1 at the origin, R2 at (50, 0, 0), both 10 mm boxes (radius 5 mm)
    ref1 = _boxes([(0, 0, 0), (50, 0, 0)], 10.0, [1.0, 1.0])
    det1 = _boxes([(1, 1, 1),        # hits R1, score 0.9
                   (2, 0, 0),        # hits R1 again (duplicate, ignored), 0.8
                   (20, 20, 20),     # FP, 0.7
                   (54.5, 0, 0),     # hits R2 (inside the box), 0.4
                   (80, 0, 0)],      # FP, 0.3
                  2.0, [0.9, 0.8, 0.7, 0.4, 0.3])
    # scan 2: reference R3 at (0, 0, 0), 10 mm, missed; one FP at 0.6
    ref2 = _boxes([(0, 0, 0)], 10.0, [1.0])
    det2 = _boxes([(30, 30, 30)], 2.0, [0.6])
    # operating points (threshold: FP/scan, sensitivity):
    #   >0.9: 0, 0;  0.9: 0, 1/3;  0.7: 0.5, 1/3;  0.6: 1.0, 1/3;  0.4: 1.0, 2/3;  0.3: 1.5, 2/3
    # read as LUNA16 does: the grid rate nearest 1.0 is 0.99991, still on the segment from
    # (0.5, 1/3) to (1.0, 1/3), so rate 1 counts 1/3 (a staircase would say 2/3)
    fps = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
    expected = np.mean([1 / 3, 1 / 3, 1 / 3, 1 / 3, 2 / 3, 2 / 3, 2 / 3])
    assert metrics.froc([det1, det2], [ref1, ref2], fps=fps) == pytest.approx(expected)
    # the radius rule: a centre outside a thin box but within half its largest side
    thin = Boxes(np.array([[-10.0, -1.0, -1.0]]), np.array([[10.0, 1.0, 1.0]]), [1], [1.0])
    near = _boxes([(0, 5, 0)], 1.0, [0.5])
    assert metrics.froc([near], [thin], fps=(1.0,)) == 1.0
    far = _boxes([(0, 10.5, 0)], 1.0, [0.5])
    assert metrics.froc([far], [thin], fps=(1.0,)) == 0.0
    empty = Boxes(np.zeros((0, 3)), np.zeros((0, 3)), [], [])
    assert math.isnan(metrics.froc([det2], [empty]))
    assert metrics.froc([empty], [ref2]) == 0.0


@pytest.mark.parametrize("seed", range(5))
def test_froc_matches_the_luna16_script_s_computation(seed: int) -> None:
    """The CPM as noduleCADEvaluationLUNA16.py computes it: scikit-learn's ROC curve over
    the found references (their best hitting score) and the false positives, scaled to
    false positives per scan and to the share of references found, interpolated with
    np.interp on 10,001 rates from 1/8 to 8 and read at the grid point nearest each rate."""
    from sklearn.metrics import roc_curve

    rng = np.random.default_rng(seed)
    preds, targets, labels, scores = [], [], [], []
    n_ref = 0
    for _ in range(6):
        refs = rng.uniform(0, 200, (int(rng.integers(1, 4)), 3))
        targets.append(_boxes([tuple(r) for r in refs], 10.0, [1.0] * len(refs)))
        n_ref += len(refs)
        hits = refs[rng.random(len(refs)) < 0.7] + rng.uniform(-2, 2, (1, 3))  # some references are missed
        noise = rng.uniform(300, 500, (int(rng.integers(0, 12)), 3))  # far from every reference: false positives
        centres = np.concatenate([hits, noise])
        s = np.round(rng.random(len(centres)), 3)  # ties happen
        preds.append(_boxes([tuple(c) for c in centres], 2.0, list(s)))
        labels += [1] * len(hits) + [0] * len(noise)
        scores += list(s)
    labels_a, scores_a = np.array(labels), np.array(scores)
    fpr, tpr, _ = roc_curve(labels_a, scores_a)
    fps_curve = fpr * np.count_nonzero(labels_a == 0) / len(targets)
    sens_curve = tpr * np.count_nonzero(labels_a == 1) / n_ref
    grid = np.linspace(0.125, 8, num=10001)
    itp = np.interp(grid, fps_curve, sens_curve)
    expected = np.mean([itp[np.argmin(np.abs(grid - f))] for f in (0.125, 0.25, 0.5, 1, 2, 4, 8)])
    assert metrics.froc(preds, targets) == pytest.approx(expected, abs=1e-12)


# ----- reduction and tables -------------------------------------------------------------------


def test_reduce_and_tables() -> None:
    m = metrics.reduce("hd95", {"a": 1.0, "b": float("nan"), "c": 3.0}, "min")
    assert isinstance(m, Measured) and m.value == 2.0 and m.goal == "min" and set(m.per_case) == {"a", "b", "c"}
    assert math.isnan(metrics.reduce("dice", {"a": float("nan")}, "max").value)
    assert metrics.reduce("dice", {}, "max").goal == "max"
    assert set(metrics.GOALS) == set(metrics.OPERATORS)
    assert metrics.DATASET_LEVEL == {"accuracy", "auc", "f1", "froc"}
    assert {metrics.GOALS[n] for n in ("hd95", "assd")} == {"min"}


def test_goals_match_the_declarations() -> None:
    from medasl.semantics.modules import stdlib

    declared = stdlib().modules["std.metrics"].ops
    for name, op in declared.items():
        assert metrics.GOALS[name] in str(op.result), (name, op.result)
