"""A step whose result is cached needs no implementation: a fully cached `medasc run`
and a `--dry-run` import no operator module that computes, and none of PyTorch, MONAI,
SimpleITK or matplotlib (importing them took 5 s and 450 MB to compute nothing).

Each command runs in a fresh interpreter that writes the names of every module it
imported (`sys.modules` at exit) to a file; the test asserts on those names, never on
timings. Listing a source's cases (medasl.ops.io) and regrouping them (medasl.ops.data)
are part of finding the cache keys, so those two modules may be imported."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytest.importorskip("torch", reason="filling the cache trains a network (pip install -e '.[run]')")
pytest.importorskip("monai", reason="filling the cache trains a network (pip install -e '.[run]')")

HEAVY = ("torch", "monai", "SimpleITK", "matplotlib", "scipy", "skimage", "sklearn", "pandas", "PIL")
ALLOWED_OPS = {"medasl.ops", "medasl.ops.io", "medasl.ops.data"}
EXAMPLES = ("quickstart", "preprocess")

# Runs `medasc ARGS...` and, at exit (also on SystemExit), writes sorted(sys.modules) to FILE.
PROBE = """
import atexit, json, sys
out = sys.argv.pop(1)
atexit.register(lambda: open(out, "w").write(json.dumps(sorted(sys.modules))))
sys.argv[0] = "medasc"
from medasl.cli import main
main()
"""


def medasc(args: list[str], modules_file: Path) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    proc = subprocess.run([sys.executable, "-c", PROBE, str(modules_file), *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=900)
    modules = set(json.loads(modules_file.read_text())) if modules_file.exists() else set()
    return proc, modules


def run_args(example: str, cache: Path, out: Path, *extra: str) -> list[str]:
    return ["run", str(ROOT / "examples" / f"{example}.medas"), "--cache-dir", str(cache), "--out", str(out), *extra]


def assert_light(modules: set[str], what: str) -> None:
    assert "medasl.runtime.executor" in modules, f"{what}: the probe saw no run (modules: {sorted(modules)[:20]}...)"
    heavy = sorted(m for m in modules if m.split(".")[0] in HEAVY)
    assert not heavy, f"{what} imported {', '.join(h for h in heavy if '.' not in h) or heavy[0]}"
    ops = sorted(m for m in modules if m.startswith("medasl.ops") and m not in ALLOWED_OPS)
    assert not ops, f"{what} imported operator modules {', '.join(ops)}"


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """One cache holding every result of the examples (the quickstart trains: about a minute)."""
    base = tmp_path_factory.mktemp("cached-run")
    cache, out = base / "cache", base / "out"
    for example in EXAMPLES:
        proc, modules = medasc(run_args(example, cache, out), base / f"{example}-first.json")
        assert proc.returncode == 0, proc.stderr[-3000:]
        if example == "quickstart":  # computing does import them: the probe can see it
            assert {"torch", "monai", "medasl.ops.nets"} <= modules
    return cache, out


@pytest.mark.parametrize("example", EXAMPLES)
def test_a_fully_cached_run_imports_no_operator_module(example: str, filled: tuple[Path, Path],
                                                        tmp_path: Path) -> None:
    cache, out = filled
    proc, modules = medasc(run_args(example, cache, out), tmp_path / "modules.json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert " new " not in proc.stderr and " ran " not in proc.stderr, proc.stderr  # nothing was computed
    assert "cached" in proc.stderr
    if example == "quickstart":  # what the run found is still reported, from the cache
        assert "score = dice" in proc.stderr and "report:" in proc.stderr
    assert_light(modules, f"a fully cached `medasc run examples/{example}.medas`")


@pytest.mark.parametrize("example", EXAMPLES)
def test_a_dry_run_of_a_cached_pipeline_imports_no_operator_module(example: str, filled: tuple[Path, Path],
                                                                   tmp_path: Path) -> None:
    cache, out = filled
    proc, modules = medasc(run_args(example, cache, out, "--dry-run"), tmp_path / "modules.json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "dry run" in proc.stderr and "cached" in proc.stderr
    assert_light(modules, f"`medasc run --dry-run examples/{example}.medas`")


def test_a_dry_run_on_an_empty_cache_imports_no_operator_module(tmp_path: Path) -> None:
    proc, modules = medasc(run_args("quickstart", tmp_path / "cache", tmp_path / "out", "--dry-run"),
                           tmp_path / "modules.json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "new" in proc.stderr
    assert_light(modules, "`medasc run --dry-run` on an empty cache")


def test_a_cached_run_with_workers_starts_none(filled: tuple[Path, Path], tmp_path: Path) -> None:
    """With worker processes asked for, cached results, written files included (the
    preprocess example writes one per case), are found in the main process: no pool of
    workers is made to find nothing to do (making one imports concurrent.futures.process)."""
    cache, out = filled
    proc, modules = medasc(run_args("preprocess", cache, out, "--workers", "2"), tmp_path / "modules.json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "concurrent.futures.process" not in modules
    assert_light(modules, "a fully cached run with --workers 2")
    for written in (out / "preprocess" / "val").glob("*_ct.nii.gz"):  # a removed file is written again
        written.unlink()
        break
    else:
        pytest.fail("the preprocess example wrote no val/*_ct.nii.gz")
    proc, modules = medasc(run_args("preprocess", cache, out, "--workers", "2"), tmp_path / "again.json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert written.is_file() and "1 new" in proc.stderr, proc.stderr
