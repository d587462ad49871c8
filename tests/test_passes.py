"""The IR's contract (users, replace_all_uses_with, verify, JSON) and each pass on its
own; hypothesis builds random pipelines and shows every level's result well formed."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medasl.ir.graph import Const, Graph, GraphError, Node, Ref, Tup, map_arg, refs
from medasl.ir.types import Ty
from medasl.passes import eliminate_common, eliminate_dead, optimize, place_storage, specialize, wire_reports
from medasl.semantics.checker import check_source
from medasl.source import SourceFile
from tests.conftest import ROOT

IMPORTS = "import std.io, std.data, std.pre, std.aug, std.post, std.nets, std.losses, std.train, std.metrics, " \
          "std.viz, std.report\n"


def checked(body: str, overrides: dict[str, str] | None = None) -> Graph:
    result = check_source(SourceFile("t.medas", IMPORTS + "pipeline p {\n" + body + "\n}\n"), overrides=overrides)
    assert not result.diagnostics.has_errors, [d.message for d in result.diagnostics.errors]
    (graph,) = result.graphs
    graph.verify()
    return graph


def ran(graph: Graph, *passes: object) -> Graph:
    copy = graph.copy()
    for p in passes:
        p.PASS.run(copy)  # type: ignore[attr-defined]
        copy.verify()
    return copy


# ----- the IR -----------------------------------------------------------------------

CHAIN = """
  param crop = 32
  cases = phantom(cases=2, size=(32, 32, 32))
  a = cases |> window(level=40, width=400) |> crop_or_pad((crop, crop, 32))
  w = write_nifti(a.image, "a/*.nii.gz")
"""


def test_references_inside_tuples_are_uses() -> None:
    graph = checked(CHAIN)
    assert isinstance(graph.nodes["a"].arg("size"), Tup)
    assert graph.users("crop") == ["a"] and graph.nodes["a"].inputs() == ["window", "crop", "crop"]
    value = Tup((Ref("x"), Const(1), Tup((Ref("y"),))))
    assert refs(value) == ["x", "y"]
    assert refs(map_arg(value, lambda r: Ref(r.node + "2"))) == ["x2", "y2"]


def test_replace_all_uses_with_updates_users_and_sinks() -> None:
    graph = checked(CHAIN)
    graph.replace_all_uses_with("window", Ref("cases"))
    assert graph.users("window") == [] and "a" in graph.users("cases")
    graph.remove("window")
    graph.verify()
    with pytest.raises(GraphError):
        graph.remove("cases")  # still read


@pytest.mark.parametrize("damage", ["dangling", "hidden", "stale_users", "later"])
def test_verify_finds_malformed_graphs(damage: str) -> None:
    graph = checked(CHAIN)
    node = graph.nodes["a"]
    if damage == "dangling":
        node.args = (("x", Ref("nowhere")),)
        graph.rebuild_users()
    elif damage == "hidden":
        graph.set_args(node, (("size", Const((Ref("crop"), 2))),))
    elif damage == "stale_users":
        node.args = (("x", Ref("cases")),)  # edited without set_args
    else:
        graph.move_to_end("window")
    with pytest.raises(GraphError):
        graph.verify()


@pytest.mark.parametrize("example", sorted((ROOT / "examples").glob("*.medas")), ids=lambda p: p.stem)
def test_json_round_trips_for_every_example_and_level(example: object) -> None:
    result = check_source(SourceFile.read(example))  # type: ignore[arg-type]
    for graph in result.graphs:
        for level in (None, 0, 1, 2):
            g = graph if level is None else optimize(graph, level).graph
            again = Graph.from_json(g.to_json())
            again.verify()
            assert again.to_json() == g.to_json() and again.dump() == g.dump()


# ----- passes ------------------------------------------------------------------------


def test_specialize_folds_parameters_into_tuples_and_records_them() -> None:
    graph = ran(checked(CHAIN + "  param lr = 0.01 search loguniform(1e-4, 1e-1)\n"
                        "  net = unet3d(in_channels=1, classes=2)\n"
                        "  fit = train(net, a, loss=dice_ce, optimizer=adam(lr), epochs=1)\n", {"crop": "64"}),
                specialize)
    assert not [n for n in graph.nodes.values() if n.op == "param"]
    assert graph.nodes["a"].arg("size") == Const((64, 64, 32))
    assert graph.params["crop"] == Const(64) and graph.searches["lr"]["kind"] == "loguniform"
    assert graph.nodes["adam"].arg("lr") == Const(0.01)


def test_wire_reports_gives_html_the_figures_and_metrics() -> None:
    graph = ran(checked("""
  cases = phantom(cases=2)
  d = dice(cases.label, cases.label)
  r = html("r.html")
  show overlay(cases.image, cases.label)
  report r
