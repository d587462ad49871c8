"""The result cache and the source digests it keys on.

Crash safety and locking are tested with real processes: writers killed with SIGKILL at
seeded random points, two processes racing for one key, and lock files left behind by
dead processes. No test asserts on how fast anything is.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from medasl import __version__
from medasl.runtime import digests
from medasl.runtime.cache import Cache, CacheKey, LockTimeout, canonical, pid_alive
from medasl.runtime.digests import DigestMemo, file_digest, folder_digest, folder_files

HOUR_NS = 3600 * 1_000_000_000


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_key(**changes: object) -> CacheKey:
    parts: dict[str, object] = {
        "op": "resample",
        "version": 1,
        "params": {"spacing": (1.5, 1.5, 2.0), "mode": "linear"},
        "inputs": {"image": "a" * 64},
        "sources": {"data/ct.nii.gz": "b" * 64},
        "seed": 7,
    }
    parts.update(changes)
    return CacheKey(**parts)  # type: ignore[arg-type]


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, check=True)
    return int(done.stdout)


def temp_dirs(root: Path) -> list[Path]:
    return sorted(root.glob(".tmp-*"))


# ----- keys --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change",
    [
        {"op": "resize"},
        {"version": 2},
        {"params": {"spacing": (1.5, 1.5, 2.5), "mode": "linear"}},
        {"params": {"spacing": (1.5, 1.5, 2.0), "mode": "nearest"}},
        {"params": {"spacing": (1.5, 1.5, 2.0)}},
        {"inputs": {"image": "c" * 64}},
        {"inputs": {"image": "a" * 64, "mask": "d" * 64}},
        {"sources": {"data/ct.nii.gz": "e" * 64}},
        {"sources": {"data/other.nii.gz": "b" * 64}},
        {"seed": 8},
        {"seed": None},
    ],
)
def test_key_changes_when_any_part_changes(change: dict[str, object]) -> None:
    assert make_key(**change).digest() != make_key().digest()


def test_key_is_canonical() -> None:
    reordered = make_key(params={"mode": "linear", "spacing": [1.5, 1.5, 2.0]})
    assert reordered.digest() == make_key().digest()
    assert reordered == make_key() and hash(reordered) == hash(make_key())
    assert CacheKey("op", params={"x": 1}).digest() != CacheKey("op", params={"x": 1.0}).digest()
    assert CacheKey("op", params={"x": True}).digest() != CacheKey("op", params={"x": 1}).digest()
    assert canonical({"fill": float("nan")}) == {"fill": {"$float": "nan"}}


def test_key_refuses_values_without_a_stable_spelling() -> None:
    with pytest.raises(TypeError, match="params.fn"):
        CacheKey("op", params={"fn": object()})
    with pytest.raises(TypeError, match="not a string"):
        CacheKey("op", params={"nested": {1: 2}})
    with pytest.raises(TypeError):
        CacheKey("op", seed=1.5)  # type: ignore[arg-type]


def test_same_parts_give_the_same_digest_across_processes() -> None:
    script = (
        "from medasl.runtime.cache import CacheKey\n"
        "k = CacheKey('resample', 1, {'mode': 'linear', 'spacing': (1.5, 1.5, 2.0)},"
        " {'image': 'a' * 64}, {'data/ct.nii.gz': 'b' * 64}, 7)\n"
        "print(k.digest())\n"
    )
    seen = set()
    for hash_seed in ("0", "1", "random"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, env=env)
        seen.add(done.stdout.strip())
    assert seen == {make_key().digest()}


# ----- writing and reading -----------------------------------------------------------


def test_round_trip_and_manifest(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    key = make_key()
    assert cache.lookup(key) is None
    with cache.write(key, node_id="liver.resampled") as pending:
        (pending.path / "image.raw").write_bytes(b"\x01\x02\x03")
        (pending.path / "meta").mkdir()
        (pending.path / "meta" / "geometry.json").write_text('{"spacing": [1.5, 1.5, 2.0]}')
        pending.info["angle"] = 3.5
    entry = cache.lookup(key, verify=True)
    assert entry is not None and pending.entry == entry
    assert entry.path == tmp_path / "cache" / key.digest()[:2] / key.digest()
    assert entry.file("image.raw").read_bytes() == b"\x01\x02\x03"
    assert set(entry.outputs) == {"image.raw", "meta/geometry.json"}

    manifest = json.loads((entry.path / "manifest.json").read_text())
    assert manifest["digest"] == key.digest()
    assert manifest["key"] == json.loads(json.dumps(key.parts()))
    assert manifest["node_id"] == "liver.resampled"
    assert manifest["outputs"]["image.raw"] == {"size": 3, "sha256": sha(b"\x01\x02\x03")}
    assert manifest["info"] == {"angle": 3.5}
    assert manifest["medasl_version"] == __version__
    assert manifest["timing"]["seconds"] >= 0 and manifest["created"] >= manifest["timing"]["started"]
    assert temp_dirs(cache.root) == []


def test_a_failed_write_commits_nothing(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    with pytest.raises(RuntimeError), cache.write(make_key()) as pending:
        (pending.path / "half.raw").write_bytes(b"x")
        raise RuntimeError("operator failed")
    assert cache.lookup(make_key()) is None
    assert temp_dirs(tmp_path) == [] and cache.entries() == []


def test_outputs_must_be_plain_files_with_free_names(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    with pytest.raises(ValueError, match="reserved"), cache.write(make_key()) as pending:
        (pending.path / "manifest.json").write_text("{}")
    with pytest.raises(ValueError, match="regular file"), cache.write(make_key()) as pending:
        (pending.path / "link").symlink_to(tmp_path)
    assert cache.lookup(make_key()) is None and temp_dirs(tmp_path) == []


def write_entry(cache: Cache, key: CacheKey, data: bytes = b"0123456789", node_id: str | None = None) -> None:
    with cache.write(key, node_id=node_id) as pending:
        (pending.path / "out.raw").write_bytes(data)


def test_a_damaged_entry_is_not_found(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    key = make_key()
    write_entry(cache, key)
    out = cache.entry_path(key) / "out.raw"

    out.write_bytes(b"01234")  # truncated
    assert cache.lookup(key) is None
    out.write_bytes(b"0123456789")
    assert cache.lookup(key, verify=True) is not None
    out.write_bytes(b"9876543210")  # same size, other bytes: the content is compared too (issue 10)
    assert cache.lookup(key) is None and cache.lookup(key, verify=True) is None
    assert cache.lookup(key, verify=False) is not None  # sizes only, on request
    out.unlink()
    assert cache.lookup(key) is None
    (cache.entry_path(key) / "manifest.json").write_text("{not json")
    assert cache.lookup(key) is None


def test_writing_an_existing_key_keeps_one_entry_and_replaces_a_damaged_one(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    key = make_key()
    write_entry(cache, key, b"first")
    write_entry(cache, key, b"again")  # a duplicate commit loses the race and keeps the first
    entry = cache.lookup(key, verify=True)
    assert entry is not None and entry.file("out.raw").read_bytes() == b"first"
    entry.file("out.raw").write_bytes(b"")  # damage it
    write_entry(cache, key, b"fresh")
    entry = cache.lookup(key, verify=True)
    assert entry is not None and entry.file("out.raw").read_bytes() == b"fresh"
    assert temp_dirs(tmp_path) == [] and len(cache.entries()) == 1


def test_entries_du_and_gc(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    keys = [make_key(seed=i) for i in range(3)]
    for i, key in enumerate(keys):
        write_entry(cache, key, b"x" * (100 * (i + 1)))
    assert [e.digest for e in cache.entries()] == [k.digest() for k in keys]  # oldest first
    usage = cache.du()
    assert set(usage.entries) == {k.digest() for k in keys}
    assert all(size > 100 for size in usage.entries.values())
    assert usage.total == sum(usage.entries.values()) + usage.other

    leftover = tmp_path / f".tmp-{dead_pid()}-0123456789abcdef"
    leftover.mkdir()
    (leftover / "half.raw").write_bytes(b"x" * 50)
    mine = tmp_path / f".tmp-{os.getpid()}-fedcba9876543210"  # a live writer's: must stay
    mine.mkdir()

    report = cache.gc(keep_digests={keys[0].digest()}, older_than_s=3600)
    assert report.removed_entries == [] and report.removed_temp == [leftover.name]
    assert mine.exists() and not leftover.exists()

    report = cache.gc(keep_digests={keys[0].digest()})
    assert sorted(report.removed_entries) == sorted(k.digest() for k in keys[1:])
    assert report.freed_bytes >= 500
    assert [e.digest for e in cache.entries()] == [keys[0].digest()]
    assert cache.lookup(keys[1]) is None and cache.lookup(keys[0]) is not None


# ----- crashes -----------------------------------------------------------------------

SLOW_WRITER = """
import sys, time
from medasl.runtime.cache import Cache, CacheKey
cache = Cache(sys.argv[1])
key = CacheKey("slow", 1, {"i": int(sys.argv[2])})
with cache.write(key, node_id="p.slow") as pending:
    print("writing", flush=True)
    for n in range(5):
        (pending.path / f"out{n}.raw").write_bytes(bytes([n]) * 4096 * (n + 1))
        time.sleep(0.02)
