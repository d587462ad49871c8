"""std.train: training is deterministic and resumes exactly from a checkpoint; inference
keeps the input's grid; bad input stops training with a diagnostic."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="training needs the run extra (pip install -e '.[run]')")
pytest.importorskip("monai", reason="training needs the run extra (pip install -e '.[run]')")

import numpy as np  # noqa: E402

from medasl.ops import io, pre  # noqa: E402
from medasl.ops import train as training  # noqa: E402
from medasl.runtime.errors import DataError  # noqa: E402
from medasl.runtime.values import Case, Network, OperatorRef, Pair, Trained, Volume  # noqa: E402

UNET = {"in_channels": 1, "classes": 2, "channels": (4, 8, 16, 32, 64), "strides": (2, 2, 2, 2), "res_units": 1,
        "dropout": 0.0}


class Memory:
    """Checkpoints kept in a dict; `stop_after` simulates a training killed after that epoch."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.saved: dict[int, dict[str, object]] = {}
        self.stop_after = stop_after

    def latest(self) -> dict[str, object] | None:
        return self.saved[max(self.saved)] if self.saved else None

    def save(self, epoch: int, state: dict[str, object]) -> None:
        self.saved[epoch] = state
        if epoch == self.stop_after:
            raise KeyboardInterrupt


@pytest.fixture(scope="module")
def cases() -> list[Case]:
    found = []
    for c in io.phantom(cases=4, size=(32, 32, 16), seed=1):
        image = pre.rescale(pre.window(c.value.input, 40, 400), 0, 1)
        found.append(Case(c.id, Pair(image, c.value.target)))
    return found


def _net() -> Network:
    return Network("unet3d", dict(UNET), None)


def _weights(trained: Trained) -> dict[str, torch.Tensor]:
    return trained.network.module.state_dict()  # type: ignore[attr-defined]


def test_training_learns_and_records_its_history(cases: list[Case]) -> None:
    fit = training.train(_net(), cases, OperatorRef("dice_ce"), optimizer=training.adam(lr=1e-2), epochs=4, batch=2)
    losses = [h["loss"] for h in fit.history]
    assert [h["epoch"] for h in fit.history] == [1, 2, 3, 4]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
    assert fit.best_epoch == 4 and fit.metric is None


@pytest.mark.parametrize("stop_after", [1, 2])
def test_a_resumed_training_ends_with_the_same_weights(cases: list[Case], stop_after: int) -> None:
    options = {"optimizer": training.adamw(lr=3e-3), "schedule": training.cosine(warmup=1), "epochs": 3, "batch": 2}
    whole = training.train(_net(), cases, OperatorRef("dice_ce"), checkpoints=Memory(), **options)
    memory = Memory(stop_after=stop_after)
    with pytest.raises(KeyboardInterrupt):
        training.train(_net(), cases, OperatorRef("dice_ce"), checkpoints=memory, **options)
    memory.stop_after = None
    resumed = training.train(_net(), cases, OperatorRef("dice_ce"), checkpoints=memory, **options)
    a, b = _weights(whole), _weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [h["loss"] for h in whole.history] == [h["loss"] for h in resumed.history]
    assert [h["lr"] for h in whole.history] == [h["lr"] for h in resumed.history]


