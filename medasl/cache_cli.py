"""`medasc cache ls|du|gc|verify`: look into the result cache, clean it, check it.

`--cache-dir DIR` means what `MEDASL_CACHE_DIR` means: results live in `DIR/results`;
without either, `~/.cache/medasl/results`. An empty or absent cache is not an error.

This module imports only click and the standard library at import time (it is imported
by `medasl.cli`, whose front-end commands must stay light); the cache module is imported
inside the commands.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from medasl.runtime.cache import Cache

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_AGE_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*")


def parse_age(text: str) -> float:
    """Seconds in `7d`, `12h`, `30m`, `45s` or `2w`; ValueError for anything else."""
    match = _AGE_RE.fullmatch(text)
    if not match:
        raise ValueError(f"{text!r} is not an age such as 7d, 12h, 30m (units: s, m, h, d, w)")
    return float(match.group(1)) * _UNITS[match.group(2)]


class AgeType(click.ParamType):
    name = "AGE"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, float):
            return value
        try:
            return parse_age(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def human(size: float) -> str:
    """Bytes in B, KB, MB, GB or TB (powers of 1024), one decimal above bytes."""
    if size < 1024:
        return f"{int(size)} B"
    for unit in ("KB", "MB", "GB"):
        size /= 1024
        if size < 1024:
            return f"{size:.1f} {unit}"
    return f"{size / 1024:.1f} TB"


def _when(created: float) -> str:
    if created <= 0:
        return "-"
    return datetime.datetime.fromtimestamp(created).strftime("%Y-%m-%dT%H:%M")


def cache_root(cache_dir: Path | None) -> Path:
    """Where results are cached: `DIR/results` for `--cache-dir DIR`, else the default."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser() / "results"
    from medasl.runtime.digests import default_cache_root

    return default_cache_root()


def _open(ctx: click.Context, cache_dir: Path | None) -> Cache:
    from medasl.runtime.cache import Cache

    if cache_dir is None:
        cache_dir = (ctx.obj or {}).get("cache_dir")
    return Cache(cache_root(cache_dir))


def _empty(cache: Cache) -> None:
    click.echo(f"cache is empty: {cache.root}")


_cache_dir_option = click.option(
    "--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None, metavar="DIR",
    help="The medasl cache directory (results in DIR/results); default $MEDASL_CACHE_DIR or ~/.cache/medasl.")


@click.group(name="cache")
@_cache_dir_option
@click.pass_context
def cache_group(ctx: click.Context, cache_dir: Path | None) -> None:
    """Inspect and clean the result cache."""
    ctx.ensure_object(dict)
    ctx.obj["cache_dir"] = cache_dir


@cache_group.command(name="ls")
@_cache_dir_option
@click.option("--json", "as_json", is_flag=True, help="One JSON list of entries, for scripts.")
@click.pass_context
def ls(ctx: click.Context, cache_dir: Path | None, as_json: bool) -> None:
    """List the entries, oldest first: digest, operator, node, size, created (local time)."""
    cache = _open(ctx, cache_dir)
    entries = cache.entries()
    if as_json:
        rows = [{"digest": e.digest, "op": e.op, "node_id": e.node_id, "size": e.size, "created": e.created,
                 "created_iso": _when(e.created), "path": str(e.path)} for e in entries]
        click.echo(json.dumps(rows, indent=2))
        return
    if not entries:
        _empty(cache)
        return
    op_w = max(len(e.op) for e in entries)
    node_w = max(len(e.node_id or "-") for e in entries)
    for e in entries:
        click.echo(f"{e.digest[:12]}  {e.op:<{op_w}}  {e.node_id or '-':<{node_w}}  {human(e.size):>9}  "
                   f"{_when(e.created)}")


