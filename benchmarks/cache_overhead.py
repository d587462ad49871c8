"""What does the cache cost a run, and how fast is a run that is fully cached?

The chain of issue 3 (load a 512x512x160 int16 CT at 0.7x0.7x2.5 mm, resample to
1.5x1.5x2.5 mm, window [-100, 240], rescale to [0, 1], z-score, crop/pad to 256x256x160,
random flip, random 10-degree rotation) on N synthetic CT volumes written as NIfTI, run
three ways in this one process:

- direct: the medasl.ops functions called in sequence on each volume, nothing stored
  (the same operators the executor calls: the difference is the executor and cache);
- run: `medasc run`'s executor on a fresh cache, every step's result of every case
  committed to the cache (written, hashed, manifest, atomic rename);
- cached: the same run again, everything found in the cache.

Then `medasc run` of examples/preprocess.medas in a fresh interpreter, cached, against
the interpreter start alone (`python -c "import medasl"`), as a user would see it.

    python benchmarks/cache_overhead.py            # N = 3 volumes, 3 repeats
    python benchmarks/cache_overhead.py --n 2 --repeat 1

Goals (issue 3, printed, not asserted): the cache adds under 5% to a run; a fully cached
re-run finishes in under a second plus interpreter start.

Last, what verifying the cache's content costs (issue 10): a real chest CT (the 30-slice
512x512 DICOM series of the shared data, resampled to 0.65x0.65x2 mm and windowed twice:
about 370 MB stored) run once, then fully cached as a fresh process would (nothing
remembered), with every stored file's sha256 compared (what runs do) and with sizes
only (what they did before), plus the hashing speed alone. Skipped without the shared data.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.preprocess import LEVEL, MAX_ANGLE, SIZE_OUT, SPACING_IN, SPACING_OUT, WIDTH, synthetic_ct  # noqa: E402

PIPELINE = f"""import std.io, std.pre, std.aug
pipeline chain {{
  cts = images("cts", "*.nii.gz") as Dataset<Image[3, CT]>
  prepared = cts |> resample(spacing={SPACING_OUT} mm) |> window(level={LEVEL}, width={WIDTH})
                 |> rescale(0, 1) |> zscore |> crop_or_pad({SIZE_OUT})
                 |> flip(axis=0, p=0.5) |> rotate(angle={MAX_ANGLE} deg, p=1.0)
}}
"""


def write_volumes(folder: Path, n: int) -> None:
    from medasl.ops import io
    from medasl.runtime.values import Volume

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        array = synthetic_ct(seed=1000 + i)
        io.write_nifti(Volume(array, SPACING_IN, (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1), modality="CT"),
                       folder / f"ct{i:02d}.nii.gz")


def direct(folder: Path) -> None:
    """The chain with the operators called directly; the random draws as the run makes them."""
    import numpy as np

    from medasl.ops import aug, io, pre
    from medasl.runtime.executor import node_seed
    from medasl.runtime.tasks import case_number

    for path in sorted(folder.glob("*.nii.gz")):
        case = path.name[: -len(".nii.gz")]
        x = io.nifti(path)
        x = pre.crop_or_pad(pre.zscore(pre.rescale(pre.window(pre.resample(x, SPACING_OUT), LEVEL, WIDTH), 0, 1)),
                            SIZE_OUT)
        x, _ = aug.flip(x, axis=0, p=0.5, rng=np.random.default_rng([node_seed(0, "flip"), case_number(case)]))
        x, _ = aug.rotate(x, angle=MAX_ANGLE, p=1.0,
                          rng=np.random.default_rng([node_seed(0, "prepared"), case_number(case)]))


def run_once(workdir: Path, cache_dir: Path, text: str = PIPELINE) -> float:
    """One in-process run of the pipeline `text` on `cache_dir`; its wall time."""
    from medasl.diagnostics import Diagnostics
    from medasl.lower.plan import lower
    from medasl.runtime.cache import Cache
    from medasl.runtime.executor import LocalExecutor, RunOptions
    from medasl.semantics.checker import check_source
    from medasl.source import SourceFile

    class Quiet:
        def step_started(self, *a: object) -> None: ...
        def task_done(self, *a: object) -> None: ...
        def step_finished(self, *a: object) -> None: ...

    diags = Diagnostics()
    graph = check_source(SourceFile("chain.medas", text), diags).graphs[0]
    assert not diags.has_errors, diags.items
    plan = lower(graph)
    options = RunOptions(cache=Cache(cache_dir / "results"), out_dir=workdir / "out", workers=1)
    clock = time.perf_counter()
    LocalExecutor().run(plan, options, Quiet())
    return time.perf_counter() - clock


REAL_CT = ROOT.parent / "shared" / "data" / "lung_ct_tumor_lungpetctdx" / "dicom"
REAL_PIPELINE = f"""import std.io, std.pre
pipeline real {{
  series = dicom_series("{REAL_CT}") as DicomSeries[CT]
  ct = dicom_to_image(series)
  fine = ct |> resample(spacing=(0.65, 0.65, 2.0) mm)
  lungs = fine |> window(level=-600, width=1500)
  soft = fine |> window(level=40, width=400)
}}
"""


def as_a_fresh_process() -> None:
    """Forget the manifests and file digests this process has seen, as a new run would."""
    from medasl.runtime import cache

    cache._CHECKED = cache._CheckedFiles()
    cache._MANIFESTS = cache._ManifestMemo()


def sizes_only() -> contextlib.AbstractContextManager[None]:
    """Lookups that compare sizes only, as before issue 10."""
    from medasl.runtime import cache

    @contextlib.contextmanager
    def patched() -> Iterator[None]:
        real = cache._CheckedFiles.problem
        cache._CheckedFiles.problem = lambda self, path, output, verify: real(self, path, output, False)  # type: ignore[method-assign]
        try:
            yield
        finally:
            cache._CheckedFiles.problem = real  # type: ignore[method-assign]

    return patched()


def verification_cost(workdir: Path, repeat: int) -> tuple[float, int, float, float, float] | None:
    """(first run s, stored bytes, cached run s verifying content, cached run s comparing sizes,
    sha256 MB/s over the stored files), medians; None without the shared data."""
    from medasl.runtime.digests import sha256_file

    if not REAL_CT.is_dir():
        return None
    cache_dir = workdir / "real-cache"
    first = run_once(workdir, cache_dir, REAL_PIPELINE)
    files = [p for p in (cache_dir / "results").glob("??/*/*") if p.is_file()]
    stored = sum(p.stat().st_size for p in files)
    verified, sized, speeds = [], [], []
    for _ in range(repeat):
        as_a_fresh_process()
        verified.append(run_once(workdir, cache_dir, REAL_PIPELINE))
        as_a_fresh_process()
        with sizes_only():
            sized.append(run_once(workdir, cache_dir, REAL_PIPELINE))
        clock = time.perf_counter()
        for path in files:
            sha256_file(path)
        speeds.append(stored / 1e6 / (time.perf_counter() - clock))
    return first, stored, statistics.median(verified), statistics.median(sized), statistics.median(speeds)


def cold_cached_example(cache_dir: Path, out: Path) -> tuple[float, float]:
    """(seconds of a cached `medasc run examples/preprocess.medas`, seconds of `import medasl`), fresh interpreters."""
    command = [sys.executable, "-m", "medasl.cli", "run", str(ROOT / "examples" / "preprocess.medas"),
               "--cache-dir", str(cache_dir), "--out", str(out)]
    subprocess.run(command, check=True, capture_output=True)  # fills the cache
    runs, starts = [], []
    for _ in range(3):
        clock = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        runs.append(time.perf_counter() - clock)
        clock = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import medasl"], check=True, capture_output=True)
        starts.append(time.perf_counter() - clock)
    return statistics.median(runs), statistics.median(starts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=3, help="volumes (default 3)")
    parser.add_argument("--repeat", type=int, default=3, help="repeats of each measurement (default 3)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="medasl-bench-") as tmp:
        workdir = Path(tmp)
        import os

        os.chdir(workdir)
        write_volumes(workdir / "cts", args.n)
        direct_s, run_s, cached_s = [], [], []
        for r in range(args.repeat):
            clock = time.perf_counter()
            direct(workdir / "cts")
            direct_s.append(time.perf_counter() - clock)
            cache_dir = workdir / f"cache{r}"
            run_s.append(run_once(workdir, cache_dir))
            cached_s.append(run_once(workdir, cache_dir))
        example_s, start_s = cold_cached_example(workdir / "example-cache", workdir / "example-out")
        integrity = verification_cost(workdir, args.repeat)
    d, u, c = statistics.median(direct_s), statistics.median(run_s), statistics.median(cached_s)
    print(f"chain of issue 3 on {args.n} volume(s) of 512x512x160, median of {args.repeat}:")
    print(f"  direct (operators only)   {d:7.2f} s   {d / args.n:.2f} s/volume")
    print(f"  run, empty cache          {u:7.2f} s   {u / args.n:.2f} s/volume   cache overhead {100 * (u - d) / d:+.1f}%"
          "   (goal: under +5%)")
    print(f"  run, fully cached         {c:7.2f} s")
    print("examples/preprocess.medas, fully cached, fresh interpreter (median of 3):")
    print(f"  medasc run                {example_s:7.2f} s")
    print(f"  python -c 'import medasl' {start_s:7.2f} s   difference {example_s - start_s:.2f} s   (goal: under 1 s)")
    if integrity is None:
        print(f"verifying the cache: skipped ({REAL_CT} is not there)")
        return 0
    first, stored, verified, sized, speed = integrity
    print(f"verifying the cache on a real chest CT (512x512x30 DICOM, {stored / 1e6:.0f} MB stored), "
          f"median of {args.repeat}:")
    print(f"  run, empty cache          {first:7.2f} s   (digests taken while writing: nothing read back)")
    print(f"  run, cached, sizes only   {sized:7.2f} s   (before issue 10)")
    print(f"  run, cached, verified     {verified:7.2f} s   each stored file hashed once: "
          f"+{verified - sized:.2f} s, {1000 * (verified - sized) / (stored / 1e6) * 1e3:.0f} ms per GB")
    print(f"  sha256 alone              {speed:7.0f} MB/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
