"""The content-addressed result cache: every node's outputs, stored under its key's digest.

Layout of a cache root (default `$MEDASL_CACHE_DIR/results`, else `~/.cache/medasl/results`):

    <root>/<d[:2]>/<d>/            a committed entry: output files plus manifest.json
    <root>/.tmp-<pid>-<random>/    an entry being written, or left behind by a killed writer
    <root>/locks/<d>.lock          the per-key lock, only while the key is computed; the holder's pid inside
    <root>/index/<g>.jsonl         the latest key of each node of one step (`pipeline/step#case`
                                   shares the file of `pipeline/step`), for `--dry-run` explanations
    <root>/digests.json            the source-file digest memo (see digests.py)

Why a crash cannot leave a half-written entry that looks complete: outputs and manifest
are written into a temp dir that no reader looks at, and the entry appears with one
`os.rename` of the finished directory. A process killed at any moment leaves either no
entry or a complete one, plus perhaps a temp dir whose pid is dead, which `gc` removes.
A full disk or a read-only cache while writing is a `DataError` (E2021, E2020): the temp
dir is removed, nothing is committed.

Why an entry damaged afterwards is never used (issue 10: bytes flipped in a stored array,
a spacing edited in the manifest's value): the manifest ends with the sha256 of its own
text (`check`), and lists the sha256 of every output file. A lookup compares both, so a
damaged entry reads as missing and is computed again; the cache remembers what it found
(`Cache.damaged`, `on_damage`) so that the run can say which step and case it was. Each
file is hashed once per process: a file whose content matched is remembered by path,
size, mtime_ns, ctime_ns and inode (`_CheckedFiles`). Committed files get an mtime one
second in the past, so that a later change within the same clock tick still changes it.
Entries of manifest formats 1 and 2 have no `check`: they are used when their whole value
is in files with digests (format 1, and checkpoints), and computed again otherwise.

Locks only avoid duplicate work; correctness never depends on them. Two processes that
commit the same key anyway keep one complete entry. Manifests and indexes are JSON only:
nothing read from the cache is ever executed or unpickled.

Per-case costs (issue 9: 100,000 pathology tiles make them matter): a lookup of a key
not in the cache is one failed `stat`; a manifest is parsed once per process and then
recognised by its inode, mtime and size; a lock is taken only to compute; and a node's
index is a line appended to its step's journal (once per new key) instead of a file
rewritten per case and step. A journal is compacted when most of its lines are
superseded, under an exclusive flock that appenders respect.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import math
import os
import re
import shutil
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO

from medasl import __version__
from medasl.runtime.digests import (
    TEMP_PREFIX,
    DigestMemo,
    StrPath,
    default_cache_root,
    flocked,
    read_json,
    sha256_file,
    sha256_json,
    temp_name,
)
from medasl.runtime.errors import DataError

KEY_FORMAT = 1
# 3: the manifest ends with the sha256 of its own text (`check`); 2: may hold the stored
# value's JSON document (`value`), unverifiable, so such entries are computed again; 1 and
# 2 without `value` are still read (their value is in files whose sha256 they record)
MANIFEST_FORMAT = 3
MANIFEST_FORMATS = (1, 2, 3)
CHECK_TAIL = re.compile(rb',"check":"([0-9a-f]{64})"\}\s*\Z')
BACKDATE_NS = 1_000_000_000  # committed files' mtime: this much in the past (see _CheckedFiles)
TICK_NS = 100_000_000  # more than a file-system clock tick: a file changed this recently may change again unseen
INDEX_FORMAT = 1  # the per-node index files before issue 9, still read by `previous`
JOURNAL_FORMAT = 2
MANIFEST_NAME = "manifest.json"
LOCKS_DIR = "locks"
INDEX_DIR = "index"

Json = None | bool | int | float | str | list["Json"] | dict[str, "Json"]

_DIGEST_RE = re.compile(r"[0-9a-f]{64}")
_SHARD_RE = re.compile(r"[0-9a-f]{2}")
_TEMP_RE = re.compile(re.escape(TEMP_PREFIX) + r"(\d+)-")


# ----- canonical values --------------------------------------------------------------


def canonical(value: object, where: str = "params") -> Json:
    """`value` as plain JSON data whose serialisation is the same in every process.

    Tuples become lists; floats keep Python's shortest round-trip repr (so 0.1 is always
    `0.1`, and 1 and 1.0 stay distinct, as they may behave differently); non-finite floats
    are tagged, since JSON has no spelling for them. Anything else is refused rather than
    stringified, because a repr may carry memory addresses and change between runs.
    """
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"$float": repr(value)}
    if isinstance(value, list | tuple):
        return [canonical(item, f"{where}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, Mapping):
        return _canonical_mapping(value, where)
    raise TypeError(
        f"{where}: a {type(value).__name__} cannot be part of a cache key; "
        "use numbers, strings, booleans, None, lists or string-keyed dicts"
    )


def _canonical_mapping(value: Mapping[object, object], where: str) -> dict[str, Json]:
    out: dict[str, Json] = {}
    for name, item in value.items():
        if not isinstance(name, str):
            raise TypeError(f"{where}: key {name!r} is not a string")
        out[name] = canonical(item, f"{where}.{name}")
    return out


def _string_map(value: Mapping[str, str], where: str) -> dict[str, str]:
    """A name -> digest mapping, checked, in sorted order."""
    out: dict[str, str] = {}
    for name in sorted(value):
        digest = value[name]
        if not isinstance(name, str) or not isinstance(digest, str):
            raise TypeError(f"{where}: expected str -> str, got {name!r} -> {digest!r}")
        out[name] = digest
    return out


# ----- keys --------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class CacheKey:
    """Everything a node's result depends on, known before the node runs.

    `inputs` maps an argument name to the key digest of the node feeding it (several
    values of one argument get names such as `images.0`); `sources` maps a label
    (usually the path as the user wrote it) to the content digest of that file or folder.
    Keys compare and hash by digest.
    """

    op: str
    version: int | str = 1
    params: Mapping[str, object] = field(default_factory=dict)
    inputs: Mapping[str, str] = field(default_factory=dict)
    sources: Mapping[str, str] = field(default_factory=dict)
    seed: int | None = None
    _digest: str = field(default="", init=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.params, Mapping):
            raise TypeError(f"params must be a mapping, not {type(self.params).__name__}")
        if not isinstance(self.op, str) or not self.op:
            raise TypeError("op must be a non-empty string")
        if isinstance(self.version, bool) or not isinstance(self.version, int | str):
            raise TypeError(f"version must be an int or a string, not {self.version!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise TypeError(f"seed must be an int or None, not {self.seed!r}")
        object.__setattr__(self, "params", _canonical_mapping(self.params, "params"))
        object.__setattr__(self, "inputs", _string_map(self.inputs, "inputs"))
        object.__setattr__(self, "sources", _string_map(self.sources, "sources"))
        object.__setattr__(self, "_digest", sha256_json(self.parts()))

    def parts(self) -> dict[str, object]:
        """The key as JSON data: what is hashed, stored in manifests and compared by `explain`."""
        return {
            "format": KEY_FORMAT,
            "op": self.op,
            "version": self.version,
            "params": dict(self.params),
            "inputs": dict(self.inputs),
            "sources": dict(self.sources),
            "seed": self.seed,
        }

    def digest(self) -> str:
        """sha256 of the canonical JSON of `parts()`: the entry's address."""
        return self._digest

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CacheKey) and other.digest() == self.digest()

    def __hash__(self) -> int:
        return hash(self.digest())


