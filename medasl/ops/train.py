"""std.train: optimizers, learning-rate schedules, training and inference (stdlib/train.medas).

Optimizers and schedules are values (`values.OperatorRef`): `adam(lr=1e-3)` only says
what to build; `train` builds it on the network's parameters. Losses and metrics arrive
the same way (`loss=@dice_ce`) and are built by `medasl.ops.losses.make_loss` and
looked up in `medasl.ops.metrics`.

Conventions every function here keeps, and why:

- Tensors are `(N, C, *spatial)` with the spatial axes in array order (`(z, y, x)` for
  3D, as `Volume.array`); a multi-channel image (channels last in its array) has its
  channels moved first. Sizes written in a pipeline (`window=(128, 128, 96)`) are in
  `(x, y, z)` order, as everywhere in the language, and are reversed here.
- Training is deterministic given `seed` on the CPU: the batch order and the global
  torch generator (dropout) of epoch `e` are seeded from `(seed, e)` alone, and so are
  the augmentations drawn anew for every epoch (`augment`, from the executor), so a run
  resumed from the checkpoint of epoch `e` continues exactly as an uninterrupted one.
- After every epoch, `checkpoints.save` is given the whole state (weights, the best
  weights so far, optimizer, schedule, history): the executor commits it to the cache,
  and a killed training resumes at its last finished epoch.
- Ctrl-C: the executor's `stop` is asked before every batch and every validation case;
  when it says stop, `train` raises `Interrupted` there, so a training stops within a
  batch, and the epochs already finished are the checkpoints in the cache.
- Problems the user can fix are `DataError`s: label values the network cannot predict
  (E2006), cases of different sizes in one batch (E2007), a loss that became NaN or
  infinite (E2005, with the last good checkpoint kept).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np
import torch

from medasl.runtime.errors import DataError, Interrupted
from medasl.runtime.values import Case, Network, OperatorRef, Pair, Trained, Volume

# ===== optimizers and schedules ==========================================================


def adam(lr: float = 1e-3, weight_decay: float = 0.0) -> OperatorRef:
    """Adam (torch.optim.Adam)."""
    return OperatorRef("adam", {"lr": lr, "weight_decay": weight_decay})


def adamw(lr: float = 1e-3, weight_decay: float = 1e-2) -> OperatorRef:
    """AdamW (torch.optim.AdamW)."""
    return OperatorRef("adamw", {"lr": lr, "weight_decay": weight_decay})


def sgd(lr: float = 1e-2, momentum: float = 0.9, nesterov: bool = True, weight_decay: float = 0.0) -> OperatorRef:
    """SGD with (Nesterov) momentum (torch.optim.SGD)."""
    return OperatorRef("sgd", {"lr": lr, "momentum": momentum, "nesterov": nesterov, "weight_decay": weight_decay})


def constant() -> OperatorRef:
    """A fixed learning rate."""
    return OperatorRef("constant")


def cosine(warmup: int = 0) -> OperatorRef:
    """Linear warm-up for `warmup` epochs, then cosine annealing to zero."""
    return OperatorRef("cosine", {"warmup": warmup})


def step_lr(step: int = 30, gamma: float = 0.1) -> OperatorRef:
    """Multiply the learning rate by `gamma` every `step` epochs."""
    return OperatorRef("step_lr", {"step": step, "gamma": gamma})


def poly(power: float = 0.9) -> OperatorRef:
    """lr * (1 - epoch / epochs) ^ power."""
    return OperatorRef("poly", {"power": power})


def plateau(factor: float = 0.5, patience: int = 10) -> OperatorRef:
    """Multiply the learning rate by `factor` after `patience` validations without improvement."""
    return OperatorRef("plateau", {"factor": factor, "patience": patience})


_OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adam": lambda p, lr, weight_decay: torch.optim.Adam(p, lr=lr, weight_decay=weight_decay),
    "adamw": lambda p, lr, weight_decay: torch.optim.AdamW(p, lr=lr, weight_decay=weight_decay),
    "sgd": lambda p, lr, momentum, nesterov, weight_decay: torch.optim.SGD(
        p, lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0, weight_decay=weight_decay),
}


def _as_ref(value: object, default: OperatorRef) -> OperatorRef:
    """An optimizer or schedule given as an operator value (`@constant`) or a call result."""
    if value is None:
        return default
    if isinstance(value, OperatorRef):
        defaults = {"adam": adam, "adamw": adamw, "sgd": sgd, "constant": constant, "cosine": cosine,
                    "step_lr": step_lr, "poly": poly, "plateau": plateau}
        made = defaults[value.op]()  # fill the options not given with the operator's defaults
        return OperatorRef(value.op, {**made.options, **value.options})
    raise TypeError(f"expected an optimizer or schedule, got {type(value).__name__}")


def _scheduler(ref: OperatorRef, optimizer: torch.optim.Optimizer, epochs: int) -> object | None:
    o = ref.options
    if ref.op == "constant":
        return None
    if ref.op == "step_lr":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=int(o["step"]), gamma=float(o["gamma"]))
    if ref.op == "poly":
        return torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=epochs, power=float(o["power"]))
    if ref.op == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=float(o["factor"]),
                                                          patience=int(o["patience"]))
    if ref.op == "cosine":
        warmup = min(int(o["warmup"]), max(epochs - 1, 0))
        cosine_part = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(epochs - warmup, 1))
        if warmup == 0:
            return cosine_part
        ramp = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1.0 / (warmup + 1), total_iters=warmup)
        return torch.optim.lr_scheduler.SequentialLR(optimizer, [ramp, cosine_part], milestones=[warmup])
    raise ValueError(f"unknown schedule {ref.op!r}")


# ===== tensors from values ===============================================================


def image_tensor(vol: Volume) -> torch.Tensor:
    """`(C, *spatial)` float32 from a Volume (channels-last arrays get their channels first)."""
    array = np.array(vol.array, dtype=np.float32)  # a copy: cached arrays are read-only memory maps
    if array.ndim == vol.dim:
        array = array[None]
    else:
        array = np.moveaxis(array, -1, 0)
    return torch.from_numpy(np.ascontiguousarray(array))


def _target_tensor(target: object, classes: int, case: str) -> torch.Tensor:
    """`(1, *spatial)` long for a label map, `()` long for a class; E2006 for labels the
    network cannot predict (a class index at or above its number of outputs)."""
    if isinstance(target, Volume):
        array = np.asarray(target.array)
        top = int(array.max()) if array.size else 0
        if top >= classes or (array.size and int(array.min()) < 0):
            raise DataError("E2006", f"case {case}: the label map holds the value {top}, but the network predicts "
                            f"{classes} classes (0..{classes - 1})", target.source,
                            help="give the network as many classes as the labels have, or merge label values")
        return torch.from_numpy(array.astype(np.int64))[None]
    value = int(target)  # type: ignore[call-overload]
    if not 0 <= value < classes:
        raise DataError("E2006", f"case {case}: class {value} is outside the network's {classes} classes")
    return torch.tensor(value, dtype=torch.int64)


def _stack(tensors: list[torch.Tensor], ids: list[str], what: str) -> torch.Tensor:
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) > 1:
        listed = ", ".join(f"{i}: {tuple(t.shape[1:])}" for i, t in zip(ids, tensors))
        raise DataError("E2007", f"the {what} of one batch have different sizes ({listed})",
                        help="make every case the same size before training: crop_or_pad(...) or patches(...)")
    return torch.stack(tensors)


def _seed_for(seed: int, *parts: object) -> int:
    text = ":".join(str(p) for p in (seed, *parts))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


def _device(on: str, device: str) -> torch.device:
    if on == "cpu" or device == "cpu":
        return torch.device("cpu")
    return torch.device(device)


# ===== checkpoints =======================================================================


class Checkpoints(Protocol):
    """Where `train` keeps its state after every epoch (the executor commits it to the cache)."""

    def latest(self) -> dict[str, object] | None:
        """The state of the last finished epoch, or None to start afresh."""

    def save(self, epoch: int, state: dict[str, object]) -> None:
        """Keep the state of a finished epoch."""


def _arrays(state: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().copy() for k, v in state.items()}


def _tensors(arrays: object) -> dict[str, torch.Tensor]:
    assert isinstance(arrays, dict)
    return {k: torch.from_numpy(np.array(v)) for k, v in arrays.items()}


def _optimizer_state(optimizer: torch.optim.Optimizer) -> dict[str, object]:
    """The optimizer's state dict with tensors as NumPy arrays (storable without pickle)."""
    raw = optimizer.state_dict()
    state = {str(k): {name: (v.detach().cpu().numpy().copy() if torch.is_tensor(v) else v)
                      for name, v in per_param.items()} for k, per_param in raw["state"].items()}
    return {"state": state, "param_groups": raw["param_groups"]}


