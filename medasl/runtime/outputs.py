"""Files written under `--out`: where they may go, and how they are committed.

**The output-path rule.** Writers (`write_nifti`, `write_boxes`, ...) and reports
(`html`, `excel`, ...) write only inside `--out DIR/<pipeline>`: a path with `..` that
climbs out of it, an absolute path elsewhere, or a folder inside it that is a symbolic
link to somewhere outside is refused before anything runs (E2011), unless the run is
given `--allow-outside-out`. Case ids that fill the `*` of a pattern come from the data
(a CSV column, a file name), so they are made into safe file names first
(`case_file_name`: `../x` becomes `.._x`, never a folder). Two outputs that would land on
one file are an error too: at check time when the paths are written in the file (E0260,
E0261), at run time otherwise (E2012).

**Committing.** A file is written into a private folder beside its target
(`.tmp-<pid>-<random>-<name>/`), flushed to the disk with `fsync` (where a full disk or
an I/O error that the writing library did not report shows up), then renamed into
place; a format that writes a data file beside its header (`.mhd` + `.zraw`) has the
data file renamed first and the header last. So a file in `--out` is either complete or
absent: a full disk (E2010) or a killed run leaves no partial file, and the writer's
cache entry, which records each file's size and sha256, is only made once all its files
are in place. A recorded file that is missing or differs is written again.

This module imports nothing heavy: the checker uses its path rules.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from medasl.diagnostics import Diagnostics, Label
from medasl.runtime.cache import fsync_file, pid_alive, remove_tree
from medasl.runtime.digests import sha256_file
from medasl.runtime.errors import DataError

if TYPE_CHECKING:
    from medasl.lower.plan import Plan, Step

# ----- names ----------------------------------------------------------------------------

SUFFIXES: dict[str, tuple[str, ...]] = {
    "write_nifti": (".nii.gz", ".nii"),
    "write_nrrd": (".nrrd", ".nhdr"),
    "write_mha": (".mha", ".mhd"),
    "write_png": (".png",),
    "write_boxes": (".csv",),
    "html": (".html", ".htm"),
    "excel": (".xlsx",),
    "csv": (".csv",),
    "json": (".json",),
}
"""Each writer's extensions, the first added to a name that has none of them."""

KEEPS_ANY_SUFFIX = frozenset({"write_boxes"})
"""Writers that keep a name's own extension (`candidates.txt`) and add theirs only to a bare name."""

_UNSAFE_IN_NAME = re.compile(r"[^\w.+-]")


def case_file_name(case_id: str) -> str:
    """A case id as a file name: only letters, digits, `_`, `-`, `+` and `.` are kept (a
    path separator, a space or a control character becomes `_`), and a leading dot is
    made `_`, so an id can neither climb out (`..`), nor name a folder, nor hide the file."""
    name = _UNSAFE_IN_NAME.sub("_", case_id)
    if name.startswith("."):
        name = "_" + name[1:]
    return name or "_"


def with_suffix(op: str, path: Path) -> Path:
    """`path` as writer `op` names the file it writes: with the format's extension added
    when the name has none of the format's own (or, for `write_boxes`, none at all)."""
    suffixes = SUFFIXES.get(op)
    if not suffixes:
        return path
    if op in KEEPS_ANY_SUFFIX and path.suffix:
        return path
    return path if path.name.lower().endswith(suffixes) else path.with_name(path.name + suffixes[0])


def pattern_target(op: str, pattern: str, case: str | None = None) -> str:
    """The file `pattern` names for `case` (its `*` replaced by the case's file name),
    lexically normalized and with the writer's extension; relative paths stay relative
    (to `--out DIR/<pipeline>`). Used by the checker to compare two writers' patterns."""
    text = pattern.replace("*", case_file_name(case)) if case is not None else pattern
    normal = os.path.normpath(text) if text else text
    return str(with_suffix(op, Path(normal)))


def climbs_out(pattern: str) -> bool:
    """Whether a writer's path leaves the output folder lexically: absolute, or with `..`
    going above its start (a symbolic link can only be seen at run time)."""
    if os.path.isabs(pattern) or pattern.startswith("~"):
        return True
    depth = 0
    for part in PurePosixPath(pattern.replace("\\", "/")).parts:
        depth += -1 if part == ".." else 0 if part == "." else 1
        if depth < 0:
            return True
    return False


# ----- text cells of tables a spreadsheet opens -------------------------------------------

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def csv_text(text: object) -> str:
    """A text cell of a CSV file, safe to open in a spreadsheet: text starting with `=`,
    `+`, `-`, `@`, a tab or a carriage return (a case id `=HYPERLINK(...)` from the data)
    gets a leading `'`, so it is shown as text instead of run as a formula (OWASP's advice
    on CSV injection). A plain number (`-0.5`, `+3`) is a number, not a formula, and is
    left as it is."""
    text = str(text)
    if text.startswith(_FORMULA_START) and not _PLAIN_NUMBER.fullmatch(text):
        return "'" + text
    return text


