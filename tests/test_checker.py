"""What the checker accepts and the IR it builds: lifting, conversions, transforms,
imports, dependent types."""

from __future__ import annotations

from medasl.ir.graph import Graph, OpRef
from medasl.ir.types import format_type
from medasl.semantics.checker import check_source
from medasl.source import SourceFile

IMPORTS = "import std.io, std.pre, std.aug, std.data, std.nets, std.losses, std.train, std.post, std.metrics, std.viz, std.report\n"


def check(body: str, name: str = "tests/data/t.medas") -> Graph:
    result = check_source(SourceFile(name, IMPORTS + "pipeline p {\n" + body + "\n}\n"))
    errors = [f"{d.code}: {d.message}" for d in result.diagnostics.errors]
    assert errors == [], errors
    return result.graphs[0]


def types(graph: Graph) -> dict[str, str]:
    return {n.id: format_type(n.type) for n in graph.nodes.values()}


CASES = """
  cases = folder("d", image="*_ct.nii.gz", label="*_seg.nii.gz") as Pair<Image[3, CT], LabelMap[3, 3]>
"""


def test_lifting_over_datasets_and_pairs() -> None:
    g = check(CASES + """
  x = cases |> resample(spacing=(1, 1, 2) mm) |> window(level=40, width=400) |> crop_or_pad((64, 64, 32))
  show overlay(x.image, x.label)
""")
    nodes = g.nodes
    assert nodes["resample"].lift == ("map", "pair")
    assert nodes["window"].lift == ("map", "image")
    assert format_type(nodes["x"].type) == (
        "Dataset<Pair<Image[3, CT, shape=(64, 64, 32)], LabelMap[3, 3, shape=(64, 64, 32)]>>")
    assert nodes["overlay"].lift == ("map",)


def test_metric_over_datasets_is_one_aggregated_value() -> None:
    g = check(CASES + """
  score = dice(cases.label, cases.label) maximize
""")
    assert g.nodes["score"].lift == ("reduce",)
    assert format_type(g.nodes["score"].type) == "Metric[max]"
    assert g.nodes["score"].goal == "maximize"


def test_dicom_series_gets_an_explicit_conversion() -> None:
    g = check("""
  series = dicom_series("dicom/") as DicomSeries[CT]
  x = series |> window(level=40, width=400)
  report write_nifti(x, "ct.nii.gz")
""")
    conv = [n for n in g.nodes.values() if n.conversion]
    assert [n.op for n in conv] == ["dicom_to_image"]
    assert g.nodes["x"].args[0][1].node == conv[0].id  # type: ignore[union-attr]
    assert format_type(g.nodes["x"].type) == "Image[3, CT]"


def test_validation_metric_on_labels_gets_argmax() -> None:
    g = check(CASES + """
  fit = train(vnet(classes=3), cases, loss=dice_ce, metric=dice, epochs=2)
  show loss_curve(fit)
""")
    args = dict(g.nodes["fit"].args)
    assert args["metric"] == OpRef("dice")
    assert args["metric.pred"] == OpRef("argmax")  # the network's probabilities, made labels
    assert "metric.target" not in args


def test_conversions_apply_case_by_case_and_are_made_once() -> None:
    g = check("""
  scans = dicom_folder("dicom/") as Dataset<DicomSeries[CT]>
  boxes = csv_annotations("nodules.csv")
  cases = boxed(scans, boxes)
  windowed = scans |> window(level=-600, width=1500)
  show box_overlay(cases.image, cases.label)
  report write_nifti(windowed, "w/*.nii.gz")
""")
    conv = [n for n in g.nodes.values() if n.conversion]
    assert [(n.op, n.lift, format_type(n.type)) for n in conv] == [
        ("dicom_to_image", ("map",), "Dataset<Image[3, CT]>")]


def test_transforms_inline_at_each_use_and_bindings_in_any_order() -> None:
    g = check("""
  b = a |> prep
  a = nifti("x.nii.gz") as Image[3, CT]
  c = nifti("y.nii.gz") as Image[3, CT] |> prep
  prep(x) = x |> window(level=40, width=400)
  report write_nifti(b, "b.nii.gz"), write_nifti(c, "c.nii.gz")
""")
    windows = [n for n in g.nodes.values() if n.op == "window"]
    assert len(windows) == 2
    order = list(g.nodes)
    assert order.index("a") < order.index("b")


def test_user_module_import_plain_and_aliased() -> None:
    for header, call in (('import "common.medas"\n', "ct_norm"), ('import "common.medas" as common\n', "common.ct_norm")):
        body = f"""pipeline p {{
  ct = nifti("a.nii.gz") as Image[3, CT]
  x = ct |> {call}
  report write_nifti(x, "x.nii.gz")
}}
"""
        result = check_source(SourceFile("tests/data/main.medas", "import std.io\n" + header + body))
        assert [d.code for d in result.diagnostics] == []
        assert [n.op for n in result.graphs[0].nodes.values()] == ["nifti", "window", "rescale", "write_nifti"]


