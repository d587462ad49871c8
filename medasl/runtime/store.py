"""How run-time values are written into a cache entry folder and read back, without pickle.

`save_value(value, folder, name)` writes `<name>.json`, the value's structure and
metadata, with small arrays inline, plus at most one `<name>.bin` holding every other
array's raw bytes. `load_value(folder, name)` reads them back exactly: dtypes, shapes,
geometry floats bit for bit, tuples as tuples and lists as lists.

Why so few files: a pathology study has 100,000 tiles, and a file per array (and a
`.npy` header each) made the cache hold and create several files per case; a case is now
one JSON file, plus one data file when its arrays are large.

The JSON file is `{"format": 2, "value": <node>}` (compact JSON), where a node is

- `null`, `true`/`false`, an integer, a string or a finite float: that Python scalar
  (Python's `json` writes floats with their shortest round-trip repr, so they come back
  bit-exact, and `1` and `1.0` stay distinct);
- a JSON array: a Python `list` of nodes;
- a JSON object with a `"$"` tag naming its codec, one per type (see `_CODECS`):
  `float` (nan/inf, as `repr`), `tuple`, `dict` (string keys), `path`, `array`,
  `npscalar`, `Volume`, `Pair`, `Case`, `Boxes`, `Annotations`, `DicomSeries`, `OperatorRef`,
  `Measured`, `Figure` (its PNG bytes as a uint8 array), `Network` (operator, arguments
  and one array per weight tensor; rebuilt with `medasl.ops.nets.build`, then loaded)
  and `Trained` (a network and its history).

An array is `{"dtype": "<f4", "shape": [...], "order": "C" or "F", ...}` and one of:
`"data"`: its bytes in base64 (arrays of at most `INLINE_BYTES`, up to `INLINE_TOTAL`
per value); `"offset"`: its bytes in `<name>.bin` from that offset (64-byte aligned, the
file is nothing but the arrays' bytes one after the other); `"index"`: the NumPy file
`<name>.<i>.npy` (structured dtypes, which have no plain byte layout, and every array of
format 1, which is still read).

Nothing read is ever executed: unknown tags, malformed nodes, missing or damaged files
raise `StoreError`, which the executor treats as a cache miss. Unknown Python types and
object-dtype arrays are refused on saving with a `TypeError` naming the type.

Arrays in `<name>.bin` are memory-mapped read-only by default (`mmap=True`): a cached
volume costs no memory until it is touched, and several workers share the page cache;
inline arrays are read-only too. Operators must therefore never write into their inputs'
arrays (copy first, or build a new array); doing so raises `ValueError: assignment
destination is read-only`.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import math
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePath

import numpy as np

from medasl.runtime.values import (
    Annotations,
    Boxes,
    Case,
    DicomSeries,
    Figure,
    Measured,
    Network,
    OperatorRef,
    Pair,
    Trained,
    Volume,
)

FORMAT = 2
READ_FORMATS = (1, 2)  # format 1: one .npy per array, indented JSON
TAG = "$"
INLINE_BYTES = 16384  # arrays this small live in the JSON (no file, no mmap to set up)
INLINE_TOTAL = 65536  # ... up to this much per value, so the JSON stays quick to parse
ALIGN = 64  # offsets in <name>.bin, so that every dtype is aligned in a memory map

_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")

Json = None | bool | int | float | str | list["Json"] | dict[str, "Json"]


class StoreError(Exception):
    """A stored value cannot be read: missing, damaged, or written by an unknown format."""


# ----- contexts ----------------------------------------------------------------------


@dataclass
class _Writer:
    folder: Path
    name: str
    arrays: list[np.ndarray] = field(default_factory=list)  # structured dtypes: one .npy each
    blob: list[tuple[int, np.ndarray, str]] = field(default_factory=list)  # (offset, array, order) in <name>.bin
    blob_size: int = 0
    inline_size: int = 0

    def array(self, value: np.ndarray, where: str) -> dict[str, Json]:
        if value.dtype.hasobject:
            raise TypeError(f"{where}: a numpy array of dtype {value.dtype} (Python objects) cannot be stored; "
                            "convert it to a numeric, boolean or string dtype")
        if value.dtype.fields is not None or value.dtype.subdtype is not None:
            index = len(self.arrays)
            self.arrays.append(value)
            return {"index": index, "dtype": value.dtype.str, "shape": list(value.shape)}
        # an F-contiguous array (a transposed one) keeps its layout, as np.save kept it
        order = "F" if value.flags.f_contiguous and not value.flags.c_contiguous else "C"
        node: dict[str, Json] = {"dtype": value.dtype.str, "shape": list(value.shape), "order": order}
        if value.nbytes <= INLINE_BYTES and self.inline_size + value.nbytes <= INLINE_TOTAL:
            self.inline_size += value.nbytes
            node["data"] = base64.b64encode(value.tobytes(order=order)).decode("ascii")
            return node
        offset = -(-self.blob_size // ALIGN) * ALIGN
        self.blob.append((offset, value, order))
        self.blob_size = offset + value.nbytes
        node["offset"] = offset
        return node

    def write_blob(self, path: Path) -> str:
        """Write the arrays' bytes at their offsets; their sha256."""
        digest = hashlib.sha256()
        with _naming(path), open(path, "wb") as f:
            for offset, array, order in self.blob:
                for chunk in (b"\0" * (offset - f.tell()),
                              array.tobytes(order=order) if order == "F" else np.ascontiguousarray(array).data):
                    f.write(chunk)
                    digest.update(chunk)
        return digest.hexdigest()


