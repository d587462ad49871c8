"""Operator implementations, one module per standard module (`std.io` -> `io.py`).

Each function is bound by name to the signature of the same name in stdlib/*.medas and
called with keyword arguments named as there. These modules import NumPy and SimpleITK,
so the front end (`medasc check`, `graph`, `compile`) must never import this package's
modules; only the runtime does.
"""

from __future__ import annotations

import importlib
from types import ModuleType


class _Deferred(ModuleType):
    """A stand-in for a library, imported on first attribute access (`sitk.ReadImage`)."""

    def __getattr__(self, attr: str) -> object:
        module = importlib.import_module(self.__name__)  # thread-safe: the import lock serializes it
        # Copy the module's names over, so that later lookups find them without this call
        # (operators use sitk.* in loops).
        self.__dict__.update(module.__dict__)
        return getattr(module, attr)


def deferred(name: str) -> ModuleType:
    """Library `name`, imported only when first used. For a module most of whose operators
    need the library but whose cheap parts (listing a source's cases for cache lookups) do
    not: a fully cached run must not pay for importing what computes nothing."""
    return _Deferred(name)
