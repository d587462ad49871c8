"""examples/nuclei.medas runs end to end in its smoke setting (the six H&E tiles of the
DSB 2018 sample in ../shared/data, a few epochs on the CPU): a trained U-Net, nucleus
instances for the held-out tiles, AJI and panoptic quality, figures and reports; run
again, everything comes from the cache. The numbers prove nothing about accuracy, but
they beat a predictor that ignores the images: the network learned something."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="training needs the run extra (pip install -e '.[run]')")
pytest.importorskip("monai", reason="training needs the run extra (pip install -e '.[run]')")

from tests.conftest import ROOT, shared_data  # noqa: E402
from tests.test_cli import run  # noqa: E402
from tests.test_run_models import constant_predictor, metric_inputs  # noqa: E402

shared_data(module=True)

EXAMPLE = ROOT / "examples" / "nuclei.medas"


def _computed(out: Path) -> list[list[str]]:
    """For each run log, oldest first: the steps that computed something."""
    runs = []
    for path in sorted((out / "nuclei" / "logs").glob("run-*.jsonl")):
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        runs.append([str(r["step"]) for r in records if r.get("event") == "computed"])
    return runs


def test_the_nuclei_example_runs_end_to_end_and_then_from_the_cache(tmp_path: Path) -> None:
    cache, out = tmp_path / "cache", tmp_path / "out"
    args = ("run", str(EXAMPLE), "--cache-dir", str(cache), "--out", str(out))
    code, _, err = run(*args)
    assert code == 0, err

    line = next(x for x in err.splitlines() if x.startswith("aji = aji "))
    aji = float(line.split()[3])
    assert 0.0 <= aji <= 1.0, line
    line = next(x for x in err.splitlines() if x.startswith("pq = panoptic_quality "))
    pq = float(line.split()[3])
    assert 0.0 <= pq <= 1.0, line
    # learned: better than a predictor that ignores the tiles (one instance over the whole
    # tile, or none), on the same two held-out tiles
    for metric, name, value in (("aji", "aji", aji), ("pq", "panoptic_quality", pq)):
        tiles = metric_inputs(EXAMPLE, cache, metric)["target"]
        assert len(tiles) == 2
        trivial = constant_predictor(name, tiles, range(2))
        assert value > trivial + 0.02, (metric, value, trivial)  # about 0.2 and 0.09 against 0.003 and 0

    result = out / "nuclei"
    html = (result / "nuclei.html").read_text()
    assert "<h1>Nucleus instance segmentation (H&amp;E)" in html
    assert html.count("<img") >= 3  # loss curve, overlays of the held-out tiles, boxplots
    assert (result / "figures" / "loss_curve.png").stat().st_size > 1000
    assert len(list((result / "figures").glob("overlay-*.png"))) == 2  # two tiles held out
    assert (result / "nuclei_aji.xlsx").is_file() and (result / "nuclei_pq.xlsx").is_file()
    # two of the six H&E tiles held out; no fluorescence or brightfield tile
    he = {row.split(",")[0] for row in (shared_data() / "histo_nuclei_dsb2018" / "index.csv")
          .read_text().splitlines() if ",HE_tissue," in row}
    instances = {p.name.removesuffix("_instances.png") for p in (result / "nuclei").iterdir()}
    assert len(instances) == 2 and instances <= he, instances

    code, _, err = run(*args)
    assert code == 0, err
    first, second = _computed(out)
    assert "fit" in first and "aji" in first
    assert second == [], f"the second run computed {second}"
