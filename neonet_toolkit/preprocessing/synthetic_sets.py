"""Synthetic patch sets: where NeoGen writes them and how NeoCls picks them by ratio.

Layout::

    neonet_results/<ds>/synthetic__<plans>/fold_N/        # conditioned on ground-truth label patches
    neonet_results/<ds>/synthetic_pred__<plans>/fold_N/   # conditioned on out-of-fold NeoSeg masks
        patches/syn_00000.npz     # image float32 (2, *crop), label uint8 (2, *crop), TLCR format
        manifest.json

A classifier trained with ``--crop-source pred`` reads the ``synthetic_pred`` set, so that its real and
synthetic patches come from the same mask source (end-to-end protocol); a ``gt`` classifier reads
``synthetic``. The manifest's ``crop_source`` says which masks conditioned the set.

``manifest.json``::

    {"fold": N, "train_ids": [...], "class_counts": {"0": n0, "1": n1}, "minority_class": 1,
     "gap": n_major - n_minor,
     "entries": [{"id": "syn_00000", "label": 1, "role": "minority" | "majority",
                  "source_case": "<training case whose label patch conditioned it>",
                  "seed": int, "steps": int, "checkpoint": "<controlnet checkpoint path>", "order": k}, ...]}

Ratio semantics (Table 2): ratio r in [0, 1] adds the first ``round(r * gap)`` minority entries
(by ``order``), so r = 1 is a 1:1 balanced training set. Majority entries are only used when
explicitly asked for (``n_majority``), so that "synthetic" is not a proxy for the label.
Every ``source_case`` must be a training case of the fold: synthetic patches never derive from,
nor enter, a validation set.

Quality gate: ``neonet_evaluate DATASET gen`` measures each set and stores the figures next to the manifest
(``quality.json``, :func:`save_quality`, stamped with the SHA-256 of the manifest it measured).
:func:`gate_verdict` turns that record and the plans' ``gen_quality`` thresholds into a pass / fail verdict
with reasons that name the figures; NeoCls refuses to train on a set that fails (unless overridden).
"""
from __future__ import annotations

import hashlib
import math
from pathlib import Path

from neonet_toolkit.utilities.identifiers import CROP_SOURCES, PLANS_NAME, stage_fold_folder
from neonet_toolkit.utilities.io import load_json, save_json

MANIFEST = "manifest.json"
QUALITY_FILE = "quality.json"


def synthetic_stage(crop_source: str = "gt", set_dir: str = "synthetic") -> str:
    """Result-folder stage key of a synthetic set: the generator variant's ``set_dir`` (``synthetic`` = NeoGen,
    e.g. ``synthetic_dm_vqvae``), with ``_pred`` when it was conditioned on out-of-fold NeoSeg masks."""
    if crop_source not in CROP_SOURCES:
        raise ValueError(f"crop source must be one of {CROP_SOURCES}, got {crop_source!r}.")
    return set_dir if crop_source == "gt" else f"{set_dir}_{crop_source}"


def synthetic_folder(dataset, fold: int, plans_name: str = PLANS_NAME, crop_source: str = "gt",
                     set_dir: str = "synthetic") -> Path:
    """``neonet_results/<ds>/<stage>__<plans>/fold_N`` (:func:`synthetic_stage`); NeoCls reads the NeoGen set
    (``set_dir`` ``synthetic``) of its own crop source."""
    return stage_fold_folder(dataset, synthetic_stage(crop_source, set_dir), fold, plans_name)


def manifest_crop_source(manifest: dict) -> str:
    """The masks that conditioned a set (sets written before the field existed were gt-conditioned)."""
    return str(manifest.get("crop_source", "gt"))


def load_manifest(folder: str | Path) -> dict:
    f = Path(folder) / MANIFEST
    if not f.is_file():
        fold = Path(folder).name.replace("fold_", "")
        pred = " --crop-source pred" if Path(folder).parent.name.startswith("synthetic_pred") else ""
        raise FileNotFoundError(f"{f} not found: run `neonet_generate -d {Path(folder).parent.parent.name} -f {fold}"
                                f"{pred}` first.")
    return load_json(f)


