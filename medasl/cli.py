"""`medasc`: the command line. Exit codes: 0 success, 1 a mistake in the user's file or
data, 2 command-line misuse, 70 an internal error (with a request to report it).

`check`, `graph`, `compile --emit`, `explain` and `ops` import nothing heavy: only the
front end (Lark) and click. Keep torch, SimpleITK and MONAI out of these paths.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import shlex
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import click

from medasl import __version__
from medasl.cache_cli import cache_group
from medasl.diagnostics import Diagnostics, render_json, render_text, summary

if TYPE_CHECKING:
    from medasl.runtime.errors import DataError

EXIT_OK, EXIT_USER, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 70
REPORT_URL = "https://github.com/medasl/medasl/issues"

F = TypeVar("F", bound=Callable[..., object])


def _guard(func: F) -> F:
    """Turn any unexpected exception into exit code 70 and a request to report it."""

    @wraps(func)
    def wrapper(*args: object, **kwargs: object) -> object:
        try:
            return func(*args, **kwargs)
        except (click.exceptions.Exit, click.ClickException, click.exceptions.Abort, SystemExit):
            raise
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except BrokenPipeError:
            # the reader of our output went away (`medasc ops | head`): not an error of ours;
            # stdout goes to devnull so that Python's flush at exit does not fail again
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(0)
        except Exception:  # noqa: BLE001 - the last line of defence
            click.echo("error: internal compiler error: this is a bug in medasl, not in your file.", err=True)
            click.echo(f"Please report it at {REPORT_URL} with the file and this trace:\n", err=True)
            click.echo(traceback.format_exc(), err=True)
            sys.exit(EXIT_INTERNAL)

    return wrapper  # type: ignore[return-value]


def _color(severity: str) -> str:
    return {"error": "red", "warning": "yellow"}.get(severity, "white")


def _print_diagnostics(diags: Diagnostics, sources: dict, fmt: str) -> None:
    items = diags.sorted()
    if fmt == "json":
        payload = json.loads(render_json(items))
        click.echo(json.dumps({"diagnostics": payload, "errors": len(diags.errors),
                               "warnings": len(items) - len(diags.errors)}, indent=2))
        return
    tty = sys.stderr.isatty()
    for d in items:
        text = render_text(d, sources)
        if tty:
            head, _, rest = text.partition("\n")
            text = click.style(head, fg=_color(d.severity.value), bold=True) + ("\n" + rest if rest else "")
        click.echo(text + "\n", err=True)


def _load(file: str, overrides: dict[str, str] | None = None) -> tuple[object, Diagnostics, dict]:
    """Read and check one file (with `--set` values as the parameters' defaults); a file
    that cannot be read is a user error (E0010)."""
    from medasl.semantics.checker import check_source
    from medasl.source import SourceFile

    diags = Diagnostics()
    try:
        source = SourceFile.read(file)
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        diags.error("E0010", f"cannot read `{file}`: {reason}")
        return None, diags, {}
    result = check_source(source, diags, overrides)
    return result, diags, result.sources


def _finish(diags: Diagnostics, deny_warnings: bool = False) -> None:
    text = summary(diags)
    failed = diags.has_errors or (deny_warnings and len(diags) > 0)
    if text:
        click.echo(("error: " if failed else "") + text + (" (warnings denied)" if deny_warnings and not diags.has_errors and failed else ""), err=True)
    if failed:
        sys.exit(EXIT_USER)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="medasc")
def main() -> None:
    """medasc: check, draw and run medical image analysis pipelines written in medas."""


@main.command()
@click.argument("files", nargs=-1, required=True)
@click.option("--message-format", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="How to print diagnostics.")
@click.option("--deny-warnings", is_flag=True, help="Fail (exit 1) on warnings too.")
@_guard
def check(files: tuple[str, ...], message_format: str, deny_warnings: bool) -> None:
    """Check FILES for syntax, name, type and domain errors without running anything."""
    all_diags = Diagnostics()
    all_sources: dict = {}
    for file in files:
        _, diags, sources = _load(file)
        all_diags.extend(diags)
        all_sources.update(sources)
    _print_diagnostics(all_diags, all_sources, message_format)
    if message_format == "text" and not all_diags.has_errors and not (deny_warnings and len(all_diags)):
        click.echo(f"ok: {len(files)} file{'s' if len(files) != 1 else ''} checked"
                   + (f", {summary(all_diags)}" if len(all_diags) else ""), err=True)
        return
    if message_format == "json":
        if all_diags.has_errors or (deny_warnings and len(all_diags)):
            sys.exit(EXIT_USER)
        return
    _finish(all_diags, deny_warnings)


@main.command()
@click.argument("file")
@click.option("-o", "--output", required=True, help="Output file: .svg, .png, .pdf or .dot.")
@click.option("--pipeline", "pipeline_name", default=None,
              help="Draw only this pipeline (by default, every pipeline of the file).")
@click.option("-O", "level", type=click.IntRange(0, 3), default=None,
              help="Draw the graph optimized at this level (-O0 .. -O3; fused nodes show what they replaced); "
              "by default the checked graph as written.")
@click.option("--set", "sets", multiple=True, metavar="NAME=VALUE", help="Give a parameter another value.")
@_guard
def graph(file: str, output: str, pipeline_name: str | None, level: int | None, sets: tuple[str, ...]) -> None:
    """Draw the pipeline in FILE as a diagram (Graphviz)."""
    from medasl.viz.diagram import FORMATS, render_graph

    suffix = Path(output).suffix.lower().lstrip(".")
    if suffix not in FORMATS:
        raise click.UsageError(f"cannot write `{output}`: the output must end in {', '.join('.' + f for f in FORMATS)}")
    result, diags, sources = _load(file, _sets(sets))
    _print_diagnostics(diags, sources, "text")
    if diags.has_errors:
        _finish(diags)
    chosen = _optimized(_pick_pipelines(result, pipeline_name, "draw"), level, _sets(sets))
    message = render_graph(chosen, Path(output), suffix)
    click.echo(message, err=True)


def _pick_pipelines(result: object, name: str | None, verb: str) -> list:
    graphs = result.graphs  # type: ignore[attr-defined]
    if not graphs:
        click.echo(f"error: the file has no pipeline to {verb}", err=True)
        sys.exit(EXIT_USER)
    if name is None:
        return graphs
    for g in graphs:
        if g.name == name:
            return [g]
    raise click.UsageError(f"no pipeline `{name}` in the file; it has {', '.join(g.name for g in graphs)}")


def _optimized(graphs: list, level: int | None, overrides: dict[str, str],
               print_after: tuple[str, ...] = ()) -> list:
    """The graphs optimized at `level` (as checked when None), printing the IR after
    the passes named in `print_after` to standard output."""
    if level is None and not print_after:
        return graphs
    from medasl.passes import DEFAULT_LEVEL, optimize, pass_names
    from medasl.runtime.session import UsageProblem, check_overrides

    unknown = [p for p in print_after if p not in pass_names()]
    if unknown:
        raise click.UsageError(f"--print-after {unknown[0]}: no such pass; the passes are {', '.join(pass_names())}")
    try:
        check_overrides(graphs, overrides)
    except UsageProblem as exc:
        raise click.UsageError(str(exc)) from None
    found = []
    for graph in graphs:
        result = optimize(graph, DEFAULT_LEVEL if level is None else level, print_after)
        for text in result.printed:
            click.echo(text + "\n")
        found.append(result.graph)
    return found


@main.command(name="compile")
@click.argument("file")
@click.option("--emit", type=click.Choice(["ast", "ir"]), required=True,
              help="Print an intermediate form: the syntax tree or the typed IR.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("-O", "level", type=click.IntRange(0, 3), default=None,
              help="Print the IR optimized at this level (-O0 .. -O3); by default the checked IR.")
@click.option("--print-after", multiple=True, metavar="PASS",
              help="Also print the IR after this pass (repeatable; implies -O2 unless -O is given).")
@click.option("--set", "sets", multiple=True, metavar="NAME=VALUE",
              help="Give a parameter another value (checked as its default would be).")
@_guard
def compile_(file: str, emit: str, fmt: str, level: int | None, print_after: tuple[str, ...],
             sets: tuple[str, ...]) -> None:
    """Compile FILE and print an intermediate form (see docs/language.md, docs/compiler.md)."""
    if emit == "ast":
        from medasl.source import SourceFile
        from medasl.syntax.ast import dump
        from medasl.syntax.parser import parse

        diags = Diagnostics()
        try:
            source = SourceFile.read(file)
        except OSError as exc:
            diags.error("E0010", f"cannot read `{file}`: {exc.strerror or exc}")
            _print_diagnostics(diags, {}, "text")
            _finish(diags)
            return
        tree = parse(source, diags)
        _print_diagnostics(diags, {source.name: source}, "text")
        if tree is None:
            _finish(diags)
        click.echo(dump(tree))
        return
    result, diags, sources = _load(file, _sets(sets))
    _print_diagnostics(diags, sources, "text")
    if diags.has_errors:
        _finish(diags)
    graphs = _optimized(result.graphs, level, _sets(sets), print_after)  # type: ignore[attr-defined]
    if print_after:
        return
    if fmt == "json":
        click.echo(json.dumps([g.to_json() for g in graphs], indent=2))
    else:
        click.echo("\n\n".join(g.dump() for g in graphs))


@main.command()
@click.argument("code")
@_guard
def explain(code: str) -> None:
    """Explain a diagnostic code, e.g. `medasc explain E0203`."""
    from medasl.codes import CODES
    from medasl.codes import explain as explain_code

    text = explain_code(code)
    if text is None:
        from medasl.semantics.suggest import did_you_mean

        hint = did_you_mean(code.upper(), CODES)
        raise click.UsageError(f"no diagnostic code `{code}`" + (f"; {hint}" if hint else ""))
    click.echo(text)


@main.command()
@click.argument("name", required=False)
@_guard
def ops(name: str | None) -> None:
    """List the standard operators, or show one operator's signature and documentation."""
    from medasl.semantics.modules import stdlib

    std = stdlib()
    if name is None:
        for module_name, module in std.modules.items():
            click.echo(f"{module_name}:")
            for op in module.ops.values():
                click.echo(f"  {op.name:<26} {op.summary}")
        return
    op = std.find_op(name)
    if op is None:
        from medasl.semantics.suggest import did_you_mean

        hint = did_you_mean(name, std.all_ops())
        raise click.UsageError(f"no operator `{name}`" + (f"; {hint}" if hint else ""))
    click.echo(f"{op.module}.{op.signature_text(defaults=True)}")
    attrs = " ".join(f"@{k}" + (f"({', '.join(map(str, v))})" if v else "") for k, v in op.attrs.items())
    if attrs:
        click.echo(attrs)
    click.echo("")
    for line in op.docs:
        click.echo(line)


main.add_command(cache_group)



def _require_run_extra() -> None:
    """Running needs NumPy, SimpleITK and friends, which checking does not; say so plainly."""
    import importlib.util

    missing = [m for m in ("numpy", "SimpleITK", "scipy", "skimage", "pydicom", "rich")
               if importlib.util.find_spec(m) is None]
    if missing:
        click.echo(f"error: `medasc run` needs {', '.join(missing)}, which are not installed; "
                   "install them with: pip install -e '.[run]'", err=True)
        sys.exit(EXIT_USER)


def _output_problem(exc: BaseException, out: Path) -> DataError | None:
    """A full or unwritable `--out` met outside a writer (the run log is written there
    first): E2010 or E2013, as a writer's own file would be."""
    import errno

    from medasl.runtime.outputs import write_failure

    unwritable = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)
    if not isinstance(exc, OSError) or exc.errno not in unwritable or not isinstance(exc.filename, str):
        return None
    target = Path(exc.filename).absolute()
    return write_failure(target, exc) if target.is_relative_to(out.absolute()) else None


