"""std.viz: figures for `show` and reports (stdlib/viz.medas).

Each public function implements the operator of the same name; the executor binds them
by name (see `OPERATORS`) and calls them with keyword arguments named as in the
signature. Every operator returns a `values.Figure(title, png)`.

Conventions every operator here keeps, and why:

- Figures are drawn on `matplotlib.figure.Figure` objects rendered by the Agg backend
  (selected with `matplotlib.use("Agg")` before anything else of matplotlib is
  imported), never through pyplot's global figure list: no window ever opens, nothing
  has to be closed, and two threads drawing at once do not share state.
- The size of a figure depends only on its layout (number of panels, rows of a table)
  and the resolution is fixed (`DPI`); the PNG carries no software version or date, so
  the same inputs give the same bytes and the cache keys of reports stay stable.
- Volumes are drawn in storage order (rows are the array's y axis, columns its x axis,
  axial slices along z) with the pixel aspect ratio of the spacing, so a 0.7 x 3 mm
  slice is not squashed. Label maps are resampled onto the image's grid (nearest
  neighbour) when they lie on another one.
- Boxes are world-aligned in LPS millimetres (values.Boxes); they are converted to voxel
  indices with the image's origin, spacing and direction (`world_to_index`), which is
  SimpleITK's TransformPhysicalPointToContinuousIndex.

Not implemented yet (declared in stdlib/viz.medas, absent from `OPERATORS`): mesh,
saliency, grad_cam, tsne, froc_curve, parallel_coordinates, param_importance.
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Callable, Iterable, Sequence

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure as MplFigure  # noqa: E402
from matplotlib.patches import Patch, Rectangle  # noqa: E402

from medasl.runtime.values import Boxes, Case, Figure, Measured, Pair, Trained, Volume  # noqa: E402

DPI = 100
"""Dots per inch of every figure (sizes are in inches, so pixels = inches * DPI)."""

PANEL = 3.2
"""Width and height in inches of one image panel."""

CURVE_SIZE = (6.4, 4.0)
"""Size in inches of curve plots (training curves, ROC, box plots)."""

LABEL_ALPHA = 0.45
"""Opacity of label colours drawn over an image."""

MAX_TABLE_CASES = 40
"""Per-case rows a metrics table shows; the others are summarised in one row."""

_LABEL_COLORS = matplotlib.colormaps["tab10"].colors + matplotlib.colormaps["tab20b"].colors


# ===== rendering ==========================================================================


def _figure(width: float, height: float) -> MplFigure:
    return MplFigure(figsize=(width, height), dpi=DPI, layout="constrained")


def _render(fig: MplFigure, title: str) -> Figure:
    """The figure as PNG bytes (no metadata, so the bytes depend on the drawing only)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return Figure(title, buf.getvalue())


