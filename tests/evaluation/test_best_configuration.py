"""The nested choice of the NeoCls configuration (neonet_find_best_configuration) on planted result folders."""
from __future__ import annotations

import numpy as np
import pytest

from neonet_toolkit.evaluation.best_configuration import find_best_configuration
from neonet_toolkit.models.cls_results import (
    NESTED_FILE,
    OOF_FILE,
    TRAIN_PRED_FILE,
    load_best_configuration,
    write_predictions_csv,
)
from neonet_toolkit.utilities import stats
from neonet_toolkit.utilities.identifiers import ResultLayout
from neonet_toolkit.utilities.io import save_json

N, K = 60, 5


def _layout(tmp_path) -> ResultLayout:
    env = {k: tmp_path / k for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "neonet_results")}
    return ResultLayout("Dataset901_Planted", env=env)


def _folds(y):
    ids = [f"case_{i:03d}" for i in range(len(y))]
    fold_of = np.empty(len(y), int)
    for c in (0, 1):  # stratified
        idx = np.flatnonzero(y == c)
        fold_of[idx] = np.arange(len(idx)) % K
    return ids, fold_of


def _write(layout, run, ids, y, fold_of, inner_fn, outer_fn, kind="nested"):
    for k in range(K):
        tr, va = np.flatnonzero(fold_of != k), np.flatnonzero(fold_of == k)
        out = layout.fold_folder(run, k)
        p_in, p_out = inner_fn(y[tr], k), outer_fn(y[va], k)
        write_predictions_csv(out / OOF_FILE, [{"case_id": ids[i], "label": int(y[i]), "probability": float(p)}
                                               for i, p in zip(va, p_out)], ["case_id", "label", "probability"])
        rows = [{"case_id": ids[i], "label": int(y[i]), "probability": float(p)} for i, p in zip(tr, p_in)]
        if kind == "nested":
            save_json({"inner_oof": rows}, out / NESTED_FILE)
        else:  # the radiomics baseline's form
            write_predictions_csv(out / TRAIN_PRED_FILE, [{**r, "set": "inner_oof"} for r in rows],
                                  ["case_id", "label", "probability", "set"])


def _sig(x):
    return 1 / (1 + np.exp(-x))


def test_a_candidate_leaking_outer_labels_is_never_chosen(tmp_path):
    rng = np.random.default_rng(0)
    y = (np.arange(N) % 3 == 0).astype(int)
    ids, fold_of = _folds(y)
    layout = _layout(tmp_path)

    def informative(lab, k):
        return _sig(1.2 * lab + rng.normal(0, 1, len(lab)))

    def noise(lab, k):
        return _sig(rng.normal(0, 1, len(lab)))

    def leak(lab, k):  # knows the outer labels exactly
        return np.where(lab == 1, 0.9, 0.1) + rng.normal(0, 1e-3, len(lab))

    _write(layout, "cls_honest_0_esnested", ids, y, fold_of, informative, informative)
    _write(layout, "cls_leaker_0_esnested", ids, y, fold_of, noise, leak)
    _write(layout, "cls_radiomics_0", ids, y, fold_of, noise, noise, kind="radiomics")
    res = find_best_configuration(layout, ["cls_honest_0_esnested", "cls_leaker_0_esnested", "cls_radiomics_0"],
                                  ensembles=False)
    table = {t["candidate"]: t for t in res["table"]}
    assert table["cls_leaker_0_esnested"]["pooled_auc"] == pytest.approx(1.0)  # the naive table is fooled
    assert [f["chosen"] for f in res["per_fold"]] == ["cls_honest_0_esnested"] * K
    honest = table["cls_honest_0_esnested"]["pooled_auc"]
    assert res["selection_procedure"]["pooled_auc"] == pytest.approx(honest)  # the procedure is not
    assert res["cost_of_choosing"] == pytest.approx(1.0 - honest)
    assert res["chosen"] == "cls_honest_0_esnested"
    assert load_best_configuration(layout)["chosen"] == "cls_honest_0_esnested"
    md = (layout.best_configuration_file().with_suffix(".md")).read_text(encoding="utf-8")
    assert "Selection procedure" in md and "cls_leaker_0_esnested" in md
    # nothing deployable (no checkpoints in these planted folders): said so, no default
    assert res["predict_default"] is None and "no candidate" in res["predict_default_note"]


def test_no_signal_selection_keeps_its_ci_around_chance(tmp_path):
    """Labels carry no signal for any candidate (scores independent of labels): over 100 cohorts the selection
    procedure's DeLong CI covers 0.5 in >= 85 (measured 92 on other seeds; a single candidate's: 93) and its AUC
    averages 0.5."""
    covered, aucs = 0, []
    for rep in range(100):
        rng = np.random.default_rng(100 + rep)
        y = rng.permutation((np.arange(N) % 3 == 0).astype(int))
        ids, fold_of = _folds(y)
        layout = _layout(tmp_path / f"r{rep}")

        def noise(lab, k):
            return _sig(rng.normal(0, 1, len(lab)))

        runs = [f"cls_m{j}_0_esnested" for j in range(4)]
        for r in runs:
            _write(layout, r, ids, y, fold_of, noise, noise)
        proc = find_best_configuration(layout, runs, ensembles=True)["selection_procedure"]
        covered += proc["ci"][0] <= 0.5 <= proc["ci"][1]
        aucs.append(proc["pooled_auc"])
    assert covered >= 85 and abs(np.mean(aucs) - 0.5) < 0.03


def test_ensemble_of_two_complementary_runs_is_chosen(tmp_path):
    rng = np.random.default_rng(3)
    y = (np.arange(N) % 2 == 0).astype(int)
    ids, fold_of = _folds(y)
    layout = _layout(tmp_path)

    def half(lab, k):  # two models, each with independent errors: their fusion is better than either
        return _sig(0.8 * lab + rng.normal(0, 1, len(lab)))

    _write(layout, "cls_a_0_esnested", ids, y, fold_of, half, half)
    _write(layout, "cls_b_0_esnested", ids, y, fold_of, half, half)
    res = find_best_configuration(layout, ["cls_a_0_esnested", "cls_b_0_esnested"], ensembles=True)
    assert res["candidates"][-1] == "cls_a_0_esnested + cls_b_0_esnested"
    assert res["chosen"] == "cls_a_0_esnested + cls_b_0_esnested"
    table = {t["candidate"]: t["pooled_auc"] for t in res["table"]}
    assert table["cls_a_0_esnested + cls_b_0_esnested"] > max(table["cls_a_0_esnested"], table["cls_b_0_esnested"])


def test_runs_without_inner_predictions_are_refused(tmp_path):
    layout = _layout(tmp_path)
    y = (np.arange(N) % 3 == 0).astype(int)
    ids, fold_of = _folds(y)
    _write(layout, "cls_ok_0_esnested", ids, y, fold_of, lambda l, k: _sig(l * 1.0), lambda l, k: _sig(l * 1.0))
    out = layout.fold_folder("cls_val_0", 0)
    write_predictions_csv(out / OOF_FILE, [{"case_id": ids[0], "label": 0, "probability": 0.5}],
                          ["case_id", "label", "probability"])
    with pytest.raises(ValueError, match="nested protocol"):
        find_best_configuration(layout, ["cls_ok_0_esnested", "cls_val_0"], folds=[0])
    with pytest.raises(FileNotFoundError, match="No classifier run"):
        find_best_configuration(layout, ["cls_ok_0_esnested", "cls_missing_0"])
    assert stats.roc_auc([0, 1], [0.2, 0.8]) == 1.0
