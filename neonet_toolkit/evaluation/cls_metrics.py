"""NeoCls evaluation metrics: run discovery, per-fold and pooled AUCs with CIs, calibration, paired tests."""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np

from neonet_toolkit.models.cls_results import OOF_FILE, SUMMARY_FILE, read_predictions_csv
from neonet_toolkit.utilities import stats
from neonet_toolkit.utilities.identifiers import (
    AUTO_RATIO,
    PLANS_NAME,
    PROTOCOL_LABELS,
    fold_folders,
    list_cls_runs,
    is_auto_ratio,
    parse_cls_run_name,
    ratio_sort_key,
    stage_root,
)
from neonet_toolkit.utilities.io import load_json

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- discovery and loading
def parse_run_name(run: str) -> dict | None:
    rid = parse_cls_run_name(run)
    return None if rid is None else dataclasses.asdict(rid)


def discover_runs(results_root: Path, plans_name: str = PLANS_NAME) -> dict[str, dict[int, Path]]:
    """{run name: {fold: fold folder}} for folds that finished (oof_predictions.csv + cls_summary.json)."""

    runs: dict[str, dict[int, Path]] = {}
    for name in list_cls_runs(results_root, plans_name, finished_only=False):
        for k, f in fold_folders(stage_root(results_root, name, plans_name)).items():  # folds with predictions
            if (f / OOF_FILE).is_file() and (f / SUMMARY_FILE).is_file():
                runs.setdefault(name, {})[k] = f
    return runs


def load_run(folds: dict[int, Path]) -> dict:

    out = {}
    for k, f in sorted(folds.items()):
        out[k] = {"rows": read_predictions_csv(f / OOF_FILE), "summary": load_json(f / SUMMARY_FILE)}
    return out


# ----------------------------------------------------------------------------- metrics
def evaluate_run(name: str, run: dict, n_folds: int, n_boot: int = 2000, seed: int = 0) -> dict:
    info = parse_run_name(name) or {}
    fold_res, ys, ps, raws, cases = [], [], [], [], []
    tp = tn = fp = fn = 0
    for k, fr in sorted(run.items()):
        y = np.array([r["label"] for r in fr["rows"]])
        p = np.array([r["probability"] for r in fr["rows"]])
        thr = float(fr["summary"]["threshold"])
        op = stats.sensitivity_specificity(y, p, thr)
        tp, tn, fp, fn = tp + op["tp"], tn + op["tn"], fp + op["fp"], fn + op["fn"]
        fold_res.append({"fold": k, "n": int(y.size), "n_pos": int(y.sum()),
                         "auc": stats.roc_auc(y, p) if 0 < y.sum() < y.size else float("nan"),
                         "threshold": thr, "sensitivity": op["sensitivity"], "specificity": op["specificity"],
                         "selected_epoch": fr["summary"].get("selected_epoch"),
                         "n_train_synthetic": fr["summary"].get("n_train_synthetic")})
        ys.append(y)
        ps.append(p)
        raws.append(np.array([r.get("probability_raw", r["probability"]) for r in fr["rows"]]))
        cases += [r["case_id"] for r in fr["rows"]]
    y, p, raw = np.concatenate(ys), np.concatenate(ps), np.concatenate(raws)
    fold_aucs = [f["auc"] for f in fold_res if np.isfinite(f["auc"])]
    summ0 = next(iter(run.values()))["summary"]
    res = {
        "run": name, **info, "arch": summ0.get("arch", info.get("arch")),
        "early_stopping": info.get("early_stopping", summ0.get("early_stopping")),
        "early_stopping_actual": summ0.get("early_stopping"),
        "protocol": PROTOCOL_LABELS.get(info.get("early_stopping", summ0.get("early_stopping", "val")), ""),
        "calibration_method": (summ0.get("calibration") or {}).get("method", "prior correction only"),
        "folds_done": sorted(run), "n_folds_expected": n_folds, "complete": len(run) == n_folds,
        "fold_results": fold_res,
        "fold_auc_mean": float(np.mean(fold_aucs)) if fold_aucs else float("nan"),
        "fold_auc_sd": float(np.std(fold_aucs, ddof=1)) if len(fold_aucs) > 1 else float("nan"),
        "n": int(y.size), "n_pos": int(y.sum()), "case_ids": cases,
    }
    if 0 < y.sum() < y.size:
        res["pooled_delong"] = stats.delong_ci(y, p)
        res["pooled_bootstrap"] = stats.bootstrap_auc_ci(y, p, n_boot=n_boot, seed=seed)
        res["pooled_auc"] = res["pooled_delong"]["auc"]
    else:
        res["pooled_auc"] = float("nan")
    sens_ci = stats.wilson_ci(tp, tp + fn)
    spec_ci = stats.wilson_ci(tn, tn + fp)
    res["operating_point"] = {
        "threshold_source": summ0.get("threshold_source"), "tp": tp, "tn": tn, "fp": fp, "fn": fn,
        "sensitivity": tp / (tp + fn) if tp + fn else float("nan"), "sensitivity_ci": list(sens_ci),
        "specificity": tn / (tn + fp) if tn + fp else float("nan"), "specificity_ci": list(spec_ci)}
    res["calibration"] = {
        "ece": stats.expected_calibration_error(y, p), "brier": stats.brier_score(y, p),
        "ece_raw": stats.expected_calibration_error(y, raw), "brier_raw": stats.brier_score(y, raw),
        "reliability": stats.reliability_curve(y, p, n_bins=5), "reliability_raw": stats.reliability_curve(y, raw, 5),
        "mean_probability": float(p.mean()), "mean_probability_raw": float(raw.mean()), "prevalence": float(y.mean())}
    res["_y"], res["_p"] = y, p
    return res


