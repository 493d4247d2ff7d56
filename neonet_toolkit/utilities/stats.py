"""Statistics for small-cohort binary classification (numpy/scipy only, no torch).

* :func:`roc_auc` — Mann–Whitney AUC (ties count 1/2), identical to scikit-learn's ``roc_auc_score``.
* :func:`delong_ci` — DeLong's variance of the AUC and a Wald 95 % CI (the interval pROC reports).
* :func:`delong_paired_test` — DeLong's test of two correlated AUCs (two models, same cases).
* :func:`bootstrap_auc_ci` — stratified (class-preserving) percentile bootstrap CI.
* :func:`reliability_curve` / :func:`expected_calibration_error` — calibration.
* :func:`recalibrate_prior` — Bayes prior-shift correction of probabilities from a model trained
  at prevalence ``train_prevalence`` to the real prevalence (training on a 1:1 synthetic-balanced
  set inflates every probability).
* :func:`select_threshold` / :func:`sensitivity_specificity` — an operating point chosen on
  training data only, then applied to validation predictions.

DeLong et al. (1988) with the structural-component formulation of Sun & Xu (2014):
for m positives X and n negatives Y, V10_i = mean_j psi(X_i, Y_j), V01_j = mean_i psi(X_i, Y_j)
with psi = 1 (X > Y), 1/2 (tie), 0; AUC = mean(V10); Var = S10/m + S01/n with S the sample
(co)variances (ddof=1) of the components.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy import stats as _st


def _as_arrays(y_true, y_score) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true).astype(int).ravel()
    s = np.asarray(y_score, dtype=float).ravel()
    if y.shape != s.shape:
        raise ValueError(f"y_true and y_score differ in length ({y.size} vs {s.size}).")
    if not set(np.unique(y)) <= {0, 1}:
        raise ValueError("y_true must be binary 0/1.")
    if not np.all(np.isfinite(s)):
        raise ValueError("y_score contains NaN/Inf.")
    if (y == 1).sum() == 0 or (y == 0).sum() == 0:
        raise ValueError("AUC is undefined: y_true holds a single class.")
    return y, s


def _midrank(x: np.ndarray) -> np.ndarray:
    """Mid-ranks (1-based, ties averaged)."""
    return _st.rankdata(x, method="average")


def _structural_components(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For k score vectors (k, N): AUCs (k,), V10 (k, m), V01 (k, n) via mid-ranks (Sun & Xu 2014)."""
    scores = np.atleast_2d(scores)
    pos, neg = scores[:, y == 1], scores[:, y == 0]
    m, n = pos.shape[1], neg.shape[1]
    k = scores.shape[0]
    aucs, v10, v01 = np.empty(k), np.empty((k, m)), np.empty((k, n))
    for r in range(k):
        tx, ty, tz = _midrank(pos[r]), _midrank(neg[r]), _midrank(np.concatenate([pos[r], neg[r]]))
        aucs[r] = (tz[:m].sum() - m * (m + 1) / 2.0) / (m * n)
        v10[r] = (tz[:m] - tx) / n
        v01[r] = 1.0 - (tz[m:] - ty) / m
    return aucs, v10, v01


def roc_auc(y_true, y_score) -> float:
    y, s = _as_arrays(y_true, y_score)
    return float(_structural_components(y, s[None])[0][0])


def delong_covariance(y_true, *score_vectors) -> tuple[np.ndarray, np.ndarray]:
    """(AUCs (k,), DeLong covariance matrix (k, k)) of k score vectors on the same cases."""
    y, _ = _as_arrays(y_true, score_vectors[0])
    scores = np.stack([_as_arrays(y_true, s)[1] for s in score_vectors])
    aucs, v10, v01 = _structural_components(y, scores)
    m, n = v10.shape[1], v01.shape[1]
    s10 = np.atleast_2d(np.cov(v10, ddof=1)) if m > 1 else np.zeros((len(aucs), len(aucs)))
    s01 = np.atleast_2d(np.cov(v01, ddof=1)) if n > 1 else np.zeros((len(aucs), len(aucs)))
    return aucs, s10 / m + s01 / n


def delong_ci(y_true, y_score, alpha: float = 0.05) -> dict:
    """AUC with DeLong standard error and Wald (1 - alpha) CI clipped to [0, 1]."""
    aucs, cov = delong_covariance(y_true, y_score)
    auc, se = float(aucs[0]), float(math.sqrt(max(cov[0, 0], 0.0)))
    z = _st.norm.ppf(1 - alpha / 2)
    return {"auc": auc, "se": se, "ci_low": max(0.0, auc - z * se), "ci_high": min(1.0, auc + z * se),
            "method": "delong", "alpha": alpha}


