"""`medasc cache ls|du|gc` over a small cache written through `Cache.write`."""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from medasl.cache_cli import human, parse_age
from medasl.cli import main
from medasl.runtime.cache import MANIFEST_NAME, Cache, CacheKey

DAY = 86400.0


def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["cache", *args], env=env)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


def add(cache: Cache, op: str, size: int, age_s: float = 0.0, node_id: str | None = None) -> str:
    key = CacheKey(op, params={"size": size, "age": age_s})
    with cache.write(key, node_id=node_id) as pending:
        (pending.path / "value.0.npy").write_bytes(b"x" * size)
        (pending.path / "value.json").write_text("{}")
    if age_s:
        manifest_path = cache.entry_path(key) / MANIFEST_NAME
        manifest = json.loads(manifest_path.read_text())
        manifest["created"] = time.time() - age_s
        manifest_path.write_text(json.dumps(manifest))
    return key.digest()


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "medasl-cache"


@pytest.fixture
def cache(home: Path) -> Cache:
    return Cache(home / "results")


@pytest.fixture
def filled(cache: Cache) -> dict[str, str]:
    """Three entries (an old one), plus a dead writer's temp dir and an unused lock file."""
    digests = {
        "old": add(cache, "resample", 3000, age_s=10 * DAY, node_id="prep.resample"),
        "big": add(cache, "nifti", 2_000_000, age_s=2 * DAY, node_id="cases"),
        "new": add(cache, "resample", 500, node_id="prep.resample"),
    }
    temp = cache.root / f".tmp-{dead_pid()}-deadbeef"
    temp.mkdir()
    (temp / "value.0.npy").write_bytes(b"y" * 4096)
    (cache.root / "locks").mkdir(exist_ok=True)
    (cache.root / "locks" / f"{'ab' * 32}.lock").write_text("")
    return digests


def test_parse_age_and_human() -> None:
    assert parse_age("7d") == 7 * DAY and parse_age("12h") == 12 * 3600 and parse_age("30m") == 1800
    assert parse_age("1.5h") == 5400 and parse_age("2w") == 14 * DAY and parse_age("45s") == 45
    for bad in ("", "7", "d", "7x", "-1d", "7 days"):
        with pytest.raises(ValueError):
            parse_age(bad)
    assert human(0) == "0 B" and human(1023) == "1023 B" and human(1536) == "1.5 KB"
    assert human(3 * 1024**2) == "3.0 MB" and human(5 * 1024**3) == "5.0 GB" and human(2 * 1024**4) == "2.0 TB"


def test_help_lists_cache() -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0 and "cache" in result.output
    for sub in ("ls", "du", "gc"):
        assert CliRunner().invoke(main, ["cache", sub, "--help"]).exit_code == 0


@pytest.mark.parametrize("command", [["ls"], ["du"], ["gc"], ["gc", "--all"], ["gc", "--dry-run"]])
def test_absent_or_empty_cache_is_not_an_error(command: list[str], home: Path) -> None:
    code, out = run("--cache-dir", str(home), *command)
    assert code == 0 and out.strip() == f"cache is empty: {home / 'results'}"
    assert not home.exists(), "looking must not create the cache"
    (home / "results").mkdir(parents=True)
    code, out = run(*command, "--cache-dir", str(home))
    assert code == 0 and ("cache is empty" in out or " 0 B: 0 entries, 0 temp dirs, 0 locks" in out)


def test_ls(filled: dict[str, str], home: Path) -> None:
    code, out = run("--cache-dir", str(home), "ls")
    assert code == 0
    lines = out.splitlines()
    assert [line[:12] for line in lines] == [filled[k][:12] for k in ("old", "big", "new")], "oldest first"
    old = lines[0].split()
    assert old[1:5] == ["resample", "prep.resample", "2.9", "KB"]
    expected = datetime.datetime.fromtimestamp(time.time() - 10 * DAY).strftime("%Y-%m-%dT%H:")
    assert old[5].startswith(expected) and len(old[5]) == len("2026-01-01T12:30")
    assert lines[1].split()[3:5] == ["1.9", "MB"]