@cache_group.command(name="du")
@_cache_dir_option
@click.option("--json", "as_json", is_flag=True, help="The same numbers as JSON, in bytes.")
@click.pass_context
def du(ctx: click.Context, cache_dir: Path | None, as_json: bool) -> None:
    """Disk usage: total, entries, bytes per operator, bytes outside entries."""
    cache = _open(ctx, cache_dir)
    usage = cache.du()
    ops = {e.digest: e.op for e in cache.entries()}
    per_op: dict[str, list[int]] = {}
    for digest, size in usage.entries.items():
        row = per_op.setdefault(ops.get(digest) or "(damaged)", [0, 0])
        row[0] += size
        row[1] += 1
    ordered = sorted(per_op.items(), key=lambda item: (-item[1][0], item[0]))
    if as_json:
        click.echo(json.dumps({"root": str(cache.root), "total": usage.total, "entries": len(usage.entries),
                               "by_op": {op: {"bytes": b, "entries": n} for op, (b, n) in ordered},
                               "other": usage.other}, indent=2))
        return
    if usage.total == 0 and not usage.entries:
        _empty(cache)
        return
    n = len(usage.entries)
    click.echo(f"cache: {cache.root}")
    click.echo(f"total: {human(usage.total)} in {n} entr{'y' if n == 1 else 'ies'}")
    if ordered:
        op_w = max(len(op) for op in per_op)
        for op, (size, count) in ordered:
            click.echo(f"  {op:<{op_w}}  {human(size):>9}  {count:>5} entr{'y' if count == 1 else 'ies'}")
    click.echo(f"outside entries: {human(usage.other)} (temp dirs, locks, index, digest memo)")


@cache_group.command(name="gc")
@_cache_dir_option
@click.option("--older-than", type=AgeType(), default=None, help="Also remove entries created longer ago (7d, 12h, 30m).")
@click.option("--all", "remove_all", is_flag=True, help="Remove every entry.")
@click.option("--dry-run", is_flag=True, help="Only list what would be removed.")
@click.pass_context
def gc(ctx: click.Context, cache_dir: Path | None, older_than: float | None, remove_all: bool, dry_run: bool) -> None:
    """Remove leftovers (temp dirs of dead processes, unused locks); with --older-than or --all, entries too.

    Entries in use by a running process (their lock is held) are never removed.
    """
    import math

    if remove_all and older_than is not None:
        raise click.UsageError("--all and --older-than exclude each other")
    cache = _open(ctx, cache_dir)
    if not cache.root.is_dir():
        _empty(cache)
        return
    if dry_run:
        _dry_run(cache, older_than, remove_all)
        return
    ops = {e.digest: e.op for e in cache.entries()}
    if remove_all:
        report = cache.gc()
    elif older_than is not None:
        report = cache.gc(older_than_s=older_than)
    else:  # keep every entry, including one committed while we run (it is new, so younger than inf)
        report = cache.gc(keep_digests=set(cache.du().entries), older_than_s=math.inf)
    for digest in report.removed_entries:
        click.echo(f"removed entry {digest[:12]} {ops.get(digest, '')}".rstrip())
    for name in report.removed_temp:
        click.echo(f"removed temp dir {name}")
    for name in report.removed_locks:
        click.echo(f"removed lock {name}")
    click.echo(f"freed {human(report.freed_bytes)}: {len(report.removed_entries)} entries, "
               f"{len(report.removed_temp)} temp dirs, {len(report.removed_locks)} locks")


