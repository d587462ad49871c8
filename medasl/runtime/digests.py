"""Content digests of source files, remembered so that unchanged files are not re-read.

A cache key includes the sha256 of every source file a node reads. Hashing a folder of
DICOM series on every run would cost more than the cache saves, so each digest is
remembered in `<cache root>/digests.json` with the file's size, mtime_ns and inode; while
all three are unchanged the file is trusted to be unchanged.

One trap (git calls it "racily clean"): a file rewritten within the same timestamp tick
in which it was hashed keeps its size and mtime. A digest taken less than
`RACY_WINDOW_NS` after the file's mtime is therefore not trusted next time: the file is
read again, and once it has been quiet that long its digest is remembered for good.

The memo is only an optimisation. A missing, corrupt or foreign memo file is ignored (and
replaced at the next save); two processes saving at once merge their records.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import stat
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType

DIGEST_MEMO_NAME = "digests.json"
MEMO_FORMAT = 1
FOLDER_FORMAT = 1
TEMP_PREFIX = ".tmp-"
RACY_WINDOW_NS = 2_000_000_000

StrPath = str | os.PathLike[str]
Record = dict[str, object]


# ----- shared file helpers (the cache uses them too) ---------------------------------


def default_cache_root() -> Path:
    """`$MEDASL_CACHE_DIR/results`, else `~/.cache/medasl/results`."""
    home = os.environ.get("MEDASL_CACHE_DIR")
    base = Path(home).expanduser() if home else Path.home() / ".cache" / "medasl"
    return base / "results"


def temp_name() -> str:
    """A fresh `.tmp-<pid>-<random>` name; the pid lets `Cache.gc` tell whether its owner is alive."""
    return f"{TEMP_PREFIX}{os.getpid()}-{os.urandom(8).hex()}"


def sha256_file(path: StrPath) -> str:
    """sha256 of a file's content, read in chunks so that large volumes are not held in memory."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def sha256_json(data: object) -> str:
    """sha256 of the canonical JSON of `data` (sorted keys, no spaces)."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def read_json(path: StrPath) -> object | None:
    """The JSON content of `path`, or None when it is missing or unreadable: callers treat both alike."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def write_json_atomic(path: Path, data: object) -> None:
    """Write JSON beside `path` under a temporary name, then rename it over `path`.

    A reader sees the old or the new content, never a prefix. A writer killed half-way
    leaves only a `.tmp-<pid>-...` file, which `Cache.gc` removes.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / temp_name()
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, sort_keys=True, separators=(",", ":"), allow_nan=False)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def flocked(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on a permanent lock file; the kernel releases it if we die."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# ----- the memo ----------------------------------------------------------------------


def _stamp(st: os.stat_result) -> tuple[int, int, int]:
    return (st.st_size, st.st_mtime_ns, st.st_ino)


def _trusted(record: Record, st: os.stat_result) -> bool:
    """Whether a remembered digest still describes the file with this stat.

    Fields of the wrong type (a hand-edited or foreign memo) simply fail the comparison.
    """
    remembered = (record.get("size"), record.get("mtime_ns"), record.get("inode"))
    taken_ns = record.get("taken_ns")
    if not isinstance(taken_ns, int) or not isinstance(record.get("sha256"), str):
        return False
    quiet = st.st_mtime_ns + RACY_WINDOW_NS <= taken_ns
    return remembered == _stamp(st) and quiet


def _load_records(path: Path) -> dict[str, Record]:
    """The memo's records; anything unexpected means starting over, never an error."""
    data = read_json(path)
    if not isinstance(data, dict) or data.get("format") != MEMO_FORMAT:
        return {}
    files = data.get("files")
    if not isinstance(files, dict):
        return {}
    return {k: v for k, v in files.items() if isinstance(k, str) and isinstance(v, dict)}


class DigestMemo:
    """File digests remembered by absolute path, size, mtime_ns and inode.

    Use it as a context manager (or call `save()`), so that a batch of digests costs one
    read and one write of the memo file.
    """

    def __init__(self, root: StrPath | None = None) -> None:
        self.root = Path(root) if root is not None else default_cache_root()
        self.path = self.root / DIGEST_MEMO_NAME
        self._records = _load_records(self.path)
        self._new: dict[str, Record] = {}

    def digest(self, path: StrPath) -> str:
        """sha256 of the file's content, read only when the memo cannot vouch for it."""
        abspath = os.path.abspath(path)
        before = os.stat(abspath)
        if not stat.S_ISREG(before.st_mode):
            raise IsADirectoryError(f"{path} is not a regular file")
        record = self._records.get(abspath)
        if record is not None and _trusted(record, before):
            return str(record["sha256"])
        taken_ns = time.time_ns()
        digest = sha256_file(abspath)
        if _stamp(os.stat(abspath)) == _stamp(before):  # not changed while we read it
            self._remember(abspath, before, digest, taken_ns)
        return digest

    def _remember(self, abspath: str, st: os.stat_result, digest: str, taken_ns: int) -> None:
        record: Record = {
            "size": st.st_size,
            "mtime_ns": st.st_mtime_ns,
            "inode": st.st_ino,
            "sha256": digest,
            "taken_ns": taken_ns,
        }
        self._records[abspath] = record
        self._new[abspath] = record

    def save(self) -> None:
        """Merge this memo's new records into the file, under a lock so concurrent savers keep each other's.

        A memo that cannot be written (a read-only cache) only costs re-reading files next
        time, so that is not an error.
        """
        if not self._new:
            return
        try:
            with flocked(self.root / "locks" / "digests.lock"):
                merged = _load_records(self.path)
                merged.update(self._new)
                write_json_atomic(self.path, {"format": MEMO_FORMAT, "files": merged})
        except OSError:
            return
        self._records = merged
        self._new = {}

    def __enter__(self) -> DigestMemo:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.save()


# ----- public functions --------------------------------------------------------------


def file_digest(path: StrPath, memo: DigestMemo | None = None) -> str:
    """sha256 of a file's content; unchanged files are answered from the memo without reading them.

    Without `memo`, the default cache root's memo is loaded and saved for this one file;
    pass a `DigestMemo` to digest many files with one load and one save.
    """
    if memo is not None:
        return memo.digest(path)
    with DigestMemo() as own:
        return own.digest(path)


def folder_files(root: StrPath, patterns: Iterable[str] = ("**/*",)) -> list[str]:
    """Relative (POSIX) names of the regular files under `root` matching any glob pattern, sorted."""
    base = Path(root)
    if not base.is_dir():
        raise NotADirectoryError(f"{root} is not a folder")
    names = {p.relative_to(base).as_posix() for pattern in patterns for p in base.glob(pattern) if p.is_file()}
    return sorted(names)


def folder_listing(
    root: StrPath, patterns: Iterable[str] = ("**/*",), memo: DigestMemo | None = None
) -> list[tuple[str, str]]:
    """(relative name, sha256) for each matching file, sorted by name."""
    if memo is None:
        with DigestMemo() as own:
            return folder_listing(root, patterns, own)
    base = Path(root)
    return [(name, memo.digest(base / name)) for name in folder_files(root, patterns)]


def folder_digest(root: StrPath, patterns: Iterable[str] = ("**/*",), memo: DigestMemo | None = None) -> str:
    """One digest for a folder of files: it changes when a file is added, removed, renamed or edited.

    It depends on the relative names and contents only, so a dataset moved elsewhere
    keeps its digest.
    """
    listing = folder_listing(root, patterns, memo)
    return sha256_json({"format": FOLDER_FORMAT, "files": [list(item) for item in listing]})
