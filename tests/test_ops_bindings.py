"""Operator implementations are bound by name to their stdlib signatures: every
implemented operator is declared, takes the declared parameters, and the operators
still missing are exactly the ones the README lists."""

from __future__ import annotations

import importlib
import inspect

import pytest

from medasl.semantics.modules import stdlib
from tests.conftest import ROOT

IMPLEMENTED_AREAS = ("io", "pre", "aug", "data", "nets", "losses", "train", "post", "metrics", "viz", "report")
NOT_YET: dict[str, set[str]] = {}  # every std operator runs (the study figures since `medasc tune`)
RUNTIME_ONLY = {"rng", "checkpoints", "progress", "device", "figures", "augment"}  # passed by the executor


@pytest.mark.parametrize("area", IMPLEMENTED_AREAS)
def test_implementations_match_their_signatures(area: str) -> None:
    declared = stdlib().modules[f"std.{area}"].ops
    implemented = importlib.import_module(f"medasl.ops.{area}").OPERATORS
    assert set(implemented) <= set(declared), f"undeclared operators: {set(implemented) - set(declared)}"
    assert set(declared) - set(implemented) == NOT_YET.get(area, set())
    for name, func in implemented.items():
        params = set(inspect.signature(func).parameters) - RUNTIME_ONLY
        missing = {p.name for p in declared[name].params} - params
        assert not missing, f"{area}.{name} does not take {sorted(missing)}"


def test_readme_lists_what_is_not_implemented() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for names in NOT_YET.values():
        for name in names:
            assert f"`{name}`" in readme
