"""std.nets (medasl/ops/nets.py): every declared network is implemented with the
declared parameters and defaults, builds reproducibly from a seed, gives the documented
output shapes on tiny inputs, agrees with the declared `@downsample`, and the detector
computes training losses and returns scored boxes."""

from __future__ import annotations

import importlib.util
import inspect
import math

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("monai")

from medasl.ops import nets  # noqa: E402
from medasl.semantics.modules import stdlib  # noqa: E402

DECLARED = stdlib().modules["std.nets"].ops


@pytest.fixture(autouse=True, scope="module")
def _two_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(min(threads, 2))
    yield
    torch.set_num_threads(threads)


def _value(node: object) -> object:
    """A stdlib default (a Number or a Tuple of them) as a Python value."""
    if hasattr(node, "items"):
        return tuple(_value(item) for item in node.items)  # type: ignore[attr-defined]
    return node.value  # type: ignore[attr-defined]


def test_operators_are_the_declared_ones_with_their_parameters_and_defaults() -> None:
    assert set(nets.OPERATORS) == set(DECLARED)
    for name, func in nets.OPERATORS.items():
        params = inspect.signature(func).parameters
        declared = DECLARED[name].params
        assert list(params) == [p.name for p in declared], name
        for p in declared:
            default = params[p.name].default
            assert default is not inspect.Parameter.empty, f"{name}.{p.name} has no default"
            expected = _value(p.default)
            assert (tuple(default) if isinstance(default, tuple | list) else default) == expected, f"{name}.{p.name}"


def test_downsample_agrees_with_the_declarations() -> None:
    for name, op in DECLARED.items():
        spec = op.attrs.get("downsample")
        if not spec:
            assert nets.downsample(name, {}) == 1, name
            continue
        value = spec[0] if isinstance(spec[0], int) else _value(next(p.default for p in op.params
                                                                       if p.name == spec[0]))
        expected = math.prod(value) if isinstance(value, tuple) else value
        assert nets.downsample(name, {}) == expected, name
    assert nets.downsample("unet3d", {"strides": (2, 2, 1, 2)}) == 8


# op, params (small), input shape, output shape
FORWARD = [
    ("unet2d", {"channels": (4, 8, 16, 32, 64), "classes": 3}, (1, 1, 32, 32), (1, 3, 32, 32)),
    ("unet3d", {"channels": (4, 8, 16, 32, 64), "strides": (2, 2, 2, 1)}, (1, 1, 16, 16, 16), (1, 2, 16, 16, 16)),
    ("vnet", {"in_channels": 2}, (1, 2, 16, 16, 16), (1, 2, 16, 16, 16)),
    ("segresnet", {"filters": 8, "classes": 3}, (1, 1, 16, 16, 16), (1, 3, 16, 16, 16)),
    ("fcn2d", {"width": 4, "classes": 3}, (1, 1, 32, 64), (1, 3, 32, 64)),
    ("resnet2d", {"depth": 10, "classes": 3}, (2, 1, 32, 32), (2, 3)),
    ("resnet3d", {"depth": 10, "in_channels": 2}, (2, 2, 16, 16, 16), (2, 2)),
    ("densenet2d", {"classes": 4}, (2, 1, 32, 32), (2, 4)),
    ("densenet3d", {}, (1, 1, 32, 32, 32), (1, 2)),
    ("dual_path_classifier", {"width": 4, "classes": 3}, (2, 1, 16, 16, 16), (2, 3)),
    ("dual_path_classifier", {"width": 4}, (1, 1, 12, 20, 16), (1, 2)),
]


@pytest.mark.parametrize(("op", "params", "shape", "expected"), FORWARD, ids=[f[0] for f in FORWARD])
def test_forward_gives_the_documented_shape(op: str, params: dict, shape: tuple, expected: tuple) -> None:
    model = nets.build(op, params, seed=0).eval()
    assert isinstance(model, torch.nn.Module)
    with torch.no_grad():
        out = model(torch.randn(*shape))
    assert tuple(out.shape) == expected
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_swin_unetr_forward() -> None:
    pytest.importorskip("einops")  # MONAI's SwinUNETR needs it at run time
    model = nets.build("swin_unetr", {"features": 12, "classes": 3}, seed=0).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 1, 64, 64, 64))
    assert tuple(out.shape) == (1, 3, 64, 64, 64)