@dataclass
class _Reader:
    folder: Path
    name: str
    mmap: bool
    blob_size: int | None = None

    def array(self, node: dict[str, Json]) -> np.ndarray:
        dtype, shape, order = node["dtype"], node["shape"], node.get("order", "C")
        if not isinstance(dtype, str) or not isinstance(shape, list) or order not in ("C", "F"):
            raise StoreError(f"bad array node {node!r}")
        if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape):
            raise StoreError(f"bad array shape {shape!r}")
        if "data" in node:
            return self._inline(node["data"], np.dtype(dtype), tuple(shape), order)
        if "offset" in node:
            return self._from_blob(node["offset"], np.dtype(dtype), tuple(shape), order)
        return self._npy(node["index"], dtype, shape)

    def _inline(self, data: Json, dtype: np.dtype, shape: tuple[int, ...], order: str) -> np.ndarray:
        if not isinstance(data, str):
            raise StoreError("inline array data must be a base64 string")
        try:
            raw = base64.b64decode(data, validate=True)
        except ValueError as exc:
            raise StoreError(f"bad inline array data: {exc}") from exc
        if len(raw) != math.prod(shape) * dtype.itemsize:
            raise StoreError(f"inline array of {len(raw)} bytes, expected {dtype.str} of shape {list(shape)}")
        array = np.frombuffer(raw, dtype=dtype).reshape(shape, order=order)  # read-only: it views bytes
        return array.copy(order="K") if not self.mmap else array

    def _from_blob(self, offset: Json, dtype: np.dtype, shape: tuple[int, ...], order: str) -> np.ndarray:
        path = self.folder / f"{self.name}.bin"
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise StoreError(f"bad array offset {offset!r}")
        if self.blob_size is None:
            try:
                self.blob_size = os.stat(path).st_size
            except FileNotFoundError as exc:
                raise StoreError(f"missing array file {path}") from exc
        nbytes = math.prod(shape) * dtype.itemsize
        if offset + nbytes > self.blob_size:
            raise StoreError(f"damaged array file {path}: {self.blob_size} bytes, an array needs {offset + nbytes}")
        if nbytes == 0:
            array = np.empty(shape, dtype, order=order)  # nothing to map
            array.flags.writeable = not self.mmap
            return array
        try:
            if self.mmap:
                return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order=order)
            flat = np.fromfile(path, dtype=dtype, count=math.prod(shape), offset=offset)
        except (OSError, ValueError) as exc:
            raise StoreError(f"damaged array file {path}: {exc}") from exc
        return flat.reshape(shape, order=order)

    def _npy(self, index: Json, dtype: str, shape: list[Json]) -> np.ndarray:
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise StoreError(f"bad array index {index!r}")
        path = self.folder / f"{self.name}.{index}.npy"
        try:
            array = np.load(path, mmap_mode="r" if self.mmap else None, allow_pickle=False)
        except FileNotFoundError as exc:
            raise StoreError(f"missing array file {path}") from exc
        except (OSError, ValueError, EOFError) as exc:
            raise StoreError(f"damaged array file {path}: {exc}") from exc
        if not isinstance(array, np.ndarray):
            raise StoreError(f"{path} holds no array")
        if array.dtype.str != dtype or list(array.shape) != shape:
            raise StoreError(f"{path} holds a {array.dtype.str} array of shape {list(array.shape)}, "
                             f"expected {dtype} of shape {shape}")
        return array