def _sets(values: tuple[str, ...]) -> dict[str, str]:
    found = {}
    for item in values:
        name, eq, value = item.partition("=")
        if not eq or not name.strip():
            raise click.UsageError(f"--set {item}: write --set NAME=VALUE, e.g. --set lr=0.001")
        found[name.strip()] = value
    return found


def _device(ctx: click.Context, param: click.Parameter, value: str) -> str:
    import re

    if not re.fullmatch(r"cpu|cuda(:\d+)?", value):
        raise click.BadParameter(f"`{value}`: use cpu, cuda or cuda:N")
    return "cuda:0" if value == "cuda" else value


@contextlib.contextmanager
def _second_ctrl_c_exits() -> Iterator[None]:
    """Ctrl-C during a run: the first raises KeyboardInterrupt as usual, and the run stops
    at its next safe point (a training at its next batch), keeping what it finished; a
    second one exits at once. At once means `os._exit`: letting the interpreter shut
    down while torch's OpenMP threads still compute aborts it with a core dump. Nothing
    is lost by it: results are committed by an atomic rename, workers die with the run."""
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or previous is signal.SIG_IGN:
        yield  # signals can only be handled here in the main thread; an ignored Ctrl-C stays ignored
        return

    def first(signum: int, frame: object) -> None:
        signal.signal(signal.SIGINT, _exit_at_once)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, first)
    try:
        yield
    finally:
        if signal.getsignal(signal.SIGINT) is first:  # after a Ctrl-C, `_exit_at_once` stays: the process is ending
            signal.signal(signal.SIGINT, previous)


