"""std.data: splits, cross-validation folds and subsets of datasets (stdlib/data.medas).

Each public function implements the operator of the same name; the executor binds them
by name (see `OPERATORS`) and calls them with keyword arguments named as in the
signature. A dataset is a sequence of `Case(id, value)`; a list is accepted as one.

Conventions every operator here keeps, and why:

- Every random choice depends only on the seed and the case ids, never on the order the
  cases arrive in, on Python's hash seed or on the process: each case gets the key
  `sha256(f"{seed}:{id}")`, and cases are ranked by that key. A reader that lists files
  in another order, or a run on another machine, gives the same split.
- Parts are contiguous ranges of that ranking with sizes that never shrink when a case
  is added, so adding one case to a dataset moves at most one existing case across each
  boundary between parts (at most one between train and val when `test` is 0, at most
  one into or out of each k-fold fold boundary). Assigning each case independently by
  its key would move none, but would give only approximate part sizes.
- Parts hold their cases in case-id order, so written outputs and cache keys do not
  depend on the ranking.
- Problems in the data are `DataError`s: a part that would be empty (E1011), a case id
  that occurs twice (E1012). Requests the checker should already refuse (stratifying a
  segmentation dataset, a negative fraction) are `ValueError`s.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from numbers import Integral

from medasl.runtime.errors import DataError
from medasl.runtime.values import Case, Measured, Pair, Volume

_MAX_LISTED = 10  # ids named in one message before "and N more"
_EPS = 1e-9  # so that 0.7 * 10 == 7.000000000000001 still floors to 7, and 0.29 * 100 to 29


@dataclass(frozen=True)
class Split:
    """A `Split<T>` value: the train, validation and test parts, each a list of cases in
    case-id order. Every case of the dataset is in exactly one part."""

    train: list[Case]
    val: list[Case]
    test: list[Case]


@dataclass(frozen=True)
class Folds:
    """A `Folds<T>` value: `k` disjoint folds (lists of cases in case-id order) that
    together hold every case once; fold sizes differ by at most one."""

    folds: list[list[Case]]

    @property
    def k(self) -> int:
        """The number of folds."""
        return len(self.folds)


# ===== helpers ================================================================================


def _listed(ids: Sequence[str]) -> str:
    shown = ", ".join(repr(i) for i in ids[:_MAX_LISTED])
    return shown if len(ids) <= _MAX_LISTED else f"{shown} and {len(ids) - _MAX_LISTED} more"


def _cases(data: Iterable[Case]) -> list[Case]:
    """`data` as a list of cases; E1012 when a case id occurs more than once, because a
    split by id could then put the same case in train and in test."""
    cases = list(data)
    for c in cases:
        if not isinstance(c, Case):
            raise TypeError(f"a dataset holds Case values, not {type(c).__name__}")
    repeated = sorted(i for i, n in Counter(c.id for c in cases).items() if n > 1)
    if repeated:
        raise DataError("E1012", f"case ids occur more than once in the dataset: {_listed(repeated)}",
                        help="case ids must be unique; check the file pattern, or that the same files "
                             "are not listed twice")
    return cases


def _key(seed: int, case_id: str) -> bytes:
    """The rank key of a case: depends only on the seed and the id."""
    return hashlib.sha256(f"{int(seed)}:{case_id}".encode()).digest()


def _ranked(cases: list[Case], seed: int) -> list[Case]:
    return sorted(cases, key=lambda c: _key(seed, c.id))


def _by_id(cases: Iterable[Case]) -> list[Case]:
    return sorted(cases, key=lambda c: c.id)


def _phase(seed: int, label: object) -> float:
    """A rounding phase in [0, 1) for one class, from the seed and the class label, so that
    many small classes do not all round their parts down the same way."""
    digest = hashlib.sha256(f"{int(seed)}:class:{label!r}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def _boundaries(n: int, test: float, val: float, phase: float = 0.0) -> tuple[int, int]:
    """(cases in test, cases in test or val) among `n` ranked cases: floor(f * n + phase)
    for the cumulative fractions. Both never decrease as `n` grows and grow by at most one
    per added case; each part is within one case of its fraction of `n`."""
    b1 = min(n, math.floor(test * n + phase + _EPS))
    b2 = min(n, max(b1, math.floor((test + val) * n + phase + _EPS)))
    return b1, b2


def _class_label(case: Case) -> int:
    """The class label a stratified split keeps proportions of."""
    value = case.value
    if not isinstance(value, Pair):
        raise ValueError(f"stratify=true needs classification pairs, case {case.id!r} holds a "
                         f"{type(value).__name__}")
    target = value.target
    if isinstance(target, bool) or not isinstance(target, Integral):
        raise ValueError(f"stratify=true needs a class label (an int) as target, case {case.id!r} has a "
                         f"{type(target).__name__} (stratifying segmentation data is not defined)")
    return int(target)


# ===== splits =================================================================================


def split(data: Iterable[Case], val: float = 0.2, test: float = 0.0, seed: int = 0,
          stratify: bool = False) -> Split:
    """Split cases into train, validation and test parts.

    Cases are ranked by `sha256(seed:id)`; the first `floor(test * n)` go to test, the
    cases up to `floor((test + val) * n)` to val, the rest to train. So test, and test
    and val together, never hold more than their fraction, and each part is within one
    case of its fraction (val may get the case that test's rounding left).

    With `stratify`, the same is done within each class (the int `target` of each
    `Pair`), with a rounding phase per class drawn from the seed so that small classes do
    not all round down: every part holds each class's share within one case.

    E1011 when a part with a non-zero fraction (or train) would be empty; E1012 when a
    case id repeats. Adding one case moves at most one existing case across each part
    boundary (within its class, when stratified; other classes do not change).
    """
    if not (0.0 <= val < 1.0 and 0.0 <= test < 1.0):
        raise ValueError(f"val and test are fractions in [0, 1), got val={val}, test={test}")
    cases = _cases(data)
    if stratify:
        groups: dict[int, list[Case]] = {}
        for c in cases:
            groups.setdefault(_class_label(c), []).append(c)
        parts: tuple[list[Case], list[Case], list[Case]] = ([], [], [])
        for label in sorted(groups):
            ranked = _ranked(groups[label], seed)
            b1, b2 = _boundaries(len(ranked), test, val, _phase(seed, label))
            parts[2].extend(ranked[:b1])
            parts[1].extend(ranked[b1:b2])
            parts[0].extend(ranked[b2:])
        train, val_part, test_part = parts
    else:
        ranked = _ranked(cases, seed)
        b1, b2 = _boundaries(len(ranked), test, val)
        train, val_part, test_part = ranked[b2:], ranked[b1:b2], ranked[:b1]
    empty = [name for name, part, frac in (("train", train, 1.0), ("val", val_part, val), ("test", test_part, test))
             if frac > 0 and not part]
    if empty:
        sizes = f"train {len(train)}, val {len(val_part)}, test {len(test_part)}"
        raise DataError("E1011", f"splitting {len(cases)} cases with val={val}, test={test} would leave "
                                 f"{' and '.join(empty)} empty ({sizes})",
                        help="use more cases or larger fractions (a part gets floor(fraction * cases) "
                             "cases), or set the part's fraction to 0")
    return Split(_by_id(train), _by_id(val_part), _by_id(test_part))


def kfold(data: Iterable[Case], k: int = 5, seed: int = 0) -> Folds:
    """Partition cases into `k` cross-validation folds.

    Cases are ranked by `sha256(seed:id)` and cut into `k` contiguous blocks at
    `floor(j * n / k)`, so fold sizes differ by at most one and adding one case moves at
    most one existing case across each of the `k - 1` cuts.

    `k=1` is nnU-Net's fold "all": one fold holding every case, which `fold` turns into
    a split whose training and validation parts are both all the cases. It trains a
    final model on everything, or checks on a single case that a pipeline runs and can
    fit; its validation scores are on training data and say nothing about new cases.
    E1011 when `k` is below 1 or above the number of cases (a fold would be empty).
    """
    cases = _cases(data)
    n = len(cases)
    if k < 1 or k > n:
        raise DataError("E1011", f"{k}-fold cross-validation of {n} cases would leave a fold empty",
                        help="k must be at least 1 (1: train and validate on all cases) and at most the "
                             "number of cases")
    ranked = _ranked(cases, seed)
    cuts = [j * n // k for j in range(k + 1)]
    return Folds([_by_id(ranked[cuts[j]:cuts[j + 1]]) for j in range(k)])


def fold(folds: Folds, index: int) -> Split:
    """The split of one cross-validation fold: fold `index` (0-based) is val, the others,
    together, are train (in case-id order); test is empty. With a single fold (`k=1`)
    train and val are both every case."""
    if not 0 <= index < folds.k:
        raise ValueError(f"fold index {index} is out of range for {folds.k} folds (0 to {folds.k - 1})")
    if folds.k == 1:
        return Split(list(folds.folds[0]), list(folds.folds[0]), [])
    train = [c for j, f in enumerate(folds.folds) if j != index for c in f]
    return Split(_by_id(train), list(folds.folds[index]), [])


# ===== subsets ================================================================================


def take(data: Iterable[Case], n: int) -> list[Case]:
    """The first `n` cases in case-id order (all of them when there are fewer)."""
    if n < 0:
        raise ValueError(f"take needs n >= 0, got {n}")
    return _by_id(_cases(data))[:n]


def subset(data: Iterable[Case], ids: Sequence[str], exclude: bool = False) -> list[Case]:
    """The cases whose id is in `ids` (every other case with `exclude`), in their order;
    E1005 naming any id the dataset does not have."""
    cases = _cases(data)
    wanted = [str(i) for i in ids]
    unknown = sorted(set(wanted) - {c.id for c in cases})
    if unknown:
        raise DataError("E1005", f"subset: the dataset has no case {_listed(unknown)}",
                        help=f"its cases are {_listed([c.id for c in cases])}")
    keep = set(wanted)
    return [c for c in cases if (c.id in keep) != exclude]


def shuffle(data: Iterable[Case], seed: int = 0) -> list[Case]:
    """The cases ranked by `sha256(seed:id)`: a random order reproducible from the seed,
    the same whatever order the cases arrive in."""
    return _ranked(_cases(data), seed)


def concat(a: Iterable[Case], b: Iterable[Case]) -> list[Case]:
    """The cases of `a` followed by those of `b`; E1012 when an id repeats."""
    return _cases([*a, *b])


def paired(input: object, target: object) -> Pair:
    """One case of two datasets read separately, as an (input, target) pair; the
    executor applies it case by case, matching the cases by id (E1013 names the ids
    found in one dataset only). A target on a voxel grid must cover its image voxel for
    voxel, as in `folder`: the same grid stored in another axis order is re-stored
    exactly, any other difference is E1007."""
    if isinstance(input, Volume) and isinstance(target, Volume):
        aligned = target.aligned_to(input)
        if aligned is None:
            how = "; ".join(input.grid_differences(target))
            raise DataError("E1007", f"the input {input.source} and the target {target.source} are on different "
                            f"voxel grids: {how} (input vs target)", target.source,
                            help="pair files of the same case, or resample the target onto its image "
                                 "(nearest neighbour) first")
        target = aligned
    return Pair(input, target)


def cross_validated(per_fold: Sequence[Measured]) -> Measured:
    """A metric over the folds of a cross-validation: the mean of the folds' values (NaN
    folds left out), the value of every fold by its index, every fold's per-case values
    (a case id met in two folds, as when every fold model is scored on one test set, is
    kept as `fold <i>: <id>`) and the mean over the folds of each class's mean."""
    folds = list(per_fold)
    if not folds:
        raise DataError("E2081", "a cross-validated metric needs the metric of at least one fold",
                        help="give `cross_validated` one metric per fold, in fold order")
    values = [float(m.value) for m in folds]
    defined = [v for v in values if not math.isnan(v)]
    ids = [cid for m in folds for cid in m.per_case]
    shared = len(ids) != len(set(ids))
    per_case = {(f"fold {i}: {cid}" if shared else cid): v for i, m in enumerate(folds) for cid, v in m.per_case.items()}
    per_class: dict[str, float] = {}
    for name in dict.fromkeys(c for m in folds for c in m.per_class):
        found = [float(m.per_class[name]) for m in folds if name in m.per_class and not math.isnan(m.per_class[name])]
        per_class[name] = sum(found) / len(found) if found else math.nan
    return Measured(folds[0].name, folds[0].goal, sum(defined) / len(defined) if defined else math.nan,
                    per_case, per_class, {str(i): v for i, v in enumerate(values)})


def fold_spread(metric: Measured) -> float:
    """The sample standard deviation (n - 1) of a cross-validated metric's fold values
    (NaN folds left out); NaN with fewer than two."""
    defined = [float(v) for v in metric.per_fold.values() if not math.isnan(float(v))]
    if len(defined) < 2:
        return math.nan
    mean = sum(defined) / len(defined)
    return math.sqrt(sum((v - mean) ** 2 for v in defined) / (len(defined) - 1))


OPERATORS: dict[str, Callable[..., object]] = {
    "cross_validated": cross_validated,
    "split": split, "kfold": kfold, "fold": fold, "take": take, "shuffle": shuffle, "concat": concat,
    "subset": subset, "paired": paired,
}
"""The std.data operators implemented here, by the name of their stdlib signature."""
