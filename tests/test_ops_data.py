"""std.data operators (medasl/ops/data.py): determinism, proportions, stratification,
k-fold partitions, errors, and stability when a case is added."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

np = pytest.importorskip("numpy", reason="the runtime needs numpy (pip install -e '.[run]')")

from medasl.ops import data  # noqa: E402 (after the skip)
from medasl.runtime.errors import DataError  # noqa: E402
from medasl.runtime.values import Case, Pair  # noqa: E402
from tests.conftest import ROOT  # noqa: E402


def cases(n: int, prefix: str = "case") -> list[Case]:
    return [Case(f"{prefix}{i:03d}", i) for i in range(n)]


def labelled(counts: dict[int, int]) -> list[Case]:
    out = []
    for label, count in counts.items():
        out += [Case(f"c{label}-{i:03d}", Pair(f"img{label}-{i}", label)) for i in range(count)]
    return out


def ids(part: list[Case]) -> list[str]:
    return [c.id for c in part]


def parts(s: data.Split) -> tuple[list[str], list[str], list[str]]:
    return ids(s.train), ids(s.val), ids(s.test)


def error_of(fn, *args, **kwargs) -> DataError:
    with pytest.raises(DataError) as info:
        fn(*args, **kwargs)
    return info.value


# ----- determinism ------------------------------------------------------------------------


def test_split_is_independent_of_input_order() -> None:
    ds = cases(50)
    first = data.split(ds, val=0.2, test=0.1, seed=7)
    for perm_seed in range(5):
        shuffled = [ds[int(i)] for i in np.random.default_rng(perm_seed).permutation(len(ds))]
        assert parts(data.split(shuffled, val=0.2, test=0.1, seed=7)) == parts(first)


def test_seed_changes_the_split() -> None:
    ds = cases(50)
    assert parts(data.split(ds, seed=1)) != parts(data.split(ds, seed=2))


def test_parts_cover_every_case_once_in_id_order() -> None:
    ds = cases(37)
    s = data.split(list(reversed(ds)), val=0.2, test=0.2, seed=3)
    train, val, test = parts(s)
    assert sorted(train + val + test) == ids(ds)
    for part in (train, val, test):
        assert part == sorted(part)


_CHILD = """
import json, sys
from medasl.ops import data
from medasl.runtime.values import Case
ds = [Case(f"case{i:03d}", i) for i in range(40)]
s = data.split(ds, val=0.25, test=0.1, seed=11)
f = data.kfold(ds, k=4, seed=11)
print(json.dumps([[c.id for c in p] for p in (s.train, s.val, s.test)]
                 + [[[c.id for c in fo] for fo in f.folds], [c.id for c in data.shuffle(ds, seed=11)]]))
