"""What do the executor and the cache cost per case, when the cases are tiny?

Issue 9: a pathology study has 100,000 tiles, so what the runtime spends per case
(lookups, locks, manifests, indexes) matters as much as the operators. A pipeline over N
tiny synthetic cases (`phantom`, 16x16x8 voxels, a CT image and its labels), three cheap
per-case steps (window, rescale, zscore: fused into one stored chain) and a NIfTI writer
per case, run through the real executor in this one process:

- operators: the same functions called directly on each case, nothing stored;
- first run: an empty cache, every case computed, committed and written;
- cached: the same run again, everything found in the cache;
- files per case: everything the cache holds (entries, indexes, locks) over N.

Then the writer alone: N_WRITE tiny NIfTI files written into one folder with
`io.write_nifti` (each through a temporary file and a rename), its total and its cost per
file at the start and at the end (linear writing costs the same at both).

    python benchmarks/per_case.py                     # N = 2000 cases, 8000 files
    python benchmarks/per_case.py --n 200 --write 1000
    python benchmarks/per_case.py --profile           # where the first run's time goes

Goals (issue 9, printed, not asserted): first run at most 5 ms per case, cached re-run
at most 0.5 ms per case, at most 3 files per case entry; writing linear in the files.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SIZE = (16, 16, 8)


def pipeline(n: int) -> str:
    return f"""import std.io, std.pre
pipeline tiny {{
  cases = phantom(cases={n}, size={SIZE}, seed=3)
  prepared = cases |> window(level=40, width=400) |> rescale(0, 1) |> zscore
  written = write_nifti(prepared.image, "out/*_ct.nii.gz")
}}
"""


class Quiet:
    def step_started(self, *a: object) -> None: ...
    def task_done(self, *a: object) -> None: ...
    def step_finished(self, *a: object) -> None: ...
    def epoch(self, *a: object) -> None: ...


def run_once(n: int, workdir: Path, cache_root: Path) -> tuple[float, float]:
    """One in-process run of the pipeline on `cache_root`: (wall seconds, CPU seconds of
    this process; on a shared, loaded machine the CPU time is the steadier figure)."""
    from medasl.diagnostics import Diagnostics
    from medasl.lower.plan import lower
    from medasl.runtime.cache import Cache
    from medasl.runtime.executor import LocalExecutor, RunOptions
    from medasl.semantics.checker import check_source
    from medasl.source import SourceFile

    diags = Diagnostics()
    graph = check_source(SourceFile("tiny.medas", pipeline(n)), diags).graphs[0]
    assert not diags.has_errors, diags.items
    try:  # as `medasc run` plans it: the optimisation passes (fusion) first, where this version has them
        from medasl.runtime.session import plans

        plan = plans([graph], {})[0]
    except (ImportError, TypeError):
        plan = lower(graph)
    options = RunOptions(cache=Cache(cache_root), out_dir=workdir / "results", workers=1)
    clock, cpu = time.perf_counter(), time.process_time()
    LocalExecutor().run(plan, options, Quiet())
    return time.perf_counter() - clock, time.process_time() - cpu


def operators_only(n: int, out: Path) -> tuple[float, float]:
    """The same work with the operators called directly: generate, window, rescale,
    zscore, write; nothing cached."""
    from medasl.ops import io, pre

    specs = io._list_phantom(cases=n, size=SIZE, seed=3)
    clock, cpu = time.perf_counter(), time.process_time()
    for spec in specs:
        x = io._load_phantom(spec).input
        x = pre.zscore(pre.rescale(pre.window(x, 40, 400), 0, 1))
        io.write_nifti(x, out / f"{spec.id}_ct.nii.gz")
    return time.perf_counter() - clock, time.process_time() - cpu


def count_files(root: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(root))


def write_many(folder: Path, count: int) -> tuple[float, float, float]:
    """(total seconds, ms per file over the first 100, ms per file over the last 100)."""
    import numpy as np

    from medasl.ops import io
    from medasl.runtime.values import Volume

    vol = Volume(np.zeros((2, 2, 2), np.int16), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    times = []
    for i in range(count):
        clock = time.perf_counter()
        io.write_nifti(vol, folder / f"f{i:06d}.nii.gz")
        times.append(time.perf_counter() - clock)
    head, tail = times[:100], times[-100:]
    return sum(times), 1000 * sum(head) / len(head), 1000 * sum(tail) / len(tail)


def _profile_tasks() -> cProfile.Profile:
    """Profile every task the executor runs (tasks run in a step thread, one at a time,
    where a profiler enabled in the main thread would not see them)."""
    from medasl.runtime import executor

    profiler = cProfile.Profile()
    original = executor.run_task

    def profiled(*args: object, **kwargs: object) -> object:
        profiler.enable()
        try:
            return original(*args, **kwargs)  # type: ignore[arg-type]
        finally:
            profiler.disable()

    executor.run_task = profiled  # type: ignore[assignment]
    return profiler


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="cases (default 2000)")
    parser.add_argument("--write", type=int, default=8000, help="files for the writer benchmark (default 8000)")
    parser.add_argument("--profile", action="store_true", help="profile the first run and print the top functions")
    args = parser.parse_args(argv)
    n = args.n
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="medasl-per-case-") as tmp:
        workdir = Path(tmp)
        os.chdir(workdir)
        ops_s, ops_cpu = operators_only(n, workdir / "direct")
        cache_root = workdir / "cache" / "results"
        profiler = _profile_tasks() if args.profile else None
        first_s, first_cpu = run_once(n, workdir, cache_root)
        cached_s, cached_cpu = min(run_once(n, workdir, cache_root) for _ in range(2))
        files = count_files(cache_root)
        entries = sum(1 for p in cache_root.glob("??/*") if p.is_dir())
        written = len(list((workdir / "results" / "out").glob("*.nii.gz")))
        assert written == n, f"{written} files written, expected {n}"
        write_s, head_ms, tail_ms = (0.0, 0.0, 0.0)
        if args.write:
            (workdir / "many").mkdir()
            write_s, head_ms, tail_ms = write_many(workdir / "many", args.write)
    print(f"{n} cases of {SIZE[0]}x{SIZE[1]}x{SIZE[2]} voxels (phantom -> window -> rescale -> zscore -> write_nifti),"
          f" one process, load {load:.2f} before, {os.getloadavg()[0]:.2f} after; wall (CPU) per case:")
    print(f"  operators only          {1000 * ops_s / n:7.2f} ms ({1000 * ops_cpu / n:.2f} ms)")
    print(f"  first run (empty cache) {1000 * first_s / n:7.2f} ms ({1000 * first_cpu / n:.2f} ms)   "
          f"{first_s / ops_s:.1f}x the operators; goal: at most 5 ms")
    print(f"  cached re-run (best 2)  {1000 * cached_s / n:7.2f} ms ({1000 * cached_cpu / n:.2f} ms)   "
          "goal: at most 0.5 ms")
    print(f"  cache files             {files / n:7.2f} per case   ({files} files, {entries} entries, "
          f"{files / max(entries, 1):.2f} files per entry; goal: at most 3 per case entry)")
    if args.write:
        print(f"writing {args.write} tiny NIfTI files into one folder: {write_s:.2f} s, {head_ms:.2f} ms/file for "
              f"the first 100, {tail_ms:.2f} ms/file for the last 100 (goal: linear, the same)")
    if profiler is not None:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
    return 0


if __name__ == "__main__":
    sys.exit(main())
