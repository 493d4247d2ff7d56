"""What a finished NeoCls fold writes: ``oof_predictions.csv``, ``train_predictions.csv`` and
``cls_summary.json`` (the run's identity, data, selection and operating point; read by the evaluation)."""
from __future__ import annotations

from typing import Any

import numpy as np

from neonet_toolkit.models.cls_results import OOF_FILE, SUMMARY_FILE, TRAIN_PRED_FILE, write_predictions_csv
from neonet_toolkit.training.cls_protocols import ThresholdFit
from neonet_toolkit.utilities import stats
from neonet_toolkit.utilities.io import save_json


def write_fold_outputs(trainer: Any, fit: ThresholdFit, val_p: np.ndarray, val_raw: np.ndarray) -> float:
    """The two predictions CSVs and the summary of ``trainer`` (a :class:`~neonet_toolkit.training.cls.ClsTrainer`
    after selection); returns the validation AUC."""
    d, folder = trainer.data, trainer.output_folder
    write_predictions_csv(folder / OOF_FILE,
                          [{"case_id": c, "label": int(y), "probability": float(p), "probability_raw": float(r)}
                           for c, y, p, r in zip(trainer.val_ids, d.y_val, val_p, val_raw)],
                          ["case_id", "label", "probability", "probability_raw"])
    write_predictions_csv(folder / TRAIN_PRED_FILE,
                          [{"case_id": c, "label": int(y), "probability": float(p), "probability_raw": float(r),
                            "set": fit.source} for c, y, p, r in zip(fit.ids, fit.y, fit.probability, fit.raw)],
                          ["case_id", "label", "probability", "probability_raw", "set"])
    val_auc = stats.roc_auc(d.y_val, val_p) if len(np.unique(d.y_val)) == 2 else float("nan")
    save_json(fold_summary(trainer, fit, val_auc), folder / SUMMARY_FILE)
    return val_auc


def fold_summary(trainer: Any, fit: ThresholdFit, val_auc: float) -> dict:
    """``cls_summary.json``: the run's identity, data, selection (from the protocol) and operating point.

    Provenance of the synthetic data: ``synthetic_gate`` (the quality-gate verdict, ``overridden`` true when
    ``--allow-failed-gate`` let a failed set through; ``None`` when the run trained on no synthetic set) and, for
    ``--synthetic-ratio auto``, ``synthetic_ratio_choice`` and ``synthetic_ratio_candidates`` (each candidate's
    pooled inner-OOF AUC at its selected epoch)."""
    d = trainer.data
    sel = trainer.protocol.summary_fields(trainer, fit)
    used = d.synthetic_for_ratio(trainer.synthetic_ratio)
    choice = getattr(trainer, "ratio_choice", None)
    candidates = [{k: c[k] for k in ("ratio", "inner_auc", "selected_epoch", "n_synthetic")}
                  for c in (choice or {}).get("candidates", [])]
    return {
        "dataset": trainer.dataset_name, "fold": trainer.fold, "run": trainer.stage_dir, "arch": trainer.arch,
        "synthetic_ratio": trainer.synthetic_ratio, "arm": trainer.arm, "crop_source": trainer.crop_source,
        "synthetic_ratio_setting": getattr(trainer, "ratio_setting", trainer.synthetic_ratio),
        "synthetic_ratio_choice": choice["chosen"] if choice else None, "synthetic_ratio_candidates": candidates,
        "synthetic_gate": getattr(trainer, "gate", None),
        "early_stopping": trainer.early_stopping, "protocol": trainer.protocol_label,
        "selected_epoch": trainer.selected_epoch, "epochs_run": len(trainer.history),
        "best_selection_score": trainer.best_score, "optimizer_steps": trainer.steps_run,
        "items_per_epoch": trainer.train_set["budget"],
        "val_auc": val_auc, "val_ids": trainer.val_ids, "train_ids": trainer.train_ids, "fit_ids": d.fit_ids,
        "inner_val_ids": d.inner_ids,
        "nested_inner_folds": sel["nested_inner_folds"], "selection_rule": sel["selection_rule"],
        "selection_ids": sel["selection_ids"],
        "calibration": trainer.calibration, "calibration_ids": sel["calibration_ids"],
        "threshold_ids": list(fit.ids),
        "synthetic_ids": [e["id"] for e in used],
        "synthetic_sources": sorted({e["source_case"] for e in used}),
        "n_train_real": len(d.fit_ids), "n_train_synthetic": len(used),
        "train_prevalence": trainer.train_prevalence, "real_prevalence": d.real_prevalence,
        "threshold": trainer.threshold, "threshold_source": trainer.threshold_source,
        "threshold_method": trainer.threshold_method, "configuration": trainer.configuration_name,
        "seen_train_items": sorted(trainer.seen_train_items),
        "vae_checkpoint": getattr(trainer, "vae_checkpoint", None), "world_size": trainer.dist.world_size,
    }
