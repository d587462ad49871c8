"""Cross-validation over every fold of a `kfold` (docs/language.md, "Cross-validation"):
the checker applies operators fold by fold and types the results `PerFold[k]<...>`; a
run trains every fold, reports each fold's metric and their mean, caches every fold on
its own, and the fold models' ensemble predicts the mean of their probabilities."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medasl.ir.types import Ty, format_type
from medasl.semantics.checker import check_source
from medasl.source import SourceFile

HEADER = "import std.io, std.data, std.pre, std.nets, std.losses, std.train, std.post, std.metrics, std.viz, std.report\n"

CV = HEADER + """pipeline cv {
  cases = phantom(cases=6, size=(32, 32, 16), seed=2) |> window(level=40, width=400) |> rescale(0, 1)
  folds = kfold(cases, k=3, seed=1)
  net = unet3d(in_channels=1, classes=2, channels=(4, 8, 16, 32, 64), res_units=1)
  fits = train(net, folds.train, loss=dice_ce, optimizer=adam(lr=1e-2), epochs=2, batch=2)
  probs = infer(fits, folds.val.image)
  score = dice(probs |> argmax, folds.val.label) maximize
  ens = ensemble(fits, tta=true)
  ens_probs = infer(ens, cases.image)
  ens_score = dice(ens_probs |> argmax, cases.label)
  show score, loss_curve(fits)
  report csv("cv.csv", (score, ens_score)), html("cv.html")
}
"""


def _graph(text: str, sets: dict[str, str] | None = None):  # noqa: ANN202 - a Graph or the diagnostics
    result = check_source(SourceFile("cv.medas", text), overrides=sets)
    return result.graphs[0] if result.graphs else None, result.diagnostics


def _type_of(graph, name: str) -> str:  # noqa: ANN001
    node = next(n for n in graph.nodes.values() if n.binding == name)
    return format_type(node.type)


# ----- the checker ---------------------------------------------------------------------------


def test_parts_of_a_kfold_are_per_fold_and_operators_apply_to_every_fold() -> None:
    graph, diags = _graph(CV)
    assert not diags.has_errors, [d.message for d in diags.items]
    trained = [n for n in graph.nodes.values() if n.op == "train"]
    assert sorted(n.id for n in trained) == ["fits_fold0", "fits_fold1", "fits_fold2"]
    # fold i trains on `fold(folds, i).train`: the fold index comes from the kfold, not the user
    for node in trained:
        field = graph.nodes[node.arg("data").node]
        split = graph.nodes[field.arg("_").node]
        assert (split.op, split.arg("index").value, field.arg("name").value) == ("fold", int(node.id[-1]), "train")
    assert _type_of(graph, "score") == "PerFold[3]<Metric[max]>"
    summary = graph.nodes["score"]
    assert summary.op == "cross_validated" and summary.goal == "maximize"
    assert [r.node for r in summary.arg("per_fold").items] == ["score_fold0", "score_fold1", "score_fold2"]
    assert _type_of(graph, "ens").startswith("Trained[downsample=16]<")
    assert [graph.nodes[i].op for i in graph.shows] == ["cross_validated", "loss_curve", "loss_curve", "loss_curve"]
    # the ensemble reads every fold model; its prediction is one dataset, not per fold
    assert [r.node for r in graph.nodes["ens"].arg("models").items] == ["fits_fold0", "fits_fold1", "fits_fold2"]
    assert _type_of(graph, "ens_score") == "Metric[max]"


def test_the_objective_is_the_cross_validated_mean() -> None:
    from medasl.lower.plan import lower
    from medasl.passes.manager import optimize

    graph, _ = _graph(CV)
    plan = lower(optimize(graph, 2).graph, 2)
    objective = plan.objective
    assert objective is not None and objective.op == "cross_validated" and objective.goal == "maximize"
    assert isinstance(objective.value_type, Ty) and objective.value_type.params[0].name == "Metric"
    assert sorted(objective.inputs.values()) == ["score_fold0", "score_fold1", "score_fold2"]


def test_a_per_fold_value_that_does_not_fit_is_one_error_that_says_so() -> None:
    text = CV.replace("  show score, loss_curve(fits)\n", "  show score, loss_curve(fits)\n  x = window(fits, level=1, width=2)\n")
    _, diags = _graph(text)
    errors = [d for d in diags.items if d.severity == "error"]
    assert [d.code for d in errors] == ["E0201"], [d.message for d in errors]  # once, not once per fold
    assert "found Trained" in errors[0].message
    assert any("argument `x` is PerFold[3]<Trained" in n and "applied to the value of each fold" in n for n in errors[0].notes)


def test_values_of_two_kfolds_do_not_meet() -> None:
    text = CV.replace("  probs = infer(fits, folds.val.image)",
                      "  other = kfold(cases, k=3, seed=2)\n  probs = infer(fits, other.val.image)")
    _, diags = _graph(text)
    errors = [d for d in diags.items if d.severity == "error"]
    assert [d.code for d in errors] == ["E0530"], [d.message for d in errors]
    assert "`folds`" in errors[0].message and "`other`" in errors[0].message


def test_the_number_of_folds_must_be_known() -> None:
    text = CV.replace("  folds = kfold(cases, k=3, seed=1)",
                      "  param k = 3 search int(2, 5)\n  folds = kfold(cases, k=k, seed=1)")
    _, diags = _graph(text)
    assert "E0531" in {d.code for d in diags.items}
    # a parameter that is not searched is known, also from --set
    plain = CV.replace("  folds = kfold(cases, k=3, seed=1)", "  param k = 3\n  folds = kfold(cases, k=k, seed=1)")
    graph, diags = _graph(plain, {"k": "4"})
    assert not diags.has_errors, [d.message for d in diags.items]
    assert _type_of(graph, "score") == "PerFold[4]<Metric[max]>"


# ----- running -------------------------------------------------------------------------------


def _values(file: Path, cache_dir: Path) -> dict[str, object]:
    """Every step's value after `medasc run FILE --cache-dir CACHE_DIR`, by its label, read
    from the cache through the plan that run ran (datasets as lists of case values)."""
    from medasl.runtime.cache import Cache
    from medasl.runtime.digests import DigestMemo
    from medasl.runtime.executor import Cases, Preparer, RunOptions, Single
    from medasl.runtime.session import plans
    from medasl.runtime.tasks import load_ref

    cache = Cache(cache_dir / "results")
    plan = plans(check_source(SourceFile.read(file)).graphs, {})[0]
    preparer = Preparer(plan, RunOptions(cache=cache, out_dir=cache_dir / "unused", workers=1), DigestMemo(cache.root))
    refs: dict[str, object] = {}
    found: dict[str, object] = {}
    for step in plan.steps.values():
        refs[step.id] = value = preparer.prepare(step, refs).value  # type: ignore[arg-type]
        if isinstance(value, Single):
            found[step.label] = lambda ref=value.ref: load_ref(cache, ref)
        elif isinstance(value, Cases):
            found[step.label] = lambda items=value.items: {case: load_ref(cache, ref) for case, ref in items}
    return found


def _computed(out: Path) -> list[set[str]]:
    """For every run log, oldest first: the steps that computed something."""
    runs = []
    for path in sorted((out / "cv" / "logs").glob("run-*.jsonl")):
        records = [json.loads(line) for line in path.read_text().splitlines()]
        runs.append({r["step"] for r in records if r["event"] == "done" and r["computed"]})
    return runs


def test_every_fold_trains_and_the_ensemble_averages_the_fold_models(tmp_path: Path) -> None:
    pytest.importorskip("torch", reason="training needs the run extra (pip install -e '.[run]')")
    pytest.importorskip("monai", reason="training needs the run extra (pip install -e '.[run]')")
    import numpy as np
    import torch

    from medasl.ops.train import image_tensor
    from tests.test_cli import run

    file = tmp_path / "cv.medas"
    file.write_text(CV)
    args = ["run", str(file), "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "out")]
    code, _, err = run(*args)
    assert code == 0, err
    values = _values(file, tmp_path / "cache")

    # every fold: its own model, its validation cases, its metric; the summary is their mean
    folds = [values[f"score_fold{i}"]() for i in range(3)]
    score = values["score"]()
    assert [len(f.per_case) for f in folds] == [2, 2, 2]
    assert score.per_fold == {str(i): f.value for i, f in enumerate(folds)}
    assert score.value == pytest.approx(np.mean([f.value for f in folds]), abs=1e-12)
    assert sorted(score.per_case) == sorted(c for f in folds for c in f.per_case)  # each case validated once
    assert len(score.per_case) == 6
    line = next(x for x in err.splitlines() if x.startswith("score = dice"))
    assert "over 3 folds" in line and f"{score.value:.4f} +- {np.std([f.value for f in folds], ddof=1):.4f}" in line
    rows = (tmp_path / "out" / "cv" / "cv.csv").read_text().splitlines()
    assert rows[0] == "metric,case,class,value,fold"
    assert [r.rsplit(",", 1)[1] for r in rows[1:6]] == ["mean", "0", "1", "2", "sd"]

    # the ensemble's probabilities: the mean over the three fold models and over the input
    # mirrored along each axis (flipped back), computed here with the models themselves
    models = [values[f"fits_fold{i}"]().network.module.eval() for i in range(3)]
    predicted = values["ens_probs"]()
    images = values["cases_image"]() if "cases_image" in values else None
    assert images is not None and sorted(images) == sorted(predicted)
    for case, volume in images.items():
        x = image_tensor(volume)[None]
        expected = torch.zeros(1, 2, *x.shape[2:])
        with torch.no_grad():
            for module in models:
                for dims in [(), (2,), (3,), (4,)]:
                    probs = torch.softmax(module(torch.flip(x, dims) if dims else x), dim=1)
                    expected += torch.flip(probs, dims) if dims else probs
        expected = np.moveaxis((expected / 12)[0].numpy(), 0, -1)
        got = np.asarray(predicted[case].array)
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, atol=2e-6)
        assert not np.allclose(got, np.moveaxis(torch.softmax(models[0](x), 1)[0].detach().numpy(), 0, -1),
                               atol=1e-4)  # not simply one fold's model

    # `--force fits` names every fold's training
    code, out, err = run(*args, "--dry-run", "--force", "fits")
    assert code == 0, err
    shown = out + err
    assert all(any(f"fits_fold{i}" in row and "forced" in row for row in shown.splitlines()) for i in range(3)), shown

    # each fold is cached on its own: training fold 1 again recomputes fold 1's branch and
    # what reads every fold (the summary, the ensemble and its prediction), nothing of folds 0 and 2
    code, _, err = run(*args, "--force", "fits_fold1")
    assert code == 0, err
    code, _, err = run(*args)
    assert code == 0, err
    first, forced, again = _computed(tmp_path / "out")
    assert {f"fits_fold{i}" for i in range(3)} <= first
    fold1 = {"fits_fold1", "probs_fold1", "argmax_2", "score_fold1", "loss_curve_2"}  # argmax_2: fold 1's labels
    every_fold = {"score", "ens", "ens_probs", "argmax_4", "ens_score", "csv", "html"}
    assert forced == fold1 | every_fold, sorted(forced)
    assert not {"fits_fold0", "fits_fold2", "probs_fold0", "probs_fold2"} & forced
    assert again == set()
