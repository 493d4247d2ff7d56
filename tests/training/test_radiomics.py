"""Late fusion of the radiomics baseline with a deep run (no pyradiomics needed: fusion reads scores)."""
from __future__ import annotations

import numpy as np
import pytest

from neonet_toolkit.models.cls_results import OOF_FILE, SUMMARY_FILE, read_predictions_csv, write_predictions_csv
from neonet_toolkit.training.radiomics import fuse_scores, run_late_fusion, stacked_fusion
from neonet_toolkit.utilities import stats
from neonet_toolkit.utilities.io import load_json, save_json


def _scorers(n=400, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    a = 1 / (1 + np.exp(-(1.0 * y + rng.normal(0, 1, n))))            # two equally informative models with
    b = 1 / (1 + np.exp(-(1.5 * (1.0 * y + rng.normal(0, 1, n)) + 1)))  # independent errors, b on another scale
    return y, a, b


def test_fuse_scores_combines_independent_evidence():
    y, a, b = _scorers()
    auc_a, auc_b, auc_f = (stats.roc_auc(y, p) for p in (a, b, fuse_scores(a, b)))
    # measured: 0.788 / 0.738 -> 0.828 (averaging two independent errors shrinks the noise)
    assert auc_f > max(auc_a, auc_b) + 0.03, (auc_a, auc_b, auc_f)
    # the other model's scale does not matter: b's logit is 1.5x wider and shifted, yet both weigh alike
    b_rescaled = 1 / (1 + np.exp(-(np.log(b / (1 - b)) - 1) / 1.5))
    np.testing.assert_allclose(fuse_scores(a, b), fuse_scores(a, b_rescaled), atol=1e-4)
    with pytest.raises(ValueError, match="at least two"):
        fuse_scores(a)
    with pytest.raises(ValueError, match="different numbers"):
        fuse_scores(a, b[:-1])


def test_stacked_fusion_uses_features_and_score():
    rng = np.random.default_rng(1)
    n = 300
    y = rng.integers(0, 2, n)
    x = np.column_stack([y + rng.normal(0, 1.2, n), rng.normal(size=(n, 5))])  # one useful "radiomics" feature
    s = 1 / (1 + np.exp(-(y + rng.normal(0, 1.2, n))))                       # an out-of-sample deep score
    tr, va = slice(0, 200), slice(200, n)
    p_val, p_tr = stacked_fusion(x[tr], s[tr], y[tr], x[va], s[va])
    auc_x, auc_s, auc_f = stats.roc_auc(y[va], x[va, 0]), stats.roc_auc(y[va], s[va]), stats.roc_auc(y[va], p_val)
    assert auc_f > max(auc_x, auc_s) + 0.02, (auc_x, auc_s, auc_f)
    assert p_tr.shape == (200,) and np.all((p_val > 0) & (p_val < 1))


def _write_run(root, run, fold, ids, y, p):
    out = root / f"{run}__NeoNetPlans" / f"fold_{fold}"
    write_predictions_csv(out / OOF_FILE, [{"case_id": c, "label": int(t), "probability": float(q),
                                           "probability_raw": float(q)} for c, t, q in zip(ids, y, p)],
                          ["case_id", "label", "probability", "probability_raw"])
    save_json({"threshold": 0.5, "selected_epoch": 9, "train_ids": [], "n_train_real": 10}, out / SUMMARY_FILE)


def test_run_late_fusion_writes_a_run_in_the_same_layout(isolated_env):
    raw = isolated_env / "nnUNet_raw" / "Dataset509_Fuse"
    raw.mkdir()
    res = isolated_env / "neonet_results" / "Dataset509_Fuse"
    y, a, b = _scorers(n=120, seed=2)
    ids = [f"c{i:03d}" for i in range(120)]
    for k in (0, 1):
        part = slice(60 * k, 60 * (k + 1))
        _write_run(res, "cls_pattennet_fine_0_esnone", k, ids[part], y[part], a[part])
        _write_run(res, "cls_radiomics_0", k, ids[part], y[part], b[part])
    root = run_late_fusion(509, "cls_pattennet_fine_0_esnone")
    assert root.name == "cls_fusion_pattennet_fine_0_esnone__NeoNetPlans"
    rows = read_predictions_csv(root / "fold_1" / OOF_FILE)
    assert [r["case_id"] for r in rows] == ids[60:]
    fused = fuse_scores(a[60:], b[60:])
    np.testing.assert_allclose([r["probability"] for r in rows], fused, atol=2e-5)  # CSVs hold 6 decimals
    summ = load_json(root / "fold_0" / SUMMARY_FILE)
    assert summ["fused_runs"] == ["cls_pattennet_fine_0_esnone", "cls_radiomics_0"]
    # a fold missing in one run is named
    _write_run(res, "cls_pattennet_fine_0_esnone", 2, ids[:5], y[:5], a[:5])
    with pytest.raises(FileNotFoundError, match=r"fold\(s\) \[2\]"):
        run_late_fusion(509, "cls_pattennet_fine_0_esnone", folds=[0, 2])
