"""Dataset shift of an external cohort against the training data (TRIPOD+AI 16 / 20c, ``neonet_validate``).

The training reference comes from the fingerprint stored in the model (nnU-Net's ``dataset_fingerprint.json``, the
training TLCR records, the manifest's ``training_data`` summary); each external case gets a fingerprint of its
own; :func:`shift_analysis` flags cases and compares the cohorts by standardized differences.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np

from neonet_toolkit.utilities.io import load_json

#: |standardized difference| above this is a substantial shift of the cohort (Austin 2009: 0.1 small, 0.25 large)
SMD_SUBSTANTIAL = 0.25
SMD_SMALL = 0.1
#: spacing tolerance of the per-case flag, the same as neonet_predict's spacing QC flag
SPACING_TOLERANCE = (0.8, 1.25)


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


def read_training_tlcr(meta_file: Path) -> list[dict]:
    """The training TLCR records (``neonet_tlcr/gt/metadata.json``) when the model ships them."""
    if not Path(meta_file).is_file():
        return []
    return list((load_json(meta_file).get("cases") or {}).values())
