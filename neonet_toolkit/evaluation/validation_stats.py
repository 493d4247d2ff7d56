"""Statistics of the external-validation report (``neonet_validate``): pure functions on arrays.

Each answers a TRIPOD+AI (Collins et al., BMJ 2024) item of ``validation_report.md``:

* 12e / 23a discrimination: AUC with the toolkit's DeLong CI and a stratified percentile bootstrap CI;
* 12e / 23a calibration: calibration-in-the-large (intercept with the slope fixed at 1: a binomial GLM with
  ``offset = logit(p)``) and calibration slope (binomial GLM on ``logit(p)``), each with statsmodels' Wald 95 % CI;
  a flexible calibration curve (statsmodels lowess, no robustness iterations, on the probability scale) with a
  case-bootstrap band; observed/expected ratio; Brier and scaled Brier (``1 - Brier / (prev * (1 - prev))``);
  ECE over 10 equal-width bins;
* 12e / 23a clinical usefulness: sensitivity, specificity, PPV, NPV of the model's locked decisions with Wilson
  95 % CIs (statsmodels ``proportion_confint(method="wilson")``); decision curve (net benefit of the model, treat
  all and treat none) from ``dcurves``;
* 12d / 23b per ``site`` / ``scanner`` subgroup, with a warning below :data:`SUBGROUP_MIN_CASES` cases or
  :data:`SUBGROUP_MIN_PER_CLASS` of either class;
* 23a NeoSeg Dice per label where external labels exist, and the classifier's performance in good vs poor
  segmentation cases (tumour Dice >= :data:`GOOD_SEG_DICE`).
"""
from __future__ import annotations

import math
import warnings
from typing import Sequence

import numpy as np
import pandas as pd
import statsmodels.api as sm
from dcurves import dca
from statsmodels.nonparametric.smoothers_lowess import lowess
from statsmodels.stats.proportion import proportion_confint
from statsmodels.tools.sm_exceptions import (
    PerfectSeparationError,
    PerfectSeparationWarning,
)

from neonet_toolkit.utilities import stats

#: a subgroup with fewer cases, or fewer cases of either class, gets a warning: its AUC and calibration are too
#: imprecise to compare with the whole cohort (shown for completeness). For the whole cohort the report also
#: states the usual external-validation sample-size guidance (at least 100 events and 100 non-events).
SUBGROUP_MIN_CASES = 30
SUBGROUP_MIN_PER_CLASS = 10
COHORT_MIN_EVENTS = 100
#: a case whose NeoSeg tumour Dice (against the external label) is at least this is a "good segmentation"
GOOD_SEG_DICE = 0.5
GROUP_COLUMNS = ("site", "scanner")
DCA_THRESHOLDS = np.round(np.arange(0.01, 1.0, 0.01), 2)
#: predictions whose logits span less than this (e.g. every probability within 0.283-0.287) do not determine a
#: calibration slope (its CI spans tens of units); the slope is then reported as not estimable, with the range
SLOPE_MIN_LOGIT_RANGE = 0.1


def _classes(y) -> tuple[int, int]:
    y = np.asarray(y).astype(int)
    return int((y == 1).sum()), int((y == 0).sum())


def discrimination(y, p, n_boot: int = 2000, seed: int = 0) -> dict:
    """AUC with the DeLong 95 % CI and a seeded stratified percentile bootstrap 95 % CI. A single-class cohort
    gets ``{"auc": None, "reason": ...}`` (the AUC is undefined)."""
    n_pos, n_neg = _classes(y)
    if n_pos == 0 or n_neg == 0:
        return {"auc": None, "n": n_pos + n_neg, "n_pos": n_pos, "n_neg": n_neg,
                "reason": f"AUC undefined: the cohort holds only {'negatives' if n_pos == 0 else 'positives'} "
                          f"({n_pos} positive, {n_neg} negative); discrimination needs both classes."}
    d = stats.delong_ci(y, p)
    b = stats.bootstrap_auc_ci(y, p, n_boot=n_boot, seed=seed)
    return {"auc": d["auc"], "n": n_pos + n_neg, "n_pos": n_pos, "n_neg": n_neg,
            "delong": {"se": d["se"], "ci_low": d["ci_low"], "ci_high": d["ci_high"]},
            "bootstrap": {"ci_low": b["ci_low"], "ci_high": b["ci_high"], "n_boot": n_boot, "seed": seed,
                          "method": "stratified percentile bootstrap"}}