# ----- codecs: one per type ----------------------------------------------------------


def _float_enc(value: float) -> Json:
    return value if math.isfinite(value) else {TAG: "float", "repr": repr(value)}


def _float_dec(node: Json) -> float:
    if isinstance(node, dict):
        text = node["repr"]
        if text not in ("nan", "inf", "-inf"):
            raise StoreError(f"bad float {text!r}")
        return float(text)
    if isinstance(node, bool) or not isinstance(node, int | float):
        raise StoreError(f"expected a number, got {node!r}")
    return float(node)


def _floats(values: tuple[float, ...]) -> list[Json]:
    return [_float_enc(float(v)) for v in values]


def _opt_str(node: Json) -> str | None:
    if node is not None and not isinstance(node, str):
        raise StoreError(f"expected a string or null, got {node!r}")
    return node


def _str(node: Json) -> str:
    if not isinstance(node, str):
        raise StoreError(f"expected a string, got {node!r}")
    return node


def _npscalar_enc(value: np.generic, w: _Writer, where: str) -> dict[str, Json]:
    if value.dtype.kind in "biuf":
        item = value.item()
        return {"dtype": value.dtype.str, "value": _float_enc(item) if isinstance(item, float) else item}
    return {"array": w.array(np.asarray(value), where)}  # complex, datetime, bytes...: as a 0-d array


def _npscalar_dec(node: dict[str, Json], r: _Reader) -> np.generic:
    if "array" in node:
        return np.array(r.array(node["array"]))[()]
    dtype = np.dtype(_str(node["dtype"]))
    if dtype.kind not in "biuf":
        raise StoreError(f"bad numpy scalar dtype {dtype}")
    raw = node["value"]
    return dtype.type(_float_dec(raw) if dtype.kind == "f" else raw)


def _volume_enc(v: Volume, w: _Writer, where: str) -> dict[str, Json]:
    return {"array": w.array(v.array, f"{where}.array"), "spacing": _floats(v.spacing), "origin": _floats(v.origin),
            "direction": _floats(v.direction), "kind": v.kind, "modality": v.modality, "source": v.source,
            **({"names": [[value, name] for value, name in v.names]} if v.names else {})}


def _volume_dec(node: dict[str, Json], r: _Reader) -> Volume:
    return Volume(r.array(node["array"]), tuple(map(_float_dec, node["spacing"])),
                  tuple(map(_float_dec, node["origin"])), tuple(map(_float_dec, node["direction"])),
                  kind=_str(node["kind"]), modality=_str(node["modality"]), source=_opt_str(node["source"]),
                  names=tuple((int(value), _str(name)) for value, name in node.get("names") or ()))  # type: ignore[union-attr, misc]


def _boxes_enc(b: Boxes, w: _Writer, where: str) -> dict[str, Json]:
    return {**{k: w.array(getattr(b, k), f"{where}.{k}") for k in ("lo", "hi", "classes", "scores")},
            "source": b.source}


def _boxes_dec(node: dict[str, Json], r: _Reader) -> Boxes:
    return Boxes(*(r.array(node[k]) for k in ("lo", "hi", "classes", "scores")), source=_opt_str(node["source"]))


def _annotations_enc(a: Annotations, w: _Writer, where: str) -> dict[str, Json]:
    return {"ids": list(a.ids), **{k: w.array(getattr(a, k), f"{where}.{k}") for k in ("centres", "diameters", "classes")},
            "coords": a.coords, "source": a.source, "lines": list(a.lines)}


def _annotations_dec(node: dict[str, Json], r: _Reader) -> Annotations:
    return Annotations(tuple(map(_str, _list(node["ids"]))), *(r.array(node[k]) for k in ("centres", "diameters", "classes")),
                       coords=_str(node["coords"]), source=_opt_str(node["source"]),
                       lines=tuple(int(_float_dec(x)) for x in _list(node["lines"])))


def _series_enc(s: DicomSeries, w: _Writer, where: str) -> dict[str, Json]:
    return {"uid": s.uid, "files": list(s.files), "description": s.description, "modality": s.modality,
            "source": s.source}


