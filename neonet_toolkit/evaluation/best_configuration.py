"""``neonet_find_best_configuration``: the NeoCls configuration for the user's data, chosen by nested CV.

nnU-Net's ``nnUNetv2_find_best_configuration`` compares configurations (and ensembles) on cross-validation and
names the one to use. For a case-level probability on a few dozen patients, picking the best pooled out-of-fold
AUC and reporting that same AUC is optimistic: the choice has seen the reported folds. Here the choice is made
**inside each training fold**:

* every candidate (a finished classifier run, or with ``ensembles`` a fit-free fusion of two runs,
  :func:`~neonet_toolkit.utilities.stats.fuse_scores`) is scored on the *inner* out-of-fold predictions of the
  outer fold's training cases (the nested protocol's ``nested_selection.json``; the radiomics baseline's
  ``train_predictions.csv`` with ``set = inner_oof``), never on the outer validation cases;
* the best inner AUC wins that outer fold (ties: single runs before ensembles, then the order given), and the
  outer fold is scored with the winner's predictions of its validation cases;
* the pooled AUC of those predictions is the honest AUC of *the selection procedure*; next to it, every
  candidate's own pooled out-of-fold AUC. The difference between the best candidate's pooled AUC and the
  procedure's AUC is the cost of choosing.

The configuration to deploy is chosen by the same rule on all folds (mean inner AUC over the folds). Only a
single deep run has checkpoints ``neonet_predict`` can load; when the winner is the radiomics baseline or an
ensemble, the best deployable candidate by the same rule becomes ``neonet_predict``'s default and the report says
so. Inner AUCs are themselves optimistic (each run's epoch or hyper-parameters were chosen on the same inner
folds): they only rank candidates; the nested outer AUC is the figure to report.

Writes ``neonet_results/<ds>/cls_best_configuration__<plans>/{best_configuration.json, best_configuration.md}``.
"""
from __future__ import annotations

import itertools
import logging

import numpy as np

from neonet_toolkit.models.cls_results import NESTED_FILE, OOF_FILE, TRAIN_PRED_FILE, read_predictions_csv
from neonet_toolkit.utilities import stats
from neonet_toolkit.utilities.identifiers import (
    PLANS_NAME,
    ResultLayout,
)
from neonet_toolkit.utilities.io import load_json, save_json, save_text

logger = logging.getLogger(__name__)

ENSEMBLE_SEP = " + "


def inner_predictions(layout: ResultLayout, run: str, fold: int) -> dict[str, tuple[int, float]]:
    """``{case: (label, probability)}`` of the inner out-of-fold predictions of a run's training cases."""
    folder = layout.fold_folder(run, fold)
    nested = folder / NESTED_FILE
    if nested.is_file():
        return {r["case_id"]: (int(r["label"]), float(r["probability"])) for r in load_json(nested)["inner_oof"]}
    train = folder / TRAIN_PRED_FILE
    if train.is_file():
        rows = [r for r in read_predictions_csv(train) if r.get("set") == "inner_oof"]
        if rows:
            return {r["case_id"]: (int(r["label"]), float(r["probability"])) for r in rows}
    raise ValueError(f"{run} fold {fold} has no inner out-of-fold predictions ({folder / NESTED_FILE}): only runs "
                     "trained with the nested protocol (`--early-stopping nested`, the plans' default) and the "
                     "radiomics baseline can take part in a nested choice. Retrain it, or leave it out of --runs.")


def outer_predictions(layout: ResultLayout, run: str, fold: int) -> dict[str, tuple[int, float]]:
    f = layout.fold_folder(run, fold) / OOF_FILE
    if not f.is_file():
        raise FileNotFoundError(f"{run} fold {fold} is not finished ({f} is missing): train it first.")
    return {r["case_id"]: (int(r["label"]), float(r["probability"])) for r in read_predictions_csv(f)}


