"""Stratified, disjoint, deterministic folds; never silently replaced."""
import json

import numpy as np
import pytest

from neonet_toolkit.dataset.errors import DatasetError
from neonet_toolkit.experiment_planning.splits import (
    check_splits, get_fold, make_stratified_splits, write_or_reuse_splits)


def _labels(n_pos=44, n_neg=84):
    ids = [f"case_{i:03d}" for i in range(n_pos + n_neg)]
    rng = np.random.default_rng(1)
    y = np.array([1] * n_pos + [0] * n_neg)
    rng.shuffle(y)
    return dict(zip(ids, y.tolist()))


@pytest.mark.parametrize("n_pos,n_neg", [(44, 84), (10, 20), (7, 13), (5, 31)])
def test_five_stratified_disjoint_folds(n_pos, n_neg):
    labels = _labels(n_pos, n_neg)
    splits = make_stratified_splits(labels, 5, seed=12345)
    assert len(splits) == 5
    vals = [set(s["val"]) for s in splits]
    for i in range(5):
        for j in range(i + 1, 5):
            assert not vals[i] & vals[j]
    assert set().union(*vals) == set(labels)
    for s in splits:
        assert set(s["train"]) | set(s["val"]) == set(labels)
        assert not set(s["train"]) & set(s["val"])
        n_val_pos = sum(labels[c] for c in s["val"])
        expected = n_pos * len(s["val"]) / len(labels)
        assert abs(n_val_pos - expected) <= 1.0, (n_val_pos, expected)
    sizes = [len(v) for v in vals]
    assert max(sizes) - min(sizes) <= 1


def test_deterministic_for_a_seed_and_different_for_another():
    labels = _labels()
    a = make_stratified_splits(labels, 5, seed=7)
    b = make_stratified_splits(dict(reversed(list(labels.items()))), 5, seed=7)
    c = make_stratified_splits(labels, 5, seed=8)
    assert a == b
    assert a != c


def test_too_few_positives_for_five_folds():
    with pytest.raises(DatasetError, match="Only 3 case"):
        make_stratified_splits(_labels(3, 20), 5)


def test_fold_with_one_class_is_rejected():
    labels = _labels(10, 20)
    ids = sorted(labels)
    pos = [c for c in ids if labels[c]]
    bad = [{"train": sorted(set(ids) - set(pos[:5])), "val": sorted(pos[:5])}]  # val holds positives only
    with pytest.raises(DatasetError, match="only class"):
        check_splits(bad, labels)


def test_existing_splits_are_reused_not_overwritten(tmp_path):
    labels = _labels(10, 20)
    first = write_or_reuse_splits(tmp_path, labels, seed=1)
    again = write_or_reuse_splits(tmp_path, labels, seed=2)  # other seed: still the stored folds
    assert again == first
    # new case added: the stored folds no longer fit -> explicit error naming the fix
    labels2 = dict(labels, case_new=1)
    with pytest.raises(DatasetError, match="--overwrite_splits"):
        write_or_reuse_splits(tmp_path, labels2)
    replaced = write_or_reuse_splits(tmp_path, labels2, overwrite=True)
    assert "case_new" in set().union(*[set(s["val"]) for s in replaced])
    assert json.loads((tmp_path / "splits_final.json.bak").read_text(encoding="utf-8")) == first


def test_custom_raw_splits_are_used(tmp_path):
    labels = _labels(10, 20)
    custom = make_stratified_splits(labels, 5, seed=99)
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "splits_final.json").write_text(json.dumps(custom), encoding="utf-8")
    got = write_or_reuse_splits(tmp_path / "pp", labels, seed=1, raw_folder=raw)
    assert got == custom


def test_get_fold_out_of_range():
    splits = make_stratified_splits(_labels(10, 20), 5)
    assert get_fold(splits, 4) == splits[4]
    with pytest.raises(ValueError, match="folds 0..4"):
        get_fold(splits, 5)


def test_overwrite_splits_keeps_assignments_and_adds_new_cases_stratified(tmp_path):
    from neonet_toolkit.experiment_planning.splits import write_or_reuse_splits

    labels = {f"c{i:02d}": int(i % 3 == 0) for i in range(30)}
    first = write_or_reuse_splits(tmp_path, labels, n_folds=5)
    labels.update({"new_pos": 1, "new_neg_a": 0, "new_neg_b": 0})
    del labels["c01"]
    second = write_or_reuse_splits(tmp_path, labels, n_folds=5, overwrite=True)
    before = {c: k for k, sp in enumerate(first) for c in sp["val"]}
    after = {c: k for k, sp in enumerate(second) for c in sp["val"]}
    assert all(after[c] == k for c, k in before.items() if c in labels)  # nobody moved
    assert {"new_pos", "new_neg_a", "new_neg_b"} <= set(after) and "c01" not in after
    for sp in second:  # still stratified: every validation fold keeps both classes, sizes within one case
        assert {labels[c] for c in sp["val"]} == {0, 1}
    sizes = [len(sp["val"]) for sp in second]
    assert max(sizes) - min(sizes) <= 1
    assert (tmp_path / "splits_final.json.bak").is_file()