def _message(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def _color(value: int) -> tuple[float, float, float]:
    """The colour of class or object `value` (1, 2, ...), cycling through 30 colours."""
    return tuple(_LABEL_COLORS[(int(value) - 1) % len(_LABEL_COLORS)])  # type: ignore[return-value]


# ===== training curves ====================================================================


def _epochs(history: Sequence[dict[str, float]], key: str) -> tuple[np.ndarray, np.ndarray]:
    rows = [h for h in history if key in h and h[key] is not None]
    epochs = np.array([float(h.get("epoch", i)) for i, h in enumerate(rows)])
    return epochs, np.array([float(h[key]) for h in rows])


def _mark_best(ax: Axes, model: Trained) -> None:
    if any(float(h.get("epoch", -1)) == model.best_epoch for h in model.history):
        ax.axvline(model.best_epoch, color="0.5", linestyle="--", linewidth=1, label=f"best epoch {model.best_epoch}")


def loss_curve(model: Trained) -> Figure:
    """Training loss per epoch, and the validation loss (`val_loss`) where recorded, with
    the epoch whose weights were kept marked."""
    fig = _figure(*CURVE_SIZE)
    ax = fig.add_subplot()
    epochs, loss = _epochs(model.history, "loss")
    if not len(epochs):
        _message(ax, "no training history")
    else:
        ax.plot(epochs, loss, marker="o", markersize=3, label="training loss")
        v_epochs, v_loss = _epochs(model.history, "val_loss")
        if len(v_epochs):
            ax.plot(v_epochs, v_loss, marker="s", markersize=3, label="validation loss")
        _mark_best(ax, model)
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        ax.grid(True, alpha=0.3)
        ax.legend()
    ax.set_title("Loss")
    return _render(fig, "Loss")


def metric_curve(model: Trained) -> Figure:
    """The validation metric (`val_<metric>`) per validation round, with the best epoch
    marked. Without a named metric, every `val_*` entry except the loss is drawn."""
    if model.metric:
        keys = [f"val_{model.metric}"]
    else:
        keys = sorted({k for h in model.history for k in h if k.startswith("val_") and k != "val_loss"})
    name = model.metric or "validation metric"
    fig = _figure(*CURVE_SIZE)
    ax = fig.add_subplot()
    drawn = False
    for key in keys:
        epochs, vals = _epochs(model.history, key)
        if len(epochs):
            ax.plot(epochs, vals, marker="o", markersize=3, label=key[4:])
            drawn = True
    if not drawn:
        _message(ax, f"no validation rounds recorded for {name}")
    else:
        _mark_best(ax, model)
        goal = f" ({model.goal}imize)" if model.goal in ("max", "min") else ""
        ax.set_xlabel("epoch")
        ax.set_ylabel(name + goal)
        ax.grid(True, alpha=0.3)
        ax.legend()
    ax.set_title(f"Validation {name}")
    return _render(fig, f"Validation {name}")


# ===== volumes ============================================================================


def world_to_index(x: Volume, point: Sequence[float]) -> np.ndarray:
    """The continuous voxel index ((x, y, z) order) of world position `point` (LPS mm),
    the inverse of `origin + direction @ (spacing * index)`, as SimpleITK's
    `TransformPhysicalPointToContinuousIndex` computes it."""
    d = np.array(x.direction, dtype=float).reshape(x.dim, x.dim) * np.array(x.spacing, dtype=float)
    return np.linalg.solve(d, np.asarray(point, dtype=float) - np.array(x.origin, dtype=float))


def box_voxels(x: Volume, boxes: Boxes) -> tuple[np.ndarray, np.ndarray]:
    """The voxels each box covers on `x`'s grid: `(lo, hi)` integer arrays of shape
    `(n, D)` in (x, y, z) order, inclusive, not clipped to the image.

    A world-aligned box is a parallelepiped in index space when the direction is not an
    axis permutation; its index bounding box (over all 2^D corners) is taken. A voxel is
    covered when its centre lies in the box, so a box made from a mask (corners on the
    outer voxels' footprints, half a voxel beyond their centres) gives back that mask's
    voxels exactly.
    """
    if boxes.dim != x.dim:
        raise ValueError(f"{boxes.dim}-D boxes cannot be drawn on a {x.dim}-D image")
    n, dim = boxes.lo.shape
    lo = np.zeros((n, dim), dtype=np.int64)
    hi = np.zeros((n, dim), dtype=np.int64)
    corners = np.array(np.meshgrid(*[[0, 1]] * dim, indexing="ij")).reshape(dim, -1).T
    for i in range(n):
        pts = np.where(corners == 0, boxes.lo[i], boxes.hi[i])
        idx = np.array([world_to_index(x, p) for p in pts])
        lo[i] = np.ceil(idx.min(axis=0) - 1e-6)
        hi[i] = np.floor(idx.max(axis=0) + 1e-6)
    return lo, hi


def _spatial(v: Volume) -> np.ndarray:
    """The array with spatial axes only, 3-D `(z, y, x)` (a 2-D image gets z = 1; a 4-D
    volume its first frame; channels: RGB kept last, otherwise the first channel)."""
    a = np.asarray(v.array)
    if v.dim == 4:
        a = a[0]
    elif v.dim == 2:
        a = a[np.newaxis]
    if a.ndim == 4 and not (a.shape[-1] in (3, 4) and v.kind == "image"):
        a = a[..., 0]
    return a


def _labels_on(image: Volume, labels: Volume) -> Volume:
    """`labels` on `image`'s grid: as is, re-stored exactly, or resampled (nearest
    neighbour for label kinds, linear for probabilities), outside voxels 0."""
    if labels.dim != image.dim:
        raise ValueError(f"a {labels.dim}-D {labels.kind} map cannot be drawn over a {image.dim}-D image")
    aligned = labels.aligned_to(image)
    if aligned is not None:
        return aligned
    import SimpleITK as sitk  # noqa: N813 (the alias SimpleITK documents)

    interp = sitk.sitkLinear if labels.kind == "probs" else sitk.sitkNearestNeighbor
    img = sitk.Resample(labels.to_sitk(), image.to_sitk(), sitk.Transform(), interp, 0.0)
    return Volume.from_sitk(img, labels.kind, labels.modality, labels.source)


def _label_rgba(labels: Volume) -> tuple[np.ndarray, list[int]]:
    """An RGBA overlay `(z, y, x, 4)` of a label, instance, one-hot or probability map,
    and the classes present (for a legend; empty for instances and probabilities)."""
    a = np.asarray(labels.array)
    if labels.dim == 4:
        a = a[0]
    elif labels.dim == 2:
        a = a[np.newaxis]
    multi = a.ndim == 4
    rgba = np.zeros((*a.shape[:3], 4), dtype=np.float32)
    if labels.kind == "probs":
        p = np.asarray(a, dtype=np.float32)
        fg = (1.0 - p[..., 0]) if multi and p.shape[-1] > 1 else (p[..., 0] if multi else p)
        fg = np.clip(np.nan_to_num(fg), 0.0, 1.0)
        rgba[..., 0] = 1.0
        rgba[..., 1] = 0.2
        rgba[..., 3] = LABEL_ALPHA * fg
        return rgba, []
    if multi:  # one-hot, or several label channels: the class of the largest channel
        a = np.argmax(a, axis=-1)
    a = np.asarray(a).astype(np.int64)
    values = [int(v) for v in np.unique(a) if v > 0]
    for v in values:
        rgba[a == v] = (*_color(v), LABEL_ALPHA)
    return rgba, ([] if labels.kind == "instances" else values)


def _foreground_slices(mask: np.ndarray, n: int) -> list[int]:
    """`n` axial slice indices through the foreground of `mask` (z, y, x), spread evenly
    over the slices that hold any, or evenly over the whole volume when none does."""
    depth = mask.shape[0]
    n = max(1, min(int(n), depth))
    zs = np.flatnonzero(mask.reshape(depth, -1).any(axis=1))
    if len(zs):
        n = min(n, len(zs))
        picks = [int(zs[int((i + 0.5) * len(zs) / n)]) for i in range(n)]
    else:
        picks = [int((i + 0.5) * depth / n) for i in range(n)]
    return sorted(set(picks))


def _gray_range(a: np.ndarray) -> tuple[float, float]:
    f = np.asarray(a, dtype=np.float64)
    f = f[np.isfinite(f)]
    if not f.size:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(f, [1.0, 99.0]))
    if hi <= lo:
        lo, hi = float(f.min()), float(f.max())
    return (lo, hi) if hi > lo else (lo - 0.5, lo + 0.5)


