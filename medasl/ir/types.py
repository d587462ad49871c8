"""Port types: what flows along an edge of the pipeline graph.

One uniform representation serves every type: a constructor name, its attributes
(dimensionality, modality, number of classes, shape, ...) and its type parameters
(`Pair<A, B>`, `Dataset<T>`). The table `CONSTRUCTORS` says which attributes and how many
parameters each constructor takes; the checker's matching rules are generic over it.

    Image[3, CT]                 Ty("Image", (3, "CT", UNKNOWN, UNKNOWN))
    Dataset<Pair<Image[3, CT], LabelMap[3, 2]>>
    (ProbMap[D, K], LabelMap[D, K]) -> Loss      a function type (losses, metrics)
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Var:
    """A type or attribute variable of an operator signature (`D`, `K`, `S`)."""

    name: str
    bound: Ty | None = field(default=None, compare=False)

    def __str__(self) -> str:
        return self.name


class _Unknown:
    """An attribute nobody knows yet (`?`): fits anything, and anything fits it."""

    _instance: _Unknown | None = None

    def __new__(cls) -> _Unknown:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "?"


UNKNOWN = _Unknown()

AttrValue = int | str | tuple | Var | _Unknown


@dataclass(frozen=True)
class Ty:
    name: str
    attrs: tuple[AttrValue, ...] = ()
    params: tuple[TyLike, ...] = ()

    def __str__(self) -> str:
        return format_type(self)


@dataclass(frozen=True)
class Fn:
    """The type of an operator used as a value: `(A, B) -> R`."""

    params: tuple[TyLike, ...]
    result: TyLike

    def __str__(self) -> str:
        return format_type(self)


TyLike = Ty | Fn | Var


@dataclass(frozen=True)
class Constructor:
    """What a type constructor takes: named attributes (the first `positional` may be
    written without names), the defaults of the rest, and a number of type parameters."""

    attrs: tuple[str, ...] = ()
    positional: int = 0
    defaults: tuple[AttrValue, ...] = ()
    params: int = 0
    doc: str = ""


MODALITIES = ("CT", "MR", "PET", "XR", "US", "Path", "Fluo", "Any")
MODALITY_DOCS = {
    "CT": "computed tomography, intensities in Hounsfield units",
    "MR": "magnetic resonance, intensities without a fixed scale",
    "PET": "positron emission tomography (SUV or counts)",
    "XR": "projection X-ray (radiograph)",
    "US": "ultrasound",
    "Path": "RGB pathology (H&E or other brightfield stains)",
    "Fluo": "fluorescence microscopy",
    "Any": "modality not declared",
}

# `grid` names the voxel grid (spacing, origin, direction, size) a value lives on: a
# token given by the checker (see semantics/grids.py), never written by users, not
# printed and not hashed (its numbering follows the order of checking).
_SPATIAL_EXTRA = ("channels", "shape", "dtype", "grid")

CONSTRUCTORS: dict[str, Constructor] = {
    # images and their labels
    "Image": Constructor(
        ("dim", "modality", *_SPATIAL_EXTRA), 2, (UNKNOWN, "Any", UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN),
        doc="an image with geometry (spacing, origin, direction)",
    ),
    "LabelMap": Constructor(
        ("dim", "classes", *_SPATIAL_EXTRA), 2, (UNKNOWN, UNKNOWN, 1, UNKNOWN, UNKNOWN, UNKNOWN),
        doc="a label map: one integer class per voxel, 0 = background",
    ),
    "ProbMap": Constructor(
        ("dim", "classes", *_SPATIAL_EXTRA), 2, (UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN),
        doc="per-class probabilities (or logits) per voxel, from a segmentation network",
    ),
    "OneHot": Constructor(
        ("dim", "classes", *_SPATIAL_EXTRA), 2, (UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN),
        doc="a label map encoded one channel per class",
    ),
    "Instances": Constructor(
        ("dim", *_SPATIAL_EXTRA), 1, (UNKNOWN, 1, UNKNOWN, UNKNOWN, UNKNOWN),
        doc="instance labels: 0 = background, 1..N one object each",
    ),
    "Boxes": Constructor(("dim", "classes"), 2, (UNKNOWN, UNKNOWN), doc="bounding boxes with scores"),
    "Points": Constructor(("dim",), 1, (UNKNOWN,), doc="points (e.g. nodule centres) in world coordinates"),
    "Class": Constructor(("classes",), 1, (UNKNOWN,), doc="one class label per case"),
    "Scores": Constructor(("classes",), 1, (UNKNOWN,), doc="class probabilities per case"),
    "DicomSeries": Constructor(("modality",), 1, ("Any",), doc="a DICOM series, not yet decoded"),
    "Annotations": Constructor(("dim",), 1, (UNKNOWN,), doc="a table of annotations (CSV)"),
    # collections
    "Pair": Constructor(params=2, doc="an input with its target, e.g. image and label"),
    "Dataset": Constructor(params=1, doc="a collection of cases"),
    "Split": Constructor(params=1, doc="a dataset split into train, val and test"),
    "Folds": Constructor(("k",), 1, (UNKNOWN,), params=1, doc="k cross-validation folds"),
    # `folds` names the kfold the value is per fold of (semantics/folds.py): a token known
    # to the checker, never written by users, not printed and not hashed
    "PerFold": Constructor(("k", "folds"), 1, (UNKNOWN, UNKNOWN), params=1,
                           doc="one value for every fold of a cross-validation (`folds.train`, what is made from it)"),
    # models
    "Model": Constructor(
        ("downsample",), 0, (UNKNOWN,), params=2, doc="an untrained network from input to output type"
    ),
    "Trained": Constructor(
        ("downsample",), 0, (UNKNOWN,), params=2, doc="a trained network with its training history"
    ),
    # scalars and values
    "int": Constructor(doc="an integer"),
    "float": Constructor(doc="a real number"),
    "bool": Constructor(doc="true or false"),
    "str": Constructor(doc="text"),
    "path": Constructor(doc="a file or folder path"),
    "mm": Constructor(doc="a length in millimetres (write `1.5 mm`, `0.2 cm`)"),
    "deg": Constructor(doc="an angle in degrees (write `10 deg` or `0.2 rad`)"),
    "bytes": Constructor(doc="an amount of memory (write `16 GB`)"),
    "Vec": Constructor(("length",), 1, (UNKNOWN,), params=1, doc="a fixed-length tuple"),
    "List": Constructor(params=1, doc="a list of values"),
    "Metric": Constructor(("goal",), 1, ("any",), doc="a score: higher or lower is better"),
    "Loss": Constructor(doc="a training loss value"),
    "Optimizer": Constructor(doc="an optimizer and its settings"),
    "Schedule": Constructor(doc="a learning-rate schedule"),
    "Figure": Constructor(doc="a picture"),
    "Table": Constructor(doc="a table of values"),
    "Report": Constructor(doc="a report file (HTML, Excel)"),
    "Device": Constructor(doc="where to run: cpu, gpu or a named device"),
    "Any": Constructor(doc="any value"),
}

SPATIAL_KINDS = ("Image", "LabelMap", "ProbMap", "OneHot", "Instances")
COLLECTIONS = ("Dataset", "Split", "Folds")  # whole datasets, not one case
HIDDEN_ATTRS = ("grid", "folds")  # known to the checker, not part of the type a user writes
LABEL_KINDS = ("LabelMap", "OneHot", "Instances")
NUMERIC = ("int", "float")

# Fields reachable with `.name`: constructor -> field -> index of the type parameter.
FIELDS: dict[str, dict[str, int]] = {
    "Pair": {"image": 0, "label": 1},
    "Split": {"train": 0, "val": 0, "test": 0},
    "Trained": {},
}


def scalar(name: str) -> Ty:
    return Ty(name)


INT, FLOAT, BOOL, STR, PATH, MM, DEG, BYTES = (
    scalar(n) for n in ("int", "float", "bool", "str", "path", "mm", "deg", "bytes")
)


def make(name: str, *attrs: AttrValue, params: tuple[TyLike, ...] = (), **named: AttrValue) -> Ty:
    """Build a type, filling attributes not given with the constructor's defaults."""
    cons = CONSTRUCTORS[name]
    values = list(cons.defaults)
    for i, value in enumerate(attrs):
        values[i] = value
    for key, value in named.items():
        values[cons.attrs.index(key)] = value
    return Ty(name, tuple(values), tuple(params))


