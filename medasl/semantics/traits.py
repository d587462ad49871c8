"""What a node does, from its operator's signature: the facts passes and the runtime
read from the IR instead of re-deriving them (docs/compiler.md, "Node facts").

The tables below are the few facts a signature cannot state with an attribute; they
are data, and the runtime's registry reads them from here (one place for each fact).
"""

from __future__ import annotations

from medasl.ir.types import LABEL_KINDS, Ty, TyLike, format_type
from medasl.semantics.signatures import OpSig

SELECTIONS = frozenset({"field", "split", "kfold", "fold", "take", "shuffle", "concat", "subset"})
"""Operators that only regroup cases (run on references, never stored)."""

EXPANDS = {"patches": "per_case", "box_patches": "per_case"}
"""Operators turning one case into several: the parameter saying how many."""

SOURCES = frozenset({"folder", "instance_folder", "images", "dicom_folder", "phantom", "atrophy_phantom",
                     "classified", "slide_tiles", "datalist", "stacked_classified", "stacked_labels",
                     "mask_folder"})
"""Operators that make a dataset from files (listed first, then read case by case)."""

EXPENSIVE = frozenset({"n4_bias_correction", "register_rigid", "register_affine", "histogram_match",
                       "stain_normalize_macenko", "lung_mask", "train", "infer"})
"""Operators whose results cost far more to compute than to store: always stored, so
that changing a parameter downstream never recomputes them (`place_storage`)."""


def traits(sig: OpSig | None, op: str, stage: str) -> frozenset[str]:
    """The traits (`medasl.ir.graph.TRAITS`) of a node applying `op`."""
    found: set[str] = set()
    if op in SELECTIONS:
        found.add("selection")
    if sig is None:
        return frozenset(found)
    for attribute in ("spatial", "intensity", "random", "metric"):
        if sig.has(attribute):
            found.add(attribute)
    if op in SOURCES:
        found.add("source")
    if op in EXPANDS:
        found.add("expands")
    if op in EXPENSIVE:
        found.add("expensive")
    if sig.module == "std.nets":
        found.add("network")
    if stage in ("output", "report") and "path" in path_params(sig):
        found.add("writer")
    if stage == "report":
        found.add("report")
    return frozenset(found)


def path_params(sig: OpSig | None) -> tuple[str, ...]:
    """The parameters naming files or folders (their content is an input of the step)."""
    return tuple(p.name for p in sig.params if format_type(p.type) == "path") if sig else ()


def interpolation(sig: OpSig | None, args: dict[str, object], result: TyLike) -> str | None:
    """How a spatial node interpolates the images it moves: what `interp` asks for, else
    linear; label maps (and a pair's label) are always nearest neighbour."""
    if sig is None or not sig.has("spatial"):
        return None
    if isinstance(result, Ty) and _only_labels(result):
        return "nearest"
    asked = args.get("interp")
    value = getattr(asked, "value", None)
    return str(value) if isinstance(value, str) and value != "auto" else "linear"


def _only_labels(t: Ty) -> bool:
    if t.name in ("Dataset", "Vec", "List") and t.params:
        inner = t.params[0]
        return isinstance(inner, Ty) and _only_labels(inner)
    return t.name in LABEL_KINDS