def _show_slice(ax: Axes, image: np.ndarray, z: int, spacing: Sequence[float], vrange: tuple[float, float]) -> None:
    """Slice `z` of a `(z, y, x[, rgb])` array, with the pixel aspect of `spacing` (x, y)."""
    aspect = float(spacing[1]) / float(spacing[0])
    s = image[z]
    if s.ndim == 3:  # RGB(A)
        f = s.astype(np.float64)
        s = np.clip(f / 255.0 if f.max() > 1.0 else f, 0.0, 1.0)
        ax.imshow(s, aspect=aspect, interpolation="nearest")
    else:
        ax.imshow(s, cmap="gray", vmin=vrange[0], vmax=vrange[1], aspect=aspect, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def overlay(image: Volume, labels: Volume, slices: int = 3) -> Figure:
    """Labels drawn over an image, one colour per class (or object, for instances);
    probability maps as a red wash whose opacity is the foreground probability.

    3-D volumes show `slices` axial slices through the labels' foreground (evenly
    spaced over the slices that hold any; evenly over the volume when it is empty); 2-D
    images are shown whole. The labels are brought onto the image's grid first."""
    if int(slices) < 1:
        raise ValueError(f"slices must be at least 1, not {slices}")
    lab = _labels_on(image, labels)
    img = _spatial(image)
    rgba, classes = _label_rgba(lab)
    zs = _foreground_slices(rgba[..., 3] > 0, int(slices)) if image.dim >= 3 else [0]
    vrange = _gray_range(img)
    fig = _figure(PANEL * len(zs), PANEL + 0.5)
    axes = fig.subplots(1, len(zs), squeeze=False)[0]
    for ax, z in zip(axes, zs):
        _show_slice(ax, img, z, image.spacing, vrange)
        ax.imshow(rgba[z], aspect=float(image.spacing[1]) / float(image.spacing[0]), interpolation="nearest")
        if image.dim >= 3:
            ax.set_title(f"z = {z}", fontsize=9)
    return _legend_and_render(fig, classes, f"{lab.kind} over image")


def box_overlay(image: Volume, boxes: Boxes) -> Figure:
    """Boxes drawn over an image on the axial slices through their centres (at most six
    slices, those of the highest-scoring boxes), each box on every shown slice it spans,
    coloured by class and labelled with its score. 2-D images are shown whole."""
    img = _spatial(image)
    lo, hi = box_voxels(image, boxes)
    depth = img.shape[0]
    if image.dim >= 3 and len(boxes):
        order = np.argsort(-boxes.scores, kind="stable")
        zs: list[int] = []
        for i in order:
            z = int(np.clip(round((lo[i, 2] + hi[i, 2]) / 2.0), 0, depth - 1))
            if z not in zs:
                zs.append(z)
            if len(zs) == 6:
                break
        zs.sort()
    else:
        zs = [depth // 2]
    vrange = _gray_range(img)
    fig = _figure(PANEL * len(zs), PANEL + 0.5)
    axes = fig.subplots(1, len(zs), squeeze=False)[0]
    classes: list[int] = []
    for ax, z in zip(axes, zs):
        _show_slice(ax, img, z, image.spacing, vrange)
        for i in range(len(boxes)):
            if image.dim >= 3 and not lo[i, 2] <= z <= hi[i, 2]:
                continue
            c = int(boxes.classes[i])
            classes.append(c)
            ax.add_patch(Rectangle((lo[i, 0] - 0.5, lo[i, 1] - 0.5), hi[i, 0] - lo[i, 0] + 1, hi[i, 1] - lo[i, 1] + 1,
                                   fill=False, edgecolor=_color(c), linewidth=1.5))
            ax.text(lo[i, 0] - 0.5, lo[i, 1] - 1.0, f"{boxes.scores[i]:.2f}", color=_color(c), fontsize=7, va="bottom")
        ax.set_xlim(-0.5, img.shape[2] - 0.5)
        ax.set_ylim(img.shape[1] - 0.5, -0.5)
        if image.dim >= 3:
            ax.set_title(f"z = {z}", fontsize=9)
    if not len(boxes):
        axes[0].set_xlabel("no boxes")
    return _legend_and_render(fig, sorted(set(classes)), f"{len(boxes)} boxes over image")


def _legend_and_render(fig: MplFigure, classes: Sequence[int], title: str) -> Figure:
    """A colour legend of (at most ten) classes under the panels, the title, and the PNG."""
    if classes:
        handles = [Patch(color=_color(c), label=f"class {c}") for c in list(classes)[:10]]
        fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 5), fontsize=8)
    fig.suptitle(title)
    return _render(fig, title)