def delong_paired_test(y_true, score_a, score_b) -> dict:
    """Two-sided DeLong test of H0: AUC_a == AUC_b for two models scored on the same cases."""
    aucs, cov = delong_covariance(y_true, score_a, score_b)
    diff = float(aucs[0] - aucs[1])
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    if var <= 1e-15:
        z, p = (0.0, 1.0) if abs(diff) < 1e-12 else (math.copysign(math.inf, diff), 0.0)
    else:
        z = diff / math.sqrt(var)
        p = float(2 * _st.norm.sf(abs(z)))
    return {"auc_a": float(aucs[0]), "auc_b": float(aucs[1]), "diff": diff, "se_diff": math.sqrt(max(var, 0.0)),
            "z": float(z), "p_value": float(p), "n": int(len(np.asarray(y_true))),
            "n_pos": int(np.sum(np.asarray(y_true) == 1))}


def bootstrap_auc_ci(y_true, y_score, n_boot: int = 2000, alpha: float = 0.05, seed: int = 0) -> dict:
    """Stratified percentile bootstrap: positives and negatives are resampled separately, so every
    replicate keeps the observed class counts (AUC is always defined)."""
    y, s = _as_arrays(y_true, y_score)
    rng = np.random.default_rng(seed)
    pos, neg = s[y == 1], s[y == 0]
    m, n = pos.size, neg.size
    bi = rng.integers(0, m, size=(n_boot, m))
    bj = rng.integers(0, n, size=(n_boot, n))
    aucs = np.empty(n_boot)
    yb = np.r_[np.ones(m, int), np.zeros(n, int)]
    for b in range(n_boot):
        aucs[b] = _structural_components(yb, np.concatenate([pos[bi[b]], neg[bj[b]]])[None])[0][0]
    lo, hi = np.quantile(aucs, [alpha / 2, 1 - alpha / 2])
    return {"auc": roc_auc(y, s), "ci_low": float(lo), "ci_high": float(hi), "se": float(aucs.std(ddof=1)),
            "method": "stratified_bootstrap", "n_boot": int(n_boot), "alpha": alpha, "seed": int(seed)}


def fold_auc_summary(per_fold: Sequence[tuple]) -> dict:
    """Mean and SD of per-fold AUCs (what the paper reports). ``per_fold``: [(y, p), ...]."""
    aucs = [roc_auc(y, p) for y, p in per_fold]
    return {"fold_aucs": aucs, "mean": float(np.mean(aucs)),
            "sd": float(np.std(aucs, ddof=1)) if len(aucs) > 1 else float("nan")}


