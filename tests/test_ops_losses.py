"""std.losses (medasl/ops/losses.py) against the MONAI and torch losses built directly,
and the Lovasz-softmax against a brute-force Lovasz extension of the Jaccard loss."""

from __future__ import annotations

import itertools

import pytest

np = pytest.importorskip("numpy", reason="the runtime needs numpy")
torch = pytest.importorskip("torch", reason="std.losses needs torch")
monai_losses = pytest.importorskip("monai.losses", reason="std.losses needs MONAI")

from medasl.ops import losses  # noqa: E402 (after the skips)
from medasl.runtime.values import Boxes  # noqa: E402

K = 3


@pytest.fixture
def seg() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(2, K, 5, 6, 4, generator=g)
    target = torch.randint(0, K, (2, 1, 5, 6, 4), generator=g)
    return pred, target


@pytest.fixture
def seg2() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, 2, 6, 7, generator=g), torch.randint(0, 2, (2, 1, 6, 7), generator=g)


@pytest.fixture
def cls() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    return torch.randn(8, K, generator=g), torch.randint(0, K, (8,), generator=g)


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.dim() == 0
    assert torch.allclose(a, b, atol=1e-6), (float(a), float(b))


SEG_CASES = [
    ("dice_loss", {"include_background": False, "smooth": 1e-3},
     lambda: monai_losses.DiceLoss(include_background=False, to_onehot_y=True, softmax=True, smooth_nr=1e-3,
                                   smooth_dr=1e-3)),
    ("dice_ce", {"lambda_dice": 0.5, "lambda_ce": 2.0},
     lambda: monai_losses.DiceCELoss(to_onehot_y=True, softmax=True, lambda_dice=0.5, lambda_ce=2.0)),
    ("dice_focal", {"gamma": 1.5, "lambda_focal": 0.3},
     lambda: monai_losses.DiceFocalLoss(to_onehot_y=True, softmax=True, gamma=1.5, lambda_focal=0.3)),
    ("generalized_dice", {"include_background": True},
     lambda: monai_losses.GeneralizedDiceLoss(to_onehot_y=True, softmax=True)),
    ("tversky", {"alpha": 0.2, "beta": 0.8},
     lambda: monai_losses.TverskyLoss(to_onehot_y=True, softmax=True, alpha=0.2, beta=0.8)),
    ("focal", {"gamma": 2.0, "weights": (0.2, 1.0, 3.0)},
     lambda: monai_losses.FocalLoss(to_onehot_y=True, use_softmax=True, gamma=2.0, weight=[0.2, 1.0, 3.0])),
]


@pytest.mark.parametrize(("name", "options", "reference"), SEG_CASES, ids=[c[0] for c in SEG_CASES])
def test_segmentation_losses_equal_monai(seg, name, options, reference) -> None:
    pred, target = seg
    expected = reference()(pred, target)
    _close(losses.OPERATORS[name](pred, target, **options), expected)
    _close(losses.make_loss(name, **options)(pred, target), expected)
    # a target without its channel axis is accepted
    _close(losses.make_loss(name, **options)(pred, target[:, 0]), expected)


def test_defaults_equal_monai_defaults_as_declared(seg) -> None:
    pred, target = seg
    _close(losses.dice_loss(pred, target), monai_losses.DiceLoss(to_onehot_y=True, softmax=True)(pred, target))
    _close(losses.tversky(pred, target),
           monai_losses.TverskyLoss(to_onehot_y=True, softmax=True, alpha=0.3, beta=0.7)(pred, target))


def test_cross_entropy_equals_torch(seg) -> None:
    pred, target = seg
    _close(losses.cross_entropy(pred, target), torch.nn.CrossEntropyLoss()(pred, target[:, 0]))
    w = (0.5, 1.0, 2.0)
    _close(losses.cross_entropy(pred, target, weights=w),
           torch.nn.CrossEntropyLoss(weight=torch.tensor(w))(pred, target[:, 0]))


def test_dice_bce_uses_the_foreground_logit(seg2) -> None:
    pred, target = seg2
    fg = pred[:, 1:2] - pred[:, 0:1]
    # the sigmoid of the foreground logit is the two-class softmax probability of class 1
    assert torch.allclose(torch.sigmoid(fg), torch.softmax(pred, 1)[:, 1:2], atol=1e-6)
    expected = monai_losses.DiceCELoss(sigmoid=True, lambda_dice=0.7, lambda_ce=1.3)(fg, target.float())
    _close(losses.dice_bce(pred, target, lambda_dice=0.7, lambda_bce=1.3), expected)
    with pytest.raises(ValueError, match="two classes"):
        losses.dice_bce(torch.randn(1, 3, 4, 4), torch.zeros(1, 1, 4, 4, dtype=torch.long))


def test_classification_losses(cls) -> None:
    pred, target = cls
    w = (1.0, 2.0, 0.5)
    _close(losses.ce_class(pred, target, weights=w, smoothing=0.1),
           torch.nn.CrossEntropyLoss(weight=torch.tensor(w), label_smoothing=0.1)(pred, target))
    _close(losses.ce_class(pred, target), torch.nn.functional.cross_entropy(pred, target))
    expected = monai_losses.FocalLoss(to_onehot_y=True, use_softmax=True, gamma=1.0, weight=list(w))(
        pred, target[:, None])
    _close(losses.focal_class(pred, target, gamma=1.0, weights=w), expected)