# ===== explaining trained networks ========================================================


def _inputs(data: object, limit: int) -> list[tuple[str, Volume]]:
    """The first `limit` input volumes of a dataset (cases, pairs or bare volumes)."""
    items: Iterable[object] = [data] if isinstance(data, (Volume, Case, Pair)) else data  # type: ignore[assignment]
    out: list[tuple[str, Volume]] = []
    for i, item in enumerate(items):
        name = f"case {i}"
        if isinstance(item, Case):
            name, item = item.id, item.value
        if isinstance(item, Pair):
            item = item.input
        if not isinstance(item, Volume):
            raise TypeError(f"occlusion needs image volumes, not {type(item).__name__}")
        out.append((name, item))
        if len(out) == limit:
            break
    return out


def _activate(logits: object) -> object:
    """Class probabilities from classifier logits `(N, K)`: softmax, or sigmoid for one logit."""
    return logits.softmax(1) if logits.shape[1] > 1 else logits.sigmoid()  # type: ignore[attr-defined]


def occlusion_maps(model: Trained, data: object, patch: int = 8, stride: int = 8,
                   cases: int = 3) -> list[tuple[str, Volume, int, float, np.ndarray]]:
    """The numbers `occlusion` draws, for the first `cases` cases: `(case id, input,
    predicted class, its probability, drop)` where `drop` (array order, spatial axes
    only) is that probability minus the probability with the patch around each voxel
    occluded."""
    import torch
    from monai.visualize import OcclusionSensitivity

    if int(patch) < 1 or int(stride) < 1:
        raise ValueError(f"patch and stride must be at least 1, got {patch} and {stride}")
    module = model.network.module
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"occlusion needs a torch module, not {type(module).__name__}")
    items = _inputs(data, cases)
    if not items:
        raise ValueError("occlusion needs at least one case")
    overlap = max(0.0, 1.0 - int(stride) / int(patch))
    was_training = module.training
    module.eval()
    rows = []
    try:
        for name, vol in items:
            a = np.asarray(vol.array, dtype=np.float32)
            x = a[np.newaxis] if a.ndim == vol.dim else np.moveaxis(a, -1, 0)
            spatial = x.shape[1:]
            mask = [min(int(patch), n) for n in spatial]
            # activate=True would choose sigmoid or softmax by the number of *input* channels
            occ = OcclusionSensitivity(module, mask_size=mask, n_batch=16, verbose=False, mode="mean_img",
                                       overlap=overlap, activate=_activate)
            t = torch.from_numpy(np.ascontiguousarray(x))[None]
            with torch.no_grad():
                logits = module(t)
                probs = _activate(logits)
                cls = int(torch.argmax(probs[0])) if probs.shape[1] > 1 else 0
                with warnings.catch_warnings():  # MONAI indexes tensors with lists (a torch deprecation)
                    warnings.simplefilter("ignore", UserWarning)
                    occ_map, _ = occ(t)
            # occ_map: (1, K, *spatial), the class probabilities with the patch around each voxel occluded
            drop = float(probs[0, cls]) - occ_map[0, cls].numpy()
            rows.append((name, vol, cls, float(probs[0, cls]), drop))
    finally:
        module.train(was_training)
    return rows


