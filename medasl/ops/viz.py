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

The study figures (optimization_history, parallel_coordinates, param_importance) read
the study.json that `medasc tune` writes.
"""

from __future__ import annotations

import io
import json
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


MESH_SIDE = 96
"""Voxels along a volume's longest axis above which `mesh` steps marching cubes coarser."""


def mesh_surfaces(x: Volume) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """`(class, vertices, faces)` of each foreground class of a 3-D label map, by
    scikit-image's `measure.marching_cubes` at level 0.5 on the class's mask (padded
    with background, so surfaces are closed). Vertices are in mm along the array axes
    `(z, y, x)` from the first voxel's centre (the spacing in array order); a class
    covering voxels i..j along an axis spans (i - 1/2)..(j + 1/2) voxels there. The step
    is coarser than one voxel for volumes over `MESH_SIDE` voxels long."""
    from skimage.measure import marching_cubes

    if x.dim != 3:
        raise ValueError(f"mesh needs a 3-D label map, not a {x.dim}-D one")
    a = np.asarray(x.array)
    if a.ndim == 4:  # one-hot or several label channels: the class of the largest channel
        a = np.argmax(a, axis=-1)
    a = a.astype(np.int64)
    sp = tuple(float(s) for s in x.spacing[::-1])
    step = max(1, math.ceil(max(a.shape) / MESH_SIDE))
    out = []
    for c in (int(v) for v in np.unique(a) if v > 0):
        mask = np.pad((a == c).astype(np.float32), 1)
        verts, faces, _, _ = marching_cubes(mask, level=0.5, spacing=sp, step_size=step, allow_degenerate=False)
        out.append((c, verts - np.array(sp), faces))
    return out


def mesh(x: Volume) -> Figure:
    """A 3-D surface of each foreground class of a label map (see `mesh_surfaces`),
    drawn with matplotlib's mplot3d, one colour per class, lit from a fixed light and
    seen from a fixed angle (elevation 20 degrees, azimuth -60), axes in mm with equal
    scales. The figure is a static PNG (no interactive view). Instances are drawn as
    classes, one colour per object."""
    from mpl_toolkits.mplot3d.art3d import Poly3DCollection

    surfaces = mesh_surfaces(x)
    fig = _figure(5.6, 5.0)
    ax = fig.add_subplot(projection="3d")
    sp = np.array(x.spacing[::-1], dtype=float)
    shape = np.array(np.asarray(x.array).shape[:3], dtype=float)
    lo, hi = -sp / 2.0, (shape - 0.5) * sp  # the volume's extent (z, y, x) in mm
    for c, verts, faces in surfaces:
        tri = verts[faces][..., ::-1]  # (x, y, z) for drawing
        ax.add_collection3d(Poly3DCollection(tri, facecolors=_color(c), linewidths=0, shade=True))
    if not surfaces:
        ax.text2D(0.5, 0.5, "no foreground", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlim(lo[2], hi[2])
    ax.set_ylim(lo[1], hi[1])
    ax.set_zlim(lo[0], hi[0])
    ax.set_box_aspect(tuple((hi - lo)[::-1]))
    ax.view_init(elev=20, azim=-60)
    ax.set_xlabel("x (mm)", fontsize=8)
    ax.set_ylabel("y (mm)", fontsize=8)
    ax.set_zlabel("z (mm)", fontsize=8)
    ax.tick_params(labelsize=7)
    classes = [c for c, _, _ in surfaces]
    return _legend_and_render(fig, classes, f"Surface of {len(classes)} classes" if classes else "Surface (empty)")


# ===== explaining trained networks ========================================================


def _inputs(data: object, limit: int, what: str = "occlusion") -> list[tuple[str, Volume]]:
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
            raise TypeError(f"{what} needs image volumes, not {type(item).__name__}")
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
            t = _tensor(vol)
            mask = [min(int(patch), n) for n in t.shape[2:]]
            # activate=True would choose sigmoid or softmax by the number of *input* channels
            occ = OcclusionSensitivity(module, mask_size=mask, n_batch=16, verbose=False, mode="mean_img",
                                       overlap=overlap, activate=_activate)
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
    rows = [(name, vol, f"class {cls} (p = {p:.2f}): drop", drop)
            for name, vol, cls, p, drop in occlusion_maps(model, data, patch, stride)]
    return _draw_maps(rows, "Occlusion sensitivity", "probability drop", "coolwarm", symmetric=True)


EXPLAIN_CASES = 3
"""Cases `saliency` and `grad_cam` draw (the first ones of the dataset)."""


def _tensor(vol: Volume) -> object:
    """`vol` as the `(1, C, *spatial)` float32 tensor a network takes (array order)."""
    import torch

    a = np.array(vol.array, dtype=np.float32)  # a copy: cached arrays are read-only memory maps
    x = a[np.newaxis] if a.ndim == vol.dim else np.moveaxis(a, -1, 0)
    return torch.from_numpy(np.ascontiguousarray(x))[None]


def _module(model: Trained, what: str) -> object:
    import torch

    module = model.network.module
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"{what} needs a torch module, not {type(module).__name__}")
    return module