print("committed", flush=True)
"""


def slow_key(i: int) -> CacheKey:
    return CacheKey("slow", 1, {"i": i})


def assert_complete(cache: Cache, key: CacheKey) -> None:
    entry = cache.lookup(key, verify=True)
    assert entry is not None
    for n in range(5):
        assert entry.file(f"out{n}.raw").read_bytes() == bytes([n]) * 4096 * (n + 1)


def test_sigkill_at_random_points_leaves_no_partial_entry(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    rng = random.Random(20240531)
    delays = [0.0] + [rng.uniform(0.0, 0.15) for _ in range(7)]  # the first dies mid-write for sure
    for n, delay in enumerate(delays):
        proc = subprocess.Popen([sys.executable, "-c", SLOW_WRITER, str(root), str(n % 4)], stdout=subprocess.PIPE)
        assert proc.stdout is not None and proc.stdout.readline() == b"writing\n"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()

    cache = Cache(root)
    for i in range(4):  # each key: nothing, or a complete entry
        if cache.lookup(slow_key(i)) is not None:
            assert_complete(cache, slow_key(i))
    for entry_dir in root.glob("??/*"):  # nothing that looks like an entry is partial
        assert cache.lookup(entry_dir.name, verify=True) is not None
    assert temp_dirs(root), "the writer killed at once must have left its temp dir"

    report = cache.gc(keep_digests={slow_key(i).digest() for i in range(4)})
    assert temp_dirs(root) == [] and report.removed_temp and report.removed_entries == []

    for i in range(4):  # resuming: write what is missing, keep what is there
        if cache.lookup(slow_key(i)) is None:
            done = subprocess.run([sys.executable, "-c", SLOW_WRITER, str(root), str(i)], capture_output=True)
            assert done.returncode == 0 and done.stdout.endswith(b"committed\n")
        assert_complete(cache, slow_key(i))


# ----- locks -------------------------------------------------------------------------

RACER = """
import json, os, sys, time
from medasl.runtime.cache import Cache, CacheKey
root, marker, go = sys.argv[1:4]
cache = Cache(root)
key = CacheKey("train", 2, {"epochs": 3})
print("ready", flush=True)
while not os.path.exists(go):
    time.sleep(0.002)

