"""`medasc run` end to end: interrupted runs resume without recomputing anything, runs
sharing one cache compute each result once, an edit re-runs only what is downstream of
it, `--force` and `--seed` do what they say.

Every run is a real `python -m medasl.cli run` process on a pipeline over the generated
`phantom` dataset (no external data). What a run computed is read from its run log
(`<out>/<pipeline>/logs/run-*.jsonl`, one `computed` record per result actually
computed), what it left behind from the cache itself.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from medasl.runtime.cache import MANIFEST_NAME, Cache

PIPELINE = """\
import std.io, std.data, std.pre, std.aug
pipeline prepare {
  cases = phantom(cases=12, size=(80, 80, 56), seed=3)
  folds = split(cases, val=0.25, seed=1)
  prep(x) = x |> resample(spacing=(2.5, 2.5, 3.0) mm) |> window(level=40, width=400) |> rescale(0, 1) |> crop_or_pad((64, 64, 48))
  train_cases = folds.train |> prep |> flip(axis=0, p=0.5) |> rotate(angle=10 deg, p=0.5)
  val_cases = folds.val |> prep
  saved = write_nifti(val_cases.image, "val/*_ct.nii.gz")
  saved_train = write_nifti(train_cases.label, "train/*_seg.nii.gz")
}
"""

N_CASES, N_TRAIN, N_VAL = 12, 9, 3
# What is stored: chains of per-case steps are fused and stored at their end (`train_cases`
# computes resample ... flip, rotate case by case; `val_cases` resample_2 ... crop_or_pad).
# Nothing here trains, so the input of the random steps need not be stored.
TRAIN_BRANCH = ["train_cases", "saved_train"]
VAL_BRANCH = ["val_cases", "saved"]
FUSED_TRAIN = ["resample", "window", "rescale", "crop_or_pad", "flip"]
FUSED_VAL = ["resample_2", "window_2", "rescale_2"]
RANDOM_STEPS = {"train_cases"}  # holds the draws of `flip` and `rotate`
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}


# ----- helpers -------------------------------------------------------------------------


def write_pipeline(folder: Path, text: str = PIPELINE) -> Path:
    path = folder / "prepare.medas"
    path.write_text(text, encoding="utf-8")
    return path


def run_args(file: Path, cache_dir: Path, out: Path, *extra: str, workers: int = 1) -> list[str]:
    return [sys.executable, "-m", "medasl.cli", "run", str(file), "--cache-dir", str(cache_dir), "--out", str(out),
            "--workers", str(workers), *extra]


def medasc(file: Path, cache_dir: Path, out: Path, *extra: str, workers: int = 1) -> subprocess.CompletedProcess:
    done = subprocess.run(run_args(file, cache_dir, out, *extra, workers=workers), capture_output=True, text=True,
                          env=ENV, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def logs(out: Path) -> set[Path]:
    return set((out / "prepare" / "logs").glob("run-*.jsonl"))


def read_log(path: Path) -> list[dict]:
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # the last line of a killed run may be cut
            pass
    return records


def computed(path: Path) -> list[dict]:
    return [r for r in read_log(path) if r["event"] == "computed"]


def logged_run(file: Path, cache_dir: Path, out: Path, *extra: str, workers: int = 1) -> list[dict]:
    """Run to completion; the `computed` records of this run's log."""
    before = logs(out)
    medasc(file, cache_dir, out, *extra, workers=workers)
    (new,) = logs(out) - before
    last = read_log(new)[-1]
    assert (last["event"], last.get("status")) == ("end", "ok")
    return computed(new)


def by_step(records: list[dict]) -> dict[str, dict[str, str]]:
    """step -> {case: entry digest}."""
    found: dict[str, dict[str, str]] = {}
    for r in records:
        found.setdefault(r["step"], {})[r["case"]] = r["entry"]
    return found


def entry_dirs(cache_dir: Path) -> list[Path]:
    root = cache_dir / "results"
    return [p for shard in root.glob("??") if shard.is_dir() for p in shard.iterdir()]


