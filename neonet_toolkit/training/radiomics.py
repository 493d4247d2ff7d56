"""Radiomics baseline (optional extra): pyradiomics features from the TLCR patches + logistic regression.

Install with ``pip install neonet_toolkit[radiomics]`` (pyradiomics 3.0.1; its 3.1.0 sdist is
broken, and 3.0.1 needs ``pip install --no-build-isolation pyradiomics==3.0.1`` with numpy
installed first). Without it, :func:`run_radiomics_baseline` raises :class:`RadiomicsUnavailable`
with that message and the experiment runner skips the baseline.

Same folds, same real training/validation cases, same output layout as the deep runs
(``neonet_results/<ds>/cls_radiomics_0[_pred]__<plans>/fold_N/oof_predictions.csv`` +
``cls_summary.json``), so ``neonet_evaluate DATASET cls`` puts it in the same tables. Features
(first order, shape, GLCM, GLRLM, GLSZM, GLDM, NGTDM) are extracted inside the tumour mask and inside
the organ∪tumour ROI (the peritumoral liver is where PNI spreads), standardised, and fed to an
L2 logistic regression fitted on the fold's real training cases only (no synthetic data: ratio 0).

Late fusion (:func:`fuse_scores`, :func:`stacked_fusion`, :func:`run_late_fusion`) combines the
radiomics model with a deep run on the same folds and writes an ordinary run folder
(``cls_fusion_<deep arch>_<ratio>[_es<mode>]``), so it lands in the same tables. Neither needs
pyradiomics itself: they read finished runs' predictions (or any feature matrix).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from neonet_toolkit.experiment_planning.splits import get_fold, load_splits
from neonet_toolkit.models.cls_results import (
    OOF_FILE,
    SUMMARY_FILE,
    TRAIN_PRED_FILE,
    case_labels,
    read_predictions_csv,
    write_predictions_csv,
)
from neonet_toolkit.preprocessing.patches import load_metadata, load_patch, patch_folder
from neonet_toolkit.preprocessing.radiomics_features import (
    INSTALL_HINT,
    RadiomicsUnavailable,
    make_extractor,
    quiet_radiomics,
    radiomics_available,
    region_features,
)
from neonet_toolkit.utilities import stats
from neonet_toolkit.utilities.identifiers import (
    PLANS_NAME,
    ResultLayout,
    cls_run_name,
    parse_cls_run_name,
)
from neonet_toolkit.utilities.io import load_json, save_json

logger = logging.getLogger(__name__)

SKIP_HINT = INSTALL_HINT + " The radiomics baseline is skipped."


def radiomics_run_name(crop_source: str = "gt") -> str:
    """``cls_radiomics_0[_pred]``: the baseline's run name (a classifier run at ratio 0)."""
    return cls_run_name("radiomics", 0.0, crop_source)


RADIOMICS_RUN = radiomics_run_name()


def _extractor():
    if not radiomics_available():
        raise RadiomicsUnavailable(SKIP_HINT)
    return make_extractor(("firstorder", "shape", "glcm", "glrlm", "glszm", "gldm", "ngtdm"), bin_count=32)


def extract_case_features(image: np.ndarray, label: np.ndarray, spacing_xyz, extractor=None) -> dict[str, float]:
    """Features of one TLCR patch (image (2, D, H, W), label (2, D, H, W)) for the tumour and the ROI."""
    ext = extractor or _extractor()
    out = {}
    for name, m in (("tumor", label[1]), ("roi", label[0])):
        out.update({f"{name}_{k}": v for k, v in region_features(image[0], m, spacing_xyz, ext).items()})
    return out


