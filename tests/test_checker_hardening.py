"""Values the checker used to accept and that crashed in libraries, absurd sizes, deep
nesting and smaller front-end points of issue 10. Each program here exited 70 (a
traceback) or ran silently wrong before; each is now a coded diagnostic (programs that
only need checking are also golden files, tests/golden/diagnostics/120-134)."""

from __future__ import annotations

from pathlib import Path

import pytest

from medasl.diagnostics import render_all_text
from medasl.semantics.checker import CheckResult, check_source
from medasl.source import SourceFile
from tests.test_cli import run as cli

IMPORTS = "import std.io, std.pre, std.aug, std.data, std.nets, std.losses, std.train, std.post, std.viz\n"


def check(body: str, overrides: dict[str, str] | None = None, imports: str = IMPORTS) -> CheckResult:
    return check_source(SourceFile("t.medas", imports + "pipeline p {\n" + body + "\n}\n"), overrides=overrides)


def error_codes(result: CheckResult) -> list[str]:
    return [d.code for d in result.diagnostics.errors]


CT = '  ct = nifti("ct.nii.gz") as Image[3, CT]\n'
CASES = "  cases = phantom(cases=2, size=(16, 16, 16), seed=1)\n"


# ----- values that crashed in libraries -------------------------------------------------


@pytest.mark.parametrize(("body", "code"), [
    (CASES + '  x = cases |> crop_or_pad((1000000000000000000000000000000000000000, 16, 16))\n'
     '  report write_nifti(x.image, "x/*.nii.gz")', "E0242"),
    (CASES + '  x = cases |> crop_or_pad((100000, 100000, 100))\n  report write_nifti(x.image, "x/*.nii.gz")', "E0247"),
    (CASES + '  x = take(cases, n=-1)\n  report write_nifti(x.image, "x/*.nii.gz")', "E0241"),
    (CT + '  x = ct |> clip(low=100, high=-100)\n  report write_nifti(x, "x.nii.gz")', "E0244"),
    (CT + '  x = ct |> percentile_rescale(lower=99, upper=1)\n  report write_nifti(x, "x.nii.gz")', "E0244"),
    (CT + '  x = ct |> flip(axis=7, p=1.0)\n  report write_nifti(x, "x.nii.gz")', "E0243"),
    (CASES + '  x = cases |> flip(axis=-1, p=1.0)\n  report write_nifti(x.image, "x/*.nii.gz")', "E0243"),
    ('  cases = phantom(cases=2, size=(32, 32, 32), seed=1)\n'
     '  fit = train(unet3d(classes=2), cases, loss=dice_ce, epochs=1)\n'
     '  pred = infer(fit, cases.image, window=(32, 32))\n  report write_nifti(pred |> argmax, "p/*.nii.gz")', "E0209"),
    (CASES + '  fit = train(unet3d(classes=2), cases, loss=dice_ce, epochs=1)\n  show loss_curve(fit)', "E0246"),
])
def test_values_that_crashed_in_libraries_are_refused(body: str, code: str) -> None:
    assert error_codes(check(body)) == [code]


def test_a_2d_window_fits_2d_inference_and_a_3d_window_3d_inference() -> None:
    """The window's length follows the data's dimensionality, not a free variable."""
    three = check('  cases = phantom(cases=2, size=(32, 32, 32), seed=1)\n'
                  '  fit = train(unet3d(classes=2), cases, loss=dice_ce, epochs=1)\n'
                  '  pred = infer(fit, cases.image, window=(32, 32, 32))\n'
                  '  report write_nifti(pred |> argmax, "p/*.nii.gz")')
    assert error_codes(three) == []


def test_a_network_input_larger_on_one_axis_is_accepted() -> None:
    """(16, 16, 32) leaves two voxels at the deepest level of a 16x U-Net: MONAI trains it."""
    ok = check('  cases = phantom(cases=2, size=(16, 16, 32), seed=1)\n'
               '  fit = train(unet3d(classes=2), cases, loss=dice_ce, epochs=1)\n  show loss_curve(fit)')
    assert error_codes(ok) == []


def test_flip_axes_of_2d_data() -> None:
    body = ('  x = png("a.png") as Image[2, XR]\n  y = x |> flip(axis={axis}, p=1.0)\n'
            '  report write_png(y, "y.png")')
    assert error_codes(check(body.format(axis=1))) == []
    assert error_codes(check(body.format(axis=2))) == ["E0243"]


# ----- values that were accepted but wrong -------------------------------------------------


