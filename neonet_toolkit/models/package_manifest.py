"""What a package's manifest records besides its files: software versions, the training data (ranges from the
dataset fingerprint, case counts and prevalence) and the pooled out-of-fold performance of the exported folds.
"""
from __future__ import annotations

import importlib.metadata
import platform
from pathlib import Path

import numpy as np

from neonet_toolkit.models.cls_results import OOF_FILE, case_labels, read_predictions_csv
from neonet_toolkit.preprocessing.patches import patch_folder
from neonet_toolkit.utilities import stats
from neonet_toolkit.utilities.identifiers import ResultLayout
from neonet_toolkit.utilities.io import load_json
from neonet_toolkit.version import __version__

_VERSIONED = ("torch", "nnunetv2", "monai", "highdicom", "numpy", "SimpleITK")


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"neonet_toolkit": __version__, "python": platform.python_version()}
    for name in _VERSIONED:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def _fingerprint_summary(fingerprint: dict, image_channel: int) -> dict:
    """Spacing/shape/intensity ranges of the training data from nnU-Net's dataset fingerprint."""
    out: dict = {}
    sp = np.asarray(fingerprint.get("spacings") or [], float)
    sh = np.asarray(fingerprint.get("shapes_after_crop") or [], float)
    if sp.size:
        out["n_cases"] = int(len(sp))
        out["spacing_min"], out["spacing_median"], out["spacing_max"] = (
            sp.min(0).tolist(), np.median(sp, 0).tolist(), sp.max(0).tolist())
    if sh.size:
        out["shape_min"], out["shape_median"], out["shape_max"] = (
            sh.min(0).astype(int).tolist(), np.median(sh, 0).tolist(), sh.max(0).astype(int).tolist())
    ints = (fingerprint.get("foreground_intensity_properties_per_channel") or {}).get(str(image_channel))
    if ints:
        out["foreground_intensity"] = {k: float(v) for k, v in ints.items() if isinstance(v, (int, float))}
    return out


def _performance(run_root: Path, folds: list[int]) -> dict:
    """Pooled out-of-fold AUC with its DeLong CI from the folds' ``oof_predictions.csv``."""
    rows = []
    for f in folds:
        p = run_root / ResultLayout.fold_folder_name(f) / OOF_FILE
        if p.is_file():
            rows += [{**r, "fold": f} for r in read_predictions_csv(p)]
    out: dict = {"n": len(rows), "n_positive": sum(r["label"] for r in rows), "folds": folds,
                 "source": f"{OOF_FILE} of the exported folds (each case predicted by the fold that did not train on it)"}
    y = [r["label"] for r in rows]
    if rows and len(set(y)) == 2:
        out["auc"] = stats.delong_ci(y, [r["probability"] for r in rows])
        out["brier"] = float(sum((r["probability"] - r["label"]) ** 2 for r in rows) / len(rows))
        out["mean_probability"] = float(sum(r["probability"] for r in rows) / len(rows))
    else:
        out["auc"] = None
        out["auc_note"] = "undefined: the out-of-fold predictions hold one class only" if rows else "no predictions"
    return out


def _training_data(layout: ResultLayout, fingerprint: dict, image_channel: int) -> dict:
    out = _fingerprint_summary(fingerprint, image_channel)
    meta = patch_folder(layout.preprocessed, "gt") / "metadata.json"
    if meta.is_file():
        labels = case_labels(layout.preprocessed, "gt")
        cases = load_json(meta).get("cases", {})
        vols = [float(r["tumor_volume_ml"]) for r in cases.values() if r.get("tumor_volume_ml") is not None]
        out.update(n_labelled=len(labels), n_positive=int(sum(labels.values())),
                   prevalence=(sum(labels.values()) / len(labels)) if labels else None)
        if vols:
            out["tumor_volume_ml_min"], out["tumor_volume_ml_max"] = min(vols), max(vols)
    return out
