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

import json
import logging
from pathlib import Path

import numpy as np
from scipy.ndimage import distance_transform_edt
from sklearn.base import clone
from sklearn.feature_selection import SelectKBest, VarianceThreshold, f_classif
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_val_predict
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from tqdm import tqdm

from neonet_toolkit.experiment_planning.plans import NEONET_PLANS_FILE, NeoNetPlans
from neonet_toolkit.experiment_planning.splits import get_fold, load_splits
from neonet_toolkit.models.cls_results import (
    OOF_FILE,
    SUMMARY_FILE,
    TRAIN_PRED_FILE,
    case_labels,
    read_predictions_csv,
    write_predictions_csv,
)
from neonet_toolkit.preprocessing.patches import load_metadata, load_patch, patch_folder, settings_hash
from neonet_toolkit.preprocessing.radiomics_features import (
    INSTALL_HINT,
    RadiomicsUnavailable,
    make_extractor,
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


def _extractor(classes, bin_width: float):
    if not radiomics_available():
        raise RadiomicsUnavailable(SKIP_HINT)
    return make_extractor(classes, bin_width=bin_width)


def peritumoral_shell(label: np.ndarray, spacing_zyx, shell_mm: float) -> np.ndarray:
    """ROI voxels outside the tumour within ``shell_mm`` (physical distance) of it: where PNI spreads.

    ``label`` is a TLCR label patch (2, D, H, W): organ∪tumour, tumour; ``spacing_zyx`` in the patch's axis order."""
    tum, roi = np.asarray(label[1]) > 0, np.asarray(label[0]) > 0
    if not tum.any():
        return np.zeros_like(tum)
    dist = distance_transform_edt(~tum, sampling=[float(s) for s in spacing_zyx])
    return (dist > 0) & (dist <= float(shell_mm)) & roi


def extract_case_features(image: np.ndarray, label: np.ndarray, spacing_xyz, settings: dict,
                          extractors=None) -> dict[str, float]:
    """Features of one TLCR patch (image (2, D, H, W), label (2, D, H, W)) inside the tumour and inside the
    peritumoral shell (:func:`peritumoral_shell`), fixed bin width."""
    tum_ext, shell_ext = extractors or (_extractor(settings["tumour_classes"], settings["bin_width"]),
                                        _extractor(settings["shell_classes"], settings["bin_width"]))
    shell = peritumoral_shell(label, list(spacing_xyz)[::-1], settings["shell_mm"])
    out = {f"tumor_{k}": v for k, v in region_features(image[0], label[1], spacing_xyz, tum_ext).items()}
    out.update({f"shell_{k}": v for k, v in region_features(image[0], shell, spacing_xyz, shell_ext).items()})
    return out


def radiomics_model(settings: dict, n_train: int, n_minority: int, seed: int = 0) -> GridSearchCV:
    """Standardisation, k-best feature selection (ANOVA F) and an L2 logistic regression, with k and C chosen by
    inner stratified CV on AUC; everything is fitted inside the training cases it is given."""
    pipe = Pipeline([("variance", VarianceThreshold()), ("scale", StandardScaler()),
                     ("select", SelectKBest(f_classif)), ("lr", LogisticRegression(solver="liblinear", max_iter=1000))])
    folds = max(2, min(int(settings["inner_folds"]), n_minority))
    grid = {"select__k": sorted({int(k) for k in settings["k_features"]}),
            "lr__C": [float(c) for c in settings["Cs"]]}
    return GridSearchCV(pipe, grid, scoring="roc_auc",
                        cv=StratifiedKFold(folds, shuffle=True, random_state=seed), error_score=0.5)


def null_check(model: GridSearchCV, x: np.ndarray, y: np.ndarray, n_permutations: int, seed: int = 0) -> dict:
    """Is the inner-CV AUC of the chosen configuration above what the same search reaches on permuted labels?

    The statistic is the grid search's best inner AUC (a maximum over the grid, so optimistic); its null
    distribution is that same maximum after refitting the whole search on ``n_permutations`` label
    permutations of the training cases. ``p = (1 + #null >= observed) / (1 + n)``."""
    rng = np.random.default_rng(seed)
    observed = float(model.best_score_)
    null = [float(clone(model).fit(x, rng.permutation(y)).best_score_) for _ in range(int(n_permutations))]
    p = (1 + sum(v >= observed for v in null)) / (1 + len(null))
    return {"observed_inner_auc": observed, "null_median": float(np.median(null)) if null else None,
            "null_95th": float(np.quantile(null, 0.95)) if null else None, "n_permutations": len(null), "p_value": p}


def _features_kept(model: GridSearchCV, names: list[str]) -> list[dict]:
    best = model.best_estimator_
    names_v = np.array(names)[best.named_steps["variance"].get_support()]
    kept = names_v[best.named_steps["select"].get_support()]
    coef = best.named_steps["lr"].coef_.reshape(-1)
    order = np.argsort(-np.abs(coef))
    return [{"feature": str(kept[i]), "coefficient": float(coef[i])} for i in order]


def _reusable(layout: ResultLayout, fold_folder: Path, settings: dict, train: list, val: list) -> bool:
    """A finished fold (the ``cls_predictions`` rule) fitted with these settings on this split."""
    if not layout.is_finished("cls_predictions", fold_folder):
        return False
    try:
        done = load_json(fold_folder / SUMMARY_FILE)
    except (OSError, ValueError):
        return False
    return (done.get("settings") == json.loads(json.dumps(settings)) and done.get("train_ids") == train
            and done.get("val_ids") == val)


def run_radiomics_baseline(dataset, folds: list[int] | None = None, crop_source: str = "gt",
                           plans_name: str = PLANS_NAME, overwrite: bool = False) -> Path:
    """The radiomics baseline on every fold (see the module docstring); settings from the plans' ``radiomics``
    stage. Features are cached per settings in ``features_<hash>.json`` under the run folder; a fold already fitted
    with the same settings on the same split is reused (``overwrite`` refits)."""
    layout = ResultLayout.for_dataset(dataset, plans_name)
    name, pp = layout.dataset_name, layout.preprocessed
    settings = NeoNetPlans(pp / NEONET_PLANS_FILE).stage("radiomics")
    extractors = (_extractor(settings["tumour_classes"], settings["bin_width"]),
                  _extractor(settings["shell_classes"], settings["bin_width"]))
    run = radiomics_run_name(crop_source)
    root = layout.stage_root(run)
    splits = load_splits(pp)
    folds = list(range(len(splits))) if folds is None else [int(f) for f in folds]
    labels = case_labels(pp, crop_source)
    pf = patch_folder(pp, crop_source)
    meta = load_metadata(pf)["cases"]
    feature_keys = {k: settings[k] for k in ("shell_mm", "bin_width", "tumour_classes", "shell_classes")}
    cache_f = root / f"features_{settings_hash(feature_keys)}.json"
    cache = load_json(cache_f) if cache_f.is_file() and not overwrite else {}
    needed = sorted({c for k in folds for part in ("train", "val") for c in get_fold(splits, k)[part]})
    todo = [c for c in needed if c not in cache]
    for c in tqdm(todo, desc="radiomics", disable=None):
        img, lab = load_patch(pf, c)
        cache[c] = extract_case_features(img, lab, list(meta[c]["spacing"])[::-1], settings, extractors)
    if todo:
        save_json(cache, cache_f)
    keys = sorted(set.intersection(*(set(cache[c]) for c in needed)))
    if not keys:
        raise ValueError("radiomics: no feature common to every case (empty tumour masks?).")
    X = {c: np.nan_to_num(np.array([cache[c][k] for k in keys], float), posinf=0.0, neginf=0.0) for c in needed}
    for k in folds:
        split = get_fold(splits, k)
        tr, va = list(split["train"]), list(split["val"])
        out = layout.fold_folder(run, k)
        if not overwrite and _reusable(layout, out, settings, tr, va):
            logger.info("radiomics fold %d: finished with these settings and this split (reused; overwrite=True "
                        "refits)", k)
            continue
        ytr = np.array([labels[c] for c in tr])
        yva = np.array([labels[c] for c in va])
        xtr, xva = np.stack([X[c] for c in tr]), np.stack([X[c] for c in va])
        model = radiomics_model(settings, len(tr), int(np.bincount(ytr, minlength=2).min()), seed=k)
        model.fit(xtr, ytr)
        null = null_check(model, xtr, ytr, int(settings["null_permutations"]), seed=k)
        signal = null["p_value"] <= float(settings["null_alpha"])
        if signal:
            pva = model.predict_proba(xva)[:, 1]
            # the threshold comes from out-of-sample scores of the training cases (inner CV of the chosen model)
            p_oof = cross_val_predict(model.best_estimator_, xtr, ytr, cv=model.cv, method="predict_proba")[:, 1]
        else:  # no signal on the inner folds: the prevalence for every case, never a fitted-noise score
            pva, p_oof = np.full(len(va), ytr.mean()), np.full(len(tr), ytr.mean())
            logger.warning("radiomics fold %d: no signal on the inner folds (best inner AUC %.3f, permutation p = "
                           "%.3f > %g): every case gets the training prevalence %.3f", k, null["observed_inner_auc"],
                           null["p_value"], settings["null_alpha"], ytr.mean())
        thr = stats.select_threshold(ytr, p_oof)
        write_predictions_csv(out / OOF_FILE, [{"case_id": c, "label": int(y), "probability": float(p),
                                               "probability_raw": float(p)} for c, y, p in zip(va, yva, pva)],
                              ["case_id", "label", "probability", "probability_raw"])
        write_predictions_csv(out / TRAIN_PRED_FILE, [{"case_id": c, "label": int(y), "probability": float(p),
                                                      "probability_raw": float(p), "set": "inner_oof"}
                                                     for c, y, p in zip(tr, ytr, p_oof)],
                              ["case_id", "label", "probability", "probability_raw", "set"])
        kept = _features_kept(model, keys) if signal else []
        val_auc = stats.roc_auc(yva, pva) if 0 < yva.sum() < yva.size else None
        save_json({"dataset": name, "fold": k, "run": run, "arch": "radiomics", "synthetic_ratio": 0.0,
                   "crop_source": crop_source, "early_stopping": "nested", "selected_epoch": None,
                   "val_ids": va, "train_ids": tr, "n_train_real": len(tr), "n_train_synthetic": 0,
                   "n_features": len(keys), "settings": settings,
                   "inner_choice": {"k": int(model.best_params_["select__k"]), "C": float(model.best_params_["lr__C"]),
                                    "inner_auc": float(model.best_score_)},
                   "null_check": {**null, "alpha": float(settings["null_alpha"]), "fallback_to_prevalence": not signal},
                   "features_kept": kept, "threshold": thr, "threshold_source": "inner_oof",
                   "train_prevalence": float(ytr.mean()), "real_prevalence": float(ytr.mean()),
                   "val_auc": val_auc}, out / SUMMARY_FILE)
        logger.info("radiomics fold %d: %d features, inner CV chose k=%d C=%g (inner AUC %.3f), kept %s; "
                    "validation AUC %s", k, len(keys), model.best_params_["select__k"], model.best_params_["lr__C"],
                    model.best_score_, ", ".join(f["feature"] for f in kept[:5]),
                    "n/a" if val_auc is None else f"{val_auc:.3f}")
    return root


# ----------------------------------------------------------------------------- late fusion
def stacked_fusion(x_train: np.ndarray, score_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray,
                   score_val: np.ndarray, C: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Late fusion of a feature matrix (e.g. radiomics) with a deep model's probability: one L2 logistic
    regression on [standardised features, logit(score)], fitted on the training cases.

    ``score_train`` must be out-of-sample for the training cases (the nested protocol's inner
    out-of-fold predictions), else the regression learns to trust an overfitted score. Returns
    (validation probabilities, training probabilities)."""
    xt = np.column_stack([np.asarray(x_train, float), stats.logit(score_train)])
    xv = np.column_stack([np.asarray(x_val, float), stats.logit(score_val)])
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
        fused = stats.fuse_scores(*(np.array([rows[r][c]["probability"] for c in ids]) for r in roots))
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
