"""External validation of a locked NeoNet model on another site's cohort (``neonet_validate``).

Pure functions on arrays (discrimination, calibration, clinical usefulness, subgroups, dataset shift, model
updating), the report writer, and :func:`validate`, the orchestration behind ``neonet_validate`` (open the model
package, run ``neonet_predict`` on every case, then the analyses and the report; ``neonet_toolkit.run.validate``
only parses the command line). Evaluation and inference share a layer, so this module may call the predictor.

Every section of ``validation_report.md`` names the TRIPOD+AI (Collins et al., BMJ 2024) item it answers:

* 12e / 23a discrimination: AUC with the toolkit's DeLong CI and a stratified percentile bootstrap CI; ROC;
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
  segmentation cases (tumour Dice >= :data:`GOOD_SEG_DICE`);
* 16 / 20c dataset shift: per-case fingerprint against the training fingerprint stored in the model;
* 12f / 24 model updating: ``intercept`` or ``logistic`` recalibration, written as a new model version.
"""
from __future__ import annotations

import csv
import hashlib
import io
import logging
import math
import shutil
import time
import warnings
import zipfile
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import SimpleITK as sitk
import statsmodels.api as sm
from dcurves import dca
from matplotlib.figure import Figure
from statsmodels.nonparametric.smoothers_lowess import lowess
from statsmodels.stats.proportion import proportion_confint
from statsmodels.tools.sm_exceptions import PerfectSeparationError, PerfectSeparationWarning

from neonet_toolkit.dataset.case_ids import check_case_id
from neonet_toolkit.dataset.contract import CASE_LABELS_FILE, DEFAULT_TARGET, load_dataset_json, read_case_labels
from neonet_toolkit.dataset.errors import DatasetError
from neonet_toolkit.dataset.labels import resolve_label_roles
from neonet_toolkit.inference.inputs import scan_inputs
from neonet_toolkit.inference.outputs import CASES_FOLDER, load_record
from neonet_toolkit.inference.predict import predict
from neonet_toolkit.utilities import stats
from neonet_toolkit.utilities.checkpoints import file_sha256, load_checkpoint, save_checkpoint
from neonet_toolkit.utilities.identifiers import FINAL_CHECKPOINT, PLANS_NAME, ResultLayout
from neonet_toolkit.models import model_card, package
from neonet_toolkit.models.package import opened_package
from neonet_toolkit.models.seg import REGISTERED_MODEL_FILE
from neonet_toolkit.utilities.io import atomic_path, load_json, save_csv, save_figure, save_json, save_text
from neonet_toolkit.version import __version__

logger = logging.getLogger(__name__)

#: a subgroup with fewer cases, or fewer cases of either class, gets a warning: its AUC and calibration are too
#: imprecise to compare with the whole cohort (shown for completeness). For the whole cohort the report also
#: states the usual external-validation sample-size guidance (at least 100 events and 100 non-events).
SUBGROUP_MIN_CASES = 30
SUBGROUP_MIN_PER_CLASS = 10
COHORT_MIN_EVENTS = 100
#: a case whose NeoSeg tumour Dice (against the external label) is at least this is a "good segmentation"
GOOD_SEG_DICE = 0.5
#: |standardized difference| above this is a substantial shift of the cohort (Austin 2009: 0.1 small, 0.25 large)
SMD_SUBSTANTIAL = 0.25
SMD_SMALL = 0.1
#: spacing tolerance of the per-case flag, the same as neonet_predict's spacing QC flag
SPACING_TOLERANCE = (0.8, 1.25)
GROUP_COLUMNS = ("site", "scanner")
RECALIBRATION_METHODS = ("intercept", "logistic")
DCA_THRESHOLDS = np.round(np.arange(0.01, 1.0, 0.01), 2)
#: predictions whose logits span less than this (e.g. every probability within 0.283-0.287) do not determine a
#: calibration slope (its CI spans tens of units); the slope is then reported as not estimable, with the range
SLOPE_MIN_LOGIT_RANGE = 0.1


# ============================================================================= discrimination
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


# ============================================================================= calibration
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


# ============================================================================= clinical usefulness
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


# ============================================================================= subgroups, segmentation
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


# ============================================================================= dataset shift
def standardized_difference(train, external) -> float | None:
    """(mean_ext - mean_train) / sqrt((var_train + var_ext) / 2); for 0/1 values this is the usual difference of
    proportions. None when either side is empty or both have no spread and equal means give 0."""
    a, b = np.asarray(train, float), np.asarray(external, float)
    if a.size == 0 or b.size == 0:
        return None
    va, vb = (a.var(ddof=1) if a.size > 1 else 0.0), (b.var(ddof=1) if b.size > 1 else 0.0)
    return _smd(a.mean(), va, b.mean(), vb)


def _smd(mean_a, var_a, mean_b, var_b) -> float | None:
    pooled = math.sqrt((var_a + var_b) / 2)
    diff = float(mean_b - mean_a)
    if pooled == 0:
        return 0.0 if diff == 0 else math.copysign(math.inf, diff)
    return diff / pooled


def training_reference(fingerprint: dict | None, tlcr_cases: Sequence[dict] | None = None,
                       summary: dict | None = None, image_channel: int = 0) -> dict:
    """The training side of the shift comparison, from nnU-Net's ``dataset_fingerprint.json`` (per-case spacings
    and shapes after cropping to the non-zero region, pooled foreground intensity statistics), the training TLCR
    records (per-case tumour volume and crop clamping; optional) and, for whatever these lack, the model
    manifest's ``training_data`` summary (its ``foreground_intensity``; per-case lists under nnU-Net's key names)."""
    fp, summary = fingerprint or {}, summary or {}
    ref = {"spacing": fp.get("spacings") or summary.get("spacings"),
           "shape": fp.get("shapes_after_crop") or summary.get("shapes_after_crop"),
           "intensity": ((fp.get("foreground_intensity_properties_per_channel") or {}).get(str(image_channel))
                         or (summary.get("foreground_intensity_properties_per_channel") or {}).get(str(image_channel))
                         or summary.get("foreground_intensity")),
           "tumor_volume_ml": None, "border_clamped": None}
    cases = [c for c in (tlcr_cases or []) if not c.get("empty_tumor")]
    if cases:
        ref["tumor_volume_ml"] = [float(c["tumor_volume_ml"]) for c in cases]
        ref["border_clamped"] = [bool(tlcr_border_clamped(c)) for c in cases]
    else:
        ref["tumor_volume_ml"] = summary.get("tumor_volume_ml")
        ref["border_clamped"] = summary.get("border_clamped")
    ref["n_cases"] = len(ref["spacing"] or ref["shape"] or [])
    return ref