"""


def test_same_result_in_other_processes_and_hash_seeds() -> None:
    results = []
    for hash_seed in ("0", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        out = subprocess.run([sys.executable, "-c", _CHILD], cwd=ROOT, env=env, capture_output=True,
                             text=True, check=True)
        results.append(json.loads(out.stdout))
    ds = cases(40)
    s = data.split(ds, val=0.25, test=0.1, seed=11)
    here = [ids(p) for p in (s.train, s.val, s.test)]
    here += [[ids(fo) for fo in data.kfold(ds, k=4, seed=11).folds], ids(data.shuffle(ds, seed=11))]
    assert results[0] == results[1] == here


# ----- proportions --------------------------------------------------------------------------


@pytest.mark.parametrize("n", [5, 10, 17, 100, 333])
@pytest.mark.parametrize(("val", "test"), [(0.2, 0.0), (0.2, 0.1), (0.15, 0.15), (0.3, 0.3)])
def test_part_sizes_are_within_one_case_of_their_fraction(n: int, val: float, test: float) -> None:
    try:
        s = data.split(cases(n), val=val, test=test, seed=0)
    except DataError as e:
        assert e.code == "E1011"
        return
    assert len(s.test) == int(test * n + 1e-9)  # never more than asked
    assert len(s.val) + len(s.test) == int((val + test) * n + 1e-9)
    for part, frac in ((s.train, 1 - val - test), (s.val, val), (s.test, test)):
        assert abs(len(part) - frac * n) < 1


def test_default_split_sizes() -> None:
    s = data.split(cases(10))
    assert (len(s.train), len(s.val), len(s.test)) == (8, 2, 0)


# ----- stratification -----------------------------------------------------------------------


@pytest.mark.parametrize("counts", [{0: 50, 1: 10}, {0: 7, 1: 13, 2: 3, 5: 31}, {1: 100, 2: 1, 3: 9}])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_stratified_parts_keep_class_proportions(counts: dict[int, int], seed: int) -> None:
    s = data.split(labelled(counts), val=0.2, test=0.1, seed=seed, stratify=True)
    for part, frac in ((s.train, 0.7), (s.val, 0.2), (s.test, 0.1)):
        got = {label: 0 for label in counts}
        for c in part:
            got[c.value.target] += 1
        for label, n in counts.items():
            assert abs(got[label] - frac * n) < 1, (label, n, frac, got)


def test_stratified_is_independent_of_input_order() -> None:
    ds = labelled({0: 20, 1: 9, 2: 14})
    a = data.split(ds, val=0.3, seed=4, stratify=True)
    b = data.split(list(reversed(ds)), val=0.3, seed=4, stratify=True)
    assert parts(a) == parts(b)


def test_stratify_accepts_numpy_integers() -> None:
    ds = [Case(f"c{i}", Pair("x", np.int64(i % 2))) for i in range(20)]
    s = data.split(ds, val=0.5, seed=0, stratify=True)
    assert sorted(c.value.target for c in s.val) == [0] * 5 + [1] * 5


def test_stratify_on_segmentation_is_a_value_error() -> None:
    from medasl.runtime.values import Volume

    vol = Volume(np.zeros((2, 2, 2)), (1, 1, 1), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    ds = [Case(f"c{i}", Pair(vol, vol.with_array(vol.array, kind="labels"))) for i in range(10)]
    with pytest.raises(ValueError, match="segmentation"):
        data.split(ds, stratify=True)
    with pytest.raises(ValueError, match="classification pairs"):
        data.split(cases(10), stratify=True)


# ----- k-fold ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "k"), [(10, 5), (23, 5), (7, 7), (100, 3), (2, 2)])
def test_kfold_partitions_the_cases(n: int, k: int) -> None:
    ds = cases(n)
    folds = data.kfold(ds, k=k, seed=5)
    assert folds.k == k
    sizes = [len(f) for f in folds.folds]
    assert max(sizes) - min(sizes) <= 1
    vals = []
    for i in range(k):
        s = data.fold(folds, i)
        assert s.test == []
        assert sorted(ids(s.train) + ids(s.val)) == ids(ds)
        assert not set(ids(s.train)) & set(ids(s.val))
        vals += ids(s.val)
    assert sorted(vals) == ids(ds)  # every case is in exactly one validation fold


def test_kfold_is_independent_of_input_order_and_depends_on_seed() -> None:
    ds = cases(30)
    a = data.kfold(ds, k=5, seed=1)
    assert [ids(f) for f in a.folds] == [ids(f) for f in data.kfold(list(reversed(ds)), k=5, seed=1).folds]
    assert [ids(f) for f in a.folds] != [ids(f) for f in data.kfold(ds, k=5, seed=2).folds]


def test_fold_index_out_of_range() -> None:
    folds = data.kfold(cases(10), k=5)
    with pytest.raises(ValueError, match="out of range"):
        data.fold(folds, 5)
    with pytest.raises(ValueError, match="out of range"):
        data.fold(folds, -1)


# ----- subsets --------------------------------------------------------------------------------


def test_take_in_case_id_order() -> None:
    ds = cases(10)
    assert ids(data.take(list(reversed(ds)), 3)) == ["case000", "case001", "case002"]
    assert len(data.take(ds, 50)) == 10
    assert data.take(ds, 0) == []


def test_shuffle_reproducible_and_order_independent() -> None:
    ds = cases(30)
    a = data.shuffle(ds, seed=3)
    assert ids(a) == ids(data.shuffle(list(reversed(ds)), seed=3))
    assert ids(a) != ids(ds) and sorted(ids(a)) == ids(ds)
    assert ids(a) != ids(data.shuffle(ds, seed=4))


def test_concat_keeps_order() -> None:
    a, b = cases(3, "a"), cases(2, "b")
    assert ids(data.concat(a, b)) == ["a000", "a001", "a002", "b000", "b001"]


# ----- errors ---------------------------------------------------------------------------------


def test_empty_part_is_e1011_with_sizes() -> None:
    e = error_of(data.split, cases(3), val=0.2)
    assert e.code == "E1011" and "val" in e.message and "train 3, val 0, test 0" in e.message
    e = error_of(data.split, cases(4), val=0.5, test=0.1)
    assert e.code == "E1011" and "test" in e.message
    assert error_of(data.split, cases(5), val=0.5, test=0.5).code == "E1011"  # train empty
    assert error_of(data.split, [], val=0.2).code == "E1011"
    # a zero fraction leaves its part empty on purpose
    assert data.split(cases(5), val=0.2, test=0.0).test == []


def test_stratified_empty_part_is_e1011() -> None:
    assert error_of(data.split, labelled({0: 1, 1: 1}), val=0.2, stratify=True).code == "E1011"


def test_k_out_of_range_is_e1011() -> None:
    e = error_of(data.kfold, cases(4), k=5)
    assert e.code == "E1011" and "5-fold" in e.message and "4 cases" in e.message
    assert error_of(data.kfold, cases(4), k=0).code == "E1011"
    assert error_of(data.kfold, [], k=1).code == "E1011"


@pytest.mark.parametrize("n", [1, 3])
def test_a_single_fold_trains_and_validates_on_every_case(n: int) -> None:
    """k=1 is nnU-Net's fold "all"."""
    folds = data.kfold(cases(n), k=1, seed=3)
    s = data.fold(folds, 0)
    assert ids(s.train) == ids(s.val) == sorted(ids(cases(n))) and s.test == []


