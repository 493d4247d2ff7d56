"""Late fusion of the radiomics baseline with a deep run (no pyradiomics needed: fusion reads scores)."""
from __future__ import annotations

import numpy as np
import pytest

from neonet_toolkit.models.cls_results import OOF_FILE, SUMMARY_FILE, read_predictions_csv, write_predictions_csv
from neonet_toolkit.training.radiomics import run_late_fusion, stacked_fusion
from neonet_toolkit.utilities.stats import fuse_scores
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


# ----------------------------------------------------------------------------- the baseline's own pieces
def test_peritumoral_shell_uses_physical_distance_inside_the_roi():
    from neonet_toolkit.training.radiomics import peritumoral_shell

    lab = np.zeros((2, 5, 7, 7), np.uint8)
    lab[1, 2, 3, 3] = 1  # one tumour voxel
    lab[0, 1:4, 1:6, 1:6] = 1  # ROI (organ ∪ tumour)
    lab[0, 2, 3, 5] = 0  # a hole in the ROI 2 voxels (3 mm) away in-plane
    shell = peritumoral_shell(lab, spacing_zyx=(3.0, 1.5, 1.5), shell_mm=3.0)
    # within 3 mm: in-plane distance 1.5 (4 voxels), 2.12 (4 diagonals), 3.0 (4 at two voxels, one outside the
    # ROI); through-plane 3.0 (2 voxels); 3.35 mm and beyond are out
    expected = np.zeros((5, 7, 7), bool)
    for dy, dx in [(0, 1), (0, -1), (1, 0), (-1, 0), (1, 1), (1, -1), (-1, 1), (-1, -1), (0, -2), (2, 0), (-2, 0)]:
        expected[2, 3 + dy, 3 + dx] = True
    expected[1, 3, 3] = expected[3, 3, 3] = True
    np.testing.assert_array_equal(shell, expected)
    assert not shell[2, 3, 3]  # never the tumour itself


def test_inner_cv_model_and_null_check_tell_signal_from_noise():
    from neonet_toolkit.training.radiomics import null_check, radiomics_model

    settings = {"k_features": [2, 5], "Cs": [0.01, 1.0], "inner_folds": 3}
    rng = np.random.default_rng(0)
    n, d = 48, 30
    y = np.r_[np.ones(16, int), np.zeros(32, int)]
    noise = rng.normal(size=(n, d))
    signal = noise.copy()
    signal[:, 0] += 1.5 * y  # one informative feature among 30
    m = radiomics_model(settings, n, 16, seed=0).fit(signal, y)
    chk = null_check(m, signal, y, 30, seed=0)
    assert m.best_score_ > 0.8 and chk["p_value"] <= 0.05
    m0 = radiomics_model(settings, n, 16, seed=0).fit(noise, y)
    chk0 = null_check(m0, noise, y, 30, seed=0)
    assert chk0["p_value"] > 0.05 and chk0["null_95th"] > 0.55  # the max over the grid is optimistic under the null