def tlcr_border_clamped(tlcr: dict) -> bool:
    """Was the TLCR crop moved off the tumour centre by the image border (start clamped on an axis that is not
    padded)? ``tlcr``: a :class:`~neonet_toolkit.preprocessing.tlcr.TLCRInfo` dict."""
    if tlcr.get("empty_tumor") or tlcr.get("start") is None or tlcr.get("center") is None:
        return False
    for s, c, k in zip(tlcr["start"], tlcr["center"], tlcr["crop_size"]):
        if s >= 0 and s != c - k // 2:
            return True
    return False


def _crop_nonzero_shape(image: np.ndarray) -> list[int]:
    nz = image != 0
    if not nz.any():
        return list(image.shape)
    out = []
    for ax in range(image.ndim):
        idx = np.flatnonzero(nz.any(axis=tuple(a for a in range(image.ndim) if a != ax)))
        out.append(int(idx[-1] - idx[0] + 1))
    return out


def case_fingerprint(image: np.ndarray, roi: np.ndarray, record: dict) -> dict:
    """One external case's fingerprint: spacing (from the neonet_predict record), shape after cropping to the
    non-zero region (nnU-Net's definition), organ+tumour intensity percentiles (the predicted mask), tumour volume
    and TLCR border clamping (from the record). ``image`` and ``roi`` on the same grid, axes in the reader's order."""
    v = np.asarray(image, np.float64)[np.asarray(roi, bool)]
    tlcr = record.get("tlcr") or {}
    fp = {"case_id": record.get("case_id"), "spacing": [float(s) for s in record.get("spacing") or []],
          "shape": _crop_nonzero_shape(np.asarray(image)),
          "tumor_volume_ml": record.get("tumor_volume_ml"),
          "border_clamped": tlcr_border_clamped(tlcr) if tlcr else None,
          "tumor_clipped": bool(tlcr.get("tumor_clipped")) if tlcr else None,
          "roi_voxels": int(v.size)}
    if v.size:
        p5, p50, p95 = np.percentile(v, [5, 50, 95])
        fp.update(intensity_p05=float(p5), intensity_p50=float(p50), intensity_p95=float(p95),
                  intensity_sum=float(v.sum()), intensity_sumsq=float((v * v).sum()))
    return fp


def shift_analysis(reference: dict, cases: Sequence[dict]) -> dict:
    """Per-case flags, cohort standardized differences and the plain statement of the report.

    Per-case flags: ``spacing_outside_training`` (an axis outside [min x 0.8, max x 1.25] of the training
    spacings, neonet_predict's QC rule), ``shape_outside_training`` (an axis outside the training [min, max]),
    ``intensity_outside_training`` (the median organ+tumour intensity outside the training foreground's
    0.5-99.5 percentiles, neonet_predict's rule), ``tumor_volume_outside_training`` (outside the training
    [min, max]), ``tlcr_border_clamped``. Cohort: ``outside`` (the median case outside the training [min, max];
    intensity: most cases flagged), ``shifted`` (see :func:`_shifted`), standardized differences of each
    spacing / shape axis, tumour volume and the clamping rate (per case), and of the pooled foreground intensity
    (voxels: the external mean and SD over all cases' organ+tumour voxels against the training fingerprint's mean
    and SD)."""
    rows, smd = [], {}
    sp_tr = np.asarray(reference.get("spacing") or [], float).reshape(-1, 3) if reference.get("spacing") else None
    sh_tr = np.asarray(reference.get("shape") or [], float).reshape(-1, 3) if reference.get("shape") else None
    inten = reference.get("intensity") or {}
    vol_tr = np.asarray(reference.get("tumor_volume_ml") or [], float)
    clamp_tr = reference.get("border_clamped")
    for c in cases:
        flags = []
        if sp_tr is not None and len(c.get("spacing") or []) == sp_tr.shape[1]:
            s = np.asarray(c["spacing"], float)
            if np.any(s < sp_tr.min(0) * SPACING_TOLERANCE[0]) or np.any(s > sp_tr.max(0) * SPACING_TOLERANCE[1]):
                flags.append("spacing_outside_training")
        if sh_tr is not None and len(c.get("shape") or []) == sh_tr.shape[1]:
            s = np.asarray(c["shape"], float)
            if np.any(s < sh_tr.min(0)) or np.any(s > sh_tr.max(0)):
                flags.append("shape_outside_training")
        lo, hi = inten.get("percentile_00_5", inten.get("min")), inten.get("percentile_99_5", inten.get("max"))
        if c.get("intensity_p50") is not None and lo is not None and hi is not None \
                and not lo <= c["intensity_p50"] <= hi:
            flags.append("intensity_outside_training")
        if vol_tr.size and c.get("tumor_volume_ml") is not None and c.get("tumor_voxels", 1) != 0 \
                and not vol_tr.min() <= float(c["tumor_volume_ml"]) <= vol_tr.max():
            flags.append("tumor_volume_outside_training")
        if c.get("border_clamped"):
            flags.append("tlcr_border_clamped")
        rows.append({"case_id": c.get("case_id"), "flags": flags})
    ext_sp = [c["spacing"] for c in cases if len(c.get("spacing") or []) == 3]
    ext_sh = [c["shape"] for c in cases if len(c.get("shape") or []) == 3]
    for name, tr, ext in (("spacing", sp_tr, ext_sp), ("shape", sh_tr, ext_sh)):
        if tr is not None and ext:
            e = np.asarray(ext, float)
            for ax in range(3):
                smd[f"{name}_axis{ax}"] = _summary(tr[:, ax], e[:, ax])
    vols = [float(c["tumor_volume_ml"]) for c in cases if c.get("tumor_volume_ml") and c.get("tumor_voxels", 1)]
    if vol_tr.size and vols:
        smd["tumor_volume_ml"] = _summary(vol_tr, np.asarray(vols))
    clamps = [float(bool(c["border_clamped"])) for c in cases if c.get("border_clamped") is not None]
    if clamp_tr and clamps:
        smd["tlcr_border_clamped_rate"] = _summary(np.asarray(clamp_tr, float), np.asarray(clamps))
    n_vox = sum(c.get("roi_voxels", 0) for c in cases if c.get("intensity_sum") is not None)
    if inten.get("mean") is not None and inten.get("std") is not None and n_vox > 1:
        s1 = sum(c["intensity_sum"] for c in cases if c.get("intensity_sum") is not None)
        s2 = sum(c["intensity_sumsq"] for c in cases if c.get("intensity_sum") is not None)
        mean = s1 / n_vox
        var = max(s2 / n_vox - mean * mean, 0.0) * n_vox / (n_vox - 1)
        d_int = _smd(float(inten["mean"]), float(inten["std"]) ** 2, mean, var)
        smd["foreground_intensity"] = {"smd": d_int, "shifted": _shifted(d_int, 0.0),
                                       "train_mean": float(inten["mean"]), "train_sd": float(inten["std"]),
                                       "external_mean": mean, "external_sd": math.sqrt(var),
                                       "train_range": [inten.get("percentile_00_5"), inten.get("percentile_99_5")],
                                       "external_median_of_cases": float(np.median(
                                           [c["intensity_p50"] for c in cases if c.get("intensity_p50") is not None]))}
    flagged = {}
    for r in rows:
        for f in r["flags"]:
            flagged[f] = flagged.get(f, 0) + 1
    n = len(cases)
    outside = [k for k, v in smd.items() if v.get("outside_range")]
    if smd.get("foreground_intensity") and 2 * flagged.get("intensity_outside_training", 0) > n:
        outside.append("foreground_intensity")
    shifted = [k for k, v in smd.items() if v.get("shifted") and k not in outside]
    if outside:
        statement = (f"The external cohort lies OUTSIDE the training range in: {', '.join(outside)} (its median case "
                     "outside the training [min, max]"
                     + (", or most cases' organ intensity outside the training 0.5-99.5 percentiles"
                        if "foreground_intensity" in outside else "") + "). The model was not trained on such scans: "
                     "its performance here need not carry over; read discrimination and calibration with this in mind.")
        if shifted:
            statement += f" Also shifted: {', '.join(shifted)}."
    elif shifted:
        statement = (f"The external cohort lies within the training range, but is shifted in: {', '.join(shifted)} "
                     f"(|standardized difference| > {SMD_SUBSTANTIAL} and beyond twice its chance SE).")
    elif flagged:
        statement = ("The external cohort lies within the training range at cohort level, but individual cases are "
                     "flagged: " + ", ".join(f"{k} {v}/{n}" for k, v in sorted(flagged.items())) + ".")
    else:
        statement = "The external cohort lies within the training range (no case flagged, no substantial shift)."
    return {"cases": rows, "standardized_differences": smd, "flag_counts": flagged, "outside": outside,
            "shifted": shifted, "statement": statement, "smd_substantial": SMD_SUBSTANTIAL}


