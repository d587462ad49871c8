"""std.viz: every figure is a PNG with content, volumes are drawn on the right slices,
boxes land on the right voxels whatever the geometry, meshes are in mm, the explanations
(occlusion, saliency, Grad-CAM) point at what the network looks at, t-SNE separates what
the network separates, and the FROC curve agrees with metrics.froc."""

from __future__ import annotations

import inspect
import io

import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813 (the alias SimpleITK documents)

from medasl.ops import viz
from medasl.runtime.values import Boxes, Case, Figure, Measured, Network, Pair, Trained, Volume
from medasl.semantics.modules import stdlib

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
IDENTITY3 = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
NOT_YET: set[str] = set()  # the study figures are tested in tests/test_tune_figures.py


def _png(fig: Figure) -> tuple[int, int]:
    """Checks `fig` is a PNG with content; returns its (width, height) in pixels."""
    assert isinstance(fig, Figure)
    assert fig.png.startswith(PNG_SIGNATURE)
    assert len(fig.png) > 2000
    from matplotlib.image import imread

    pixels = imread(io.BytesIO(fig.png), format="png")
    assert pixels.std() > 0.01  # not a blank canvas
    return pixels.shape[1], pixels.shape[0]


def _pixels(fig: Figure) -> np.ndarray:
    from matplotlib.image import imread

    return imread(io.BytesIO(fig.png), format="png")


def _trained(history: list[dict[str, float]] | None = None) -> Trained:
    if history is None:
        history = [{"epoch": e, "loss": 1.0 / (e + 1), "lr": 1e-3, "seconds": 1.0} for e in range(6)]
        for h in history[1::2]:
            h["val_dice"] = 0.5 + 0.05 * h["epoch"]
            h["val_loss"] = 1.2 / (h["epoch"] + 1)
    return Trained(Network("tiny", {}, None), history, best_epoch=5, metric="dice", goal="max")


def test_operators_match_the_stdlib() -> None:
    declared = stdlib().modules["std.viz"].ops
    assert set(declared) - set(viz.OPERATORS) == NOT_YET
    for name, func in viz.OPERATORS.items():
        params = list(inspect.signature(func).parameters)
        assert params == [p.name for p in declared[name].params], name


def test_training_curves() -> None:
    t = _trained()
    for fig in (viz.loss_curve(t), viz.metric_curve(t)):
        size = _png(fig)
        assert size == (640, 400)
    assert viz.metric_curve(t).title == "Validation dice"
    # the same inputs give the same bytes
    assert viz.loss_curve(t).png == viz.loss_curve(_trained()).png
    # an empty history still draws a figure saying so
    assert viz.loss_curve(_trained([])).png.startswith(PNG_SIGNATURE)
    assert viz.metric_curve(_trained([{"epoch": 0, "loss": 1.0, "lr": 1.0, "seconds": 1.0}])).png


def _volume(shape_zyx: tuple[int, int, int], spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0),
            direction=IDENTITY3) -> Volume:
    z, y, x = np.mgrid[: shape_zyx[0], : shape_zyx[1], : shape_zyx[2]]
    return Volume((x + 2 * y + 3 * z).astype(np.float32), spacing, origin, direction, modality="CT")


def test_foreground_slices() -> None:
    mask = np.zeros((20, 4, 4), bool)
    mask[10:14] = True
    assert viz._foreground_slices(mask, 2) == [11, 13]
    assert all(10 <= z < 14 for z in viz._foreground_slices(mask, 3))
    assert viz._foreground_slices(np.zeros((20, 4, 4), bool), 4) == [2, 7, 12, 17]
    assert viz._foreground_slices(mask, 50) == [10, 11, 12, 13]


