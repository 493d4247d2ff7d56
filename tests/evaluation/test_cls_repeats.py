"""Repeated stratified CV: new partitions appended to splits_final.json, every stage per fold, numbers per repeat."""
from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

import test_cls_utils as U
from neonet_toolkit.dataset.errors import DatasetError
from neonet_toolkit.experiment_planning.splits import (
    REPEATS_FILE,
    add_repeats,
    check_splits,
    repeat_folds,
    split_layout,
    write_or_reuse_splits,
)


def _labels(n=36):
    return {f"c{i:02d}": int(i % 3 == 0) for i in range(n)}


def test_add_repeats_keeps_repeat_0_and_appends_stratified_partitions(tmp_path):
    labels = _labels()
    first = write_or_reuse_splits(tmp_path, labels, n_folds=4)
    assert split_layout(tmp_path) == (4, 1) and not (tmp_path / REPEATS_FILE).exists()
    splits = add_repeats(tmp_path, labels, 3, seed=7)
    assert split_layout(tmp_path) == (4, 3) and repeat_folds(tmp_path) == list(range(12))
    assert splits[:4] == first  # trained folds never change
    assert json.loads((tmp_path / "splits_final.json").read_text(encoding="utf-8")) == splits
    meta = json.loads((tmp_path / REPEATS_FILE).read_text(encoding="utf-8"))
    assert meta["folds_per_repeat"] == 4 and meta["repeat_seeds"] == {"0": None, "1": 8, "2": 9}
    partitions = []
    for r in range(3):
        block = splits[4 * r:4 * r + 4]
        val = [c for sp in block for c in sp["val"]]
        assert sorted(val) == sorted(labels)  # each repeat predicts every case exactly once
        for sp in block:
            assert not set(sp["train"]) & set(sp["val"])
            assert sum(labels[c] for c in sp["val"]) == 3  # 12 positives / 4 folds: stratified
        partitions.append({frozenset(sp["val"]) for sp in block})
    assert partitions[0] != partitions[1] != partitions[2]
    # the whole file is not one partition, but each repeat is; a broken repeat is named
    with pytest.raises(DatasetError, match="overlap"):
        check_splits(splits, labels)
    check_splits(splits, labels, 4)
    bad = [dict(sp) for sp in splits]
    bad[5] = {"train": bad[5]["train"], "val": bad[5]["val"] + [bad[6]["val"][0]]}
    with pytest.raises(DatasetError, match="repeat 1 \\(folds 4..7\\)"):
        check_splits(bad, labels, 4)
    # asking again changes nothing; planning again reuses all repeats
    assert add_repeats(tmp_path, labels, 2) == splits
    assert write_or_reuse_splits(tmp_path, labels, n_folds=4) == splits
    # a new case joins every repeat, and nobody moves (--overwrite_splits)
    labels2 = {**labels, "new_pos": 1}
    again = write_or_reuse_splits(tmp_path, labels2, n_folds=4, overwrite=True)
    assert split_layout(tmp_path) == (4, 3)
    for r in range(3):
        before = {c: k for k, sp in enumerate(splits[4 * r:4 * r + 4]) for c in sp["val"]}
        after = {c: k for k, sp in enumerate(again[4 * r:4 * r + 4]) for c in sp["val"]}
        assert all(after[c] == k for c, k in before.items()) and "new_pos" in after


