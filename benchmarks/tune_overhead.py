"""What `medasc tune` costs beyond its trials' compute, and what its shared cache saves.

    python benchmarks/tune_overhead.py [--trials 8] [--algo rand]

1. A study of `--trials` trials of a small segmentation pipeline on generated CT
   phantoms (a shared preprocessing chain, then a tiny 3-D U-Net trained for 1-3 epochs)
   is run in this process, as `medasc tune` runs it, on an empty cache. The study's own
   cost per trial is its wall time minus the time its trials spent in the executor:
   checking each trial again, planning, proposing (hyperopt), saving study.json and
   reading the objective. The report (HTML and three figures) is drawn once per
   command and is timed on its own. Goal: under 0.5 s per trial.
2. The same trials as separate `medasc run FILE --set ...` commands, each on an empty
   cache (a fresh process each, as a shell loop would run them): the time the shared
   cache saves (the preprocessing, computed once for the study instead of once per run).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PIPELINE = """\
import std.io, std.pre, std.nets, std.losses, std.train, std.metrics, std.post

pipeline bench {
  param lr = 1e-2 search loguniform(1e-3, 1e-1)
  param epochs: int = 2 search int(1, 3)
  param loss_fn = dice_ce search choice(dice_ce, dice_loss)
  cases = phantom(cases=8, size=(96, 96, 64), seed=5)
          |> resample(spacing=(3.0, 3.0, 3.0) mm) |> window(level=40, width=400) |> rescale(0, 1)
          |> crop_or_pad((64, 64, 48))
  fit = train(unet3d(in_channels=1, classes=2, channels=(4, 8, 16, 32, 64)), cases, loss=loss_fn,
              optimizer=adam(lr=lr), epochs=epochs, batch=2)
  pred = infer(fit, cases.image) |> argmax
  score = dice(pred, cases.label) maximize
}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--algo", default="rand", choices=("tpe", "rand", "anneal"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        file = root / "bench.medas"
        file.write_text(PIPELINE)
        study_seconds, report_seconds, study = _study(file, root, args.trials, args.algo)
        executor = sum(t.seconds - t.overhead for t in study.trials)
        overhead = (study_seconds - executor) / len(study.trials)
        print(f"study of {len(study.trials)} trials: {study_seconds:.2f} s, of which the trials' compute "
              f"(executor) {executor:.2f} s")
        print(f"the study's own cost: {overhead:.3f} s per trial (goal < 0.5 s); of it checking and planning "
              f"{sum(t.overhead for t in study.trials) / len(study.trials):.3f} s per trial")
        print(f"the report (HTML and three figures, once per command): {report_seconds:.2f} s")
        separate = 0.0
        for trial in study.trials:
            command = [sys.executable, "-m", "medasl.cli", "run", str(file), "--cache-dir",
                       str(root / f"cache-{trial.number}"), "--out", str(root / f"run-{trial.number}")]
            for name, text in trial.sets.items():
                command += ["--set", f"{name}={text}"]
            clock = time.perf_counter()
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            separate += time.perf_counter() - clock
            if done.returncode not in (0, 1):
                raise SystemExit(f"{shlex.join(command)} failed:\n{done.stderr}")
        print(f"the same trials as separate `medasc run` commands on empty caches: {separate:.2f} s; "
              f"the study took {study_seconds:.2f} s: {separate - study_seconds:.2f} s saved "
              f"({separate / study_seconds:.1f}x)")
        print(json.dumps({"trials": len(study.trials), "study_s": round(study_seconds, 3),
                          "executor_s": round(executor, 3), "overhead_per_trial_s": round(overhead, 4),
                          "report_s": round(report_seconds, 3), "separate_runs_s": round(separate, 3)}))


def _study(file: Path, root: Path, trials: int, algo: str) -> tuple[float, float, object]:
    from medasl.diagnostics import Diagnostics
    from medasl.semantics.checker import check_source
    from medasl.source import SourceFile
    from medasl.tune.driver import TuneRequest, prepare, run_study
    from medasl.tune.report import write_report

    import_clock = time.perf_counter()
    import torch  # noqa: F401 - imported before timing: `medasc tune` imports it once, not per trial

    print(f"(importing torch: {time.perf_counter() - import_clock:.1f} s, once per command)")
    clock = time.perf_counter()
    source = SourceFile.read(file)
    result = check_source(source, Diagnostics())
    request = TuneRequest(str(file), trials=trials, algo=algo, out=root / "study", cache=root / "cache")
    prepared = prepare(request, result.graphs, source)
    run_study(prepared, lambda line: None)
    study_seconds = time.perf_counter() - clock
    clock = time.perf_counter()
    write_report(prepared)
    return study_seconds, time.perf_counter() - clock, prepared.study


if __name__ == "__main__":
    main()