def _digest_of(key: CacheKey | str) -> str:
    digest = key.digest() if isinstance(key, CacheKey) else key
    if not _DIGEST_RE.fullmatch(digest):
        raise ValueError(f"not a cache key digest: {digest!r}")
    return digest


# ----- entries -----------------------------------------------------------------------


@dataclass(frozen=True)
class OutputFile:
    name: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Entry:
    """A committed cache entry: its directory and its parsed manifest."""

    digest: str
    path: Path
    manifest: dict[str, object]
    outputs: dict[str, OutputFile]

    def file(self, name: str) -> Path:
        """The path of one output file; only names listed in the manifest are valid."""
        if name not in self.outputs:
            raise KeyError(f"entry {self.digest[:12]} has no output {name!r}")
        return self.path / name

    @property
    def created(self) -> float:
        value = self.manifest.get("created")
        return float(value) if isinstance(value, int | float) else 0.0

    @property
    def op(self) -> str:
        key = self.manifest.get("key")
        return str(key.get("op", "")) if isinstance(key, dict) else ""

    @property
    def node_id(self) -> str | None:
        value = self.manifest.get("node_id")
        return value if isinstance(value, str) else None

    @property
    def size(self) -> int:
        """Bytes of the outputs, as recorded."""
        return sum(f.size for f in self.outputs.values())

    @property
    def value_doc(self) -> object:
        """The stored value's JSON document when the manifest holds it (for
        `store.load_value(entry.path, doc=...)`), else None: it is in `value.json`."""
        return self.manifest.get("value")


def _safe_output_name(name: object) -> bool:
    """Names come from a manifest on disk; refuse any that would point outside the entry."""
    if not isinstance(name, str) or not name or name == MANIFEST_NAME or name.startswith("/"):
        return False
    return all(part not in ("", ".", "..") for part in name.split("/"))


def _parse_outputs(manifest: dict[str, object]) -> dict[str, OutputFile] | None:
    raw = manifest.get("outputs")
    if not isinstance(raw, dict):
        return None
    outputs: dict[str, OutputFile] = {}
    for name, meta in raw.items():
        if not _safe_output_name(name) or not isinstance(meta, dict):
            return None
        size, digest = meta.get("size"), meta.get("sha256")
        if isinstance(size, bool) or not isinstance(size, int) or not isinstance(digest, str):
            return None
        outputs[name] = OutputFile(name, size, digest)
    return outputs


def _entry_from(digest: str, path: Path, manifest: object) -> Entry | None:
    """An Entry from a parsed manifest, or None when the manifest is not ours or malformed
    (its `check` is not looked at: `_read_entry` does that, from the file's bytes)."""
    if not isinstance(manifest, dict) or manifest.get("format") not in MANIFEST_FORMATS:
        return None
    if manifest.get("digest") != digest:
        return None
    outputs = _parse_outputs(manifest)
    if outputs is None:
        return None
    return Entry(digest, path, manifest, outputs)


def _with_check(body: bytes) -> bytes:
    """A manifest's compact JSON text with its own sha256 appended as the last member."""
    return body[:-1] + b',"check":"' + hashlib.sha256(body).hexdigest().encode("ascii") + b'"}'


def _read_entry(digest: str, folder: str, data: bytes) -> tuple[Entry | None, Damage | None]:
    """The entry a manifest file's bytes describe, or what is wrong with it.

    A current manifest must end with the sha256 of the text before it; an older one
    (formats 1 and 2, no `check`) is used only when its value is not in it, since then
    nothing but files with recorded digests make its value.
    """
    try:
        manifest = json.loads(data)
    except ValueError:
        return None, Damage(digest, None, "its manifest is not readable JSON")
    node_id = manifest.get("node_id") if isinstance(manifest, dict) else None
    node_id = node_id if isinstance(node_id, str) else None
    entry = _entry_from(digest, Path(folder), manifest)
    if entry is None:
        return None, Damage(digest, node_id, "its manifest is not one this version of medasl wrote")
    if entry.manifest.get("format") == MANIFEST_FORMAT:
        tail = CHECK_TAIL.search(data)
        body = data[:tail.start()] + b"}" if tail else b""
        if tail is None or hashlib.sha256(body).hexdigest() != tail.group(1).decode("ascii"):
            return None, Damage(digest, node_id, "its manifest was changed after it was stored")
    elif "value" in entry.manifest:
        return None, Damage(digest, node_id, "it was stored by an older medasl, without a digest of its value",
                            outdated=True)
    return entry, None


@dataclass(frozen=True)
class Damage:
    """Why a lookup refused a committed entry. `outdated`: not damaged, but of an older
    format whose value cannot be verified; either way it is computed again."""

    digest: str
    node_id: str | None  # `pipeline/step#case` (from its manifest, or from the caller's lookup)
    problem: str
    outdated: bool = False

    @property
    def step_id(self) -> str | None:
        """The plan step the entry belongs to (its node id's part between `/` and `#`)."""
        if self.node_id is None or "/" not in self.node_id:
            return None
        return self.node_id.partition("/")[2].partition("#")[0]

    @property
    def case(self) -> str | None:
        if self.node_id is None or "#" not in self.node_id:
            return None
        return self.node_id.partition("#")[2]


_Stamp = tuple[int, int, int, int]  # size, mtime_ns, ctime_ns, inode


def _stamp(st: os.stat_result) -> _Stamp:
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