def test_overlay_labels_on_a_small_volume() -> None:
    img = _volume((10, 16, 12), spacing=(1.0, 2.0, 3.0))
    lab = np.zeros(img.array.shape, np.uint8)
    lab[4:7, 3:9, 2:8] = 1
    lab[5, 10:13, 8:11] = 2
    labels = img.with_array(lab, "labels")
    fig = viz.overlay(image=img, labels=labels, slices=3)
    w, h = _png(fig)
    assert (w, h) == (int(3 * viz.PANEL * viz.DPI), int((viz.PANEL + 0.5) * viz.DPI))
    # class 1 is drawn in its colour on the image: some pixels are clearly tinted
    px = _pixels(fig)[..., :3]
    assert (np.abs(px[..., 0] - px[..., 2]) > 0.2).any()
    # an empty label map and a probability map on another grid draw too
    assert _png(viz.overlay(img, img.with_array(np.zeros_like(lab), "labels"), slices=2))[0] == int(2 * viz.PANEL * 100)
    probs = Volume(np.full((5, 8, 6), 0.8, np.float32), (2.0, 4.0, 6.0), (0.5, 1.0, 1.5), IDENTITY3, kind="probs")
    _png(viz.overlay(img, probs, slices=1))
    # 2-D images are shown whole
    img2 = Volume(np.arange(48, dtype=np.float32).reshape(6, 8), (0.5, 1.0), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0))
    lab2 = img2.with_array((img2.array > 30).astype(np.uint8), "labels")
    _png(viz.overlay(img2, lab2))
    with pytest.raises(ValueError):
        viz.overlay(img, labels, slices=0)


def _oblique() -> tuple[Volume, sitk.Image]:
    """A volume with non-unit spacing, an origin off zero and a rotated, permuted
    direction, and the same grid as a SimpleITK image."""
    c, s = np.cos(np.radians(30)), np.sin(np.radians(30))
    rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]) @ np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0],
                                                                           [0.0, 1.0, 0.0]])
    vol = _volume((12, 20, 16), spacing=(0.7, 1.3, 2.5), origin=(-40.0, 12.5, 100.0), direction=tuple(rot.ravel()))
    return vol, vol.to_sitk()


def test_world_to_index_matches_simpleitk() -> None:
    vol, img = _oblique()
    rng = np.random.default_rng(1)
    for _ in range(20):
        p = rng.uniform(-60, 120, size=3)
        expected = img.TransformPhysicalPointToContinuousIndex(tuple(float(v) for v in p))
        np.testing.assert_allclose(viz.world_to_index(vol, p), expected, atol=1e-9)
    # and it inverts index -> world
    idx = np.array([3.0, 7.0, 5.0])
    np.testing.assert_allclose(viz.world_to_index(vol, img.TransformContinuousIndexToPhysicalPoint(tuple(idx))), idx,
                               atol=1e-9)


def test_box_at_a_known_world_position_lands_on_its_voxels() -> None:
    vol, img = _oblique()
    # the world-aligned box around the footprints of voxels (4..6, 8..11, 3..5) (x, y, z):
    # its voxels are those whose centres it holds, as SimpleITK says
    corners = [img.TransformContinuousIndexToPhysicalPoint((float(x), float(y), float(z)))
               for x in (3.5, 6.5) for y in (7.5, 11.5) for z in (2.5, 5.5)]
    lo, hi = np.min(corners, axis=0), np.max(corners, axis=0)
    boxes = Boxes(lo[None], hi[None], [1], [0.8])
    vlo, vhi = viz.box_voxels(vol, boxes)
    centres = [np.array(img.TransformPhysicalPointToContinuousIndex(c)) for c in (tuple(lo), tuple(hi))]
    inside = [
        (x, y, z) for x in range(16) for y in range(20) for z in range(12)
        if np.all(np.array(img.TransformIndexToPhysicalPoint((x, y, z))) >= lo - 1e-9)
        and np.all(np.array(img.TransformIndexToPhysicalPoint((x, y, z))) <= hi + 1e-9)
    ]
    assert inside and centres  # the box holds voxel centres
    ix = np.array(inside)
    # the index bounding box holds every voxel whose centre is in the world box
    assert np.all(vlo[0] <= ix.min(axis=0)) and np.all(vhi[0] >= ix.max(axis=0))
    # and the original voxels
    assert np.all(vlo[0] <= [4, 8, 3]) and np.all(vhi[0] >= [6, 11, 5])