def _series_dec(node: dict[str, Json], r: _Reader) -> DicomSeries:
    return DicomSeries(_str(node["uid"]), tuple(map(_str, node["files"])), _str(node["description"]),
                       _str(node["modality"]), _opt_str(node["source"]))


def _dict_enc(d: dict[object, object], w: _Writer, where: str) -> dict[str, Json]:
    items: dict[str, Json] = {}
    for key, item in d.items():
        if not isinstance(key, str):
            raise TypeError(f"{where}: dict key {key!r} is a {type(key).__name__}; only str keys can be stored")
        items[key] = _encode(item, w, f"{where}[{key!r}]")
    return {"items": items}


def _dict_dec(node: dict[str, Json], r: _Reader) -> dict[str, object]:
    items = node["items"]
    if not isinstance(items, dict):
        raise StoreError("dict items must be a JSON object")
    return {key: _decode(item, r) for key, item in items.items()}


def _network_enc(n: Network, w: _Writer, where: str) -> dict[str, Json]:
    """A network as its operator, arguments and weights (one NumPy array per tensor of the
    state dict): rebuilt by `medasl.ops.nets.build` and loaded, never unpickled."""
    state = n.module.state_dict()  # type: ignore[attr-defined]
    weights = {name: w.array(t.detach().cpu().numpy(), f"{where}.weights[{name!r}]") for name, t in state.items()}
    return {"op": n.op, "params": _encode(dict(n.params), w, f"{where}.params"), "weights": weights}


def _network_dec(node: dict[str, Json], r: _Reader) -> Network:
    import torch

    from medasl.ops import nets

    op, params = _str(node["op"]), _decode(node["params"], r)
    assert isinstance(params, dict)
    module = nets.build(op, params, seed=0)
    weights = node["weights"]
    if not isinstance(weights, dict):
        raise StoreError("network weights must be a JSON object")
    state = {name: torch.from_numpy(np.array(r.array(item))) for name, item in weights.items()}  # type: ignore[arg-type]
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        raise StoreError(f"stored weights do not fit `{op}`: {exc}") from exc
    return Network(op, params, module)


def _trained_enc(t: Trained, w: _Writer, where: str) -> dict[str, Json]:
    return {"network": _encode(t.network, w, f"{where}.network"), "history": _encode(t.history, w, f"{where}.history"),
            "best_epoch": t.best_epoch, "metric": t.metric, "goal": t.goal}


def _trained_dec(node: dict[str, Json], r: _Reader) -> Trained:
    network, history = _decode(node["network"], r), _decode(node["history"], r)
    if not isinstance(network, Network) or not isinstance(history, list):
        raise StoreError("malformed trained model")
    best = node["best_epoch"]
    return Trained(network, history, int(best) if isinstance(best, int) else 0, _opt_str(node["metric"]),
                   _opt_str(node["goal"]))


def _measured_enc(m: Measured, w: _Writer, where: str) -> dict[str, Json]:
    node = {"name": m.name, "goal": m.goal, "value": _float_enc(float(m.value)),
            "per_case": _encode(dict(m.per_case), w, f"{where}.per_case"),
            "per_class": _encode(dict(m.per_class), w, f"{where}.per_class")}
    if m.per_fold:  # only cross-validated metrics have it: other metrics are stored as before
        node["per_fold"] = _encode(dict(m.per_fold), w, f"{where}.per_fold")
    return node


def _measured_dec(node: dict[str, Json], r: _Reader) -> Measured:
    per_case, per_class = _decode(node["per_case"], r), _decode(node["per_class"], r)
    per_fold = _decode(node["per_fold"], r) if "per_fold" in node else {}
    if not isinstance(per_case, dict) or not isinstance(per_class, dict) or not isinstance(per_fold, dict):
        raise StoreError("malformed metric")
    return Measured(_str(node["name"]), _str(node["goal"]), _float_dec(node["value"]), per_case, per_class,
                    per_fold)


def _operator_enc(o: OperatorRef, w: _Writer, where: str) -> dict[str, Json]:
    return {"op": o.op, "options": _encode(dict(o.options), w, f"{where}.options"),
            "inputs": _encode(dict(o.inputs), w, f"{where}.inputs")}