class _CheckedFiles:
    """The sha256 of output files this process has read (or written), by path and stamp.

    A stored file is hashed once per process (a run, or one of its workers): again only
    when its size, mtime, ctime or inode changed. A digest is trusted only when it was
    taken more than a clock tick after the file's mtime, so that a change in the same
    tick, which could leave the mtime as it was, cannot go unseen; committed files are
    backdated (`BACKDATE_NS`) so that their first reader need not read them again.
    """

    LIMIT = 1 << 18

    def __init__(self) -> None:
        self._found: dict[str, tuple[_Stamp, str]] = {}
        self._lock = threading.Lock()

    def problem(self, path: str, output: OutputFile, verify: bool | None) -> str | None:
        """None when the file holds what the manifest recorded; else what is wrong, in words.
        `verify`: None hashes once per process, True always, False compares sizes only."""
        try:
            st = os.stat(path, follow_symlinks=False)
        except OSError:
            return f"{output.name} is missing"
        if not stat.S_ISREG(st.st_mode):
            return f"{output.name} is not a regular file"
        if st.st_size != output.size:
            return f"{output.name} has {st.st_size} bytes where {output.size} were stored"
        if verify is False:
            return None
        with self._lock:
            known = self._found.get(path)
        if verify is None and known is not None and known[0] == _stamp(st):
            digest = known[1]
        else:
            taken_ns = time.time_ns()
            try:
                digest = sha256_file(path)
                after = os.stat(path, follow_symlinks=False)
            except OSError:
                return f"{output.name} could not be read"
            if _stamp(after) == _stamp(st) and st.st_mtime_ns + TICK_NS < taken_ns:
                self.remember(path, after, digest)
        if digest != output.sha256:
            return f"{output.name} holds other bytes than were stored"
        return None

    def remember(self, path: str, st: os.stat_result, digest: str) -> None:
        with self._lock:
            self._found.pop(path, None)
            while len(self._found) >= self.LIMIT:
                self._found.pop(next(iter(self._found)))  # the oldest: dicts keep insertion order
            self._found[path] = (_stamp(st), digest)


_CHECKED = _CheckedFiles()


@dataclass
class PendingEntry:
    """What `Cache.write` hands out: a private directory to write outputs into.

    `info` is extra JSON recorded in the manifest (for example the random parameters an
    augmentation drew); `entry` is set once the write has been committed. `digests` may
    give the sha256 of output files by name, as `store.save_value` returns them, so that
    sealing the entry need not read them back. `value` is the JSON document of a value
    (`store.encode_value`): kept in the manifest rather than a file of its own, so that a
    small result is one file, read with the lookup that finds it (`Entry.value_doc`).
    """

    path: Path
    info: dict[str, object] = field(default_factory=dict)
    entry: Entry | None = None
    digests: dict[str, str] = field(default_factory=dict)  # sha256 of outputs known when written: not read back
    value: dict[str, object] | None = None  # a stored value's JSON document (`store.encode_value`), kept in the manifest


# ----- explanations ------------------------------------------------------------------


@dataclass(frozen=True)
class KeyChange:
    """One difference between the previous key of a node and the current one."""

    part: str  # format | version | param | input | source | seed
    name: str | None
    change: str  # changed | added | removed
    old: object = None
    new: object = None

    def describe(self) -> str:
        label = f"{self.part} `{self.name}`" if self.name is not None else self.part
        if self.change == "added":
            return f"{label} added ({_show(self.part, self.new)})"
        if self.change == "removed":
            return f"{label} removed (was {_show(self.part, self.old)})"
        return f"{label} changed: {_show(self.part, self.old)} -> {_show(self.part, self.new)}"


def _show(part: str, value: object) -> str:
    """A short rendering: digests are cut to 12 characters, long values to 60."""
    if part in ("input", "source") and isinstance(value, str):
        return value[:12]
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 60 else text[:57] + "..."


def _flatten(value: object, prefix: str, out: dict[str, object]) -> dict[str, object]:
    """Nested dict params as dotted names, so a reason can name `aug.angle` rather than `aug`."""
    if isinstance(value, dict) and value and "$float" not in value:
        for name, item in value.items():
            _flatten(item, f"{prefix}.{name}" if prefix else str(name), out)
    else:
        out[prefix] = value
    return out


def _diff_maps(part: str, old: Mapping[str, object], new: Mapping[str, object]) -> list[KeyChange]:
    changes = []
    for name in sorted(set(old) | set(new)):
        if name not in old:
            changes.append(KeyChange(part, name, "added", new=new[name]))
        elif name not in new:
            changes.append(KeyChange(part, name, "removed", old=old[name]))
        elif old[name] != new[name] or type(old[name]) is not type(new[name]):
            changes.append(KeyChange(part, name, "changed", old[name], new[name]))
    return changes


def _as_map(value: object) -> dict[str, object]:
    return value if isinstance(value, dict) else {}


def diff_parts(old: Mapping[str, object], new: Mapping[str, object]) -> list[KeyChange]:
    """Which parts of a key changed, in a fixed order: format, version, params, inputs, sources, seed."""
    changes: list[KeyChange] = []
    for part in ("format", "version"):
        if old.get(part) != new.get(part):
            changes.append(KeyChange(part, None, "changed", old.get(part), new.get(part)))
    old_params = _flatten(_as_map(old.get("params")), "", {})
    new_params = _flatten(_as_map(new.get("params")), "", {})
    changes += _diff_maps("param", old_params, new_params)
    changes += _diff_maps("input", _as_map(old.get("inputs")), _as_map(new.get("inputs")))
    changes += _diff_maps("source", _as_map(old.get("sources")), _as_map(new.get("sources")))
    if old.get("seed") != new.get("seed"):
        changes.append(KeyChange("seed", None, "changed", old.get("seed"), new.get("seed")))
    return changes


@dataclass(frozen=True)
class Explanation:
    """What `--dry-run` says about one node: cached, new or stale, and why."""

    status: str  # cached | new | stale
    digest: str
    reasons: list[str] = field(default_factory=list)
    changes: list[KeyChange] = field(default_factory=list)
    previous: str | None = None

    def __str__(self) -> str:
        return f"{self.status}: {'; '.join(self.reasons)}" if self.reasons else self.status


# ----- reports -----------------------------------------------------------------------


@dataclass(frozen=True)
class DiskUsage:
    entries: dict[str, int]  # digest -> bytes on disk
    other: int  # temp dirs, locks, indexes, the digest memo
    total: int


@dataclass
class GcReport:
    removed_entries: list[str] = field(default_factory=list)
    removed_temp: list[str] = field(default_factory=list)
    removed_locks: list[str] = field(default_factory=list)
    freed_bytes: int = 0


@dataclass
class VerifyReport:
    """What `Cache.verify` found: the entries read, their bytes, and those that are not sound."""

    entries: int = 0
    checked_bytes: int = 0
    bad: list[Damage] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)  # digests removed (with `drop`)
    busy: list[str] = field(default_factory=list)  # bad but in use by a running process: left alone


class LockTimeout(TimeoutError):
    """The per-key lock stayed busy for longer than the caller was willing to wait."""


# ----- process liveness --------------------------------------------------------------


