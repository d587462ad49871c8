"""Which Python function runs each operator: the `OPERATORS` tables of medasl/ops/*.py.

Operator names are unique across the standard library, so one table by name is enough.
Besides the function, the executor needs to know a few things about how an operator
is called, and they are stated here once rather than spread over the executor:

- source datasets (`folder`, `phantom`, ...) are listed first and read case by case
  (`medasl.ops.io.SOURCES`), so that reading can be cached and resumed per case;
- selections (`field`, `split`, `take`, ...) only regroup cases; they run in the main
  process on case references and are never stored;
- random operators (std.aug) take `rng` and return `(result, drawn)`; they are given a
  whole `Pair`, so that image and label get one draw; so is `crop_foreground`, whose
  box comes from the image and applies to both;
- `patches` turns one case into `per_case` cases.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

AREAS = ("io", "pre", "aug", "data")
"""The std modules with implementations (medasl/ops/<area>.py)."""

SELECTIONS = frozenset({"field", "split", "kfold", "fold", "take", "shuffle", "concat"})
TAKES_PAIRS = frozenset({"crop_foreground"})
EXPANDS = {"patches": "per_case"}  # operator -> the parameter giving how many cases one case becomes


_TABLE: dict[str, Callable[..., object]] | None = None
_SOURCES: dict[str, object] | None = None


def _tables() -> tuple[dict[str, Callable[..., object]], dict[str, object]]:
    global _TABLE, _SOURCES
    if _TABLE is None or _SOURCES is None:
        table: dict[str, Callable[..., object]] = {}
        for area in AREAS:
            table.update(importlib.import_module(f"medasl.ops.{area}").OPERATORS)
        _TABLE = table
        _SOURCES = dict(getattr(importlib.import_module("medasl.ops.io"), "SOURCES", {}))
    return _TABLE, _SOURCES


def implemented(op: str) -> bool:
    """Whether `op` can run: it has a function, or it is one of the executor's selections."""
    return op in SELECTIONS or op in _tables()[0]


def function(op: str) -> Callable[..., object]:
    return _tables()[0][op]


def source(op: str) -> object | None:
    """The two-phase form (list, then load each case) of a source dataset operator."""
    return _tables()[1].get(op)