def _scorer(module: object) -> object:
    """A module around `module` whose output `(N, K')` holds one score per class to explain.

    Classifier logits `(N, K)` are passed on (one logit `l` becomes `(-l, l)`, so class 0
    and 1 both have a score); segmentation logits `(N, K, *spatial)` become one score
    `(N, 1)`: the sum, over the voxels predicted foreground (argmax > 0; for one channel,
    logit > 0), of the logit of the class predicted there."""
    import torch

    class Scored(torch.nn.Module):
        def __init__(self, net: torch.nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.net(x)
            if out.ndim == 2:
                return torch.cat([-out, out], dim=1) if out.shape[1] == 1 else out
            if out.shape[1] == 1:
                logit = out[:, 0]
                return (logit * (logit > 0)).flatten(1).sum(1, keepdim=True)
            pred = out.argmax(1, keepdim=True)
            chosen = out.gather(1, pred) * (pred > 0)
            return chosen.flatten(1).sum(1, keepdim=True)

    return Scored(module)


def _explained(model: Trained, data: object, what: str, explain: Callable[[object, object, int], object],
               cases: int = EXPLAIN_CASES) -> list[tuple[str, Volume, str, np.ndarray]]:
    """`(case id, input, what the map explains, map)` for the first `cases` cases: `explain(
    scored module, input tensor, class index)` gives a `(1, 1 or C, *spatial)` map; the
    map returned is its largest absolute value over channels (array order, spatial axes)."""
    import torch

    module = _module(model, what)
    items = _inputs(data, cases, what)
    if not items:
        raise ValueError(f"{what} needs at least one case")
    scored = _scorer(module)
    was_training = module.training
    # only the input's gradient is needed: the weights' are neither computed nor left behind
    grads = [(p, p.requires_grad) for p in module.parameters()]  # type: ignore[attr-defined]
    for p, _ in grads:
        p.requires_grad_(False)
    module.eval()
    rows = []
    try:
        for name, vol in items:
            t = _tensor(vol)
            with torch.no_grad():
                out = scored(t)
            cls = int(out[0].argmax())
            label = (f"class {cls} (logit {float(out[0, cls]):.2f})" if out.shape[1] > 1
                     else f"foreground (score {float(out[0, 0]):.3g})")
            with warnings.catch_warnings():  # torch warns that no weight needs a gradient
                warnings.simplefilter("ignore", UserWarning)
                m = explain(scored, t, cls)
            m = m.detach().numpy() if hasattr(m, "detach") else np.asarray(m)
            rows.append((name, vol, label, np.abs(np.asarray(m[0], dtype=np.float64)).max(axis=0)))
    finally:
        module.train(was_training)
        for p, flag in grads:
            p.requires_grad_(flag)
    return rows


def saliency_maps(model: Trained, data: object, cases: int = EXPLAIN_CASES) -> list[tuple[str, Volume, str, np.ndarray]]:
    """The numbers `saliency` draws: `(case id, input, what is explained, |d score / d
    input|)` (the largest over input channels; array order, spatial axes only)."""
    from monai.visualize import VanillaGrad

    def explain(scored: object, t: object, cls: int) -> object:
        return VanillaGrad(scored)(t.clone(), index=cls)  # type: ignore[attr-defined]

    return _explained(model, data, "saliency", explain, cases)


def saliency(model: Trained, data: object) -> Figure:
    """Vanilla gradient saliency (Simonyan et al. 2014) of a trained network on the first
    three cases of `data`, with MONAI's `visualize.VanillaGrad`: the absolute gradient
    of a score with respect to each input voxel (the largest over input channels).

    For a classifier the score is the logit of the class predicted on the whole image;
    for a segmentation network (logits `(N, K, *spatial)`) it is the sum, over the
    voxels predicted foreground, of the logit of the class predicted there (zero, and a
    blank map, when nothing is predicted foreground). A 3-D case is shown on its axial
    slice with the largest gradient, as `occlusion` shows its maps."""
    rows = saliency_maps(model, data)
    return _draw_maps(rows, "Gradient saliency", "|d score / d input|", "magma", symmetric=False)


def _last_conv(module: object) -> str:
    import torch

    names = [n for n, m in module.named_modules() if isinstance(m, torch.nn.modules.conv._ConvNd)]  # type: ignore[attr-defined]
    if not names:
        raise ValueError("grad_cam found no convolutional layer in the network; name one with layer=")
    return names[-1]


def _unit(m: object) -> object:
    """A map divided by its largest value (zero stays zero); MONAI's default normalizer
    would map the largest value to 0 and the smallest to 1."""
    top = m.flatten(1).max(1).values.clamp_min(1e-12)  # type: ignore[attr-defined]
    return m / top.view(-1, *[1] * (m.ndim - 1))  # type: ignore[attr-defined]


def grad_cam_maps(model: Trained, data: object, layer: str | None = None,
                  cases: int = EXPLAIN_CASES) -> list[tuple[str, Volume, str, np.ndarray]]:
    """The numbers `grad_cam` draws: `(case id, input, what is explained, map)`, the map
    upsampled to the input's grid by MONAI and divided by its largest value (array order)."""
    import copy

    from monai.visualize import GradCAM

    module = _module(model, "grad_cam")
    names = {n for n, _ in module.named_modules() if n}  # type: ignore[attr-defined]
    target = _last_conv(module) if layer is None else str(layer)
    if target not in names:
        raise ValueError(f"the network has no layer {target!r}; its layers are {', '.join(sorted(names)[:20])}")

    def explain(scored: object, t: object, cls: int) -> object:
        # MONAI registers hooks it never removes (and turns off `inplace` on the layer):
        # it works on a copy, so the trained network is left as it was
        cam = GradCAM(nn_module=copy.deepcopy(scored), target_layers=f"net.{target}", postprocessing=_unit)
        return cam(t.clone().requires_grad_(True), class_idx=cls)  # type: ignore[attr-defined]

    return _explained(model, data, "grad_cam", explain, cases)


def grad_cam(model: Trained, data: object, layer: str | None = None) -> Figure:
    """Grad-CAM class activation maps (Selvaraju et al. 2017) of a trained network on the
    first three cases of `data`, with MONAI's `visualize.GradCAM` at `layer` (a module
    name as `named_modules` gives it; default: the last convolutional layer).

    For a classifier the map explains the class predicted on the whole image. For a
    segmentation network it explains the same score as `saliency`: the summed logit of
    the predicted class over the voxels predicted foreground, so it shows where the
    features at `layer` raise the foreground prediction (the default layer of such a
    network is often its 1x1 output convolution, whose map is close to the predicted
    foreground itself: name an earlier layer for a coarser view). The maps are ReLU'd,
    upsampled to the input's grid (MONAI) and divided by their largest value per case,
    so 0 is no activation and 1 the strongest."""
    rows = grad_cam_maps(model, data, layer)
    where = layer if layer is not None else _last_conv(_module(model, "grad_cam"))
    return _draw_maps(rows, f"Grad-CAM at {where}", "class activation", "jet", symmetric=False)


def _draw_maps(rows: list[tuple[str, Volume, str, np.ndarray]], title: str, label: str, cmap: str,
               symmetric: bool) -> Figure:
    """Each case's image (left) and its map over it (right), on the axial slice where
    the map is largest (3-D), with a shared colour scale."""
    fig = _figure(2 * PANEL, (PANEL + 0.3) * len(rows) + 0.4)
    axes = fig.subplots(len(rows), 2, squeeze=False)
    limit = max(float(np.max(np.abs(r[3]))) for r in rows) or 1.0
    vmin = -limit if symmetric else 0.0
    for (name, vol, what, m), (ax_img, ax_map) in zip(rows, axes):
        img = _spatial(vol)
        m3 = m if m.ndim == 3 else m[np.newaxis]
        z = int(np.argmax(np.abs(m3).reshape(m3.shape[0], -1).max(axis=1)))
        vrange = _gray_range(img)
        _show_slice(ax_img, img, z, vol.spacing, vrange)
        _show_slice(ax_map, img, z, vol.spacing, vrange)
        im = ax_map.imshow(m3[z], cmap=cmap, vmin=vmin, vmax=limit, alpha=0.6,
                           aspect=float(vol.spacing[1]) / float(vol.spacing[0]), interpolation="nearest")
        where = f", z = {z}" if vol.dim >= 3 else ""
        ax_img.set_title(f"{name}{where}", fontsize=9)
        ax_map.set_title(what, fontsize=9)
    fig.colorbar(im, ax=axes[:, 1].tolist(), shrink=0.8, label=label)
    fig.suptitle(title)
    return _render(fig, title)


TSNE_CASES = 500
"""Cases `tsne` embeds at most (the first ones of the dataset)."""


def _head(module: object) -> object:
    """The network's final linear or convolutional layer (its head)."""
    import torch

    heads = [m for m in module.modules() if isinstance(m, (torch.nn.Linear, torch.nn.modules.conv._ConvNd))]  # type: ignore[attr-defined]
    if not heads:
        raise ValueError("tsne found no linear or convolutional layer in the network to take features before")
    return heads[-1]


def features(model: Trained, data: object, cases: int = TSNE_CASES) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Case ids, penultimate features `(n, F)` and predicted classes `(n,)` of the first
    `cases` cases: the input of the network's last linear or convolutional layer (its
    head), averaged over the spatial axes. The predicted class of a classifier is its
    largest logit (a single logit: positive is class 1); of a segmentation network, the
    foreground class predicted at the most voxels (0 when none)."""
    import torch

    module = _module(model, "tsne")
    items = _inputs(data, cases, "tsne")
    if not items:
        raise ValueError("tsne needs at least one case")
    captured: list[torch.Tensor] = []

    def hook(_mod: object, args: tuple) -> None:
        captured.append(args[0].detach())

    handle = _head(module).register_forward_pre_hook(hook)
    was_training = module.training
    module.eval()
    feats, classes = [], []
    try:
        with torch.no_grad():
            for _, vol in items:
                captured.clear()
                out = module(_tensor(vol))
                if not captured:
                    raise ValueError("tsne: the network's last linear or convolutional layer is not used in its forward")
                f = captured[-1]
                feats.append((f.flatten(2).mean(2) if f.ndim > 2 else f.reshape(f.shape[0], -1))[0].numpy())
                if out.ndim == 2:
                    classes.append(int(out[0].argmax()) if out.shape[1] > 1 else int(out[0, 0] > 0))
                else:
                    pred = out[0].argmax(0) if out.shape[1] > 1 else (out[0, 0] > 0).long()
                    counts = torch.bincount(pred.flatten(), minlength=out.shape[1])
                    counts[0] = 0
                    classes.append(int(counts.argmax()) if int(counts.max()) > 0 else 0)
    finally:
        handle.remove()
        module.train(was_training)
    return [n for n, _ in items], np.stack(feats).astype(np.float64), np.array(classes, dtype=np.int64)


def embedding(feats: np.ndarray, perplexity: float = 30.0) -> np.ndarray:
    """The 2-D t-SNE embedding `(n, 2)` of `feats` (scikit-learn `manifold.TSNE`, random
    state 0, PCA initialisation when there are two features or more, the exact gradient:
    at most `TSNE_CASES` points, where Barnes-Hut saves nothing and is slower here). The perplexity is
    clipped below the number of cases, to (n - 1) / 3 (at least 1): t-SNE looks at the 3 x
    perplexity nearest neighbours of each point, and with a perplexity near n every point
    is every other's neighbour and the clusters dissolve."""
    from sklearn.manifold import TSNE

    n = feats.shape[0]
    if float(perplexity) <= 0:
        raise ValueError(f"perplexity must be positive, not {perplexity}")
    if n < 3:
        return np.column_stack([np.arange(n, dtype=np.float64), np.zeros(n)])
    p = min(float(perplexity), max(1.0, (n - 1.0) / 3.0))
    init = "pca" if feats.shape[1] >= 2 else "random"
    return TSNE(n_components=2, perplexity=p, init=init, method="exact", random_state=0,
                max_iter=1000).fit_transform(feats)


