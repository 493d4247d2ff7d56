"""Model updating after external validation (TRIPOD+AI 12f / 24, ``neonet_validate --recalibrate``).

``intercept`` or ``logistic`` recalibration fitted on the external cohort, composed with each fold's calibration
and written as a new model version (a model zip with its provenance); the apparent calibration of the update.
"""
from __future__ import annotations

import hashlib
import shutil
import zipfile
from pathlib import Path

import numpy as np

from neonet_toolkit.dataset.errors import DatasetError
from neonet_toolkit.evaluation.validation_stats import (
    _classes,
    calibration,
    calibration_in_the_large,
    calibration_slope,
)
from neonet_toolkit.models import model_card, package
from neonet_toolkit.models.seg import REGISTERED_MODEL_FILE
from neonet_toolkit.utilities import stats
from neonet_toolkit.utilities.checkpoints import (
    file_sha256,
    load_checkpoint,
    save_checkpoint,
)
from neonet_toolkit.utilities.io import atomic_path, load_json, save_json, save_text

RECALIBRATION_METHODS = ("intercept", "logistic")


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