# ----- where a file may go --------------------------------------------------------------


@dataclass(frozen=True)
class OutputRoot:
    """`--out DIR/<pipeline>`, and whether this run may write outside it."""

    folder: Path
    allow_outside: bool = False

    def target(self, op: str, pattern: str, case: str | None = None) -> Path:
        """The absolute file a writer writes for `case` (lexically normalized, links kept)."""
        relative = pattern_target(op, pattern, case)
        joined = Path(relative) if os.path.isabs(relative) else self.folder / relative
        return Path(os.path.normpath(os.path.expanduser(joined) if relative.startswith("~") else joined))

    def escapes(self, target: Path) -> str | None:
        """Why `target` is outside this folder (None when it is inside or allowed): `..` or
        an absolute path, or a symbolic link on the way that points outside."""
        if self.allow_outside:
            return None
        base = os.path.normpath(os.path.abspath(self.folder))
        if not _within(os.path.normpath(os.path.abspath(target)), base):
            return "its path leads out of it"
        real = os.path.realpath(target)  # follows the links that exist now, the file's own included
        if not _within(real, os.path.realpath(base)):
            return f"a symbolic link on its way leads to {real}"
        return None


def _within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def outside_failure(target: Path, root: OutputRoot, why: str) -> DataError:
    return DataError("E2011", f"refusing to write {target}: it is outside the output folder {root.folder} ({why})",
                     target, help="write inside --out (a relative path without `..`), or allow this run to write "
                     "elsewhere with --allow-outside-out")


class Claims:
    """Which file each output of a run writes: two outputs that would land on one file are
    E2012 instead of overwriting each other unseen. Steps are prepared in threads."""

    def __init__(self) -> None:
        self._owners: dict[str, str] = {}
        self._lock = threading.Lock()

    def claim(self, target: Path, owner: str) -> str | None:
        """Record that `owner` (a step, and a case) writes `target`; the other owner when
        the file is already claimed by someone else."""
        key = os.path.normcase(os.path.abspath(target))
        with self._lock:
            found = self._owners.setdefault(key, owner)
        return None if found == owner else found


# ----- committing files -------------------------------------------------------------------

_LEFTOVER = re.compile(r"\.tmp-(\d+)-[0-9a-f]{8}-.+")
_SWEPT_MAX = 10_000  # folders remembered; forgetting one only costs one more listing
_swept: dict[str, tuple[int, int]] = {}  # folder -> (writes since its last sweep, entries it held then)
_swept_lock = threading.Lock()  # writers run in the executor's step threads
_FULL_BELOW = 1 << 20  # free bytes under which a write that came out short is taken for a full disk
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class IncompleteOutput(Exception):
    """A library wrote less than the whole file without reporting an error (SimpleITK's
    NIfTI writer on a full disk): `commit` treats it like a failed write."""

    def __init__(self, path: Path, detail: str) -> None:
        super().__init__(f"{path}: {detail}")
        self.path, self.detail = path, detail


def _sweep_due(folder: str) -> bool:
    """Whether this write into `folder` lists it for leftovers: the first write of this
    process into it, and then once its writes outnumber the entries the last listing saw.
    Listing before every write made filling a folder quadratic (5.7 ms per file with 8000
    there); this way each listing is paid for by as many writes, so the total is linear."""
    with _swept_lock:
        writes, seen = _swept.get(folder, (0, -1))
        if seen >= 0 and writes < max(seen, 64):
            _swept[folder] = (writes + 1, seen)
            return False
        if len(_swept) >= _SWEPT_MAX:
            _swept.clear()
        _swept[folder] = (0, max(seen, 0))
        return True


def sweep_leftovers(folder: Path) -> None:
    """Remove the temporary files and folders of writers whose process is gone (killed
    between writing and renaming), whatever target they were for."""
    key = os.path.abspath(folder)
    if not _sweep_due(key):
        return
    count = 0
    with contextlib.suppress(FileNotFoundError), os.scandir(folder) as items:
        for item in items:
            count += 1
            found = _LEFTOVER.fullmatch(item.name) if item.name.startswith(".tmp-") else None
            if found and not pid_alive(int(found.group(1))):
                remove_tree(Path(item.path))
    with _swept_lock:
        _swept[key] = (0, count)