def _exit_at_once(signum: int, frame: object) -> None:
    """The second Ctrl-C of a run."""
    # os.write: the stderr object may be in use by the thread this signal interrupted
    os.write(2, b"\nstopped at once (second Ctrl-C): every result finished before is kept in the cache; "
             b"run the same command again to resume\n")
    if sys.stderr.isatty():
        os.write(2, b"\x1b[?25h")  # show the cursor again: the progress bars hid it
    os._exit(130)


def _exit_interrupted() -> None:
    """Exit 130 after a Ctrl-C the run has handled. When `_second_ctrl_c_exits` caught it,
    by `os._exit`: everything is committed and closed by now, while the interpreter's
    shutdown (a second or more with torch loaded) would put back the default handler,
    and a second Ctrl-C there would kill the process by signal instead of exit 130."""
    if signal.getsignal(signal.SIGINT) is _exit_at_once:
        gc.collect()  # finalizes the stopped worker pool's queues, else their semaphores are reported as leaked
        # and runs what multiprocessing does at a normal exit (os._exit skips it): the pool's
        # semaphores still referenced somewhere are unlinked, so the resource tracker finds none
        import multiprocessing.util

        multiprocessing.util._exit_function()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
    sys.exit(130)


def _say_interrupted(notes: list[str]) -> None:
    """After Ctrl-C: what the stopped trainings kept, and the command that resumes."""
    for note in notes:
        click.echo(f"interrupted: {note}", err=True)
    command = shlex.join(["medasc", *sys.argv[1:]]) if sys.argv[1:2] == ["run"] else "the same command"
    click.echo(("" if notes else "interrupted: ") + "every result finished so far is kept in the cache; "
               f"to resume, run the same command:\n  {command}", err=True)