def roc_curve_points(y_true, y_score) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) at every distinct score, starting at (0, 0)."""
    y, s = _as_arrays(y_true, y_score)
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    distinct = np.r_[np.where(np.diff(s))[0], y.size - 1]
    tps = np.cumsum(y)[distinct]
    fps = (distinct + 1) - tps
    tpr = np.r_[0.0, tps / y.sum()]
    fpr = np.r_[0.0, fps / (y.size - y.sum())]
    thr = np.r_[np.inf, s[distinct]]
    return fpr, tpr, thr


# ----------------------------------------------------------------------------- calibration
def reliability_curve(y_true, prob, n_bins: int = 10) -> dict:
    """Equal-width bins on [0, 1]: mean predicted probability, observed frequency and count per bin."""
    y = np.asarray(y_true, dtype=float).ravel()
    p = np.clip(np.asarray(prob, dtype=float).ravel(), 0.0, 1.0)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.digitize(p, edges[1:-1], right=False), 0, n_bins - 1)
    counts = np.bincount(idx, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.bincount(idx, weights=p, minlength=n_bins) / counts
        freq = np.bincount(idx, weights=y, minlength=n_bins) / counts
    return {"edges": edges.tolist(), "mean_predicted": mean_p.tolist(), "observed": freq.tolist(),
            "count": counts.astype(int).tolist()}


def expected_calibration_error(y_true, prob, n_bins: int = 10) -> float:
    """ECE = sum_b (n_b / N) |observed_b - mean_predicted_b| over equal-width bins."""
    rc = reliability_curve(y_true, prob, n_bins)
    c = np.asarray(rc["count"], float)
    mp, ob = np.asarray(rc["mean_predicted"]), np.asarray(rc["observed"])
    ok = c > 0
    return float(np.sum(c[ok] / c.sum() * np.abs(ob[ok] - mp[ok])))


def brier_score(y_true, prob) -> float:
    y = np.asarray(y_true, float).ravel()
    p = np.asarray(prob, float).ravel()
    return float(np.mean((p - y) ** 2))


def recalibrate_prior(prob, train_prevalence: float, target_prevalence: float, eps: float = 1e-7) -> np.ndarray:
    """Prior-shift correction: odds' = odds * [pi_t / (1 - pi_t)] / [pi_s / (1 - pi_s)].

    A model trained where P(y=1) = ``train_prevalence`` (e.g. 0.5 after 1:1 synthetic balancing)
    outputs posteriors for that prior; this maps them to the posteriors at ``target_prevalence``
    (the real cohort's), assuming p(x | y) is unchanged. Ranking (AUC) is unchanged.
    """
    for name, v in (("train_prevalence", train_prevalence), ("target_prevalence", target_prevalence)):
        if not 0.0 < float(v) < 1.0:
            raise ValueError(f"{name} must be in (0, 1), got {v}.")
    p = np.clip(np.asarray(prob, dtype=float), eps, 1 - eps)
    logit = np.log(p) - np.log1p(-p)
    shift = math.log(target_prevalence / (1 - target_prevalence)) - math.log(train_prevalence / (1 - train_prevalence))
    return 1.0 / (1.0 + np.exp(-(logit + shift)))


# ----------------------------------------------------------------------------- operating point
def recalibrate_prior_per_item(prob, train_prevalence, target_prevalence: float) -> np.ndarray:
    """:func:`recalibrate_prior` with one training prevalence per item (broadcast over leading axes),
    e.g. inner out-of-fold predictions made by models trained on sets of different balance."""
    p = np.clip(np.asarray(prob, dtype=float), 1e-7, 1 - 1e-7)
    pi = np.asarray(train_prevalence, dtype=float)
    if np.any((pi <= 0) | (pi >= 1)) or not 0.0 < float(target_prevalence) < 1.0:
        raise ValueError("prevalences must be in (0, 1).")
    shift = math.log(target_prevalence / (1 - target_prevalence)) - (np.log(pi) - np.log1p(-pi))
    return 1.0 / (1.0 + np.exp(-(np.log(p) - np.log1p(-p) + shift)))


def sensitivity_specificity(y_true, prob, threshold: float) -> dict:
    y = np.asarray(y_true).astype(int).ravel()
    pred = (np.asarray(prob, float).ravel() >= threshold).astype(int)
    tp = int(((pred == 1) & (y == 1)).sum())
    tn = int(((pred == 0) & (y == 0)).sum())
    fp = int(((pred == 1) & (y == 0)).sum())
    fn = int(((pred == 0) & (y == 1)).sum())
    sens = tp / (tp + fn) if tp + fn else float("nan")
    spec = tn / (tn + fp) if tn + fp else float("nan")
    return {"threshold": float(threshold), "sensitivity": sens, "specificity": spec, "tp": tp, "tn": tn,
            "fp": fp, "fn": fn}


def select_threshold(y_true, prob, method: str = "youden") -> float:
    """Operating point from (training) predictions.

    ``youden``: maximises sensitivity + specificity - 1 (midpoint between adjacent distinct scores,
    so it generalises to unseen scores); ``prevalence``: the quantile that labels the observed
    fraction of positives as positive; ``sensitivity@S`` (e.g. ``sensitivity@0.9``): the highest
    threshold whose sensitivity is at least S (the most specific operating point that keeps S).
    """
    y, p = _as_arrays(y_true, prob)
    if method == "prevalence":
        return float(np.quantile(p, 1 - y.mean()))
    u = np.unique(p)
    cands = np.r_[u[0] - 1e-6, (u[:-1] + u[1:]) / 2.0, u[-1] + 1e-6] if u.size > 1 else np.array([u[0]])
    if method.startswith("sensitivity@"):
        try:
            target = float(method.split("@", 1)[1])
        except ValueError:
            raise ValueError(f"Threshold method {method!r}: write sensitivity@S with S in (0, 1], e.g. "
                             "sensitivity@0.9.") from None
        if not 0.0 < target <= 1.0:
            raise ValueError(f"Threshold method {method!r}: the target sensitivity must be in (0, 1].")
        ok = [t for t in cands if sensitivity_specificity(y, p, t)["sensitivity"] >= target - 1e-12]
        return float(max(ok)) if ok else float(cands[0])
    if method != "youden":
        raise ValueError(f"Unknown threshold method {method!r}; use 'youden', 'prevalence' or 'sensitivity@S'.")
    best, best_j = float(cands[0]), -np.inf
    for t in cands:
        r = sensitivity_specificity(y, p, t)
        j = r["sensitivity"] + r["specificity"] - 1
        if j > best_j + 1e-12:
            best, best_j = float(t), j
    return best


def wilson_ci(k: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson score interval for a proportion (sensitivity/specificity CIs)."""
    if n == 0:
        return float("nan"), float("nan")
    z = _st.norm.ppf(1 - alpha / 2)
    ph = k / n
    den = 1 + z * z / n
    c = (ph + z * z / (2 * n)) / den
    h = z * math.sqrt(ph * (1 - ph) / n + z * z / (4 * n * n)) / den
    return max(0.0, c - h), min(1.0, c + h)


# ----------------------------------------------------------------------------- calibration
def logit(p, eps: float = 1e-7) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=float), eps, 1 - eps)
    return np.log(p) - np.log1p(-p)