@pytest.mark.parametrize("name", sorted(set(losses.OPERATORS) - {"ce_class", "focal_class", "box_loss"}))
def test_gradients_flow_segmentation(seg, seg2, name) -> None:
    pred, target = seg2 if name == "dice_bce" else seg
    pred = pred.clone().requires_grad_(True)
    loss = losses.make_loss(name)(pred, target)
    loss.backward()
    assert torch.isfinite(loss)
    assert pred.grad is not None and torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["ce_class", "focal_class"])
def test_gradients_flow_classification(cls, name) -> None:
    pred, target = cls
    pred = pred.clone().requires_grad_(True)
    losses.make_loss(name)(pred, target).backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["dice_loss", "dice_ce", "dice_focal", "generalized_dice", "tversky", "lovasz",
                                  "focal", "cross_entropy"])
def test_perfect_prediction_gives_about_zero(seg, name) -> None:
    _, target = seg
    pred = torch.nn.functional.one_hot(target[:, 0], K).movedim(-1, 1).float() * 80.0 - 40.0
    assert float(losses.make_loss(name)(pred, target)) < 1e-4


def test_perfect_prediction_dice_bce(seg2) -> None:
    _, target = seg2
    pred = torch.nn.functional.one_hot(target[:, 0], 2).movedim(-1, 1).float() * 80.0 - 40.0
    assert float(losses.dice_bce(pred, target)) < 1e-4


# ----- Lovasz-softmax ---------------------------------------------------------------------


def _jaccard_loss(mistakes: np.ndarray, fg: np.ndarray) -> float:
    """Delta_J(M) = |M| / |fg u M| (Berman et al. 2018, eq. 3)."""
    union = np.count_nonzero(fg | mistakes)
    return 0.0 if union == 0 else np.count_nonzero(mistakes) / union


def _lovasz_extension_brute(errors: np.ndarray, fg: np.ndarray) -> float:
    """The Lovasz extension as an integral over thresholds: int_0^1 Delta({m >= t}) dt
    (exact for errors in [0, 1], computed piecewise between distinct error values)."""
    levels = np.concatenate([[0.0], np.unique(errors)])
    total = 0.0
    for lo, hi in itertools.pairwise(levels):
        total += (hi - lo) * _jaccard_loss(errors >= hi, fg)
    return total


def _lovasz_brute(probs: np.ndarray, labels: np.ndarray) -> float:
    values = []
    for c in range(probs.shape[1]):
        fg = labels == c
        if not fg.any():
            continue
        values.append(_lovasz_extension_brute(np.abs(fg.astype(float) - probs[:, c]), fg))
    return float(np.mean(values))


@pytest.mark.parametrize("seed", range(4))
def test_lovasz_equals_brute_force(seed) -> None:
    g = torch.Generator().manual_seed(seed)
    pred = torch.randn(1, 4, 3, 5, generator=g, dtype=torch.float64)
    target = torch.randint(0, 3, (1, 1, 3, 5), generator=g)  # class 3 absent: skipped
    probs = torch.softmax(pred, 1).movedim(1, -1).reshape(-1, 4).numpy()
    expected = _lovasz_brute(probs, target.reshape(-1).numpy())
    assert float(losses.lovasz(pred, target)) == pytest.approx(expected, abs=1e-10)


def test_lovasz_extension_agrees_with_jaccard_on_hard_errors() -> None:
    # on 0/1 errors the Lovasz extension is the Jaccard loss itself
    labels = torch.tensor([0, 1, 1, 0, 1, 2])
    hard = torch.nn.functional.one_hot(torch.tensor([0, 1, 0, 0, 2, 2]), 3).double()
    got = float(losses.lovasz_softmax_probs(hard, labels))
    expected = np.mean([1 - 2 / 3, 1 - 1 / 3, 1 - 1 / 2])  # per-class 1 - IoU
    assert got == pytest.approx(expected)


# ----- boxes ------------------------------------------------------------------------------


def test_box_loss_smooth_l1_and_giou() -> None:
    p = torch.tensor([[0.0, 0, 0, 2, 2, 2], [1, 1, 1, 4, 5, 6]])
    t = torch.tensor([[0.5, 0, 0, 2, 2.5, 2], [1, 1, 1, 4, 5, 6]])
    _close(losses.box_loss(p, t, box_weight=2.0), 2.0 * torch.nn.functional.smooth_l1_loss(p, t))
    _close(losses.box_loss(p, t, giou=True), monai_losses.giou_loss.BoxGIoULoss(reduction="mean")(p, t))
    boxes_p = Boxes(p[:, :3].numpy(), p[:, 3:].numpy(), [1, 1], [1.0, 1.0])
    boxes_t = Boxes(t[:, :3].numpy(), t[:, 3:].numpy(), [1, 1], [1.0, 1.0])
    _close(losses.box_loss(boxes_p, boxes_t), torch.nn.functional.smooth_l1_loss(p, t))
    assert float(losses.box_loss(p[:0], t[:0])) == 0.0
    loss_fn, encode_gt, decode_pred = losses.detector_box_regression(giou=True)
    assert (encode_gt, decode_pred) == (False, True)


def test_make_loss_refuses_unknown_options() -> None:
    with pytest.raises(TypeError, match="gama"):
        losses.make_loss("focal", gama=2.0)
    with pytest.raises(KeyError):
        losses.make_loss("no_such_loss")