def test_another_seed_gives_other_weights(cases: list[Case]) -> None:
    a = _weights(training.train(_net(), cases, OperatorRef("dice_ce"), epochs=1, seed=0))
    b = _weights(training.train(_net(), cases, OperatorRef("dice_ce"), epochs=1, seed=1))
    assert any(not torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("schedule", [training.constant(), training.step_lr(step=1, gamma=0.5), training.poly(power=0.9), training.cosine()])
def test_schedules_change_the_learning_rate(cases: list[Case], schedule: OperatorRef) -> None:
    fit = training.train(_net(), cases[:2], OperatorRef("dice_ce"), optimizer=training.sgd(lr=0.1), schedule=schedule, epochs=3)
    rates = [h["lr"] for h in fit.history]
    if schedule.op == "constant":
        assert rates == [0.1, 0.1, 0.1]
    else:
        assert rates[2] < rates[0]
    if schedule.op == "step_lr":
        assert rates == pytest.approx([0.1, 0.05, 0.025])


def test_labels_beyond_the_classes_are_e2006(cases: list[Case]) -> None:
    pair = cases[0].value
    bad = Case("bad", Pair(pair.input, pair.target.with_array(np.asarray(pair.target.array) * 2)))
    with pytest.raises(DataError) as caught:
        training.train(_net(), [bad, *cases[1:]], OperatorRef("dice_ce"), epochs=1)
    assert caught.value.code == "E2006" and "bad" in caught.value.message


def test_cases_of_different_sizes_in_a_batch_are_e2007(cases: list[Case]) -> None:
    pair = cases[0].value
    smaller = Case("small", Pair(pre.crop_or_pad(pair.input, (16, 16, 16)), pre.crop_or_pad(pair.target, (16, 16, 16))))
    with pytest.raises(DataError) as caught:
        training.train(_net(), [smaller, cases[1]], OperatorRef("dice_ce"), epochs=1, batch=2)
    assert caught.value.code == "E2007"


def test_a_nan_loss_is_e2005_and_keeps_the_last_good_epoch(cases: list[Case]) -> None:
    pair = cases[1].value
    array = np.asarray(pair.input.array, dtype=np.float32).copy()
    array[0, 0, 0] = np.inf
    poisoned = Case("poisoned", Pair(pair.input.with_array(array), pair.target))
    memory = Memory()
    training.train(_net(), cases[:2], OperatorRef("dice_ce"), epochs=1, batch=1, checkpoints=memory)
    with pytest.raises(DataError) as caught:
        training.train(_net(), [*cases[:2], poisoned], OperatorRef("dice_ce"), epochs=2, batch=1, checkpoints=Memory())
    assert caught.value.code == "E2005"
    assert set(memory.saved) == {1}


def test_inference_keeps_the_grid_and_tta_averages(cases: list[Case]) -> None:
    fit = training.train(_net(), cases, OperatorRef("dice_ce"), epochs=1)
    image = cases[0].value.input
    probs = training.infer(fit, image, window=(32, 32, 16), overlap=0.5)
    assert isinstance(probs, Volume) and probs.kind == "probs"
    assert probs.array.shape == (*image.array.shape, 2) and probs.same_grid(image)
    np.testing.assert_allclose(probs.array.sum(axis=-1), 1.0, atol=1e-5)
    whole = training.infer(fit, image)
    assert whole.array.shape == probs.array.shape
    tta = training.infer(fit, image, tta=True)
    assert not np.allclose(tta.array, whole.array)


def test_inference_matches_monai_sliding_window(cases: list[Case]) -> None:
    from monai.inferers import sliding_window_inference

    fit = training.train(_net(), cases, OperatorRef("dice_ce"), epochs=1)
    image = cases[0].value.input
    ours = training.infer(fit, image, window=(32, 32, 16), overlap=0.25, blend="gaussian")
    x = torch.from_numpy(np.asarray(image.array, dtype=np.float32))[None, None]
    with torch.no_grad():
        theirs = torch.softmax(sliding_window_inference(x, (16, 32, 32), 1, fit.network.module, overlap=0.25,
                                                        mode="gaussian"), dim=1)[0]
    np.testing.assert_allclose(ours.array, np.moveaxis(theirs.numpy(), 0, -1), atol=1e-6)


def test_a_tied_validation_score_keeps_the_later_weights_but_is_no_improvement(cases: list[Case]) -> None:
    """With a learning rate of 0 nothing changes, so every validation ties the first:
    the latest weights are kept, and patience still stops the training."""
    fit = training.train(_net(), cases[:2], OperatorRef("dice_ce"), optimizer=OperatorRef("adam", {"lr": 0.0}),
                         epochs=6, validate=cases[2:], metric=OperatorRef("dice", inputs={"pred": OperatorRef("argmax")}),
                         patience=2)
    assert [h["epoch"] for h in fit.history] == [1, 2, 3]  # epochs 2 and 3 tie: two validations without gain
    assert len({h["val_dice"] for h in fit.history}) == 1
    assert fit.best_epoch == 3
    assert training._judge(0.5, 0.5, "max") == (True, False) and training._judge(0.6, 0.5, "max") == (True, True)
    assert training._judge(0.4, 0.5, "max") == (False, False) and training._judge(0.4, 0.5, "min") == (True, True)
    assert training._judge(float("nan"), None, "max") == (False, False)


def test_classifiers_train_on_classes_and_give_scores() -> None:
    rng = np.random.default_rng(0)
    data = []
    for i in range(6):
        label = i % 2
        array = rng.normal(size=(16, 16)).astype(np.float32) + 2.0 * label
        data.append(Case(f"c{i}", Pair(Volume(array, (1.0, 1.0), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0)), label)))
    net = Network("resnet2d", {"depth": 18, "in_channels": 1, "classes": 2}, None)
    fit = training.train(net, data, OperatorRef("ce_class"), epochs=2, batch=3)
    scores = training.infer(fit, data[0].value.input)
    assert isinstance(scores, np.ndarray) and scores.shape == (2,) and scores.sum() == pytest.approx(1.0)