def test_box_from_a_mask_gives_back_its_voxels() -> None:
    vol = _volume((10, 16, 12), spacing=(0.8, 1.5, 2.5), origin=(10.0, -5.0, 30.0),
                  direction=(-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0))
    img = vol.to_sitk()
    # footprints of voxels x 2..5, y 4..9, z 3..6 as a world box (direction flips x and y)
    a = np.array(img.TransformContinuousIndexToPhysicalPoint((1.5, 3.5, 2.5)))
    b = np.array(img.TransformContinuousIndexToPhysicalPoint((5.5, 9.5, 6.5)))
    boxes = Boxes(np.minimum(a, b)[None], np.maximum(a, b)[None], [2], [1.0])
    vlo, vhi = viz.box_voxels(vol, boxes)
    assert vlo[0].tolist() == [2, 4, 3] and vhi[0].tolist() == [5, 9, 6]
    fig = viz.box_overlay(vol, boxes)
    _png(fig)
    assert fig.title == "1 boxes over image"
    # the drawn rectangle is in the class colour around the box's pixels on its slice
    px = _pixels(fig)[..., :3]
    colour = np.array(viz._color(2))
    assert (np.abs(px - colour).sum(axis=-1) < 0.1).sum() > 20


def test_box_overlay_without_boxes_and_mismatched_dims() -> None:
    vol = _volume((6, 8, 8))
    empty = Boxes(np.zeros((0, 3)), np.zeros((0, 3)), [], [])
    _png(viz.box_overlay(vol, empty))
    with pytest.raises(ValueError):
        viz.box_overlay(vol, Boxes([[0.0, 0.0]], [[1.0, 1.0]], [1], [1.0]))


def _scores() -> tuple[list[Case], list[Case]]:
    rng = np.random.default_rng(0)
    targets = [int(c) for c in rng.integers(0, 3, size=30)]
    preds = []
    for t in targets:
        s = rng.uniform(0, 1, size=3)
        s[t] += 1.0
        preds.append(s / s.sum())
    ids = [f"c{i:02d}" for i in range(30)]
    return [Case(i, p) for i, p in zip(ids, preds)], [Case(i, t) for i, t in reversed(list(zip(ids, targets)))]


def test_roc_and_confusion_matrix() -> None:
    pred, target = _scores()
    _png(viz.roc_curve(pred=pred, target=target))
    _png(viz.confusion_matrix(pred=pred, target=target))
    # matched by id: the reversed target list gives the same matrix as the ordered one
    s, c = viz._paired(pred, target)
    assert c.tolist() == [t.value for t in sorted(target, key=lambda t: t.id)]
    # binary with one probability per case, plain lists
    probs = [np.array([p]) for p in np.linspace(0.05, 0.95, 10)]
    _png(viz.roc_curve(probs, [0] * 5 + [1] * 5))
    _png(viz.confusion_matrix(probs, [0] * 5 + [1] * 5))
    with pytest.raises(ValueError):
        viz.roc_curve(probs, [0, 1])


def test_metrics_table_and_boxplot() -> None:
    m = Measured("dice", "max", 0.7, {f"case-{i}": 0.5 + 0.04 * i for i in range(8)} | {"empty": float("nan")},
                 {"liver": 0.8, "tumour": 0.6})
    table = viz.metrics_table(m)
    _png(table)
    assert table.title == "dice per case"
    many = Measured("hd95", "min", 3.0, {f"c{i}": float(i) for i in range(100)})
    w, h = _png(viz.metrics_table(many))
    assert h < 2000  # long studies are summarised, not drawn case by case
    _png(viz.metric_boxplot(m))
    _png(viz.metric_boxplot(Measured("auc", "max", 0.9)))
    s = viz.summary([1.0, 2.0, float("nan"), 3.0])
    assert s["n"] == 3 and s["mean"] == 2.0 and s["median"] == 2.0


