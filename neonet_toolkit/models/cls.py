"""A trained NeoCls fold classifier: its inputs (TLCR patches), loading, calibrated probabilities, and the
decision rule. Used by the classifier trainer (its own predictions), the predictor and the evaluation."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from neonet_toolkit.dataset.case_ids import safe_join
from neonet_toolkit.networks.classifiers import build_classifier
from neonet_toolkit.preprocessing.patches import load_patch, patch_folder
from neonet_toolkit.utilities import stats
from neonet_toolkit.utilities.checkpoints import load_checkpoint
from neonet_toolkit.utilities.devices import autocast
from neonet_toolkit.utilities.identifiers import (
    FINAL_CHECKPOINT,
    PLANS_NAME,
    PROTOCOL_LABELS,
    stage_fold_folder,
)


# ----------------------------------------------------------------------------- inputs
def load_real(preprocessed: Path, crop_source: str, ids: list[str]) -> np.ndarray:
    """The real TLCR patches (N, 2, *crop) of ``ids`` from the ``crop_source`` patch set."""
    folder = patch_folder(preprocessed, crop_source)
    out = []
    for cid in ids:
        try:
            img, _ = load_patch(folder, cid)
        except FileNotFoundError:
            raise FileNotFoundError(f"No {crop_source} TLCR patch for case {cid!r} in {folder}"
                                    + (" (run NeoSeg prediction first)." if crop_source == "pred" else ".")) from None
        out.append(img.astype(np.float32))
    return np.stack(out) if out else np.zeros((0, 2, 1, 1, 1), np.float32)


def load_synthetic(entries: list[dict], folder: Path, crop) -> np.ndarray:
    """The synthetic patches (N, 2, *crop) of manifest ``entries`` from a synthetic set's ``patches`` folder."""
    out = []
    for e in entries:
        f = safe_join(folder, e["id"], ".npz")
        if not f.is_file():
            raise FileNotFoundError(f"Synthetic patch {f} listed in the manifest is missing.")
        with np.load(f) as z:
            img = z["image"].astype(np.float32)
        if list(img.shape) != [2, *crop]:
            raise ValueError(f"Synthetic patch {f} has shape {img.shape}, expected {(2, *crop)}.")
        out.append(img)
    return np.stack(out) if out else np.zeros((0, 2, *crop), np.float32)


# ----------------------------------------------------------------------------- raw outputs
@torch.no_grad()
def predict_logits(model: torch.nn.Module, images: np.ndarray | torch.Tensor, device: torch.device,
                   batch_size: int = 8) -> np.ndarray:
    """The model's logits for ``images`` (N, 2, *crop), in eval mode, batch by batch."""
    model.eval()
    out = []
    for s in range(0, len(images), batch_size):
        x = torch.as_tensor(np.asarray(images[s:s + batch_size]), dtype=torch.float32, device=device)
        with autocast(device):
            out.append(model(x).float().reshape(-1).cpu())
    return torch.cat(out).numpy() if out else np.zeros(0)


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(z, dtype=float)))


# ----------------------------------------------------------------------------- loading for prediction
def load_fold_classifier(dataset, run: str, fold: int, device: str | torch.device = "cpu",
                         plans_name: str = PLANS_NAME) -> tuple[torch.nn.Module, dict]:
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