def occlusion(model: Trained, data: object, patch: int = 8, stride: int = 8) -> Figure:
    """Occlusion sensitivity (Zeiler and Fergus 2014) of a trained classifier on the first
    three cases of `data`, with MONAI's `visualize.OcclusionSensitivity`.

    A `patch`-voxel cube (clipped to the image) is replaced by the image mean and moved
    by `stride` voxels (MONAI's `overlap = 1 - stride / patch`; a stride above the patch
    leaves no gaps, it is the patch); the map is the drop of the softmax probability of
    the class predicted on the whole image, so bright regions are those the decision
    depends on. A 3-D case is shown on its axial slice with the largest change, the
    image on the left and the map over it on the right.
    """
    rows = occlusion_maps(model, data, patch, stride)
    fig = _figure(2 * PANEL, (PANEL + 0.3) * len(rows) + 0.4)
    axes = fig.subplots(len(rows), 2, squeeze=False)
    limit = max(float(np.max(np.abs(r[4]))) for r in rows) or 1.0
    for (name, vol, cls, p, drop), (ax_img, ax_map) in zip(rows, axes):
        img = _spatial(vol)
        d3 = drop if drop.ndim == 3 else drop[np.newaxis]
        z = int(np.argmax(np.abs(d3).reshape(d3.shape[0], -1).max(axis=1)))
        vrange = _gray_range(img)
        _show_slice(ax_img, img, z, vol.spacing, vrange)
        _show_slice(ax_map, img, z, vol.spacing, vrange)
        im = ax_map.imshow(d3[z], cmap="coolwarm", vmin=-limit, vmax=limit, alpha=0.6,
                           aspect=float(vol.spacing[1]) / float(vol.spacing[0]), interpolation="nearest")
        where = f", z = {z}" if vol.dim >= 3 else ""
        ax_img.set_title(f"{name}{where}", fontsize=9)
        ax_map.set_title(f"class {cls} (p = {p:.2f}): drop", fontsize=9)
    fig.colorbar(im, ax=axes[:, 1].tolist(), shrink=0.8, label="probability drop")
    title = "Occlusion sensitivity"
    fig.suptitle(title)
    return _render(fig, title)