def _score(members: tuple[str, ...], preds: dict[str, dict], ids: list[str]) -> np.ndarray:
    cols = [np.array([preds[m][c][1] for c in ids]) for m in members]
    return cols[0] if len(cols) == 1 else stats.fuse_scores(*cols)


def _auc(y: np.ndarray, p: np.ndarray) -> float:
    return stats.roc_auc(y, p) if 0 < y.sum() < y.size else float("nan")


def deployable(layout: ResultLayout, members: tuple[str, ...]) -> bool:
    """Whether ``neonet_predict`` can run the candidate: one run whose folds hold classifier checkpoints."""
    return len(members) == 1 and layout.checkpoint(members[0], 0).is_file()


def find_best_configuration(dataset, runs: list[str], folds: list[int] | None = None, ensembles: bool = True,
                            plans_name: str = PLANS_NAME) -> dict:
    """The nested choice over ``runs`` (and their pairs with ``ensembles``); see the module docstring."""
    layout = ResultLayout.for_dataset(dataset, plans_name)
    runs = list(dict.fromkeys(runs))
    if not runs:
        raise ValueError("find_best_configuration: no candidate runs.")
    for r in runs:
        if not layout.stage_root(r).is_dir():
            raise FileNotFoundError(f"No classifier run {r} in {layout.results}: train it (neonet_experiment "
                                    f"{layout.dataset_name} --archs ...) or leave it out.")
    if folds is None:
        found = [sorted(int(p.name.split("_")[1]) for p in layout.stage_root(r).glob("fold_*")
                        if (p / OOF_FILE).is_file()) for r in runs]
        folds = sorted(set.intersection(*(set(f) for f in found)))
    if not folds:
        raise ValueError(f"The runs {runs} share no finished fold.")
    candidates = [(r,) for r in runs] + (list(itertools.combinations(runs, 2)) if ensembles and len(runs) > 1 else [])
    names = [ENSEMBLE_SEP.join(c) for c in candidates]
    per_fold, chosen_y, chosen_p = [], [], []
    cand_y = {n: [] for n in names}
    cand_p = {n: [] for n in names}
    inner_auc = {n: [] for n in names}
    for k in folds:
        inner = {r: inner_predictions(layout, r, k) for r in runs}
        outer = {r: outer_predictions(layout, r, k) for r in runs}
        train_ids = sorted(set.intersection(*(set(v) for v in inner.values())))
        val_ids = sorted(set.intersection(*(set(v) for v in outer.values())))
        if set(train_ids) & set(val_ids):
            raise ValueError(f"fold {k}: cases {sorted(set(train_ids) & set(val_ids))[:5]} are both inner (training) "
                             "and outer (validation) cases of the candidate runs: the runs used different splits.")
        y_in = np.array([inner[runs[0]][c][0] for c in train_ids])
        y_out = np.array([outer[runs[0]][c][0] for c in val_ids])
        aucs = {}
        for cand, n in zip(candidates, names):
            aucs[n] = _auc(y_in, _score(cand, inner, train_ids))
            inner_auc[n].append(aucs[n])
            cand_y[n].extend(y_out)
            cand_p[n].extend(_score(cand, outer, val_ids))
        # best inner AUC; ties (and NaN) -> the earlier candidate (single runs first, then the order given)
        best = max(range(len(names)), key=lambda i: (np.nan_to_num(aucs[names[i]], nan=-1.0), -i))
        p_out = _score(candidates[best], outer, val_ids)
        chosen_y.extend(y_out)
        chosen_p.extend(p_out)
        per_fold.append({"fold": k, "chosen": names[best], "inner_auc": aucs, "n_inner": len(train_ids),
                         "n_val": len(val_ids), "outer_auc_of_chosen": _auc(y_out, p_out)})
        logger.info("fold %d: chose %s (inner AUC %.3f)", k, names[best], aucs[names[best]])
    table = []
    for n in names:
        y, p = np.array(cand_y[n]), np.array(cand_p[n])
        ci = stats.delong_ci(y, p)
        table.append({"candidate": n, "pooled_auc": ci["auc"], "ci": [ci["ci_low"], ci["ci_high"]],
                      "mean_inner_auc": float(np.nanmean(inner_auc[n])), "n": int(len(y))})
    proc = stats.delong_ci(np.array(chosen_y), np.array(chosen_p))
    order = sorted(range(len(names)), key=lambda i: (-np.nan_to_num(table[i]["mean_inner_auc"], nan=-1.0), i))
    final = names[order[0]]
    deploy = next((names[i] for i in order if deployable(layout, candidates[i])), None)
    best_naive = max(table, key=lambda r: r["pooled_auc"])
    result = {
        "dataset": layout.dataset_name, "folds": folds, "candidates": names, "ensembles": bool(ensembles),
        "per_fold": per_fold, "table": table,
        "selection_procedure": {"pooled_auc": proc["auc"], "ci": [proc["ci_low"], proc["ci_high"]],
                                "n": len(chosen_y)},
        "best_candidate_pooled_auc": {"candidate": best_naive["candidate"], "pooled_auc": best_naive["pooled_auc"]},
        "cost_of_choosing": best_naive["pooled_auc"] - proc["auc"],
        "chosen": final, "predict_default": deploy,
        "predict_default_note": ("the chosen configuration" if deploy == final else
                                 f"{final} cannot be loaded by neonet_predict (radiomics or an ensemble); the best "
                                 f"deployable candidate by the same rule is used" if deploy else
                                 "no candidate has classifier checkpoints neonet_predict can load"),
        "rule": "per outer fold: best AUC of the inner out-of-fold predictions of its training cases (ties: single "
                "runs first, then the given order); deployment: best mean inner AUC over the folds",
    }
    out = layout.best_configuration_file()
    save_json(result, out)
    save_text(report_markdown(result), out.with_suffix(".md"))
    logger.info("selection procedure pooled AUC %.3f [%.3f, %.3f]; chosen %s; neonet_predict default %s",
                proc["auc"], proc["ci_low"], proc["ci_high"], final, deploy)
    return result