def test_load_trained_reads_safetensors_and_state_dicts(tmp_path: Path, cases: list[Case]) -> None:
    from safetensors.torch import save_file

    from medasl.ops import nets

    module = nets.build("unet3d", UNET, seed=3)
    save_file(module.state_dict(), str(tmp_path / "w.safetensors"))
    torch.save(module.state_dict(), tmp_path / "w.pt")
    for name in ("w.safetensors", "w.pt"):
        loaded = training.load_trained(_net(), str(tmp_path / name))
        assert all(torch.equal(v, module.state_dict()[k]) for k, v in _weights(loaded).items())
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(DataError) as caught:
        training.load_trained(_net(), str(tmp_path / "bad.pt"))
    assert caught.value.code == "E1002"


def test_the_checker_s_target_conversions_are_applied(cases: list[Case]) -> None:
    """`loss.target=@instances_to_labels`: instance ids (3, 7, ...) become one foreground class."""
    instance_cases = []
    for c in cases:
        labels = np.asarray(c.value.target.array)
        ids = np.where(labels > 0, 7, 0).astype(np.uint16)
        instance_cases.append(Case(c.id, Pair(c.value.input, c.value.target.with_array(ids, kind="instances"))))
    to_labels = OperatorRef("instances_to_labels")
    loss = OperatorRef("dice_ce", inputs={"target": to_labels})
    metric = OperatorRef("dice", inputs={"pred": OperatorRef("argmax"), "target": to_labels})
    fit = training.train(_net(), instance_cases[:3], loss, epochs=1, validate=instance_cases[3:], metric=metric)
    assert math.isfinite(fit.history[0]["loss"]) and 0.0 <= fit.history[0]["val_dice"] <= 1.0
    with pytest.raises(DataError):  # without the conversion, 7 is no class of a two-class network
        training.train(_net(), instance_cases[:3], OperatorRef("dice_ce"), epochs=1)