def _load_optimizer(optimizer: torch.optim.Optimizer, saved: object) -> None:
    assert isinstance(saved, dict)
    state = {int(k): {name: (torch.from_numpy(np.array(v)) if isinstance(v, np.ndarray) else v)
                      for name, v in per_param.items()} for k, per_param in saved["state"].items()}
    groups = [dict(g) for g in saved["param_groups"]]
    for group in groups:
        if isinstance(group.get("betas"), list):
            group["betas"] = tuple(group["betas"])
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def _scheduler_state(scheduler: object | None) -> dict[str, object]:
    if scheduler is None:
        return {}
    state = scheduler.state_dict()  # type: ignore[attr-defined]
    return _plain(state)  # type: ignore[return-value]


def _plain(value: object) -> object:
    """Scheduler state as plain data (SequentialLR nests the states of its parts)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, float | int | bool | str) or value is None:
        return value
    if torch.is_tensor(value):
        return value.item() if value.numel() == 1 else value.tolist()
    return None  # functions (lr_lambda) are rebuilt, not stored


# ===== training ===========================================================================


def _cases(data: Sequence[Case] | None) -> list[Case]:
    return list(data) if data is not None else []


def _batches(n: int, batch: int, seed: int, epoch: int) -> list[list[int]]:
    generator = torch.Generator().manual_seed(_seed_for(seed, "order", epoch))
    order = torch.randperm(n, generator=generator).tolist()
    return [order[i:i + batch] for i in range(0, n, batch)]


def _forward_whole(module: torch.nn.Module, x: torch.Tensor, divisor: int) -> torch.Tensor:
    """The network on one whole input, padded to a multiple of `divisor` and cropped back."""
    spatial = x.shape[2:]
    pads = [(-s) % divisor for s in spatial]
    if any(pads):
        flat = []
        for p in reversed(pads):
            flat += [p // 2, p - p // 2]
        x = torch.nn.functional.pad(x, flat, mode="replicate")
    out = module(x)
    if out.ndim == x.ndim and any(pads):
        slices = [slice(None), slice(None)] + [slice(p // 2, p // 2 + s) for p, s in zip(pads, spatial)]
        out = out[tuple(slices)]
    return out


def _scores(logits: torch.Tensor) -> np.ndarray:
    return torch.softmax(logits.float(), dim=0).cpu().numpy()


def _probs_volume(logits: torch.Tensor, like: Volume) -> Volume:
    """Softmax probabilities `(K, *spatial)` as a channels-last `probs` Volume on `like`'s grid."""
    probs = torch.softmax(logits.float(), dim=0).cpu().numpy()
    return Volume(np.ascontiguousarray(np.moveaxis(probs, 0, -1)), like.spacing, like.origin, like.direction,
                  kind="probs", modality=like.modality, source=like.source)