def produce(pending):
    with open(marker, "a") as f:
        f.write(f"{os.getpid()}\\n")
    time.sleep(0.3)
    (pending.path / "model.bin").write_bytes(b"weights")

entry, computed = cache.ensure(key, produce, node_id="p.fit")
entry = cache.lookup(key, verify=True)
print(json.dumps({"computed": computed, "digest": entry.digest, "data": entry.file("model.bin").read_text()}))
"""


def test_two_processes_compute_one_key_once(tmp_path: Path) -> None:
    root, marker, go = tmp_path / "cache", tmp_path / "marker", tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, str(root), str(marker), str(go)], stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    for proc in procs:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    go.touch()
    results = []
    for proc in procs:
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0
        results.append(json.loads(out))

    assert len(marker.read_text().splitlines()) == 1
    assert sorted(r["computed"] for r in results) == [False, True]
    assert results[0]["digest"] == results[1]["digest"] and {r["data"] for r in results} == {"weights"}
    assert not (root / "locks" / f"{results[0]['digest']}.lock").exists()


def test_a_lock_file_naming_a_dead_pid_does_not_block(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    key = make_key()
    path = cache.lock_path(key)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"pid": dead_pid(), "host": os.uname().nodename, "since": 0}))
    with cache.lock(key, timeout=5):
        assert json.loads(path.read_text())["pid"] == os.getpid()
    assert not path.exists()


ORPHAN_HOLDER = """
import fcntl, json, os, sys, time
path, pid = sys.argv[1], int(sys.argv[2])
fd = os.open(path, os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, json.dumps({"pid": pid, "host": os.uname().nodename, "since": 0}).encode())
print("holding", flush=True)
time.sleep(60)
"""


def test_a_lock_still_held_for_a_dead_pid_is_broken(tmp_path: Path) -> None:
    """A forked child can keep the flock of a holder that died; the pid inside tells."""
    cache = Cache(tmp_path)
    key = make_key()
    path = cache.lock_path(key)
    path.parent.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", ORPHAN_HOLDER, str(path), str(dead_pid())], stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"holding\n"
        with cache.lock(key, timeout=10):
            assert json.loads(path.read_text())["pid"] == os.getpid()
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()  # type: ignore[union-attr]


LIVE_HOLDER = """
import sys, time
from medasl.runtime.cache import Cache
with Cache(sys.argv[1]).lock(sys.argv[2]):
    print("holding", flush=True)
    time.sleep(60)