@main.command()
@click.argument("file")
@click.option("--set", "sets", multiple=True, metavar="NAME=VALUE",
              help="Give a parameter another value for this run (repeatable), e.g. --set lr=0.001.")
@click.option("--device", default="cpu", show_default=True, callback=_device, help="cpu, cuda or cuda:N.")
@click.option("--dry-run", is_flag=True, help="Show each step as cached, stale (and why) or new; run nothing.")
@click.option("--force", multiple=True, metavar="STEP",
              help="Recompute this step and everything after it, even if cached (repeatable).")
@click.option("--out", default="results", show_default=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for written files and run logs (one sub-folder per pipeline).")
@click.option("--allow-outside-out", is_flag=True,
              help="Let writers and reports write outside --out (absolute paths, `..`, links leading out).")
@click.option("--pipeline", "pipeline_name", default=None, help="Run only this pipeline of the file.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of every random step.")
@click.option("--workers", default=0, type=click.IntRange(0, 256),
              help="Worker processes for per-case work (default: from the number of cores).")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="The cache directory (results in DIR/results); default $MEDASL_CACHE_DIR or ~/.cache/medasl.")
@click.option("-O", "level", type=click.IntRange(0, 3), default=2, show_default=True,
              help="Optimization level: -O0 runs every operator as written (the reference), -O1 also cleans "
              "the graph up, -O2 fuses spatial and intensity chains.")
