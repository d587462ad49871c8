"""JSON snapshots of the typed standard library, so a cold `medasc check` does not
re-parse every stdlib module (about a third of its time).

The encoding is generic over the frozen dataclasses the signatures are made of (types,
AST defaults, spans), tagged with class names from a fixed registry: nothing outside
that registry can be created when loading, and no pickle is involved.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

from medasl.ir import types
from medasl.semantics import signatures
from medasl.source import Span
from medasl.syntax import ast

_CLASSES: dict[str, type] = {
    cls.__name__: cls
    for module in (ast, types, signatures)
    for cls in vars(module).values()
    if isinstance(cls, type) and dataclasses.is_dataclass(cls) and cls is not ast.Module
}
_CLASSES["Span"] = Span


def register(cls: type) -> type:
    """Allow one more dataclass in snapshots (used by the module that defines it)."""
    _CLASSES[cls.__name__] = cls
    return cls


def encode(obj: object) -> object:
    if obj is types.UNKNOWN:
        return {"$": "?"}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        name = type(obj).__name__
        assert _CLASSES.get(name) is type(obj), f"cannot snapshot {name}"
        return {"$": name, **{f.name: encode(getattr(obj, f.name)) for f in dataclasses.fields(obj)}}
    if isinstance(obj, tuple):
        return {"$t": [encode(x) for x in obj]}
    if isinstance(obj, list):
        return [encode(x) for x in obj]
    if isinstance(obj, dict):
        return {"$d": [[k, encode(v)] for k, v in obj.items()]}
    return obj


def decode(obj: object) -> object:
    if isinstance(obj, list):
        return [decode(x) for x in obj]
    if not isinstance(obj, dict):
        return obj
    if "$t" in obj:
        return tuple(decode(x) for x in obj["$t"])
    if "$d" in obj:
        return {k: decode(v) for k, v in obj["$d"]}
    tag = obj["$"]
    if tag == "?":
        return types.UNKNOWN
    cls = _CLASSES[tag]
    return cls(**{k: decode(v) for k, v in obj.items() if k != "$"})


def fingerprint(stdlib_files: list[Path]) -> str:
    """Changes when a stdlib file, the grammar or the code that types signatures changes."""
    digest = hashlib.sha256()
    here = Path(__file__).resolve().parent
    code = [here / "signatures.py", here / "snapshot.py", here / "modules.py", here.parent / "ir" / "types.py",
            here.parent / "syntax" / "ast.py", here.parent / "syntax" / "parser.py",
            here.parents[1] / "grammar" / "medas.lark"]
    for path in [*stdlib_files, *code]:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def dumps(value: object) -> str:
    return json.dumps(encode(value), separators=(",", ":"))


def loads(text: str) -> object:
    return decode(json.loads(text))