# ===== classifiers ========================================================================


def _paired(pred: object, target: object) -> tuple[np.ndarray, np.ndarray]:
    """Scores `(n, K)` and classes `(n,)` of two datasets, matched by case id when both
    hold cases, else by position."""
    p_items = list(pred) if not isinstance(pred, np.ndarray) else list(pred)  # type: ignore[call-overload]
    t_items = list(target) if not isinstance(target, np.ndarray) else list(target)  # type: ignore[call-overload]
    if p_items and t_items and all(isinstance(c, Case) for c in p_items) and all(isinstance(c, Case) for c in t_items):
        targets = {c.id: c.value for c in t_items}
        missing = [c.id for c in p_items if c.id not in targets]
        if missing:
            raise ValueError(f"no target for case(s) {', '.join(missing[:5])}")
        pairs = [(c.value, targets[c.id]) for c in p_items]
    else:
        if len(p_items) != len(t_items):
            raise ValueError(f"{len(p_items)} predictions but {len(t_items)} targets")
        pairs = [(c.value if isinstance(c, Case) else c, t.value if isinstance(t, Case) else t)
                 for c, t in zip(p_items, t_items)]
    if not pairs:
        raise ValueError("no cases to compare")
    scores = [np.atleast_1d(np.asarray(p, dtype=np.float64)).reshape(-1) for p, _ in pairs]
    if len({s.shape[0] for s in scores}) != 1:
        raise ValueError("predictions hold different numbers of classes")
    s = np.stack(scores)
    if s.shape[1] == 1:  # one probability of the positive class
        s = np.concatenate([1.0 - s, s], axis=1)
    classes = np.array([int(np.asarray(t).reshape(-1)[0]) for _, t in pairs], dtype=np.int64)
    if classes.min() < 0 or classes.max() >= s.shape[1]:
        raise ValueError(f"target classes {classes.min()}..{classes.max()} outside 0..{s.shape[1] - 1}")
    return s, classes


def roc_curve(pred: object, target: object) -> Figure:
    """ROC curves with their AUC (scikit-learn `metrics.roc_curve`, `metrics.auc`), one
    per class against the rest; for two classes only the positive class (1). A class
    that is never or always the target has no curve and is named in the legend."""
    from sklearn.metrics import auc
    from sklearn.metrics import roc_curve as sk_roc

    scores, classes = _paired(pred, target)
    k = scores.shape[1]
    fig = _figure(CURVE_SIZE[1] + 1.0, CURVE_SIZE[1])
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="0.7", linestyle=":", linewidth=1)
    for c in ([1] if k == 2 else range(k)):
        positive = classes == c
        if positive.all() or not positive.any():
            ax.plot([], [], color="none", label=f"class {c}: undefined")
            continue
        fpr, tpr, _ = sk_roc(positive.astype(int), scores[:, c])
        ax.plot(fpr, tpr, color=_color(c + 1) if k > 2 else "C0", label=f"class {c}: AUC = {auc(fpr, tpr):.3f}")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(f"ROC ({len(classes)} cases)")
    return _render(fig, "ROC curve")


def confusion_matrix(pred: object, target: object) -> Figure:
    """The confusion matrix (scikit-learn `metrics.confusion_matrix`) of predicted
    classes (the largest score) against target classes, counts in each cell."""
    from sklearn.metrics import confusion_matrix as sk_confusion

    scores, classes = _paired(pred, target)
    k = scores.shape[1]
    m = sk_confusion(classes, np.argmax(scores, axis=1), labels=list(range(k)))
    side = min(2.5 + 0.6 * k, 10.0)
    fig = _figure(side + 1.0, side)
    ax = fig.add_subplot()
    im = ax.imshow(m, cmap="Blues", vmin=0)
    half = m.max() / 2.0 if m.size else 0
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(int(m[i, j])), ha="center", va="center", fontsize=9,
                    color="white" if m[i, j] > half else "black")
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    ax.set_xlabel("predicted class")
    ax.set_ylabel("target class")
    fig.colorbar(im, ax=ax, shrink=0.8)
    ax.set_title(f"Confusion matrix ({len(classes)} cases)")
    return _render(fig, "Confusion matrix")


# ===== metrics ============================================================================