def _host() -> str:
    return os.uname().nodename


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this machine (zombies count as dead)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    """A killed child that was not yet reaped still answers kill(0); /proc tells the truth on Linux."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            text = f.read()
    except OSError:
        return False
    fields = text.rsplit(")", 1)[-1].split()
    return bool(fields) and fields[0] in ("Z", "X")


def _temp_owner(name: str) -> int | None:
    match = _TEMP_RE.match(name)
    return int(match.group(1)) if match else None


def _tree_size(path: Path) -> int:
    """Bytes under `path`; files vanishing while we count (a concurrent gc) are skipped."""
    try:
        if not path.is_dir() or path.is_symlink():
            return path.lstat().st_size
    except OSError:
        return 0
    total = 0
    for folder, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(folder, name)).st_size
    return total


def remove_tree(path: Path) -> None:
    """Remove a file, a link or a whole folder; already gone is fine."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _backdate(path: Path) -> None:
    """Set a file's mtime `BACKDATE_NS` into the past, so that any later change of its
    content, even within the clock tick it was written in, gives it another mtime."""
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, time.time_ns() - BACKDATE_NS))


def _write_named(f: BinaryIO, data: bytes, path: Path) -> None:
    """`f.write(data)`, with `path` named in the OSError a full disk raises (a write names no file)."""
    try:
        f.write(data)
        f.flush()
    except OSError as exc:
        exc.filename = exc.filename or os.fspath(path)
        raise


def _inside(name: StrPath | bytes, root: Path) -> bool:
    """Whether the path `name` is `root` or lies under it."""
    path, base = os.path.abspath(os.fsdecode(name)), os.path.abspath(root)
    return path == base or path.startswith(base + os.sep)


FREE_MARGIN = 64 << 20  # a device with less free space than this is full for a write that failed with no file named


def _device_full(folder: Path) -> bool:
    """Whether the device holding `folder` (or its nearest existing parent) is about full."""
    probe = Path(os.path.abspath(folder))
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        st = os.statvfs(probe)
    except OSError:
        return False
    free = st.f_bfree if os.geteuid() == 0 else st.f_bavail  # root may use the reserved blocks
    return free * st.f_frsize < FREE_MARGIN


_FULL = (errno.ENOSPC, errno.EDQUOT)
_READ_ONLY = (errno.EROFS, errno.EACCES, errno.EPERM)


def _storage_error(exc: OSError, root: Path, doing: str) -> DataError | None:
    """E2021 for a write into the cache that failed because the device (or a quota) is
    full, E2020 when the cache cannot be written at all; None for any other error."""
    if exc.errno in _FULL:
        return DataError(
            "E2021", f"no space left for the cache at {root} while {doing}", root,
            help="free space: `medasc cache du` shows what the cache holds and `medasc cache gc --older-than 7d` "
                 "removes older results; or put the cache on a larger disk with --cache-dir DIR. "
                 "Results stored so far are kept, so the same command resumes")
    if exc.errno in _READ_ONLY:
        reason = (exc.strerror or "not writable").lower()
        return DataError(
            "E2020", f"cannot write into the cache at {root} while {doing}: {reason}", root,
            help="run with --cache-dir DIR (or MEDASL_CACHE_DIR=DIR) naming a folder you can write to; "
                 "a read-only cache still serves a run whose results it holds already")
    return None


def storage_problem(exc: BaseException, cache_root: Path) -> DataError | None:
    """A run that failed writing into its cache (full, read-only, no permission) as the
    user's problem to fix (E2021, E2020); None when `exc` is anything else."""
    if isinstance(exc, DataError):
        return exc if exc.code in ("E2020", "E2021") else None
    if not isinstance(exc, OSError) or exc.errno not in (*_FULL, *_READ_ONLY):
        return None
    if exc.filename is not None:
        return _storage_error(exc, cache_root, "running") if _inside(exc.filename, cache_root) else None
    if exc.errno in _FULL and _device_full(cache_root):  # a write names no file: the device that is full
        return _storage_error(exc, cache_root, "running")
    return None


def fsync_file(path: Path) -> None:
    """Flush a file's data to the disk (where a full disk shows up that a write hid)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ----- locks -------------------------------------------------------------------------


def _is_current(fd: int, path: Path | str) -> bool:
    """Whether the locked file is still the one at `path` (a releaser may have unlinked it)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    fst = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (fst.st_dev, fst.st_ino)


