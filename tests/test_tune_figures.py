"""The study figures (std.viz: optimization_history, parallel_coordinates,
param_importance) on a study.json, directly and from `show` in a pipeline."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

pytest.importorskip("sklearn")

from click.testing import CliRunner  # noqa: E402

from medasl import cli  # noqa: E402
from medasl.ops import viz  # noqa: E402
from medasl.runtime.errors import DataError  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def fake_study(count: int = 12) -> dict[str, object]:
    """The objective depends on `lr` only (a peak at 1e-2); `loss` is noise."""
    trials = []
    for n in range(1, count + 1):
        lr = 10 ** (-4 + 3 * ((n * 7) % count) / count)
        loss = ("dice_ce", "lovasz")[n % 2]
        objective = 1.0 - abs(math.log10(lr) + 2.0) / 3.0
        trials.append({"number": n, "status": "ok", "values": {"lr": lr, "loss": loss}, "objective": objective})
    trials.append({"number": count + 1, "status": "failed", "values": {"lr": 0.1, "loss": "lovasz"},
                   "objective": None, "code": "E0230"})
    return {"goal": "max", "objective": "score", "trials": trials,
            "space": [{"name": "lr", "kind": "loguniform", "bounds": [1e-4, 1e-1], "options": []},
                      {"name": "loss", "kind": "choice", "bounds": [], "options": ["dice_ce", "lovasz"],
                       "labels": ["@dice_ce", "@lovasz"]}]}


def test_random_forest_importance_finds_the_parameter_that_matters() -> None:
    found = viz.importances(fake_study())
    assert found is not None and set(found) == {"lr", "loss"}
    assert found["lr"] > 0.9 and math.isclose(sum(found.values()), 1.0)
    assert viz.importances(fake_study(2)) is None  # too few trials to say


@pytest.mark.parametrize("draw", [viz.optimization_history_figure, viz.parallel_coordinates_figure,
                                  viz.param_importance_figure])
def test_figures_draw_a_study(draw: object) -> None:
    figure = draw(fake_study())  # type: ignore[operator]
    assert figure.png.startswith(PNG_SIGNATURE) and len(figure.png) > 5000
    empty = draw({**fake_study(), "trials": []})  # type: ignore[operator]
    assert empty.png.startswith(PNG_SIGNATURE)


def test_a_missing_study_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError) as missing:
        viz.parallel_coordinates(str(tmp_path / "study.json"))
    assert missing.value.code == "E1001" and "medasc tune" in missing.value.message
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(DataError) as bad:
        viz.param_importance(str(tmp_path / "bad.json"))
    assert bad.value.code == "E1002"


def test_shown_from_a_pipeline(tmp_path: Path) -> None:
    study = tmp_path / "study.json"
    study.write_text(json.dumps(fake_study()))
    file = tmp_path / "p.medas"
    file.write_text(f'import std.viz\n\npipeline p {{\n  show optimization_history("{study}"), '
                    f'parallel_coordinates("{study}"),\n       param_importance("{study}")\n}}\n')
    result = CliRunner().invoke(cli.main, ["run", str(file), "--cache-dir", str(tmp_path / "cache"),
                                           "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.stderr
    figures = sorted(p.name for p in (tmp_path / "out" / "p" / "figures").glob("*.png"))
    assert len(figures) == 3, figures