@cache_group.command(name="verify")
@_cache_dir_option
@click.option("--drop", is_flag=True, help="Remove the entries found damaged (a run would compute them again anyway).")
@click.option("--json", "as_json", is_flag=True, help="The findings as JSON, for scripts.")
@click.pass_context
def verify(ctx: click.Context, cache_dir: Path | None, drop: bool, as_json: bool) -> None:
    """Read every entry again and compare it with the digests recorded when it was stored.

    A run already checks each result it uses (and computes a damaged one again); this checks
    the whole cache at once, for example after a disk error or a copy. Exit status 1 when
    damaged entries are left in place (without --drop), else 0. Entries stored by an older
    medasl without a digest of their value are listed too: runs compute them again.
    """
    import time

    cache = _open(ctx, cache_dir)
    clock = time.perf_counter()
    try:
        report = cache.verify(drop=drop)
    except OSError as exc:  # --drop on a cache this user cannot write
        click.echo(f"error: cannot remove damaged entries from {cache.root}: {exc.strerror or exc}; "
                   "run again without --drop to only list them", err=True)
        sys.exit(1)
    seconds = time.perf_counter() - clock
    damaged = [d for d in report.bad if not d.outdated]
    left = [d for d in damaged if d.digest not in report.dropped]
    if as_json:
        rows = [{"digest": d.digest, "node_id": d.node_id, "problem": d.problem, "outdated": d.outdated,
                 "dropped": d.digest in report.dropped} for d in report.bad]
        click.echo(json.dumps({"root": str(cache.root), "entries": report.entries,
                               "sound": report.entries - len(report.bad), "checked_bytes": report.checked_bytes,
                               "bad": rows}, indent=2))
    elif report.entries == 0:
        _empty(cache)
    else:
        for d in report.bad:
            what = "outdated" if d.outdated else "damaged"
            state = " (dropped)" if d.digest in report.dropped else " (in use: left)" if d.digest in report.busy else ""
            click.echo(f"{what} {d.digest[:12]} {d.node_id or '-'}: {d.problem}{state}")
        outdated = len(report.bad) - len(damaged)
        click.echo(f"checked {report.entries} entr{'y' if report.entries == 1 else 'ies'} "
                   f"({human(report.checked_bytes)}) in {seconds:.2f} s: "
                   f"{report.entries - len(report.bad)} sound, {len(damaged)} damaged"
                   + (f", {outdated} outdated" if outdated else "")
                   + (f"; dropped {len(report.dropped)}" if drop else ""))
        if left and not drop:
            click.echo("a run computes damaged results again by itself; `medasc cache verify --drop` removes them now",
                       err=True)
    if left:
        sys.exit(1)


def _dry_run(cache: Cache, older_than: float | None, remove_all: bool) -> None:
    """What `gc` would remove, found without changing anything."""
    import time

    from medasl.runtime.cache import MANIFEST_NAME, pid_alive
    from medasl.runtime.digests import TEMP_PREFIX, read_json

    usage = cache.du()
    ops = {e.digest: e.op for e in cache.entries()}
    freed, entries, temps, locks = 0, 0, 0, 0
    now = time.time()
    for digest, size in sorted(usage.entries.items()):
        if not remove_all and older_than is None:
            break
        if not remove_all:
            manifest = read_json(cache.entry_path(digest) / MANIFEST_NAME)
            created = manifest.get("created") if isinstance(manifest, dict) else None
            age = now - created if isinstance(created, int | float) else float("inf")
            if age < older_than:  # type: ignore[operator]
                continue
        click.echo(f"would remove entry {digest[:12]} {ops.get(digest, '(damaged)')}  {human(size)}")
        freed, entries = freed + size, entries + 1
    temp_re = re.compile(re.escape(TEMP_PREFIX) + r"(\d+)-")
    for folder in (cache.root, cache.root / "index"):
        for path in sorted(folder.iterdir()) if folder.is_dir() else []:
            match = temp_re.match(path.name)
            if match and not pid_alive(int(match.group(1))):
                size = _tree_size(path)
                click.echo(f"would remove temp dir {path.name}  {human(size)}")
                freed, temps = freed + size, temps + 1
    lock_dir = cache.root / "locks"
    for path in sorted(lock_dir.glob("*.lock")) if lock_dir.is_dir() else []:
        if not _lock_held(path):
            click.echo(f"would remove lock {path.name}")
            locks += 1
    click.echo(f"would free {human(freed)}: {entries} entries, {temps} temp dirs, {locks} locks")


def _tree_size(path: Path) -> int:
    if not path.is_dir() or path.is_symlink():
        return path.lstat().st_size
    total = 0
    for folder, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except OSError:
                pass
    return total


def _lock_held(path: Path) -> bool:
    """Whether some process holds the flock of this lock file (probed without taking it for long)."""
    import fcntl

    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
