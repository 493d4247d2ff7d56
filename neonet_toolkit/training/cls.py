"""NeoCls trainer: ``neonet_train DATASET cls FOLD --arch pattennet --synthetic-ratio 1.0``.

One run = (architecture, real:synthetic ratio, crop source, early-stopping mode), trained per fold
on the fold's real training cases plus the fold's synthetic patches chosen by
:func:`neonet_toolkit.preprocessing.synthetic_sets.select_for_ratio`; evaluated on the fold's real
validation cases only. Result folder::

    neonet_results/<ds>/cls_<arch>_<ratio>[_pred][_es<mode>]__<plans>/fold_N/
        checkpoint_latest.pth  checkpoint_best.pth  checkpoint_final.pth (best weights + inference info)
        training_log.txt  progress.json  progress.png
        oof_predictions.csv    case_id,label,probability (prevalence-recalibrated),probability_raw
        train_predictions.csv  predictions on the data the threshold was chosen on (training data only)
        cls_summary.json       everything the evaluation needs (ids, prevalences, threshold, selection)

Early stopping (``--early-stopping``): ``val`` follows the paper (patience on the validation
fold's AUC; the chosen epoch has seen the validation labels, so its AUC is optimistic), ``inner``
holds out a stratified part of the training fold (and the synthetic patches derived from it) for
model selection, ``none`` keeps the last epoch. The mode is part of the run name and reported.

Prevalence: training on R+S shifts the class prior; probabilities are mapped back to the real
training prevalence of the fold (:func:`neonet_toolkit.utilities.stats.recalibrate_prior`).
The decision threshold is chosen on training data only (inner split if present, else the real
training cases) and stored in the checkpoint with everything :func:`load_fold_classifier` needs.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from neonet_toolkit.dataset.contract import safe_join
from neonet_toolkit.networks.classifiers import build_classifier, canonical_arch, needs_vae, parse_arch
from neonet_toolkit.networks.generative import load_fold_vae, vae_checkpoint_path
from neonet_toolkit.preprocessing.patches import load_patch, patch_folder
from neonet_toolkit.preprocessing.synthetic_sets import load_manifest, select_for_ratio, synthetic_folder
from neonet_toolkit.training.base import NeoNetTrainer, batches
from neonet_toolkit.training.cls_artifacts import (
    OOF_FILE,
    SUMMARY_FILE,
    TRAIN_PRED_FILE,
    case_labels,
    write_predictions_csv,
)
from neonet_toolkit.utilities import stats
from neonet_toolkit.utilities.checkpoints import load_checkpoint, save_checkpoint
from neonet_toolkit.utilities.devices import autocast, make_grad_scaler, unwrap
from neonet_toolkit.utilities.identifiers import (
    EARLY_STOPPING_MODES,
    FINAL_CHECKPOINT,
    cls_run_name,
    fold_is_finished,
    stage_fold_folder,
)
from neonet_toolkit.utilities.io import save_json

logger = logging.getLogger(__name__)

RATIOS = (0.0, 0.25, 0.5, 0.75, 1.0)
EARLY_STOPPING = EARLY_STOPPING_MODES


# ----------------------------------------------------------------------------- naming
def run_name(arch: str, ratio: float, crop_source: str = "gt", early_stopping: str = "val") -> str:
    """Result-folder prefix, e.g. ``cls_pattennet_1`` or ``cls_resnet50_0_pred_esinner``."""
    return cls_run_name(canonical_arch(arch), ratio, crop_source, early_stopping)


def _check_ratio(ratio: float) -> float:
    r = float(ratio)
    if not 0.0 <= r <= 1.0:
        raise ValueError(f"--synthetic-ratio must be in [0, 1] (paper: 0, 0.25, 0.5, 0.75, 1.0), got {ratio}.")
    return r


# ----------------------------------------------------------------------------- data
def load_real(preprocessed: Path, crop_source: str, ids: list[str]) -> np.ndarray:
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


def select_synthetic(dataset, fold: int, ratio: float, train_ids: list[str], val_ids: list[str],
                     plans_name: str = "NeoNetPlans") -> tuple[list[dict], Path]:
    """Manifest entries for ``ratio``, checked: every ``source_case`` is a training case of this fold."""

    folder = synthetic_folder(dataset, fold, plans_name)
    manifest = load_manifest(folder)
    if "fold" in manifest and int(manifest["fold"]) != int(fold):
        raise ValueError(f"{folder}/manifest.json belongs to fold {manifest['fold']}, not fold {fold}.")
    entries = select_for_ratio(manifest, ratio)
    train, val = set(train_ids), set(val_ids)
    leaked = sorted({e["id"] for e in entries if e.get("source_case") in val})
    if leaked:
        raise ValueError(f"Synthetic patch(es) {leaked[:5]} were generated from validation case(s) of fold {fold}: "
                         "they would leak the validation set into training. Regenerate the fold's synthetic set.")
    foreign = sorted({e["id"] for e in entries if e.get("source_case") not in train})
    if foreign:
        raise ValueError(f"Synthetic patch(es) {foreign[:5]} do not name a training case of fold {fold} as "
                         "source_case; cannot prove they are leak-free.")
    return entries, folder / "patches"


def load_synthetic(entries: list[dict], folder: Path, crop) -> np.ndarray:

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


def inner_split(ids: list[str], labels: dict[str, int], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Stratified (train, inner-val) split of a training fold, at least one case of each class held out."""
    from sklearn.model_selection import train_test_split

    y = [labels[i] for i in ids]
    n_val = max(2, int(round(fraction * len(ids))))
    if min(np.bincount(y, minlength=2)) < 2:
        raise ValueError("Inner early-stopping split needs >= 2 cases of each class in the training fold.")
    tr, va = train_test_split(sorted(ids), test_size=n_val, stratify=[labels[i] for i in sorted(ids)],
                              random_state=seed)
    return sorted(tr), sorted(va)


