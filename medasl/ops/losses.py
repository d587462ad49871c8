"""std.losses: training losses (stdlib/losses.medas).

Each public function implements the operator of the same name and is exported in
`OPERATORS`; `make_loss(name, **options)` builds the same loss once as a callable
`(pred, target) -> scalar tensor`, which is what the trainer uses (it calls `make_loss`
once, then the callable per batch). Calling an operator function directly builds the
loss and applies it once.

Conventions (the trainer's tensors, see `medasl.runtime.values.Network`):

- Segmentation: `pred` are the network's LOGITS `(N, K, *spatial)` (softmax or sigmoid
  is applied inside the loss), `target` a long tensor of class indices `(N, 1, *spatial)`
  (`(N, *spatial)` is accepted and given its channel axis). Spatial axes in array order.
- Classification: `pred` logits `(N, K)`, `target` class indices `(N,)`.
- `weights` (per-class, length K) may be `None` (the default: all classes weigh 1).
- `dice_bce` takes two-class logits `(N, 2, ...)` and turns them into one foreground
  logit `pred[:, 1] - pred[:, 0]`: its sigmoid equals the softmax probability of class 1,
  so the binary loss sees exactly the probability a two-class softmax would give. A
  one-channel `pred` is taken as the foreground logit as it is.
- `box_loss` is the box-regression term between matched boxes (see its docstring); the
  detector's full loss (anchor classification + regression) is MONAI's
  RetinaNetDetector.compute_loss, configured with `detector_box_regression`.

torch and MONAI are imported here at module level: only the runtime imports this module.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from monai.losses import DiceCELoss, DiceFocalLoss, DiceLoss, FocalLoss, GeneralizedDiceLoss, TverskyLoss
from monai.losses.giou_loss import BoxGIoULoss

from medasl.runtime.values import Boxes

Tensor = torch.Tensor
LossFn = Callable[[Tensor, Tensor], Tensor]


# ===== helpers ============================================================================


def _seg_target(pred: Tensor, target: Tensor) -> Tensor:
    """`target` as `(N, 1, *spatial)` class indices matching `pred`'s `(N, K, *spatial)`."""
    target = torch.as_tensor(target)
    if target.dim() == pred.dim() - 1:
        target = target.unsqueeze(1)
    if target.dim() != pred.dim() or target.shape[1] != 1:
        raise ValueError(f"a segmentation target must be (N, 1, *spatial) class indices for logits {tuple(pred.shape)}, "
                         f"got {tuple(target.shape)}")
    return target.long()


def _weights(weights: Sequence[float] | None, pred: Tensor | None = None) -> Tensor | None:
    if weights is None:
        return None
    w = torch.as_tensor([float(v) for v in weights], dtype=torch.float32)
    if pred is not None:
        w = w.to(pred.device)
    return w


class _OnehotTarget(torch.nn.Module):
    """Wraps a MONAI loss taking `(N, 1, *spatial)` index targets (to_onehot_y=True)."""

    def __init__(self, loss: torch.nn.Module) -> None:
        super().__init__()
        self.loss = loss

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        return self.loss(pred, _seg_target(pred, target))


class _CrossEntropy(torch.nn.Module):
    """nn.CrossEntropyLoss on logits `(N, K, ...)` and index targets `(N, [1,] ...)`;
    the weight tensor is created on pred's device at the first call."""

    def __init__(self, weights: Sequence[float] | None, smoothing: float, segmentation: bool) -> None:
        super().__init__()
        self.weights = None if weights is None else [float(v) for v in weights]
        self.smoothing = float(smoothing)
        self.segmentation = segmentation

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        target = torch.as_tensor(target)
        if self.segmentation:
            target = _seg_target(pred, target)[:, 0]
        else:
            target = target.reshape(-1)
        weight = _weights(self.weights, pred)
        return torch.nn.functional.cross_entropy(pred, target.long(), weight=weight, label_smoothing=self.smoothing)


class _DiceBCE(torch.nn.Module):
    """MONAI DiceCELoss(sigmoid=True) on the foreground logit `pred[:, 1] - pred[:, 0]`."""

    def __init__(self, lambda_dice: float, lambda_bce: float) -> None:
        super().__init__()
        self.loss = DiceCELoss(sigmoid=True, lambda_dice=float(lambda_dice), lambda_ce=float(lambda_bce))

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        target = _seg_target(pred, target)
        if pred.shape[1] == 2:
            pred = pred[:, 1:2] - pred[:, 0:1]
        elif pred.shape[1] != 1:
            raise ValueError(f"dice_bce is for two classes, got {pred.shape[1]} channels; use dice_ce")
        return self.loss(pred, target.to(pred.dtype))