"""


def test_a_live_holder_blocks_until_it_is_killed(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    key = make_key()
    holder = subprocess.Popen([sys.executable, "-c", LIVE_HOLDER, str(tmp_path), key.digest()], stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"holding\n"
        assert pid_alive(holder.pid)
        with pytest.raises(LockTimeout), cache.lock(key, timeout=0.2):
            pass
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        assert not pid_alive(holder.pid)
        with cache.lock(key, timeout=10):
            pass
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()  # type: ignore[union-attr]
    assert cache.gc().removed_locks == []  # nothing left over


# ----- explanations ------------------------------------------------------------------


def test_explain_new_cached_and_stale(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    node = "liver.resampled"
    key = make_key()
    first = cache.explain(key, node)
    assert first.status == "new" and first.previous is None
    write_entry(cache, key, node_id=node)
    assert cache.explain(key, node).status == "cached"

    lr = make_key(params={"spacing": (1.5, 1.5, 2.0), "mode": "nearest"})
    stale = cache.explain(lr, node)
    assert stale.status == "stale" and stale.previous == key.digest()
    assert [(c.part, c.name) for c in stale.changes] == [("param", "mode")]
    assert "param `mode` changed" in str(stale) and '"linear" -> "nearest"' in str(stale)

    data = make_key(sources={"data/ct.nii.gz": "f" * 64})
    stale = cache.explain(data, node)
    assert stale.status == "stale" and [(c.part, c.name) for c in stale.changes] == [("source", "data/ct.nii.gz")]
    assert "source `data/ct.nii.gz` changed" in stale.reasons[0]

    several = make_key(version=2, seed=8, inputs={"image": "c" * 64})
    assert [c.part for c in cache.explain(several, node).changes] == ["version", "input", "seed"]
    assert cache.explain(key, "liver.other").status == "cached"  # the entry is shared by content
    assert cache.explain(lr, "liver.other").status == "new"


def test_explain_follows_the_latest_result_and_nested_params(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    node = "p.aug"
    a = CacheKey("rotate", params={"range": {"angle": 10, "axes": [0, 1]}})
    b = CacheKey("rotate", params={"range": {"angle": 15, "axes": [0, 1]}})
    write_entry(cache, a, node_id=node)
    write_entry(cache, b, node_id=node)
    assert cache.explain(a, node).status == "cached"
    cache.gc(keep_digests=set())
    explanation = cache.explain(a, node)
    assert explanation.status == "stale" and explanation.reasons == ["param `range.angle` changed: 15 -> 10"]
    assert cache.explain(b, node).status == "new"  # recorded last, but removed since


def test_ensure_skips_cached_work(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    calls = []

    def produce(pending: object) -> None:
        calls.append(1)
        (pending.path / "out.raw").write_bytes(b"x")  # type: ignore[attr-defined]

    first, computed = cache.ensure(make_key(), produce, node_id="n")
    second, again = cache.ensure(make_key(), produce, node_id="n")
    assert (computed, again, len(calls)) == (True, False, 1) and first == second


# ----- source digests ----------------------------------------------------------------


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every file the digest code actually reads."""
    seen: list[str] = []
    real = digests.sha256_file

    def counting(path: digests.StrPath) -> str:
        seen.append(os.fspath(path))
        return real(path)

    monkeypatch.setattr(digests, "sha256_file", counting)
    return seen


