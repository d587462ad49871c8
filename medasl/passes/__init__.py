"""Compiler passes: the checked IR -> the optimized IR (docs/compiler.md)."""

from medasl.passes.manager import DEFAULT_LEVEL, LEVELS, Optimized, PassError, optimize, pass_names

__all__ = ["DEFAULT_LEVEL", "LEVELS", "Optimized", "PassError", "optimize", "pass_names"]