@pytest.mark.parametrize(("body", "code"), [
    ('  seg = nifti("seg.nii.gz") as LabelMap[3, 0]\n  report write_nifti(seg, "s.nii.gz")', "E0248"),
    ('  seg = nifti("seg.nii.gz") as LabelMap[3, 1]\n  report write_nifti(seg, "s.nii.gz")', "E0248"),
    ('  seg = nifti("seg.nii.gz") as LabelMap[3, -2]\n  report write_nifti(seg, "s.nii.gz")', "E0248"),
    ('  im = nifti("ct.nii.gz") as Image[7, CT]\n  report write_nifti(im, "s.nii.gz")', "E0248"),
    ('  im = nifti("ct.nii.gz") as Image[3, CT, shape=(0, 4, 4)]\n  report write_nifti(im, "s.nii.gz")', "E0248"),
    ('  seg = nifti("seg.nii.gz") as LabelMap[3, 2]\n  o = seg |> select_labels(labels=(9,))\n'
     '  report write_nifti(o, "o.nii.gz")', "E0245"),
    (CASES + '  o = cases |> select_labels(labels=(1, 2))\n  report write_nifti(o.label, "o/*.nii.gz")', "E0245"),
    (CT + '  x = ct |> window(level=1e999, width=400)\n  report write_nifti(x, "x.nii.gz")', "E0242"),
    (CT + '  x = ct |> window(level=-1e999, width=400)\n  report write_nifti(x, "x.nii.gz")', "E0242"),
])
def test_values_accepted_but_wrong_are_refused(body: str, code: str) -> None:
    assert error_codes(check(body)) == [code]


def test_label_values_of_the_map_are_accepted() -> None:
    ok = check('  seg = nifti("seg.nii.gz") as LabelMap[3, 10]\n  o = seg |> select_labels(labels=(9, 5))\n'
               '  report write_nifti(o, "o.nii.gz")')
    assert error_codes(ok) == []


# ----- absurd numbers, in the file and through --set --------------------------------------


def test_a_literal_of_thousands_of_digits_is_a_diagnostic_not_a_traceback() -> None:
    """int() refuses more than 4300 digits; the parser counts them first."""
    result = check(f"  cases = phantom(cases={'9' * 5000}, seed=1)\n  report write_nifti(cases.image, \"c/*.nii.gz\")")
    assert error_codes(result) == ["E0242"]
    assert "(5000 characters)" in result.diagnostics.errors[0].message


def test_largest_exact_integer_is_accepted_and_one_more_is_not() -> None:
    body = "  param seed = {}\n  cases = phantom(cases=2, seed=seed)\n  report write_nifti(cases.image, \"c/*.nii.gz\")"
    assert error_codes(check(body.format(2**53))) == []
    assert error_codes(check(body.format(2**53 + 1))) == ["E0242"]


@pytest.mark.parametrize(("value", "code"), [("99999999999999999999", "E0242"), ("20000", "E0241"),
                                             ("1e999", "E0242")])
def test_absurd_set_values_are_refused_before_running(tmp_path: Path, value: str, code: str) -> None:
    """Before: `--set n=99999999999999999999` listed that many phantom cases in the dry
    run until memory ran out (MemoryError, exit 70)."""
    path = tmp_path / "p.medas"
    path.write_text("import std.io\npipeline p {\n  param n = 2\n  cases = phantom(cases=n, size=(16, 16, 16))\n"
                    '  report write_nifti(cases.image, "c/*.nii.gz")\n}\n')
    exit_code, _, err = cli_check_with_set(path, f"n={value}")
    assert exit_code == 1, err
    assert f"error[{code}]" in err and "Traceback" not in err


def cli_check_with_set(path: Path, setting: str) -> tuple[int, str, str]:
    """`medasc compile --emit ir --set`: the front end with a `--set` value, as `run` checks it."""
    return cli("compile", "--emit", "ir", "--set", setting, str(path))


# ----- nesting ---------------------------------------------------------------------------


def _nested(kind: str, depth: int) -> str:
    if kind == "calls":
        return f'  x = {"rescale(" * depth}nifti("ct.nii.gz"){")" * depth}\n  report write_nifti(x, "x.nii.gz")'
    if kind == "types":
        return (f'  x = nifti("ct.nii.gz") as {"Dataset<" * depth}Image[3, CT]{">" * depth}\n'
                '  report write_nifti(x, "x.nii.gz")')
    if kind == "tuples":
        return f'  param t = {"(1, " * depth}1{")" * depth}'
    if kind == "fields":
        return CASES + f'  x = cases{".image" * depth}\n  report write_nifti(x, "x/*.nii.gz")'
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["calls", "types", "tuples", "fields"])
def test_5000_levels_of_nesting_are_too_deeply_nested(kind: str) -> None:
    result = check(_nested(kind, 5000))
    assert error_codes(result) == ["E0114"]
    assert "nested more than 64 levels" in result.diagnostics.errors[0].message


def test_64_nested_calls_check_and_65_do_not() -> None:
    assert error_codes(check(_nested("calls", 63))) == []  # 63 `rescale` around `nifti`: 64 calls
    assert error_codes(check(_nested("calls", 64))) == ["E0114"]