def _try_lock(path: Path | str) -> int | None:
    """Take the lock without waiting: the locked fd, or None when another process holds it."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except FileNotFoundError:  # the first lock of this cache: make the folder (not checked every time)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        if _is_current(fd, path):
            return fd
        os.close(fd)  # we locked a file its holder had already unlinked: try the new one


def _write_holder(fd: int) -> None:
    holder = {"pid": os.getpid(), "host": _host(), "since": time.time()}
    if os.fstat(fd).st_size:  # a fresh lock file is empty: truncating it anyway makes ext4 flush it on close
        os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(holder).encode("utf-8"), 0)


def _release(fd: int, path: Path | str) -> None:
    """Unlink the lock file while still holding it, then close: waiters re-check `_is_current`."""
    try:
        if _is_current(fd, path):
            os.unlink(path)
    finally:
        os.close(fd)


def _holder_dead(path: Path | str) -> bool:
    """True only when the lock file names a process of this machine that no longer exists."""
    holder = read_json(path)
    if not isinstance(holder, dict) or holder.get("host") != _host():
        return False
    pid = holder.get("pid")
    return isinstance(pid, int) and not isinstance(pid, bool) and not pid_alive(pid)


# ----- what one process remembers ------------------------------------------------------


class _ManifestMemo:
    """Parsed (and checked) manifests by path, each valid while its file keeps its size,
    mtime, ctime and inode.

    A committed manifest never changes (an entry is replaced only by a new directory, so
    a new inode), so a `stat` tells whether the parsed copy still holds; the executor,
    `run_task` and the next step's reader all look the same entry up.
    """

    LIMIT = 4096  # entries ...
    LIMIT_BYTES = 32 << 20  # ... and bytes of manifest (they hold small values inline)

    def __init__(self) -> None:
        self._found: dict[str, tuple[_Stamp, Entry]] = {}
        self._bytes = 0
        self._lock = threading.Lock()

    def read(self, digest: str, folder: str) -> tuple[Entry | None, Damage | None]:
        """The entry whose directory is `folder` (a string: pathlib costs more than the stat),
        or None and, when there is something there that is not a sound entry, what is wrong."""
        manifest = f"{folder}/{MANIFEST_NAME}"
        try:
            st = os.stat(manifest)
        except FileNotFoundError:
            return None, None  # the common miss: one failed stat, no open
        except NotADirectoryError:
            return None, Damage(digest, None, "its folder was replaced by a file")
        except OSError as exc:
            return None, Damage(digest, None, f"its manifest cannot be read ({exc.strerror})")
        stamp = _stamp(st)
        with self._lock:
            hit = self._found.get(manifest)
        if hit is not None and hit[0] == stamp and hit[1].digest == digest:
            return hit[1], None
        try:
            with open(manifest, "rb") as f:
                data = f.read()
                after = os.fstat(f.fileno())
        except OSError as exc:
            return None, Damage(digest, None, f"its manifest cannot be read ({exc.strerror})")
        entry, damage = _read_entry(digest, folder, data)
        if entry is not None and _stamp(after) == stamp and after.st_mtime_ns + TICK_NS < time.time_ns():
            self._keep(manifest, stamp, entry)  # a manifest changed in the tick it was read in is read again
        return entry, damage

    def remember(self, entry: Entry) -> None:
        manifest = f"{os.fspath(entry.path)}/{MANIFEST_NAME}"
        with contextlib.suppress(OSError):
            self._keep(manifest, _stamp(os.stat(manifest)), entry)

    def forget(self, folder: Path) -> None:
        with self._lock:
            self._drop(f"{os.fspath(folder)}/{MANIFEST_NAME}")

    def _keep(self, name: str, stamp: _Stamp, entry: Entry) -> None:
        with self._lock:
            self._drop(name)
            while self._found and (len(self._found) >= self.LIMIT or self._bytes + stamp[0] > self.LIMIT_BYTES):
                self._drop(next(iter(self._found)))  # the oldest: dicts keep insertion order
            self._found[name] = (stamp, entry)
            self._bytes += stamp[0]

    def _drop(self, name: str) -> None:
        found = self._found.pop(name, None)
        if found is not None:
            self._bytes -= found[0][0]


_MANIFESTS = _ManifestMemo()


class _Journal:
    """What this process knows of one index journal: each node's latest digest and where
    its line is, read up to `offset` of the file with inode `ino`."""

    COMPACT_MIN = 4096  # lines; below this a journal is never rewritten

    def __init__(self, path: Path, ino: int = 0) -> None:
        self.path, self.ino, self.offset, self.lines = path, ino, 0, 0
        self.nodes: dict[str, tuple[str, int, int]] = {}  # node -> (digest, line start, line length)

    def latest(self, node_id: str) -> str | None:
        found = self.nodes.get(node_id)
        return found[0] if found is not None else None

    def read_tail(self) -> None:
        """Take in the lines appended since `offset`; a last line without its newline (being
        written, or left by a killed writer) is read again next time."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return
        start = 0
        while (end := data.find(b"\n", start)) >= 0:
            self._take(data[start:end], self.offset + start)
            start = end + 1
        self.offset += start

    def _take(self, line: bytes, at: int) -> None:
        if not line:
            return
        self.lines += 1
        try:
            record = json.loads(line)
        except ValueError:
            return  # a killed writer's partial line
        if isinstance(record, dict) and isinstance(record.get("node_id"), str) and isinstance(record.get("digest"), str):
            self.nodes[record["node_id"]] = (record["digest"], at, len(line))

    def record(self, node_id: str) -> object:
        """The parsed line of `node_id`'s latest key, or None."""
        found = self.nodes.get(node_id)
        if found is None:
            return None
        _digest, at, length = found
        return _read_line(self.path, at, length)

    def append(self, node_id: str, digest: str, line: bytes) -> None:
        """Append one line, under a shared flock so that a compaction (exclusive) never
        drops it; a line written right after ours by nobody else is taken in as read."""
        data = b"\n" + line + b"\n"  # the leading newline ends a killed writer's partial line
        path = self.path
        for _attempt in range(5):
            try:
                fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except FileNotFoundError:  # the first journal of this cache
                path.parent.mkdir(parents=True, exist_ok=True)
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_SH)
                if not _is_current(fd, path):
                    continue  # compacted under us: append to the new file
                os.write(fd, data)
                end = os.lseek(fd, 0, os.SEEK_CUR)
                ino = os.fstat(fd).st_ino
            finally:
                os.close(fd)
            if ino == self.ino and end - len(data) == self.offset:  # nobody else wrote since we read
                self.offset, self.lines = end, self.lines + 1
                self.nodes[node_id] = (digest, end - len(line) - 1, len(line))
            return

    def compact(self) -> None:
        """Rewrite the journal with the latest line of each node, atomically, while no
        appender writes (they hold the flock shared)."""
        path = self.path
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if not _is_current(fd, path):
                return  # another process compacted it first
            fresh = _Journal(path, os.fstat(fd).st_ino)
            fresh.read_tail()
            lines = [_read_line(path, at, length) for _d, at, length in fresh.nodes.values()]
            tmp = path.parent / temp_name()
            with open(tmp, "wb") as f:
                for record in lines:
                    if isinstance(record, dict):
                        f.write(b"\n" + json.dumps(record, sort_keys=True, separators=(",", ":"),
                                                   allow_nan=False).encode("utf-8") + b"\n")
            os.replace(tmp, path)
        finally:
            os.close(fd)


def _read_line(path: Path, at: int, length: int) -> object:
    try:
        with open(path, "rb") as f:
            f.seek(at)
            return json.loads(f.read(length))
    except (OSError, ValueError):
        return None


_JOURNALS: dict[str, _Journal] = {}
_JOURNAL_PATHS: dict[tuple[str, str, str], Path] = {}
_JOURNAL_LOCK = threading.Lock()  # step threads record concurrently


def _journal(path: Path, compact: bool = True) -> _Journal:
    """This process's view of the journal at `path`, brought up to date (call under
    `_JOURNAL_LOCK`): one `stat` when nothing changed, the new lines when some were
    appended, a fresh read when it was replaced."""
    name = str(path)
    journal = _JOURNALS.get(name)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        journal = _JOURNALS[name] = _Journal(path)
        return journal
    if journal is None or journal.ino != st.st_ino or st.st_size < journal.offset:
        journal = _JOURNALS[name] = _Journal(path, st.st_ino)
    if st.st_size > journal.offset:
        journal.read_tail()
    if compact and journal.lines > max(_Journal.COMPACT_MIN, 2 * len(journal.nodes)):
        journal.compact()
        del _JOURNALS[name]
        return _journal(path, compact=False)
    return journal


# ----- the cache ---------------------------------------------------------------------