def _operator_dec(node: dict[str, Json], r: _Reader) -> OperatorRef:
    options, inputs = _decode(node["options"], r), _decode(node["inputs"], r)
    if not isinstance(options, dict) or not isinstance(inputs, dict):
        raise StoreError("malformed operator value")
    return OperatorRef(_str(node["op"]), options, inputs)  # type: ignore[arg-type]


@dataclass(frozen=True)
class _Codec:
    tag: str
    type: type
    encode: Callable[[object, _Writer, str], dict[str, Json]]
    decode: Callable[[dict[str, Json], _Reader], object]


_CODECS: tuple[_Codec, ...] = (
    _Codec("tuple", tuple,
           lambda t, w, where: {"items": [_encode(x, w, f"{where}[{i}]") for i, x in enumerate(t)]},
           lambda n, r: tuple(_decode(x, r) for x in _list(n["items"]))),
    _Codec("dict", dict, _dict_enc, _dict_dec),
    _Codec("path", PurePath, lambda p, w, where: {"value": str(p)}, lambda n, r: Path(_str(n["value"]))),
    _Codec("array", np.ndarray, lambda a, w, where: w.array(a, where), lambda n, r: r.array(n)),
    _Codec("npscalar", np.generic, _npscalar_enc, _npscalar_dec),
    _Codec("Volume", Volume, _volume_enc, _volume_dec),
    _Codec("Pair", Pair,
           lambda p, w, where: {"input": _encode(p.input, w, f"{where}.input"),
                                "target": _encode(p.target, w, f"{where}.target")},
           lambda n, r: Pair(_decode(n["input"], r), _decode(n["target"], r))),
    _Codec("Case", Case,
           lambda c, w, where: {"id": c.id, "value": _encode(c.value, w, f"{where}.value")},
           lambda n, r: Case(_str(n["id"]), _decode(n["value"], r))),
    _Codec("Boxes", Boxes, _boxes_enc, _boxes_dec),
    _Codec("Annotations", Annotations, _annotations_enc, _annotations_dec),
    _Codec("DicomSeries", DicomSeries, _series_enc, _series_dec),
    _Codec("Network", Network, _network_enc, _network_dec),
    _Codec("Trained", Trained, _trained_enc, _trained_dec),
    _Codec("Measured", Measured, _measured_enc, _measured_dec),
    _Codec("OperatorRef", OperatorRef, _operator_enc, _operator_dec),
    _Codec("Figure", Figure,
           lambda f, w, where: {"title": f.title, "png": w.array(np.frombuffer(f.png, dtype=np.uint8), f"{where}.png")},
           lambda n, r: Figure(_str(n["title"]), bytes(np.asarray(r.array(n["png"]))))),
)
_BY_TAG = {c.tag: c for c in _CODECS}
_EXACT = {c.type: c for c in _CODECS if c.type in (tuple, dict)}  # tuple/dict subclasses are refused


def _list(node: Json) -> list[Json]:
    if not isinstance(node, list):
        raise StoreError(f"expected a JSON array, got {node!r}")
    return node


def _codec_for(value: object) -> _Codec | None:
    kind = type(value)
    if kind in _EXACT:
        return _EXACT[kind]
    for codec in _CODECS:
        if codec.type not in (tuple, dict) and isinstance(value, codec.type):
            return codec
    return None


def _encode(value: object, w: _Writer, where: str) -> Json:
    kind = type(value)
    if value is None or kind in (bool, int, str):
        return value  # type: ignore[return-value]
    if kind is float:
        return _float_enc(value)  # type: ignore[arg-type]
    if kind is list:
        return [_encode(x, w, f"{where}[{i}]") for i, x in enumerate(value)]  # type: ignore[attr-defined]
    codec = _codec_for(value)
    if codec is None:
        raise TypeError(f"{where}: a value of type {kind.__module__}.{kind.__qualname__} cannot be stored in the "
                        "cache; use Volume, Pair, Boxes, DicomSeries, numpy arrays, scalars, str, Path, "
                        "or tuples, lists and str-keyed dicts of them")
    return {TAG: codec.tag, **codec.encode(value, w, where)}


