"""Operator implementations, one module per standard module (`std.io` -> `io.py`).

Each function is bound by name to the signature of the same name in stdlib/*.medas and
called with keyword arguments named as there. These modules import NumPy and SimpleITK,
so the front end (`medasc check`, `graph`, `compile`) must never import this package's
modules; only the runtime does.
"""