FLIP_VARIANTS = tuple(tuple(d + 1 for d in range(3) if (v >> d) & 1) for v in range(8))  # per-sample flip dims


def draw_flip_variants(n: int, rng: np.random.Generator) -> list[int]:
    """Per sample, a random subset of the 3 spatial axes (each with p=0.5) as an index into FLIP_VARIANTS."""
    return [sum(1 << d for d in range(3) if rng.random() < 0.5) for _ in range(n)]


def augment_batch(x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Random flips along each spatial axis, per sample."""
    out = []
    for xi, v in zip(x, draw_flip_variants(x.shape[0], rng)):
        out.append(torch.flip(xi, FLIP_VARIANTS[v]) if v else xi)
    return torch.stack(out)


@torch.no_grad()
def encode_latents(model: torch.nn.Module, images: torch.Tensor, device: torch.device, variants=(0,),
                   batch_size: int = 8) -> torch.Tensor:
    """Frozen-encoder latents ``model.encode(flip(x))`` for each flip variant: (N, len(variants), C, d, h, w).

    Valid as a training cache only because the encoder is frozen (no gradient, eval mode, fixed weights)."""
    model.eval()
    out = []
    for s in range(0, len(images), batch_size):
        x = torch.as_tensor(images[s:s + batch_size], dtype=torch.float32).to(device)
        zs = []
        for v in variants:
            xv = torch.flip(x, [d + 1 for d in FLIP_VARIANTS[v]]) if v else x  # batch dim first
            with autocast(device):
                zs.append(model.encode(xv).float())
        out.append(torch.stack(zs, 1).cpu())
    return torch.cat(out)


def encoder_is_frozen(model: torch.nn.Module) -> bool:
    """A PattenNet-like model whose ``encode`` part has no trainable parameter."""
    enc = getattr(model, "encoder", None)
    return (hasattr(model, "encode") and hasattr(model, "forward_latents") and enc is not None
            and not any(p.requires_grad for p in enc.parameters()))


@torch.no_grad()
def predict_logits(model: torch.nn.Module, images: np.ndarray | torch.Tensor, device: torch.device,
                   batch_size: int = 8) -> np.ndarray:
    model.eval()
    out = []
    for s in range(0, len(images), batch_size):
        x = torch.as_tensor(np.asarray(images[s:s + batch_size]), dtype=torch.float32, device=device)
        with autocast(device):
            out.append(model(x).float().reshape(-1).cpu())
    return torch.cat(out).numpy() if out else np.zeros(0)


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(z, dtype=float)))


# ----------------------------------------------------------------------------- trainer
class ClsTrainer(NeoNetTrainer):
    stage = "cls"

    def __init__(self, dataset, fold: int, arch: str | None = None, synthetic_ratio: float = 0.0,
                 crop_source: str = "gt", early_stopping: str | None = None, **kw):
        self.synthetic_ratio = _check_ratio(synthetic_ratio)
        if crop_source not in ("gt", "pred"):
            raise ValueError(f"--crop-source must be gt or pred, got {crop_source!r}.")
        self.crop_source = crop_source
        super().__init__(dataset, fold, **kw)
        self.arch = canonical_arch(arch or self.config.get("architecture", "pattennet"))
        self.early_stopping = early_stopping or self.config.get("early_stopping", "val")
        if self.early_stopping not in EARLY_STOPPING:
            raise ValueError(f"early_stopping must be one of {EARLY_STOPPING}, got {self.early_stopping!r}.")
        self.stage_dir = run_name(self.arch, self.synthetic_ratio, crop_source, self.early_stopping)
        self.output_folder = self.fold_output_folder(self.stage_dir)
        self.patience = int(self.config.get("patience", 20))
        # epochs before this are neither selected nor counted against the patience (a noisy small
        # validation fold can otherwise "select" the untrained network and stop training early)
        self.min_epochs = int(self.config.get("min_epochs", 0))
        self.best_score: list[float] | None = None
        self.best_epoch = -1
        self.bad_epochs = 0
        self.stopped = False
        self.seen_train_items: set[str] = set()

    # -- data and model
    def _load_data(self) -> None:
        labels = case_labels(self.preprocessed, self.crop_source)
        self.labels = labels
        crop = self.plans.crop_size
        bad = sorted(set(self.train_ids) & set(self.val_ids))
        if bad:
            raise ValueError(f"splits_final.json fold {self.fold}: {bad[:5]} in both train and val.")
        fit_ids, inner_ids = list(self.train_ids), []
        if self.early_stopping == "inner":
            fit_ids, inner_ids = inner_split(self.train_ids, labels, float(self.config.get("inner_val_fraction", 0.2)),
                                             self.seed)
        self.fit_ids, self.inner_ids = fit_ids, inner_ids
        entries: list[dict] = []
        if self.synthetic_ratio > 0:
            entries, syn_folder = select_synthetic(self.dataset_name, self.fold, self.synthetic_ratio, self.train_ids,
                                                   self.val_ids, self.plans["plans_name"])
            dropped = [e["id"] for e in entries if e["source_case"] in set(inner_ids)]
            if dropped:
                self.log("inner split: %d synthetic patch(es) derived from inner-validation cases not used",
                         len(dropped))
            entries = [e for e in entries if e["source_case"] not in set(inner_ids)]
            syn = load_synthetic(entries, syn_folder, crop)
        else:
            syn = np.zeros((0, 2, *crop), np.float32)
        self.synthetic_entries = entries
        real = load_real(self.preprocessed, self.crop_source, fit_ids)
        self.x_train = torch.from_numpy(np.concatenate([real, syn]) if len(syn) else real)
        self.y_train = torch.tensor([labels[c] for c in fit_ids] + [int(e["label"]) for e in entries],
                                    dtype=torch.float32)
        self.train_item_ids = list(fit_ids) + [f"synthetic:{e['id']}<-{e['source_case']}" for e in entries]
        self.x_val = load_real(self.preprocessed, self.crop_source, self.val_ids)
        self.y_val = np.array([labels[c] for c in self.val_ids])
        self.x_inner = load_real(self.preprocessed, self.crop_source, inner_ids) if inner_ids else None
        self.y_inner = np.array([labels[c] for c in inner_ids]) if inner_ids else None
        real_y = np.array([labels[c] for c in self.train_ids])
        self.real_prevalence = float(real_y.mean())
        self.train_prevalence = float(self.y_train.mean())
        self.log("data: %d real + %d synthetic training patches (prevalence %.3f; real %.3f), %d inner-val, "
                 "%d validation cases, crop source %s", len(fit_ids), len(entries), self.train_prevalence,
                 self.real_prevalence, len(inner_ids), len(self.val_ids), self.crop_source)
        if len(np.unique(self.y_train.numpy())) < 2:
            raise ValueError(f"fold {self.fold}: the training set holds a single class.")

    def build(self) -> None:
        self._load_data()
        self.vae_config, self.scale_factor = None, 1.0
        vae = None
        if needs_vae(self.arch):

            ckpt = vae_checkpoint_path(self.dataset_name, self.fold, self.plans["plans_name"])
            if not ckpt.is_file():
                raise FileNotFoundError(f"PattenNet uses the frozen VAE encoder of fold {self.fold}, but {ckpt} does "
                                        f"not exist: run `neonet_train {self.dataset_name} vae {self.fold}` first.")
            vae, self.scale_factor, self.vae_config = load_fold_vae(self.dataset_name, self.fold, "cpu",
                                                                    self.plans["plans_name"])
            self.vae_checkpoint = str(ckpt)
        net = build_classifier(self.arch, self.config, 2, self.vae_config, self.scale_factor, vae=vae)
        self.network = self.dist.wrap(net.to(self.device))
        params = [p for p in net.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=float(self.config.get("lr", 1e-4)),
                                           weight_decay=float(self.config.get("weight_decay", 1e-2)))
        self.scaler = make_grad_scaler(self.device)
        self.log("arch=%s (%s) trainable params=%d frozen=%d", self.arch, parse_arch(self.arch),
                 sum(p.numel() for p in params), sum(p.numel() for p in net.parameters() if not p.requires_grad))
        self.z_train = None
        if self.config.get("cache_latents", True) and encoder_is_frozen(net):
            if self.dist.world_size > 1:
                self.log("latent cache off under DDP (the wrapped model is called on images)")
            else:
                import time

                t0 = time.time()
                variants = tuple(range(len(FLIP_VARIANTS))) if self.config.get("augment", True) else (0,)
                self.z_train = encode_latents(net, self.x_train, self.device, variants)
                net.train()
                self.log("frozen-encoder latents cached for %d training patches x %d flip variants %s in %.1fs",
                         len(self.x_train), len(variants), tuple(self.z_train.shape[2:]), time.time() - t0)

    # -- loop
    def train_epoch(self, epoch: int) -> dict:
        self.network.train()
        rng = np.random.default_rng(self.seed * 1000 + epoch)  # identical on every rank
        order = list(rng.permutation(len(self.y_train)))
        mine = self.dist.shard(order)
        bs = int(self.config.get("batch_size", 4))
        aug_rng = np.random.default_rng(self.seed * 1000 + epoch + 7919 * (self.dist.rank + 1))
        losses = []
        for chunk in batches(mine, bs):
            if len(chunk) == 1 and len(mine) > 1:
                continue  # BatchNorm nets cannot train on one sample; it is seen in another epoch
            y = self.y_train[chunk].to(self.device)
            self.seen_train_items.update(self.train_item_ids[i] for i in chunk)
            self.optimizer.zero_grad(set_to_none=True)
            if self.z_train is not None:  # frozen encoder: same draws as augment_batch, latents from the cache
                v = draw_flip_variants(len(chunk), aug_rng) if self.config.get("augment", True) else [0] * len(chunk)
                z = self.z_train[chunk, v].to(self.device, non_blocking=True)
                with autocast(self.device):
                    logits = unwrap(self.network).forward_latents(z).reshape(-1).float()
            else:
                x = self.x_train[chunk]
                if self.config.get("augment", True):
                    x = augment_batch(x, aug_rng)
                x = x.to(self.device, non_blocking=True)
                with autocast(self.device):
                    logits = self.network(x).reshape(-1).float()
            loss = F.binary_cross_entropy_with_logits(logits, y)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            losses.append(float(loss.detach()))
        return {"train_loss": self.dist.mean(float(np.mean(losses)) if losses else 0.0)}

    def _eval(self, x: np.ndarray, y: np.ndarray) -> tuple[float, float, np.ndarray]:
        logits = predict_logits(unwrap(self.network), x, self.device)
        p = sigmoid(logits)
        loss = float(F.binary_cross_entropy_with_logits(torch.tensor(logits, dtype=torch.float64),
                                                   torch.tensor(y, dtype=torch.float64)))
        auc = stats.roc_auc(y, p) if len(np.unique(y)) == 2 else float("nan")
        return auc, loss, p

    def validate(self, epoch: int) -> dict:
        m = {}
        auc, loss, _ = self._eval(self.x_val, self.y_val)
        m.update(val_auc=auc, val_loss=loss)
        if self.x_inner is not None:
            a, l_, _ = self._eval(self.x_inner, self.y_inner)
            m.update(inner_auc=a, inner_loss=l_)
        if self.early_stopping != "none" and epoch + 1 >= self.min_epochs:
            key = "val" if self.early_stopping == "val" else "inner"
            score = [m[f"{key}_auc"], -m[f"{key}_loss"]]  # AUC, ties broken by lower BCE
            if self.best_score is None or score > self.best_score:
                self.best_score, self.best_epoch, self.bad_epochs = score, epoch, 0
                if self.dist.is_main:
                    save_checkpoint({"network": unwrap(self.network).state_dict(), "epoch": epoch,
                                     "score": score}, self.output_folder / "checkpoint_best.pth")
            else:
                self.bad_epochs += 1
        return m

    def is_done(self, epoch: int, metrics: dict) -> bool:
        if self.early_stopping != "none" and self.bad_epochs >= self.patience:
            self.stopped = True
        return self.stopped

    def extra_state(self) -> dict:
        return {"best_score": self.best_score, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs,
                "stopped": self.stopped, "finished": False}

    def load_extra_state(self, state: dict) -> None:
        self.best_score = state.get("best_score")
        self.best_epoch = int(state.get("best_epoch", -1))
        self.bad_epochs = int(state.get("bad_epochs", 0))
        self.stopped = bool(state.get("stopped", False))
        if self.stopped:
            self.start_epoch = self.num_epochs  # was early-stopped: do not train further

    def run(self) -> Path:
        if self.continue_training and fold_is_finished(self.output_folder):
            st = load_checkpoint(self.output_folder / FINAL_CHECKPOINT)
            ex = st.get("extra", {})
            if ex.get("stopped") or len(st.get("history", [])) >= self.num_epochs:  # else: --c with more epochs
                self.log("already finished (%s); nothing to do", self.output_folder)
                return self.output_folder
        return super().run()

    # -- outputs
    def final_state(self, epoch: int) -> dict:
        """The selected weights and everything :func:`load_fold_classifier` needs."""
        state = self.checkpoint_state(self.selected_epoch)
        state["network"] = unwrap(self.network).state_dict()
        state["extra"] = dict(self.extra_state(), finished=True, inference=self.inference_info())
        return state

    def inference_info(self) -> dict:
        return {"arch": self.arch, "cls_config": self.config, "vae_config": self.vae_config,
                "scale_factor": float(self.scale_factor), "crop_size": self.plans.crop_size,
                "crop_source": self.crop_source, "synthetic_ratio": self.synthetic_ratio,
                "train_prevalence": self.train_prevalence, "real_prevalence": self.real_prevalence,
                "threshold": self.threshold, "threshold_source": self.threshold_source,
                "early_stopping": self.early_stopping, "selected_epoch": self.selected_epoch}

    def finish(self) -> None:
        if not self.dist.is_main:
            return
        net = unwrap(self.network)
        best = self.output_folder / "checkpoint_best.pth"
        last_epoch = self.history[-1]["epoch"] if self.history else -1
        self.selected_epoch = last_epoch
        if self.early_stopping != "none" and best.is_file():
            st = load_checkpoint(best, self.device)
            net.load_state_dict(st["network"])
            self.selected_epoch = int(st["epoch"])
        recal = (lambda p: stats.recalibrate_prior(p, self.train_prevalence, self.real_prevalence))
        # threshold on training data only
        if self.x_inner is not None:
            thr_ids, thr_x, thr_y, self.threshold_source = self.inner_ids, self.x_inner, self.y_inner, "inner_split"
        else:
            real_n = len(self.fit_ids)
            thr_ids, thr_x = self.fit_ids, self.x_train[:real_n].numpy()
            thr_y, self.threshold_source = self.y_train[:real_n].numpy().astype(int), "training_cases"
        thr_raw = sigmoid(predict_logits(net, thr_x, self.device))
        thr_p = recal(thr_raw)
        method = self.config.get("threshold_method", "youden")
        self.threshold = (stats.select_threshold(thr_y, thr_p, method) if len(np.unique(thr_y)) == 2
                          else float(self.real_prevalence))
        val_raw = sigmoid(predict_logits(net, self.x_val, self.device))
        val_p = recal(val_raw)
        write_predictions_csv(self.output_folder / OOF_FILE,
                              [{"case_id": c, "label": int(y), "probability": float(p), "probability_raw": float(r)}
                               for c, y, p, r in zip(self.val_ids, self.y_val, val_p, val_raw)],
                              ["case_id", "label", "probability", "probability_raw"])
        write_predictions_csv(self.output_folder / TRAIN_PRED_FILE,
                              [{"case_id": c, "label": int(y), "probability": float(p), "probability_raw": float(r),
                                "set": self.threshold_source} for c, y, p, r in zip(thr_ids, thr_y, thr_p, thr_raw)],
                              ["case_id", "label", "probability", "probability_raw", "set"])
        val_auc = stats.roc_auc(self.y_val, val_p) if len(np.unique(self.y_val)) == 2 else float("nan")
        summary = {
            "dataset": self.dataset_name, "fold": self.fold, "run": self.stage_dir, "arch": self.arch,
            "synthetic_ratio": self.synthetic_ratio, "crop_source": self.crop_source,
            "early_stopping": self.early_stopping, "selected_epoch": self.selected_epoch,
            "epochs_run": len(self.history), "best_selection_score": self.best_score,
            "val_auc": val_auc, "val_ids": self.val_ids, "train_ids": self.train_ids, "fit_ids": self.fit_ids,
            "inner_val_ids": self.inner_ids,
            "synthetic_ids": [e["id"] for e in self.synthetic_entries],
            "synthetic_sources": sorted({e["source_case"] for e in self.synthetic_entries}),
            "n_train_real": len(self.fit_ids), "n_train_synthetic": len(self.synthetic_entries),
            "train_prevalence": self.train_prevalence, "real_prevalence": self.real_prevalence,
            "threshold": self.threshold, "threshold_source": self.threshold_source,
            "threshold_method": method, "configuration": self.configuration_name,
            "seen_train_items": sorted(self.seen_train_items),
            "vae_checkpoint": getattr(self, "vae_checkpoint", None), "world_size": self.dist.world_size,
        }
        save_json(summary, self.output_folder / SUMMARY_FILE)
        self.log("finished: selected epoch %d (%s early stopping), validation AUC %.4f, threshold %.4f (%s)",
                 self.selected_epoch, self.early_stopping, val_auc, self.threshold, self.threshold_source)


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
    return stats.recalibrate_prior(raw, info["train_prevalence"], info["real_prevalence"])


# ----------------------------------------------------------------------------- CLI
def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("NeoCls")
    g.add_argument("--arch", default=None,
                   help="pattennet (default; variants pattennet_dab{0..3}, pattennet_channel, pattennet_spatial), "
                        "resnet50/101/152/200, densenet121/169/201/264, efficientnet_b0..b3, swin; "
                        "radiomics (optional extra: pyradiomics + logistic regression)")
    g.add_argument("--synthetic-ratio", dest="synthetic_ratio", type=float, default=0.0,
                   help="fraction of the class gap filled with synthetic minority patches: 0, 0.25, 0.5, 0.75, 1.0")
    g.add_argument("--crop-source", dest="crop_source", choices=("gt", "pred"), default="gt",
                   help="TLCR patches from ground-truth labels (gt) or NeoSeg predictions (pred)")
    g.add_argument("--early-stopping", dest="early_stopping", choices=EARLY_STOPPING, default=None,
                   help="val: on the validation fold (paper, optimistic); inner: stratified inner split of the "
                        "training fold; none: last epoch (default: plans, 'val')")


def trainer_from_args(args) -> ClsTrainer:
    return ClsTrainer(args.dataset, args.fold, arch=args.arch, synthetic_ratio=args.synthetic_ratio,
                      crop_source=args.crop_source, early_stopping=args.early_stopping,
                      configuration=args.configuration, device=args.device, epochs=args.epochs,
                      continue_training=args.continue_training, overwrite=args.overwrite)


def train_from_args(args) -> Path:
    t = trainer_from_args(args)
    try:
        return t.run()
    finally:
        t.dist.close()