def dataset(element: TyLike) -> Ty:
    return Ty("Dataset", (), (element,))


def vec(element: TyLike, length: AttrValue) -> Ty:
    return Ty("Vec", (length,), (element,))


def is_dataset(t: object) -> bool:
    return isinstance(t, Ty) and t.name == "Dataset"


def first_image(t: object) -> Ty | None:
    """The first `Image` in a type (itself, or inside a dataset or pair), if any."""
    if not isinstance(t, Ty):
        return None
    if t.name == "Image":
        return t
    return next((found for p in t.params if (found := first_image(p)) is not None), None)


def attr(t: Ty, name: str) -> AttrValue:
    cons = CONSTRUCTORS[t.name]
    return t.attrs[cons.attrs.index(name)] if name in cons.attrs else UNKNOWN


def with_attr(t: Ty, name: str, value: AttrValue) -> Ty:
    cons = CONSTRUCTORS[t.name]
    attrs = list(t.attrs)
    attrs[cons.attrs.index(name)] = value
    return Ty(t.name, tuple(attrs), t.params)


# ----- printing -----------------------------------------------------------------


def _format_attr(value: AttrValue) -> str:
    if value is UNKNOWN:
        return "_"
    if isinstance(value, Var):
        return _base_name(value)
    if isinstance(value, tuple):
        return "(" + ", ".join(str(v) for v in value) + ")"
    return str(value)


