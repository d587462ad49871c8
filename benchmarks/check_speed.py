"""How fast is `medasc check`? Cold (a fresh interpreter per run, as a user or an editor
runs it) and in-process (the checker alone), on the examples and on generated pipelines
of 10, 100, 1000 and 5000 operators.

    python benchmarks/check_speed.py                 # N = 5 runs per measurement
    python benchmarks/check_speed.py --repeat 10 --sizes 10,100,1000,5000,10000
    python benchmarks/check_speed.py --profile       # + cProfile of the largest sizes
    python benchmarks/check_speed.py --keep out/     # keep the generated .medas files

Goals (printed, not asserted: timing thresholds do not belong in tests):
an example checks in < 0.4 s cold, 1000 operators in < 1 s, and the time grows
linearly with the number of operators.
"""

from __future__ import annotations

import argparse
import cProfile
import importlib.util
import io
import math
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "SimpleITK", "monai", "numpy", "scipy", "rich")
GOAL_EXAMPLE_COLD = 0.4
GOAL_1000_COLD = 1.0

# ----- generated pipelines ------------------------------------------------------------

IMPORTS = ("import std.io, std.data, std.pre, std.aug, std.nets, std.losses, std.train\n"
           "import std.post, std.metrics, std.viz, std.report\n")

# Operators that keep a dataset of (CT image, label map) pairs a dataset of such pairs:
# geometry moves image and label together, intensity changes the image only.
SPATIAL = (
    "reorient(to=RAS)",
    "resample(spacing=({a}, {a}, {b}) mm)",
    "crop_foreground(margin={m})",
    "flip(axis={axis})",
    "rotate(angle={deg} deg)",
    "affine(scale=0.{s}, shear={deg} deg)",
    "elastic(sigma={m} mm, magnitude=4 mm)",
    "random_rescale(scale=(0.9, 1.1))",
)
INTENSITY = (
    "window(level={level}, width={width})",
    "clip(low=-1000, high={width})",
    "rescale(low=0.0, high=1.0)",
    "zscore",
    "percentile_rescale(lower=0.5, upper=99.5)",
    "gaussian_noise(std=0.0{s})",
    "gaussian_blur(sigma=0.{s} mm)",
    "gamma(log_gamma=0.{s})",
    "contrast(factor=0.2{s})",
    "brightness(factor=0.1{s})",
    "bias_field(order={axis})",
)
POST = ("largest_component", "fill_holes", "remove_small(min_size={m}0)", "smooth(radius=1, operation=closing)")
NETS = ("unet3d(classes=2, dropout=0.{s})", "vnet(classes=2)", "segresnet(classes=2, filters=16)")
LOSSES = ("dice_ce", "dice_loss", "dice_focal", "tversky")


def _fill(template: str, k: int) -> str:
    return template.format(a=("1.0", "1.25", "1.5")[k % 3], b=("1.5", "2.0", "2.5")[k % 3], m=k % 7 + 1,
                           axis=k % 3, deg=5 + k % 20, s=k % 9 + 1, level=-600 + (k * 37) % 700,
                           width=300 + (k * 53) % 1500)


def _chain(k: int, length: int) -> list[str]:
    """`length` operators, alternating geometry and intensity, varied by `k`."""
    out = []
    for j in range(length):
        table = SPATIAL if (k + j) % 2 else INTENSITY
        out.append(_fill(table[(k * 7 + j * 3) % len(table)], k + j))
    return out


def _light_branch(i: int, chain: int) -> list[str]:
    """One CT volume: preprocessing, a body mask, a figure (chain + 4 operators)."""
    ops = _chain(i, chain)
    lines = [f'ct{i} = nifti("scans/ct{i}.nii.gz") as Image[3, CT]']
    previous = f"ct{i}"
    for j in range(0, len(ops), 3):
        lines.append(f"vol{i}_{j} = {previous} |> " + " |> ".join(ops[j:j + 3]))
        previous = f"vol{i}_{j}"
    lines.append(f"mask{i} = {previous} |> body_mask")
    lines.append(f"show overlay({previous}, mask{i})")
    return lines