class Cache:
    """A content-addressed store of node results, safe for several processes at once."""

    def __init__(self, root: StrPath | None = None, durable: bool = False) -> None:
        """`durable=True` also fsyncs outputs and directories, to survive power loss, not just process death."""
        self.root = Path(root) if root is not None else default_cache_root()
        self.durable = durable
        self.damaged: dict[str, Damage] = {}  # entries lookups refused, by digest
        self.on_damage: Callable[[Damage], None] | None = None  # told of each damaged entry, once
        self._damage_lock = threading.Lock()

    # --- paths ---

    def entry_path(self, key: CacheKey | str) -> Path:
        return Path(self._entry_folder(_digest_of(key)))

    def _entry_folder(self, digest: str) -> str:
        return f"{os.fspath(self.root)}/{digest[:2]}/{digest}"  # a string: joining Paths costs 10 µs each

    def lock_path(self, key: CacheKey | str) -> Path:
        return Path(self._lock_file(key))

    def _lock_file(self, key: CacheKey | str) -> str:
        return f"{os.fspath(self.root)}/{LOCKS_DIR}/{_digest_of(key)}.lock"

    def _index_path(self, op: str, node_id: str) -> Path:
        return self.root / INDEX_DIR / f"{sha256_json([op, node_id])}.json"

    def digest_memo(self) -> DigestMemo:
        """The source-file digest memo kept in this cache's root."""
        return DigestMemo(self.root)

    # --- reading ---

    def lookup(self, key: CacheKey | str, verify: bool | None = None, node_id: str | None = None) -> Entry | None:
        """The sound entry for `key`, or None.

        Sound means: a manifest for this digest whose `check` matches its text, and every
        listed output present with its recorded size and sha256. `verify=None` hashes each
        file once per process (see `_CheckedFiles`), `True` reads every file again, `False`
        compares sizes only. An entry found damaged is noted in `damaged` (and passed to
        `on_damage` once), named by its manifest's node id, else by `node_id`.
        """
        digest = _digest_of(key)
        folder = self._entry_folder(digest)
        entry, damage = _MANIFESTS.read(digest, folder)
        if entry is None:
            if damage is not None:
                self._note(damage, node_id)
            return None
        for output in entry.outputs.values():
            problem = _CHECKED.problem(f"{folder}/{output.name}", output, verify)
            if problem is not None:
                self._note(Damage(digest, entry.node_id, problem), node_id)
                return None
        return entry

    def _note(self, damage: Damage, node_id: str | None) -> None:
        """Remember a refused entry; announce it once (outdated entries are not damage)."""
        if damage.node_id is None and node_id is not None:
            damage = replace(damage, node_id=node_id)
        with self._damage_lock:
            first = damage.digest not in self.damaged
            self.damaged[damage.digest] = damage
        if first and not damage.outdated and self.on_damage is not None:
            self.on_damage(damage)

    def check_entry(self, folder: Path) -> Damage | None:
        """What is wrong with the entry in `folder` (every file read again), or None when
        it is sound: for `medasc cache verify`. Records nothing."""
        digest = folder.name
        if folder.is_symlink() or not folder.is_dir():
            return Damage(digest, None, "its folder was replaced by a file")
        try:
            data = (folder / MANIFEST_NAME).read_bytes()
        except OSError as exc:
            return Damage(digest, None, f"its manifest cannot be read ({exc.strerror})")
        entry, damage = _read_entry(digest, os.fspath(folder), data)
        if entry is None:
            return damage
        for output in entry.outputs.values():
            problem = _CHECKED.problem(os.fspath(folder / output.name), output, verify=True)
            if problem is not None:
                return Damage(digest, entry.node_id, problem)
        return None

    def entries(self) -> list[Entry]:
        """Every entry with a readable manifest, oldest first (outputs are not checked)."""
        found = []
        for path in self._entry_dirs():
            entry = _entry_from(path.name, path, read_json(path / MANIFEST_NAME))
            if entry is not None:
                found.append(entry)
        return sorted(found, key=lambda e: (e.created, e.digest))

    def _entry_dirs(self) -> list[Path]:
        """`<root>/<xx>/<digest>` directories; anything else in the root is not an entry."""
        dirs: list[Path] = []
        for shard in self._scan(self.root):
            if shard.is_dir() and _SHARD_RE.fullmatch(shard.name):
                dirs += [p for p in self._scan(shard) if _DIGEST_RE.fullmatch(p.name) and p.name[:2] == shard.name]
        return sorted(dirs)

    @staticmethod
    def _scan(folder: Path) -> list[Path]:
        try:
            return sorted(folder.iterdir())
        except (FileNotFoundError, NotADirectoryError):
            return []

    def du(self) -> DiskUsage:
        """Bytes per entry, bytes of everything else in the root, and the total."""
        per_entry = {path.name: _tree_size(path) for path in self._entry_dirs()}
        everything = _tree_size(self.root) if self.root.exists() else 0
        other = max(everything - sum(per_entry.values()), 0)
        return DiskUsage(per_entry, other, everything)

    # --- writing ---

    @contextlib.contextmanager
    def write(self, key: CacheKey, node_id: str | None = None) -> Iterator[PendingEntry]:
        """Hand out a private temp dir for the outputs; commit it atomically if the block succeeds.

        On an exception the temp dir is removed and nothing is committed. With `node_id`
        the node's index is updated, so that a later `explain` can say what changed.
        """
        try:
            pending = PendingEntry(self._make_temp_dir())
        except OSError as exc:
            problem = self._storage_error(exc, "making room for a result")
            if problem is None:
                raise
            raise problem from exc
        started, clock = time.time(), time.perf_counter()
        try:
            yield pending
            timing = {"started": started, "seconds": time.perf_counter() - clock}
            manifest = self._seal(pending, key, node_id, timing)
            pending.entry = self._commit(pending.path, key.digest(), manifest)
        except OSError as exc:
            # a full or read-only cache is the user's to fix; an error writing elsewhere
            # (an operator's own file) is not the cache's to name
            mine = _inside(exc.filename, self.root) if exc.filename is not None else _device_full(self.root)
            problem = self._storage_error(exc, "storing a result") if mine else None
            if problem is None:
                raise
            raise problem from exc
        finally:
            if pending.path.exists():  # failed, or lost a race to an identical entry
                shutil.rmtree(pending.path, ignore_errors=True)
        if node_id is not None:
            self.record(node_id, key)

    def ensure(
        self,
        key: CacheKey,
        produce: Callable[[PendingEntry], None],
        node_id: str | None = None,
        timeout: float | None = None,
        known_missing: bool = False,
    ) -> tuple[Entry, bool]:
        """The entry for `key`, computing it with `produce` unless cached: (entry, computed).

        The lock makes a second process asking for the same key wait and then find the
        first one's entry instead of computing it again; it is taken only when the entry
        is missing (`known_missing`: the caller has just looked), and the lookup is
        repeated under it.
        """
        entry = None if known_missing else self.lookup(key)
        if entry is None:
            with self.lock(key, timeout=timeout):
                entry = self.lookup(key)
                if entry is None:
                    with self.write(key, node_id) as pending:
                        produce(pending)
                    assert pending.entry is not None
                    return pending.entry, True
        if node_id is not None:
            self.record(node_id, key)
        return entry, False

    def _make_temp_dir(self) -> Path:
        path = self.root / temp_name()
        try:
            os.mkdir(path)
        except FileNotFoundError:  # a new cache: make the root (not checked on every write)
            self.root.mkdir(parents=True, exist_ok=True)
            os.mkdir(path)
        return path

    def _seal(
        self, pending: PendingEntry, key: CacheKey, node_id: str | None, timing: dict[str, float]
    ) -> dict[str, object]:
        """Digest the outputs and write the manifest into the temp dir (still invisible to readers)."""
        outputs = {o.name: {"size": o.size, "sha256": o.sha256}
                   for o in self._scan_outputs(pending.path, pending.digests)}
        manifest: dict[str, object] = {
            "format": MANIFEST_FORMAT,
            "digest": key.digest(),
            "key": key.parts(),
            "node_id": node_id,
            "outputs": outputs,
            "timing": timing,
            "created": time.time(),
            "medasl_version": __version__,
            "info": canonical(pending.info, "info"),
        }
        if pending.value is not None:
            manifest["value"] = pending.value
        manifest_path = pending.path / MANIFEST_NAME
        # compact: json's C encoder only serves calls without indentation
        text = json.dumps(manifest, sort_keys=True, separators=(",", ":"), allow_nan=False)
        with open(manifest_path, "wb") as f:
            _write_named(f, _with_check(text.encode("utf-8")), manifest_path)
        _backdate(manifest_path)
        if self.durable:
            fsync_file(manifest_path)
            fsync_file(pending.path)
        return manifest

    def _scan_outputs(self, folder: Path, known: Mapping[str, str] | None = None) -> list[OutputFile]:
        outputs = []
        for current, dirs, files in os.walk(folder):
            dirs.sort()
            for name in dirs:  # os.walk lists a link to a folder here, and would not follow it
                if os.path.islink(os.path.join(current, name)):
                    files.append(name)
            for name in sorted(files):
                path = Path(current, name)
                rel = path.relative_to(folder).as_posix()
                outputs.append(self._output_file(path, rel, (known or {}).get(rel)))
        return outputs

    def _output_file(self, path: Path, rel: str, digest: str | None = None) -> OutputFile:
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"cache output {rel!r} is not a regular file (links are not stored)")
        if not _safe_output_name(rel):
            raise ValueError(f"{rel!r} is reserved for the cache's manifest")
        output = OutputFile(rel, st.st_size, digest or sha256_file(path))
        _backdate(path)
        if self.durable:
            fsync_file(path)
        return output

    def _commit(self, tmp: Path, digest: str, manifest: dict[str, object]) -> Entry:
        """Rename the finished temp dir into place; the one step that makes an entry visible."""
        final = self.entry_path(digest)
        for _attempt in range(4):
            try:
                os.rename(tmp, final)
            except FileNotFoundError:
                if not tmp.exists():
                    raise
                final.parent.mkdir(parents=True, exist_ok=True)  # the shard's first entry
                continue
            except OSError as exc:
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR):  # ENOTDIR: a file took its place
                    raise
            else:
                if self.durable:
                    fsync_file(final.parent)
                entry = _entry_from(digest, final, manifest)
                assert entry is not None
                _MANIFESTS.remember(entry)  # looked up again soon, by the next step
                for output in entry.outputs.values():  # written and hashed here: not read again in this process
                    name = f"{os.fspath(final)}/{output.name}"
                    with contextlib.suppress(OSError):
                        _CHECKED.remember(name, os.stat(name, follow_symlinks=False), output.sha256)
                return entry
            existing = self.lookup(digest)
            if existing is not None:  # someone committed the same key first: keep theirs
                return existing
            self._discard(final)  # a damaged entry: move it out of the way, then retry
        raise OSError(f"could not commit cache entry {digest[:12]}: the place stays occupied")

    def discard(self, key: CacheKey | str) -> int:
        """Remove the entry of `key` (for `--force`, or a writer whose files were deleted);
        returns the bytes freed. Atomic for readers: the entry vanishes with one rename."""
        try:
            return self._discard(self.entry_path(key))
        except OSError as exc:
            problem = self._storage_error(exc, "removing a result to compute it again")
            if problem is None:
                raise
            raise problem from exc

    def _discard(self, path: Path) -> int:
        """Make an entry disappear atomically (rename into a temp name), then delete it; returns bytes freed."""
        aside = self.root / temp_name()
        _MANIFESTS.forget(path)
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            return 0
        size = _tree_size(aside)
        remove_tree(aside)
        return size

    # --- locks ---

    @contextlib.contextmanager
    def lock(self, key: CacheKey | str, timeout: float | None = None, poll_s: float = 0.05) -> Iterator[None]:
        """An exclusive per-key lock across processes (and threads), released if the holder dies.

        flock is released by the kernel when its holder dies, so an ordinary stale lock
        file costs nothing. A lock still held while the pid written in it is dead (a
        forked child inherited the descriptor) is broken after the holder is found dead.
        """
        path = self._lock_file(key)
        deadline = None if timeout is None else time.monotonic() + timeout
        while (fd := self._try_lock(path)) is None:
            self._break_if_orphaned(path)
            if deadline is not None and time.monotonic() >= deadline:
                raise LockTimeout(f"cache lock {os.path.basename(path)} is held by another process")
            time.sleep(poll_s)
        try:
            _write_holder(fd)
            yield
        finally:
            _release(fd, path)

    def _try_lock(self, path: str) -> int | None:
        try:
            return _try_lock(path)
        except OSError as exc:
            problem = self._storage_error(exc, "taking the lock of a result to compute")
            if problem is None:
                raise
            raise problem from exc

    def _storage_error(self, exc: OSError, doing: str) -> DataError | None:
        """A cache that is full (E2021) or cannot be written (E2020), said so; None for other errors."""
        return _storage_error(exc, self.root, doing)

    def _break_if_orphaned(self, path: Path | str) -> bool:
        """Unlink a lock file whose recorded holder is dead although its flock is still held.

        Breakers are serialised by one permanent lock, and the holder is re-checked under
        it, so two waiters cannot both break and then unlink each other's fresh lock.
        """
        if not _holder_dead(path):
            return False
        with flocked(self.root / LOCKS_DIR / ".break.lock"):
            try:
                fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            except FileNotFoundError:
                return False
            try:
                if not _is_current(fd, path) or not _holder_dead(path):
                    return False
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return False  # free after all: the next _try_lock takes it
                except BlockingIOError:
                    os.unlink(path)
                    return True
            finally:
                os.close(fd)

    # --- explanations ---

    def record(self, node_id: str, key: CacheKey) -> None:
        """Remember `key` as the latest of node (`key.op`, `node_id`); free when it already is.

        One line appended to the journal of the node's step (O_APPEND, one write: lines
        of concurrent runs never interleave), not a file per node: a first run over many
        cases wrote and renamed one index file per case and step.

        A cache that is full or read-only keeps no index (it only serves `--dry-run`'s
        explanations), so that a run whose results are all cached still runs there.
        """
        path = self._journal_path(key.op, node_id)
        digest = key.digest()
        with _JOURNAL_LOCK:
            try:
                journal = _journal(path)
                if journal.latest(node_id) == digest:
                    return
                line = {"format": JOURNAL_FORMAT, "op": key.op, "node_id": node_id, "digest": digest,
                        "key": key.parts(), "updated": time.time()}
                journal.append(node_id, digest, json.dumps(line, sort_keys=True, separators=(",", ":"),
                                                                 allow_nan=False).encode("utf-8"))
                if journal.lines > max(_Journal.COMPACT_MIN, 2 * len(journal.nodes)):
                    _journal(path)  # compacts
            except OSError as exc:
                if exc.errno not in (*_FULL, *_READ_ONLY):
                    raise

    def previous(self, op: str, node_id: str) -> tuple[str, dict[str, object]] | None:
        """(digest, key parts) last recorded for this node, or None."""
        with _JOURNAL_LOCK:  # no compaction here: a dry run only reads
            found = _journal(self._journal_path(op, node_id), compact=False).record(node_id)
        if found is None:  # recorded before issue 9: one index file per node
            found = read_json(self._index_path(op, node_id))
        if not isinstance(found, dict) or found.get("format") not in (INDEX_FORMAT, JOURNAL_FORMAT):
            return None
        if found.get("op") != op or found.get("node_id") != node_id:
            return None
        digest, parts = found.get("digest"), found.get("key")
        if not isinstance(digest, str) or not isinstance(parts, dict):
            return None
        return digest, parts

    def _journal_path(self, op: str, node_id: str) -> Path:
        """The journal of a node's step: ids `name#case` share the file of `name`."""
        group = (os.fspath(self.root), op, node_id.partition("#")[0])
        path = _JOURNAL_PATHS.get(group)
        if path is None:  # hashed once per step, not per case
            path = _JOURNAL_PATHS[group] = self.root / INDEX_DIR / f"{sha256_json([op, group[2]])}.jsonl"
        return path

    def explain(self, key: CacheKey, node_id: str | None = None) -> Explanation:
        """cached, new or stale (with the key parts that changed since this node's last result).

        Only reads: a dry run must not change the cache.
        """
        digest = key.digest()
        if self.lookup(key, node_id=node_id) is not None:
            return Explanation("cached", digest)
        damage = self.damaged.get(digest)
        if damage is not None:
            what = "was stored by an older medasl" if damage.outdated else "is damaged"
            return Explanation("new", digest, [f"the earlier result {what}: {damage.problem}"], previous=digest)
        previous = self.previous(key.op, node_id) if node_id is not None else None
        if previous is None:
            return Explanation("new", digest, ["no earlier result for this node"])
        old_digest, old_parts = previous
        if old_digest == digest:
            return Explanation("new", digest, ["the earlier result was removed or is damaged"], previous=old_digest)
        changes = diff_parts(old_parts, key.parts())
        reasons = [c.describe() for c in changes] or ["the key changed"]
        return Explanation("stale", digest, reasons, changes, old_digest)

    # --- verification ---

    def verify(self, drop: bool = False, progress: Callable[[Path], None] | None = None) -> VerifyReport:
        """Read every entry again and compare it with what was recorded when it was stored
        (`check_entry`); with `drop`, remove the entries that are damaged or outdated (a
        run would not use them), except those whose key lock a running process holds."""
        report = VerifyReport()
        for path in self._entry_dirs():
            if progress is not None:
                progress(path)
            report.entries += 1
            damage = self.check_entry(path)
            if damage is None:
                manifest = _MANIFESTS.read(path.name, os.fspath(path))[0]
                report.checked_bytes += manifest.size if manifest is not None else 0
                continue
            report.bad.append(damage)
            if not drop:
                continue
            fd = _try_lock(self.lock_path(damage.digest))
            if fd is None:
                report.busy.append(damage.digest)
                continue
            try:
                self._discard(path)
                report.dropped.append(damage.digest)
            finally:
                _release(fd, self.lock_path(damage.digest))
        return report

    # --- garbage collection ---

    def gc(self, keep_digests: Iterable[str] = frozenset(), older_than_s: float | None = None) -> GcReport:
        """Remove temp dirs of dead processes, unused lock files, and entries not kept.

        With `older_than_s`, only entries created longer ago than that are removed. Entries
        whose key lock is held (being written or read under the lock) are left alone.
        Safe while other processes use the cache: every removal is an atomic rename first.
        """
        report = GcReport()
        self._gc_temp(report)
        self._gc_entries(set(keep_digests), older_than_s, report)
        self._gc_locks(report)
        return report

    def _gc_temp(self, report: GcReport) -> None:
        for folder in (self.root, self.root / INDEX_DIR):
            for path in self._scan(folder):
                pid = _temp_owner(path.name)
                if pid is None or pid_alive(pid):
                    continue
                report.freed_bytes += _tree_size(path)
                remove_tree(path)
                report.removed_temp.append(path.name)

    def _gc_entries(self, keep: set[str], older_than_s: float | None, report: GcReport) -> None:
        now = time.time()
        for path in self._entry_dirs():
            digest = path.name
            if digest in keep or (older_than_s is not None and now - self._created(path) < older_than_s):
                continue
            fd = _try_lock(self.lock_path(digest))
            if fd is None:
                continue  # in use
            try:
                report.freed_bytes += self._discard(path)
                report.removed_entries.append(digest)
            finally:
                _release(fd, self.lock_path(digest))

    @staticmethod
    def _created(path: Path) -> float:
        """When an entry was created; a damaged manifest makes it infinitely old."""
        manifest = read_json(path / MANIFEST_NAME)
        created = manifest.get("created") if isinstance(manifest, dict) else None
        return float(created) if isinstance(created, int | float) else -math.inf

    def _gc_locks(self, report: GcReport) -> None:
        for path in self._scan(self.root / LOCKS_DIR):
            if path.suffix != ".lock" or not _DIGEST_RE.fullmatch(path.stem):
                continue
            fd = _try_lock(path)
            if fd is not None:
                _release(fd, path)
                report.removed_locks.append(path.name)
            elif self._break_if_orphaned(path):
                report.removed_locks.append(path.name)
