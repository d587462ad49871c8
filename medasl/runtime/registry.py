"""Which Python function runs each operator: the `OPERATORS` tables of medasl/ops/*.py.

An operator of `std.<area>` is implemented in `medasl/ops/<area>.py`; a module is
imported only when one of its operators runs, so a pipeline without networks runs
without PyTorch installed. Besides the function, the executor needs to know a few
things about how an operator is called, and they are stated here once rather than
spread over the executor:

- source datasets (`folder`, `phantom`, ...) are listed first and read case by case
  (`medasl.ops.io.SOURCES`), so that reading can be cached and resumed per case;
- selections (`field`, `split`, `take`, ...) only regroup cases; they run in the main
  process on case references and are never stored;
- random operators (std.aug) take `rng` and return `(result, drawn)`; they are given a
  whole `Pair`, so that image and label get one draw; so is `crop_foreground`, whose
  box comes from the image and applies to both;
- `patches` and `box_patches` turn one case into `per_case` cases;
- `infer` and `boxed` take a whole dataset in the language but run case by case;
- `boxed` and `write_boxes` are told the id of their case (it names their rows);
- `html` collects every figure the pipeline shows and every metric it computes.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from types import ModuleType

from medasl.lower.plan import COLLECTING_REPORTS
from medasl.runtime.fusion import FUSED_OPS

SELECTIONS = frozenset({"field", "split", "kfold", "fold", "take", "shuffle", "concat", "subset"})
TAKES_PAIRS = frozenset({"crop_foreground"})
EXPANDS = {"patches": "per_case", "box_patches": "per_case"}  # operator -> the parameter giving how many cases one case becomes
PER_CASE = {"infer": "data", "boxed": "images"}  # operator -> the dataset argument it is applied to case by case
GETS_CASE_ID = {"boxed": "case", "write_boxes": "case"}  # operator -> the parameter through which it learns the id of its case
COLLECTS = COLLECTING_REPORTS  # report operators given the shown figures and the metrics

_MODULES: dict[str, ModuleType | None] = {}


def area(op: str) -> str | None:
    """`pre` for `resample`: the std module declaring `op`, or None for a user's operator."""
    from medasl.semantics.modules import stdlib

    sig = stdlib().find_op(op)
    return sig.module.removeprefix("std.") if sig is not None else None


_MISSING: dict[str, str] = {}  # area -> the library its module could not import


def _module(name: str) -> ModuleType | None:
    """medasl.ops.<name>, or None when it does not exist yet or its dependencies are missing."""
    if name not in _MODULES:
        try:
            _MODULES[name] = importlib.import_module(f"medasl.ops.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"medasl.ops.{name}" and exc.name not in ("torch", "monai", "matplotlib", "openpyxl",
                                                                     "sklearn", "safetensors"):
                raise
            if exc.name != f"medasl.ops.{name}":
                _MISSING[name] = exc.name
            _MODULES[name] = None
    return _MODULES[name]


def missing_dependency(op: str) -> str | None:
    """The library an operator's module needs but cannot import (torch, monai, ...), if any."""
    name = area(op)
    if name is None or _module(name) is not None:
        return None
    return _MISSING.get(name)


def implemented(op: str) -> bool:
    """Whether `op` can run: it has a function, or it is one of the executor's selections."""
    if op in SELECTIONS or op in FUSED_OPS:
        return True
    name = area(op)
    module = _module(name) if name else None
    return module is not None and op in getattr(module, "OPERATORS", {})


def function(op: str) -> Callable[..., object]:
    name = area(op)
    module = _module(name) if name else None
    if module is None:
        raise KeyError(f"no implementation of `{op}`")
    return module.OPERATORS[op]


def source(op: str) -> object | None:
    """The two-phase form (list, then load each case) of a source dataset operator."""
    if area(op) != "io":
        return None
    module = _module("io")
    return getattr(module, "SOURCES", {}).get(op)