def test_the_nodule_detector_trains_on_boxes_and_detects_in_world_mm() -> None:
    from medasl.runtime.values import Boxes

    rng = np.random.default_rng(0)
    found = []
    for i in range(3):
        array = rng.normal(0, 0.05, (32, 32, 32)).astype(np.float32)
        array[10:16, 12:18, 8:14] += 1.0  # a bright cube: the "nodule"
        image = Volume(array, (0.8, 0.8, 1.5), (-10.0, 5.0, 20.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
        mask = np.zeros(array.shape, np.uint8)
        mask[10:16, 12:18, 8:14] = 1
        found.append(Case(f"c{i}", Pair(image, io.mask_to_boxes(image.with_array(mask, kind="labels")))))
    net = Network("nodule_detector", {"in_channels": 1, "classes": 2, "depth": 10, "anchors": (6, 8, 10)}, None)
    fit = training.train(net, found[:2], OperatorRef("box_loss", {"box_weight": 1.0}), epochs=2, batch=1,
                         validate=found[2:], metric=OperatorRef("froc"))
    assert all(math.isfinite(h["loss"]) for h in fit.history) and 0.0 <= fit.history[-1]["val_froc"] <= 1.0
    boxes = training.infer(fit, found[2].value.input)
    assert isinstance(boxes, Boxes) and len(boxes) > 0 and boxes.dim == 3
    image = found[2].value.input
    extent = np.array(image.origin) + (np.array(image.shape) - 1) * np.array(image.spacing)
    assert np.all(boxes.lo >= np.array(image.origin) - 20) and np.all(boxes.hi <= extent + 20)  # world mm


def test_a_detector_whose_training_cases_have_no_box_is_e1006() -> None:
    """Annotation ids that match no scan leave every case without boxes: a diagnostic, not
    a detector trained to find nothing."""
    from medasl.runtime.values import Boxes

    image = Volume(np.zeros((32, 32, 32), np.float32), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    none = Boxes(np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0, np.int64), np.zeros(0))
    net = Network("nodule_detector", {"in_channels": 1, "classes": 2, "depth": 10, "anchors": (6, 8, 10)}, None)
    with pytest.raises(DataError) as info:
        training.train(net, [Case("scan1", Pair(image, none)), Case("scan2", Pair(image, none))],
                       OperatorRef("box_loss"), epochs=1, batch=1)
    assert info.value.code == "E1006" and "none of the 2 training cases (scan1, scan2) has a box" in info.value.message


def test_boxes_and_detector_voxels_convert_both_ways() -> None:
    image = Volume(np.zeros((10, 12, 14)), (0.7, 0.8, 2.5), (5.0, -3.0, 10.0), (-1, 0, 0, 0, 1, 0, 0, 0, 1))
    mask = np.zeros((10, 12, 14), np.uint8)
    mask[2:5, 3:8, 4:10] = 1
    boxes = io.mask_to_boxes(image.with_array(mask, kind="labels"))
    voxels = io.boxes_to_voxels(boxes, image)
    np.testing.assert_allclose(voxels, [[2, 3, 4, 5, 8, 10]])  # [z0, y0, x0, z1, y1, x1), voxel i = [i, i+1)
    back = io.voxels_to_boxes(voxels, boxes.classes, boxes.scores, image)
    np.testing.assert_allclose(back.lo, boxes.lo)
    np.testing.assert_allclose(back.hi, boxes.hi)


def test_a_training_case_the_network_cannot_take_is_e2008(cases: list[Case]) -> None:
    """A size set with `--set` escapes the checker: a clear diagnostic instead of a
    tensor-size error deep inside the U-Net."""
    odd = Case("odd", Pair(pre.crop_or_pad(cases[1].value.input, (30, 32, 16)),
                            pre.crop_or_pad(cases[1].value.target, (30, 32, 16))))
    with pytest.raises(DataError) as caught:
        training.train(_net(), [cases[0], odd], OperatorRef("dice_ce"), epochs=1)
    assert caught.value.code == "E2008" and "case odd: its size (30, 32, 16) is not divisible by" in caught.value.message


def test_a_window_the_network_cannot_take_is_e2008(cases: list[Case]) -> None:
    fit = training.train(_net(), cases[:2], OperatorRef("dice_ce"), epochs=1)
    with pytest.raises(DataError) as caught:
        training.infer(fit, cases[0].value.input, window=(32, 32, 12))
    assert caught.value.code == "E2008"