def fuse_scores(*probabilities: np.ndarray) -> np.ndarray:
    """Fit-free late fusion of several models' probabilities for one set of cases (one validation fold).

    Each model's logits are standardised over the scored cases (no labels used), so no model dominates
    by its scale; the fused score is ``sigmoid(mean of the standardised logits)``. A model whose scores
    are constant on the set contributes 0. Ranks within the set follow the averaged standardised logits."""
    if len(probabilities) < 2:
        raise ValueError("late fusion needs the scores of at least two models.")
    n = {len(p) for p in probabilities}
    if len(n) != 1:
        raise ValueError(f"late fusion: the models scored different numbers of cases {sorted(n)}.")
    zs = []
    for p in probabilities:
        z = logit(p)
        sd = z.std()
        zs.append((z - z.mean()) / sd if sd > 1e-12 else np.zeros_like(z))
    return 1.0 / (1.0 + np.exp(-np.mean(zs, axis=0)))


def fit_platt(y_true, prob, max_iter: int = 100) -> dict:
    """Platt scaling on the logit of ``prob``: ``p' = sigmoid(a * logit(p) + b)``, by maximum likelihood.

    Newton-Raphson on the two parameters (unpenalised, with Platt's target smoothing
    ``(n+ + 1) / (n+ + 2)`` and ``1 / (n- + 2)`` so that separable data keeps finite parameters).
    Returns ``{"method": "platt", "a": ..., "b": ..., "n": ...}``.
    """
    y, p = _as_arrays(y_true, prob)
    x = logit(p)
    n_pos, n_neg = float(y.sum()), float(y.size - y.sum())
    t = np.where(y == 1, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))
    a, b = 1.0, 0.0
    for _ in range(max_iter):
        q = 1.0 / (1.0 + np.exp(-(a * x + b)))
        w = q * (1 - q)
        g = np.array([np.sum((q - t) * x), np.sum(q - t)])
        h = np.array([[np.sum(w * x * x), np.sum(w * x)], [np.sum(w * x), np.sum(w)]]) + 1e-9 * np.eye(2)
        step = np.linalg.solve(h, g)
        a, b = a - step[0], b - step[1]
        if np.max(np.abs(step)) < 1e-10:
            break
    return {"method": "platt", "a": float(a), "b": float(b), "n": int(y.size)}


def fit_isotonic(y_true, prob) -> dict:
    """Isotonic calibration (non-decreasing step function), stored as (x, y) knots."""
    from sklearn.isotonic import IsotonicRegression

    y, p = _as_arrays(y_true, prob)
    iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(p, y)
    return {"method": "isotonic", "x": [float(v) for v in iso.X_thresholds_],
            "y": [float(v) for v in iso.y_thresholds_], "n": int(y.size)}


def fit_calibration(y_true, prob, method: str = "auto", isotonic_min_per_class: int = 50) -> dict:
    """``platt``, ``isotonic``, ``none`` or ``auto`` (isotonic only with >= ``isotonic_min_per_class`` cases
    of each class, else Platt: isotonic overfits small calibration sets)."""
    y, p = _as_arrays(y_true, prob)
    if method == "auto":
        method = "isotonic" if min(y.sum(), y.size - y.sum()) >= isotonic_min_per_class else "platt"
    if method == "platt":
        return fit_platt(y, p)
    if method == "isotonic":
        return fit_isotonic(y, p)
    if method == "none":
        return {"method": "none", "n": int(y.size)}
    raise ValueError(f"Unknown calibration method {method!r}; use auto, platt, isotonic or none.")


def apply_calibration(prob, calibration: dict | None) -> np.ndarray:
    """Map probabilities through a calibration fitted by :func:`fit_calibration` (``None``: unchanged)."""
    p = np.asarray(prob, dtype=float)
    if not calibration or calibration.get("method") == "none":
        return p
    if calibration["method"] == "platt":
        return 1.0 / (1.0 + np.exp(-(calibration["a"] * logit(p) + calibration["b"])))
    if calibration["method"] == "isotonic":
        return np.interp(p, np.asarray(calibration["x"]), np.asarray(calibration["y"]))
    raise ValueError(f"Unknown calibration {calibration.get('method')!r}.")


# ----------------------------------------------------------------------------- multiple testing
def holm_adjust(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1), in the input order.
    NaN entries are left out of the family and returned as NaN."""
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, np.nan)
    idx = np.flatnonzero(np.isfinite(p))
    m = idx.size
    running = 0.0
    for rank, i in enumerate(idx[np.argsort(p[idx], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return [float(v) for v in out]