class _FocalClass(torch.nn.Module):
    """MONAI FocalLoss(use_softmax=True, to_onehot_y=True) on `(N, K)` logits and `(N,)`
    class indices."""

    def __init__(self, gamma: float, weights: Sequence[float] | None) -> None:
        super().__init__()
        self.loss = FocalLoss(to_onehot_y=True, use_softmax=True, gamma=float(gamma),
                              weight=None if weights is None else [float(v) for v in weights])

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        return self.loss(pred, torch.as_tensor(target).reshape(-1, 1).long())


# ===== Lovasz-softmax =====================================================================


def _lovasz_grad(gt_sorted: Tensor) -> Tensor:
    """Gradient of the Lovasz extension of the Jaccard loss w.r.t. sorted errors
    (Berman et al. 2018, Alg. 1): the Jaccard loss of each prefix minus the previous."""
    gts = gt_sorted.sum()
    intersection = gts - gt_sorted.cumsum(0)
    union = gts + (1.0 - gt_sorted).cumsum(0)
    jaccard = 1.0 - intersection / union
    if gt_sorted.numel() > 1:
        jaccard[1:] = jaccard[1:] - jaccard[:-1].clone()
    return jaccard


def lovasz_softmax_probs(probs: Tensor, labels: Tensor) -> Tensor:
    """The Lovasz-softmax loss of probabilities `(P, K)` against labels `(P,)`: for every
    class present in `labels`, the Lovasz extension of its Jaccard loss evaluated at the
    errors |1[y=c] - p_c|, averaged over those classes (the reference code's
    `classes='present'`, `per_image=False`). 0 when no class is present (no voxels)."""
    losses = []
    for c in range(probs.shape[1]):
        fg = (labels == c).to(probs.dtype)
        if fg.sum() == 0:
            continue
        errors = (fg - probs[:, c]).abs()
        errors_sorted, perm = torch.sort(errors, 0, descending=True)
        losses.append(torch.dot(errors_sorted, _lovasz_grad(fg[perm])))
    if not losses:
        return probs.sum() * 0.0
    return torch.stack(losses).mean()


class _Lovasz(torch.nn.Module):
    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        target = _seg_target(pred, target)
        k = pred.shape[1]
        probs = torch.softmax(pred, dim=1).movedim(1, -1).reshape(-1, k)
        return lovasz_softmax_probs(probs, target.reshape(-1))


# ===== boxes ==============================================================================


def _box_tensor(b: Boxes | Tensor, like: Tensor | None = None) -> Tensor:
    if isinstance(b, Boxes):
        t = torch.as_tensor(np.concatenate([b.lo, b.hi], axis=1), dtype=torch.float32)
        return t if like is None else t.to(like.device)
    return torch.as_tensor(b)


class _BoxLoss(torch.nn.Module):
    def __init__(self, box_weight: float, giou: bool) -> None:
        super().__init__()
        self.box_weight = float(box_weight)
        self.giou = bool(giou)
        self.loss: torch.nn.Module = BoxGIoULoss(reduction="mean") if giou else torch.nn.SmoothL1Loss(reduction="mean")

    def forward(self, pred: Boxes | Tensor, target: Boxes | Tensor) -> Tensor:
        p = _box_tensor(pred)
        t = _box_tensor(target, p if isinstance(p, Tensor) else None).to(p.dtype)
        if p.shape != t.shape or p.dim() != 2 or p.shape[1] not in (4, 6):
            raise ValueError(f"box_loss needs matched boxes of the same shape (n, 2*D), got {tuple(p.shape)} and "
                             f"{tuple(t.shape)}")
        if p.shape[0] == 0:
            return p.sum() * 0.0
        return self.box_weight * self.loss(p, t)


def detector_box_regression(giou: bool = False) -> tuple[torch.nn.Module, bool, bool]:
    """The arguments of MONAI `RetinaNetDetector.set_box_regression_loss(loss, encode_gt,
    decode_pred)` for `box_loss`'s `giou` option: smooth L1 (beta 1/9) on encoded box
    deltas, or generalized IoU on decoded boxes (as MONAI's documentation pairs them)."""
    if giou:
        return BoxGIoULoss(reduction="mean"), False, True
    return torch.nn.SmoothL1Loss(beta=1.0 / 9, reduction="mean"), True, False