def _glm(y, x, offset=None) -> tuple[np.ndarray, np.ndarray] | str:
    """(params, 95 % CI rows) of a binomial GLM, or the reason it cannot be estimated."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            res = sm.GLM(np.asarray(y, float), x, family=sm.families.Binomial(), offset=offset).fit()
        except PerfectSeparationError:
            return "separation (the score splits the classes perfectly)"
        except (np.linalg.LinAlgError, ValueError) as e:
            return f"the fit failed ({e})"
    if any(issubclass(w.category, PerfectSeparationWarning) for w in caught):
        return "separation (the score splits the classes perfectly)"
    params, ci = np.asarray(res.params, float), np.asarray(res.conf_int(0.05), float)
    if not (np.all(np.isfinite(params)) and np.all(np.isfinite(ci))):
        return "the fit did not converge to finite values"
    return params, ci


def _not_estimable(y, p) -> str | None:
    n_pos, n_neg = _classes(y)
    if not (n_pos and n_neg):
        return "not estimable: the cohort holds a single class"
    return None


def calibration_in_the_large(y, p) -> dict:
    """Intercept ``a`` of ``logit P(y=1) = a + logit(p)`` (slope fixed at 1) with its 95 % CI. 0 = calibrated in
    the large; < 0: the model over-predicts, > 0: it under-predicts."""
    reason = _not_estimable(y, p)
    lp = stats.logit(p)
    fit = reason or _glm(y, np.ones((lp.size, 1)), offset=lp)
    if isinstance(fit, str):
        return {"intercept": None, "reason": fit if reason else f"not estimable: {fit}"}
    return {"intercept": float(fit[0][0]), "ci_low": float(fit[1][0, 0]), "ci_high": float(fit[1][0, 1])}


def calibration_slope(y, p) -> dict:
    """Slope ``b`` of ``logit P(y=1) = a + b logit(p)`` with its 95 % CI (and that model's intercept). 1 = ideal;
    < 1: predictions too extreme (overfitting), > 1: too moderate. Predictions that hardly vary (logit range below
    :data:`SLOPE_MIN_LOGIT_RANGE`) leave the slope undetermined: it is reported as not estimable."""
    reason = _not_estimable(y, p)
    lp = stats.logit(p)
    if reason is None and np.ptp(lp) < SLOPE_MIN_LOGIT_RANGE:
        reason = (f"not estimable: the predictions hardly vary (logit range {np.ptp(lp):.3g} < "
                  f"{SLOPE_MIN_LOGIT_RANGE}; probabilities {np.min(p):.3f}-{np.max(p):.3f})")
    fit = reason or _glm(y, sm.add_constant(lp, has_constant="add"))
    if isinstance(fit, str):
        return {"slope": None, "reason": fit if reason else f"not estimable: {fit}"}
    return {"slope": float(fit[0][1]), "ci_low": float(fit[1][1, 0]), "ci_high": float(fit[1][1, 1]),
            "intercept": float(fit[0][0])}


def calibration_curve(y, p, n_boot: int = 200, seed: int = 0, frac: float = 2 / 3, n_grid: int = 50) -> dict:
    """Flexible calibration curve: lowess of the outcome on the predicted probability (no robustness iterations,
    which would discard the minority class as outliers) on a grid over the observed range of ``p``, with a
    pointwise 95 % band from ``n_boot`` case-bootstrap replicates (seeded)."""
    y, p = np.asarray(y, float), np.asarray(p, float)
    grid = np.linspace(p.min(), p.max(), n_grid) if p.size else np.zeros(0)
    if p.size < 3 or np.ptp(p) == 0:
        return {"grid": grid.tolist(), "observed": [], "band_low": [], "band_high": [], "frac": frac,
                "n_boot": 0, "note": "fewer than 3 cases or a constant probability: no curve"}

    def fit(yy, pp):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return np.clip(lowess(yy, pp, frac=frac, it=0, xvals=grid), 0.0, 1.0)

    curve = fit(y, p)
    rng = np.random.default_rng(seed)
    reps = []
    for _ in range(n_boot):
        i = rng.integers(0, p.size, p.size)
        if np.ptp(p[i]) > 0:
            reps.append(fit(y[i], p[i]))
    reps = np.asarray(reps)
    lo, hi = (np.nanquantile(reps, [0.025, 0.975], axis=0) if len(reps) else (np.full_like(grid, np.nan),) * 2)
    return {"grid": grid.tolist(), "observed": curve.tolist(), "band_low": np.asarray(lo).tolist(),
            "band_high": np.asarray(hi).tolist(), "frac": frac, "n_boot": int(len(reps)), "seed": seed}


def calibration(y, p, n_boot: int = 200, seed: int = 0) -> dict:
    """Every calibration measure of the report (see the module docstring)."""
    y, p = np.asarray(y, float), np.asarray(p, float)
    prev = float(y.mean()) if y.size else float("nan")
    brier = stats.brier_score(y, p)
    expected = float(p.sum())
    return {"n": int(y.size), "observed_events": int(y.sum()), "expected_events": expected,
            "observed_prevalence": prev, "mean_predicted": float(p.mean()) if p.size else float("nan"),
            "o_e_ratio": float(y.sum() / expected) if expected > 0 else None,
            "citl": calibration_in_the_large(y, p), "slope": calibration_slope(y, p),
            "brier": brier,
            "scaled_brier": (1.0 - brier / (prev * (1 - prev))) if 0 < prev < 1 else None,
            "ece": stats.expected_calibration_error(y, p, 10), "ece_bins": 10,
            "curve": calibration_curve(y, p, n_boot=n_boot, seed=seed)}


def wilson(k: int, n: int) -> dict:
    """A proportion with its Wilson 95 % CI (statsmodels)."""
    if n == 0:
        return {"value": None, "k": 0, "n": 0, "ci_low": None, "ci_high": None}
    lo, hi = proportion_confint(k, n, alpha=0.05, method="wilson")
    return {"value": k / n, "k": int(k), "n": int(n), "ci_low": float(lo), "ci_high": float(hi)}


def threshold_performance(y, decision) -> dict:
    """Sensitivity, specificity, PPV and NPV of 0/1 decisions (the model's locked threshold rule) with Wilson CIs."""
    y, d = np.asarray(y).astype(int), np.asarray(decision).astype(int)
    tp, fn = int(((d == 1) & (y == 1)).sum()), int(((d == 0) & (y == 1)).sum())
    fp, tn = int(((d == 1) & (y == 0)).sum()), int(((d == 0) & (y == 0)).sum())
    return {"tp": tp, "fp": fp, "tn": tn, "fn": fn, "sensitivity": wilson(tp, tp + fn),
            "specificity": wilson(tn, tn + fp), "ppv": wilson(tp, tp + fp), "npv": wilson(tn, tn + fn)}


def decision_curve(y, p, thresholds: Sequence[float] = DCA_THRESHOLDS) -> dict:
    """Net benefit of the model, of treating everyone and of treating no one at each threshold probability
    (``dcurves.dca``: NB = TP/n - FP/n * pt / (1 - pt), a case counts as positive when p >= pt)."""
    thr = np.asarray(thresholds, float)
    y = np.asarray(y).astype(int)
    if y.size and (y.min() == y.max()):  # dcurves divides by the number of positives: the formula itself
        pos = np.asarray(p, float)[None, :] >= thr[:, None]
        tp, fp = (pos & (y == 1)).sum(1) / y.size, (pos & (y == 0)).sum(1) / y.size
        prev = float(y.mean())
        return {"thresholds": thr.tolist(), "model": (tp - fp * thr / (1 - thr)).tolist(),
                "treat_all": (prev - (1 - prev) * thr / (1 - thr)).tolist(), "treat_none": [0.0] * thr.size,
                "note": "single-class cohort: net benefit computed directly (dcurves needs both classes)"}
    df = pd.DataFrame({"y": np.asarray(y).astype(int), "model": np.asarray(p, float)})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = dca(data=df, outcome="y", modelnames=["model"], thresholds=thr)
    out = {"thresholds": thr.tolist()}
    for name, key in (("model", "model"), ("all", "treat_all"), ("none", "treat_none")):
        rows = res[res["model"] == name].sort_values("threshold")
        out[key] = [float(v) for v in rows["net_benefit"]]
    return out


def subgroup_warning(n_pos: int, n_neg: int) -> str | None:
    n = n_pos + n_neg
    if n < SUBGROUP_MIN_CASES or min(n_pos, n_neg) < SUBGROUP_MIN_PER_CLASS:
        return (f"small subgroup ({n} cases: {n_pos} positive, {n_neg} negative; below {SUBGROUP_MIN_CASES} cases or "
                f"{SUBGROUP_MIN_PER_CLASS} of a class): estimates are imprecise, shown for completeness")
    return None


def group_performance(y, p, decision, n_boot: int = 500, seed: int = 0) -> dict:
    """Discrimination, the main calibration figures and the threshold metrics of one group of cases."""
    n_pos, n_neg = _classes(y)
    cal = calibration(y, p, n_boot=0)
    cal.pop("curve")
    return {"n": n_pos + n_neg, "n_pos": n_pos, "n_neg": n_neg, "warning": subgroup_warning(n_pos, n_neg),
            "discrimination": discrimination(y, p, n_boot=n_boot, seed=seed), "calibration": cal,
            "threshold": threshold_performance(y, decision)}


def subgroups(y, p, decision, groups: dict[str, Sequence[str]], n_boot: int = 500, seed: int = 0) -> dict:
    """``{column: {value: group_performance}}`` for each grouping column (e.g. site, scanner)."""
    y, p, d = np.asarray(y).astype(int), np.asarray(p, float), np.asarray(decision).astype(int)
    out = {}
    for col, values in groups.items():
        v = np.asarray(values, dtype=object)
        out[col] = {str(g): group_performance(y[v == g], p[v == g], d[v == g], n_boot, seed)
                    for g in sorted({str(x) for x in v})}
    return out


def independent_auc_difference(a: dict, b: dict) -> dict | None:
    """Difference of two AUCs on disjoint case sets (z test with the DeLong standard errors)."""
    if a.get("auc") is None or b.get("auc") is None:
        return None
    diff = a["auc"] - b["auc"]
    se = math.sqrt(a["delong"]["se"] ** 2 + b["delong"]["se"] ** 2)
    z = diff / se if se > 0 else (0.0 if diff == 0 else math.copysign(math.inf, diff))
    return {"diff": diff, "se": se, "z": z, "p_value": float(2 * (1 - 0.5 * (1 + math.erf(abs(z) / math.sqrt(2)))))}


def _ids(v) -> list[int]:
    return [int(i) for i in (v if isinstance(v, (list, tuple)) else [v])]


def dice_per_label(pred: np.ndarray, ref: np.ndarray, labels: dict[str, int | Sequence[int]],
                   ref_labels: dict[str, int | Sequence[int]] | None = None) -> dict[str, float | None]:
    """Dice of each named label (``name -> id`` or ids; background 0 excluded); None when the label is absent
    from both masks. ``ref_labels``: the reference's own ``name -> id`` (an external dataset.json may number the
    labels differently: they are matched by name; a label the reference does not name is left out)."""
    out = {}
    for name, lid in labels.items():
        ids = _ids(lid)
        if ids == [0]:
            continue
        if ref_labels is not None and name not in ref_labels:
            continue
        a, b = np.isin(pred, ids), np.isin(ref, _ids(ref_labels[name]) if ref_labels is not None else ids)
        s = int(a.sum() + b.sum())
        out[name] = None if s == 0 else float(2 * np.logical_and(a, b).sum() / s)
    return out


def analyse(cohort: dict, n_boot: int = 2000, curve_boot: int = 200, seed: int = 0) -> dict:
    """Every statistic of the report on the included cases of :func:`cohort_table` (probability and decision)."""
    inc = [r for r in cohort["rows"] if r["status"] == "included"]
    y = np.asarray([r["label"] for r in inc], int)
    p = np.asarray([r["probability"] for r in inc], float)
    d = np.asarray([int(r["decision"]) if r["decision"] is not None else int(r["probability"] >= 0.5) for r in inc])
    res = {"n_included": int(y.size)}
    if y.size == 0:
        res["error"] = "no case has a probability: nothing to analyse"
        return res
    res["discrimination"] = discrimination(y, p, n_boot=n_boot, seed=seed)
    res["calibration"] = calibration(y, p, n_boot=curve_boot, seed=seed)
    res["threshold"] = threshold_performance(y, d)
    res["decision_curve"] = decision_curve(y, p)
    cols = [c for c in GROUP_COLUMNS if inc and c in inc[0]]
    if cols:
        res["subgroups"] = subgroups(y, p, d, {c: [r[c] for r in inc] for c in cols}, n_boot=min(n_boot, 500),
                                     seed=seed)
    return res


def segmentation_analysis(cohort: dict, dice: dict[str, dict], tumor_label: str, n_boot: int = 500) -> dict:
    """Dice per label over the cases with an external label, and performance in good vs poor segmentation cases."""
    if not dice:
        return {}
    labels = sorted({k for v in dice.values() for k in v})
    per_label = {}
    for lab in labels:
        vals = [v[lab] for v in dice.values() if v.get(lab) is not None]
        per_label[lab] = {"n": len(vals), "mean": float(np.mean(vals)) if vals else None,
                          "median": float(np.median(vals)) if vals else None,
                          "min": float(np.min(vals)) if vals else None}
    out = {"n_cases": len(dice), "per_label": per_label, "good_dice": GOOD_SEG_DICE, "tumor_label": tumor_label}
    inc = [r for r in cohort["rows"] if r["status"] == "included" and r["case_id"] in dice
           and dice[r["case_id"]].get(tumor_label) is not None]
    groups = {}
    for name, keep in (("good", lambda v: v >= GOOD_SEG_DICE), ("poor", lambda v: v < GOOD_SEG_DICE)):
        rr = [r for r in inc if keep(dice[r["case_id"]][tumor_label])]
        if rr:
            groups[name] = group_performance([r["label"] for r in rr], [r["probability"] for r in rr],
                                             [int(r["decision"] or 0) for r in rr], n_boot=n_boot)
    out["by_segmentation"] = groups
    if "good" in groups and "poor" in groups:
        out["auc_difference_good_minus_poor"] = independent_auc_difference(groups["good"]["discrimination"],
                                                                           groups["poor"]["discrimination"])
    return out