def _conversion(ref: OperatorRef | None, slot: str, index: int) -> Callable[[object], object] | None:
    """The conversion the checker attached to a loss's or metric's input (`metric.pred=@argmax`,
    `loss.target=@instances_to_labels`; through a parameter, the inputs are numbered)."""
    if ref is None:
        return None
    found = ref.inputs.get(slot) or ref.inputs.get(f"input{index}")
    if found is None:
        return None
    from medasl.runtime import registry

    function = registry.function(found.op)
    return lambda value: function(value, **found.options)


def _is_detector(module: torch.nn.Module) -> bool:
    """A detection network (std.nets `nodule_detector`): boxes in, losses or boxes out."""
    return hasattr(module, "detector")


def _detector_targets(pairs: Sequence[Pair], classes: int, ids: Sequence[str]) -> list[dict[str, torch.Tensor]]:
    """Each case's boxes as the detector takes them (voxel boxes of its image); E2006 for a
    box class the network does not predict."""
    from medasl.ops import io

    targets = []
    for case, pair in zip(ids, pairs):
        boxes = pair.target
        labels = np.array(boxes.classes, dtype=np.int64)  # type: ignore[attr-defined]  # a copy: cached arrays are read-only
        if labels.size and (int(labels.min()) < 1 or int(labels.max()) >= classes):
            raise DataError("E2006", f"case {case}: a box has class {int(labels.max())}, but the detector predicts "
                            f"classes 1..{classes - 1}")
        targets.append({"boxes": torch.from_numpy(io.boxes_to_voxels(boxes, pair.input)),  # type: ignore[arg-type]
                        "labels": torch.from_numpy(labels)})
    return targets


