"""What NeoGen's three trainers (VAE, LDM, ControlNet) share.

* the fold's TLCR ground-truth patches of the *training* cases only (validation patches are
  read for monitoring losses, never for gradient steps);
* a ``training_manifest.json`` in the fold folder listing the case ids the stage trained on;
* a step loop with AMP (CUDA), DDP (each rank trains on its shard of the cases) and explicit,
  per-epoch seeded ``torch.Generator`` noise (resuming at epoch k draws the same noise as an
  uninterrupted run).
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import torch

from neonet_toolkit.preprocessing.patches import load_metadata, load_patch, patch_folder
from neonet_toolkit.training.base import NeoNetTrainer, batches
from neonet_toolkit.utilities.devices import autocast, make_grad_scaler, unwrap
from neonet_toolkit.utilities.io import save_json

logger = logging.getLogger(__name__)

TRAINING_MANIFEST = "training_manifest.json"


def load_patches(preprocessed: Path, case_ids: list[str], source: str = "gt") -> tuple[torch.Tensor, torch.Tensor]:
    """(images (N, 2, *crop) float32, labels (N, 2, *crop) uint8) of ``case_ids``."""
    folder = patch_folder(preprocessed, source)
    imgs, labs = [], []
    for cid in case_ids:
        im, lab = load_patch(folder, cid)
        imgs.append(im)
        labs.append(lab)
    if not imgs:
        raise ValueError("No cases to load.")
    return torch.from_numpy(np.stack(imgs)).float(), torch.from_numpy(np.stack(labs))


def case_labels(preprocessed: Path, case_ids: list[str], source: str = "gt") -> dict[str, int]:
    meta = load_metadata(patch_folder(preprocessed, source))["cases"]
    return {c: int(meta[c]["label"]) for c in case_ids}


def compute_input_intensity(images: torch.Tensor, labels: torch.Tensor, quantile: float = 0.995,
                            clip: float = 3.0) -> dict:
    """VAE intensity mapping from training patches: scale = quantile of |x| inside the ROI."""
    roi = labels[:, 0].bool()
    vals = images[:, 0][roi].abs()
    if vals.numel() == 0:
        raise ValueError("Training patches have empty ROI masks; cannot derive the VAE intensity scale.")
    if vals.numel() > 2_000_000:
        vals = vals[torch.randperm(vals.numel(), generator=torch.Generator().manual_seed(0))[:2_000_000]]
    scale = float(torch.quantile(vals.float(), quantile))
    return {"scale": max(scale, 1e-6), "clip": float(clip), "quantile": float(quantile)}


def write_training_manifest(folder: Path, stage: str, fold: int, train_ids: list[str], val_ids: list[str],
                            extra: dict | None = None) -> None:
    leak = sorted(set(train_ids) & set(val_ids))
    if leak:
        raise RuntimeError(f"{stage} fold {fold}: validation case(s) {leak} in the training set.")
    rec = {"stage": stage, "fold": int(fold), "train_ids": sorted(train_ids), "n_train": len(train_ids),
           "excluded_val_ids": sorted(val_ids)}
    rec.update(extra or {})
    save_json(rec, Path(folder) / TRAINING_MANIFEST)


def add_gen_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=12345, help="base random seed (fold index is added)")


def common_kwargs(args) -> dict:
    return dict(dataset=args.dataset, fold=args.fold, configuration=args.configuration, device=args.device,
                epochs=args.epochs, continue_training=args.continue_training, overwrite=args.overwrite,
                seed=getattr(args, "seed", 12345))


class GenTrainer(NeoNetTrainer):
    """Step loop shared by the NeoGen trainers; subclasses implement ``setup()`` and ``compute_loss()``."""

    def setup(self) -> None:
        raise NotImplementedError

    def compute_loss(self, idx: torch.Tensor, gen: torch.Generator, train: bool) -> tuple[torch.Tensor, dict]:
        """Loss on the cached training (or validation) items ``idx``; returns (loss, scalar logs)."""
        raise NotImplementedError

    def trainable(self) -> torch.nn.Module:
        return self.network

    # -- data
    def load_fold_data(self) -> None:
        self.train_images, self.train_labels = load_patches(self.preprocessed, self.train_ids)
        self.val_images, self.val_labels = load_patches(self.preprocessed, self.val_ids)
        labels = case_labels(self.preprocessed, self.train_ids + self.val_ids)
        self.train_classes = torch.tensor([labels[c] for c in self.train_ids], dtype=torch.long)
        self.val_classes = torch.tensor([labels[c] for c in self.val_ids], dtype=torch.long)
        # this rank's share of the training items (indices into the cached tensors)
        self.my_items = self.dist.shard(list(range(len(self.train_ids))))

    def build(self) -> None:
        self.load_fold_data()
        self.setup()
        net = self.trainable()
        self.optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad],
                                           lr=float(self.config["lr"]),
                                           weight_decay=float(self.config["weight_decay"]))
        self.scaler = make_grad_scaler(self.device)
        self.ddp_model = self.dist.wrap(net)
        if self.dist.is_main:
            write_training_manifest(self.output_folder, self.stage, self.fold, self.train_ids, self.val_ids,
                                    self.manifest_extra())

    def manifest_extra(self) -> dict:
        return {}

    def modules_to_save(self) -> dict:
        return {"network": unwrap(self.network), "optimizer": self.optimizer, "grad_scaler": self.scaler}

    def _generator(self, epoch: int, salt: int) -> torch.Generator:
        return torch.Generator().manual_seed(int(self.seed) * 1_000_003 + epoch * 7919 + salt * 104_729 + self.dist.rank)

    def train_epoch(self, epoch: int) -> dict:
        self.trainable().train()
        rng = np.random.default_rng(self.seed * 1000 + epoch * 10 + self.dist.rank)
        gen = self._generator(epoch, 1)
        bs = int(self.config["batch_size"])
        losses, logs = [], {}
        for chunk in batches(self.my_items, bs, rng):
            idx = torch.tensor(chunk, dtype=torch.long)
            self.optimizer.zero_grad(set_to_none=True)
            with autocast(self.device):
                loss, parts = self.compute_loss(idx, gen, train=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            losses.append(float(loss.detach()))
            for k, v in parts.items():
                logs.setdefault(k, []).append(float(v))
        out = {"train_loss": self.dist.mean(float(np.mean(losses)))}
        out.update({k: self.dist.mean(float(np.mean(v))) for k, v in logs.items()})
        self.after_epoch(epoch)
        return out

    def after_epoch(self, epoch: int) -> None:
        pass

    @torch.no_grad()
    def validate(self, epoch: int) -> dict:
        every = int(self.config["val_every"])
        if len(self.val_ids) == 0 or not (epoch % every == 0 or epoch == self.num_epochs - 1):
            return {}
        self.trainable().eval()
        gen = torch.Generator().manual_seed(int(self.seed) + 424242)  # same validation noise every epoch
        vals = []
        for chunk in batches(list(range(len(self.val_ids))), int(self.config["batch_size"])):
            loss, _ = self.compute_loss(torch.tensor(chunk, dtype=torch.long), gen, train=False)
            vals.append(float(loss) * len(chunk))
        return {"val_loss": float(np.sum(vals) / len(self.val_ids))}

    def run_model(self, *args, **kwargs):
        """Forward through the DDP wrapper when training (gradient sync), the bare module otherwise."""
        model = self.ddp_model if self.trainable().training else self.trainable()
        return model(*args, **kwargs)
