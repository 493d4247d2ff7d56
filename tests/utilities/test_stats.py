"""neonet_toolkit.utilities.stats against scikit-learn, brute force and published pROC numbers."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score, roc_curve

from neonet_toolkit.utilities import stats

# pROC's aSAH data set (113 patients): id, outcome (G=Good, P=Poor), wfns, s100b
ASAH = """29 G 1 0.13;30 G 1 0.14;31 G 1 0.10;32 G 1 0.04;33 P 3 0.13;34 P 2 0.10;35 G 5 0.47;36 P 4 0.16;
37 G 1 0.18;38 G 2 0.10;39 P 5 0.12;40 G 2 0.10;41 P 5 0.44;42 P 5 0.71;43 G 1 0.04;44 G 2 0.08;45 P 5 0.49;
46 G 2 0.04;47 P 2 0.07;48 P 5 0.33;49 P 2 0.09;50 G 1 0.09;51 P 1 0.07;52 G 1 0.11;53 G 1 0.07;54 G 2 0.17;
55 G 1 0.07;56 G 2 0.11;57 G 1 0.13;58 G 1 0.19;59 G 3 0.05;60 G 4 0.16;61 P 2 0.41;62 G 1 0.14;63 G 4 0.34;
64 P 5 0.35;65 P 4 0.48;66 G 1 0.09;67 P 4 0.96;68 P 2 0.25;69 G 5 0.5;70 G 5 0.46;71 G 1 0.16;72 G 1 0.07;
73 G 2 0.43;74 G 4 0.45;75 G 1 0.11;76 G 1 0.08;77 G 2 0.09;78 P 5 0.86;79 P 5 0.52;80 G 2 0.08;81 G 1 0.06;
82 G 2 0.13;83 P 5 2.07;84 G 1 0.1;85 G 2 0.14;86 G 2 0.15;87 P 2 0.07;88 G 1 0.06;89 P 5 0.77;90 G 1 0.05;
91 G 1 0.09;92 P 2 0.3;93 P 5 0.03;94 P 2 0.09;95 G 1 0.04;96 P 4 0.23;97 P 5 0.7;98 G 2 0.09;99 P 4 0.27;
100 P 4 0.71;101 P 1 0.08;102 P 4 0.26;103 G 1 0.08;104 G 2 0.16;105 G 1 0.09;106 P 4 0.13;107 P 2 0.1;
108 G 1 0.08;109 P 2 0.11;110 G 3 0.33;111 G 2 0.11;112 G 4 0.28;113 G 2 0.07;114 G 1 0.1;115 G 4 0.32;
116 P 5 0.22;117 G 1 0.07;118 G 1 0.05;119 G 5 0.24;120 G 4 0.38;121 G 2 0.1;122 G 2 0.15;123 G 1 0.08;
124 G 1 0.14;125 G 1 0.1;126 G 3 0.07;127 G 1 0.04;128 G 2 0.19;129 P 5 0.56;130 P 2 0.14;131 P 2 0.58;
132 P 5 0.32;133 P 5 0.82;134 P 5 0.74;135 G 2 0.15;136 G 4 0.47;137 G 4 0.17;138 P 5 0.44;139 G 1 0.15;
140 G 1 0.5;141 G 1 0.48"""


def asah():
    rows = [r.split() for r in ASAH.replace("\n", "").split(";")]
    y = np.array([1 if r[1] == "P" else 0 for r in rows])
    return y, np.array([float(r[2]) for r in rows]), np.array([float(r[3]) for r in rows])


def brute_delong_var(y, s):
    """O(m n) DeLong variance straight from the definition (independent of the mid-rank trick)."""
    x, z = s[y == 1], s[y == 0]
    psi = (x[:, None] > z[None, :]).astype(float) + 0.5 * (x[:, None] == z[None, :])
    v10, v01 = psi.mean(1), psi.mean(0)
    return psi.mean(), v10.var(ddof=1) / len(x) + v01.var(ddof=1) / len(z)


def test_asah_matches_proc():
    y, wfns, s100b = asah()
    assert (y == 0).sum() == 72 and (y == 1).sum() == 41
    r = stats.delong_ci(y, s100b)
    # pROC: "Area under the curve: 0.7314, 95% CI: 0.6301-0.8326 (DeLong)"
    assert r["auc"] == pytest.approx(0.7314, abs=5e-5)
    assert r["ci_low"] == pytest.approx(0.6301, abs=5e-5)
    assert r["ci_high"] == pytest.approx(0.8326, abs=5e-5)
    # pROC roc.test(s100b, wfns): AUCs 0.7314 vs 0.8237, DeLong Z = -2.209, p = 0.02718
    t = stats.delong_paired_test(y, s100b, wfns)
    assert t["auc_b"] == pytest.approx(0.8237, abs=5e-5)
    assert t["z"] == pytest.approx(-2.209, abs=1e-3)
    assert t["p_value"] == pytest.approx(0.02718, abs=5e-5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_and_variance_vs_sklearn_and_bruteforce(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 57)
    y[:2] = [0, 1]
    s = np.round(rng.normal(size=57) + 0.8 * y, 1)  # rounding creates ties
    assert stats.roc_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    auc, var = brute_delong_var(y, s)
    aucs, cov = stats.delong_covariance(y, s)
    assert aucs[0] == pytest.approx(auc, abs=1e-12) and cov[0, 0] == pytest.approx(var, rel=1e-10)
    fpr, tpr, _ = stats.roc_curve_points(y, s)
    f2, t2, _ = roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr, f2)
    np.testing.assert_allclose(tpr, t2)


def test_paired_test_identical_and_independent():
    y, wfns, s100b = asah()
    same = stats.delong_paired_test(y, s100b, s100b)
    assert same["p_value"] == 1.0 and same["diff"] == 0.0
    # monotone transform: identical ranking -> identical AUC -> no difference
    assert stats.delong_paired_test(y, s100b, np.log(s100b + 1))["p_value"] == 1.0


def test_bootstrap_ci_close_to_delong_and_stratified():
    y, _, s100b = asah()
    b = stats.bootstrap_auc_ci(y, s100b, n_boot=1000, seed=3)
    d = stats.delong_ci(y, s100b)
    assert b["ci_low"] < d["auc"] < b["ci_high"]
    assert abs(b["ci_low"] - d["ci_low"]) < 0.03 and abs(b["ci_high"] - d["ci_high"]) < 0.03
    assert b["se"] == pytest.approx(d["se"], rel=0.2)
    # deterministic for a seed
    assert stats.bootstrap_auc_ci(y, s100b, n_boot=200, seed=1) == stats.bootstrap_auc_ci(y, s100b, n_boot=200, seed=1)


def test_single_class_raises():
    with pytest.raises(ValueError, match="single class"):
        stats.roc_auc([1, 1, 1], [0.1, 0.2, 0.3])


def test_ece_and_reliability():
    rng = np.random.default_rng(0)
    p = rng.uniform(size=20000)
    y = (rng.uniform(size=p.size) < p).astype(int)  # perfectly calibrated
    assert stats.expected_calibration_error(y, p) < 0.02
    # over-confident: always 0.9 for a 30 % prevalence -> ECE = 0.6
    y2 = np.r_[np.ones(30), np.zeros(70)]
    assert stats.expected_calibration_error(y2, np.full(100, 0.9)) == pytest.approx(0.6)
    rc = stats.reliability_curve(y2, np.full(100, 0.9), n_bins=10)
    assert rc["count"][9] == 100 and rc["observed"][9] == pytest.approx(0.3)


def test_prior_recalibration_fixes_balanced_training_shift():
    """Scores from a model trained at 50 % prevalence, applied to a 1/3-prevalence population."""
    rng = np.random.default_rng(0)
    n = 30000
    y = (rng.uniform(size=n) < 1 / 3).astype(int)
    x = rng.normal(loc=1.2 * y, size=n)
    # exact posterior under a 50 % prior for x ~ N(1.2 y, 1)
    lr = np.exp(1.2 * x - 0.72)
    p_bal = lr / (1 + lr)
    p_fix = stats.recalibrate_prior(p_bal, 0.5, 1 / 3)
    assert stats.expected_calibration_error(y, p_bal) > 0.1
    assert stats.expected_calibration_error(y, p_fix) < 0.02
    assert stats.roc_auc(y, p_fix) == pytest.approx(stats.roc_auc(y, p_bal), abs=1e-12)
    np.testing.assert_allclose(stats.recalibrate_prior(p_bal, 0.3, 0.3), p_bal, atol=1e-6)


def test_threshold_selection_and_sens_spec():
    y = np.array([0, 0, 0, 0, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.6, 0.5, 0.8, 0.9])
    t = stats.select_threshold(y, p)
    r = stats.sensitivity_specificity(y, p, t)
    assert r["sensitivity"] + r["specificity"] - 1 == pytest.approx(0.75)
    assert 0.3 < t <= 0.5 or 0.6 < t <= 0.8
    perfect = stats.select_threshold([0, 0, 1, 1], [0.1, 0.2, 0.7, 0.9])
    assert perfect == pytest.approx(0.45)
    lo, hi = stats.wilson_ci(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-3) and hi == pytest.approx(0.9433, abs=1e-3)