# ===== builders ===========================================================================


def _build(name: str, **o: Any) -> torch.nn.Module:
    w = o.get("weights")
    weights = None if w is None else [float(v) for v in w]
    if name == "dice_loss":
        return _OnehotTarget(DiceLoss(include_background=bool(o.get("include_background", True)), to_onehot_y=True,
                                      softmax=True, smooth_nr=float(o.get("smooth", 1e-5)),
                                      smooth_dr=float(o.get("smooth", 1e-5))))
    if name == "dice_ce":
        return _OnehotTarget(DiceCELoss(to_onehot_y=True, softmax=True, lambda_dice=float(o.get("lambda_dice", 1.0)),
                                        lambda_ce=float(o.get("lambda_ce", 1.0))))
    if name == "dice_bce":
        return _DiceBCE(o.get("lambda_dice", 1.0), o.get("lambda_bce", 1.0))
    if name == "dice_focal":
        return _OnehotTarget(DiceFocalLoss(to_onehot_y=True, softmax=True, gamma=float(o.get("gamma", 2.0)),
                                           lambda_dice=float(o.get("lambda_dice", 1.0)),
                                           lambda_focal=float(o.get("lambda_focal", 1.0))))
    if name == "generalized_dice":
        return _OnehotTarget(GeneralizedDiceLoss(include_background=bool(o.get("include_background", True)),
                                                 to_onehot_y=True, softmax=True))
    if name == "tversky":
        return _OnehotTarget(TverskyLoss(to_onehot_y=True, softmax=True, alpha=float(o.get("alpha", 0.3)),
                                         beta=float(o.get("beta", 0.7))))
    if name == "focal":
        return _OnehotTarget(FocalLoss(to_onehot_y=True, use_softmax=True, gamma=float(o.get("gamma", 2.0)),
                                       weight=weights))
    if name == "lovasz":
        return _Lovasz()
    if name == "cross_entropy":
        return _CrossEntropy(weights, 0.0, segmentation=True)
    if name == "ce_class":
        return _CrossEntropy(weights, float(o.get("smoothing", 0.0)), segmentation=False)
    if name == "focal_class":
        return _FocalClass(o.get("gamma", 2.0), weights)
    if name == "box_loss":
        return _BoxLoss(o.get("box_weight", 1.0), o.get("giou", False))
    raise KeyError(f"unknown loss {name!r}; known: {', '.join(sorted(OPERATORS))}")


def make_loss(name: str, **options: Any) -> LossFn:
    """The loss `name` with `options` (the operator's parameters, except `pred` and
    `target`), built once: a callable `(pred, target) -> scalar tensor` (a torch Module)."""
    unknown = set(options) - _PARAMS[name] if name in _PARAMS else set()
    if unknown:
        raise TypeError(f"{name} takes no option(s) {', '.join(sorted(unknown))}")
    return _build(name, **options)


# ===== operators ==========================================================================


def dice_loss(pred: Tensor, target: Tensor, include_background: bool = True, smooth: float = 1e-5) -> Tensor:
    """Soft Dice loss: MONAI DiceLoss(softmax=True, to_onehot_y=True, smooth_nr=smooth_dr=smooth)."""
    return make_loss("dice_loss", include_background=include_background, smooth=smooth)(pred, target)


def dice_ce(pred: Tensor, target: Tensor, lambda_dice: float = 1.0, lambda_ce: float = 1.0) -> Tensor:
    """Dice + cross-entropy: MONAI DiceCELoss(softmax=True, to_onehot_y=True)."""
    return make_loss("dice_ce", lambda_dice=lambda_dice, lambda_ce=lambda_ce)(pred, target)


def dice_bce(pred: Tensor, target: Tensor, lambda_dice: float = 1.0, lambda_bce: float = 1.0) -> Tensor:
    """Binary Dice + BCE: MONAI DiceCELoss(sigmoid=True) on the foreground logit
    `pred[:, 1] - pred[:, 0]` (sigmoid of it = softmax probability of class 1)."""
    return make_loss("dice_bce", lambda_dice=lambda_dice, lambda_bce=lambda_bce)(pred, target)