def test_duplicate_ids_are_e1012() -> None:
    dup = [*cases(5), Case("case002", 99)]
    for fn, kwargs in ((data.split, {}), (data.kfold, {"k": 2}), (data.take, {"n": 1}), (data.shuffle, {})):
        e = error_of(fn, dup, **kwargs)
        assert e.code == "E1012" and "'case002'" in e.message
    assert error_of(data.concat, cases(3), cases(2)).code == "E1012"


def test_bad_fractions_are_value_errors() -> None:
    with pytest.raises(ValueError):
        data.split(cases(10), val=-0.1)
    with pytest.raises(ValueError):
        data.split(cases(10), val=1.0)
    with pytest.raises(TypeError):
        data.split([1, 2, 3])


# ----- stability when a case is added -------------------------------------------------------


def _moved(before: data.Split, after: data.Split) -> dict[tuple[str, str], int]:
    where = {}
    for name in ("train", "val", "test"):
        for c in getattr(before, name):
            where[c.id] = name
    moves: dict[tuple[str, str], int] = {}
    for name in ("train", "val", "test"):
        for c in getattr(after, name):
            if c.id in where and where[c.id] != name:
                moves[(where[c.id], name)] = moves.get((where[c.id], name), 0) + 1
    return moves


@pytest.mark.parametrize("seed", range(4))
def test_adding_a_case_moves_at_most_one_case_between_train_and_val(seed: int) -> None:
    for n in range(5, 80):
        ds = cases(n + 1)
        before = data.split(ds[:n], val=0.2, seed=seed)
        after = data.split(ds, val=0.2, seed=seed)
        assert sum(_moved(before, after).values()) <= 1, n


@pytest.mark.parametrize("seed", range(4))
def test_adding_a_case_moves_at_most_one_case_per_boundary(seed: int) -> None:
    for n in range(10, 80):
        ds = cases(n + 1)
        moves = _moved(data.split(ds[:n], val=0.2, test=0.15, seed=seed),
                       data.split(ds, val=0.2, test=0.15, seed=seed))
        assert sum(moves.values()) <= 2, (n, moves)
        assert moves.get(("train", "test"), 0) + moves.get(("test", "train"), 0) == 0  # not adjacent


def test_adding_a_case_to_one_class_leaves_other_classes_alone() -> None:
    base = labelled({0: 30, 1: 12, 2: 20})
    extra = Case("c1-999", Pair("new", 1))
    before = data.split(base, val=0.25, seed=3, stratify=True)
    after = data.split([*base, extra], val=0.25, seed=3, stratify=True)
    moves = _moved(before, after)
    assert sum(moves.values()) <= 1
    for name in ("train", "val"):
        keep = [c.id for c in getattr(before, name) if c.value.target != 1]
        assert keep == [c.id for c in getattr(after, name) if c.value.target != 1]


def test_adding_a_case_moves_at_most_one_case_per_kfold_cut() -> None:
    k = 5
    for n in range(k, 60):
        ds = cases(n + 1)
        before, after = data.kfold(ds[:n], k=k, seed=2), data.kfold(ds, k=k, seed=2)
        fold_of = {c.id: j for j, f in enumerate(before.folds) for c in f}
        moved = sum(1 for j, f in enumerate(after.folds) for c in f if c.id in fold_of and fold_of[c.id] != j)
        assert moved <= k - 1, n


def test_operators_table() -> None:
    assert set(data.OPERATORS) == {"split", "kfold", "fold", "take", "shuffle", "concat", "subset", "paired",
                                   "cross_validated"}


def test_subset_keeps_or_leaves_out_cases_by_id() -> None:
    cases = [Case(f"c{i}", i) for i in range(5)]
    assert [c.id for c in data.subset(cases, ("c3", "c1"))] == ["c1", "c3"]
    assert [c.id for c in data.subset(cases, ("c3", "c1"), exclude=True)] == ["c0", "c2", "c4"]
    with pytest.raises(DataError) as caught:
        data.subset(cases, ("c1", "c9"))
    assert caught.value.code == "E1005" and "c9" in caught.value.message