def test_a_long_pipe_chain_is_not_nesting() -> None:
    chain = " |> ".join(["rescale"] * 3000)
    assert error_codes(check(CT + f'  x = ct |> {chain}\n  report write_nifti(x, "x.nii.gz")')) == []


@pytest.mark.parametrize("kind", ["bindings", "transforms"])
def test_values_and_transforms_depending_5000_levels_deep_are_a_diagnostic(kind: str) -> None:
    """Not nesting in one expression, but a recursion of the checker all the same."""
    if kind == "bindings":  # written last first: each needs the next before it can be checked
        lines = ['  report write_nifti(b0, "o.nii.gz")']
        lines += [f"  b{i} = b{i + 1} |> rescale" for i in range(5000)]
        lines.append('  b5000 = nifti("ct.nii.gz")')
    else:
        lines = ["  t0(x) = x |> rescale"] + [f"  t{i}(x) = x |> t{i - 1}" for i in range(1, 5000)]
        lines += ['  y = nifti("ct.nii.gz") |> t4999', '  report write_nifti(y, "o.nii.gz")']
    result = check("\n".join(lines))
    assert error_codes(result) == ["E0114"]
    render_all_text(result.diagnostics.sorted(), result.sources)


# ----- smaller points ------------------------------------------------------------------------


def test_a_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "bom.medas"
    text = 'import std.io\npipeline p {\n  x = nifti("a.nii.gz")\n  report write_nifti(x, "o.nii.gz")\n}\n'
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    code, _, err = cli("check", str(path))
    assert code == 0, err
    assert "E0002" not in err
    # a source given as text (an editor, a test) with the mark in it parses too
    assert error_codes(check_source(SourceFile("t.medas", "\ufeff" + text))) == []


def test_a_misspelt_argument_is_one_error() -> None:
    """Before: a second error `unknown name RAS` for the argument's valid value."""
    result = check(CT + '  x = ct |> reorient(orientaton=RAS)\n  report write_nifti(x, "x.nii.gz")')
    assert error_codes(result) == ["E0104"]


def test_a_misspelt_argument_with_an_unknown_value_still_reports_the_value() -> None:
    result = check(CT + '  x = ct |> reorient(orientaton=undefined_thing)\n  report write_nifti(x, "x.nii.gz")')
    assert sorted(error_codes(result)) == ["E0101", "E0104"]


def test_window_hint_is_for_mr_only() -> None:
    result = check('  pet = nifti("p.nii.gz") as Image[3, PET]\n  seg = nifti("s.nii.gz") as LabelMap[3, 2]\n'
                   '  mr = nifti("m.nii.gz") as Image[3, MR]\n'
                   '  a = pet |> window(level=40, width=400)\n  b = seg |> window(level=40, width=400)\n'
                   '  c = window("ct.nii.gz", level=40, width=400)\n  d = mr |> window(level=40, width=400)\n'
                   '  report write_nifti(a, "a.nii.gz"), write_nifti(b, "b.nii.gz"), write_nifti(c, "c.nii.gz"),'
                   ' write_nifti(d, "d.nii.gz")')
    helps = {d.labels[0].span.line: d.help or "" for d in result.diagnostics.errors}
    mr_hint = "MR intensities have no fixed scale"
    assert mr_hint in helps[9]  # the MR image
    assert "PET values" in helps[6] and mr_hint not in helps[6]
    assert mr_hint not in helps[7] and mr_hint not in helps[8]  # the label map, the string


def test_an_imported_file_that_is_not_medas_is_not_quoted(tmp_path: Path) -> None:
    secret = tmp_path / "passwd"
    secret.write_text("root:x:0:0:root:/root:/bin/bash\n")
    result = check_source(SourceFile(str(tmp_path / "main.medas"), f'import "{secret}"\npipeline p {{\n}}\n'))
    assert error_codes(result) == ["E0112"]
    rendered = render_all_text(result.diagnostics.sorted(), result.sources)
    assert "root:x" not in rendered
    assert str(secret) not in result.sources


def test_ops_prints_defaults() -> None:
    code, out, _ = cli("ops", "zscore")
    assert code == 0
    assert "mask: LabelMap[D, 2] = none" in out
    code, out, _ = cli("ops", "resample")
    assert "interp: Interp = auto" in out


def test_run_on_an_empty_file_has_no_pipeline_to_run(tmp_path: Path) -> None:
    pytest.importorskip("rich", reason="running needs the run extra")
    path = tmp_path / "empty.medas"
    path.write_text("")
    code, _, err = cli("run", str(path), "--dry-run", "--cache-dir", str(tmp_path / "c"), "--out", str(tmp_path / "o"))
    assert code == 1
    assert "no pipeline to run" in err and "draw" not in err


# ----- known only at run time ---------------------------------------------------------------