def test_ls_json_and_env(filled: dict[str, str], home: Path) -> None:
    code, out = run("ls", "--json", env={"MEDASL_CACHE_DIR": str(home)})
    assert code == 0
    rows = json.loads(out)
    assert [r["digest"] for r in rows] == [filled[k] for k in ("old", "big", "new")]
    assert rows[1]["op"] == "nifti" and rows[1]["node_id"] == "cases" and rows[1]["size"] == 2_000_002
    assert set(rows[0]) == {"digest", "op", "node_id", "size", "created", "created_iso", "path"}
    assert json.loads(run("ls", "--json", "--cache-dir", str(home / "none"))[1]) == []


def test_du(filled: dict[str, str], cache: Cache, home: Path) -> None:
    code, out = run("du", "--cache-dir", str(home))
    assert code == 0
    usage = cache.du()
    assert f"total: {human(usage.total)} in 3 entries" in out
    by_op = [line.split()[0] for line in out.splitlines() if line.startswith("  ")]
    assert by_op == ["nifti", "resample"], "biggest first"
    assert f"outside entries: {human(usage.other)}" in out
    data = json.loads(run("du", "--json", "--cache-dir", str(home))[1])
    assert data["total"] == usage.total and data["entries"] == 3 and data["other"] == usage.other >= 4096
    assert data["by_op"]["resample"]["entries"] == 2
    assert data["by_op"]["resample"]["bytes"] == usage.entries[filled["old"]] + usage.entries[filled["new"]]


def test_gc_default_removes_only_leftovers(filled: dict[str, str], cache: Cache, home: Path) -> None:
    code, out = run("gc", "--cache-dir", str(home))
    assert code == 0
    assert "removed temp dir .tmp-" in out and "removed lock " in out and "removed entry" not in out
    assert "freed 4.0 KB: 0 entries, 1 temp dirs, 1 locks" in out
    assert {e.digest for e in cache.entries()} == set(filled.values())
    assert not list(cache.root.glob(".tmp-*")) and not list((cache.root / "locks").glob("*.lock"))


def test_gc_dry_run_changes_nothing(filled: dict[str, str], cache: Cache, home: Path) -> None:
    before = sorted(p.relative_to(cache.root) for p in cache.root.rglob("*"))
    code, out = run("gc", "--dry-run", "--older-than", "7d", "--cache-dir", str(home))
    assert code == 0
    assert f"would remove entry {filled['old'][:12]} resample" in out
    assert filled["big"][:12] not in out and filled["new"][:12] not in out
    assert "would remove temp dir .tmp-" in out and "would remove lock " in out
    assert "would free" in out and "1 entries, 1 temp dirs, 1 locks" in out
    assert sorted(p.relative_to(cache.root) for p in cache.root.rglob("*")) == before
    code, out = run("gc", "--dry-run", "--all", "--cache-dir", str(home))
    assert code == 0 and "3 entries" in out


def test_gc_older_than(filled: dict[str, str], cache: Cache, home: Path) -> None:
    code, out = run("gc", "--older-than", "7d", "--cache-dir", str(home))
    assert code == 0 and f"removed entry {filled['old'][:12]} resample" in out
    assert {e.digest for e in cache.entries()} == {filled["big"], filled["new"]}
    code, out = run("gc", "--older-than", "36h", "--cache-dir", str(home))
    assert {e.digest for e in cache.entries()} == {filled["new"]}


def test_gc_all(filled: dict[str, str], cache: Cache, home: Path) -> None:
    code, out = run("gc", "--all", "--cache-dir", str(home))
    assert code == 0 and out.count("removed entry") == 3 and "3 entries" in out
    assert cache.entries() == []
    assert run("ls", "--cache-dir", str(home))[1].startswith("cache is empty")


def test_gc_keeps_entries_in_use(filled: dict[str, str], cache: Cache, home: Path) -> None:
    with cache.lock(filled["new"]):
        code, out = run("gc", "--all", "--cache-dir", str(home))
    assert code == 0
    assert {e.digest for e in cache.entries()} == {filled["new"]}


@pytest.mark.parametrize("args", [["gc", "--older-than", "7x"], ["gc", "--older-than", ""],
                                  ["gc", "--all", "--older-than", "1d"], ["ls", "--bogus"], ["nope"]])
def test_misuse_exits_2(args: list[str], home: Path) -> None:
    code, out = run("--cache-dir", str(home), *args)
    assert code == 2
    if "7x" in args:
        assert "Invalid value for '--older-than'" in out
