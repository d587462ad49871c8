"""Slot matching rules, one at a time (medasl/semantics/matching.py)."""

from __future__ import annotations

import pytest

from medasl.ir.types import FLOAT, INT, PATH, STR, UNKNOWN, Fn, Ty, Var, dataset, format_type, make, vec
from medasl.semantics.matching import Mismatch, finalize, fit, merge, resolve

D, M, K = Var("D"), Var("M"), Var("K")


def test_ct_fits_any_modality_and_a_variable() -> None:
    ct = make("Image", 3, "CT")
    fit(ct, make("Image", 3, "Any"), {})
    subst: dict = {}
    fit(ct, make("Image", D, M), subst)
    assert subst == {"D": 3, "M": "CT"}


def test_undeclared_modality_does_not_fit_ct() -> None:
    with pytest.raises(Mismatch) as exc:
        fit(make("Image", 3, "Any"), make("Image", D, "CT"), {})
    assert exc.value.attr == "modality"


def test_variables_must_agree() -> None:
    subst: dict = {}
    fit(make("ProbMap", 3, 2), make("ProbMap", D, K), subst)
    with pytest.raises(Mismatch) as exc:
        fit(make("LabelMap", 3, 3), make("LabelMap", D, K), subst)
    assert (exc.value.attr, exc.value.actual_value, exc.value.expected_value) == ("classes", 3, 2)


def test_unknown_attributes_fit_and_are_learnt() -> None:
    subst: dict = {}
    fit(make("LabelMap", 3, UNKNOWN), make("LabelMap", D, K), subst)
    fit(make("ProbMap", 3, 4), make("ProbMap", D, K), subst)
    assert subst["K"] == 4


def test_scalars() -> None:
    fit(INT, FLOAT, {})
    fit(STR, PATH, {})
    with pytest.raises(Mismatch):
        fit(FLOAT, INT, {})
    with pytest.raises(Mismatch):
        fit(vec(INT, 2), vec(INT, 3), {})


def test_spatial_bound() -> None:
    s = Var("S", Ty("Spatial", (D,)))
    subst: dict = {}
    fit(make("LabelMap", 2, 3), s, subst)
    assert subst["D"] == 2
    with pytest.raises(Mismatch):
        fit(INT, Var("S", Ty("Spatial", (D,))), {})


def test_function_slots_are_contravariant() -> None:
    # slot: (ProbMap[3, 2], LabelMap[3, 2]) -> Loss ; value: (ProbMap[D, K], LabelMap[D, K]) -> Loss
    slot = Fn((make("ProbMap", 3, 2), make("LabelMap", 3, 2)), Ty("Loss"))
    dice_ce = Fn((make("ProbMap", D, K), make("LabelMap", D, K)), Ty("Loss"))
    fit(dice_ce, slot, {})
    ce_class = Fn((make("Scores", K), make("Class", K)), Ty("Loss"))
    with pytest.raises(Mismatch):
        fit(ce_class, slot, {})


def test_function_slot_learns_unbound_variables() -> None:
    o, lab = Var("O"), Var("L")
    subst: dict = {"O": make("ProbMap", 3, 2)}
    fit(Fn((make("ProbMap", D, K), make("LabelMap", D, K)), Ty("Loss")), Fn((o, lab), Ty("Loss")), subst)
    # D and K of the function are learnt from O, so L is fully known
    assert format_type(resolve(lab, subst)) == "LabelMap[3, 2]"


def test_finalize_and_merge() -> None:
    t = finalize(make("Image", D, M))
    assert t == make("Image", UNKNOWN, "Any")
    assert merge(make("Image", 3, "CT"), make("Image", 3, "CT", shape=(4, 4, 4))) == make("Image", 3, "CT", shape=(4, 4, 4))


def test_format_type() -> None:
    assert format_type(dataset(Ty("Pair", (), (make("Image", 3, "CT"), make("LabelMap", 3, 2))))) == \
        "Dataset<Pair<Image[3, CT], LabelMap[3, 2]>>"
    assert format_type(vec(Ty("mm"), 3)) == "mm[3]"
    assert format_type(make("Metric", "max")) == "Metric[max]"