def test_fcn2d_trains_and_refuses_sizes_not_divisible_by_32() -> None:
    model = nets.fcn2d(width=4)
    out = model(torch.randn(2, 1, 64, 64))
    out.mean().backward()
    assert model.stages[0][0].weight.grad is not None
    with pytest.raises(ValueError, match="divisible by 32"):
        model(torch.randn(1, 1, 48, 64))


def _weights(model: torch.nn.Module) -> list[torch.Tensor]:
    return [t.detach().clone() for t in model.state_dict().values()]


@pytest.mark.parametrize("op", ["unet2d", "fcn2d", "dual_path_classifier"])
def test_build_is_reproducible_by_seed(op: str) -> None:
    params = {"unet2d": {"channels": (4, 8, 16, 32, 64)}, "fcn2d": {"width": 4}, "dual_path_classifier": {"width": 4}}[op]
    a, b, c = (_weights(nets.build(op, params, seed)) for seed in (7, 7, 8))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a, c, strict=True))


def test_build_leaves_the_global_generator_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    nets.build("fcn2d", {"width": 4}, seed=0)
    assert torch.equal(torch.rand(3), expected)


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_arguments_reach_monai() -> None:
    from monai.networks.nets import UNet, resnet34

    ours = nets.unet3d(in_channels=2, classes=4, channels=(8, 16, 32, 64, 128), strides=(2, 2, 2, 1), res_units=1)
    theirs = UNet(spatial_dims=3, in_channels=2, out_channels=4, channels=(8, 16, 32, 64, 128),
                  strides=(2, 2, 2, 1), num_res_units=1)
    assert _count(ours) == _count(theirs)
    assert _count(nets.resnet2d(depth=34, in_channels=3, classes=5)) == _count(
        resnet34(spatial_dims=2, n_input_channels=3, num_classes=5))


@pytest.mark.parametrize(("op", "depth"), [("resnet2d", 11), ("densenet3d", 100), ("nodule_detector", 42)])
def test_unsupported_depth_names_the_allowed_ones(op: str, depth: int) -> None:
    with pytest.raises(ValueError, match="depth must be one of"):
        nets.OPERATORS[op](depth=depth)


def test_unknown_operator() -> None:
    with pytest.raises(KeyError):
        nets.build("unet4d", {}, seed=0)


def test_detector_trains_and_detects() -> None:
    model = nets.build("nodule_detector", {"depth": 10, "classes": 3, "anchors": (4, 6, 8)}, seed=0)
    images = torch.randn(1, 1, 32, 32, 32)
    model.train()
    targets = [{"boxes": torch.tensor([[8.0, 10.0, 8.0, 16.0, 18.0, 16.0]]), "labels": torch.tensor([2])}]
    losses = model(images, targets)
    assert set(losses) == {"classification", "box_regression", "loss"}
    assert all(torch.isfinite(v) and v.ndim == 0 for v in losses.values())
    losses["loss"].backward()
    assert any(p.grad is not None for p in model.parameters())
    with pytest.raises(ValueError, match="labels must be 1 .. 2"):
        model(images, [{"boxes": targets[0]["boxes"], "labels": torch.tensor([0])}])

    model.eval()
    with torch.no_grad():
        found = model(images)
    assert isinstance(found, list) and len(found) == 1
    det = found[0]
    assert set(det) == {"boxes", "scores", "labels"}
    n = det["boxes"].shape[0]
    assert det["boxes"].shape == (n, 6) and det["scores"].shape == (n,) and det["labels"].shape == (n,)
    assert det["labels"].dtype == torch.int64
    if n:
        assert ((det["labels"] >= 1) & (det["labels"] <= 2)).all()
        assert ((det["scores"] >= 0) & (det["scores"] <= 1)).all()
        assert (det["boxes"][:, 3:] >= det["boxes"][:, :3]).all()


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is None, reason="torchvision is not installed")
def test_detector_features_are_monais() -> None:
    """Where torchvision is installed, MONAI's own resnet_fpn_feature_extractor builds the
    same modules as the torchvision-free copy in nets._fpn."""
    from monai.apps.detection.networks.retinanet_network import resnet_fpn_feature_extractor
    from monai.networks.nets import resnet

    def backbone():
        torch.manual_seed(0)
        return resnet.ResNet(block=resnet.ResNetBlock, layers=[1, 1, 1, 1], block_inplanes=resnet.get_inplanes(),
                             spatial_dims=3, n_input_channels=1, conv1_t_stride=2, conv1_t_size=7)

    ours = nets._fpn(backbone())
    theirs = resnet_fpn_feature_extractor(backbone(), 3, pretrained_backbone=False, returned_layers=(1, 2))
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}