"""), specialize, wire_reports)
    node = graph.nodes["r"]
    assert {k for k, _ in node.args} >= {"figures.overlay", "metrics.d"}
    assert list(graph.nodes)[-1] == "r"  # after what it reads


def test_eliminate_common_merges_equal_deterministic_nodes_only() -> None:
    graph = ran(checked("""
  cases = phantom(cases=2)
  a = cases |> window(level=40, width=400) |> rescale(0, 1)
  b = cases |> window(level=40, width=400) |> rescale(0, 1)
  fa = cases |> flip(axis=0)
  fb = cases |> flip(axis=0)
  w = write_nifti(a.image, "a/*.nii.gz")
  v = write_nifti(b.image, "b/*.nii.gz")
  x = write_nifti(fa.image, "c/*.nii.gz")
  y = write_nifti(fb.image, "d/*.nii.gz")
"""), specialize, eliminate_common)
    windows = [n for n in graph.nodes.values() if n.op == "window"]
    assert len(windows) == 1  # the two windows were one computation
    assert {"a", "b"} <= set(graph.nodes)  # both named results stay (the user asked for each)
    assert {"fa", "fb"} <= set(graph.nodes)  # two random draws are two draws


def test_eliminate_dead_keeps_what_users_can_see() -> None:
    graph = checked(CHAIN)
    graph.add(Node("orphan", "field", (("_", Ref("cases")), ("name", Const("image"))), Ty("Any"), None))
    graph = ran(graph, specialize, eliminate_dead)
    assert "orphan" not in graph.nodes and {"a", "w", "cases"} <= set(graph.nodes)


def test_place_storage_keeps_chains_in_memory_and_stores_expensive_steps() -> None:
    graph = ran(checked("""
  cases = phantom(cases=4) |> resample(spacing=(3.0, 3.0, 3.0) mm)
  folds = split(cases, val=0.5, seed=1)
  lungs = folds.train.image |> lung_mask |> select_labels(labels=(1,))
  prepared = folds.train |> window(level=40, width=400) |> crop_or_pad((32, 32, 32))
  augmented = prepared |> flip(axis=0)
  net = unet3d(in_channels=1, classes=2, channels=(4, 8, 16, 32, 64))
  fit = train(net, augmented, loss=dice_ce, epochs=1)
  w = write_nifti(lungs, "lungs/*.nii.gz")