def split_by_repeat(run: dict, folds_per_repeat: int) -> dict[int, dict]:
    """{repeat r: {fold: ...}} — repeat r is folds r*K .. r*K+K-1 of splits_final.json."""
    out: dict[int, dict] = {}
    for k, fr in sorted(run.items()):
        out.setdefault(int(k) // int(folds_per_repeat), {})[k] = fr
    return out


def repeat_summary(name: str, by_repeat: dict[int, dict], folds_per_repeat: int, n_boot: int = 500,
                   seed: int = 0) -> dict:
    """Repeated stratified CV: per complete repeat the pooled out-of-fold AUC and the mean of its K per-fold
    AUCs; their mean and spread over repeats. Incomplete repeats are listed, never averaged in. A case is
    pooled only within its repeat (each repeat predicts every case once)."""
    done, pooled, fold_means, incomplete = [], [], [], []
    for r, folds in sorted(by_repeat.items()):
        if len(folds) != folds_per_repeat:
            incomplete.append({"repeat": r, "folds_done": sorted(folds)})
            continue
        e = evaluate_run(name, folds, folds_per_repeat, n_boot=n_boot, seed=seed)
        done.append(r)
        pooled.append(float(e["pooled_auc"]))
        fold_means.append(float(e["fold_auc_mean"]))

    def _ms(v):
        v = [x for x in v if np.isfinite(x)]
        return (float(np.mean(v)) if v else float("nan"), float(np.std(v, ddof=1)) if len(v) > 1 else float("nan"),
                float(min(v)) if v else float("nan"), float(max(v)) if v else float("nan"))

    pm, psd, pmin, pmax = _ms(pooled)
    fm, fsd, _, _ = _ms(fold_means)
    return {"folds_per_repeat": int(folds_per_repeat), "complete_repeats": done, "incomplete_repeats": incomplete,
            "pooled_auc_per_repeat": pooled, "pooled_auc_mean": pm, "pooled_auc_sd": psd, "pooled_auc_min": pmin,
            "pooled_auc_max": pmax, "fold_mean_per_repeat": fold_means, "fold_mean_mean": fm, "fold_mean_sd": fsd}


def paired_test(a: dict, b: dict) -> dict:
    """Paired DeLong test on the cases both runs predicted (pooled out-of-fold)."""
    pa = dict(zip(a["case_ids"], a["_p"]))
    pb = dict(zip(b["case_ids"], b["_p"]))
    ya = dict(zip(a["case_ids"], a["_y"]))
    common = sorted(set(pa) & set(pb))
    if not common:
        raise ValueError(f"{a['run']} and {b['run']} share no validation cases.")
    y = np.array([ya[c] for c in common])
    t = stats.delong_paired_test(y, [pa[c] for c in common], [pb[c] for c in common])
    return {"run_a": a["run"], "run_b": b["run"], **t, "n_common": len(common),
            "complete": bool(a["complete"] and b["complete"])}


def auto_comparisons(results: dict[str, dict]) -> list[tuple[str, str]]:
    """Per architecture, every training-set arm at the highest ratio against R (ratio 0); PattenNet vs each
    other architecture per ratio (paper's arm). Within one crop source and selection protocol."""
    pairs = []
    by = {}
    for name, r in results.items():
        by.setdefault((r.get("crop_source"), r.get("early_stopping")), []).append(r)
    for group in by.values():
        archs, arms = {}, {}
        for r in group:
            if r.get("arm", "synthetic") == "synthetic":
                archs.setdefault(r["arch"], {})[r["ratio"]] = r["run"]
            else:
                arms.setdefault(r["arch"], {})[(r["ratio"], r["arm"])] = r["run"]
        for arch, rr in archs.items():
            fixed = [k for k in rr if not is_auto_ratio(k)]
            if len(fixed) > 1:
                pairs.append((rr[max(fixed)], rr[min(fixed)]))
            if 0.0 in rr:
                if AUTO_RATIO in rr:  # the ratio chosen on inner folds vs real data only
                    pairs.append((rr[AUTO_RATIO], rr[0.0]))
                for (ratio, arm), run in sorted(arms.get(arch, {}).items(),
                                                key=lambda kv: (ratio_sort_key(kv[0][0]), kv[0][1])):
                    pairs.append((run, rr[0.0]))
        if "pattennet" in archs:
            for ratio, run in sorted(archs["pattennet"].items(), key=lambda kv: ratio_sort_key(kv[0])):
                for arch, rr in sorted(archs.items()):
                    if arch != "pattennet" and not arch.startswith("pattennet") and ratio in rr:
                        pairs.append((run, rr[ratio]))
    return pairs