def _full_branch(i: int, chain: int, objective: bool) -> list[str]:
    """A segmentation study: data, split, preprocessing (a transform, inlined at each
    use), augmentation, a network, training, inference, post-processing, metrics,
    figures and reports. About 30 + chain operators."""
    ops = _chain(i, chain)
    net = _fill(NETS[i % len(NETS)], i)
    window = "(128, 128, 64)" if "segresnet" in net else "(128, 128, 96)"
    lines = [
        f'cases{i} = folder("site{i}", image="img-*.nii.gz", label="seg-*.nii.gz")'
        f" as Dataset<Pair<Image[3, CT], LabelMap[3, 2]>>",
        f"parts{i} = split(cases{i}, val=0.2, seed={i})",
        f"prep{i}(x) = x |> " + " |> ".join(_fill(t, i) for t in (SPATIAL[1], INTENSITY[0], INTENSITY[2])),
    ]
    previous = f"parts{i}.train |> prep{i}"
    for j in range(0, len(ops), 4):
        lines.append(f"aug{i}_{j} = {previous} |> " + " |> ".join(ops[j:j + 4]))
        previous = f"aug{i}_{j}"
    lines += [
        f"patches{i} = {previous} |> patches(size=(96, 96, 64), per_case={i % 4 + 1})",
        f"net{i} = {net}",
        f"fit{i} = train(net{i}, patches{i}, loss={LOSSES[i % len(LOSSES)]}, optimizer=adam(lr),"
        f" schedule=poly(), epochs=epochs, batch=2)",
        f"pred{i} = infer(fit{i}, parts{i}.val.image |> prep{i}, window={window}, overlap=0.5)",
        f"labels{i} = pred{i} |> argmax |> " + " |> ".join(_fill(p, i) for p in POST[: 1 + i % len(POST)])
        + f" |> resample_to(parts{i}.val.image)",  # back onto the original scans before comparing
        f"dice{i} = dice(labels{i}, parts{i}.val.label)" + (" maximize" if objective else ""),
        f"hd{i} = hd95(labels{i}, parts{i}.val.label)",
        f"nsd{i} = surface_dice(labels{i}, parts{i}.val.label, tolerance=2 mm)",
        f"show loss_curve(fit{i}), overlay(parts{i}.val.image, labels{i}), metrics_table(hd{i})",
        f'report excel("dice{i}.xlsx", dice{i}), csv("nsd{i}.csv", nsd{i})',
    ]
    return lines


def generate(target: int, chain: int = 12) -> str:
    """A pipeline of about `target` operators: light branches up to 60 operators, then
    full segmentation branches (one in four stays light)."""
    body: list[str] = []
    if target <= 60:
        body += _light_branch(0, max(1, target - 4))
        uses_training = False
    else:
        body += ["param lr = 1e-3 search loguniform(1e-5, 1e-2)",
                 "param epochs: int = 100 search int(10, 500)"]
        estimate, i = 2, 0
        while estimate < target:
            if i % 4 == 3:
                body += _light_branch(i, chain)
                estimate += chain + 4
            else:
                body += _full_branch(i, chain, objective=(i == 0))
                estimate += chain + 30
            i += 1
        body.append(f'report html("report.html", title="{target} operators")')
        body.append("resources gpus=1, memory=32 GB, workers=8")
        uses_training = True
    imports = IMPORTS if uses_training else "import std.io, std.pre, std.aug, std.viz\n"
    return (f"# generated by benchmarks/check_speed.py: about {target} operators\n{imports}\n"
            f"pipeline generated_{target} {{\n" + "".join(f"  {line}\n" for line in body) + "}\n")


# ----- measuring ------------------------------------------------------------------------


@dataclass
class Row:
    label: str
    ops: int | None = None
    cold: list[float] = field(default_factory=list)
    warm: list[float] = field(default_factory=list)
    first: float | None = None  # first check in a process: grammar and stdlib loaded
    heavy: list[str] = field(default_factory=list)

    @property
    def cold_best(self) -> float:
        return min(self.cold)

    @property
    def cold_median(self) -> float:
        return statistics.median(self.cold)

    @property
    def warm_best(self) -> float | None:
        return min(self.warm) if self.warm else None

    @property
    def warm_median(self) -> float | None:
        return statistics.median(self.warm) if self.warm else None