def quiet_file(path: Path, data: bytes, age_ns: int = HOUR_NS) -> Path:
    """A file last modified `age_ns` ago, so the memo may trust it."""
    path.write_bytes(data)
    then = time.time_ns() - age_ns
    os.utime(path, ns=(then, then))
    return path


def test_an_unchanged_file_is_not_read_again(tmp_path: Path, reads: list[str]) -> None:
    f = quiet_file(tmp_path / "ct.raw", b"hounsfield")
    with DigestMemo(tmp_path / "cache") as memo:
        assert memo.digest(f) == sha(b"hounsfield")
        assert memo.digest(f) == sha(b"hounsfield")
    assert len(reads) == 1
    assert file_digest(f, DigestMemo(tmp_path / "cache")) == sha(b"hounsfield")  # a new process, same memo file
    assert len(reads) == 1
    assert (tmp_path / "cache" / "digests.json").exists()


def test_a_changed_file_is_read_again(tmp_path: Path, reads: list[str]) -> None:
    root = tmp_path / "cache"
    f = quiet_file(tmp_path / "ct.raw", b"aaaa")

    def digest() -> str:
        with DigestMemo(root) as memo:
            return memo.digest(f)

    assert digest() == sha(b"aaaa") and len(reads) == 1
    quiet_file(f, b"bbbb", age_ns=2 * HOUR_NS)  # content (same size; mtime differs)
    assert digest() == sha(b"bbbb") and len(reads) == 2
    stamp = f.stat().st_mtime_ns
    f.write_bytes(b"bbbbb")  # size, with the old mtime put back
    os.utime(f, ns=(stamp, stamp))
    assert digest() == sha(b"bbbbb") and len(reads) == 3
    os.utime(f, ns=(stamp - HOUR_NS, stamp - HOUR_NS))  # mtime only
    assert digest() == sha(b"bbbbb") and len(reads) == 4
    replacement = quiet_file(tmp_path / "new.raw", b"ccccc")  # another inode with the same size and mtime
    os.utime(replacement, ns=(stamp - HOUR_NS, stamp - HOUR_NS))
    os.replace(replacement, f)
    assert digest() == sha(b"ccccc") and len(reads) == 5
    assert digest() == sha(b"ccccc") and len(reads) == 5