def commit(target: Path, write: Callable[[Path], None]) -> list[Path]:
    """Write `target` with `write(path)` and put it in place whole, or not at all.

    `write` writes the file at `path`, a name in a private folder beside `target` with
    the same file name (so a library that picks the format by the extension sees it), and
    may write companion files there (a `.mhd`'s data file). Each file is fsynced, then the
    companions and finally `target` are renamed into place. A full disk is E2010, any
    other failure to write (a read-only folder, a folder where the file should be) E2013;
    either way nothing partial is left. Returns the files, `target` first."""
    folder = target.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        sweep_leftovers(folder)
        private = folder / f".tmp-{os.getpid()}-{secrets.token_hex(4)}-{target.name}"
        os.mkdir(private)
    except OSError as exc:
        raise write_failure(target, exc) from None
    try:
        write(private / target.name)
        if not (private / target.name).is_file():
            raise IncompleteOutput(target, "the writer made no file")
        written = sorted(private.iterdir(), key=lambda p: (p.name == target.name, p.name))
        for path in written:
            fsync_file(path)
        for path in written:
            os.replace(path, folder / path.name)
    except OSError as exc:
        raise write_failure(target, exc) from None
    except IncompleteOutput as exc:
        raise _incomplete_failure(target, exc.detail, private) from None
    finally:
        remove_tree(private)
    return [target, *(folder / p.name for p in written if p.name != target.name)]


def _free_bytes(folder: Path) -> int | None:
    try:
        found = os.statvfs(folder)
    except OSError:
        return None
    return found.f_bavail * found.f_frsize


def write_failure(target: Path, exc: OSError) -> DataError:
    """A failed write as a diagnostic: E2010 for a full disk or quota, else E2013."""
    reason = exc.strerror or str(exc)
    if exc.errno in _DISK_FULL:
        return disk_full(target, reason)
    return DataError("E2013", f"cannot write {target}: {reason}", target,
                     help="check that the output folder is writable (or choose another with --out); "
                     "nothing half-written was left, and the same command writes the file again")


def disk_full(target: Path, reason: str = "No space left on device") -> DataError:
    return DataError("E2010", f"the disk is full: writing {target} failed ({reason}); no partial file was left",
                     target, help="free some space on that disk (or write elsewhere with --out) and run the same "
                     "command again: nothing finished is lost, and this file is written again")


def _incomplete_failure(target: Path, detail: str, private: Path) -> DataError:
    free = _free_bytes(private)  # measured while the short file still takes its space
    if free is not None and free < _FULL_BELOW:
        return disk_full(target, detail)
    return DataError("E2013", f"cannot write {target}: {detail}", target,
                     help="nothing half-written was left; the same command writes the file again")


# ----- what a writer's cache entry records ------------------------------------------------


def written_record(files: Iterable[Path]) -> dict[str, dict[str, object]]:
    """What a writer's entry records of each file it wrote: its size and sha256."""
    return {str(p): {"size": p.stat().st_size, "sha256": sha256_file(p)} for p in files}


def files_intact(manifest: Mapping[str, object], digest: Callable[[Path], str] | None = None) -> bool:
    """Whether every file a writer's entry records is still there with its size and
    sha256 (`digest`: a memo that reads each unchanged file at most once). An entry of an
    older format (sizes only) does not count: its files may be the short files of a full
    disk, so they are written again once."""
    info = manifest.get("info")
    files = info.get("files") if isinstance(info, dict) else None
    if not isinstance(files, dict) or not files:
        return False
    for name, recorded in files.items():
        if not isinstance(recorded, dict):
            return False
        path = Path(name)
        try:
            if not path.is_file() or path.stat().st_size != recorded.get("size"):
                return False
            if (digest or sha256_file)(path) != recorded.get("sha256"):
                return False
        except OSError:
            return False
    return True


# ----- before a run ---------------------------------------------------------------------


def refusals(plan: Plan, root: OutputRoot) -> Diagnostics:
    """What the output-path rule refuses in a plan before anything runs: a writer's path
    outside `--out` (E2011), a dataset writer without `*` and two writers of one pattern
    (E2012; the checker reports these for paths written in the file, this catches those
    that came from `--set`). What depends on case ids is checked as each step starts."""
    diags = Diagnostics()
    patterns: dict[str, Step] = {}
    for step in plan.steps.values():
        if not step.writes or not isinstance(step.params.get("path"), str):
            continue
        pattern = str(step.params["path"])
        where = (Label(step.span, f"`{step.op}` writes here"),) if step.span else ()
        target = root.target(step.op, pattern)  # a `*` stays: it only ever becomes a plain file name
        why = root.escapes(target)
        if why is not None:
            failure = outside_failure(target, root, why)
            diags.error(failure.code, failure.message, *where, help=failure.help)
        if step.mapped and "*" not in pattern:
            diags.error("E2012", f"`{step.label}` writes every case of a dataset to the one file {target}",
                        *where, help="put `*` in the path: it becomes each case's id")
        key = os.path.normcase(str(target))
        first = patterns.setdefault(key, step)
        if first is not step:
            diags.error("E2012", f"`{first.label}` and `{step.label}` both write {key}", *where,
                        *((Label(first.span, "also written here", primary=False),) if first.span else ()),
                        help="give each writer its own path")
    return diags