def run_radiomics_baseline(dataset, folds: list[int] | None = None, crop_source: str = "gt", C: float = 1.0,
                           plans_name: str = PLANS_NAME, overwrite: bool = False) -> Path:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from tqdm import tqdm


    ext = _extractor()
    layout = ResultLayout.for_dataset(dataset, plans_name)
    name, pp = layout.dataset_name, layout.preprocessed
    run = radiomics_run_name(crop_source)
    root = layout.stage_root(run)
    splits = load_splits(pp)
    folds = list(range(len(splits))) if folds is None else [int(f) for f in folds]
    labels = case_labels(pp, crop_source)
    pf = patch_folder(pp, crop_source)
    meta = load_metadata(pf)["cases"]
    cache_f = root / "features.json"
    cache = load_json(cache_f) if cache_f.is_file() and not overwrite else {}
    needed = sorted({c for k in folds for part in ("train", "val") for c in get_fold(splits, k)[part]})
    todo = [c for c in needed if c not in cache]
    for c in tqdm(todo, desc="radiomics", disable=None):
        img, lab = load_patch(pf, c)
        with quiet_radiomics():
            cache[c] = extract_case_features(img, lab, list(meta[c]["spacing"])[::-1], ext)
    if todo:
        save_json(cache, cache_f)
    keys = sorted(set.intersection(*(set(cache[c]) for c in needed)))
    if not keys:
        raise ValueError("radiomics: no feature common to every case (empty tumour masks?).")
    X = {c: np.nan_to_num(np.array([cache[c][k] for k in keys], float), posinf=0.0, neginf=0.0) for c in needed}
    for k in folds:
        split = get_fold(splits, k)
        tr, va = list(split["train"]), list(split["val"])
        ytr = np.array([labels[c] for c in tr])
        yva = np.array([labels[c] for c in va])
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=5000))
        clf.fit(np.stack([X[c] for c in tr]), ytr)
        ptr = clf.predict_proba(np.stack([X[c] for c in tr]))[:, 1]
        pva = clf.predict_proba(np.stack([X[c] for c in va]))[:, 1]
        thr = stats.select_threshold(ytr, ptr)
        out = layout.fold_folder(run, k)
        write_predictions_csv(out / OOF_FILE, [{"case_id": c, "label": int(y), "probability": float(p),
                                               "probability_raw": float(p)} for c, y, p in zip(va, yva, pva)],
                              ["case_id", "label", "probability", "probability_raw"])
        write_predictions_csv(out / TRAIN_PRED_FILE, [{"case_id": c, "label": int(y), "probability": float(p),
                                                      "probability_raw": float(p), "set": "training_cases"}
                                                     for c, y, p in zip(tr, ytr, ptr)],
                              ["case_id", "label", "probability", "probability_raw", "set"])
        save_json({"dataset": name, "fold": k, "run": run, "arch": "radiomics", "synthetic_ratio": 0.0,
                   "crop_source": crop_source, "early_stopping": "none", "selected_epoch": None,
                   "val_ids": va, "train_ids": tr, "n_train_real": len(tr), "n_train_synthetic": 0,
                   "n_features": len(keys), "threshold": thr, "threshold_source": "training_cases",
                   "train_prevalence": float(ytr.mean()), "real_prevalence": float(ytr.mean()),
                   "val_auc": stats.roc_auc(yva, pva) if 0 < yva.sum() < yva.size else None},
                  out / SUMMARY_FILE)
        logger.info("radiomics fold %d: %d features, validation AUC %s", k, len(keys),
                    f"{stats.roc_auc(yva, pva):.3f}" if 0 < yva.sum() < yva.size else "n/a")
    return root


# ----------------------------------------------------------------------------- late fusion
def _logit(p: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    p = np.clip(np.asarray(p, float), eps, 1 - eps)
    return np.log(p / (1 - p))


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
        z = _logit(p)
        sd = z.std()
        zs.append((z - z.mean()) / sd if sd > 1e-12 else np.zeros_like(z))
    return 1.0 / (1.0 + np.exp(-np.mean(zs, axis=0)))


def stacked_fusion(x_train: np.ndarray, score_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray,
                   score_val: np.ndarray, C: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Late fusion of a feature matrix (e.g. radiomics) with a deep model's probability: one L2 logistic
    regression on [standardised features, logit(score)], fitted on the training cases.

    ``score_train`` must be out-of-sample for the training cases (the nested protocol's inner
    out-of-fold predictions), else the regression learns to trust an overfitted score. Returns
    (validation probabilities, training probabilities)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    xt = np.column_stack([np.asarray(x_train, float), _logit(score_train)])
    xv = np.column_stack([np.asarray(x_val, float), _logit(score_val)])
    if len(np.unique(y_train)) < 2:
        raise ValueError("stacked fusion: the training cases hold a single class.")
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=5000))
    clf.fit(xt, np.asarray(y_train, int))
    return clf.predict_proba(xv)[:, 1], clf.predict_proba(xt)[:, 1]