def _decode(node: Json, r: _Reader) -> object:
    if node is None or isinstance(node, bool | int | float | str):
        return node
    if isinstance(node, list):
        return [_decode(x, r) for x in node]
    if not isinstance(node, dict):
        raise StoreError(f"unexpected JSON value {node!r}")
    tag = node.get(TAG)
    if tag == "float":
        return _float_dec(node)
    codec = _BY_TAG.get(tag) if isinstance(tag, str) else None
    if codec is None:
        raise StoreError(f"unknown value tag {tag!r}")
    return codec.decode(node, r)


# ----- the API -----------------------------------------------------------------------


@contextlib.contextmanager
def _naming(path: Path) -> Iterator[None]:
    """Name `path` in an OSError raised while writing it: a full disk fails a `write`,
    which names no file, and the cache tells its own full disk (E2021) by the path."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None:
            exc.filename = os.fspath(path)
        raise


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise ValueError(f"bad value name {name!r}: use letters, digits, '_', '-' and '.', not starting with '.'")


def encode_value(value: object, folder: Path, name: str = "value") -> tuple[dict[str, Json], dict[str, str]]:
    """Write the arrays of `value` that are not inline into `folder` (`<name>.bin`, and
    `<name>.<i>.npy` for structured dtypes) and return (the JSON document that describes
    it, the sha256 of each file written by name). `save_value` stores the document as
    `<name>.json`; a cache entry keeps it in its manifest instead, one file fewer.

    Raises TypeError (naming the type and where in the value it is) for anything that
    cannot be stored exactly, before any file is written.
    """
    _check_name(name)
    folder = Path(folder)
    writer = _Writer(folder, name)
    doc: dict[str, Json] = {"format": FORMAT, "value": _encode(value, writer, name)}
    digests: dict[str, str] = {}
    if writer.arrays or writer.blob:
        if not folder.is_dir():
            folder.mkdir(parents=True, exist_ok=True)
    for index, array in enumerate(writer.arrays):
        with _naming(folder / f"{name}.{index}.npy"), open(folder / f"{name}.{index}.npy", "wb") as f:
            np.save(f, array, allow_pickle=False)
    if writer.blob:
        digests[f"{name}.bin"] = writer.write_blob(folder / f"{name}.bin")
    return doc, digests


def save_value(value: object, folder: Path, name: str = "value") -> dict[str, str]:
    """Write `value` as `<folder>/<name>.json`, plus `<folder>/<name>.bin` when it has
    arrays too large to be inline; returns the sha256 of each file written, by name (a
    cache entry records them without reading the files back).

    The JSON file is written last, so a save interrupted half-way reads as missing.
    Raises TypeError (naming the type and where in the value it is) for anything that
    cannot be stored exactly, before any file is written.
    """
    doc, digests = encode_value(value, folder, name)
    # compact: json's C encoder only serves calls without indentation (10x faster)
    data = json.dumps(doc, allow_nan=False, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    folder = Path(folder)
    if not folder.is_dir():
        folder.mkdir(parents=True, exist_ok=True)
    with _naming(folder / f"{name}.json"), open(folder / f"{name}.json", "wb") as f:
        f.write(data)
    digests[f"{name}.json"] = hashlib.sha256(data).hexdigest()
    return digests


def load_value(folder: Path, name: str = "value", mmap: bool = True, doc: object = None) -> object:
    """The value `save_value` wrote under `name` in `folder` (or `encode_value`, when its
    document `doc` is given: a cache entry's manifest holds it, already read).

    With `mmap` (the default) arrays are read-only (memory maps of `<name>.bin`, or views
    of the JSON's bytes); operators must not write into them. Without it they are
    ordinary (writable) arrays.
    Raises StoreError when the files are missing, damaged or of an unknown format.
    """
    _check_name(name)
    folder = Path(folder)
    path = folder / f"{name}.json"
    where = str(path) if doc is None else f"the value in {folder}"
    if doc is None:
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise StoreError(f"no stored value {name!r} in {folder}") from exc
        except (OSError, ValueError) as exc:
            raise StoreError(f"damaged value file {path}: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("format") not in READ_FORMATS or "value" not in doc:
        found = doc.get("format") if isinstance(doc, dict) else None
        raise StoreError(f"{where} is not a stored value of format {READ_FORMATS} (format {found!r})")
    try:
        return _decode(doc["value"], _Reader(folder, name, mmap))
    except StoreError as exc:
        raise StoreError(f"{where}: {exc}") from exc
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
        raise StoreError(f"{where}: malformed value ({type(exc).__name__}: {exc})") from exc