def test_dependent_types_follow_parameter_values() -> None:
    g = check("""
  param classes = 4
  net = vnet(classes=classes)
  net2 = unet3d(classes=3, channels=(8, 16, 32, 64, 128))
  show loss_curve(train(net, folder("d", image="*") as Pair<Image[3, CT], LabelMap[3, 4]>, loss=dice_ce))
  show loss_curve(train(net2, folder("e", image="*") as Pair<Image[3, MR], LabelMap[3, 3]>, loss=dice_ce))
""")
    assert types(g)["net"] == "Model[downsample=16]<Image[3, Any, channels=1], ProbMap[3, 4]>"
    assert types(g)["net2"].startswith("Model[downsample=16]<")  # product of the default strides
    assert types(g)["net2"].endswith("ProbMap[3, 3]>")


def test_searched_parameter_leaves_its_dependent_attribute_unknown() -> None:
    g = check("""
  param width = 16 search choice(16, 32)
  net = unet3d(classes=2, channels=(width, 32, 64, 128, 256))
  show loss_curve(train(net, folder("d", image="*") as Pair<Image[3, CT], LabelMap[3, 2]>, loss=dice_ce))
""")
    assert "ProbMap[3, 2]" in types(g)["net"]


def test_hashes_ignore_names_and_spans_but_not_values() -> None:
    a = check('  x = nifti("a.nii.gz") as Image[3, CT]\n  y = x |> window(level=40, width=400)\n  report write_nifti(y, "y.nii.gz")')
    b = check('\n\n  first = nifti("a.nii.gz") as Image[3, CT]\n  second = first |> window(level=40, width=400)\n  report write_nifti(second, "y.nii.gz")')
    c = check('  x = nifti("a.nii.gz") as Image[3, CT]\n  y = x |> window(level=50, width=400)\n  report write_nifti(y, "y.nii.gz")')
    assert [n.hash for n in a.nodes.values()] == [n.hash for n in b.nodes.values()]
    assert a.nodes["x"].hash == c.nodes["x"].hash
    assert a.nodes["y"].hash != c.nodes["y"].hash


def test_syntax_errors_of_several_statements_are_all_reported() -> None:
    text = """import std.io
pipeline p {
  a = nifti("a.nii.gz"
  b = nifti("b.nii.gz") as Image[3, CT]
  c = b |> window(level=40 width=400)
  d = b |> rescale(0, 1) + 2
}
"""
    result = check_source(SourceFile("syntax.medas", text))
    found = [(d.code, d.span.line, d.help) for d in result.diagnostics]  # type: ignore[union-attr]
    assert found == [
        ("E0001", 4, "is a `)` missing at the end of line 3?"),
        ("E0001", 5, "separate arguments with `,`"),
        ("E0002", 6, "medas has no arithmetic: write the number you mean, e.g. `0.5` or `-100`"),
    ]


def test_pairs_stay_pairs_and_inference_takes_their_images() -> None:
    g = check(CASES + """
  prepped = cases |> window(level=40, width=400)
  fit = train(vnet(classes=3), prepped, loss=dice_ce)
  pred = infer(fit, prepped) |> argmax
  score = dice(pred, prepped.label) maximize
  show loss_curve(fit)
""")
    assert format_type(g.nodes["prepped"].type).startswith("Dataset<Pair<")  # lifted, not converted
    conv = [n for n in g.nodes.values() if n.conversion]
    assert [(n.op, n.lift) for n in conv] == [("pair_input", ("map",))]
    assert dict(g.nodes["infer"].args)["data"].node == conv[0].id  # type: ignore[union-attr]


def test_the_same_computation_twice_is_on_the_same_grid_but_random_ones_are_not() -> None:
    check(CASES + """
  prep(x) = x |> resample(spacing=(2, 2, 2) mm) |> crop_or_pad((64, 64, 32))
  score = dice((cases |> prep).label, (cases |> prep).label) maximize
""")
    result = check_source(SourceFile("tests/data/t.medas", IMPORTS + "pipeline p {\n" + CASES + """
  score = dice((cases |> flip(axis=0)).label, (cases |> flip(axis=0)).label) maximize
}
"""))
    assert [d.code for d in result.diagnostics] == ["E0250"]


def test_a_transform_outside_the_pipeline_does_not_see_its_values() -> None:
    text = """import std.io, std.pre
norm(x) = x |> window(level=level, width=400)
pipeline p {
  level = 40
  ct = nifti("a.nii.gz") as Image[3, CT]
  report write_nifti(ct |> norm, "b.nii.gz")
}
"""
    result = check_source(SourceFile("scope.medas", text))
    (diag,) = [d for d in result.diagnostics if d.severity.value == "error"]
    assert diag.code == "E0101" and diag.message == "`level` is not visible in transform `norm`"


def test_label_operators_lift_over_the_label_of_a_pair() -> None:
    text = """import std.io, std.pre
pipeline p {
  cases = folder("d", image="*_ct.nii.gz", label="*_seg.nii.gz") as Dataset<Pair<Image[3, CT], LabelMap[3, 118]>>
  liver = cases |> select_labels((5,))
  w = write_nifti(liver.label, "o/*.nii.gz")
}
"""
    result = check_source(SourceFile("p.medas", text))
    assert not result.diagnostics.has_errors, result.diagnostics.items
    node = result.graphs[0].nodes["liver"]
    assert node.lift == ("map", "label")
    assert format_type(node.type) == "Dataset<Pair<Image[3, CT], LabelMap[3, 2]>>"  # background and label 5


def test_the_empty_tuple_fits_a_tuple_of_any_type() -> None:
    g = check('  cases = phantom(cases=3) |> subset((), exclude=true)\n  show overlay(cases.image, cases.label)')
    assert any(n.op == "subset" for n in g.nodes.values())
