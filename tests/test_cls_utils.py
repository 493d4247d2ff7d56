"""Helpers for the NeoCls tests (no tests here): a tiny configuration, a fold VAE checkpoint made
with ``build_vae`` + ``save_checkpoint`` (the contract of networks/generative.py), and synthetic
sets in the manifest.py layout made from real training patches plus noise."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch

from neonet_toolkit.experiment_planning.plans import NEONET_PLANS_FILE
from neonet_toolkit.experiment_planning.splits import get_fold, load_splits
from neonet_toolkit.preprocessing.patches import load_metadata, load_patch, patch_folder
from neonet_toolkit.utilities.io import load_json, save_json, save_npz

ENV_KEYS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "neonet_results")
TINY_VAE = {"channels": [8, 16, 16], "latent_channels": 4, "norm_num_groups": 8, "num_res_blocks": 1,
            "attention_levels": [False, False, False]}


def copy_planned(src: dict, dst: Path, monkeypatch) -> dict:
    """Copy what NeoCls reads of a planned dataset (plans, splits, TLCR patches) to ``dst``; point the env there."""
    env = {k: dst / k for k in ENV_KEYS}
    for k, v in env.items():
        v.mkdir(parents=True, exist_ok=True)
        monkeypatch.setenv(k, str(v))
    name = src["dataset_name"]
    pp_src, pp_dst = Path(src["preprocessed"]), env["nnUNet_preprocessed"] / name
    pp_dst.mkdir(parents=True)
    for f in (NEONET_PLANS_FILE, "splits_final.json"):
        shutil.copy(pp_src / f, pp_dst / f)
    shutil.copytree(pp_src / "neonet_tlcr", pp_dst / "neonet_tlcr")
    return {"dataset_name": name, "preprocessed": pp_dst, "results": env["neonet_results"] / name, "root": dst}


def add_configuration(preprocessed: Path, name: str = "cls_tiny", cls: dict | None = None) -> str:
    f = Path(preprocessed) / NEONET_PLANS_FILE
    plans = load_json(f)
    plans["configurations"][name] = {
        "inherits_from": "cpu_small", "vae": dict(TINY_VAE),
        "cls": {"epochs": 3, "batch_size": 4, "lr": 3e-3, "patience": 30, "min_epochs": 0, "adapter_channels": 16,
                "head_hidden": 32,
                "dropout": 0.0, "swin_feature_size": 12, **(cls or {})}}
    save_json(plans, f)
    return name


def make_fold_vae(dataset: str, preprocessed: Path, fold: int, pretrain_steps: int = 0, seed: int = 0) -> Path:
    """A fold VAE checkpoint; ``pretrain_steps`` > 0 fits it (L1 reconstruction of channel 0) on the
    fold's training patches, so the frozen encoder carries image features."""
    from neonet_toolkit.networks.generative import build_vae, vae_checkpoint_path
    from neonet_toolkit.utilities.checkpoints import save_checkpoint

    torch.manual_seed(seed + fold)
    vae = build_vae(TINY_VAE)
    folder = patch_folder(preprocessed, "gt")
    train = get_fold(load_splits(preprocessed), fold)["train"]
    x = torch.from_numpy(np.stack([load_patch(folder, c)[0][:1] for c in train]))
    if pretrain_steps:
        opt = torch.optim.Adam(vae.parameters(), 3e-3)
        g = torch.Generator().manual_seed(seed)
        for _ in range(pretrain_steps):
            idx = torch.randint(0, len(x), (4,), generator=g)
            rec, mu, sig = vae(x[idx])
            loss = (rec - x[idx]).abs().mean() + 1e-6 * (mu.pow(2) + sig.pow(2) - torch.log(sig.pow(2)) - 1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        z = vae.encode(x[:8])[0]
    scale = float(1.0 / z.std())
    path = vae_checkpoint_path(dataset, fold)
    save_checkpoint({"network": vae.state_dict(), "config": dict(TINY_VAE), "epoch": pretrain_steps,
                     "extra": {"scale_factor": scale, "latent_shape": list(z.shape[1:])}}, path)
    return path


def make_synthetic_set(dataset: str, preprocessed: Path, fold: int, noise: float = 0.3, n_majority: int = 0,
                       val_leak: bool = False, seed: int = 0) -> Path:
    """Synthetic minority patches (and optionally majority ones) for a fold, from its training
    patches + Gaussian noise inside the ROI; enough minority entries for ratio 1.0."""
    from neonet_toolkit.preprocessing.synthetic_sets import MANIFEST, synthetic_folder

    rng = np.random.default_rng(seed + fold)
    split = get_fold(load_splits(preprocessed), fold)
    labels = {c: r["label"] for c, r in load_metadata(patch_folder(preprocessed, "gt"))["cases"].items()}
    train = split["train"]
    counts = {k: sum(labels[c] == k for c in train) for k in (0, 1)}
    minority = 1 if counts[1] <= counts[0] else 0
    gap = abs(counts[0] - counts[1])
    out = synthetic_folder(dataset, fold)
    (out / "patches").mkdir(parents=True, exist_ok=True)
    entries = []
    sources = {1: [c for c in train if labels[c] == minority], 0: [c for c in train if labels[c] != minority]}
    if val_leak:
        sources[1] = [c for c in split["val"] if labels[c] == minority]
    folder = patch_folder(preprocessed, "gt")
    k = 0
    for role, n, pool, lab in (("minority", gap, sources[1], minority), ("majority", n_majority, sources[0], 1 - minority)):
        for j in range(n):
            src = pool[j % len(pool)]
            img, lbl = load_patch(folder, src)
            img = img.copy()
            roi = lbl[0].astype(bool)
            img[0][roi] += rng.normal(0, noise, int(roi.sum())).astype(np.float32)
            img[1] = img[0] * lbl[1]
            sid = f"syn_{k:05d}"
            save_npz(out / "patches" / f"{sid}.npz", image=img, label=lbl)
            entries.append({"id": sid, "label": int(lab), "role": role, "source_case": src, "seed": int(k),
                            "steps": 0, "checkpoint": "test", "order": j})
            k += 1
    save_json({"fold": fold, "train_ids": train, "class_counts": {str(a): b for a, b in counts.items()},
               "minority_class": minority, "gap": gap, "entries": entries}, out / MANIFEST)
    return out
