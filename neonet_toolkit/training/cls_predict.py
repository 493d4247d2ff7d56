"""A trained NeoCls fold for prediction: loading, calibrated probabilities, and the decision rule."""
from __future__ import annotations

import numpy as np
import torch

from neonet_toolkit.networks.classifiers import build_classifier
from neonet_toolkit.training.cls_data import predict_logits, sigmoid
from neonet_toolkit.utilities import stats
from neonet_toolkit.utilities.checkpoints import load_checkpoint
from neonet_toolkit.utilities.identifiers import (
    FINAL_CHECKPOINT,
    PROTOCOL_LABELS,
    stage_fold_folder,
)


# ----------------------------------------------------------------------------- loading for prediction
def load_fold_classifier(dataset, run: str, fold: int, device: str | torch.device = "cpu",
                         plans_name: str = "NeoNetPlans") -> tuple[torch.nn.Module, dict]:
    """A trained fold classifier (eval mode) and its inference info (arch, crop size, prevalences,
    threshold...). ``run`` is the result-folder prefix, e.g. ``cls_pattennet_1``."""
    folder = stage_fold_folder(dataset, run, fold, plans_name)
    ckpt = load_checkpoint(folder / FINAL_CHECKPOINT, map_location=device)
    info = ckpt.get("extra", {}).get("inference")
    if not ckpt.get("extra", {}).get("finished") or info is None:
        raise ValueError(f"{folder} holds an unfinished NeoCls run; finish it with `--c` first.")
    net = build_classifier(info["arch"], info["cls_config"], 2, info["vae_config"], info["scale_factor"])
    net.load_state_dict(ckpt["network"])
    return net.to(device).eval(), dict(info)


def predict_proba(model: torch.nn.Module, info: dict, images: np.ndarray, device: str | torch.device = "cpu"
                  ) -> np.ndarray:
    """Prevalence-recalibrated PNI probabilities for TLCR patches (N, 2, *crop)."""
    raw = sigmoid(predict_logits(model, images, torch.device(device)))
    prior = stats.recalibrate_prior(raw, info["train_prevalence"], info["real_prevalence"])
    return stats.apply_calibration(prior, info.get("calibration"))


def decision_rule(info: dict) -> dict:
    """How one fold's decision is made, for provenance: calibration, threshold and how both were fitted."""
    cal = info.get("calibration") or {"method": "none"}
    return {"protocol": info.get("protocol", PROTOCOL_LABELS.get(info.get("early_stopping", "val"), "")),
            "probability": "prior-corrected to the real training prevalence"
                           + ("" if cal.get("method") == "none" else f", then {cal['method']} calibration"),
            "calibration": cal, "threshold": float(info["threshold"]),
            "threshold_method": info.get("threshold_method", "youden"),
            "threshold_source": info.get("threshold_source")}