def _shifted(smd: float | None, se_null: float) -> bool:
    """A substantial standardized difference that chance alone would rarely give: |smd| above both
    :data:`SMD_SUBSTANTIAL` and twice its SE under no shift (about sqrt(1/n_train + 1/n_external): 0.2 for 40 vs
    60 cases, so 0.25 alone would fire by chance in small cohorts)."""
    return smd is not None and abs(smd) > max(SMD_SUBSTANTIAL, 2 * se_null)


def _summary(train: np.ndarray, ext: np.ndarray) -> dict:
    smd = standardized_difference(train, ext)
    se_null = math.sqrt(1 / train.size + 1 / ext.size)
    return {"smd": smd, "se_null": se_null, "shifted": _shifted(smd, se_null), "train_mean": float(train.mean()),
            "train_min": float(train.min()), "train_max": float(train.max()), "external_mean": float(ext.mean()),
            "external_min": float(ext.min()), "external_max": float(ext.max()),
            "outside_range": bool(not train.min() <= float(np.median(ext)) <= train.max())}


# ============================================================================= model updating
def fit_recalibration(y, p, method: str) -> dict:
    """The update ``logit p' = a + b logit p`` fitted on the external cohort: ``intercept`` (b = 1, a = the
    calibration-in-the-large) or ``logistic`` (a and b = the calibration intercept and slope)."""
    if method not in RECALIBRATION_METHODS:
        raise ValueError(f"--recalibrate {method!r}: use one of {', '.join(RECALIBRATION_METHODS)}.")
    n_pos, n_neg = _classes(y)
    if not (n_pos and n_neg):
        raise DatasetError(f"--recalibrate {method}: the cohort holds a single class ({n_pos} positive, {n_neg} "
                           "negative), so no update can be fitted. Validate without --recalibrate.")
    if method == "intercept":
        c = calibration_in_the_large(y, p)
        if c["intercept"] is None:
            raise DatasetError(f"--recalibrate intercept: {c['reason']}; validate without --recalibrate.")
        return {"method": method, "a": c["intercept"], "b": 1.0, "n": n_pos + n_neg, "n_pos": n_pos}
    s = calibration_slope(y, p)
    if s["slope"] is None:
        raise DatasetError(f"--recalibrate logistic: {s['reason']}; try --recalibrate intercept.")
    return {"method": method, "a": s["intercept"], "b": s["slope"], "n": n_pos + n_neg, "n_pos": n_pos}


def apply_recalibration(p, update: dict) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-(update["a"] + update["b"] * stats.logit(p))))


def compose_calibration(calibration: dict | None, update: dict) -> dict:
    """A fold's calibration followed by ``update``, in the form :func:`stats.apply_calibration` reads. Platt and
    none compose exactly (``a' = b a``, ``b' = b b0 + a0``); isotonic maps its knot values (exact at the knots, a
    monotone piecewise-linear approximation between them)."""
    cal = dict(calibration or {"method": "none"})
    a, b = float(update["a"]), float(update["b"])
    if cal.get("method", "none") == "none":
        return {"method": "platt", "a": b, "b": a, "n": update.get("n")}
    if cal["method"] == "platt":
        return {**cal, "a": b * float(cal["a"]), "b": b * float(cal["b"]) + a}
    if cal["method"] == "isotonic":
        return {**cal, "y": apply_recalibration(np.asarray(cal["y"], float), update).tolist()}
    raise ValueError(f"Unknown calibration {cal.get('method')!r}; cannot compose the update.")