"""), specialize, place_storage)
    store = {n.id: n.store for n in graph.nodes.values()}
    assert store["window"] == "memory"  # inside a chain: computed with the next step
    assert store["prepared"] == "input of augmentation"  # training redraws the flip from it every epoch
    assert store["lung_mask"] == "expensive"  # never recomputed for a downstream change
    assert store["folds"] == "never" and store["fit"] == "expensive" and store["w"] == "output"


def test_hashes_follow_values_not_names() -> None:
    a = optimize(checked(CHAIN), 1).graph
    b = optimize(checked(CHAIN.replace("a = ", "renamed = ").replace("(a.", "(renamed.")), 1).graph
    c = optimize(checked(CHAIN, {"crop": "16"}), 1).graph
    assert a.nodes["a"].hash == b.nodes["renamed"].hash
    assert a.nodes["a"].hash != c.nodes["a"].hash and a.nodes["window"].hash == c.nodes["window"].hash


# ----- random pipelines ------------------------------------------------------------------

STEPS = {
    "resample": "resample(spacing=({s}, {s}, {s}) mm)",
    "window": "window(level={l}, width=400)",
    "rescale": "rescale(0, 1)",
    "zscore": "zscore",
    "crop": "crop_or_pad(({c}, {c}, {c}))",
    "flip": "flip(axis={a})",
    "rotate": "rotate(angle=10 deg)",
    "noise": "gaussian_noise(std=0.1)",
    "clip": "clip(-100, 100)",
}


@st.composite
def pipelines(draw: st.DrawFn) -> str:
    lines = ["  param size = 32", "  cases = phantom(cases=2, size=(32, 32, 32))"]
    names = ["cases"]
    for i in range(draw(st.integers(1, 4))):
        source = draw(st.sampled_from(names))
        chain = draw(st.lists(st.sampled_from(sorted(STEPS)), min_size=1, max_size=5))
        text = " |> ".join(STEPS[k].format(s=draw(st.sampled_from(["2.0", "3.0"])), l=draw(st.integers(0, 80)),
                                           c="size" if draw(st.booleans()) else "32", a=draw(st.integers(0, 2)))
                           for k in chain)
        lines.append(f"  v{i} = {source} |> {text}")
        names.append(f"v{i}")
        if draw(st.booleans()):
            lines.append(f'  w{i} = write_nifti(v{i}.image, "v{i}/*.nii.gz")')
    return "\n".join(lines)


@settings(max_examples=40, deadline=None)
@given(pipelines(), st.sampled_from([0, 1, 2, 3]))
def test_every_level_gives_a_well_formed_graph(body: str, level: int) -> None:
    from medasl.lower.plan import lower

    graph = checked(body)
    result = optimize(graph, level)  # verifies after every pass
    plan = lower(result.graph, level)
    assert set(plan.steps) == set(result.graph.nodes)
    for step in plan.steps.values():
        assert set(step.inputs.values()) <= set(plan.steps)
    written = {n.binding for n in graph.nodes.values() if "writer" in n.traits}
    assert written <= {s.binding for s in plan.steps.values()}  # what is written is never eliminated
    again = Graph.from_json(result.graph.to_json())
    assert again.dump() == result.graph.dump()


def test_commute_pointwise_moves_whole_voxel_steps_before_monotone_ones() -> None:
    from medasl.passes import commute_pointwise

    graph = ran(checked("""
  cases = phantom(cases=2)
  prepped = cases |> window(level=40, width=400) |> clip(0.1, 0.9) |> crop_or_pad((32, 32, 32)) |> rescale(0, 1)
            |> flip(axis=0)
  w = write_nifti(prepped.image, "p/*.nii.gz")
"""), specialize, commute_pointwise)
    order = [n.op for n in graph.nodes.values() if n.op not in ("phantom", "field", "write_nifti")]
    assert order == ["crop_or_pad", "window", "clip", "rescale", "flip"]  # rescale has a reduction: it stays
    assert graph.nodes["prepped"].op == "flip" and graph.nodes["prepped"].binding == "prepped"
    crop = next(n for n in graph.nodes.values() if n.op == "crop_or_pad")
    assert crop.arg("x") == Ref("cases") and graph.users(crop.id) == ["window"]


def _fused(graph: Graph) -> list[tuple[str, tuple[str, ...]]]:
    return [(n.op, tuple(graph.nodes[n.id].arg("chain").value[i]["op"]  # type: ignore[union-attr]
                         for i in range(len(n.fused)))) for n in graph.nodes.values() if n.fused]


def test_fuse_spatial_and_intensity_replace_chains_by_one_step() -> None:
    from medasl.passes import fuse_intensity, fuse_spatial

    graph = ran(checked("""
  cases = phantom(cases=2)
  a = cases |> resample(spacing=(3.0, 3.0, 3.0) mm) |> crop_or_pad((32, 32, 32)) |> window(level=40, width=400)
      |> rescale(0, 1) |> flip(axis=0) |> rotate(angle=5 deg)
  w = write_nifti(a.image, "a/*.nii.gz")
