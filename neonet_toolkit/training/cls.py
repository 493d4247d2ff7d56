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
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.model_selection import StratifiedKFold
from tqdm import tqdm

from neonet_toolkit.networks.classifiers import build_classifier, canonical_arch, needs_vae, parse_arch
from neonet_toolkit.networks.generative import load_fold_vae, stage_checkpoint_path, vae_checkpoint_path
from neonet_toolkit.preprocessing.synthetic_sets import MANIFEST
from neonet_toolkit.training.base import NeoNetTrainer, batches
from neonet_toolkit.training.cls_artifacts import (
    OOF_FILE,
    SUMMARY_FILE,
    TRAIN_PRED_FILE,
    case_labels,
    write_predictions_csv,
)
from neonet_toolkit.training.cls_data import (
    FLIP_VARIANTS,
    arm_training_set,
    augment_batch,
    check_ratio,
    draw_flip_variants,
    encode_latents,
    encoder_is_frozen,
    epoch_order,
    inner_split,
    load_real,
    load_synthetic,
    predict_logits,
    select_epoch,
    select_synthetic,
    sigmoid,
)
from neonet_toolkit.utilities import stats
from neonet_toolkit.utilities.checkpoints import check_synthetic_set, load_checkpoint, save_checkpoint
from neonet_toolkit.utilities.devices import autocast, make_grad_scaler, unwrap
from neonet_toolkit.utilities.identifiers import (
    ARMS,
    BEST_CHECKPOINT,
    CROP_SOURCES,
    EARLY_STOPPING_MODES,
    FINAL_CHECKPOINT,
    PROTOCOL_LABELS,
    cls_run_name,
    fold_is_finished,
)
from neonet_toolkit.utilities.io import load_json, save_json

logger = logging.getLogger(__name__)

RATIOS = (0.0, 0.25, 0.5, 0.75, 1.0)
EARLY_STOPPING = EARLY_STOPPING_MODES
NESTED_FILE = "nested_selection.json"


# ----------------------------------------------------------------------------- naming
def run_name(arch: str, ratio: float, crop_source: str = "gt", early_stopping: str = "val",
             arm: str = "synthetic") -> str:
    """Result-folder prefix, e.g. ``cls_pattennet_1_esnested`` or ``cls_resnet50_0.5_over``."""
    return cls_run_name(canonical_arch(arch), ratio, crop_source, early_stopping, arm)