def run_timed(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    return time.perf_counter() - start, proc


def cold_check(path: Path, repeat: int, env: dict[str, str] | None = None) -> list[float]:
    times = []
    for _ in range(repeat):
        elapsed, proc = run_timed([sys.executable, "-m", "medasl.cli", "check", str(path)], env)
        if proc.returncode != 0:
            sys.exit(f"error: `medasc check {path}` exited {proc.returncode}; the benchmark needs files that check"
                     f" cleanly:\n{proc.stderr[-3000:]}")
        times.append(elapsed)
    return times


def cold_check_empty_cache(path: Path, repeat: int) -> list[float]:
    """Cold checks, each with an empty cache directory: the parser tables and the typed
    standard library are rebuilt, as on the first run after installing or upgrading."""
    times = []
    for _ in range(repeat):
        with tempfile.TemporaryDirectory(prefix="medasl-cache-") as cache:
            times += cold_check(path, 1, dict(os.environ, MEDASL_CACHE_DIR=cache))
    return times


def heavy_imports(args: list[str]) -> list[str]:
    """The heavy packages a CLI command imports, from `python -X importtime`."""
    _, proc = run_timed([sys.executable, "-X", "importtime", "-m", "medasl.cli", *args])
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines()
                if line.startswith("import time:")}
    return sorted(h for h in HEAVY if any(m == h or m.startswith(h + ".") for m in imported))


def import_breakdown(path: Path, top: int = 12) -> list[tuple[int, int, str]]:
    """(self us, cumulative us, module) of the slowest top-level imports of `check`."""
    _, proc = run_timed([sys.executable, "-X", "importtime", "-m", "medasl.cli", "check", str(path)])
    rows = []
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        own, cumulative, name = line[len("import time:"):].split("|")
        rows.append((int(own), int(cumulative), name.rstrip()))
    top_level = [r for r in rows if not r[2].startswith("  ")]
    return sorted(top_level, key=lambda r: -r[1])[:top]


def in_process(text: str, name: str, repeat: int) -> tuple[list[float], int]:
    from medasl.semantics.checker import check_source
    from medasl.source import SourceFile

    times, nodes = [], 0
    for _ in range(repeat):
        start = time.perf_counter()
        result = check_source(SourceFile(name, text))
        times.append(time.perf_counter() - start)
        if result.diagnostics.has_errors:
            sys.exit(f"error: {name} has errors in process")
        nodes = sum(len(g.nodes) for g in result.graphs)
    return times, nodes


def first_check_in_process(path: Path, env: dict[str, str] | None = None) -> float:
    """Seconds for the first check_source in a fresh interpreter, imports excluded
    (grammar tables and standard library loaded from the cache or built)."""
    code = ("import time,sys\nfrom medasl.semantics.checker import check_source\nfrom medasl.source import SourceFile\n"
            "s=SourceFile.read(sys.argv[1]); t=time.perf_counter(); check_source(s); print(time.perf_counter()-t)")
    _, proc = run_timed([sys.executable, "-c", code, str(path)], env)
    return float(proc.stdout.strip())