def test_resample_to_a_tiny_spacing_is_e2002_before_allocating(monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: SimpleITK's `Failed to allocate memory` (exit 70), or the system's OOM killer."""
    np = pytest.importorskip("numpy")
    sitk = pytest.importorskip("SimpleITK")
    from medasl.ops import pre
    from medasl.runtime.errors import DataError
    from medasl.runtime.values import Volume

    def never(*args: object, **kwargs: object) -> object:
        raise AssertionError("resampled before checking the size")

    monkeypatch.setattr(sitk, "Resample", never)
    x = Volume(np.zeros((16, 16, 16), np.float32), (2.0, 2.0, 2.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))
    with pytest.raises(DataError) as caught:
        pre.resample(x, (0.001, 0.001, 0.001))
    assert caught.value.code == "E2002"
    assert "32000 x 32000 x 32000 voxels" in caught.value.message and "TB" in caught.value.message


def test_a_fused_chain_to_a_tiny_spacing_is_e2002_before_allocating() -> None:
    np = pytest.importorskip("numpy")
    pytest.importorskip("SimpleITK")
    from medasl.runtime.errors import DataError
    from medasl.runtime.fused_spatial import SpatialStep, fused_spatial
    from medasl.runtime.values import Volume

    x = Volume(np.zeros((16, 16, 16), np.float32), (2.0, 2.0, 2.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))
    steps = [SpatialStep("resample", {"spacing": (0.001, 0.001, 0.001), "interp": "auto"}),
             SpatialStep("reorient", {"to": "LPS"})]
    with pytest.raises(DataError) as caught:
        fused_spatial(x, steps, "cpu")
    assert caught.value.code == "E2002"


def test_write_png_of_a_volume_of_undeclared_dimensionality_is_e1030(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    np = pytest.importorskip("numpy")
    pytest.importorskip("SimpleITK")
    pytest.importorskip("rich")
    from tests.conftest import write_nifti_file

    write_nifti_file(tmp_path / "a.nii.gz", np.zeros((8, 16, 16), np.float32))
    path = tmp_path / "p.medas"
    path.write_text('import std.io\npipeline p {\n  x = nifti("a.nii.gz")\n  report write_png(x, "o.png")\n}\n')
    monkeypatch.chdir(tmp_path)  # data paths are relative to where medasc runs
    code, _, err = cli("run", str(path), "--cache-dir", str(tmp_path / "c"), "--out", str(tmp_path / "o"))
    assert code == 1, err
    assert "error[E1030]" in err and "Traceback" not in err


# ----- found by tests/test_dry_run_hypothesis.py (each was exit 70) -------------------------


@pytest.mark.parametrize(("body", "sets", "code"), [
    # a conversion cannot reach into a pair: the label member was given to the conversion whole
    (CASES + "  r = instances_to_labels(x=cases)", {}, "E0201"),
    # a writer's path that names no file crashed the output-path rule
    (CASES + '  r = write_nrrd(x=cases, path="")', {}, "E0249"),
    (CASES + '  param out = "x.nrrd"\n  r = write_nrrd(x=cases, path=out)', {"out": ""}, "E0249"),
    (CASES + '  r = write_mha(x=cases.image, path=".")', {}, "E0249"),
    # a file pattern given through a parameter (and --set) is checked like a literal
    ('  param image = "*_ct.nii.gz"\n  r = folder("d", image=image, label="*_seg.nii.gz")', {"image": "ct"}, "E0240"),
    # split's held-out shares must leave training cases
    (CASES + "  r = split(cases, val=1)", {}, "E0241"),
    (CASES + "  r = split(cases, val=0.5, test=0.5)", {}, "E0241"),
    ('  r = slide_tiles("s.svs", size=(0, 512), tissue=2)', {}, "E0241"),
])
def test_crashes_found_by_the_dry_run_property(body: str, sets: dict[str, str], code: str) -> None:
    result = check(body, overrides=sets)
    assert code in error_codes(result), [d.message for d in result.diagnostics.errors]


def test_an_unreadable_source_folder_is_e1032(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`png("/")`: digesting the folder met `/proc/1/cwd` (PermissionError, exit 70)."""
    pytest.importorskip("rich")
    from medasl.runtime import executor

    def denied(*args: object, **kwargs: object) -> str:
        raise PermissionError(13, "Permission denied", str(tmp_path / "locked"))

    monkeypatch.setattr(executor, "folder_digest", denied)
    path = tmp_path / "p.medas"
    path.write_text(f'import std.io\npipeline p {{\n  r = png("{tmp_path}")\n}}\n')
    code, _, err = cli("run", str(path), "--dry-run", "--cache-dir", str(tmp_path / "c"), "--out", str(tmp_path / "o"))
    assert code == 1, err
    assert "error[E1032]" in err and "Permission denied" in err
