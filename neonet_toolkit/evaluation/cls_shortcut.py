"""Shortcut check: can a simple discriminator tell a fold's synthetic training patches from its real ones?"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from neonet_toolkit.dataset.case_ids import safe_join
from neonet_toolkit.experiment_planning.splits import get_fold, load_splits
from neonet_toolkit.models.cls import load_fold_classifier, load_real, load_synthetic, predict_proba
from neonet_toolkit.models.cls_results import SUMMARY_FILE, case_labels
from neonet_toolkit.preprocessing.patches import load_patch, patch_folder
from neonet_toolkit.preprocessing.synthetic_sets import load_manifest, select_for_ratio, synthetic_folder
from neonet_toolkit.utilities import stats
from neonet_toolkit.utilities.identifiers import PLANS_NAME, dataset_folders, stage_fold_folder, stage_folder_name
from neonet_toolkit.utilities.io import load_json, save_json

logger = logging.getLogger(__name__)

SHORTCUT_DIR = "cls_shortcut"
SHORTCUT_WARN_AUC = 0.8


# ----------------------------------------------------------------------------- shortcut check
def patch_features(img: np.ndarray, lab: np.ndarray) -> np.ndarray:
    """Intensity/texture statistics of a TLCR patch (ROI of channel 0, tumour of channel 1)."""
    roi = lab[0].astype(bool)
    tum = lab[1].astype(bool)
    x = img[0]
    v = x[roi] if roi.any() else x.ravel()
    g = np.sqrt(sum(d ** 2 for d in np.gradient(x)))
    gv = g[roi] if roi.any() else g.ravel()
    lap = sum(np.gradient(np.gradient(x, axis=a), axis=a) for a in range(3))
    lv = lap[roi] if roi.any() else lap.ravel()
    t = img[1][tum] if tum.any() else np.zeros(1)
    return np.r_[np.percentile(v, [1, 5, 25, 50, 75, 95, 99]), v.mean(), v.std(), gv.mean(), gv.std(),
                 np.abs(lv).mean(), lv.std(), t.mean(), t.std(), roi.mean(), tum.mean()].astype(float)


def shortcut_check(dataset, fold: int, ratio: float = 1.0, crop_source: str = "gt", n_splits: int = 5,
                   seed: int = 0, plans_name: str = PLANS_NAME, save: bool = True) -> dict:
    """Can a simple discriminator tell the fold's synthetic training patches from its real ones?

    Standardised logistic regression on intensity/gradient/noise statistics, out-of-fold over a
    stratified *group* k-fold (a synthetic patch is grouped with its source case, so anatomy seen
    as real cannot give it away). AUC ~0.5: indistinguishable; high AUC: "synthetic" is learnable,
    and since synthetic patches are (almost) all of the minority class, a classifier may learn
    "synthetic" instead of PNI. Also reported on minority-class patches only (real vs synthetic
    positives), which is the comparison that matters for the shortcut.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedGroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler


    name, pp, res_root = dataset_folders(dataset)
    split = get_fold(load_splits(pp), fold)
    labels = case_labels(pp, crop_source)
    folder = synthetic_folder(name, fold, plans_name, crop_source)
    manifest = load_manifest(folder)
    entries = select_for_ratio(manifest, ratio)
    n_maj = sum(e["role"] == "majority" for e in manifest["entries"])
    entries += select_for_ratio(manifest, 0.0, n_majority=n_maj)
    if not entries:
        raise ValueError(f"fold {fold}: no synthetic patches selected at ratio {ratio}.")
    val = set(split["val"])
    X, is_syn, groups, cls = [], [], [], []
    pf = patch_folder(pp, crop_source)
    for c in split["train"]:
        img, lab = load_patch(pf, c)
        X.append(patch_features(img, lab))
        is_syn.append(0)
        groups.append(c)
        cls.append(labels[c])
    for e in entries:
        if e["source_case"] in val:
            raise ValueError(f"synthetic patch {e['id']} derives from validation case {e['source_case']}.")
        with np.load(safe_join(folder / "patches", e["id"], ".npz")) as z:
            X.append(patch_features(z["image"], z["label"]))
        is_syn.append(1)
        groups.append(e["source_case"])
        cls.append(int(e["label"]))
    X, s, g, cls = np.array(X), np.array(is_syn), np.array(groups), np.array(cls)

    def oof_auc(mask) -> dict | None:
        Xm, sm, gm = X[mask], s[mask], g[mask]
        if sm.sum() < 2 or (sm == 0).sum() < 2:
            return None
        k = int(min(n_splits, sm.sum(), (sm == 0).sum(), len(np.unique(gm))))
        if k < 2:
            return None
        prob = np.zeros(len(sm))
        cv = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
        for tr, te in cv.split(Xm, sm, gm):
            if len(np.unique(sm[tr])) < 2:
                prob[te] = 0.5
                continue
            clf = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
            clf.fit(Xm[tr], sm[tr])
            prob[te] = clf.predict_proba(Xm[te])[:, 1]
        r = stats.delong_ci(sm, prob)
        return {"auc": r["auc"], "ci_low": r["ci_low"], "ci_high": r["ci_high"], "n_real": int((sm == 0).sum()),
                "n_synthetic": int(sm.sum()), "cv_folds": k}

    minority = int(manifest.get("minority_class", 1))
    out = {"fold": fold, "ratio": float(ratio), "crop_source": crop_source,
           "all": oof_auc(np.ones(len(s), bool)), "minority_only": oof_auc(cls == minority),
           "synthetic_label_counts": {str(k): int(((s == 1) & (cls == k)).sum()) for k in (0, 1)},
           "method": "logistic regression on patch intensity/gradient/noise statistics, stratified group k-fold"}
    main_auc = (out["minority_only"] or out["all"] or {}).get("auc", float("nan"))
    out["warning"] = bool(np.isfinite(main_auc) and main_auc >= SHORTCUT_WARN_AUC)
    if out["warning"]:
        logger.warning("fold %d: real-vs-synthetic discriminator AUC %.3f >= %.2f: a classifier could learn "
                       "'synthetic' instead of the target.", fold, main_auc, SHORTCUT_WARN_AUC)
    if save:
        save_json(out, res_root / f"{SHORTCUT_DIR}__{plans_name}" / f"fold_{fold}_r{ratio:g}_{crop_source}.json")
    return out