def test_occlusion_on_a_tiny_classifier() -> None:
    torch = pytest.importorskip("torch")

    class Tiny(torch.nn.Module):
        """Class 1 when the top-left corner is bright: only that corner matters."""

        def forward(self, x):  # (N, 1, 16, 16)
            corner = x[:, :, :6, :6].mean(dim=(1, 2, 3)) - 0.5
            return torch.stack([-corner * 4, corner * 4], dim=1)

    torch.manual_seed(0)
    tiny = Tiny()
    trained = Trained(Network("tiny", {}, tiny), [], 0, "auc", "max")
    arr = np.zeros((16, 16), np.float32)
    arr[:6, :6] = 1.0
    img = Volume(arr, (1.0, 1.0), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0))
    data = [Case("a", img), Case("b", Pair(img, 1))]
    fig = viz.occlusion(trained, data, patch=4, stride=4)
    _png(fig)
    assert fig.title == "Occlusion sensitivity"
    assert tiny.training  # the module's mode is given back
    # the probability of class 1 drops where the corner is occluded, and nowhere else
    (name, vol, cls, p, drop), = viz.occlusion_maps(trained, data[:1], patch=4, stride=4)
    assert (name, cls, drop.shape) == ("a", 1, (16, 16)) and p > 0.9
    assert drop[:4, :4].min() > 0.1 and np.abs(drop[8:, 8:]).max() < 1e-6
    # a plain list of 3-D volumes with a channel axis works too
    vol = Volume(np.zeros((4, 16, 16, 1), np.float32) + arr[None, :, :, None], (1.0, 1.0, 2.0), (0.0, 0.0, 0.0),
                 IDENTITY3)

    class Tiny3(torch.nn.Module):
        def forward(self, x):  # (N, 1, 4, 16, 16)
            corner = x[:, :, :, :6, :6].mean(dim=(1, 2, 3, 4))
            return torch.stack([-corner, corner], dim=1)

    _png(viz.occlusion(Trained(Network("tiny3", {}, Tiny3()), []), [vol], patch=8, stride=4))
    with pytest.raises(TypeError):
        viz.occlusion(_trained(), [img])


# ===== mesh, explanations, t-SNE, FROC ====================================================


def test_mesh_of_a_cube_is_in_mm() -> None:
    lab = np.zeros((10, 12, 14), np.uint8)
    lab[2:6, 3:9, 4:11] = 1  # 4 x 6 x 7 voxels (z, y, x)
    lab[8, 1:3, 1:3] = 2
    vol = Volume(lab, (0.5, 1.0, 2.0), (5.0, -3.0, 7.0), IDENTITY3, kind="labels")
    surfaces = viz.mesh_surfaces(vol)
    assert [c for c, _, _ in surfaces] == [1, 2]
    _, verts, faces = surfaces[0]
    # the surface runs through the outer voxels' faces: extent = voxels * spacing (z, y, x)
    np.testing.assert_allclose(np.ptp(verts, axis=0), [4 * 2.0, 6 * 1.0, 7 * 0.5], atol=1e-6)
    np.testing.assert_allclose(verts.min(axis=0), [1.5 * 2.0, 2.5 * 1.0, 3.5 * 0.5], atol=1e-6)
    assert len(faces) > 0
    fig = viz.mesh(vol)
    _png(fig)
    assert fig.title == "Surface of 2 classes"
    assert viz.mesh(vol).png == fig.png
    px = _pixels(fig)[..., :3]  # class 1 is drawn in (a shade of) its colour
    assert (np.abs(px[..., 2] - px[..., 0]) > 0.3).sum() > 500
    _png(viz.mesh(vol.with_array(np.zeros_like(lab))))
    with pytest.raises(ValueError):
        viz.mesh(Volume(lab[0], (1.0, 1.0), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0), kind="labels"))


def _corner_classifier():
    """A conv classifier whose decision depends on the top-left 6 x 6 pixels only: class 1
    when they are bright. Fixed weights, so its maps are known."""
    torch = pytest.importorskip("torch")

    class Corner(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 3, 3, padding=1, bias=False)
            self.hidden = torch.nn.Linear(3, 3)
            self.fc = torch.nn.Linear(3, 2)
            with torch.no_grad():
                self.conv.weight.fill_(1.0 / 9.0)
                self.hidden.weight.copy_(torch.eye(3))
                self.hidden.bias.zero_()
                self.fc.weight.copy_(torch.tensor([[-4.0] * 3, [4.0] * 3]))
                self.fc.bias.copy_(torch.tensor([2.0, -2.0]))

        def forward(self, x):  # (N, 1, 16, 16)
            h = torch.relu(self.conv(x))
            return self.fc(torch.relu(self.hidden(h[:, :, :6, :6].mean(dim=(2, 3)))))

    return Corner()