def _check_divisible(cases: Sequence[Case], divisor: int) -> None:
    """E2008 for a training case the network cannot take whole: a U-Net's skip
    connections need every spatial size divisible by its down-sampling factor (a size
    set with `--set` escapes the checker's E0230). Classifiers pool globally (divisor 1)."""
    if divisor <= 1:
        return
    for case in cases:
        shape = tuple(case.value.input.shape)  # type: ignore[attr-defined]
        if any(int(n) % divisor for n in shape):
            fixed = tuple(-(-int(n) // divisor) * divisor for n in shape)
            raise DataError("E2008", f"case {case.id}: its size {shape} is not divisible by {divisor}, the network's "
                            "down-sampling factor", help=f"crop or pad the training cases to multiples of {divisor} "
                                                         f"(e.g. crop_or_pad({fixed})) or train on patches of such a size")


def _check_some_box(cases: Sequence[Case]) -> None:
    """E1006 when no training case has a box: the annotations' ids most likely do not
    match the case ids, and the detector would only learn that nothing is there."""
    if cases and not any(len(c.value.target) for c in cases):  # type: ignore[attr-defined]
        ids = [c.id for c in cases]
        shown = ", ".join(ids[:3]) + (f" and {len(ids) - 3} more" if len(ids) > 3 else "")
        raise DataError("E1006", f"none of the {len(ids)} training cases ({shown}) has a box, so the detector has "
                        f"nothing to learn", help="annotation rows are matched to scans by the case id: the "
                                                  "SeriesInstanceUID of a DICOM series, the part matched by `*` for "
                                                  "a folder; check that the table's ids are those")


def _detect(module: torch.nn.Module, image: Volume, window: Sequence[int] | None, overlap: float, batch: int,
            device: torch.device) -> object:
    """A detector on one image: world boxes with classes and scores (NMS inside the network)."""
    from medasl.ops import io

    module.eval()
    x = image_tensor(image).to(device)
    if window is not None:
        roi = tuple(int(v) for v in reversed(tuple(window)))
        module.detector.set_sliding_window_inferer(roi_size=roi, sw_batch_size=batch, overlap=overlap,
                                                   mode="gaussian")
    with torch.no_grad():
        found = module([x], use_inferer=window is not None)[0]
    return io.voxels_to_boxes(found["boxes"].cpu().numpy(), found["labels"].cpu().numpy(),
                              found["scores"].cpu().numpy(), image)


def _validate(module: torch.nn.Module, cases: list[Case], metric: OperatorRef, device: torch.device,
              divisor: int, stop: Callable[[], None] = lambda: None) -> float:
    """The metric over the validation cases, predictions made on each whole case;
    `stop` is called before each case (it raises `Interrupted` after a Ctrl-C)."""
    from medasl.ops import metrics

    conversion = _conversion(metric, "pred", 1)
    target_conversion = _conversion(metric, "target", 2)
    preds: list[object] = []
    targets: list[object] = []
    per_case: dict[str, float] = {}
    module.eval()
    with torch.no_grad():
        for case in cases:
            stop()
            pair = case.value
            assert isinstance(pair, Pair)
            if _is_detector(module):
                preds.append(_detect(module, pair.input, None, 0.0, 1, device))
                targets.append(pair.target)
                continue
            x = image_tensor(pair.input)[None].to(device)
            logits = _forward_whole(module, x, divisor)[0]
            if logits.ndim == 1:  # a classifier: scores
                preds.append(_scores(logits))
                targets.append(int(pair.target))  # type: ignore[call-overload]
                continue
            pred: object = _probs_volume(logits, pair.input)
            if conversion is not None:
                pred = conversion(pred)
            target = target_conversion(pair.target) if target_conversion is not None else pair.target
            per_case[case.id] = float(metrics.OPERATORS[metric.op](pred=pred, target=target, **metric.options))
    if preds:
        return float(metrics.OPERATORS[metric.op](pred=preds, target=targets, **metric.options))
    values = [v for v in per_case.values() if not math.isnan(v)]
    return float(np.mean(values)) if values else math.nan


def _epoch_case(case: Case, epoch: int, augment: Callable[[str, int], object] | None) -> Pair:
    """The training pair of `case` in `epoch`: augmented anew by `augment` after the first
    epoch (the first uses the draw the cache holds)."""
    if augment is not None and epoch > 1:
        fresh = augment(case.id, epoch)
        if fresh is not None:
            return fresh  # type: ignore[return-value]
    return case.value  # type: ignore[return-value]


def _stopper(stop: Callable[[], bool] | None, epochs: int) -> Callable[[int], None]:
    """A check to call between batches: raises `Interrupted` once `stop()` is true (the
    user pressed Ctrl-C). Stopping there loses at most the batch in progress; the
    finished epochs are in the cache already, so the same command resumes after them."""

    def check(epoch: int) -> None:
        if stop is None or not stop():
            return
        done = epoch - 1
        kept = ("no epoch had finished" if done == 0 else "epoch 1 is kept" if done == 1
                else f"epochs 1-{done} are kept")
        raise Interrupted(f"stopped in epoch {epoch} of {epochs}: {kept}; the same command resumes at epoch {epoch}")

    return check


def _judge(value: float, best: float | None, goal: str) -> tuple[bool, bool]:
    """(keep these weights, an improvement) for a validation score. A strictly better
    score is both. An equal one keeps the later weights, trained longer and validated as
    well (small validation sets tie often: an AUC of 1.0 on four cases), but is no
    improvement, so it does not hold off early stopping. NaN is neither."""
    if math.isnan(value):
        return False, False
    if best is None or (value > best if goal == "max" else value < best):
        return True, True
    return value == best, False


def train(model: Network, data: Sequence[Case], loss: OperatorRef, optimizer: OperatorRef | None = None,
          schedule: OperatorRef | None = None, epochs: int = 10, batch: int = 2,
          validate: Sequence[Case] | None = None, metric: OperatorRef | None = None, every: int = 1,
          patience: int | None = None, clip_grad: float | None = None, amp: bool = True, seed: int = 0,
          on: str = "auto", *, checkpoints: Checkpoints | None = None,
          progress: Callable[[dict[str, object]], None] | None = None, device: str = "cpu",
          augment: Callable[[str, int], object] | None = None, stop: Callable[[], bool] | None = None) -> Trained:
    """Train `model` on (input, target) cases; see the module docstring for the guarantees.

    Example (what `train(net, cases, loss=dice_ce, epochs=2)` runs):

        fit = train(Network("unet3d", params, module), cases, OperatorRef("dice_ce"), epochs=2)
        fit.history[-1]["loss"]
    """
    from medasl.ops import losses, nets

    cases, val_cases = _cases(data), _cases(validate)
    if not cases:
        raise DataError("E1011", "train: the training dataset has no cases")
    module = nets.build(model.op, model.params, seed=_seed_for(seed, "init"))
    dev = _device(on, device)
    module.to(dev)
    classes = int(model.params.get("classes", 2))  # type: ignore[arg-type]
    divisor = nets.downsample(model.op, model.params)
    detector = _is_detector(module)
    box_weight = float(loss.options.get("box_weight", 1.0)) if loss.op == "box_loss" else 1.0  # type: ignore[arg-type]
    if detector and loss.options.get("giou"):
        module.detector.set_box_regression_loss(*losses.detector_box_regression(True))  # type: ignore[operator]
    loss_fn = None if detector else losses.make_loss(loss.op, **loss.options)
    opt_ref = _as_ref(optimizer, adam())
    opt_options = {k: v for k, v in opt_ref.options.items()}
    opt = _OPTIMIZERS[opt_ref.op](module.parameters(), **opt_options)
    sched_ref = _as_ref(schedule, constant())
    scheduler = _scheduler(sched_ref, opt, epochs)
    goal = None
    if metric is not None:
        from medasl.ops import metrics

        goal = metrics.GOALS.get(metric.op, "max")
    use_amp = amp and dev.type == "cuda"
    scaler = torch.amp.GradScaler("cuda") if use_amp else None

    history: list[dict[str, float]] = []
    best_value: float | None = None
    best_epoch, stale, start = 0, 0, 0
    best_weights = _arrays(module.state_dict())
    saved = checkpoints.latest() if checkpoints is not None else None
    if saved is not None:
        module.load_state_dict(_tensors(saved["weights"]))
        _load_optimizer(opt, saved["optimizer"])
        if scheduler is not None and saved.get("scheduler"):
            scheduler.load_state_dict(saved["scheduler"])  # type: ignore[attr-defined]
        history = list(saved["history"])  # type: ignore[arg-type]
        best_weights = {k: np.array(v) for k, v in saved["best"].items()}  # type: ignore[union-attr]
        best_value = saved.get("best_value")  # type: ignore[assignment]
        best_epoch, stale, start = int(saved["best_epoch"]), int(saved["stale"]), int(saved["epoch"])  # type: ignore[arg-type]
        if saved.get("stopped"):
            start = epochs

    to_labels = _conversion(loss, "target", 2) or (lambda value: value)  # e.g. instances -> labels
    targets: dict[str, torch.Tensor] = {}
    if detector:
        _check_some_box(cases)
        _detector_targets([c.value for c in [*cases, *val_cases]], classes, [c.id for c in [*cases, *val_cases]])  # type: ignore[misc]
    else:
        _check_divisible(cases, divisor)
        targets = {c.id: _target_tensor(to_labels(c.value.target), classes, c.id) for c in cases}  # type: ignore[attr-defined]
        val_labels = _conversion(metric, "target", 2) or to_labels
        for c in val_cases:
            _target_tensor(val_labels(c.value.target), classes, c.id)  # type: ignore[attr-defined]
    check_stop = _stopper(stop, epochs)
    for epoch in range(start + 1, epochs + 1):
        clock = time.perf_counter()
        torch.manual_seed(_seed_for(seed, "epoch", epoch))
        module.train()
        total, seen = 0.0, 0
        for indices in _batches(len(cases), batch, seed, epoch):
            check_stop(epoch)
            ids = [cases[i].id for i in indices]
            pairs = [_epoch_case(cases[i], epoch, augment) for i in indices]
            opt.zero_grad(set_to_none=True)
            if detector:  # a list of images (sizes may differ) and their boxes; the network gives its losses
                found = module([image_tensor(p.input).to(dev) for p in pairs], _detector_targets(pairs, classes, ids))
                value = found["classification"] + box_weight * found["box_regression"]
            else:
                x = _stack([image_tensor(p.input) for p in pairs], ids, "images").to(dev)
                y = _stack([targets[i] if augment is None else _target_tensor(to_labels(p.target), classes, i)
                            for i, p in zip(ids, pairs)], ids, "labels").to(dev)
                with torch.autocast(dev.type, enabled=use_amp):
                    value = loss_fn(module(x), y)  # type: ignore[misc]
            if not torch.isfinite(value):
                raise DataError("E2005", f"the training loss became {float(value.detach())} in epoch {epoch} (cases "
                                f"{', '.join(ids)})", help="lower the learning rate, check the intensities for "
                                "extreme values, or set clip_grad; the last good epoch is kept in the cache")
            if scaler is not None:
                scaler.scale(value).backward()
                scaler.unscale_(opt)
            else:
                value.backward()
            if clip_grad is not None:
                torch.nn.utils.clip_grad_norm_(module.parameters(), clip_grad)
            if scaler is not None:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
            total += float(value.detach()) * len(indices)
            seen += len(indices)
        record: dict[str, float] = {"epoch": epoch, "loss": total / max(seen, 1),
                                    "lr": float(opt.param_groups[0]["lr"])}
        stopped = False
        if metric is not None and val_cases and (epoch % every == 0 or epoch == epochs):
            value_v = _validate(module, val_cases, metric, dev, divisor, lambda e=epoch: check_stop(e))
            record[f"val_{metric.op}"] = value_v
            keep, improved = _judge(value_v, best_value, goal or "max")
            if keep:
                best_value, best_epoch = value_v, epoch
                best_weights = _arrays(module.state_dict())
            if improved:
                stale = 0
            else:
                stale += 1
                stopped = patience is not None and stale >= patience
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                scheduler.step(value_v if goal == "min" else -value_v)
        if scheduler is not None and not isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            scheduler.step()
        if metric is None or not val_cases:
            best_epoch, best_weights = epoch, _arrays(module.state_dict())
        record["seconds"] = time.perf_counter() - clock
        history.append(record)
        if checkpoints is not None:
            checkpoints.save(epoch, {
                "epoch": epoch, "weights": _arrays(module.state_dict()), "best": best_weights,
                "best_value": best_value, "best_epoch": best_epoch, "stale": stale, "stopped": stopped,
                "optimizer": _optimizer_state(opt), "scheduler": _scheduler_state(scheduler), "history": history,
            })
        if progress is not None:
            progress({**record, "epochs": epochs})
        if stopped:
            break
    module.load_state_dict(_tensors(best_weights))
    module.to("cpu").eval()
    return Trained(Network(model.op, dict(model.params), module), history, best_epoch,
                   metric.op if metric is not None else None, goal)


# ===== inference ===========================================================================


def _predict(module: torch.nn.Module, x: torch.Tensor, window: Sequence[int] | None, overlap: float, blend: str,
             batch: int, divisor: int) -> torch.Tensor:
    if window is None:
        return _forward_whole(module, x, divisor)
    if any(int(w) % divisor for w in window):
        raise DataError("E2008", f"the window {tuple(window)} is not divisible by {divisor}, the network's "
                        "down-sampling factor", help=f"use a multiple of {divisor} on every axis")
    from monai.inferers import sliding_window_inference

    roi = tuple(int(v) for v in reversed(tuple(window)))  # (x, y, z) in the language, array order here
    return sliding_window_inference(x, roi, batch, module, overlap=overlap, mode=blend)


def infer(model: Trained, data: Volume, window: Sequence[int] | None = None, overlap: float = 0.25,
          blend: str = "gaussian", tta: bool = False, batch: int = 1, on: str = "auto", *,
          device: str = "cpu") -> object:
    """The trained network on one case (the executor runs it case by case): class
    probabilities as a `probs` Volume on the case's grid for a segmentation network,
    softmax scores `(K,)` for a classifier, world boxes with scores for a detector
    (`tta` does not apply to detectors). With `window`, sliding windows blended by
    MONAI's `sliding_window_inference`; `tta` averages the probabilities over the
    input mirrored along each spatial axis (and not mirrored)."""
    from medasl.ops import nets

    network = model.network
    module = network.module
    dev = _device(on, device)
    module.to(dev).eval()  # type: ignore[attr-defined]
    if _is_detector(module):  # type: ignore[arg-type]
        return _detect(module, data, window, overlap, batch, dev)  # type: ignore[arg-type]
    divisor = nets.downsample(network.op, network.params)
    x = image_tensor(data)[None].to(dev)
    flips: list[tuple[int, ...]] = [()]
    if tta:
        flips += [(axis,) for axis in range(2, x.ndim)]
    total = None
    with torch.no_grad():
        for dims in flips:
            xi = torch.flip(x, dims) if dims else x
            logits = _predict(module, xi, window, overlap, blend, batch, divisor)  # type: ignore[arg-type]
            probs = torch.softmax(logits.float(), dim=1)
            if dims and probs.ndim == x.ndim:
                probs = torch.flip(probs, dims)
            total = probs if total is None else total + probs
    assert total is not None
    mean = (total / len(flips))[0].cpu()
    if mean.ndim == 1:
        return mean.numpy()
    return Volume(np.moveaxis(mean.numpy(), 0, -1), data.spacing, data.origin, data.direction,
                  kind="probs", modality=data.modality, source=data.source)


def ensemble(models: Sequence[Trained], tta: bool = False) -> Trained:
    """The fold models as one `Trained` value (`nets.FoldEnsemble`): `infer` on it gives
    the mean of the members' probabilities (with `tta`, also over mirrored inputs). The
    members' weights are copied into it, so it is stored and loaded like one network."""
    from medasl.ops import nets

    members = list(models)
    if not members:
        raise DataError("E2080", "an ensemble needs at least one trained model", help="give it the fold models, "
                        "e.g. `ensemble(fits)` with `fits = train(net, folds.train, ...)`")
    if any(_is_detector(m.network.module) for m in members):  # type: ignore[arg-type]
        raise DataError("E2080", "an ensemble averages class probabilities; a detector's boxes cannot be averaged "
                        "this way", help="infer with each fold's detector and merge the boxes with `nms`")
    params = {"members": [{"op": m.network.op, "params": dict(m.network.params)} for m in members],
              "tta": bool(tta)}
    module = nets.FoldEnsemble([m.network.module for m in members], tta)  # type: ignore[list-item]
    module.eval()
    return Trained(Network(nets.ENSEMBLE, params, module))


def load_trained(model: Network, weights: str) -> Trained:
    """Weights from a checkpoint file: a safetensors file, or a PyTorch state dict read
    with `torch.load(weights_only=True)` (never unpickling arbitrary objects)."""
    from pathlib import Path

    from medasl.ops import nets

    path = Path(weights)
    if not path.is_file():
        raise DataError("E1001", f"file not found: {path}", path)
    module = nets.build(model.op, model.params, seed=0)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(state, dict) and "state_dict" in state:
                state = state["state_dict"]
        module.load_state_dict(state)
    except Exception as exc:  # noqa: BLE001 - any failure to read or fit the weights is the file's
        raise DataError("E1002", f"cannot load weights for `{model.op}` from {path}: {exc}", path) from None
    module.eval()
    return Trained(Network(model.op, dict(model.params), module))


OPERATORS: dict[str, Callable[..., object]] = {
    "adam": adam, "adamw": adamw, "sgd": sgd, "constant": constant, "cosine": cosine, "step_lr": step_lr,
    "poly": poly, "plateau": plateau, "train": train, "infer": infer, "load_trained": load_trained,
    "ensemble": ensemble,
}
"""The std.train operators, by the name of their stdlib signature. `train` also takes the
runtime-only `checkpoints`, `progress`, `device`, `augment` (the training cases of an
epoch augmented anew) and `stop` (true once the user pressed Ctrl-C); `infer` takes `device`."""