def write_recalibrated_model(package_root: str | Path, checkpoints: dict[int, Path], update: dict, target: str | Path,
                             provenance: dict, overwrite: bool = False) -> dict:
    """A new model version, written as the model zip ``target``: a copy of the opened package ``package_root``
    whose classifier fold checkpoints (``checkpoints``: fold -> file inside ``package_root``) carry the composed
    calibration and the mapped threshold (``update`` is monotone, so every decision stays the same), with a new
    ``manifest.json`` (file hashes and sizes, per-fold calibration and threshold, ``model_version`` provenance,
    ``recalibration.json`` listed) and a regenerated model card. The copy is verified with
    :func:`~neonet_toolkit.models.package.verify_package` before the zip is written. Returns the provenance."""
    src, dst = Path(package_root), Path(target)
    if dst.exists() and not overwrite:
        raise FileExistsError(f"{dst} exists: choose another output folder or pass --overwrite to replace the "
                              "recalibrated model written there before.")
    tmp = dst.with_name(f".{dst.name}.partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(src, tmp, symlinks=False)
    try:
        manifest = load_json(tmp / package.MANIFEST)
        reg = tmp / "neonet_results" / str(manifest.get("dataset_name")) / REGISTERED_MODEL_FILE
        if reg.is_file() and manifest.get("seg_model"):  # opening a zip pointed it at the extraction folder
            rec = load_json(reg)
            rec["model_folder"] = manifest["seg_model"]
            save_json(rec, reg)
        changed, folds = [], {}
        for fold, ck in sorted(checkpoints.items()):
            rel = Path(ck).resolve().relative_to(src.resolve())
            state = load_checkpoint(tmp / rel)
            info = state.setdefault("extra", {}).setdefault("inference", {})
            old_cal, old_thr = info.get("calibration"), float(info["threshold"])
            info["calibration"] = compose_calibration(old_cal, update)
            info["threshold"] = float(apply_recalibration(np.array([old_thr]), update)[0])
            info["threshold_source"] = f"{info.get('threshold_source')}, mapped through the {update['method']} update"
            info["model_update"] = {k: update.get(k) for k in ("method", "a", "b", "n")}
            save_checkpoint(state, tmp / rel)
            changed.append(rel.as_posix())
            folds[str(fold)] = {"threshold_before": old_thr, "threshold": info["threshold"],
                                "calibration_before": old_cal, "calibration": info["calibration"]}
            entry = (manifest.get("calibration") or {}).get(str(fold))
            if isinstance(entry, dict):
                entry.update(calibration=info["calibration"], threshold=info["threshold"],
                             threshold_source=info["threshold_source"])
        record = {**provenance, "update": update, "folds": folds, "changed_files": changed}
        manifest["model_version"] = record
        save_json(record, tmp / "recalibration.json")
        files = manifest.setdefault("files", {})
        for rel in [*changed, "recalibration.json", *([reg.relative_to(tmp).as_posix()] if reg.is_file() else [])]:
            files[rel] = {"sha256": file_sha256(tmp / rel), "size": (tmp / rel).stat().st_size}
        if package.MODEL_CARD in files:
            save_text(model_card.render(manifest), tmp / package.MODEL_CARD)
            files[package.MODEL_CARD] = {"sha256": file_sha256(tmp / package.MODEL_CARD),
                                         "size": (tmp / package.MODEL_CARD).stat().st_size}
        save_json(manifest, tmp / package.MANIFEST)
        package.verify_package(tmp)  # the new version opens like any exported model
        with atomic_path(dst, suffix=".zip") as z:
            with zipfile.ZipFile(z, "w", zipfile.ZIP_DEFLATED) as zf:
                for rel in sorted(files):
                    zf.write(tmp / rel, rel)
                zf.write(tmp / package.MANIFEST, package.MANIFEST)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return record


def model_hash(package: str | Path) -> str:
    """sha256 of a model zip, or of an extracted package's ``manifest.json`` (which hashes every file)."""
    p = Path(package)
    if p.is_file():
        return file_sha256(p)
    m = p / "manifest.json"
    return file_sha256(m) if m.is_file() else hashlib.sha256(str(p.resolve()).encode()).hexdigest()


# ============================================================================= cohort input
def read_external_labels(csv_path: str | Path, target: str = "PNI") -> tuple[dict[str, int], dict[str, dict[str, str]]]:
    """(labels, groups) from the external ``case_labels.csv``: ``case_id,<target>[,site][,scanner]``; labels must be
    0/1 (each bad row named, with the fix); ``groups``: ``{column: {case: value}}`` for the optional columns (an
    empty value is "unknown")."""
    csv_path = Path(csv_path)
    labels = read_case_labels(csv_path, target)
    text = csv_path.read_bytes().decode("utf-8-sig")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = {(h or "").strip(): h for h in reader.fieldnames or []}
    groups: dict[str, dict[str, str]] = {}
    for col in GROUP_COLUMNS:
        if col in header:
            groups[col] = {}
    if groups:
        for row in reader:
            cid = (row.get(header["case_id"]) or "").strip()
            for col in groups:
                groups[col][cid] = (row.get(header[col]) or "").strip() or "unknown"
    return labels, groups


def match_cases(labels: dict[str, int], image_ids: Sequence[str], csv_path: str | Path, image_folder: str | Path
                ) -> list[str]:
    """The validated case ids; a CSV id without an image, or an image without a CSV row, is refused by name."""
    images = set(image_ids)
    no_image = sorted(set(labels) - images)
    no_label = sorted(images - set(labels))
    problems = []
    if no_image:
        problems.append(f"{csv_path} lists {len(no_image)} case(s) with no image in {image_folder}: {no_image[:20]}"
                        f"{' ...' if len(no_image) > 20 else ''}. Add their images (CASE_0000 files) or remove "
                        "their rows from the CSV.")
    if no_label:
        problems.append(f"{image_folder} holds {len(no_label)} case(s) without a row in {csv_path}: {no_label[:20]}"
                        f"{' ...' if len(no_label) > 20 else ''}. Add a row 'case_id,label' for each, or move "
                        "their images out of the folder.")
    if problems:
        raise DatasetError(problems)
    for c in labels:
        check_case_id(c, where=str(csv_path))
    return sorted(labels)


def cohort_table(case_ids: Sequence[str], labels: dict[str, int], records: dict[str, dict],
                 groups: dict[str, dict[str, str]] | None = None) -> dict:
    """Which cases enter the analyses: ``included`` (a probability), ``no_tumor`` (NeoSeg found no tumour: no
    probability; excluded from AUC and calibration, counted), ``withheld`` (another QC flag withheld the
    probability), ``failed`` (neonet_predict failed on the case)."""
    rows = []
    for cid in case_ids:
        rec = records.get(cid) or {"status": "failed", "error": "no prediction record"}
        if rec.get("status") in ("failed", "pending"):
            status = "failed"
        elif rec.get("probability") is None:
            status = "no_tumor" if "no_tumor" in (rec.get("qc_flags") or []) else "withheld"
        else:
            status = "included"
        row = {"case_id": cid, "label": int(labels[cid]), "status": status,
               "probability": rec.get("probability"), "decision": rec.get("decision"),
               "qc_flags": rec.get("qc_flags") or [], "reason": rec.get("error") or
               ", ".join(rec.get("withheld_because") or [])}
        for col, m in (groups or {}).items():
            row[col] = m.get(cid, "unknown")
        rows.append(row)
    counts = {s: sum(r["status"] == s for r in rows) for s in ("included", "no_tumor", "withheld", "failed")}
    return {"rows": rows, "counts": counts}


# ============================================================================= plots
def plot_roc(y, p, disc: dict, path: Path) -> None:
    fig = Figure(figsize=(5, 5))
    ax = fig.subplots()
    fpr, tpr, _ = stats.roc_curve_points(y, p)
    d = disc["delong"]
    ax.step(fpr, tpr, where="post", label=f"AUC {disc['auc']:.3f} (DeLong 95 % CI {_int(d['ci_low'], d['ci_high'])})")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title(f"External ROC (n={disc['n']}, {disc['n_pos']} positive)", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)


def plot_calibration(y, p, cal: dict, path: Path) -> None:
    fig = Figure(figsize=(5, 5))
    ax = fig.subplots()
    cur = cal["curve"]
    if cur["observed"]:
        g = np.asarray(cur["grid"])
        ax.fill_between(g, cur["band_low"], cur["band_high"], alpha=0.25, label="95 % bootstrap band")
        ax.plot(g, cur["observed"], label="lowess")
    rc = stats.reliability_curve(y, p, 10)
    ok = np.asarray(rc["count"]) > 0
    ax.plot(np.asarray(rc["mean_predicted"])[ok], np.asarray(rc["observed"])[ok], "o", ms=4,
            label=f"10 bins (ECE {cal['ece']:.3f})")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.plot(p, np.where(np.asarray(y) == 1, 1.02, -0.02), "|", color="grey", alpha=0.5)
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("predicted probability")
    ax.set_ylabel("observed proportion")
    ax.set_title(f"Calibration: intercept {_fmt(cal['citl'].get('intercept'))}, slope "
                 f"{_fmt(cal['slope'].get('slope'))}", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    save_figure(fig, path)


def plot_decision_curve(dc: dict, path: Path) -> None:
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    t = dc["thresholds"]
    ax.plot(t, dc["model"], label="model")
    ax.plot(t, dc["treat_all"], label="treat all")
    ax.plot(t, dc["treat_none"], "k", lw=0.8, label="treat none")
    top = max(max(dc["model"]), max(dc["treat_all"]), 0.01)
    ax.set_ylim(-0.05 * top - 0.01, top * 1.15)
    ax.set_xlabel("threshold probability")
    ax.set_ylabel("net benefit")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)


def plot_shift(shift: dict, path: Path) -> None:
    items = [(k, v["smd"]) for k, v in shift["standardized_differences"].items()
             if v.get("smd") is not None and math.isfinite(v["smd"])]
    fig = Figure(figsize=(6, 0.4 * max(len(items), 3) + 1))
    ax = fig.subplots()
    if items:
        names, vals = zip(*items)
        ypos = np.arange(len(names))
        colors = ["tab:red" if abs(v) > SMD_SUBSTANTIAL else "tab:blue" for v in vals]
        ax.scatter(vals, ypos, c=colors)
        ax.set_yticks(ypos, names, fontsize=8)
    for x in (-SMD_SUBSTANTIAL, SMD_SUBSTANTIAL):
        ax.axvline(x, color="tab:red", ls="--", lw=0.8)
    for x in (-SMD_SMALL, SMD_SMALL):
        ax.axvline(x, color="grey", ls=":", lw=0.8)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_xlabel("standardized difference (external - training)")
    ax.set_title("Dataset shift against the training fingerprint", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


# ============================================================================= the report
def _fmt(v, nd: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{v:.{nd}f}"


def _ci(d: dict, key: str = "value") -> str:
    if d.get(key) is None:
        return "n/a"
    return f"{_fmt(d[key])} {_int(d.get('ci_low'), d.get('ci_high'))}"


def _int(lo, hi) -> str:
    return f"[{_fmt(lo)}, {_fmt(hi)}]"


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


def write_report(out: str | Path, cohort: dict, analysis: dict, shift: dict | None, seg: dict | None,
                 meta: dict, apparent: dict | None = None) -> dict:
    """``validation_report.md`` + ``.json``, ``validation_cases.csv`` and the PNGs in ``out``. ``apparent``: the
    analysis of the recalibrated model on the same cases (labelled apparent)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    figures = {}
    inc = [r for r in cohort["rows"] if r["status"] == "included"]
    y = np.asarray([r["label"] for r in inc], int)
    p = np.asarray([r["probability"] for r in inc], float)
    if analysis.get("discrimination", {}).get("auc") is not None:
        plot_roc(y, p, analysis["discrimination"], out / "roc.png")
        figures["roc"] = "roc.png"
    if "calibration" in analysis:
        plot_calibration(y, p, analysis["calibration"], out / "calibration.png")
        figures["calibration"] = "calibration.png"
        plot_decision_curve(analysis["decision_curve"], out / "decision_curve.png")
        figures["decision_curve"] = "decision_curve.png"
    if shift:
        plot_shift(shift, out / "dataset_shift.png")
        figures["dataset_shift"] = "dataset_shift.png"
    flags = {r["case_id"]: r["flags"] for r in (shift or {}).get("cases", [])}
    save_csv([{**r, "shift_flags": flags.get(r["case_id"], [])} for r in cohort["rows"]],
             out / "validation_cases.csv")
    report = {"meta": meta, "cohort": {"counts": cohort["counts"]}, "analysis": analysis, "dataset_shift": shift,
              "segmentation": seg, "recalibration": apparent, "figures": figures}
    save_json(_jsonable(report), out / "validation_report.json")
    save_text(render_markdown(report, cohort), out / "validation_report.md")
    return report


def _jsonable(o):
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if isinstance(o, float) and not math.isfinite(o):
        return None
    return o


def render_markdown(report: dict, cohort: dict) -> str:
    m, a, c = report["meta"], report["analysis"], report["cohort"]["counts"]
    L = [f"# External validation of {m.get('model', 'the model')}", "",
         f"Cohort `{m.get('cohort')}` ({m.get('images')}), {len(cohort['rows'])} case(s); model sha256 "
         f"`{m.get('model_sha256', 'n/a')}`; NeoNet {m.get('version', '')}. Generated by neonet_validate; every "
         "section names the TRIPOD+AI (2024) item it answers.", "",
         "## Participants and outcome events (TRIPOD+AI 21; missing data 11)", "",
         f"- included (a probability): **{c['included']}**", f"- no tumour found by NeoSeg: **{c['no_tumor']}** "
         "(no TLCR crop, no probability: excluded from AUC, calibration and the decision curve)",
         f"- probability withheld by another QC flag: {c['withheld']}", f"- neonet_predict failed: {c['failed']}"]
    for r in cohort["rows"]:
        if r["status"] != "included":
            L.append(f"  - `{r['case_id']}`: {r['status']}{' (' + r['reason'] + ')' if r['reason'] else ''}")
    if "error" in a:
        L += ["", f"**{a['error']}.**"]
        return "\n".join(L) + "\n"
    d, cal, t = a["discrimination"], a["calibration"], a["threshold"]
    L.append(f"- events among the included: {d['n_pos']} positive, {d['n_neg']} negative "
             f"(prevalence {_fmt(cal['observed_prevalence'])})")
    if min(d["n_pos"], d["n_neg"]) < COHORT_MIN_EVENTS:
        L.append(f"- sample size: fewer than {COHORT_MIN_EVENTS} events or non-events (the usual minimum for an "
                 "external validation, Collins et al. 2016): the CIs below are wide; read them, not the points.")
    L += ["", "## Discrimination (TRIPOD+AI 12e, 23a)", ""]
    if d["auc"] is None:
        L.append(f"**{d['reason']}** Calibration is still reported below.")
    else:
        L += [f"- AUC **{_fmt(d['auc'])}**; DeLong 95 % CI {_int(d['delong']['ci_low'], d['delong']['ci_high'])}; "
              f"stratified percentile bootstrap 95 % CI {_int(d['bootstrap']['ci_low'], d['bootstrap']['ci_high'])} "
              f"({d['bootstrap']['n_boot']} replicates, seed {d['bootstrap']['seed']})",
              "- ![ROC](roc.png)"]
    ci, sl = cal["citl"], cal["slope"]
    L += ["", "## Calibration (TRIPOD+AI 12e, 23a)", "",
          f"- calibration-in-the-large (intercept, slope fixed at 1): **{_fmt(ci.get('intercept'))}** "
          + (f"(95 % CI {_int(ci['ci_low'], ci['ci_high'])}; 0 = calibrated, < 0 = over-prediction)"
             if ci.get("intercept") is not None else f"({ci.get('reason')})"),
          f"- calibration slope: **{_fmt(sl.get('slope'))}** "
          + (f"(95 % CI {_int(sl['ci_low'], sl['ci_high'])}; 1 = ideal, < 1 = predictions too extreme)"
             if sl.get("slope") is not None else f"({sl.get('reason')})"),
          f"- observed/expected events: {cal['observed_events']} / {_fmt(cal['expected_events'], 1)} = "
          f"**{_fmt(cal['o_e_ratio'])}**",
          f"- Brier score {_fmt(cal['brier'])}; scaled Brier {_fmt(cal['scaled_brier'])} (1 - Brier / Brier of the "
          "prevalence alone); ECE (10 equal-width bins) " + _fmt(cal['ece']),
          f"- flexible calibration curve: lowess (frac {_fmt(cal['curve']['frac'], 2)}, no robustness iterations) with "
          f"a {cal['curve']['n_boot']}-replicate case-bootstrap band: ![calibration](calibration.png)"]
    L += ["", "## Clinical usefulness at the locked threshold (TRIPOD+AI 12e, 23a)", "",
          "The model's own decision rule (majority of the per-fold decisions, each fold's locked threshold); Wilson "
          "95 % CIs.", "", "| measure | value (95 % CI) | k / n |", "|---|---|---|"]
    for k in ("sensitivity", "specificity", "ppv", "npv"):
        L.append(f"| {k.upper() if len(k) == 3 else k} | {_ci(t[k])} | {t[k]['k']} / {t[k]['n']} |")
    dc = a["decision_curve"]
    L += ["", f"Decision curve (dcurves; thresholds {dc['thresholds'][0]:.2f}-{dc['thresholds'][-1]:.2f}): "
          "![decision curve](decision_curve.png)", "", "| threshold | model | treat all | treat none |",
          "|---|---|---|---|"]
    for th in (0.1, 0.2, 0.3, 0.4, 0.5):
        i = int(np.argmin(np.abs(np.asarray(dc["thresholds"]) - th)))
        L.append(f"| {dc['thresholds'][i]:.2f} | {_fmt(dc['model'][i])} | {_fmt(dc['treat_all'][i])} | "
                 f"{_fmt(dc['treat_none'][i])} |")
    if a.get("subgroups"):
        L += ["", "## Subgroups / centres (TRIPOD+AI 12d, 23b)", "",
              f"A subgroup with fewer than {SUBGROUP_MIN_CASES} cases or fewer than {SUBGROUP_MIN_PER_CLASS} of a "
              "class is marked: its estimates are imprecise.", "",
              "| column | value | n (pos) | AUC (DeLong CI) | intercept | slope | O/E | sensitivity | specificity "
              "| warning |",
              "|---|---|---|---|---|---|---|---|---|---|"]
        for col, gs in a["subgroups"].items():
            for g, r in gs.items():
                dd = r["discrimination"]
                auc = (f"{_fmt(dd['auc'])} {_int(dd['delong']['ci_low'], dd['delong']['ci_high'])}"
                       if dd["auc"] is not None else "undefined")
                L.append(f"| {col} | {g} | {r['n']} ({r['n_pos']}) | {auc} | "
                         f"{_fmt(r['calibration']['citl'].get('intercept'))} | "
                         f"{_fmt(r['calibration']['slope'].get('slope'))} | "
                         f"{_fmt(r['calibration']['o_e_ratio'])} | {_fmt(r['threshold']['sensitivity']['value'])} | "
                         f"{_fmt(r['threshold']['specificity']['value'])} | {r['warning'] or ''} |")
    seg = report.get("segmentation")
    if seg:
        L += ["", "## NeoSeg on the external labels (TRIPOD+AI 23a)", "",
              f"{seg['n_cases']} case(s) with an external label.", "", "| label | n | mean Dice | median | min |",
              "|---|---|---|---|---|"]
        for lab, v in seg["per_label"].items():
            L.append(f"| {lab} | {v['n']} | {_fmt(v['mean'])} | {_fmt(v['median'])} | {_fmt(v['min'])} |")
        L += ["", f"Classifier performance by segmentation quality (good: {seg['tumor_label']} Dice >= "
              f"{seg['good_dice']}):", ""]
        for name, r in seg.get("by_segmentation", {}).items():
            dd = r["discrimination"]
            L.append(f"- {name}: n={r['n']} ({r['n_pos']} positive), AUC {_fmt(dd['auc'])}, Brier "
                     f"{_fmt(r['calibration']['brier'])}{'; ' + r['warning'] if r['warning'] else ''}")
        diff = seg.get("auc_difference_good_minus_poor")
        if diff:
            L.append(f"- AUC difference good - poor {_fmt(diff['diff'])} (z test on DeLong SEs, p = "
                     f"{_fmt(diff['p_value'])})")
    sh = report.get("dataset_shift")
    if sh:
        L += ["", "## Dataset shift against the training fingerprint (TRIPOD+AI 16, 20c)", "", f"**{sh['statement']}**",
              "", "| feature | training mean [min, max] | external mean [min, max] | standardized difference |",
              "|---|---|---|---|"]
        for k, v in sh["standardized_differences"].items():
            if k == "foreground_intensity":
                L.append(f"| {k} (voxels) | {_fmt(v['train_mean'], 2)} (SD {_fmt(v['train_sd'], 2)}) | "
                         f"{_fmt(v['external_mean'], 2)} (SD {_fmt(v['external_sd'], 2)}) | {_fmt(v['smd'])} |")
            else:
                L.append(f"| {k} | {_fmt(v['train_mean'], 2)} [{_fmt(v['train_min'], 2)}, {_fmt(v['train_max'], 2)}] | "
                         f"{_fmt(v['external_mean'], 2)} "
                         f"[{_fmt(v['external_min'], 2)}, {_fmt(v['external_max'], 2)}] | "
                         f"{_fmt(v['smd'])} |")
        L += ["", "Per-case flags: " + (", ".join(f"{k} {v}" for k, v in sorted(sh["flag_counts"].items())) or "none")
              + " (per case in validation_cases.csv). ![shift](dataset_shift.png)"]
    rc = report.get("recalibration")
    if rc:
        u = rc["update"]
        L += ["", "## Model updating (TRIPOD+AI 12f, 24)", "",
              f"`--recalibrate {u['method']}` fitted logit p' = {u['a']:.4f} + {u['b']:.4f} logit p on these "
              f"{u['n']} cases and wrote a NEW model version: `{rc['model_zip']}` (parent model sha256 "
              f"`{rc['parent_model_sha256']}`; provenance in its manifest.json `model_version` and "
              "recalibration.json). Its per-fold calibration and thresholds are updated through the same monotone "
              "map, so every per-fold decision is unchanged (only a fold tie, decided by the mean probability "
              "against the mean threshold, can flip). Use it with `neonet_predict --model-package` or install it "
              "with `neonet_install_model`.", "",
              "**The figures below are APPARENT performance**: the update was fitted on the same cases it is "
              "measured on, so they are optimistic. To measure the updated model honestly, validate it with "
              "`neonet_validate -m <new model> -i <another cohort>` on cases not used for the update (a later "
              "cohort from the same site), or report the update's performance by bootstrap optimism correction.", "",
              f"- apparent calibration-in-the-large {_fmt(rc['apparent']['citl'].get('intercept'))}, apparent slope "
              f"{_fmt(rc['apparent']['slope'].get('slope'))}, apparent O/E {_fmt(rc['apparent']['o_e_ratio'])}, "
              f"apparent Brier {_fmt(rc['apparent']['brier'])}"]
    return "\n".join(L) + "\n"


def read_training_tlcr(meta_file: Path) -> list[dict]:
    """The training TLCR records (``neonet_tlcr/gt/metadata.json``) when the model ships them."""
    if not Path(meta_file).is_file():
        return []
    return list((load_json(meta_file).get("cases") or {}).values())


def recalibrated_analysis(cohort: dict, records: dict[str, dict], update: dict) -> dict:
    """Apparent calibration of the updated model on the same cases: each fold probability goes through the update,
    the case probability is their mean (what the new model version computes)."""
    ys, ps = [], []
    for r in cohort["rows"]:
        if r["status"] != "included":
            continue
        folds = records[r["case_id"]].get("fold_probabilities") or {}
        q = np.asarray(list(folds.values()) or [r["probability"]], float)
        ys.append(r["label"])
        ps.append(float(apply_recalibration(q, update).mean()))
    cal = calibration(np.asarray(ys), np.asarray(ps), n_boot=0)
    cal.pop("curve")
    return cal


# ============================================================================= orchestration
PREDICTIONS_FOLDER = "predictions"


def _image_folder(ext: Path, images: str | None) -> Path:
    if images is not None:
        if images not in ("imagesTs", "imagesTr"):
            raise DatasetError(f"--images {images!r}: use imagesTs or imagesTr.")
        if not (ext / images).is_dir():
            raise DatasetError(f"{ext / images} does not exist.")
        return ext / images
    found = [ext / n for n in ("imagesTs", "imagesTr") if (ext / n).is_dir() and any((ext / n).iterdir())]
    if not found:
        raise DatasetError(f"{ext} has no imagesTs/ or imagesTr/ with images: put the external cases there "
                           "(CASE_0000.nii.gz, nnU-Net naming) next to case_labels.csv.")
    if len(found) > 1:
        raise DatasetError(f"{ext} has both imagesTs/ and imagesTr/: choose the cohort with --images imagesTs or "
                           "--images imagesTr.")
    return found[0]


def _read(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def _case_features(records: dict[str, dict], pred_out: Path, roles, image_channel: int, label_folder: Path | None,
                   file_ending: str, ref_labels: dict | None = None) -> tuple[list[dict], dict[str, dict]]:
    """(per-case fingerprints, per-case Dice against the external labels) of the cases with a mask."""
    fps, dice = [], {}
    for cid, rec in sorted(records.items()):
        if rec.get("status") in ("failed", "pending") or not rec.get("segmentation"):
            continue
        try:
            image = _read(Path(rec["input"][image_channel]))
            seg = _read(pred_out / rec["segmentation"])
        except (RuntimeError, OSError, IndexError) as e:
            logger.warning("%s: image or mask not readable for the shift analysis (%s); left out", cid, e)
            continue
        organ, tumor = roles.masks(seg)
        fp = case_fingerprint(image, organ | tumor, rec)
        fp["tumor_voxels"] = rec.get("tumor_voxels")
        fps.append(fp)
        ref = label_folder / f"{cid}{file_ending}" if label_folder is not None else None
        if ref is not None and ref.is_file():
            gt = _read(ref)
            if gt.shape != seg.shape:
                logger.warning("%s: external label %s has shape %s, the image %s; no Dice", cid, ref, gt.shape,
                               seg.shape)
                continue
            dice[cid] = dice_per_label(seg, gt, dict(roles.labels), ref_labels)
    return fps, dice


def validate(model: str | Path, external_dataset: str | Path, output: str | Path, recalibrate: str | None = None,
             device: str = "auto", images: str | None = None, n_boot: int = 2000, seed: int = 0,
             overwrite: bool = False) -> dict:
    """Predict every external case with the locked model, then write the validation report (see module doc)."""
    ext, out = Path(external_dataset), Path(output)
    if recalibrate is not None and recalibrate not in RECALIBRATION_METHODS:
        raise ValueError(f"--recalibrate {recalibrate!r}: use one of {', '.join(RECALIBRATION_METHODS)}.")
    if not ext.is_dir():
        raise DatasetError(f"External dataset folder {ext} does not exist.")
    image_folder = _image_folder(ext, images)
    label_folder = next((ext / n for n in (image_folder.name.replace("images", "labels"), "labelsTs", "labelsTr")
                         if (ext / n).is_dir()), None)
    pred_out = out / PREDICTIONS_FOLDER
    target_zip = out / f"model_recalibrated_{recalibrate}.zip" if recalibrate else None
    if target_zip is not None and target_zip.exists() and not overwrite:
        raise FileExistsError(f"{target_zip} exists from an earlier run: pass --overwrite to replace it, or choose "
                              "another output folder (-o).")
    ext_json = load_json(ext / "dataset.json") if (ext / "dataset.json").is_file() else {}
    ref_labels = ext_json.get("labels") if isinstance(ext_json.get("labels"), dict) else None
    parent_hash = model_hash(model)
    with opened_package(model) as ctx:  # a zip is extracted into a temporary folder, removed afterwards
        layout = ResultLayout(ctx.dataset_name, (ctx.manifest or {}).get("plans_name") or PLANS_NAME)
        pp = layout.preprocessed
        dataset_json = load_dataset_json(pp / "dataset.json")
        target = (dataset_json.get("neonet") or {}).get("target", DEFAULT_TARGET)
        image_channel = int((dataset_json.get("neonet") or {}).get("image_channel", 0))
        roles = resolve_label_roles(dataset_json, ctx.dataset_name)
        labels, groups = read_external_labels(ext / CASE_LABELS_FILE, target)
        scan = scan_inputs(image_folder, dataset_json["file_ending"], len(dataset_json["channel_names"]),
                           work_folder=pred_out / ".work" / "dicom")
        case_ids = match_cases(labels, [c.case_id for c in scan.cases], ext / CASE_LABELS_FILE, image_folder)
        logger.info("External cohort %s: %d case(s) (%d positive) from %s", ext, len(case_ids), sum(labels.values()),
                    image_folder)
        res = predict(image_folder, pred_out, ctx.dataset_name, seg_model=ctx.seg_model, cls_run=ctx.cls_run,
                      folds=ctx.folds, device=device)
        records = {c: load_record(pred_out, c) or {"status": "failed", "error": "no record written"}
                   for c in case_ids}
        cohort = cohort_table(case_ids, labels, records, groups)
        analysis = analyse(cohort, n_boot=n_boot, seed=seed)
        fps, dice = _case_features(records, pred_out, roles, image_channel, label_folder,
                                   dataset_json["file_ending"], ref_labels)
        if ref_labels is not None and dice and not any(dice.values()):
            logger.warning("The external dataset.json names none of the model's labels %s (it has %s): no Dice.",
                           sorted(roles.labels), sorted(ref_labels))
        fingerprint = load_json(pp / "dataset_fingerprint.json") if (pp / "dataset_fingerprint.json").is_file() \
            else None
        tlcr_cases = read_training_tlcr(pp / "neonet_tlcr" / "gt" / "metadata.json")
        reference = training_reference(fingerprint, tlcr_cases, (ctx.manifest or {}).get("training_data"),
                                       image_channel)
        shift = shift_analysis(reference, fps) if fps else None
        seg = segmentation_analysis(cohort, dice, roles.tumor_names[0]) if dice else None
        apparent = None
        if recalibrate is not None:
            inc = [r for r in cohort["rows"] if r["status"] == "included"]
            update = fit_recalibration([r["label"] for r in inc], [r["probability"] for r in inc], recalibrate)
            folds = sorted({int(f) for r in inc for f in (records[r["case_id"]].get("fold_probabilities") or {})})
            checkpoints = {f: layout.stage_root(ctx.cls_run) / f"fold_{f}" / FINAL_CHECKPOINT for f in folds}
            written = write_recalibrated_model(
                ctx.root, checkpoints, update, target_zip,
                {"parent_model": str(model), "parent_model_sha256": parent_hash, "method": recalibrate,
                 "cohort": {"folder": str(ext.resolve()), "images": image_folder.name, "n": len(inc),
                            "n_pos": int(sum(r["label"] for r in inc)), "case_ids": [r["case_id"] for r in inc]},
                 "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "toolkit_version": __version__},
                overwrite=overwrite)
            apparent = {"update": update, "model_zip": str(target_zip), "parent_model_sha256": parent_hash,
                        "apparent": recalibrated_analysis(cohort, records, update), "provenance": written}
            logger.info("Recalibrated model version (%s) written to %s", recalibrate, target_zip)
        meta = {"model": str(model), "model_sha256": parent_hash, "dataset": ctx.dataset_name,
                "cls_run": ctx.cls_run, "cohort": str(ext), "images": image_folder.name, "target": target,
                "version": __version__, "predictions": str(pred_out), "failed_cases": res.get("failed", []),
                "subgroup_min_cases": SUBGROUP_MIN_CASES, "subgroup_min_per_class": SUBGROUP_MIN_PER_CLASS}
        report = write_report(out, cohort, analysis, shift, seg, meta, apparent)
    logger.info("Validation report: %s", out / "validation_report.md")
    return {"report": report, "cohort": cohort, "output": out, "cases_folder": pred_out / CASES_FOLDER}
