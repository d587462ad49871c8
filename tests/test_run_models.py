"""`medasc run` with networks: the quickstart trains, evaluates and reports; a training
killed mid-epoch resumes at its last finished epoch and ends with the same weights as an
uninterrupted one; labels the network cannot predict are a diagnostic."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="training needs the run extra (pip install -e '.[run]')")
pytest.importorskip("monai", reason="training needs the run extra (pip install -e '.[run]')")

from medasl.ops import io  # noqa: E402
from medasl.runtime.cache import Cache  # noqa: E402
from tests.conftest import ROOT  # noqa: E402
from tests.test_cli import run  # noqa: E402

SMALL = """import std.io, std.data, std.pre, std.aug, std.nets, std.losses, std.train, std.post, std.metrics
pipeline small {
  cases = phantom(cases=6, size=(32, 32, 16), seed=2)
  folds = split(cases, val=0.34, seed=1)
  prep(x) = x |> window(level=40, width=400) |> rescale(0, 1)
  train_cases = folds.train |> prep |> flip(axis=0, p=0.5) |> gaussian_noise(std=0.05, p=1.0)
  val_cases = folds.val |> prep
  net = unet3d(in_channels=1, classes=2, channels=(4, 8, 16, 32, 64), res_units=1)
  fit = train(net, train_cases, loss=dice_ce, optimizer=adam(lr=1e-2), epochs=EPOCHS, batch=2,
              validate=val_cases, metric=dice)
  pred = infer(fit, val_cases.image) |> argmax
  score = dice(pred, val_cases.label) maximize
}
"""


def _args(file: Path, cache: Path, out: Path) -> list[str]:
    return ["run", str(file), "--cache-dir", str(cache), "--out", str(out)]


def _events(out: Path, pipeline: str) -> list[list[dict[str, object]]]:
    """The records of every run log, oldest first (a killed run's last line may be cut)."""
    runs = []
    for path in sorted((out / pipeline / "logs").glob("run-*.jsonl")):
        records = []
        for line in path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                pass
        runs.append(records)
    return runs


def _trained_outputs(cache: Path) -> tuple[dict[str, str], list[dict[str, object]]]:
    """The stored trained model: sha256 of each weight array, and the history without timings."""
    import hashlib

    from medasl.runtime.tasks import load_ref

    store = Cache(cache / "results")
    entries = [e for e in store.entries() if e.op == "train"]
    assert len(entries) == 1
    trained = load_ref(store, entries[0].digest)
    state = trained.network.module.state_dict()  # type: ignore[attr-defined]
    weights = {name: hashlib.sha256(tensor.detach().cpu().numpy().tobytes()).hexdigest()
               for name, tensor in state.items()}
    assert weights
    history = [{k: v for k, v in h.items() if k != "seconds"} for h in trained.history]  # type: ignore[attr-defined]
    return weights, history


def metric_inputs(file: Path, cache_dir: Path, metric: str, sets: dict[str, str] | None = None) -> dict[str, list]:
    """After `medasc run FILE --cache-dir CACHE_DIR`: the values the step `metric` (a
    metric's binding, e.g. `score`) was computed from, by argument (`pred`, `target`),
    one per case, read from the cache. The steps' references come from the plan that
    `medasc run` ran (-O2), prepared again over the filled cache."""
    from medasl.runtime.digests import DigestMemo
    from medasl.runtime.executor import Cases, Preparer, RunOptions
    from medasl.runtime.session import plans
    from medasl.runtime.tasks import load_ref
    from medasl.semantics.checker import check_source
    from medasl.source import SourceFile

    cache = Cache(cache_dir / "results")
    for plan in plans(check_source(SourceFile.read(file), None, sets).graphs, sets or {}):
        steps = [s for s in plan.steps.values() if s.label == metric]
        if not steps:
            continue
        options = RunOptions(cache=cache, out_dir=cache_dir / "unused", workers=1)
        preparer = Preparer(plan, options, DigestMemo(cache.root))
        values: dict[str, object] = {}
        for step in plan.steps.values():
            values[step.id] = preparer.prepare(step, values).value  # type: ignore[arg-type]
        found = {}
        for arg, source in steps[0].inputs.items():
            cases = values[source]
            assert isinstance(cases, Cases), (metric, arg, cases)
            found[arg] = [load_ref(cache, ref) for _, ref in cases.items]
        return found
    raise AssertionError(f"no step `{metric}` in {file}")


def constant_predictor(metric: str, targets: list, choices: range, **options: object) -> float:
    """The best `metric` (with `options`, as the pipeline gives them) a predictor that
    ignores the images reaches on these cases: one label everywhere (a label map full
    of k) or one class for every case (scores all on k), the best k of `choices`. A
    network that learned something beats it."""
    import numpy as np

    from medasl.ops import metrics
    from medasl.runtime.values import Volume

    function = metrics.OPERATORS[metric]
    best = -np.inf
    for k in choices:
        if isinstance(targets[0], Volume):
            value = float(np.nanmean([function(pred=t.with_array(np.full_like(np.asarray(t.array), k)), target=t,
                                               **options) for t in targets]))
        else:
            scores = np.eye(len(choices), dtype=np.float32)[k]
            value = float(function(pred=[scores] * len(targets), target=targets))
        best = max(best, value)
    return best


def test_the_quickstart_trains_evaluates_and_reports(tmp_path: Path) -> None:
    code, _, err = run(*_args(ROOT / "examples" / "quickstart.medas", tmp_path / "cache", tmp_path / "out"))
    assert code == 0, err
    line = next(x for x in err.splitlines() if x.startswith("score = dice"))
    dice = float(line.split()[3])
    assert 0.5 < dice <= 1.0, line  # 40 epochs on the phantom reach about 0.8
    cases = metric_inputs(ROOT / "examples" / "quickstart.medas", tmp_path / "cache", "score")
    assert len(cases["target"]) == 3
    trivial = constant_predictor("dice", cases["target"], range(2))
    assert dice > trivial + 0.3, (dice, trivial)  # learned: the organ everywhere gives about 0.06
    html = (tmp_path / "out" / "quickstart" / "quickstart.html").read_text()
    assert "Quickstart: organ segmentation" in html and html.count("<img") == 4  # loss curve + 3 overlays
    assert (tmp_path / "out" / "quickstart" / "figures" / "loss_curve.png").stat().st_size > 1000
    epochs = (tmp_path / "out" / "quickstart" / "logs" / "fit-epochs.csv").read_text().splitlines()
    assert epochs[0].startswith("epoch,loss,lr") and len(epochs) == 41


def test_a_training_killed_mid_epoch_resumes_to_the_same_weights(tmp_path: Path) -> None:
    file = tmp_path / "small.medas"
    file.write_text(SMALL.replace("EPOCHS", "8"))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    reference = subprocess.run([sys.executable, "-m", "medasl.cli", *_args(file, tmp_path / "ref", tmp_path / "o1")],
                               capture_output=True, text=True, env=env, timeout=300)
    assert reference.returncode == 0, reference.stderr

    cache, out = tmp_path / "cache", tmp_path / "o2"
    process = subprocess.Popen([sys.executable, "-m", "medasl.cli", *_args(file, cache, out)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline:  # kill during epoch 4, once epoch 3 is logged
            logs = _events(out, "small") if (out / "small" / "logs").exists() else []
            if logs and any(e.get("event") == "epoch" and e.get("epoch") == 3 for e in logs[-1]):
                time.sleep(0.05)
                break
            if process.poll() is not None:
                pytest.fail("the run ended before it could be killed")
            time.sleep(0.02)
        os.killpg(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=30)

    resumed = subprocess.run([sys.executable, "-m", "medasl.cli", *_args(file, cache, out)],
                             capture_output=True, text=True, env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    epochs = [e["epoch"] for e in _events(out, "small")[-1] if e.get("event") == "epoch"]
    assert epochs and epochs[0] in (4, 5) and epochs[-1] == 8, epochs  # continued, not restarted
    assert _trained_outputs(cache) == _trained_outputs(tmp_path / "ref")


def test_labels_the_network_cannot_predict_are_e2006(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    for case in io.phantom(cases=4, size=(32, 32, 16), seed=1):
        label = case.value.target
        array = label.array.copy()
        if case.id == "case002":
            array[array == 1] = 2  # a second structure the pipeline says nothing about
        io.write_nifti(case.value.input, tmp_path / "data" / f"{case.id}_ct.nii.gz")
        io.write_nifti(label.with_array(array), tmp_path / "data" / f"{case.id}_seg.nii.gz")
    text = SMALL.replace("EPOCHS", "1").replace(
        "phantom(cases=6, size=(32, 32, 16), seed=2)",
        # the class count left open: a map declared LabelMap[3, 2] holding 2 is E1040 when it is read
        'folder("data", image="*_ct.nii.gz", label="*_seg.nii.gz") as Dataset<Pair<Image[3, CT], LabelMap[3]>>')
    file = tmp_path / "p.medas"
    file.write_text(text.replace("val=0.34", "val=0.25"))
    code, _, err = run(*_args(file, tmp_path / "cache", tmp_path / "out"))
    assert code == 1, err
    assert "error[E2006]" in err and "case002" in err and "Traceback" not in err


def _recipes_after_a_run(tmp_path: Path, text: str) -> tuple[dict[str, object], Cache, object]:
    """Run `text` in this process; the training step's recipes, the cache and the result."""
    from medasl.runtime.digests import DigestMemo
    from medasl.runtime.executor import LocalExecutor, Preparer, RunOptions
    from medasl.runtime.progress import Reporters
    from medasl.runtime.session import plans
    from medasl.semantics.checker import check_source
    from medasl.source import SourceFile

    (plan,) = plans(check_source(SourceFile("small.medas", text)).graphs, {})  # what `medasc run` runs
    options = RunOptions(cache=Cache(tmp_path / "results"), out_dir=tmp_path / "out", workers=1)
    result = LocalExecutor().run(plan, options, Reporters())
    preparer = Preparer(plan, options, DigestMemo(tmp_path / "results"))
    values: dict[str, object] = {}
    for step in plan.steps.values():
        values[step.id] = preparer.prepare(step, values).value  # type: ignore[arg-type]
    (train,) = [s for s in plan.steps.values() if s.op == "train"]
    return preparer.recipes(train), options.cache, result  # type: ignore[return-value]


def test_augmentations_are_drawn_anew_in_every_epoch(tmp_path: Path) -> None:
    """Training reads each case's augmentation recipe (its random steps) and draws it
    again per epoch from the seed: epochs differ, one epoch is reproducible."""
    import numpy as np

    from medasl.runtime.tasks import EpochAugmenter, load_ref

    recipes, cache, result = _recipes_after_a_run(tmp_path, SMALL.replace("EPOCHS", "1"))
    assert recipes and all(any(stage.rng_seed for stage in r.stages) for r in recipes.values())  # type: ignore[attr-defined]
    augment = EpochAugmenter(cache, recipes)  # type: ignore[arg-type]
    case, ref = result.values["train_cases"].items[0]  # type: ignore[attr-defined]
    first = np.asarray(load_ref(cache, ref).input.array)  # type: ignore[attr-defined]
    second = np.asarray(augment(case, 2).input.array)  # type: ignore[union-attr]
    third = np.asarray(augment(case, 3).input.array)  # type: ignore[union-attr]
    again = np.asarray(EpochAugmenter(cache, recipes)(case, 2).input.array)  # type: ignore[union-attr, arg-type]
    assert not np.array_equal(first, second) and not np.array_equal(second, third)
    np.testing.assert_array_equal(second, again)


def test_patch_positions_are_drawn_anew_in_every_epoch(tmp_path: Path) -> None:
    """With `patches` before the augmentations, each epoch samples new patches too."""
    import numpy as np

    from medasl.runtime.tasks import EpochAugmenter

    text = SMALL.replace("EPOCHS", "1").replace(
        "|> flip(axis=0, p=0.5)", "|> patches(size=(32, 32, 16), per_case=2, positive=0.5) |> flip(axis=0, p=0.5)")
    recipes, cache, _ = _recipes_after_a_run(tmp_path, text)
    assert recipes and all(r.stages[0].op == "patches" and r.pick is not None for r in recipes.values())  # type: ignore[attr-defined]
    augment = EpochAugmenter(cache, recipes)  # type: ignore[arg-type]
    case = sorted(recipes)[0]
    second, third = augment(case, 2), augment(case, 3)
    assert second.input.shape == (32, 32, 16)  # type: ignore[union-attr]
    moved = second.input.origin != third.input.origin  # type: ignore[union-attr]
    assert moved or not np.array_equal(np.asarray(second.input.array), np.asarray(third.input.array))  # type: ignore[union-attr]
    again = EpochAugmenter(cache, recipes)(case, 2)  # type: ignore[arg-type]
    np.testing.assert_array_equal(np.asarray(second.input.array), np.asarray(again.input.array))  # type: ignore[union-attr]