def report_markdown(r: dict) -> str:
    proc = r["selection_procedure"]
    lines = [f"# NeoCls configuration for {r['dataset']} (nested choice over {len(r['folds'])} folds)", "",
             "| candidate | pooled out-of-fold AUC [DeLong 95 % CI] | mean inner AUC (ranks only) |", "|---|---|---|"]
    for t in sorted(r["table"], key=lambda t: -t["pooled_auc"]):
        lines.append(f"| {t['candidate']} | {t['pooled_auc']:.3f} [{t['ci'][0]:.3f}, {t['ci'][1]:.3f}] | "
                     f"{t['mean_inner_auc']:.3f} |")
    lines += ["", f"**Selection procedure** (each outer fold scored by the candidate chosen on its training fold's "
              f"inner folds): pooled AUC **{proc['pooled_auc']:.3f}** [{proc['ci'][0]:.3f}, {proc['ci'][1]:.3f}], "
              f"n = {proc['n']}. Best single candidate's own pooled AUC: {r['best_candidate_pooled_auc']['pooled_auc']:.3f} "
              f"({r['best_candidate_pooled_auc']['candidate']}); cost of choosing: {r['cost_of_choosing']:+.3f}.", "",
              "| fold | chosen on inner folds | its inner AUC | its outer AUC |", "|---|---|---|---|"]
    for f in r["per_fold"]:
        oa = f["outer_auc_of_chosen"]
        lines.append(f"| {f['fold']} | {f['chosen']} | {f['inner_auc'][f['chosen']]:.3f} | "
                     f"{'n/a' if oa != oa else f'{oa:.3f}'} |")
    lines += ["", f"Chosen configuration: **{r['chosen']}**. `neonet_predict` default: **{r['predict_default']}** "
              f"({r['predict_default_note']}).", "", f"Rule: {r['rule']}.", ""]
    return "\n".join(lines)