def run_late_fusion(dataset, deep_run: str, radiomics_run: str = RADIOMICS_RUN, folds: list[int] | None = None,
                    plans_name: str = PLANS_NAME) -> Path:
    """Fuse two finished runs fold by fold with :func:`fuse_scores`; writes
    ``cls_fusion_<deep arch>_<ratio>[_es<mode>]__<plans>/fold_N`` (oof_predictions.csv, cls_summary.json).

    Both runs must hold the same validation cases per fold. The fused score is a ranking score (no
    calibration); its threshold is 0.5 (the fused logit's mean over the fold)."""
    layout = ResultLayout.for_dataset(dataset, plans_name)
    name, res_root = layout.dataset_name, layout.results
    deep_id = parse_cls_run_name(deep_run)
    if deep_id is None:
        raise ValueError(f"{deep_run!r} is not a classifier run name (e.g. cls_pattennet_fine_0_esnone).")
    roots = {r: layout.stage_root(r) for r in (deep_run, radiomics_run)}
    have = {r: ResultLayout.finished_folds(root, "cls_predictions") for r, root in roots.items()}
    common = sorted(set(have[deep_run]) & set(have[radiomics_run]))
    folds = common if folds is None else [int(k) for k in folds]
    missing = [k for k in folds if k not in common]
    if missing or not folds:
        raise FileNotFoundError(f"late fusion: fold(s) {missing or 'any'} not finished in both {deep_run} and "
                                f"{radiomics_run} under {res_root}; train / run the radiomics baseline first.")
    run = cls_run_name(f"fusion_{deep_id.arch}", deep_id.ratio, deep_id.crop_source, deep_id.early_stopping,
                       deep_id.arm)
    out_root = layout.stage_root(run)
    for k in folds:
        rows = {r: {row["case_id"]: row for row in read_predictions_csv(have[r][k] / OOF_FILE)} for r in roots}
        ids = sorted(rows[deep_run])
        if set(ids) != set(rows[radiomics_run]):
            raise ValueError(f"late fusion fold {k}: {deep_run} and {radiomics_run} scored different cases; "
                             "both must use the same splits_final.json.")
        y = np.array([rows[deep_run][c]["label"] for c in ids])
        fused = fuse_scores(*(np.array([rows[r][c]["probability"] for c in ids]) for r in roots))
        out = layout.fold_folder(run, k)
        write_predictions_csv(out / OOF_FILE, [{"case_id": c, "label": int(t), "probability": float(p),
                                               "probability_raw": float(p)} for c, t, p in zip(ids, y, fused)],
                              ["case_id", "label", "probability", "probability_raw"])
        deep_summary = load_json(have[deep_run][k] / SUMMARY_FILE)
        auc = stats.roc_auc(y, fused) if 0 < y.sum() < y.size else None
        save_json({"dataset": name, "fold": k, "run": run, "arch": f"fusion_{deep_id.arch}",
                   "fused_runs": [deep_run, radiomics_run], "fusion": "mean of per-fold standardised logits",
                   "synthetic_ratio": deep_id.ratio, "crop_source": deep_id.crop_source,
                   "early_stopping": deep_id.early_stopping, "selected_epoch": deep_summary.get("selected_epoch"),
                   "val_ids": ids, "train_ids": deep_summary.get("train_ids", []),
                   "n_train_real": deep_summary.get("n_train_real"),
                   "n_train_synthetic": deep_summary.get("n_train_synthetic", 0), "threshold": 0.5,
                   "threshold_source": "fused_logit_mean", "calibration": {"method": "none (fused ranking score)"},
                   "val_auc": auc}, out / SUMMARY_FILE)
        logger.info("late fusion fold %d (%s + %s): validation AUC %s", k, deep_run, radiomics_run,
                    "n/a" if auc is None else f"{auc:.3f}")
    return out_root