def select_for_ratio(manifest: dict, ratio: float, n_majority: int = 0) -> list[dict]:
    """Entries to add to the real training set for a given ratio (see module docstring)."""
    if not 0.0 <= float(ratio) <= 1.0:
        raise ValueError(f"ratio must be in [0, 1], got {ratio}.")
    need = int(round(float(ratio) * int(manifest["gap"])))
    minority = sorted((e for e in manifest["entries"] if e["role"] == "minority"), key=lambda e: e["order"])
    if len(minority) < need:
        raise ValueError(
            f"ratio {ratio} needs {need} synthetic minority patches but the manifest has {len(minority)}; "
            f"run neonet_generate with --ratio {ratio} (or higher)."
        )
    majority = sorted((e for e in manifest["entries"] if e["role"] == "majority"), key=lambda e: e["order"])
    if len(majority) < n_majority:
        raise ValueError(f"{n_majority} synthetic majority patches requested, the manifest has {len(majority)}.")
    return minority[:need] + majority[:n_majority]


# ----------------------------------------------------------------------------- quality record and gate
def manifest_sha256(folder: str | Path) -> str:
    """SHA-256 of the set's ``manifest.json`` bytes (identifies one generated set)."""
    return hashlib.sha256((Path(folder) / MANIFEST).read_bytes()).hexdigest()


def save_quality(folder: str | Path, record: dict) -> Path:
    """Write the generation-quality ``record`` of the set in ``folder`` to ``quality.json`` (atomically), stamped
    with ``manifest_sha256``: the hash of the manifest it was measured on, so a regenerated set reads as stale."""
    out = Path(folder) / QUALITY_FILE
    save_json({**record, "manifest_sha256": manifest_sha256(folder)}, out)
    return out


def load_quality(folder: str | Path) -> dict | None:
    """The set's ``quality.json``, or ``None`` when it was never measured."""
    f = Path(folder) / QUALITY_FILE
    return load_json(f) if f.is_file() else None


def _finite(x) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def gate_verdict(record: dict | None, thresholds: dict, manifest_sha256: str, dataset: str = "DS",
                 fold: int | str = "N") -> dict:
    """Whether a synthetic set may be trained on: every per-class C2ST AUC (real validation vs held-out synthetic)
    ``<= thresholds["c2st_auc_max"]`` and the copy rate ``<= thresholds["copy_rate_max"]`` (the plans'
    ``gen_quality`` stage), measured on this very manifest (``manifest_sha256``).

    Returns ``{"passed", "reasons", "c2st_auc": {class: auc}, "copy_rate", "thresholds", "manifest_sha256"}``;
    every reason names the measured figure. Fails when there is no record, when the record was made for another
    manifest (stale: the set was regenerated), when a class's C2ST AUC or the copy rate is missing or over its
    limit. ``dataset`` / ``fold`` only fill in the command the reasons suggest."""
    limits = {"c2st_auc_max": float(thresholds["c2st_auc_max"]), "copy_rate_max": float(thresholds["copy_rate_max"])}
    measure = f"`neonet_evaluate {dataset} gen -f {fold}`"
    out = {"passed": False, "reasons": [], "c2st_auc": {}, "copy_rate": None, "thresholds": limits,
           "manifest_sha256": manifest_sha256}
    if record is None:
        out["reasons"].append(f"not measured: no {QUALITY_FILE}; run {measure}")
        return out
    per_class = ((record.get("c2st") or {}).get("per_class") or {})
    out["c2st_auc"] = {str(c): _finite((v or {}).get("auc")) for c, v in sorted(per_class.items())}
    out["copy_rate"] = _finite(record.get("copy_rate"))
    if record.get("manifest_sha256") != manifest_sha256:
        out["reasons"].append(f"stale: {QUALITY_FILE} was measured on another manifest.json (the set was "
                              f"regenerated since); run {measure} again")
        return out
    if not per_class:
        out["reasons"].append(f"no C2ST figures in {QUALITY_FILE}; run {measure}")
    for c, auc in out["c2st_auc"].items():
        if auc is None:
            out["reasons"].append(f"C2ST AUC not measured for class {c} (too few real or synthetic patches?)")
        elif auc > limits["c2st_auc_max"]:
            out["reasons"].append(f"C2ST AUC {auc:.3g} > {limits['c2st_auc_max']:g} for class {c} "
                                  "(real validation vs held-out synthetic)")
    rate = out["copy_rate"]
    if rate is None:
        out["reasons"].append(f"copy rate not measured in {QUALITY_FILE}; run {measure}")
    elif rate > limits["copy_rate_max"]:
        out["reasons"].append(f"copy rate {rate:.3g} > {limits['copy_rate_max']:g} (synthetic patches that are "
                              "near-copies of a training patch: memorisation)")
    out["passed"] = not out["reasons"]
    return out