def format_type(t: TyLike) -> str:
    """The type as a user writes it: `Image[3, CT]`, `Dataset<Pair<...>>`, `mm[3]`."""
    if isinstance(t, Var):
        return _base_name(t)
    if isinstance(t, Fn):
        params = ", ".join(format_type(p) for p in t.params)
        return f"({params}) -> {format_type(t.result)}"
    cons = CONSTRUCTORS.get(t.name)
    if t.name == "Vec":
        return f"{format_type(t.params[0])}[{_format_attr(t.attrs[0])}]"
    text = t.name
    if cons and cons.attrs and t.attrs:
        shown = []
        for i, (name, value) in enumerate(zip(cons.attrs, t.attrs)):
            if i < cons.positional:
                shown.append(_format_attr(value))
            elif value != cons.defaults[i] and name not in HIDDEN_ATTRS:
                shown.append(f"{name}={_format_attr(value)}")
        while shown and shown[-1] == "_" and len(shown) <= cons.positional:
            shown.pop()
        if t.name == "Metric" and shown == ["any"]:
            shown = []
        if shown:
            text += "[" + ", ".join(shown) + "]"
    if t.params:
        text += "<" + ", ".join(format_type(p) for p in t.params) + ">"
    return text


def _base_name(v: Var) -> str:
    """A variable as written in its signature: fresh copies (`D'17`) are numbered by
    a process-wide counter, which must not leak into hashes or output."""
    return v.name.split("'")[0]


def type_to_json(t: TyLike, full: bool = False) -> object:
    """A JSON-friendly form of a type (for `--emit ir --format json` and hashing).
    Hashing leaves out the grid token and numbers of fresh variables (they follow the
    order of checking); `full=True` keeps them, so that `type_from_json` gives back
    the same type."""
    if isinstance(t, Var):
        return {"var": t.name if full else _base_name(t)}
    if isinstance(t, Fn):
        return {"fn": [type_to_json(p, full) for p in t.params], "result": type_to_json(t.result, full)}

    def attr_json(v: AttrValue) -> object:
        if v is UNKNOWN:
            return None
        if isinstance(v, Var):
            return {"var": v.name if full else _base_name(v)}
        return list(v) if isinstance(v, tuple) else v

    out: dict[str, object] = {"type": t.name}
    if t.attrs:
        names = CONSTRUCTORS[t.name].attrs if t.name in CONSTRUCTORS else ()
        out["attrs"] = [None if not full and i < len(names) and names[i] in HIDDEN_ATTRS else attr_json(a)
                        for i, a in enumerate(t.attrs)]
    if t.params:
        out["params"] = [type_to_json(p, full) for p in t.params]
    return out


def type_from_json(data: object) -> TyLike:
    """The type `type_to_json(t, full=True)` wrote."""
    assert isinstance(data, dict), data
    if "var" in data:
        return Var(str(data["var"]))
    if "fn" in data:
        return Fn(tuple(type_from_json(p) for p in data["fn"]), type_from_json(data["result"]))

    def attr_from(v: object) -> AttrValue:
        if v is None:
            return UNKNOWN
        if isinstance(v, dict):
            return Var(str(v["var"]))
        if isinstance(v, list):
            return tuple(v)
        return v  # type: ignore[return-value]

    return Ty(str(data["type"]), tuple(attr_from(a) for a in data.get("attrs", ())),
              tuple(type_from_json(p) for p in data.get("params", ())))