# ----------------------------------------------------------------------------- trainer
class ClsTrainer(NeoNetTrainer):
    stage = "cls"

    def __init__(self, dataset, fold: int, arch: str | None = None, synthetic_ratio: float = 0.0,
                 crop_source: str = "gt", early_stopping: str | None = None, arm: str = "synthetic", **kw):
        self.synthetic_ratio = check_ratio(synthetic_ratio)
        if crop_source not in CROP_SOURCES:
            raise ValueError(f"--crop-source must be gt or pred, got {crop_source!r}.")
        if arm not in ARMS:
            raise ValueError(f"--arm must be one of {ARMS}, got {arm!r}.")
        self.crop_source, self.arm = crop_source, arm
        super().__init__(dataset, fold, **kw)
        self.arch = canonical_arch(arch or self.config["architecture"])
        self.early_stopping = early_stopping or self.config["early_stopping"]
        if self.early_stopping not in EARLY_STOPPING:
            raise ValueError(f"early_stopping must be one of {EARLY_STOPPING}, got {self.early_stopping!r}.")
        self.stage_dir = run_name(self.arch, self.synthetic_ratio, crop_source, self.early_stopping, arm)
        self.output_folder = self.fold_output_folder(self.stage_dir)
        self.patience = int(self.config["patience"])
        # epochs before this are neither selected nor counted against the patience (a noisy small
        # validation fold can otherwise "select" the untrained network and stop training early)
        self.min_epochs = int(self.config["min_epochs"])
        self.max_epochs = self.num_epochs
        self.best_score: list[float] | None = None
        self.best_epoch = -1
        self.bad_epochs = 0
        self.stopped = False
        self.seen_train_items: set[str] = set()
        self.nested: dict | None = None
        self.steps_run = 0

    @property
    def protocol_label(self) -> str:
        return PROTOCOL_LABELS[self.early_stopping]

    # -- data and model
    def _check_synthetic_upstream(self, manifest_file: Path) -> None:
        """Refuse a synthetic set made by a superseded VAE / LDM / ControlNet; record the manifest's hash."""
        name, fold, plans = self.dataset_name, self.fold, self.plans["plans_name"]
        check_synthetic_set(load_json(manifest_file), manifest_file,
                            {"controlnet": stage_checkpoint_path(name, "controlnet", fold, plans),
                             "vae": vae_checkpoint_path(name, fold, plans),
                             "ldm": stage_checkpoint_path(name, "ldm", fold, plans)},
                            f"NeoCls {self.stage_dir} fold {fold}",
                            f"Regenerate it: `neonet_generate -d {name} -f {fold} --ratio {self.synthetic_ratio:g}"
                            f"{' --n-majority -1' if self.arm == 'both' else ''}"
                            f"{' --crop-source pred' if self.crop_source == 'pred' else ''} --overwrite`.")
        self.register_upstream(synthetic_manifest=manifest_file)

    def _load_data(self) -> None:
        labels = case_labels(self.preprocessed, self.crop_source)
        self.labels = labels
        crop = self.plans.crop_size
        bad = sorted(set(self.train_ids) & set(self.val_ids))
        if bad:
            raise ValueError(f"splits_final.json fold {self.fold}: {bad[:5]} in both train and val.")
        fit_ids, inner_ids = list(self.train_ids), []
        if self.early_stopping == "inner":
            fit_ids, inner_ids = inner_split(self.train_ids, labels, float(self.config["inner_val_fraction"]),
                                             self.seed)
        self.fit_ids, self.inner_ids = fit_ids, inner_ids
        entries: list[dict] = []
        if self.synthetic_ratio > 0 and self.arm in ("synthetic", "both"):
            entries, syn_folder = select_synthetic(self.dataset_name, self.fold, self.synthetic_ratio, self.train_ids,
                                                   self.val_ids, self.plans["plans_name"],
                                                   both_classes=self.arm == "both", crop_source=self.crop_source)
            dropped = [e["id"] for e in entries if e["source_case"] in set(inner_ids)]
            if dropped:
                self.log("inner split: %d synthetic patch(es) derived from inner-validation cases not used",
                         len(dropped))
            entries = [e for e in entries if e["source_case"] not in set(inner_ids)]
            self._check_synthetic_upstream(syn_folder.parent / MANIFEST)
            syn = load_synthetic(entries, syn_folder, crop)
        else:
            syn = np.zeros((0, 2, *crop), np.float32)
        self.synthetic_entries = entries
        real = load_real(self.preprocessed, self.crop_source, fit_ids)
        self.x_train = torch.from_numpy(np.concatenate([real, syn]) if len(syn) else real)
        self.real_labels = [labels[c] for c in fit_ids]
        self.y_train = torch.tensor(self.real_labels + [int(e["label"]) for e in entries], dtype=torch.float32)
        self.train_item_ids = list(fit_ids) + [f"synthetic:{e['id']}<-{e['source_case']}" for e in entries]
        self.x_val = load_real(self.preprocessed, self.crop_source, self.val_ids)
        self.y_val = np.array([labels[c] for c in self.val_ids])
        self.x_inner = load_real(self.preprocessed, self.crop_source, inner_ids) if inner_ids else None
        self.y_inner = np.array([labels[c] for c in inner_ids]) if inner_ids else None
        real_y = np.array([labels[c] for c in self.train_ids])
        self.real_prevalence = float(real_y.mean())
        self.train_set = self._training_set(set(fit_ids), salt=0)
        self.train_prevalence = self.train_set["prevalence"]
        self.log("data: %d real + %d synthetic training patches, arm %s (effective prevalence %.3f; real %.3f), "
                 "%d items/epoch, %d inner-val, %d validation cases, crop source %s", len(fit_ids), len(entries),
                 self.arm, self.train_prevalence, self.real_prevalence, self.train_set["budget"], len(inner_ids),
                 len(self.val_ids), self.crop_source)
        if len(np.unique(self.y_train.numpy())) < 2:
            raise ValueError(f"fold {self.fold}: the training set holds a single class.")

    def _training_set(self, allowed: set[str], salt: int) -> dict:
        return arm_training_set(self.real_labels, [int(e["label"]) for e in self.synthetic_entries],
                                [e["source_case"] for e in self.synthetic_entries], self.fit_ids, allowed,
                                self.synthetic_ratio if self.arm != "synthetic" or self.synthetic_entries else 0.0,
                                self.arm, self.seed * 7 + salt)

    def _new_model(self) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        net = build_classifier(self.arch, self.config, 2, self.vae_config, self.scale_factor, vae=self._vae)
        net = net.to(self.device)
        params = [p for p in net.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=float(self.config["lr"]), weight_decay=float(self.config["weight_decay"]))
        return net, opt

    def build(self) -> None:
        self._load_data()
        self.vae_config, self.scale_factor = None, 1.0
        self._vae = None
        if needs_vae(self.arch):
            ckpt = vae_checkpoint_path(self.dataset_name, self.fold, self.plans["plans_name"])
            if not ckpt.is_file():
                raise FileNotFoundError(f"PattenNet uses the frozen VAE encoder of fold {self.fold}, but {ckpt} does "
                                        f"not exist: run `neonet_train {self.dataset_name} vae {self.fold}` first.")
            self._vae, self.scale_factor, self.vae_config = load_fold_vae(self.dataset_name, self.fold, "cpu",
                                                                          self.plans["plans_name"])
            self.vae_checkpoint = str(ckpt)
            self.register_upstream(vae=ckpt)
        net, self.optimizer = self._new_model()
        self.network = self.dist.wrap(net)
        self.scaler = make_grad_scaler(self.device)
        n_train = sum(p.numel() for p in net.parameters() if p.requires_grad)
        self.log("arch=%s (%s) trainable params=%d frozen=%d", self.arch, parse_arch(self.arch, self.config),
                 n_train, sum(p.numel() for p in net.parameters() if not p.requires_grad))
        self.z_train = None
        if self.config["cache_latents"] and encoder_is_frozen(net):
            if self.dist.world_size > 1:
                self.log("latent cache off under DDP (the wrapped model is called on images)")
            else:
                t0 = time.time()
                variants = tuple(range(len(FLIP_VARIANTS))) if self.config["augment"] else (0,)
                self.z_train = encode_latents(net, self.x_train, self.device, variants)
                net.train()
                self.log("frozen-encoder latents cached for %d training patches x %d flip variants %s in %.1fs",
                         len(self.x_train), len(variants), tuple(self.z_train.shape[2:]), time.time() - t0)
        if self.early_stopping == "nested":
            self._nested_selection()

    # -- nested selection: inner stratified k-fold of the training fold
    def _nested_selection(self) -> None:
        record = self.output_folder / NESTED_FILE
        if self.continue_training and record.is_file():
            self.nested = load_json(record)
            self.log("nested selection reused from %s: epoch %d", record, self.nested["selected_epoch"])
        else:
            self.nested = self._run_inner_cv()
            if self.dist.is_main:
                save_json(self.nested, record)
        self.num_epochs = int(self.nested["selected_epoch"]) + 1  # the refit on the whole training fold

    def _run_inner_cv(self) -> dict:
        k = int(self.config["inner_folds"])
        ids = list(self.fit_ids)
        y = np.array(self.real_labels, int)
        if min(np.bincount(y, minlength=2)) < k:
            raise ValueError(f"fold {self.fold}: nested selection with {k} inner folds needs >= {k} training cases of "
                             "each class; lower cls.inner_folds in neonet_plans.json or use --early-stopping none.")
        epochs = self.max_epochs
        logits = np.full((epochs, len(ids)), np.nan)
        inner = []
        splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=self.seed)
        for j, (tr, va) in enumerate(tqdm(list(splitter.split(np.zeros(len(ids)), y)), desc=f"nested fold {self.fold}",
                                          disable=None)):
            allowed = {ids[i] for i in tr}
            tset = self._training_set(allowed, salt=j + 1)
            net, opt = self._new_model()
            scaler = make_grad_scaler(self.device)
            used = sorted({self.train_item_ids[i] for i in tset["items"]})
            for epoch in range(epochs):
                self._run_epoch(net, opt, scaler, tset, epoch, salt=j + 1, track=False)
                logits[epoch, va] = self._predict_items(net, va)
            inner.append({"inner_fold": j, "train_ids": sorted(allowed), "val_ids": sorted(ids[i] for i in va),
                          "train_items": used, "prevalence": tset["prevalence"], "budget": tset["budget"]})
            self.log("nested: inner fold %d/%d trained (%d items/epoch, %d epochs)", j + 1, k, tset["budget"], epochs)
        # inner out-of-fold probabilities, each inner model's prior mapped to the real training prevalence
        prev = np.array([inner[j]["prevalence"] for j in range(k)])
        fold_of = np.empty(len(ids), int)
        for j, r in enumerate(inner):
            fold_of[[ids.index(c) for c in r["val_ids"]]] = j
        probs = stats.recalibrate_prior_per_item(sigmoid(logits), prev[fold_of], self.real_prevalence)
        eps = 1e-7
        curve_auc = np.array([stats.roc_auc(y, probs[e]) for e in range(epochs)])
        pe = np.clip(probs, eps, 1 - eps)
        curve_bce = -np.mean(y * np.log(pe) + (1 - y) * np.log(1 - pe), axis=1)
        sel = select_epoch(curve_auc, curve_bce, self.min_epochs, int(self.config["selection_window"]))
        oof = probs[sel]
        calibration = stats.fit_calibration(y, oof, self.config["calibration"],
                                            int(self.config["isotonic_min_per_class"]))
        cal = stats.apply_calibration(oof, calibration)
        method = self.config["threshold_method"]
        threshold = float(stats.select_threshold(y, cal, method))
        self.log("nested: selected epoch %d of %d (inner OOF AUC %.3f, BCE %.3f); calibration %s; threshold %.4f (%s)",
                 sel, epochs, curve_auc[sel], curve_bce[sel], calibration["method"], threshold, method)
        return {"protocol": "nested", "inner_folds": inner, "selected_epoch": int(sel),
                "curve_inner_auc": [float(v) for v in curve_auc], "curve_inner_bce": [float(v) for v in curve_bce],
                "inner_oof": [{"case_id": c, "label": int(l), "probability_prior": float(p), "probability": float(q)}
                              for c, l, p, q in zip(ids, y, oof, cal)],
                "calibration": calibration, "threshold": threshold, "threshold_method": method,
                "selection_rule": f"max centred {self.config['selection_window']}-epoch mean of pooled inner-OOF "
                                  f"AUC, ties by lower BCE, epochs >= {self.min_epochs}"}

    @torch.no_grad()
    def _predict_items(self, net: torch.nn.Module, idx) -> np.ndarray:
        """Logits for training items (unflipped), from the frozen-latent cache when there is one."""
        if self.z_train is None:
            return predict_logits(net, self.x_train[idx].numpy(), self.device)
        net.eval()
        z = self.z_train[idx, 0].to(self.device)
        with autocast(self.device):
            return unwrap(net).forward_latents(z).float().reshape(-1).cpu().numpy()

    # -- loop
    def _run_epoch(self, net: torch.nn.Module, optimizer, scaler, tset: dict, epoch: int, salt: int = 0,
                   track: bool = True) -> dict:
        """One epoch of ``tset["budget"]`` items (shared by the final model and the inner-CV models)."""
        net.train()
        rng = np.random.default_rng(self.seed * 1000 + epoch + 104_729 * salt)  # identical on every rank
        order = [tset["items"][i] for i in epoch_order(len(tset["items"]), tset["budget"], rng)]
        mine = self.dist.shard(order) if track else order
        bs = int(self.config["batch_size"])
        aug_rng = np.random.default_rng(self.seed * 1000 + epoch + 7919 * (self.dist.rank + 1) + 104_729 * salt)
        weights = torch.from_numpy(tset["weights"])
        augment = bool(self.config["augment"])
        losses, steps = [], 0
        plain = unwrap(net)
        for chunk in batches(mine, bs):
            if len(chunk) == 1 and len(mine) > 1:
                continue  # BatchNorm nets cannot train on one sample; it is seen in another epoch
            y = self.y_train[chunk].to(self.device)
            if track:
                self.seen_train_items.update(self.train_item_ids[i] for i in chunk)
            optimizer.zero_grad(set_to_none=True)
            if self.z_train is not None:  # frozen encoder: same draws as augment_batch, latents from the cache
                v = draw_flip_variants(len(chunk), aug_rng) if augment else [0] * len(chunk)
                z = self.z_train[chunk, v].to(self.device, non_blocking=True)
                with autocast(self.device):
                    logits = plain.forward_latents(z).reshape(-1).float()
            else:
                x = self.x_train[chunk]
                if augment:
                    x = augment_batch(x, aug_rng)
                x = x.to(self.device, non_blocking=True)
                with autocast(self.device):
                    logits = net(x).reshape(-1).float()
            loss = F.binary_cross_entropy_with_logits(logits, y, weight=weights[chunk].to(self.device))
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            losses.append(float(loss.detach()))
            steps += 1
        return {"train_loss": float(np.mean(losses)) if losses else 0.0, "steps": steps}

    def train_epoch(self, epoch: int) -> dict:
        out = self._run_epoch(self.network, self.optimizer, self.scaler, self.train_set, epoch)
        self.steps_run += out["steps"]
        return {"train_loss": self.dist.mean(out["train_loss"]), "optimizer_steps": out["steps"]}

    def _eval(self, x: np.ndarray, y: np.ndarray) -> tuple[float, float, np.ndarray]:
        logits = predict_logits(unwrap(self.network), x, self.device)
        p = sigmoid(logits)
        loss = float(F.binary_cross_entropy_with_logits(torch.tensor(logits, dtype=torch.float64),
                                                   torch.tensor(y, dtype=torch.float64)))
        auc = stats.roc_auc(y, p) if len(np.unique(y)) == 2 else float("nan")
        return auc, loss, p

    def validate(self, epoch: int) -> dict:
        m = {}
        if self.early_stopping == "val":  # the paper's protocol: the reported fold drives the selection
            auc, loss, _ = self._eval(self.x_val, self.y_val)
            m.update(val_auc=auc, val_loss=loss)
        if self.x_inner is not None:
            a, l_, _ = self._eval(self.x_inner, self.y_inner)
            m.update(inner_auc=a, inner_loss=l_)
        if self.early_stopping in ("val", "inner") and epoch + 1 >= self.min_epochs:
            key = "val" if self.early_stopping == "val" else "inner"
            score = [m[f"{key}_auc"], -m[f"{key}_loss"]]  # AUC, ties broken by lower BCE
            if self.best_score is None or score > self.best_score:
                self.best_score, self.best_epoch, self.bad_epochs = score, epoch, 0
                if self.dist.is_main:
                    save_checkpoint({"network": unwrap(self.network).state_dict(), "epoch": epoch,
                                     "score": score}, self.output_folder / BEST_CHECKPOINT)
            else:
                self.bad_epochs += 1
        return m

    def is_done(self, epoch: int, metrics: dict) -> bool:
        if self.early_stopping in ("val", "inner") and self.bad_epochs >= self.patience:
            self.stopped = True
        return self.stopped

    def extra_state(self) -> dict:
        return {"best_score": self.best_score, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs,
                "stopped": self.stopped, "finished": False, "steps_run": self.steps_run}

    def load_extra_state(self, state: dict) -> None:
        self.best_score = state.get("best_score")
        self.best_epoch = int(state.get("best_epoch", -1))
        self.bad_epochs = int(state.get("bad_epochs", 0))
        self.stopped = bool(state.get("stopped", False))
        self.steps_run = int(state.get("steps_run", 0))
        if self.stopped:
            self.start_epoch = self.num_epochs  # was early-stopped: do not train further

    def run(self) -> Path:
        if self.continue_training and fold_is_finished(self.output_folder):
            st = load_checkpoint(self.output_folder / FINAL_CHECKPOINT)
            ex = st.get("extra", {})
            done = (ex.get("stopped") or self.early_stopping == "nested"
                    or len(st.get("history", [])) >= self.num_epochs)
            if done:  # else: --c with more epochs
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
                "crop_source": self.crop_source, "synthetic_ratio": self.synthetic_ratio, "arm": self.arm,
                "train_prevalence": self.train_prevalence, "real_prevalence": self.real_prevalence,
                "calibration": self.calibration, "threshold": self.threshold,
                "threshold_source": self.threshold_source, "threshold_method": self.threshold_method,
                "early_stopping": self.early_stopping, "protocol": self.protocol_label,
                "selected_epoch": self.selected_epoch}

    def finish(self) -> None:
        if not self.dist.is_main:
            return
        net = unwrap(self.network)
        best = self.output_folder / BEST_CHECKPOINT
        last_epoch = self.history[-1]["epoch"] if self.history else -1
        self.selected_epoch = last_epoch
        if self.early_stopping in ("val", "inner") and best.is_file():
            st = load_checkpoint(best, self.device)
            net.load_state_dict(st["network"])
            self.selected_epoch = int(st["epoch"])
        recal = (lambda p: stats.recalibrate_prior(p, self.train_prevalence, self.real_prevalence))
        self.threshold_method = self.config["threshold_method"]
        self.calibration = {"method": "none"}
        if self.nested is not None:  # threshold and calibration from the inner out-of-fold predictions
            rows = self.nested["inner_oof"]
            thr_ids = [r["case_id"] for r in rows]
            thr_y = np.array([r["label"] for r in rows])
            thr_raw = np.array([r["probability_prior"] for r in rows])
            thr_p = np.array([r["probability"] for r in rows])
            self.calibration = dict(self.nested["calibration"])
            self.threshold, self.threshold_source = float(self.nested["threshold"]), "nested_inner_oof"
        else:  # legacy protocols: threshold on training data only (inner split if present, else training cases)
            if self.x_inner is not None:
                thr_ids, thr_x, thr_y, self.threshold_source = self.inner_ids, self.x_inner, self.y_inner, "inner_split"
            else:
                real_n = len(self.fit_ids)
                thr_ids, thr_x = self.fit_ids, self.x_train[:real_n].numpy()
                thr_y, self.threshold_source = self.y_train[:real_n].numpy().astype(int), "training_cases"
            thr_raw = sigmoid(predict_logits(net, thr_x, self.device))
            thr_p = recal(thr_raw)
            self.threshold = (stats.select_threshold(thr_y, thr_p, self.threshold_method)
                              if len(np.unique(thr_y)) == 2 else float(self.real_prevalence))
        val_raw = sigmoid(predict_logits(net, self.x_val, self.device))
        val_p = stats.apply_calibration(recal(val_raw), self.calibration)
        write_predictions_csv(self.output_folder / OOF_FILE,
                              [{"case_id": c, "label": int(y), "probability": float(p), "probability_raw": float(r)}
                               for c, y, p, r in zip(self.val_ids, self.y_val, val_p, val_raw)],
                              ["case_id", "label", "probability", "probability_raw"])
        write_predictions_csv(self.output_folder / TRAIN_PRED_FILE,
                              [{"case_id": c, "label": int(y), "probability": float(p), "probability_raw": float(r),
                                "set": self.threshold_source} for c, y, p, r in zip(thr_ids, thr_y, thr_p, thr_raw)],
                              ["case_id", "label", "probability", "probability_raw", "set"])
        val_auc = stats.roc_auc(self.y_val, val_p) if len(np.unique(self.y_val)) == 2 else float("nan")
        nested = self.nested or {}
        summary = {
            "dataset": self.dataset_name, "fold": self.fold, "run": self.stage_dir, "arch": self.arch,
            "synthetic_ratio": self.synthetic_ratio, "arm": self.arm, "crop_source": self.crop_source,
            "early_stopping": self.early_stopping, "protocol": self.protocol_label,
            "selected_epoch": self.selected_epoch, "epochs_run": len(self.history),
            "best_selection_score": self.best_score, "optimizer_steps": self.steps_run,
            "items_per_epoch": self.train_set["budget"],
            "val_auc": val_auc, "val_ids": self.val_ids, "train_ids": self.train_ids, "fit_ids": self.fit_ids,
            "inner_val_ids": self.inner_ids,
            "nested_inner_folds": [{"train_ids": r["train_ids"], "val_ids": r["val_ids"]}
                                   for r in nested.get("inner_folds", [])],
            "selection_rule": nested.get("selection_rule", self.early_stopping),
            "selection_ids": sorted({c for r in nested.get("inner_folds", []) for c in r["val_ids"]}
                                    or (self.val_ids if self.early_stopping == "val" else self.inner_ids)),
            "calibration": self.calibration, "calibration_ids": thr_ids if self.nested is not None else [],
            "threshold_ids": list(thr_ids),
            "synthetic_ids": [e["id"] for e in self.synthetic_entries],
            "synthetic_sources": sorted({e["source_case"] for e in self.synthetic_entries}),
            "n_train_real": len(self.fit_ids), "n_train_synthetic": len(self.synthetic_entries),
            "train_prevalence": self.train_prevalence, "real_prevalence": self.real_prevalence,
            "threshold": self.threshold, "threshold_source": self.threshold_source,
            "threshold_method": self.threshold_method, "configuration": self.configuration_name,
            "seen_train_items": sorted(self.seen_train_items),
            "vae_checkpoint": getattr(self, "vae_checkpoint", None), "world_size": self.dist.world_size,
        }
        save_json(summary, self.output_folder / SUMMARY_FILE)
        self.log("finished (%s): selected epoch %d, validation AUC %.4f, threshold %.4f (%s), calibration %s",
                 self.protocol_label, self.selected_epoch, val_auc, self.threshold, self.threshold_source,
                 self.calibration["method"])