def test_evaluation_reports_each_repeat_and_pools_only_within_it(tmp_path, monkeypatch, planned_phantom):
    from neonet_toolkit.evaluation.cls import evaluate_cls
    from neonet_toolkit.models.cls_results import OOF_FILE, SUMMARY_FILE, write_predictions_csv
    from neonet_toolkit.utilities.io import save_json

    env = U.copy_planned(planned_phantom, tmp_path, monkeypatch)
    pp = env["preprocessed"]
    labels = {c: r["label"] for c, r in json.loads((pp / "neonet_tlcr/gt/metadata.json").read_text(
        encoding="utf-8"))["cases"].items()}
    splits = add_repeats(pp, labels, 2)
    k = split_layout(pp)[0]
    rng = np.random.default_rng(0)
    probs = {}
    run = "cls_pattennet_0_esnested"
    for f, sp in enumerate(splits):
        out = env["results"] / f"{run}__NeoNetPlans" / f"fold_{f}"
        ps = {c: float(1 / (1 + np.exp(-(1.2 * labels[c] + rng.normal())))) for c in sp["val"]}
        probs.setdefault(f // k, {}).update(ps)
        write_predictions_csv(out / OOF_FILE, [{"case_id": c, "label": labels[c], "probability": p,
                                               "probability_raw": p} for c, p in ps.items()],
                              ["case_id", "label", "probability", "probability_raw"])
        save_json({"arch": "pattennet", "early_stopping": "nested", "threshold": 0.5,
                   "threshold_source": "nested_inner_oof"}, out / SUMMARY_FILE)
    res = evaluate_cls(env["dataset_name"], n_boot=100)
    r = res["runs"][run]
    ids = sorted(labels)
    y = [labels[c] for c in ids]
    per_repeat = [roc_auc_score(y, [probs[rep][c] for c in ids]) for rep in (0, 1)]
    assert r["n"] == len(ids) and r["folds_done"] == list(range(k))  # main numbers: repeat 0, each case once
    assert r["pooled_auc"] == pytest.approx(per_repeat[0])
    rp = r["repeats"]
    assert rp["complete_repeats"] == [0, 1] and rp["pooled_auc_per_repeat"] == pytest.approx(per_repeat)
    assert rp["pooled_auc_mean"] == pytest.approx(np.mean(per_repeat))
    assert rp["pooled_auc_sd"] == pytest.approx(np.std(per_repeat, ddof=1))
    fold_means = [np.mean([roc_auc_score([labels[c] for c in sp["val"]], [probs[f // k][c] for c in sp["val"]])
                           for f, sp in enumerate(splits) if f // k == rep]) for rep in (0, 1)]
    assert rp["fold_mean_per_repeat"] == pytest.approx(fold_means)
    report = (tmp_path / "neonet_results" / env["dataset_name"] / "cls_evaluation__NeoNetPlans" / "report.md")
    text = report.read_text(encoding="utf-8")
    assert "Repeated stratified cross-validation (2 repeat(s) of 5 folds" in text
    assert "repeated 2 times" in (report.parent / "methods.md").read_text(encoding="utf-8")
    # an unfinished later repeat is listed, never averaged in
    (env["results"] / f"{run}__NeoNetPlans" / f"fold_{k + 1}" / OOF_FILE).unlink()
    rp2 = evaluate_cls(env["dataset_name"], n_boot=100)["runs"][run]["repeats"]
    assert rp2["complete_repeats"] == [0] and rp2["incomplete_repeats"][0]["repeat"] == 1
    assert rp2["pooled_auc_mean"] == pytest.approx(per_repeat[0])


def test_neonet_experiment_repeats_trains_the_new_folds(tmp_path, monkeypatch, planned_phantom):
    from neonet_toolkit.run.experiment import run_experiment

    env = U.copy_planned(planned_phantom, tmp_path, monkeypatch)
    ds, pp = env["dataset_name"], env["preprocessed"]
    cfg = U.add_configuration(pp, "cls_tiny", {"epochs": 1})
    k = split_layout(pp)[0]
    st = run_experiment(ds, [], [0], device="cpu", repeats=2, evaluate=False, shortcut=False)  # folds only
    assert st["trained"] == [] and split_layout(pp) == (k, 2)
    U.make_fold_vae(ds, pp, k)  # PattenNet's frozen encoder of the new fold (every stage is per fold)
    st = run_experiment(ds, ["pattennet"], [0], folds=[k], device="cpu", configuration=cfg, repeats=2,
                        early_stopping="val", evaluate=False, shortcut=False)
    assert not st["failed"] and split_layout(pp) == (k, 2)
    splits = json.loads((pp / "splits_final.json").read_text(encoding="utf-8"))
    summ = json.loads((env["results"] / "cls_pattennet_0__NeoNetPlans" / f"fold_{k}" / "cls_summary.json")
                      .read_text(encoding="utf-8"))
    assert sorted(summ["val_ids"]) == sorted(splits[k]["val"]) and sorted(summ["train_ids"]) == sorted(splits[k]["train"])