def profile(text: str, name: str, top: int = 10) -> str:
    from medasl.semantics.checker import check_source
    from medasl.source import SourceFile

    check_source(SourceFile(name, text))  # grammar and stdlib already loaded
    prof = cProfile.Profile()
    prof.enable()
    check_source(SourceFile(name, text))
    prof.disable()
    stats = pstats.Stats(prof)
    rows = []
    for (file, line, func), (_cc, nc, tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        if "/medasl/" in file:
            rows.append((ct, tt, nc, f"{file.split('/medasl/', 1)[1]}:{line}({func})"))
    out = io.StringIO()
    total = max((ct for ct, *_ in rows), default=0.0)
    for title, key in (("cumulative", lambda r: r[0]), ("own time", lambda r: r[1])):
        out.write(f"  top {top} by {title} (check_source total {total:.3f} s under the profiler)\n")
        out.write(f"  {'cumulative':>10} {'own':>8} {'calls':>9}  function\n")
        for ct, tt, nc, where in sorted(rows, key=key, reverse=True)[:top]:
            out.write(f"  {ct:10.3f} {tt:8.3f} {nc:9d}  {where}\n")
    return out.getvalue()


# ----- printing ---------------------------------------------------------------------------


def fmt(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.0f} ms" if seconds >= 0.01 else f"{seconds * 1000:.2f} ms"


def print_table(title: str, headers: list[str], rows: list[list[str]]) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
        print(f"\n{title}")
        print("  ".join(h.ljust(w) for h, w in zip(headers, widths)))
        print("  ".join("-" * w for w in widths))
        for r in rows:
            print("  ".join(c.ljust(w) for c, w in zip(r, widths)))
        return
    table = Table(title=title, title_justify="left")
    for i, h in enumerate(headers):
        table.add_column(h, justify="left" if i == 0 else "right")
    for r in rows:
        table.add_row(*r)
    Console(width=200).print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5, help="runs per measurement (default 5)")
    parser.add_argument("--sizes", default="10,100,1000,5000", help="generated pipeline sizes (operators)")
    parser.add_argument("--keep", type=Path, default=None, help="write the generated files here and keep them")
    parser.add_argument("--profile", action="store_true", help="cProfile the two largest generated sizes")
    parser.add_argument("--no-examples", action="store_true", help="skip examples/*.medas")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    repeat = max(1, args.repeat)
    sys.path.insert(0, str(ROOT))

    tmp = tempfile.TemporaryDirectory(prefix="medasl-bench-")
    out_dir = args.keep or Path(tmp.name)
    out_dir.mkdir(parents=True, exist_ok=True)

    print(f"python {sys.version.split()[0]} on {sys.platform}, {os.cpu_count()} CPUs; {repeat} runs per number;"
          f" cold = a fresh `python -m medasl.cli check FILE` each run")

    # interpreter and import costs
    base_rows = []
    for label, code in (("python -c pass", "pass"),
                        ("import medasl.cli + checker", "import medasl.cli, medasl.semantics.checker"),
                        ("import torch", "import torch"), ("import monai", "import monai")):
        module = code.split()[1].rstrip(",") if code.startswith("import") else None
        if module in ("torch", "monai") and importlib.util.find_spec(module) is None:
            base_rows.append([label, "not installed: skipped", "", ""])
            continue
        times = [run_timed([sys.executable, "-c", code])[0] for _ in range(repeat)]
        base_rows.append([label, fmt(min(times)), fmt(statistics.median(times)), ""])
    print_table("Interpreter and imports (cold)", ["command", "best", "median", ""], base_rows)

    rows: list[Row] = []
    files: list[tuple[Row, Path, str]] = []
    if not args.no_examples:
        for path in sorted((ROOT / "examples").glob("*.medas")):
            files.append((Row(f"examples/{path.name}"), path, path.read_text(encoding="utf-8")))
    generated: dict[int, tuple[Row, Path, str]] = {}
    for n in sizes:
        text = generate(n)
        path = out_dir / f"generated_{n}.medas"
        path.write_text(text, encoding="utf-8")
        entry = (Row(f"generated {n}"), path, text)
        files.append(entry)
        generated[n] = entry

    if files and files[0][0].label.startswith("examples/"):
        row0, path0, text0 = files[0]
        files.insert(1, (Row(f"{row0.label} (empty cache)"), path0, text0))
    for row, path, text in files:
        empty_cache = row.label.endswith("(empty cache)")
        row.cold = cold_check_empty_cache(path, repeat) if empty_cache else cold_check(path, repeat)
        if empty_cache:
            with tempfile.TemporaryDirectory(prefix="medasl-cache-") as cache:
                row.first = first_check_in_process(path, dict(os.environ, MEDASL_CACHE_DIR=cache))
        else:
            row.first = first_check_in_process(path)
        row.warm, row.ops = in_process(text, str(path), repeat)
        row.heavy = heavy_imports(["check", str(path)])
        rows.append(row)

    table = []
    for row in rows:
        per_op = (row.warm_median / row.ops * 1e6) if row.ops and row.warm_median else None
        table.append([row.label, str(row.ops), fmt(row.cold_best), fmt(row.cold_median), fmt(row.first),
                      fmt(row.warm_best), fmt(row.warm_median), f"{per_op:.0f} us" if per_op else "-",
                      ", ".join(row.heavy) or "none"])
    print_table("medasc check", ["file", "nodes", "cold best", "cold median", "1st check in proc",
                                 "in-proc best", "in-proc median", "in-proc / node", "heavy imports"], table)

    # growth between consecutive generated sizes
    growth = []
    ordered = [generated[n][0] for n in sizes]
    for a, b in zip(ordered, ordered[1:]):
        if not (a.ops and b.ops and a.warm_median and b.warm_median):
            continue
        size_ratio = b.ops / a.ops
        warm_ratio = b.warm_median / a.warm_median
        cold_ratio = b.cold_median / a.cold_median
        exponent = math.log(warm_ratio) / math.log(size_ratio) if size_ratio > 1 and warm_ratio > 0 else float("nan")
        verdict = "linear" if exponent < 1.15 else ("slightly super-linear" if exponent < 1.4 else "SUPER-LINEAR")
        growth.append([f"{a.ops} -> {b.ops} nodes", f"x{size_ratio:.1f}", f"x{warm_ratio:.2f}",
                       f"x{cold_ratio:.2f}", f"{exponent:.2f}", verdict])
    print_table("Growth (in-process check time; exponent k in time ~ n^k)",
                ["sizes", "n2/n1", "in-proc t2/t1", "cold t2/t1", "k", "verdict"], growth)

    # where a cold check of one example spends its time
    sample = next((p for r, p, _ in files if r.label.startswith("examples/")), None) or files[0][1]
    imports = import_breakdown(sample)
    print_table(f"Slowest top-level imports of `medasc check {sample.name}` (python -X importtime)",
                ["module", "self", "cumulative"], [[m, f"{s / 1000:.1f} ms", f"{c / 1000:.1f} ms"] for s, c, m in imports])

    other = {"graph": heavy_imports(["graph", str(sample), "-o", str(out_dir / "g.dot")]),
             "compile --emit ir": heavy_imports(["compile", "--emit", "ir", str(sample)])}
    for cmd, heavy in other.items():
        print(f"`medasc {cmd}` imports: {', '.join(heavy) or 'none of ' + ', '.join(HEAVY)}")

    # goals
    print("\nGoals (informational):")
    examples = [r for r in rows if r.label.startswith("examples/")]
    for kind, group in (("", [r for r in examples if not r.label.endswith("(empty cache)")]),
                        (" with an empty cache", [r for r in examples if r.label.endswith("(empty cache)")])):
        if group:
            worst = max(group, key=lambda r: r.cold_median)
            print(f"  example < {GOAL_EXAMPLE_COLD} s cold{kind}: slowest {worst.label} {fmt(worst.cold_median)}"
                  f" median -> {'met' if worst.cold_median < GOAL_EXAMPLE_COLD else 'NOT met'}")
    near_1000 = min((generated[n][0] for n in sizes), key=lambda r: abs((r.ops or 0) - 1000), default=None)
    if near_1000 is not None and near_1000.ops and 500 <= near_1000.ops <= 2000:
        print(f"  1000 operators < {GOAL_1000_COLD} s cold: {near_1000.ops} nodes {fmt(near_1000.cold_median)} median"
              f" -> {'met' if near_1000.cold_median < GOAL_1000_COLD else 'NOT met'}")
    if growth:
        worst_k = max(float(g[4]) for g in growth)
        print(f"  linear growth: largest exponent {worst_k:.2f} -> {'met' if worst_k < 1.15 else 'NOT met'}")
    heavy_any = sorted({h for r in rows for h in r.heavy if h in ("torch", "SimpleITK", "monai")})
    print(f"  no torch/SimpleITK/monai in `medasc check`: {'met' if not heavy_any else 'NOT met: ' + ', '.join(heavy_any)}")

    if args.profile:
        for n in sorted(sizes)[-2:]:
            row, path, text = generated[n]
            print(f"\ncProfile of check_source on generated_{n}.medas ({row.ops} nodes), medasl functions:")
            print(profile(text, str(path)))
    if args.keep:
        print(f"generated files kept in {out_dir}")
    tmp.cleanup()


if __name__ == "__main__":
    main()