def summary(values: Iterable[float]) -> dict[str, float]:
    """n, mean, standard deviation (population), median and quartiles of the finite
    values (NaN marks an undefined case and is skipped); NaN statistics when none."""
    v = np.array([float(x) for x in values], dtype=np.float64)
    v = v[np.isfinite(v)]
    if not v.size:
        nan = float("nan")
        return {"n": 0, "mean": nan, "std": nan, "median": nan, "q1": nan, "q3": nan}
    q1, med, q3 = (float(x) for x in np.percentile(v, [25.0, 50.0, 75.0]))
    return {"n": int(v.size), "mean": float(v.mean()), "std": float(v.std()), "median": med, "q1": q1, "q3": q3}


def _fmt(v: float) -> str:
    return "NaN" if not math.isfinite(float(v)) else f"{float(v):.4g}"


def metrics_table(metric: Measured) -> Figure:
    """A metric's value per case, with n, mean, standard deviation, median and quartiles,
    and the per-class means, drawn as a table. The stdlib type `Table` is this Figure
    (a rendered table) at run time; `report.csv`/`excel` write the numbers themselves.
    At most `MAX_TABLE_CASES` cases are listed, the rest counted in one row."""
    rows: list[list[str]] = []
    cases = list(metric.per_case.items())
    for cid, v in cases[:MAX_TABLE_CASES]:
        rows.append([str(cid), _fmt(v)])
    if len(cases) > MAX_TABLE_CASES:
        rows.append([f"... {len(cases) - MAX_TABLE_CASES} more cases", ""])
    stats = summary(metric.per_case.values()) if cases else None
    rows.append([f"value ({metric.goal})", _fmt(metric.value)])
    if stats is not None:
        rows += [["n", str(stats["n"])], ["mean", _fmt(stats["mean"])], ["std", _fmt(stats["std"])],
                 ["median", _fmt(stats["median"])], ["q1 .. q3", f"{_fmt(stats['q1'])} .. {_fmt(stats['q3'])}"]]
    rows += [[f"class {c}", _fmt(v)] for c, v in metric.per_class.items()]
    fig = _figure(4.5, 0.6 + 0.24 * (len(rows) + 1))
    ax = fig.add_subplot()
    ax.axis("off")
    table = ax.table(cellText=rows, colLabels=["case", metric.name], loc="upper center", cellLoc="left")
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    title = f"{metric.name} per case"
    ax.set_title(title)
    return _render(fig, title)


def metric_boxplot(metric: Measured) -> Figure:
    """A box plot of a metric's per-case values (NaN skipped), every case drawn as a
    point beside it, and the mean as a diamond. Without per-case values, the value."""
    s = summary(metric.per_case.values())
    values = np.array([float(v) for v in metric.per_case.values()], dtype=np.float64)
    values = values[np.isfinite(values)]
    fig = _figure(4.0, CURVE_SIZE[1])
    ax = fig.add_subplot()
    if values.size:
        ax.boxplot([values], positions=[1], widths=0.5, showfliers=False)
        offsets = np.linspace(-0.12, 0.12, values.size) if values.size > 1 else np.zeros(1)
        ax.scatter(1.45 + offsets, values, s=10, color="C0", alpha=0.7)
        ax.scatter([1], [s["mean"]], marker="D", color="C3", zorder=3, label=f"mean {_fmt(s['mean'])}")
        ax.legend(fontsize=8)
    elif math.isfinite(metric.value):
        ax.scatter([1], [metric.value], marker="D", color="C3")
    else:
        _message(ax, "no values")
    ax.set_xticks([1])
    ax.set_xticklabels([metric.name])
    ax.set_xlim(0.4, 1.9)
    ax.set_ylabel(f"{metric.name} ({metric.goal})")
    ax.grid(True, axis="y", alpha=0.3)
    title = f"{metric.name} ({s['n']} cases)"
    ax.set_title(title)
    return _render(fig, title)


OPERATORS: dict[str, Callable[..., object]] = {
    "loss_curve": loss_curve, "metric_curve": metric_curve, "overlay": overlay, "box_overlay": box_overlay,
    "occlusion": occlusion, "roc_curve": roc_curve, "confusion_matrix": confusion_matrix,
    "metrics_table": metrics_table, "metric_boxplot": metric_boxplot,
}
"""The std.viz operators implemented here, by the name of their stdlib signature."""