def digests(cache_dir: Path) -> set[str]:
    return {p.name for p in entry_dirs(cache_dir)}


def temp_dirs(cache_dir: Path) -> list[Path]:
    root = cache_dir / "results"
    return [p for folder in (root, root / "index") if folder.is_dir() for p in folder.glob(".tmp-*")]


def assert_no_partial_entry(cache_dir: Path) -> None:
    cache = Cache(cache_dir / "results")
    for path in entry_dirs(cache_dir):
        assert (path / MANIFEST_NAME).is_file(), f"entry {path.name} has no manifest"
        assert cache.lookup(path.name, verify=True) is not None, f"entry {path.name} is damaged"
    assert {e.digest for e in cache.entries()} == digests(cache_dir)


def written_files(out: Path) -> dict[str, Path]:
    base = out / "prepare"
    return {str(p.relative_to(base)): p for p in sorted(base.rglob("*.nii.gz")) if not p.name.startswith(".tmp-")}


def out_leftovers(out: Path) -> list[Path]:
    """Temporary files of writers (`.tmp-<pid>-<random>-<name>`), left by a killed one."""
    return sorted((out / "prepare").rglob(".tmp-*"))


def assert_same_images(a: Path, b: Path) -> None:
    import SimpleITK as sitk  # noqa: N813 (the alias SimpleITK documents)

    one, two = sitk.ReadImage(str(a)), sitk.ReadImage(str(b))
    assert one.GetSize() == two.GetSize() and one.GetPixelID() == two.GetPixelID(), (a, b)
    assert one.GetSpacing() == two.GetSpacing() and one.GetOrigin() == two.GetOrigin(), (a, b)
    assert one.GetDirection() == two.GetDirection(), (a, b)
    first, second = sitk.GetArrayFromImage(one), sitk.GetArrayFromImage(two)
    assert first.dtype == second.dtype and first.tobytes() == second.tobytes(), f"{a} and {b} differ"


def assert_same_outputs(a: Path, b: Path) -> None:
    files_a, files_b = written_files(a), written_files(b)
    assert sorted(files_a) == sorted(files_b)
    assert len(files_a) == N_CASES
    for name in files_a:
        assert_same_images(files_a[name], files_b[name])


def kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout=30)