def tsne(model: Trained, data: object, perplexity: float = 30.0) -> Figure:
    """The t-SNE embedding (van der Maaten and Hinton 2008; scikit-learn `manifold.TSNE`)
    of the network's penultimate features, one point per case (at most `TSNE_CASES`),
    coloured by predicted class. The features are the input of the last linear or
    convolutional layer, averaged over the spatial axes (see `features`); the
    perplexity is clipped below the number of cases. Fewer than three cases are drawn
    on a line, unembedded."""
    _, feats, classes = features(model, data)
    xy = embedding(feats, perplexity)
    fig = _figure(CURVE_SIZE[1] + 1.5, CURVE_SIZE[1])
    ax = fig.add_subplot()
    for c in sorted(set(classes.tolist())):
        sel = classes == c
        ax.scatter(xy[sel, 0], xy[sel, 1], s=18, color=_color(c + 1), label=f"class {c} ({int(sel.sum())})")
    fig.legend(loc="outside right upper", fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    title = f"t-SNE of penultimate features ({len(classes)} cases)"
    ax.set_title(title, fontsize=10)
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


LUNA16_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
"""The false positives per scan at which LUNA16 reads the sensitivity (its CPM averages them)."""


def _box_sets(data: object) -> list[tuple[str, Boxes]]:
    items = [data] if isinstance(data, (Boxes, Case)) else list(data)  # type: ignore[call-overload]
    out = []
    for i, item in enumerate(items):
        name = item.id if isinstance(item, Case) else f"case {i}"
        value = item.value if isinstance(item, Case) else item
        if not isinstance(value, Boxes):
            raise TypeError(f"froc_curve needs boxes, not {type(value).__name__}")
        out.append((name, value))
    return out


def froc_points(pred: object, target: object) -> tuple[np.ndarray, np.ndarray, int, int]:
    """The operating points of the FROC curve: `(false positives per scan, sensitivity)`
    from the strictest score threshold down (starting at (0, 0)), the number of scans and
    of reference boxes. Box sets are matched by case id when both hold cases, else by
    position; the points are `metrics.froc_operating_points`, so the curve's staircase
    read at `LUNA16_RATES` averages to `metrics.froc`."""
    from medasl.ops.metrics import froc_operating_points

    p_items, t_items = _box_sets(pred), _box_sets(target)
    if p_items and t_items and all(isinstance(c, Case) for c in ([pred] if isinstance(pred, Case) else pred)) \
            and all(isinstance(c, Case) for c in ([target] if isinstance(target, Case) else target)):
        preds = dict(p_items)
        missing = [n for n, _ in t_items if n not in preds]
        if missing:
            raise ValueError(f"no predicted boxes for case(s) {', '.join(missing[:5])}")
        pairs = [(preds[n], ref) for n, ref in t_items]
    else:
        if len(p_items) != len(t_items):
            raise ValueError(f"{len(p_items)} predicted box sets for {len(t_items)} targets")
        pairs = [(p, t) for (_, p), (_, t) in zip(p_items, t_items)]
    return froc_operating_points([p for p, _ in pairs], [t for _, t in pairs])


def froc_curve(pred: object, target: object) -> Figure:
    """The FROC curve (LUNA16, Setio et al. 2017): sensitivity against false positives per
    scan as the score threshold falls, a staircase (the best sensitivity at or below each
    rate), on a logarithmic rate axis from 1/16 to at least 8. The LUNA16 rates (1/8 .. 8)
    are marked with their sensitivities, and their mean (the CPM, `metrics.froc`) is in
    the title. Detections hit references as in `metrics.froc` (see `froc_points`)."""
    rates, sens, n_scans, n_ref = froc_points(pred, target)
    fig = _figure(*CURVE_SIZE)
    ax = fig.add_subplot()
    title = "FROC"
    if n_ref == 0:
        _message(ax, "no reference boxes")
    else:
        best = np.maximum.accumulate(sens)
        x_lo, x_hi = 1.0 / 16.0, max(8.0, float(rates.max())) * 1.25
        xs = np.concatenate([[x_lo], rates[rates > x_lo], [x_hi]])
        ys = [float(best[rates <= x].max()) for x in xs]
        ax.step(xs, ys, where="post", color="C0", label="sensitivity")
        at = [float(best[rates <= f].max()) for f in LUNA16_RATES]
        for f in LUNA16_RATES:
            ax.axvline(f, color="0.85", linewidth=0.8, zorder=0)
        ax.plot(LUNA16_RATES, at, "o", color="C3", markersize=4, label="LUNA16 rates")
        for f, s in zip(LUNA16_RATES, at):
            ax.annotate(f"{s:.2f}", (f, s), textcoords="offset points", xytext=(0, 5), ha="center", fontsize=7)
        ax.set_xscale("log")
        ax.set_xlim(x_lo, x_hi)
        ax.set_xticks(LUNA16_RATES)
        ax.set_xticklabels(["1/8", "1/4", "1/2", "1", "2", "4", "8"])
        ax.minorticks_off()
        ax.set_ylim(0, 1.05)
        ax.set_xlabel("false positives per scan")
        ax.set_ylabel("sensitivity")
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
        title = f"FROC (CPM {float(np.mean(at)):.3f}; {n_ref} references, {n_scans} scans)"
    ax.set_title(title, fontsize=10)
    return _render(fig, "FROC curve")


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


# ===== tuning studies =====================================================================
#
# A study is the JSON `medasc tune` writes (medasl/tune/study.py): its `space` (name,
# kind, bounds, options of each searched parameter), its `goal` and `objective`, and
# its `trials` (number, status, values, objective). The report of `medasc tune` draws
# the same three figures from the study in memory.

IMPORTANCE_TREES = 200
"""Trees of the random forest behind `param_importance`."""

MIN_IMPORTANCE_TRIALS = 3
"""Fewer successful trials than this say nothing about which parameter matters."""


def read_study(study: str) -> dict[str, object]:
    """A study.json, or the reason it cannot be read as one (E1001, E1002)."""
    from pathlib import Path

    from medasl.runtime.errors import DataError

    path = Path(study)
    if not path.is_file():
        raise DataError("E1001", f"no study at `{study}`: `medasc tune` writes it as <out>/<pipeline>/study.json",
                        path, help="run `medasc tune FILE` first, or give the path of its study.json")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or not isinstance(data.get("trials"), list) or not isinstance(data.get("space"), list):
            raise ValueError("it has no `space` and `trials`")
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError("E1002", f"`{study}` is not a study written by `medasc tune`: {exc}", path) from None
    return data


def _ok_trials(data: dict[str, object]) -> list[dict[str, object]]:
    return [t for t in data["trials"] if t.get("status") == "ok" and t.get("objective") is not None  # type: ignore[union-attr]
            and math.isfinite(float(t["objective"]))]


def _position(dimension: dict[str, object], value: object) -> float:
    """Where a value lies in its dimension, from 0 to 1 (a log scale for loguniform, the
    option's place for a choice)."""
    if dimension["kind"] == "choice":
        options = [str(o) for o in dimension["options"]]  # type: ignore[union-attr]
        labels = [str(o) for o in dimension.get("labels", options)]  # type: ignore[union-attr]
        text = str(value)
        index = options.index(text) if text in options else labels.index(text) if text in labels else 0
        return index / max(len(options) - 1, 1)
    low, high = (float(b) for b in dimension["bounds"][:2])  # type: ignore[index]
    v = float(value)  # type: ignore[arg-type]
    if dimension["kind"] == "loguniform":
        low, high, v = math.log(low), math.log(high), math.log(max(v, 1e-300))
    return (v - low) / (high - low) if high > low else 0.5


def optimization_history_figure(data: dict[str, object]) -> Figure:
    """The objective of every trial in order, and the best so far; failed and stopped
    trials are counted in the legend."""
    trials = data["trials"]  # type: ignore[assignment]
    ok = _ok_trials(data)
    goal, name = str(data.get("goal", "max")), str(data.get("objective", "objective"))
    fig = _figure(*CURVE_SIZE)
    ax = fig.add_subplot()
    if not ok:
        _message(ax, "no successful trial yet")
    else:
        numbers = np.array([int(t["number"]) for t in ok])  # type: ignore[call-overload]
        values = np.array([float(t["objective"]) for t in ok])  # type: ignore[arg-type]
        best = np.maximum.accumulate(values) if goal == "max" else np.minimum.accumulate(values)
        ax.scatter(numbers, values, s=18, color="C0", label="trial", zorder=3)
        ax.step(numbers, best, where="post", color="C3", label="best so far")
        others = len(trials) - len(ok)  # type: ignore[arg-type]
        if others:
            ax.plot([], [], " ", label=f"{others} trial{'s' * (others != 1)} failed, stopped or running")
        ax.legend(fontsize=8)
        ax.set_xlabel("trial")
        ax.set_ylabel(f"{name} ({goal})")
        ax.grid(True, alpha=0.3)
    title = f"optimization history of {name}"
    ax.set_title(title, fontsize=10)
    return _render(fig, title)


def parallel_coordinates_figure(data: dict[str, object]) -> Figure:
    """One line per successful trial through its value of every searched parameter, to
    its objective; the colour is the objective (yellow is better)."""
    space = data["space"]  # type: ignore[assignment]
    ok = _ok_trials(data)
    goal, name = str(data.get("goal", "max")), str(data.get("objective", "objective"))
    axes_count = len(space) + 1  # type: ignore[arg-type]
    fig = _figure(max(CURVE_SIZE[0], 1.6 * axes_count), CURVE_SIZE[1])
    ax = fig.add_subplot()
    title = f"parallel coordinates ({len(ok)} trials)"
    if not ok:
        _message(ax, "no successful trial yet")
        ax.set_title(title, fontsize=10)
        return _render(fig, title)
    values = np.array([float(t["objective"]) for t in ok])  # type: ignore[arg-type]
    low, high = float(values.min()), float(values.max())
    scaled = (values - low) / (high - low) if high > low else np.full(values.shape, 0.5)
    colour = scaled if goal == "max" else 1.0 - scaled
    cmap = matplotlib.colormaps["viridis"]
    xs = np.arange(axes_count)
    for trial, c, y_objective in zip(ok, colour, scaled):
        ys = [_position(d, trial["values"].get(d["name"])) for d in space]  # type: ignore[union-attr, index]
        ax.plot(xs, [*ys, y_objective], color=cmap(float(c)), alpha=0.8, linewidth=1.2)
    for x, d in enumerate(space):  # type: ignore[arg-type]
        ax.axvline(x, color="0.3", linewidth=0.8)
        if d["kind"] == "choice":
            options = [str(o) for o in d["options"]]
            for i, option in enumerate(options):
                short = option if len(option) <= 18 else option[:16] + "…"
                ax.text(x + 0.03, i / max(len(options) - 1, 1), short, fontsize=7, va="center")
        else:
            bounds = [float(b) for b in d["bounds"][:2]]
            ax.text(x + 0.03, 0.0, f"{bounds[0]:.3g}", fontsize=7, va="bottom")
            ax.text(x + 0.03, 1.0, f"{bounds[1]:.3g}", fontsize=7, va="top")
    ax.axvline(axes_count - 1, color="0.3", linewidth=0.8)
    ax.text(axes_count - 1 + 0.03, 0.0, f"{low:.4g}", fontsize=7, va="bottom")
    ax.text(axes_count - 1 + 0.03, 1.0, f"{high:.4g}", fontsize=7, va="top")
    ax.set_xticks(xs)
    ax.set_xticklabels([*(str(d["name"]) for d in space), name])  # type: ignore[union-attr]
    ax.set_yticks([])
    ax.set_xlim(-0.2, axes_count - 0.4)
    ax.set_ylim(-0.05, 1.05)
    ax.set_title(title, fontsize=10)
    return _render(fig, title)


def importances(data: dict[str, object]) -> dict[str, float] | None:
    """Random-forest importance of each searched parameter for the objective: scikit-learn's
    `RandomForestRegressor` (`IMPORTANCE_TREES` trees, seed 0) fitted on the successful
    trials, each parameter a column (a loguniform one on a log scale, a choice one-hot
    with its columns' importances summed), importance = the mean decrease in impurity
    (`feature_importances_`), summing to 1. None with fewer than `MIN_IMPORTANCE_TRIALS`
    trials; all zero when every trial gave the same objective."""
    space = data["space"]  # type: ignore[assignment]
    ok = _ok_trials(data)
    if len(ok) < MIN_IMPORTANCE_TRIALS:
        return None
    columns: list[list[float]] = []
    owners: list[str] = []
    for d in space:  # type: ignore[union-attr]
        if d["kind"] == "choice":
            for option in range(len(d["options"])):
                columns.append([float(round(_position(d, t["values"].get(d["name"])) * max(len(d["options"]) - 1, 1))
                                      == option) for t in ok])
                owners.append(str(d["name"]))
        else:
            log = d["kind"] == "loguniform"
            columns.append([math.log(float(t["values"][d["name"]])) if log else float(t["values"][d["name"]])
                            for t in ok])
            owners.append(str(d["name"]))
    y = np.array([float(t["objective"]) for t in ok])  # type: ignore[arg-type]
    names = [str(d["name"]) for d in space]  # type: ignore[union-attr]
    if float(y.max() - y.min()) == 0.0:
        return dict.fromkeys(names, 0.0)
    from sklearn.ensemble import RandomForestRegressor

    forest = RandomForestRegressor(n_estimators=IMPORTANCE_TREES, random_state=0)
    forest.fit(np.array(columns, dtype=np.float64).T, y)
    found = dict.fromkeys(names, 0.0)
    for owner, value in zip(owners, forest.feature_importances_):
        found[owner] += float(value)
    return found


def param_importance_figure(data: dict[str, object]) -> Figure:
    """A bar per searched parameter: its random-forest importance (`importances`)."""
    found = importances(data)
    fig = _figure(CURVE_SIZE[0], max(2.0, 0.9 + 0.35 * len(data["space"])))  # type: ignore[arg-type]
    ax = fig.add_subplot()
    title = "parameter importance (random forest)"
    if found is None:
        _message(ax, f"needs at least {MIN_IMPORTANCE_TRIALS} successful trials")
    else:
        order = sorted(found, key=lambda k: found[k])
        ax.barh(order, [found[k] for k in order], color="C0")
        ax.set_xlabel(f"importance for {data.get('objective', 'the objective')} (mean decrease in impurity)")
        ax.set_xlim(0, max(1.0, max(found.values())))
        ax.grid(True, axis="x", alpha=0.3)
    ax.set_title(title, fontsize=10)
    return _render(fig, title)


def optimization_history(study: str) -> Figure:
    return optimization_history_figure(read_study(study))


def parallel_coordinates(study: str) -> Figure:
    return parallel_coordinates_figure(read_study(study))


def param_importance(study: str) -> Figure:
    return param_importance_figure(read_study(study))


OPERATORS: dict[str, Callable[..., object]] = {
    "loss_curve": loss_curve, "metric_curve": metric_curve, "overlay": overlay, "box_overlay": box_overlay,
    "mesh": mesh, "saliency": saliency, "grad_cam": grad_cam, "occlusion": occlusion, "tsne": tsne,
    "roc_curve": roc_curve, "confusion_matrix": confusion_matrix, "froc_curve": froc_curve,
    "metrics_table": metrics_table, "metric_boxplot": metric_boxplot,
    "optimization_history": optimization_history, "parallel_coordinates": parallel_coordinates,
    "param_importance": param_importance,
}
"""The std.viz operators implemented here, by the name of their stdlib signature."""