def test_a_file_modified_just_now_is_not_trusted(tmp_path: Path, reads: list[str]) -> None:
    """Within one timestamp tick a rewrite keeps size and mtime; such digests are re-checked."""
    f = tmp_path / "fresh.raw"
    f.write_bytes(b"new")
    with DigestMemo(tmp_path) as memo:
        memo.digest(f)
        memo.digest(f)
    assert len(reads) == 2


def test_a_corrupt_memo_is_ignored_and_replaced(tmp_path: Path, reads: list[str]) -> None:
    f = quiet_file(tmp_path / "ct.raw", b"data")
    memo_file = tmp_path / "cache" / "digests.json"
    for junk in ("{truncated", "[]", '{"format": 1, "files": {"x": 3}}', "\x00\x01"):
        memo_file.parent.mkdir(exist_ok=True)
        memo_file.write_text(junk)
        with DigestMemo(tmp_path / "cache") as memo:
            assert memo.digest(f) == sha(b"data")
        assert json.loads(memo_file.read_text())["format"] == 1
    bad = json.loads(memo_file.read_text())
    bad["files"][str(f)]["inode"] = "not a number"
    memo_file.write_text(json.dumps(bad))
    assert file_digest(f, DigestMemo(tmp_path / "cache")) == sha(b"data")


def test_memos_saved_by_two_processes_keep_both(tmp_path: Path) -> None:
    a, b = quiet_file(tmp_path / "a.raw", b"a"), quiet_file(tmp_path / "b.raw", b"b")
    first, second = DigestMemo(tmp_path / "cache"), DigestMemo(tmp_path / "cache")
    first.digest(a)
    second.digest(b)
    first.save()
    second.save()
    files = json.loads((tmp_path / "cache" / "digests.json").read_text())["files"]
    assert set(files) == {str(a), str(b)}


def test_file_digest_uses_the_default_cache_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDASL_CACHE_DIR", str(tmp_path / "home"))
    f = quiet_file(tmp_path / "x.raw", b"x")
    assert file_digest(f) == sha(b"x")
    assert (tmp_path / "home" / "results" / "digests.json").exists()
    assert Cache().root == tmp_path / "home" / "results"
    with pytest.raises(FileNotFoundError):
        file_digest(tmp_path / "missing.raw")


def test_folder_digest(tmp_path: Path, reads: list[str]) -> None:
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    quiet_file(data / "img-1.nii", b"one")
    quiet_file(data / "sub" / "img-2.nii", b"two")
    quiet_file(data / "notes.txt", b"not an image")
    memo = DigestMemo(tmp_path / "cache")
    patterns = ["*.nii", "sub/*.nii"]
    assert folder_files(data, patterns) == ["img-1.nii", "sub/img-2.nii"]
    before = folder_digest(data, patterns, memo)
    assert folder_digest(data, reversed(patterns), memo) == before and len(reads) == 2
    assert folder_digest(data, ["**/*"], memo) != before

    moved = tmp_path / "elsewhere"
    data.rename(moved)
    assert folder_digest(moved, patterns, memo) == before  # relative names and contents only
    moved.rename(data)

    (data / "img-1.nii").rename(data / "img-3.nii")
    renamed = folder_digest(data, patterns, memo)
    assert renamed != before
    quiet_file(data / "img-1.nii", b"one")
    assert folder_digest(data, patterns, memo) not in (before, renamed)  # a file added
    (data / "img-3.nii").unlink()
    assert folder_digest(data, patterns, memo) == before
    quiet_file(data / "img-1.nii", b"uno", age_ns=2 * HOUR_NS)
    assert folder_digest(data, patterns, memo) != before  # a file edited
    with pytest.raises(NotADirectoryError):
        folder_digest(data / "img-1.nii", patterns, memo)