def _corner_image(value: float = 1.0) -> Volume:
    arr = np.zeros((16, 16), np.float32)
    arr[:6, :6] = value
    return Volume(arr, (1.0, 1.0), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0))


def _cube_segmenter():
    """A one-layer 3-D segmenter: foreground where the 3 x 3 x 3 mean is above 0.3."""
    torch = pytest.importorskip("torch")

    class Seg(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv3d(1, 2, 3, padding=1)
            with torch.no_grad():
                self.conv.weight.zero_()
                self.conv.weight[1].fill_(1.0 / 27.0)
                self.conv.bias.copy_(torch.tensor([0.3, 0.0]))

        def forward(self, x):  # (N, 1, z, y, x)
            return self.conv(x)

    return Seg()


def _cube_volume() -> Volume:
    a = np.zeros((8, 12, 12), np.float32)
    a[2:6, 3:8, 3:8] = 1.0
    return Volume(a, (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), IDENTITY3)


def test_saliency_points_at_the_informative_region() -> None:
    net = _corner_classifier()
    trained = Trained(Network("corner", {}, net), [])
    data = [Case("a", _corner_image()), Case("b", Pair(_corner_image(0.8), 1))]
    (name, vol, what, grad), = viz.saliency_maps(trained, data[:1])
    assert name == "a" and what.startswith("class 1") and grad.shape == (16, 16)
    # the gradient lives where the classifier looks (the corner and the conv's reach)
    assert grad[:6, :6].min() > 0 and np.abs(grad[8:, :]).max() == 0 and np.abs(grad[:, 8:]).max() == 0
    fig = viz.saliency(trained, data)
    _png(fig)
    assert fig.title == "Gradient saliency" and viz.saliency(trained, data).png == fig.png
    # the network is left as it was: mode, no gradients on its weights
    assert net.training and all(p.grad is None and p.requires_grad for p in net.parameters())
    # a segmentation network: the summed foreground logit, on a 3-D volume
    seg = Trained(Network("seg", {}, _cube_segmenter()), [])
    (_, _, what, g3), = viz.saliency_maps(seg, [_cube_volume()])
    assert what.startswith("foreground") and g3.shape == (8, 12, 12)
    assert g3[3:5, 4:7, 4:7].min() > 0 and g3[:, 10:, 10:].max() == 0
    _png(viz.saliency(seg, [_cube_volume()]))


def test_grad_cam_on_a_classifier_and_a_segmenter() -> None:
    net = _corner_classifier()
    trained = Trained(Network("corner", {}, net), [])
    img = _corner_image()
    (_, _, what, cam), = viz.grad_cam_maps(trained, [img])  # default: the last conv layer
    assert what.startswith("class 1") and cam.shape == (16, 16)
    assert cam[1:5, 1:5].min() > 0.9 and cam[10:, 10:].max() < 1e-6
    fig = viz.grad_cam(trained, [img, Case("b", img)])
    _png(fig)
    assert fig.title == "Grad-CAM at conv" and viz.grad_cam(trained, [img, Case("b", img)]).png == fig.png
    # MONAI's hooks went on a copy
    assert all(not m._backward_hooks and not m._forward_hooks for m in net.modules())
    assert net.training and all(p.grad is None for p in net.parameters())
    with pytest.raises(ValueError, match="no layer"):
        viz.grad_cam(trained, [img], layer="nope")
    seg = Trained(Network("seg", {}, _cube_segmenter()), [])
    (_, _, what, cam3), = viz.grad_cam_maps(seg, [_cube_volume()], layer="conv")
    assert what.startswith("foreground") and cam3.shape == (8, 12, 12)
    assert cam3[3:5, 4:7, 4:7].min() > 0.5 and cam3[:, 10:, 10:].max() < 1e-6
    _png(viz.grad_cam(seg, [_cube_volume()]))


def test_tsne_separates_two_clusters() -> None:
    net = _corner_classifier()
    trained = Trained(Network("corner", {}, net), [])
    rng = np.random.default_rng(0)
    data = [Case(f"c{i}", _corner_image(value=(1.0 if i % 2 else 0.0) + float(rng.uniform(0, 0.05))))
            for i in range(16)]
    ids, feats, classes = viz.features(trained, data)
    assert ids[:2] == ["c0", "c1"] and feats.shape == (16, 3)
    assert classes.tolist() == [i % 2 for i in range(16)]
    xy = viz.embedding(feats, perplexity=30.0)  # clipped below 16 cases
    a, b = xy[classes == 0], xy[classes == 1]
    gap = np.linalg.norm(a.mean(axis=0) - b.mean(axis=0))
    spread = max(np.linalg.norm(a - a.mean(axis=0), axis=1).max(), np.linalg.norm(b - b.mean(axis=0), axis=1).max())
    assert gap > 2 * spread
    fig = viz.tsne(trained, data, perplexity=5.0)
    _png(fig)
    assert viz.tsne(trained, data, perplexity=5.0).png == fig.png
    assert fig.title == "t-SNE of penultimate features (16 cases)"
    # a segmenter's features (its head's pooled input), and too few cases to embed
    seg = Trained(Network("seg", {}, _cube_segmenter()), [])
    _, f3, c3 = viz.features(seg, [_cube_volume()])
    assert f3.shape == (1, 1) and c3.tolist() == [1]
    _png(viz.tsne(seg, [_cube_volume(), _cube_volume()]))


def _nodules() -> tuple[list[Case], list[Case]]:
    """Three scans: two nodules found at scores 0.9 and 0.6, one missed, false positives
    at 0.8, 0.5 and 0.3."""
    def box(c, r=3.0):
        return np.array(c, float) - r, np.array(c, float) + r

    def boxes(centres, scores):
        lo = np.array([box(c)[0] for c in centres]).reshape(-1, 3)
        hi = np.array([box(c)[1] for c in centres]).reshape(-1, 3)
        return Boxes(lo, hi, [1] * len(centres), scores)

    target = [Case("s1", boxes([(10, 10, 10)], [1.0])), Case("s2", boxes([(50, 50, 20), (0, 0, 0)], [1.0, 1.0])),
              Case("s3", boxes([], []))]
    pred = [Case("s3", boxes([(5, 5, 5)], [0.3])),
            Case("s1", boxes([(11, 10, 9), (40, 40, 40)], [0.9, 0.8])),
            Case("s2", boxes([(50, 51, 20), (90, 90, 90)], [0.6, 0.5]))]
    return pred, target


def test_froc_curve_agrees_with_metrics_froc() -> None:
    from medasl.ops import metrics

    pred, target = _nodules()
    rates, sens, n_scans, n_ref = viz.froc_points(pred, target)
    assert (n_scans, n_ref) == (3, 3)
    # thresholds 0.9, 0.8, 0.6, 0.5, 0.3: fp per scan and sensitivity
    np.testing.assert_allclose(rates, [0, 0, 1 / 3, 1 / 3, 2 / 3, 1])
    np.testing.assert_allclose(sens, [0, 1 / 3, 1 / 3, 2 / 3, 2 / 3, 2 / 3])
    best = np.maximum.accumulate(sens)
    cpm = np.mean([best[rates <= f].max() for f in viz.LUNA16_RATES])
    by_id = {c.id: c.value for c in pred}
    assert cpm == pytest.approx(metrics.froc([by_id[c.id] for c in target], [c.value for c in target]))
    fig = viz.froc_curve(pred=pred, target=target)
    _png(fig)
    assert fig.title == "FROC curve" and viz.froc_curve(pred, target).png == fig.png
    # plain lists by position; no reference boxes at all still draws
    _png(viz.froc_curve([c.value for c in sorted(pred, key=lambda c: c.id)], [c.value for c in target]))
    _png(viz.froc_curve([pred[0].value], [target[2].value]))
    with pytest.raises(ValueError):
        viz.froc_curve([c.value for c in pred], [target[0].value])