"""), specialize, fuse_spatial, fuse_intensity)
    assert _fused(graph) == [("fused_spatial", ("resample", "crop_or_pad")), ("fused_intensity", ("window", "rescale")),
                             ("fused_spatial", ("flip", "rotate"))]
    last = graph.nodes["a"]  # the last step's id, name and readers stay
    assert last.op == "fused_spatial" and last.fused == ("flip", "a") and last.random
    assert graph.users("a") == ["a_image"]


@pytest.mark.parametrize(("chain", "expected"), [
    ("crop_or_pad((32, 32, 32)) |> crop_foreground", []),  # its box depends on the data: first only
    ("crop_foreground |> crop_or_pad((32, 32, 32))", [("fused_spatial", ("crop_foreground", "crop_or_pad"))]),
    # they disagree on images: each interpolating step goes to the kernel alone
    ("resample(spacing=(3.0, 3.0, 3.0) mm, interp=nearest) |> rotate(angle=5 deg)",
     [("fused_spatial", ("resample",)), ("fused_spatial", ("rotate",))]),
    ("crop_or_pad((32, 32, 32))", []),  # alone, a step that moves whole voxels is left to its operator
    ("zscore(mask=m) |> rescale(0, 1)", []),  # a second input
])
def test_fusion_rules(chain: str, expected: list[tuple[str, tuple[str, ...]]]) -> None:
    from medasl.passes import fuse_intensity, fuse_spatial

    graph = ran(checked(f"""
  cases = phantom(cases=2)
  m = cases.label
  a = cases |> {chain}
  w = write_nifti(a.image, "a/*.nii.gz")
""".replace("zscore(mask=m)", "zscore(mask=m)" if "zscore" in chain else "")), specialize, fuse_spatial,
                fuse_intensity)
    assert _fused(graph) == expected


def test_no_bspline_in_one_sampling() -> None:
    from medasl.passes import fuse_spatial

    graph = ran(checked("""
  images = phantom(cases=2).image
  a = images |> resample(spacing=(3.0, 3.0, 3.0) mm, interp=bspline) |> flip(axis=0)
  w = write_nifti(a, "a/*.nii.gz")
"""), specialize, fuse_spatial)
    assert _fused(graph) == []


def test_training_input_keeps_deterministic_and_random_steps_apart() -> None:
    from medasl.passes import fuse_spatial

    body = """
  cases = phantom(cases=4) |> resample(spacing=(3.0, 3.0, 3.0) mm) |> crop_or_pad((32, 32, 32)) |> flip(axis=0)
           |> rotate(angle=5 deg)
  net = unet3d(in_channels=1, classes=2, channels=(4, 8, 16, 32, 64))
  fit = train(net, cases, loss=dice_ce, epochs=1)
"""
    graph = ran(checked(body), specialize, fuse_spatial)
    assert _fused(graph) == [("fused_spatial", ("resample", "crop_or_pad")), ("fused_spatial", ("flip", "rotate"))]
    no_training = ran(checked(body.replace("  fit = train(net, cases, loss=dice_ce, epochs=1)\n",
                                           '  w = write_nifti(cases.image, "c/*.nii.gz")\n')), specialize, fuse_spatial)
    assert _fused(no_training) == [("fused_spatial", ("resample", "crop_or_pad", "flip", "rotate"))]


def test_a_chain_broken_by_a_rule_starts_again_after_the_break() -> None:
    from medasl.passes import fuse_spatial

    graph = ran(checked("""
  images = phantom(cases=2).image
  a = images |> resample(spacing=(3.0, 3.0, 3.0) mm, interp=nearest) |> rotate(angle=5 deg) |> flip(axis=0)
  w = write_nifti(a, "a/*.nii.gz")
"""), specialize, fuse_spatial)
    # nearest and linear images do not mix: the resampling goes to the kernel alone
    assert _fused(graph) == [("fused_spatial", ("resample",)), ("fused_spatial", ("rotate", "flip"))]