def load_shortcut_checks(results_root: Path, plans_name: str = PLANS_NAME) -> list[dict]:
    d = results_root / f"{SHORTCUT_DIR}__{plans_name}"
    return [load_json(f) for f in sorted(d.glob("fold_*.json"))] if d.is_dir() else []




def classifier_shortcut_check(dataset, run: str, fold: int, plans_name: str = PLANS_NAME, device: str = "cpu",
                              save: bool = True) -> dict:
    """Does the trained classifier itself score synthetic patches differently from real ones of the same class?

    Per class: the AUC of the classifier's probabilities separating the fold's *held-out* synthetic patches
    (those this run did not train on) from the fold's real validation cases of that class. AUC ≈ 0.5: the
    classifier's output does not depend on "synthetic"; far from 0.5: it does, and an R+S gain may come
    from the synthetic look rather than the target. Complements :func:`shortcut_check`, which asks a separate
    discriminator."""
    name, pp, res_root = dataset_folders(dataset)
    folder = stage_fold_folder(name, run, fold, plans_name)
    summary = load_json(folder / SUMMARY_FILE)
    syn_folder = synthetic_folder(name, fold, plans_name, summary.get("crop_source", "gt"))
    manifest = load_manifest(syn_folder)
    used = set(summary.get("synthetic_ids", []))
    held = [e for e in manifest["entries"] if e["id"] not in used]
    net, info = load_fold_classifier(name, run, fold, device, plans_name)
    crop = info["crop_size"]
    labels = case_labels(pp, summary["crop_source"])
    out = {"dataset": name, "run": run, "fold": fold, "n_synthetic_held_out": len(held), "per_class": {}}
    for c in (0, 1):
        syn = [e for e in held if int(e["label"]) == c]
        real = [v for v in summary["val_ids"] if labels[v] == c]
        if len(syn) < 2 or len(real) < 2:
            out["per_class"][str(c)] = {"n_synthetic": len(syn), "n_real": len(real), "auc": None}
            continue
        p_syn = predict_proba(net, info, load_synthetic(syn, syn_folder / "patches", crop), device)
        p_real = predict_proba(net, info, load_real(pp, summary["crop_source"], real), device)
        y = np.r_[np.ones(len(p_syn)), np.zeros(len(p_real))]
        auc = stats.roc_auc(y, np.r_[p_syn, p_real])
        out["per_class"][str(c)] = {"n_synthetic": len(syn), "n_real": len(real), "auc": float(auc),
                                    "mean_probability_synthetic": float(np.mean(p_syn)),
                                    "mean_probability_real": float(np.mean(p_real))}
    if save:
        save_json(out, res_root / stage_folder_name(SHORTCUT_DIR, plans_name) / f"classifier_{run}_fold_{fold}.json")
    return out