@_guard
def run(file: str, sets: tuple[str, ...], device: str, dry_run: bool, force: tuple[str, ...], out: Path,
        allow_outside_out: bool, pipeline_name: str | None, seed: int, workers: int, cache_dir: Path | None,
        level: int) -> None:
    """Run the pipelines in FILE; results are cached, so running again resumes."""
    import contextlib
    import faulthandler
    import io

    with contextlib.suppress(ValueError, io.UnsupportedOperation, AttributeError):  # stderr is not a file in tests
        faulthandler.enable()  # should a native library crash, print its Python stack, not only "Segmentation fault"
    overrides = _sets(sets)
    _require_run_extra()
    result, diags, sources = _load(file, overrides)
    _print_diagnostics(diags, sources, "text")
    if diags.has_errors:
        _finish(diags)
    chosen = _pick_pipelines(result, pipeline_name, "run")

    from rich.console import Console

    from medasl.cache_cli import cache_root
    from medasl.runtime import session
    from medasl.runtime.cache import Cache, storage_problem
    from medasl.runtime.errors import DataError
    from medasl.runtime.executor import RunFailure

    request = session.RunRequest(overrides, out, Cache(cache_root(cache_dir)), seed, device, workers, force, dry_run,
                                 allow_outside_out)
    try:
        plans = session.plans(chosen, overrides, level)
        session.check_force(plans, force)
    except session.UsageProblem as exc:
        raise click.UsageError(str(exc)) from None
    refusals = Diagnostics()
    for plan in plans:
        refusals.extend(session.unimplemented(plan))
        refusals.extend(session.output_refusals(plan, request))
    if not dry_run:
        refusals.extend(session.check_device(device))
    if refusals.has_errors:
        _print_diagnostics(refusals, sources, "text")
        _finish(refusals)
    console = Console(stderr=True)
    if not console.is_terminal:
        console.width = 160  # logs and CI: no terminal to wrap the tables to
    for plan in plans:
        try:
            if dry_run:
                session.show_preview(plan, request, console)
            else:
                with _second_ctrl_c_exits():
                    session.execute(plan, request, file, console)
        except RunFailure as failure:
            failed = Diagnostics()
            failed.items += [session.failure_diagnostic(f) for f in (failure, *failure.more)]
            _print_diagnostics(failed, sources, "text")
            _finish(failed)
        except (OSError, DataError) as exc:  # a full or read-only cache or --out met outside a step (--force, the run log)
            problem = storage_problem(exc, request.cache.root) or _output_problem(exc, out)
            if problem is None:
                raise
            failed = Diagnostics()
            failed.error(problem.code, problem.message, help=problem.help)
            _print_diagnostics(failed, sources, "text")
            _finish(failed)
        except KeyboardInterrupt as stop:
            _say_interrupted(getattr(stop, "notes", []))
            _exit_interrupted()


@main.command()
@click.argument("file")
@click.option("--trials", default=20, show_default=True, type=click.IntRange(1, 100_000), help="Trials the study has in all.")
@click.option("--algo", type=click.Choice(["tpe", "rand", "anneal"]), default="tpe", show_default=True,
              help="hyperopt's algorithm: TPE (Bayesian), random search or annealing.")
@click.option("--seed", default=0, show_default=True, type=int,
              help="Seed of the proposals and of every trial's random steps.")