def test_a_memo_that_cannot_be_saved_is_not_an_error(tmp_path: Path) -> None:
    f = quiet_file(tmp_path / "x.raw", b"x")
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")
    with DigestMemo(blocked) as memo:
        assert memo.digest(f) == sha(b"x")


# ----- per-case costs (issue 9) ----------------------------------------------------------


def test_a_small_value_is_one_file_and_loads_from_the_manifest(tmp_path: Path) -> None:
    import numpy as np

    from medasl.runtime.store import encode_value, load_value

    cache = Cache(tmp_path)
    value = {"image": np.arange(24, dtype=np.int16).reshape(2, 3, 4), "label": 3}
    entry, computed = cache.ensure(make_key(), lambda p: setattr(p, "value", encode_value(value, p.path)[0]))
    assert computed and sorted(os.listdir(entry.path)) == ["manifest.json"]
    assert json.loads((entry.path / "manifest.json").read_text())["format"] == 3
    back = load_value(entry.path, doc=cache.lookup(make_key()).value_doc)  # type: ignore[union-attr]
    assert isinstance(back, dict) and back["label"] == 3 and np.array_equal(back["image"], value["image"])


def test_large_arrays_make_one_data_file_whose_digest_is_recorded(tmp_path: Path) -> None:
    import numpy as np

    from medasl.runtime.store import encode_value, load_value

    cache = Cache(tmp_path)
    value = (np.arange(100_000, dtype=np.float32), np.ones((50, 50, 50), np.uint8))

    def produce(pending: object) -> None:
        doc, digests = encode_value(value, pending.path)  # type: ignore[attr-defined]
        pending.value = doc  # type: ignore[attr-defined]
        pending.digests.update(digests)  # type: ignore[attr-defined]

    entry, _ = cache.ensure(make_key(), produce)
    assert sorted(os.listdir(entry.path)) == ["manifest.json", "value.bin"]
    assert entry.outputs["value.bin"].sha256 == sha((entry.path / "value.bin").read_bytes())
    assert cache.lookup(make_key(), verify=True) is not None
    back = load_value(entry.path, doc=entry.value_doc)
    assert isinstance(back, tuple) and all(np.array_equal(a, b) for a, b in zip(back, value, strict=True))