def killed_run(file: Path, cache_dir: Path, out: Path, workers: int, after: int, delay: float) -> Path:
    """Start a run and SIGKILL its whole process group (main process and workers) once its
    log shows `after` computed results, plus `delay` seconds: a point in the middle of the
    run, wherever the machine's speed puts it. Returns the killed run's log."""
    before = logs(out)
    process = subprocess.Popen(run_args(file, cache_dir, out, workers=workers), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env=ENV, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        log = None
        while process.poll() is None and time.monotonic() < deadline:
            new = logs(out) - before
            if new:
                log = next(iter(new))
                if len(computed(log)) >= after:
                    break
            time.sleep(0.002)
        time.sleep(delay)
    finally:
        kill_group(process)
    new = logs(out) - before
    assert new, "the run was killed before it wrote its log"
    return next(iter(new))


def preview_of(file: Path, cache_dir: Path, out: Path, seed: int = 0, level: int = 2) -> dict:
    from medasl.runtime.executor import RunOptions, preview
    from medasl.runtime.session import plans
    from medasl.semantics.checker import check_source
    from medasl.source import SourceFile

    result = check_source(SourceFile.read(file))
    assert not result.diagnostics.has_errors
    (plan,) = plans(result.graphs, {}, level)  # the plan `medasc run -O<level>` runs
    return preview(plan, RunOptions(Cache(cache_dir / "results"), (out / plan.pipeline).resolve(), seed=seed))


def all_cached(previews: dict) -> bool:
    """Every stored step cached, every fused step unchanged."""
    fused = {step for step, p in previews.items() if p.status == "fused"}
    return (fused == set(FUSED_TRAIN + FUSED_VAL)
            and all(set(previews[step].counts) == {"unchanged"} for step in fused)
            and all(p.status == "cached" for step, p in previews.items() if p.tasks and step not in fused))


# ----- 1. kill at random points, resume ------------------------------------------------


def test_killed_runs_resume_without_recomputing_and_match_an_uninterrupted_run(tmp_path: Path) -> None:
    file = write_pipeline(tmp_path)
    out = tmp_path / "out"

    # the uninterrupted reference, with the same --out (written files are part of the
    # writers' keys), moved aside afterwards
    reference = by_step(logged_run(file, tmp_path / "ref-cache", out))
    total = sum(len(cases) for cases in reference.values())
    assert total == N_CASES + 2 * N_TRAIN + 2 * N_VAL
    shutil.move(out, tmp_path / "ref-out")
    assert_no_partial_entry(tmp_path / "ref-cache")

    # several kills in a row on one cache, at seeded random points spread over the run,
    # with and without worker processes
    cache_dir = tmp_path / "cache"
    draw = random.Random(20261127)
    progress = []
    for workers in (1, 2, 1, 2):
        before = digests(cache_dir)
        remaining = total - len(before)
        after = max(1, int(remaining * draw.uniform(0.1, 0.45)))
        log = killed_run(file, cache_dir, out, workers, after=after, delay=draw.uniform(0.0, 0.03))
        assert all(r["event"] != "end" for r in read_log(log)), "the run ended before it was killed"
        # a killed run computed nothing that was already there before it started
        assert computed(log), "the run was killed before it computed anything"
        assert not before & {r["entry"] for r in computed(log)}
        assert_no_partial_entry(cache_dir)
        progress.append(len(digests(cache_dir)))
    committed = digests(cache_dir)
    assert 0 < len(committed) < total, f"the kills did not land in the middle of the run: {progress}"
    print(f"results committed after each kill: {progress} of {total}")

    # leftovers of killed writers are removed by `medasc cache gc`; entries are kept
    leftovers = temp_dirs(cache_dir)
    gc = subprocess.run([sys.executable, "-m", "medasl.cli", "cache", "--cache-dir", str(cache_dir), "gc"],
                        capture_output=True, text=True, env=ENV, timeout=60)
    assert gc.returncode == 0, gc.stdout + gc.stderr
    assert temp_dirs(cache_dir) == []
    for path in leftovers:
        assert f"removed temp dir {path.name}" in gc.stdout
    assert digests(cache_dir) == committed

    # the resumed run computes exactly what is missing
    resumed = logged_run(file, cache_dir, out, workers=2)
    assert not committed & {r["entry"] for r in resumed}, "the resume recomputed a committed result"
    assert_no_partial_entry(cache_dir)
    assert len(resumed) == total - len(committed)

    # identical to the uninterrupted run: the same entries and the same written images
    assert digests(cache_dir) == digests(tmp_path / "ref-cache")
    assert_same_outputs(out, tmp_path / "ref-out")

    # and a further run computes nothing
    assert logged_run(file, cache_dir, out, workers=2) == []


def test_a_writer_killed_mid_write_leaves_no_temporary_file_after_the_resume(tmp_path: Path) -> None:
    file = write_pipeline(tmp_path)
    cache_dir, out = tmp_path / "cache", tmp_path / "out"
    # a run whose first writer is killed between writing its temporary file and renaming it
    killer = ("import os, signal, sys\n"
              "import medasl.ops.io as io\n"
              "real = os.replace\n"
              "def replace(src, dst, *args):\n"
              "    if str(dst).endswith('.nii.gz'):\n"
              "        os.kill(os.getpid(), signal.SIGKILL)\n"
              "    real(src, dst, *args)\n"
              "io.os.replace = replace\n"
              "from medasl.cli import main\n"
              "sys.argv = ['medasc'] + sys.argv[1:]\n"
              "main()\n")
    done = subprocess.run([sys.executable, "-c", killer, *run_args(file, cache_dir, out)[3:]], env=ENV,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stdout + done.stderr
    assert out_leftovers(out), "the writer was not killed mid-write"
    gc = subprocess.run([sys.executable, "-m", "medasl.cli", "cache", "--cache-dir", str(cache_dir), "gc"],
                        capture_output=True, text=True, env=ENV, timeout=60)
    assert gc.returncode == 0, gc.stdout + gc.stderr
    logged_run(file, cache_dir, out)
    assert len(written_files(out)) == N_CASES
    assert out_leftovers(out) == []


# ----- 2. two runs at once on one cache --------------------------------------------------


def test_concurrent_runs_on_one_cache_compute_each_result_once(tmp_path: Path) -> None:
    file = write_pipeline(tmp_path)
    cache_dir = tmp_path / "cache"
    outs = [tmp_path / "out-a", tmp_path / "out-b"]
    processes = [subprocess.Popen(run_args(file, cache_dir, out, workers=workers), stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, env=ENV)
                 for out, workers in zip(outs, (1, 2), strict=True)]
    for process in processes:
        output, _ = process.communicate(timeout=120)
        assert process.returncode == 0, output
    runs = []
    for out in outs:
        (log,) = logs(out)
        assert read_log(log)[-1]["status"] == "ok"
        runs.append(computed(log))
    entries = [[r["entry"] for r in records] for records in runs]
    for one in entries:
        assert len(one) == len(set(one))
    assert not set(entries[0]) & set(entries[1]), "a result was computed by both runs"
    assert set(entries[0]) | set(entries[1]) == digests(cache_dir)
    # between them, every result of the pipeline was computed once (the writers write
    # to different folders, so each run has its own)
    steps = by_step(runs[0] + runs[1])
    assert len(steps["cases"]) == N_CASES
    assert set(steps["train_cases"]) == set(steps["saved_train"]) and len(steps["train_cases"]) == N_TRAIN
    assert len({r["case"] for r in runs[0] if r["step"] == "saved_train"}) == N_TRAIN
    assert len({r["case"] for r in runs[1] if r["step"] == "saved_train"}) == N_TRAIN
    assert_no_partial_entry(cache_dir)
    assert_same_outputs(outs[0], outs[1])


# ----- 3. an edit re-runs what is downstream of it --------------------------------------


def test_changing_a_parameter_reruns_only_the_steps_downstream(tmp_path: Path) -> None:
    """At -O0, where every operator is a step of its own (the explanations name them)."""
    file = write_pipeline(tmp_path)
    cache_dir, out = tmp_path / "cache", tmp_path / "out"
    first = by_step(logged_run(file, cache_dir, out, "-O0"))
    assert all_cached(preview_of(file, cache_dir, out, level=0))

    write_pipeline(tmp_path, PIPELINE.replace("window(level=40", "window(level=50"))
    previews = preview_of(file, cache_dir, out, level=0)
    changed = {"train_cases", "saved_train", "val_cases", "saved"}
    changed_fused = {"window", "rescale", "crop_or_pad", "flip", "window_2", "rescale_2"}
    assert previews["cases"].status == "cached", previews["cases"]
    for step in ("resample", "resample_2"):
        assert previews[step].status == "fused" and set(previews[step].counts) == {"unchanged"}, previews[step]
    for step in changed | changed_fused:
        assert previews[step].status in ("stale", "fused"), (step, previews[step])
        assert sum(previews[step].counts.values()) == previews[step].counts["stale"]
    for step in ("window", "window_2"):
        assert any("param `level` changed: 40 -> 50" in r for r in previews[step].reasons), \
            previews[step].reasons
    for step in (changed | changed_fused) - {"window", "window_2"}:
        assert all(r.startswith("input ") for r in previews[step].reasons), (step, previews[step].reasons)

    table = subprocess.run(run_args(file, cache_dir, out, "-O0", "--dry-run"), capture_output=True, text=True, env=ENV,
                           timeout=60)
    assert table.returncode == 0, table.stderr
    rows = {line.split("│")[1].strip(): line for line in table.stderr.splitlines() if line.count("│") > 3}
    assert "stale" in rows["window"] and "level" in rows["window"]
    assert "unchanged" in rows["resample"] and "stale" in rows["saved"]
    assert digests(cache_dir) == set().union(*(set(cases.values()) for cases in first.values()))

    # the run computes exactly the stale steps, every case of them
    second = by_step(logged_run(file, cache_dir, out, "-O0"))
    assert set(second) == changed
    for step in changed:
        assert set(second[step]) == set(first[step])
        assert not set(second[step].values()) & set(first[step].values())


# ----- 4. --force ---------------------------------------------------------------------


def test_force_recomputes_the_step_and_everything_downstream_only(tmp_path: Path) -> None:
    """At -O0, as above; at -O2 `--force window` forces the fused step holding it."""
    file = write_pipeline(tmp_path)
    cache_dir, out = tmp_path / "cache", tmp_path / "out"
    first = by_step(logged_run(file, cache_dir, out, "-O0"))
    images = {name: path.read_bytes() for name, path in written_files(out).items()}

    previews = preview_of(file, cache_dir, out, level=0)
    assert all_cached(previews)
    table = subprocess.run(run_args(file, cache_dir, out, "-O0", "--dry-run", "--force", "window"), capture_output=True,
                           text=True, env=ENV, timeout=60)
    assert table.returncode == 0, table.stderr
    rows = {line.split("│")[1].strip(): line for line in table.stderr.splitlines() if line.count("│") > 3}
    assert "forced" in rows["window"] and "forced" in rows["saved_train"]
    assert "unchanged" in rows["resample"] and "unchanged" in rows["window_2"]

    forced = by_step(logged_run(file, cache_dir, out, "-O0", "--force", "window"))
    downstream = ["train_cases", "saved_train"]  # window ... flip are computed inside train_cases
    assert sorted(forced) == sorted(downstream)
    for step in downstream:  # the same keys, computed again, with the same results
        assert forced[step] == first[step]
    assert_no_partial_entry(cache_dir)
    for name, path in written_files(out).items():
        assert path.read_bytes() == images[name]
    assert logged_run(file, cache_dir, out, "-O0") == []


# ----- 5. --seed --------------------------------------------------------------------


def test_the_seed_decides_the_random_draws_and_nothing_else(tmp_path: Path) -> None:
    file = write_pipeline(tmp_path)
    out = tmp_path / "out"
    runs = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 7)):
        runs[name] = by_step(logged_run(file, tmp_path / f"cache-{name}", out, "--seed", str(seed),
                                        workers=2 if name == "b" else 1))
        shutil.move(out, tmp_path / f"out-{name}")

    assert runs["a"] == runs["b"]
    assert digests(tmp_path / "cache-a") == digests(tmp_path / "cache-b")
    assert_same_outputs(tmp_path / "out-a", tmp_path / "out-b")

    unaffected = ["cases", *VAL_BRANCH]
    for step in unaffected:
        assert runs["c"][step] == runs["a"][step], step
    for step in (*RANDOM_STEPS, "saved_train"):
        assert set(runs["c"][step]) == set(runs["a"][step])
        assert not set(runs["c"][step].values()) & set(runs["a"][step].values()), step

    # the drawn parameters differ for some case, and so do the augmented arrays
    def drawn(cache_dir: Path, step: str) -> dict[str, object]:
        cache = Cache(cache_dir / "results")
        found = {}
        for case, digest in runs["a" if "cache-a" in str(cache_dir) else "c"][step].items():
            entry = cache.lookup(digest, verify=True)
            assert entry is not None
            found[case] = entry.manifest["info"]["drawn"]
        return found

    for step in RANDOM_STEPS:
        assert drawn(tmp_path / "cache-a", step) != drawn(tmp_path / "cache-c", step), step
    a_files, c_files = written_files(tmp_path / "out-a"), written_files(tmp_path / "out-c")
    assert sorted(a_files) == sorted(c_files)
    for name in a_files:
        if name.startswith("val/"):
            assert_same_images(a_files[name], c_files[name])
    differ = [name for name in a_files if name.startswith("train/")
              and not np.array_equal(*(_array(f[name]) for f in (a_files, c_files)))]
    assert differ, "another seed drew the same augmentation for every training case"


def _array(path: Path) -> np.ndarray:
    import SimpleITK as sitk  # noqa: N813

    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
