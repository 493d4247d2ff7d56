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
"""
from __future__ import annotations

from pathlib import Path

from neonet_toolkit.utilities.identifiers import CROP_SOURCES, PLANS_NAME, stage_fold_folder
from neonet_toolkit.utilities.io import load_json

MANIFEST = "manifest.json"


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