def dice_focal(pred: Tensor, target: Tensor, gamma: float = 2.0, lambda_dice: float = 1.0,
               lambda_focal: float = 1.0) -> Tensor:
    """Dice + focal: MONAI DiceFocalLoss(softmax=True, to_onehot_y=True). In MONAI the
    Dice term uses the softmax; the focal term is MONAI's sigmoid focal loss on the
    logits (one class against the rest)."""
    return make_loss("dice_focal", gamma=gamma, lambda_dice=lambda_dice, lambda_focal=lambda_focal)(pred, target)


def generalized_dice(pred: Tensor, target: Tensor, include_background: bool = True) -> Tensor:
    """Generalized Dice: MONAI GeneralizedDiceLoss(softmax=True, to_onehot_y=True, w_type=square)."""
    return make_loss("generalized_dice", include_background=include_background)(pred, target)


def tversky(pred: Tensor, target: Tensor, alpha: float = 0.3, beta: float = 0.7) -> Tensor:
    """Tversky: MONAI TverskyLoss(softmax=True, to_onehot_y=True, alpha, beta)."""
    return make_loss("tversky", alpha=alpha, beta=beta)(pred, target)


def focal(pred: Tensor, target: Tensor, gamma: float = 2.0, weights: Sequence[float] | None = None) -> Tensor:
    """Focal: MONAI FocalLoss(use_softmax=True, to_onehot_y=True, gamma, weight=weights)."""
    return make_loss("focal", gamma=gamma, weights=weights)(pred, target)


def lovasz(pred: Tensor, target: Tensor) -> Tensor:
    """Lovasz-softmax (Berman et al. 2018) on the softmax of `pred`, over the whole batch,
    averaged over the classes present in `target` (our implementation of the authors'
    reference `lovasz_softmax(per_image=False, classes='present')`)."""
    return make_loss("lovasz")(pred, target)


def cross_entropy(pred: Tensor, target: Tensor, weights: Sequence[float] | None = None) -> Tensor:
    """Voxel-wise cross-entropy: torch CrossEntropyLoss(weight=weights), mean over voxels
    (weighted mean when `weights` is given, as torch defines it)."""
    return make_loss("cross_entropy", weights=weights)(pred, target)


def ce_class(pred: Tensor, target: Tensor, weights: Sequence[float] | None = None, smoothing: float = 0.0) -> Tensor:
    """Classification cross-entropy: torch CrossEntropyLoss(weight=weights, label_smoothing=smoothing)."""
    return make_loss("ce_class", weights=weights, smoothing=smoothing)(pred, target)


def focal_class(pred: Tensor, target: Tensor, gamma: float = 2.0, weights: Sequence[float] | None = None) -> Tensor:
    """Classification focal loss: MONAI FocalLoss(use_softmax=True, to_onehot_y=True) on
    `(N, K)` logits and `(N,)` class indices."""
    return make_loss("focal_class", gamma=gamma, weights=weights)(pred, target)


def box_loss(pred: Boxes | Tensor, target: Boxes | Tensor, box_weight: float = 1.0, giou: bool = False) -> Tensor:
    """Box regression between MATCHED boxes: row i of `pred` against row i of `target`,
    each `(n, 2*D)` corners `(lo..., hi...)` in mm (a tensor, or a `Boxes` value), times
    `box_weight`: smooth L1 (beta 1) on the corners, or with `giou` the generalized IoU
    loss 1 - GIoU (MONAI BoxGIoULoss), mean over boxes; 0 for no boxes.

    Matching boxes to anchors and the anchor classification term are the detector's:
    when training a detector the trainer calls MONAI RetinaNetDetector.compute_loss
    (focal anchor classification with hard negative sampling plus box regression), with
    the regression loss set from `giou` by `detector_box_regression(giou)` and the
    regression term weighted `box_weight`.
    """
    return make_loss("box_loss", box_weight=box_weight, giou=giou)(pred, target)


OPERATORS: dict[str, Callable[..., object]] = {
    "dice_loss": dice_loss, "dice_ce": dice_ce, "dice_bce": dice_bce, "dice_focal": dice_focal,
    "generalized_dice": generalized_dice, "tversky": tversky, "focal": focal, "lovasz": lovasz,
    "cross_entropy": cross_entropy, "ce_class": ce_class, "focal_class": focal_class, "box_loss": box_loss,
}
"""The std.losses operators implemented here, by the name of their stdlib signature."""


def _options(func: Callable[..., object]) -> set[str]:
    import inspect

    return set(inspect.signature(func).parameters) - {"pred", "target"}


_PARAMS: dict[str, set[str]] = {name: _options(func) for name, func in OPERATORS.items()}