def test_entries_of_manifest_format_1_still_load_and_unknown_formats_do_not(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    key = make_key()
    write_entry(cache, key)
    manifest_path = cache.entry_path(key) / "manifest.json"
    for fmt, found in ((1, True), (3, False), (2, True)):
        manifest = json.loads(manifest_path.read_text())
        manifest["format"] = fmt
        manifest_path.write_text(json.dumps(manifest))
        assert (cache.lookup(key) is not None) is found, fmt


def test_a_replaced_entry_is_read_again(tmp_path: Path) -> None:
    """Parsed manifests are remembered per process, but never past a change of the file."""
    cache = Cache(tmp_path)
    key = make_key()
    for drawn in ("first", "second"):
        with cache.write(key) as pending:
            pending.info["drawn"] = drawn
            (pending.path / "out.raw").write_bytes(b"x" * (10 if drawn == "first" else 20))
        found = Cache(tmp_path).lookup(key)
        assert found is not None and found.manifest["info"]["drawn"] == drawn and found.size in (10, 20)
        if drawn == "first":
            cache.discard(key)


def test_a_cached_key_takes_no_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = Cache(tmp_path)
    write_entry(cache, make_key())

    def no_lock(*args: object, **kwargs: object) -> None:
        raise AssertionError("locked although cached")

    monkeypatch.setattr(Cache, "lock", no_lock)
    entry, computed = cache.ensure(make_key(), lambda p: None)
    assert not computed and entry.digest == make_key().digest()


def journal_files(root: Path) -> list[Path]:
    return sorted((root / "index").glob("*.jsonl"))


def forget_journals() -> None:
    """What a new process knows of the journals: nothing."""
    from medasl.runtime import cache as cache_module

    cache_module._JOURNALS.clear()


def test_the_cases_of_a_step_share_one_journal(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    keys = {f"p/resample#case{i}": make_key(params={"case": i}) for i in range(50)}
    for node, key in keys.items():
        cache.record(node, key)
    cache.record("p/other", make_key(op="other"))
    assert len(journal_files(tmp_path)) == 2 and not list((tmp_path / "index").glob("*.json"))
    size = sum(p.stat().st_size for p in journal_files(tmp_path))
    for node, key in keys.items():  # recording the same keys again writes nothing
        cache.record(node, key)
    forget_journals()
    for node, key in keys.items():
        Cache(tmp_path).record(node, key)
    assert sum(p.stat().st_size for p in journal_files(tmp_path)) == size
    for node, key in keys.items():
        assert cache.previous("resample", node) == (key.digest(), key.parts())
    changed = make_key(params={"case": 7, "mode": "nearest"})
    stale = Cache(tmp_path).explain(changed, "p/resample#case7")
    assert stale.status == "stale" and stale.previous == keys["p/resample#case7"].digest()
    assert [(c.part, c.name) for c in stale.changes] == [("param", "mode")]
    assert Cache(tmp_path).explain(changed, "p/resample#case8").previous == keys["p/resample#case8"].digest()


def test_a_journal_written_by_another_process_is_followed(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    cache.record("p/step#a", make_key(seed=1))
    assert cache.previous("resample", "p/step#a") is not None
    script = ("import sys\nfrom medasl.runtime.cache import CacheKey, Cache\n"
              "Cache(sys.argv[1]).record('p/step#a', CacheKey('resample', seed=2))\n"
              "Cache(sys.argv[1]).record('p/step#b', CacheKey('resample', seed=3))\n")
    subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=True)
    assert cache.previous("resample", "p/step#a")[0] == CacheKey("resample", seed=2).digest()  # type: ignore[index]
    assert cache.previous("resample", "p/step#b")[0] == CacheKey("resample", seed=3).digest()  # type: ignore[index]


def test_a_killed_writers_partial_line_loses_nothing_else(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    cache.record("p/step#a", make_key(seed=1))
    (journal,) = journal_files(tmp_path)
    with open(journal, "ab") as f:
        f.write(b'{"format":2,"node_id":"p/step#b","dig')  # killed in the middle of its write
    cache.record("p/step#c", make_key(seed=3))
    forget_journals()
    assert cache.previous("resample", "p/step#a")[0] == make_key(seed=1).digest()  # type: ignore[index]
    assert cache.previous("resample", "p/step#c")[0] == make_key(seed=3).digest()  # type: ignore[index]
    assert cache.previous("resample", "p/step#b") is None


def test_a_journal_of_superseded_lines_is_compacted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from medasl.runtime import cache as cache_module

    monkeypatch.setattr(cache_module._Journal, "COMPACT_MIN", 20)
    cache = Cache(tmp_path)
    for run in range(10):  # ten runs of five cases, each with a new seed
        for case in range(5):
            cache.record(f"p/step#{case}", make_key(seed=run))
    (journal,) = journal_files(tmp_path)
    lines = [line for line in journal.read_bytes().split(b"\n") if line]
    assert len(lines) <= 20 + 5
    forget_journals()
    for case in range(5):
        assert cache.previous("resample", f"p/step#{case}") == (make_key(seed=9).digest(), make_key(seed=9).parts())
    assert cache.gc().removed_temp == []  # the compaction left no temp file


def test_index_files_written_before_journals_still_explain(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    key = make_key()
    old = {"format": 1, "op": key.op, "node_id": "p/step", "digest": key.digest(), "key": key.parts(), "updated": 0}
    path = cache._index_path(key.op, "p/step")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(old))
    stale = cache.explain(make_key(seed=8), "p/step")
    assert stale.status == "stale" and [c.part for c in stale.changes] == ["seed"]
