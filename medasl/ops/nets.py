"""std.nets: network architectures (stdlib/nets.medas).

Each public function implements the operator of the same name and returns an untrained
`torch.nn.Module`; the executor binds them by name (see `OPERATORS`) and calls them with
keyword arguments named as in the signature. `build(op, params, seed)` constructs one
with reproducible initial weights, `downsample(op, params)` gives the factor its input
spatial sizes must be divisible by (the `@downsample` attribute of the declaration).

Conventions (as `medasl.runtime.values.Network`): inputs are `(N, C, *spatial)` float32
tensors with the spatial axes in array order (`(z, y, x)` in 3D, `(y, x)` in 2D);
segmentation networks give logits `(N, K, *spatial)` of the input's spatial size,
classifiers logits `(N, K)` (they end in global pooling and take any input size). The
detector is the exception: see `NoduleDetector`.

Most networks are MONAI's (`monai.networks.nets`, `monai.apps.detection`), constructed
with the arguments of the declaration passed through; `fcn2d` and
`dual_path_classifier` are written here. Nothing is downloaded: no pretrained weights.
MONAI is imported inside the operators, so importing this module costs only torch.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

# ----- helpers --------------------------------------------------------------------------

RESNET_DEPTHS = (10, 18, 34, 50, 101, 152, 200)
DENSENET_DEPTHS = (121, 169, 201, 264)


def _depth(op: str, depth: int, allowed: Sequence[int]) -> int:
    if int(depth) not in allowed:
        raise ValueError(f"{op}: depth must be one of {', '.join(map(str, allowed))}, not {depth}")
    return int(depth)


def _ints(value: object, n: int, name: str) -> tuple[int, ...]:
    items = tuple(int(v) for v in value)  # type: ignore[union-attr]
    if len(items) != n:
        raise ValueError(f"{name} needs {n} values, got {len(items)}")
    return items


def _classes(op: str, classes: int) -> int:
    if int(classes) < 2:
        raise ValueError(f"{op}: classes counts the background too and must be at least 2, not {classes}")
    return int(classes)


# ----- segmentation -----------------------------------------------------------------------


def _unet(dims: int, in_channels: int, classes: int, channels: Sequence[int], strides: Sequence[int],
          res_units: int, dropout: float) -> nn.Module:
    from monai.networks.nets import UNet

    return UNet(spatial_dims=dims, in_channels=int(in_channels), out_channels=_classes(f"unet{dims}d", classes),
                channels=_ints(channels, 5, "channels"), strides=_ints(strides, 4, "strides"),
                num_res_units=int(res_units), dropout=float(dropout))


def unet2d(in_channels: int = 1, classes: int = 2, channels: Sequence[int] = (16, 32, 64, 128, 256),
           strides: Sequence[int] = (2, 2, 2, 2), res_units: int = 2, dropout: float = 0.0) -> nn.Module:
    """2-D U-Net with residual units: MONAI `UNet(spatial_dims=2, ...)`, `res_units` as
    `num_res_units`. Input sizes must be divisible by the product of `strides`."""
    return _unet(2, in_channels, classes, channels, strides, res_units, dropout)


def unet3d(in_channels: int = 1, classes: int = 2, channels: Sequence[int] = (16, 32, 64, 128, 256),
           strides: Sequence[int] = (2, 2, 2, 2), res_units: int = 2, dropout: float = 0.0) -> nn.Module:
    """3-D U-Net with residual units: MONAI `UNet(spatial_dims=3, ...)`."""
    return _unet(3, in_channels, classes, channels, strides, res_units, dropout)


def vnet(in_channels: int = 1, classes: int = 2, dropout: float = 0.0) -> nn.Module:
    """V-Net: MONAI `VNet(spatial_dims=3, ...)` with `dropout` as every dropout
    probability of the network (MONAI's default is 0.5; ours is the declaration's).
    MONAI requires `in_channels` to divide 16."""
    from monai.networks.nets import VNet

    if 16 % int(in_channels):
        raise ValueError(f"vnet: in_channels must divide 16 (MONAI's VNet), not {in_channels}")
    p = float(dropout)
    return VNet(spatial_dims=3, in_channels=int(in_channels), out_channels=_classes("vnet", classes),
                dropout_prob_down=p, dropout_prob_up=(p, p))


def segresnet(in_channels: int = 1, classes: int = 2, filters: int = 16, dropout: float = 0.0) -> nn.Module:
    """SegResNet: MONAI `SegResNet(spatial_dims=3, init_filters=filters, ...)`; group
    normalization with 8 groups, so `filters` must be a multiple of 8."""
    from monai.networks.nets import SegResNet

    if int(filters) % 8:
        raise ValueError(f"segresnet: filters must be a multiple of 8 (group normalization), not {filters}")
    return SegResNet(spatial_dims=3, init_filters=int(filters), in_channels=int(in_channels),
                     out_channels=_classes("segresnet", classes), dropout_prob=float(dropout) or None)


def swin_unetr(in_channels: int = 1, classes: int = 2, features: int = 48, dropout: float = 0.0) -> nn.Module:
    """Swin UNETR: MONAI `SwinUNETR(feature_size=features, drop_rate=dropout,
    spatial_dims=3)` (MONAI 1.6 takes no image size: any size divisible by 32, at
    least 64 per axis, as its bottleneck is instance-normalized). MONAI's SwinUNETR
    needs the `einops` package to run; it is refused here, where it is built, without it."""
    import importlib.util

    from monai.networks.nets import SwinUNETR

    if importlib.util.find_spec("einops") is None:
        raise ImportError("swin_unetr needs the einops package (MONAI's SwinUNETR uses it): pip install einops")

    if int(features) % 12:
        raise ValueError(f"swin_unetr: features must be a multiple of 12, not {features}")
    return SwinUNETR(in_channels=int(in_channels), out_channels=_classes("swin_unetr", classes),
                     feature_size=int(features), drop_rate=float(dropout), spatial_dims=3)


class FCN8s(nn.Module):
    """FCN-8s (Long et al. 2015) for 2-D segmentation, our own implementation.

    Encoder: five VGG-style stages of 3x3 convolutions, batch normalization and ReLU
    (two convolutions in the first two stages, three in the others) with `width`,
    2·width, 4·width, 8·width and 8·width feature maps, each followed by 2x2 max pooling
    (total factor 32); then the "fully connected" layers as convolutions (3x3 then 1x1,
    16·width maps, dropout 0.5). Decoder: 1x1 class scores at strides 32, 16 (pool4)
    and 8 (pool3); the stride-32 scores are upsampled 2x by a transposed convolution
    and added to the pool4 scores, the sum upsampled 2x and added to the pool3 scores,
    and that upsampled 8x to the input size. Transposed convolutions start as bilinear
    interpolation. Input sizes must be divisible by 32; output `(N, K, H, W)` logits.
    """

    def __init__(self, in_channels: int, classes: int, width: int) -> None:
        super().__init__()
        w = int(width)
        widths, convs = (w, 2 * w, 4 * w, 8 * w, 8 * w), (2, 2, 3, 3, 3)
        stages, c = [], int(in_channels)
        for out, n in zip(widths, convs):
            layers: list[nn.Module] = []
            for _ in range(n):
                layers += [nn.Conv2d(c, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
                c = out
            layers.append(nn.MaxPool2d(2))
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)
        self.fc = nn.Sequential(
            nn.Conv2d(c, 16 * w, 3, padding=1), nn.ReLU(inplace=True), nn.Dropout2d(0.5),
            nn.Conv2d(16 * w, 16 * w, 1), nn.ReLU(inplace=True), nn.Dropout2d(0.5))
        self.score32 = nn.Conv2d(16 * w, classes, 1)
        self.score16 = nn.Conv2d(widths[3], classes, 1)
        self.score8 = nn.Conv2d(widths[2], classes, 1)
        self.up2a = nn.ConvTranspose2d(classes, classes, 4, stride=2, padding=1, bias=False)
        self.up2b = nn.ConvTranspose2d(classes, classes, 4, stride=2, padding=1, bias=False)
        self.up8 = nn.ConvTranspose2d(classes, classes, 16, stride=8, padding=4, bias=False)
        for up in (self.up2a, self.up2b, self.up8):
            _bilinear_init(up)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % 32 or x.shape[-2] % 32:
            raise ValueError(f"fcn2d: input sizes must be divisible by 32, got {tuple(x.shape[-2:])}")
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        s = self.up2a(self.score32(self.fc(x))) + self.score16(feats[3])
        s = self.up2b(s) + self.score8(feats[2])
        return self.up8(s)


def _bilinear_init(up: nn.ConvTranspose2d) -> None:
    """Weights of a transposed convolution that make it bilinear upsampling per channel."""
    k = up.kernel_size[0]
    factor = (k + 1) // 2
    center = factor - 1 if k % 2 == 1 else factor - 0.5
    og = torch.arange(k, dtype=torch.float32)
    filt = 1 - (og - center).abs() / factor
    kernel = filt[:, None] * filt[None, :]
    with torch.no_grad():
        up.weight.zero_()
        for i in range(min(up.in_channels, up.out_channels)):
            up.weight[i, i] = kernel


def fcn2d(in_channels: int = 1, classes: int = 2, width: int = 32) -> nn.Module:
    """FCN-8s for 2-D segmentation: `FCN8s` (our own implementation)."""
    return FCN8s(int(in_channels), _classes("fcn2d", classes), int(width))


# ----- classification ---------------------------------------------------------------------


def _resnet(op: str, dims: int, depth: int, in_channels: int, classes: int) -> nn.Module:
    from monai.networks.nets import resnet

    factory = getattr(resnet, f"resnet{_depth(op, depth, RESNET_DEPTHS)}")
    return factory(pretrained=False, spatial_dims=dims, n_input_channels=int(in_channels),
                   num_classes=_classes(op, classes))


def resnet2d(depth: int = 18, in_channels: int = 1, classes: int = 2) -> nn.Module:
    """2-D ResNet classifier: MONAI `resnet{depth}(spatial_dims=2, n_input_channels=...,
    num_classes=classes)`, `depth` one of 10, 18, 34, 50, 101, 152, 200."""
    return _resnet("resnet2d", 2, depth, in_channels, classes)


def resnet3d(depth: int = 18, in_channels: int = 1, classes: int = 2) -> nn.Module:
    """3-D ResNet classifier (MedicalNet layout): MONAI `resnet{depth}(spatial_dims=3, ...)`."""
    return _resnet("resnet3d", 3, depth, in_channels, classes)


def _densenet(op: str, dims: int, depth: int, in_channels: int, classes: int, dropout: float) -> nn.Module:
    from monai.networks import nets

    factory = getattr(nets, f"DenseNet{_depth(op, depth, DENSENET_DEPTHS)}")
    return factory(spatial_dims=dims, in_channels=int(in_channels), out_channels=_classes(op, classes),
                   dropout_prob=float(dropout), pretrained=False)


def densenet2d(depth: int = 121, in_channels: int = 1, classes: int = 2, dropout: float = 0.0) -> nn.Module:
    """2-D DenseNet classifier: MONAI `DenseNet{depth}(spatial_dims=2, ...)`, `depth` one
    of 121, 169, 201, 264; `dropout` after each dense layer (`dropout_prob`)."""
    return _densenet("densenet2d", 2, depth, in_channels, classes, dropout)


def densenet3d(depth: int = 121, in_channels: int = 1, classes: int = 2, dropout: float = 0.0) -> nn.Module:
    """3-D DenseNet classifier: MONAI `DenseNet{depth}(spatial_dims=3, ...)`."""
    return _densenet("densenet3d", 3, depth, in_channels, classes, dropout)


def _block3d(cin: int, cout: int) -> nn.Sequential:
    """Two 3x3x3 convolutions with batch normalization and ReLU."""
    return nn.Sequential(
        nn.Conv3d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm3d(cout), nn.ReLU(inplace=True),
        nn.Conv3d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm3d(cout), nn.ReLU(inplace=True))


class DualPathClassifier(nn.Module):
    """A small 3-D two-path (local + context) classifier for patches around a nodule;
    our own implementation, in the spirit of the multi-scale nodule attribute
    classifiers (not a re-implementation of DeepLung's DPN blocks).

    - Local path, on the full-resolution patch: three stages of two 3x3x3 convolutions
      (batch normalization, ReLU) with `width`, 2·width, 4·width maps, 2x max pooling
      between stages: fine texture and margin of the nodule.
    - Context path, on the patch average-pooled 2x: the same three stages, so its
      receptive field covers twice the extent: the nodule's surroundings.
    - Each path ends in global average pooling; the two 4·width vectors are
      concatenated, passed through dropout (`dropout`) and a linear layer to `classes`
      logits `(N, K)`. Any input size of at least 8 voxels per axis works.
    """

    def __init__(self, in_channels: int, classes: int, width: int, dropout: float) -> None:
        super().__init__()
        w = int(width)

        def path() -> nn.Sequential:
            return nn.Sequential(_block3d(in_channels, w), nn.MaxPool3d(2), _block3d(w, 2 * w), nn.MaxPool3d(2),
                                 _block3d(2 * w, 4 * w), nn.AdaptiveAvgPool3d(1), nn.Flatten())

        self.local = path()
        self.context_pool = nn.AvgPool3d(2, ceil_mode=True)
        self.context = path()
        self.dropout = nn.Dropout(float(dropout))
        self.head = nn.Linear(8 * w, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = torch.cat([self.local(x), self.context(self.context_pool(x))], dim=1)
        return self.head(self.dropout(features))


def dual_path_classifier(in_channels: int = 1, classes: int = 2, width: int = 32, dropout: float = 0.0) -> nn.Module:
    """3-D nodule attribute classifier: `DualPathClassifier` (our own implementation)."""
    return DualPathClassifier(int(in_channels), _classes("dual_path_classifier", classes), int(width), dropout)


# ----- detection --------------------------------------------------------------------------

_RESNET_LAYOUT = {10: ("basic", [1, 1, 1, 1]), 18: ("basic", [2, 2, 2, 2]), 34: ("basic", [3, 4, 6, 3]),
                  50: ("bottleneck", [3, 4, 6, 3]), 101: ("bottleneck", [3, 4, 23, 3]),
                  152: ("bottleneck", [3, 8, 36, 3]), 200: ("bottleneck", [3, 24, 36, 3])}
_RETURNED_LAYERS = (1, 2)  # pyramid levels at strides 4, 8, plus the extra max-pooled level at 16


class NoduleDetector(nn.Module):
    """A 3-D RetinaNet with its training and inference logic: wraps MONAI's
    `RetinaNetDetector` (`self.detector`; its trainable weights are in
    `self.detector.network`) and translates the class numbering.

    Images: a `(N, C, z, y, x)` float tensor (or a list of `(C, z, y, x)` tensors of
    different sizes); MONAI pads them to multiples of 16 internally.

    Boxes are in voxel coordinates of the input array, in array axis order
    `[lo0, lo1, lo2, hi0, hi1, hi2]` = `[z0, y0, x0, z1, y1, x1]` (MONAI's "xyzxyz"
    StandardMode applied to the array axes), with voxel `i` covering `[i, i+1)`: a box
    around voxels `i0..i1` along an axis is `[i0, i1 + 1)`. (A continuous index, whose
    integer values are voxel centres, is the coordinate minus 0.5.) Labels are our class
    numbers `1 .. classes-1` (0 is background, never a box).

    - Training mode, `model(images, targets)`: `targets` is one dict per image with
      `"boxes"` a float `(n, 6)` tensor and `"labels"` an int64 `(n,)` tensor. Returns
      `{"classification": focal loss, "box_regression": smooth-L1 loss, "loss": sum}`,
      scalar tensors.
    - Eval mode, `model(images)`: returns one dict per image with `"boxes"` `(m, 6)`
      float, `"scores"` `(m,)` float in [0, 1] (sigmoid), `"labels"` `(m,)` int64 in
      `1 .. classes-1`, after score threshold 0.02, NMS at IoU 0.22 and at most 100
      boxes. `model(images, use_inferer=True)` runs MONAI's sliding-window inferer
      instead, after `model.detector.set_sliding_window_inferer(roi_size=...)`.
    """

    def __init__(self, detector: nn.Module, classes: int) -> None:
        super().__init__()
        self.detector = detector
        self.classes = classes

    def forward(self, images: torch.Tensor | list[torch.Tensor], targets: list[dict[str, torch.Tensor]] | None = None,
                use_inferer: bool = False) -> dict[str, torch.Tensor] | list[dict[str, torch.Tensor]]:
        if self.training:
            if targets is None:
                raise ValueError("nodule_detector: training needs targets (boxes and labels per image)")
            shifted = []
            for t in targets:
                labels = torch.as_tensor(t["labels"], dtype=torch.long)
                if labels.numel() and (int(labels.min()) < 1 or int(labels.max()) >= self.classes):
                    raise ValueError(f"nodule_detector: box labels must be 1 .. {self.classes - 1}")
                shifted.append({"boxes": torch.as_tensor(t["boxes"], dtype=torch.float32), "labels": labels - 1})
            losses = self.detector(images, shifted)
            out = {"classification": losses["classification"], "box_regression": losses["box_regression"]}
            out["loss"] = out["classification"] + out["box_regression"]
            return out
        found = self.detector(images, use_inferer=use_inferer)
        return [{"boxes": d["boxes"], "scores": d["labels_scores"], "labels": d["labels"].long() + 1} for d in found]


class _IntermediateLayers(nn.ModuleDict):
    """torchvision's `IntermediateLayerGetter`, which MONAI's `BackboneWithFPN` uses:
    the backbone's children up to the last returned one, run in order, returning the
    outputs of `return_layers` (child name -> output name) in an ordered dict."""

    def __init__(self, model: nn.Module, return_layers: dict[str, str]) -> None:
        wanted, layers = dict(return_layers), {}
        for name, module in model.named_children():
            layers[name] = module
            wanted.pop(name, None)
            if not wanted:
                break
        super().__init__(layers)
        self.return_layers = dict(return_layers)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for name, module in self.items():
            x = module(x)
            if name in self.return_layers:
                out[self.return_layers[name]] = x
        return out


def _detector_class() -> type:
    """MONAI's `RetinaNetDetector` with the two training steps that test
    `isinstance(..., torchvision Matcher / BalancedPositiveNegativeSampler)` first
    rewritten for the components used here only (MONAI's ATSS matcher and hard negative
    sampler), with MONAI's logic; without this, training needs torchvision installed."""
    from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector

    class Detector(RetinaNetDetector):
        def compute_anchor_matched_idxs(self, anchors: list[torch.Tensor], targets: list[dict[str, torch.Tensor]],
                                        num_anchor_locs_per_level: Sequence[int]) -> list[torch.Tensor]:
            matched = []
            for anchors_per_image, target in zip(anchors, targets):
                boxes = target[self.target_box_key]
                if boxes.numel() == 0:
                    matched.append(torch.full((anchors_per_image.size(0),), -1, dtype=torch.int64,
                                              device=anchors_per_image.device))
                    continue
                _, idxs = self.proposal_matcher(boxes.to(anchors_per_image.device), anchors_per_image,
                                                num_anchor_locs_per_level, self.num_anchors_per_loc)
                matched.append(idxs)
            return matched

        def get_cls_train_sample_per_image(self, cls_logits_per_image: torch.Tensor,
                                           targets_per_image: dict[str, torch.Tensor],
                                           matched_idxs_per_image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            if not torch.isfinite(cls_logits_per_image).all() and torch.is_grad_enabled():
                raise ValueError("NaN or Inf in predicted classification logits.")
            foreground = matched_idxs_per_image >= 0
            target = torch.zeros_like(cls_logits_per_image)
            target[foreground, targets_per_image[self.target_label_key][matched_idxs_per_image[foreground]]] = 1.0
            scores = torch.max(cls_logits_per_image.to(torch.float32), dim=1)[0]
            pos, neg = self.fg_bg_sampler([matched_idxs_per_image + 1], scores)
            valid = torch.cat([torch.where(torch.cat(pos, dim=0))[0], torch.where(torch.cat(neg, dim=0))[0]], dim=0)
            return cls_logits_per_image[valid, :], target[valid, :]

    return Detector


def _fpn(backbone: nn.Module) -> nn.Module:
    """What MONAI `resnet_fpn_feature_extractor(backbone, 3, pretrained_backbone=False,
    returned_layers=(1, 2))` builds: a `BackboneWithFPN` (MONAI's class, its forward and
    its state-dict keys) with a `FeaturePyramidNetwork` of 256 maps and an extra
    max-pooled level, all backbone layers trainable. MONAI's function needs torchvision
    (for `IntermediateLayerGetter` and a check of the trainable layers) only to do this;
    this copy does not, so the detector runs where torchvision is not installed.
    tests/test_ops_nets.py compares the two where torchvision is."""
    from monai.networks.blocks.backbone_fpn_utils import BackboneWithFPN
    from monai.networks.blocks.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

    stage2 = backbone.in_planes // 8  # type: ignore[operator]  # as MONAI's _resnet_fpn_extractor
    features = BackboneWithFPN.__new__(BackboneWithFPN)
    nn.Module.__init__(features)
    features.body = _IntermediateLayers(backbone, {f"layer{k}": str(v) for v, k in enumerate(_RETURNED_LAYERS)})
    features.fpn = FeaturePyramidNetwork(spatial_dims=3, in_channels_list=[stage2 * 2 ** (i - 1) for i in _RETURNED_LAYERS],
                                         out_channels=256, extra_blocks=LastLevelMaxPool(3))
    features.out_channels = 256
    return features


def nodule_detector(in_channels: int = 1, classes: int = 2, depth: int = 50,
                    anchors: Sequence[int] = (6, 8, 10)) -> nn.Module:
    """3-D RetinaNet nodule detector after MONAI's LUNA16 recipe: `NoduleDetector`
    around MONAI `RetinaNetDetector`.

    Backbone: MONAI `ResNet` of `depth` layers (10, 18, 34, 50, 101, 152, 200; basic
    blocks below 50, bottlenecks from 50) with stride-2 first convolution (size 7) and
    max pooling; `resnet_fpn_feature_extractor` with returned layers 1 and 2 gives a
    feature pyramid at strides 4, 8 and 16. Anchors: `AnchorGeneratorWithAnchorShape`
    with cubes of `anchors` voxels (three anchors per location) on the stride-4 level,
    doubled on each coarser level. Heads: MONAI `RetinaNet` classification and box
    regression heads; training uses the ATSS matcher (4 candidates), the hard negative
    sampler (64 anchors per image, 30 % positive), focal loss (gamma 2) and smooth-L1
    box loss; inference the box selector with NMS.
    """
    from monai.apps.detection.networks.retinanet_network import RetinaNet
    from monai.apps.detection.utils.anchor_utils import AnchorGeneratorWithAnchorShape
    from monai.losses import FocalLoss
    from monai.networks.nets import resnet

    classes = _classes("nodule_detector", classes)
    kind, layers = _RESNET_LAYOUT[_depth("nodule_detector", depth, RESNET_DEPTHS)]
    sizes = _ints(anchors, 3, "anchors")
    if min(sizes) <= 0:
        raise ValueError(f"nodule_detector: anchor sizes must be positive, got {sizes}")
    block = resnet.ResNetBlock if kind == "basic" else resnet.ResNetBottleneck
    backbone = resnet.ResNet(block=block, layers=layers, block_inplanes=resnet.get_inplanes(), spatial_dims=3,
                             n_input_channels=int(in_channels), conv1_t_stride=2, conv1_t_size=7)
    features = _fpn(backbone)
    anchor_generator = AnchorGeneratorWithAnchorShape(
        feature_map_scales=[2**level for level in range(len(_RETURNED_LAYERS) + 1)],
        base_anchor_shapes=[(s, s, s) for s in sizes])
    size_divisible = [s * 2 * 2 ** max(_RETURNED_LAYERS) for s in features.body.conv1.stride]
    network = RetinaNet(spatial_dims=3, num_classes=classes - 1,
                        num_anchors=anchor_generator.num_anchors_per_location()[0],
                        feature_extractor=features, size_divisible=size_divisible)
    detector = _detector_class()(network=network, anchor_generator=anchor_generator, debug=False)
    detector.set_atss_matcher(num_candidates=4, center_in_gt=False)
    detector.set_hard_negative_sampler(batch_size_per_image=64, positive_fraction=0.3, pool_size=20, min_neg=16)
    detector.set_cls_loss(FocalLoss(reduction="mean", gamma=2.0))
    detector.set_target_keys(box_key="boxes", label_key="labels")
    detector.set_box_selector_parameters(score_thresh=0.02, topk_candidates_per_level=1000, nms_thresh=0.22,
                                         detections_per_img=100)
    return NoduleDetector(detector, classes)


# ----- tables -----------------------------------------------------------------------------

OPERATORS: dict[str, Callable[..., nn.Module]] = {
    "unet2d": unet2d, "unet3d": unet3d, "vnet": vnet, "segresnet": segresnet, "swin_unetr": swin_unetr,
    "fcn2d": fcn2d, "resnet2d": resnet2d, "resnet3d": resnet3d, "densenet2d": densenet2d,
    "densenet3d": densenet3d, "dual_path_classifier": dual_path_classifier, "nodule_detector": nodule_detector,
}
"""The std.nets operators implemented here, by the name of their stdlib signature."""

_FIXED_DOWNSAMPLE = {"vnet": 16, "segresnet": 8, "swin_unetr": 32, "fcn2d": 32, "nodule_detector": 16}


# ----- the fold models of a cross-validation as one network (std.train's `ensemble`) ----

ENSEMBLE = "fold_ensemble"
"""The `Network.op` of an ensemble; its params are `{"members": [{"op", "params"}, ...], "tta"}`."""


class FoldEnsemble(nn.Module):
    """Several trained networks as one (nnU-Net's fold ensemble). `forward` gives the log
    of the mean of the members' softmax probabilities, over the members and, with `tta`,
    over the input mirrored along each spatial axis (the flips undone before averaging),
    so that a softmax of its output, as `infer` takes, is exactly that mean: the
    ensemble is used wherever one network is."""

    def __init__(self, members: Sequence[nn.Module], tta: bool) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.tta = bool(tta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flips: list[tuple[int, ...]] = [()]
        if self.tta:
            flips += [(axis,) for axis in range(2, x.ndim)]
        total = None
        for member in self.members:
            for dims in flips:
                probs = torch.softmax(member(torch.flip(x, dims) if dims else x).float(), dim=1)
                if dims and probs.ndim == x.ndim:  # a segmentation: flip the prediction back
                    probs = torch.flip(probs, dims)
                total = probs if total is None else total + probs
        assert total is not None
        mean = total / (len(self.members) * len(flips))
        return torch.log(mean.clamp_min(torch.finfo(mean.dtype).tiny))  # log(0) would make NaN in window blending


def _ensemble_members(params: dict[str, object]) -> list[tuple[str, dict[str, object]]]:
    members = params.get("members")
    if not isinstance(members, list | tuple):
        raise KeyError("an ensemble's params name no members")
    return [(str(m["op"]), dict(m["params"])) for m in members]  # type: ignore[index,call-overload]


def _arguments(op: str, params: dict[str, object]) -> dict[str, object]:
    if op not in OPERATORS:
        raise KeyError(f"no std.nets operator {op!r}")
    bound = inspect.signature(OPERATORS[op]).bind(**params)
    bound.apply_defaults()
    return dict(bound.arguments)


def downsample(op: str, params: dict[str, object]) -> int:
    """The factor input spatial sizes must be divisible by, as the declaration's
    `@downsample` says: the product of `strides` for the U-Nets, a fixed factor for
    the others that have one, 1 for the classifiers (they pool globally). Parameters
    not given take their defaults."""
    if op == ENSEMBLE:  # every member's input must fit
        return math.lcm(*(downsample(m_op, m_params) for m_op, m_params in _ensemble_members(params)))
    args = _arguments(op, params)
    if op in ("unet2d", "unet3d"):
        return math.prod(int(s) for s in args["strides"])  # type: ignore[union-attr]
    return _FIXED_DOWNSAMPLE.get(op, 1)


def build(op: str, params: dict[str, object], seed: int) -> nn.Module:
    """The network of operator `op` with `params` (missing ones take their defaults),
    its initial weights drawn after `torch.manual_seed(seed)`, so that the same seed
    gives the same weights. The global torch generator's state is restored afterwards.
    An ensemble (`ENSEMBLE`) is rebuilt from its members' operators and params (a stored
    one then gets its weights loaded)."""
    if op == ENSEMBLE:
        return FoldEnsemble([build(m_op, m_params, seed) for m_op, m_params in _ensemble_members(params)],
                            bool(params.get("tta", False)))
    args = _arguments(op, params)
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(int(seed))
        return OPERATORS[op](**args)
    finally:
        torch.random.set_rng_state(state)