@click.option("--parallel", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Trials run at once, each in its own worker process (on its own GPU when there are several).")
@click.option("--batch", default=None, type=click.IntRange(1, 10_000),
              help="Trials proposed together from the trials before them (default 4, or --parallel if larger); "
              "the same batch gives the same study for any --parallel.")
@click.option("--timeout", default=None, type=click.FloatRange(min=0, min_open=True), metavar="SECONDS",
              help="Start no new trial after this many seconds (running ones finish).")
@click.option("--early-stop", is_flag=True,
              help="Stop a training whose validation metric is worse than the median of earlier trials at that epoch.")
@click.option("--set", "sets", multiple=True, metavar="NAME=VALUE",
              help="Fix a parameter for every trial (repeatable); a searched parameter given here is not searched.")
@click.option("--out", default="results/tune", show_default=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder of the study: DIR/<pipeline>/study.json, the report and one folder per trial.")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="The cache directory, shared by all trials; default $MEDASL_CACHE_DIR or ~/.cache/medasl.")
@click.option("--device", default="cpu", show_default=True, callback=_device, help="cpu, cuda or cuda:N.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 256),
              help="Worker processes for per-case work inside each trial.")
@click.option("--pipeline", "pipeline_name", default=None, help="The pipeline to tune (default: the one with an objective).")
@click.option("-O", "level", type=click.IntRange(0, 3), default=2, show_default=True, help="Optimization level of every trial.")
@click.option("--allow-outside-out", is_flag=True, help="Let writers and reports write outside the trial's folder.")
@click.option("--dry-run", is_flag=True,
              help="Show the space, the study so far, the steps shared by all trials and those each trial recomputes.")
@_guard
def tune(file: str, trials: int, algo: str, seed: int, parallel: int, batch: int | None, timeout: float | None,
         early_stop: bool, sets: tuple[str, ...], out: Path, cache_dir: Path | None, device: str, workers: int,
         pipeline_name: str | None, level: int, allow_outside_out: bool, dry_run: bool) -> None:
    """Search the parameters of FILE (its `search` clauses) for the best objective, with
    hyperopt; the study is saved as it goes, so running the same command again resumes it."""
    import importlib.util

    overrides = _sets(sets)
    if not dry_run:
        _require_run_extra()
    if importlib.util.find_spec("hyperopt") is None:
        click.echo("error: `medasc tune` needs hyperopt, which is not installed; install it with: "
                   "pip install -e '.[run]'", err=True)
        sys.exit(EXIT_USER)
    result, diags, sources = _load(file, overrides)
    _print_diagnostics(diags, sources, "text")
    if diags.has_errors:
        _finish(diags)
    chosen = _pick_pipelines(result, pipeline_name, "tune")

    from medasl.cache_cli import cache_root
    from medasl.runtime.session import UsageProblem
    from medasl.source import SourceFile
    from medasl.tune import command
    from medasl.tune.driver import TuneProblem, TuneRequest
    from medasl.tune.trial import StudyStopped

    request = TuneRequest(file, trials, algo, seed, parallel, batch, timeout, overrides, out,
                          cache_root(cache_dir), device, workers, level, pipeline_name, early_stop, allow_outside_out)
    problems = Diagnostics()
    try:
        prepared = command.prepare_only(request, chosen, SourceFile.read(file))
        _print_diagnostics(prepared.diags, sources, "text")
        with _second_ctrl_c_exits():
            command.run(prepared, dry_run, lambda line: click.echo(line, err=True))
    except UsageProblem as exc:
        raise click.UsageError(str(exc)) from None
    except (TuneProblem, StudyStopped) as exc:
        problems.error(exc.code, exc.message, help=exc.help)
    except KeyboardInterrupt:
        click.echo("interrupted: the study is saved and every result finished so far is kept in the cache; "
                   f"to resume, run the same command:\n  {shlex.join(['medasc', *sys.argv[1:]])}", err=True)
        _exit_interrupted()
    if problems.has_errors:
        _print_diagnostics(problems, sources, "text")
        _finish(problems)


if __name__ == "__main__":  # pragma: no cover
    main()
