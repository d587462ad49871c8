"""`medasc run --dry-run` never exits 70, whatever literal values a pipeline gives an
operator (issue 10, "Done when"): every operator of the standard library is called with
generated values for its parameters of every type — whole and real numbers (zero,
negative, beyond 2^53, `1e999`, thousands of digits), lengths, angles, memory, text,
paths, booleans, enums, tuples of any length — written in the file, as a parameter's
default, or given through `--set`. A mistake is exit 1 with a diagnostic, never an
internal error. The CLI is called in-process, as tests/test_cli.py does; examples are
drawn deterministically (derandomize) so that CI sees the same ones every time."""

from __future__ import annotations

import string
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medasl import cli
from medasl.ir.types import Fn, Ty, TyLike
from medasl.semantics.modules import stdlib
from medasl.semantics.signatures import OpSig, Override

pytest.importorskip("rich", reason="`medasc run` needs the run extra (pip install -e '.[run]')")

IMPORTS = ("import std.io, std.pre, std.aug, std.data, std.nets, std.losses, std.train, std.post, std.metrics,"
           " std.viz, std.report\n")

# values of every data type an operator may take, made without reading a file
CONTEXT = """\
  cases = phantom(cases=2, size=(16, 16, 32), seed=1)
  net = unet3d(classes=2, channels=(4, 8, 16, 32, 64))
  fit = train(net, cases, loss=dice_ce, epochs=1)
  probs = infer(fit, cases.image)
  score = dice(probs |> argmax, cases.label)
"""

DATA = {"Model": "net", "Trained": "fit", "Optimizer": "adam()", "Schedule": "constant()", "Image": "cases.image",
        "LabelMap": "cases.label", "ProbMap": "probs", "Metric": "score", "Dataset": "cases", "Pair": "cases"}

OPS = sorted(stdlib().all_ops().values(), key=lambda op: op.name)
ENUMS = stdlib().enums
UNITS = {"mm": ("mm", "cm", "um"), "deg": ("deg", "rad"), "bytes": ("GB", "MB")}


# ----- literals ---------------------------------------------------------------------------

whole = st.one_of(st.integers(-3, 300), st.integers(),
                  st.sampled_from([0, -1, 2**31, 2**53, 2**53 + 1, 10**20, -(10**39)])).map(str)
real = st.one_of(st.floats(allow_nan=False, allow_infinity=False).map(repr),
                 st.sampled_from(["0.0", "-0.5", "1e-300", "1e308", "1e999", "-1e999", "0.001"]))
number = st.one_of(whole, real, st.just("9" * 5000))
text = st.text(alphabet=string.ascii_letters + string.digits + "*._-/ ", max_size=16)


def quoted(value: str) -> str:
    return '"' + value + '"'


def scalar(name: str) -> st.SearchStrategy[str]:
    """Literal text for a scalar slot type (`int`, `mm`, an enum...)."""
    if name == "int":
        return number
    if name == "float":
        return number
    if name == "bool":
        return st.sampled_from(["true", "false"])
    if name in ("str", "path"):
        return text.map(quoted)
    if name in UNITS:
        return st.tuples(number, st.sampled_from(UNITS[name])).map(" ".join)
    if name in ENUMS:
        return st.one_of(st.sampled_from(ENUMS[name].values), st.just("not_a_value"))
    return number


def tuple_of(item: st.SearchStrategy[str], unit: str | None) -> st.SearchStrategy[str]:
    def write(items: list[str]) -> str:
        inner = ", ".join(items) + ("," if len(items) == 1 else "")
        return f"({inner})" + (f" {unit}" if unit and items else "")

    return st.lists(item, max_size=4).map(write)


def literal(t: TyLike) -> st.SearchStrategy[str] | None:
    """Literal text for a slot, or None for a data slot (filled from CONTEXT)."""
    if isinstance(t, Ty) and t.name in ("Vec", "List") and t.params:
        element = t.params[0]
        if isinstance(element, Ty) and element.name in UNITS:
            with_unit = st.sampled_from(UNITS[element.name]).flatmap(lambda unit: tuple_of(number, unit))
            return st.one_of(with_unit, tuple_of(scalar(element.name), None))
        inner = literal(element)
        return tuple_of(inner, None) if inner is not None else None
    if isinstance(t, Ty) and (t.name in ("int", "float", "bool", "str", "path") or t.name in UNITS
                              or t.name in ENUMS):
        return scalar(t.name)
    return None


def data(t: TyLike) -> str:
    if isinstance(t, Fn):
        result = t.result
        return "dice_ce" if isinstance(result, Ty) and result.name == "Loss" else "dice"
    if isinstance(t, Override):
        return "cases"
    return DATA.get(t.name, "cases") if isinstance(t, Ty) else "cases"


def shell_form(value: str) -> str:
    """A text parameter's `--set` value as a shell gives it: without quotes."""
    return value[1:-1] if len(value) >= 2 and value[0] == value[-1] == '"' else value


# ----- programs ------------------------------------------------------------------------------


@st.composite
def programs(draw: st.DrawFn) -> tuple[str, dict[str, str]]:
    op: OpSig = draw(st.sampled_from(OPS))
    params: list[str] = []
    sets: dict[str, str] = {}
    args: list[str] = []
    for index, p in enumerate(op.params):
        if not p.required and not draw(st.booleans()):
            continue
        strategy = literal(p.type)
        if strategy is None:
            args.append(f"{p.name}={data(p.type)}")
            continue
        if draw(st.integers(0, 9)) == 0:  # now and then a value of another type altogether
            strategy = st.one_of(number, text.map(quoted), st.just("true"), tuple_of(whole, None))
        value = draw(strategy)
        how = draw(st.sampled_from(["inline", "param", "set"]))
        if how == "inline":
            args.append(f"{p.name}={value}")
            continue
        name = f"v{index}"
        params.append(f"  param {name} = {value}\n")
        args.append(f"{p.name}={name}")
        if how == "set":
            given = draw(strategy)
            sets[name] = shell_form(given) if isinstance(p.type, Ty) and p.type.name in ("str", "path") else given
    program = IMPORTS + "pipeline p {\n" + "".join(params) + CONTEXT + f"  r = {op.name}({', '.join(args)})\n}}\n"
    return program, sets


def test_the_context_checks_clean() -> None:
    """The values every generated program builds on: a mistake there would hide the rest."""
    from medasl.semantics.checker import check_source
    from medasl.source import SourceFile

    result = check_source(SourceFile("c.medas", IMPORTS + "pipeline p {\n" + CONTEXT + "}\n"))
    assert not result.diagnostics.has_errors, [d.message for d in result.diagnostics.errors]


WORK = Path(tempfile.mkdtemp(prefix="medasl-dry-run-"))


@settings(max_examples=600, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(programs())
def test_dry_run_never_exits_70(case: tuple[str, dict[str, str]]) -> None:
    program, sets = case
    path = WORK / "p.medas"
    path.write_text(program, encoding="utf-8")
    options = [item for name, value in sets.items() for item in ("--set", f"{name}={value}")]
    result = CliRunner().invoke(cli.main, ["run", str(path), "--dry-run", "--cache-dir", str(WORK / "cache"),
                                           "--out", str(WORK / "out"), *options])
    err = result.stderr
    # an exception that escaped the command would be exit 1 here, with `result.exception` set
    assert result.exception is None or isinstance(result.exception, SystemExit), (program, options, result.exception)
    assert result.exit_code in (0, 1, 2), f"exit {result.exit_code}\n{program}{options}\n{err[-3000:]}"
    assert "internal compiler error" not in err, f"{program}{options}\n{err[-3000:]}"