# ----------------------------------------------------------------------------- CLI
def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("NeoCls")
    g.add_argument("--arch", default=None,
                   help="pattennet (default; variants pattennet_dab{0..3}, pattennet_channel, pattennet_spatial; "
                        "fine-detail variants pattennet_fine (recommended when the cue may be a few voxels thin), "
                        "pattennet_ms, pattennet_fb, pattennet_ms_fb), "
                        "resnet50/101/152/200, densenet121/169/201/264, efficientnet_b0..b3, swin; "
                        "radiomics (optional extra: pyradiomics + logistic regression)")
    g.add_argument("--synthetic-ratio", dest="synthetic_ratio", type=float, default=0.0,
                   help="fraction of the class gap filled with synthetic minority patches: 0, 0.25, 0.5, 0.75, 1.0")
    g.add_argument("--crop-source", dest="crop_source", choices=("gt", "pred"), default="gt",
                   help="TLCR patches from ground-truth labels (gt) or NeoSeg predictions (pred)")
    g.add_argument("--early-stopping", dest="early_stopping", choices=EARLY_STOPPING, default=None,
                   help="model selection: nested (default in the plans: inner stratified k-fold of the training "
                        "fold picks the epoch, fits calibration and threshold, then a refit on the whole training "
                        "fold); val: on the reported validation fold (paper protocol, optimistic); inner: one "
                        "stratified inner split; none: last epoch")
    g.add_argument("--arm", choices=ARMS, default="synthetic",
                   help="training set at a synthetic ratio > 0: synthetic (NeoGen minority patches, the paper), "
                        "both (NeoGen patches of both classes), oversample (real minority repeated), weighted "
                        "(class-weighted loss); every arm of a ratio runs the same optimizer steps")


def trainer_from_args(args) -> ClsTrainer:
    return ClsTrainer(args.dataset, args.fold, arch=args.arch, synthetic_ratio=args.synthetic_ratio,
                      crop_source=args.crop_source, early_stopping=args.early_stopping, arm=args.arm,
                      configuration=args.configuration, device=args.device, epochs=args.epochs,
                      continue_training=args.continue_training, overwrite=args.overwrite)


def train_from_args(args) -> Path:
    t = trainer_from_args(args)
    try:
        return t.run()
    finally:
        t.dist.close()
