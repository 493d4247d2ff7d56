"""NeoCls result files: their names, the predictions CSVs, and the case labels of a patch set.

Written by the classifier trainers and the radiomics baseline; read by them, the evaluation and the predictor.
"""
from __future__ import annotations

import csv
from pathlib import Path

from neonet_toolkit.preprocessing.patches import load_metadata, patch_folder
from neonet_toolkit.utilities.io import load_json, save_csv

OOF_FILE = "oof_predictions.csv"
TRAIN_PRED_FILE = "train_predictions.csv"
SUMMARY_FILE = "cls_summary.json"
NESTED_FILE = "nested_selection.json"  # the nested protocol's inner CV record (inner out-of-fold predictions)


def case_labels(preprocessed: Path, crop_source: str) -> dict[str, int]:
    """``{case: target label}`` of a TLCR patch set (``gt`` labels fill in for cases a ``pred`` set lacks)."""
    meta = load_metadata(patch_folder(preprocessed, crop_source))["cases"]
    labels = {c: r.get("label") for c, r in meta.items()}
    if crop_source != "gt" and any(v is None for v in labels.values()):
        gt = load_metadata(patch_folder(preprocessed, "gt"))["cases"]
        labels = {c: (v if v is not None else gt.get(c, {}).get("label")) for c, v in labels.items()}
    missing = sorted(c for c, v in labels.items() if v is None)
    if missing:
        raise ValueError(f"No target label for case(s) {missing[:5]} in the {crop_source} patch metadata.")
    return {c: int(v) for c, v in labels.items()}


def write_predictions_csv(path: Path, rows: list[dict], fields: list[str]) -> None:
    save_csv(rows, path, fields, float_format=".6f")


def read_predictions_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r["label"] = int(r["label"])
        for k in ("probability", "probability_raw"):
            if k in r:
                r[k] = float(r[k])
    return rows


def load_best_configuration(layout) -> dict | None:
    """The choice of ``neonet_find_best_configuration`` for a :class:`ResultLayout`, or ``None``."""
    f = layout.best_configuration_file()
    return load_json(f) if f.is_file() else None
