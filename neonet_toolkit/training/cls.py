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

Model selection (``--early-stopping``, default: the plans' ``cls.early_stopping``, ``nested``): one
strategy object per protocol (:mod:`neonet_toolkit.training.cls_protocols`). ``nested``: an inner stratified
k-fold of the training fold picks the epoch and fits calibration and threshold, then a refit on the whole
training fold; ``val`` follows the paper (patience on the validation fold's AUC; the chosen epoch has seen the
validation labels, so its AUC is optimistic); ``inner`` holds out a stratified part of the training fold (and
the synthetic patches derived from it) for model selection; ``none`` keeps the last epoch. The mode is part of
the run name and reported.

Synthetic quality gate: a run that trains on synthetic patches (ratio > 0 in the ``synthetic`` or ``both`` arm,
or ``auto``) first asks the set's ``quality.json`` (``neonet_evaluate DATASET gen``) through
:func:`~neonet_toolkit.preprocessing.synthetic_sets.gate_verdict` with the plans' ``gen_quality`` thresholds.
A failed gate refuses the run (``ValueError`` naming the figures) unless ``allow_failed_gate`` (CLI
``--allow-failed-gate``), which logs a warning and records the verdict with ``"overridden": true`` in
``cls_summary.json`` and the checkpoint's inference info. A passed verdict is recorded too.

``--synthetic-ratio auto`` (nested protocol only): the ratio is chosen per training fold among the plans'
``cls.ratio_candidates`` by the nested inner CV (one inner CV per candidate, best pooled inner-OOF AUC at its
selected epoch, ties to the smaller ratio); the reported fold never sees the choice. A failed (not overridden)
gate or a missing synthetic set leaves only the candidate 0. Known limitation: the generator of an outer fold was
trained on all of its training cases, so the inner-validation cases of the choice were seen by the generator
(the copy-rate gate bounds what can leak through memorised patches).

Prevalence: training on R+S shifts the class prior; probabilities are mapped back to the real
training prevalence of the fold (:func:`neonet_toolkit.utilities.stats.recalibrate_prior`).
The decision threshold is chosen on training data only (nested: inner out-of-fold predictions; inner: the
inner split; else the real training cases) and stored in the checkpoint with everything
:func:`load_fold_classifier` needs. The fold's data is assembled by
:func:`neonet_toolkit.training.cls_data.load_fold_data`.
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from neonet_toolkit.models.cls import predict_logits, sigmoid
from neonet_toolkit.networks.classifiers import build_classifier, canonical_arch, needs_vae, parse_arch
from neonet_toolkit.networks.generative import load_fold_vae, stage_checkpoint_path, vae_checkpoint_path
from neonet_toolkit.preprocessing.synthetic_sets import (
    MANIFEST,
    gate_verdict,
    load_quality,
    manifest_sha256,
    synthetic_folder,
)
from neonet_toolkit.training.base import NeoNetTrainer, batches
from neonet_toolkit.training.cls_data import (
    FLIP_VARIANTS,
    augment_batch,
    check_ratio,
    draw_flip_variants,
    encode_latents,
    encoder_is_frozen,
    epoch_order,
    load_fold_data,
    parse_ratio,
)
from neonet_toolkit.training.cls_outputs import write_fold_outputs
from neonet_toolkit.training.cls_protocols import get_protocol
from neonet_toolkit.utilities import stats
from neonet_toolkit.utilities.checkpoints import check_synthetic_set, load_checkpoint, save_checkpoint
from neonet_toolkit.utilities.devices import autocast, make_grad_scaler, unwrap
from neonet_toolkit.utilities.identifiers import (
    ARMS,
    AUTO_RATIO,
    BEST_CHECKPOINT,
    CROP_SOURCES,
    EARLY_STOPPING_MODES,
    FINAL_CHECKPOINT,
    cls_run_name,
    fold_is_finished,
)
from neonet_toolkit.utilities.io import load_json

logger = logging.getLogger(__name__)

RATIOS = (0.0, 0.25, 0.5, 0.75, 1.0)
EARLY_STOPPING = EARLY_STOPPING_MODES


# ----------------------------------------------------------------------------- naming
def run_name(arch: str, ratio: float | str, crop_source: str, early_stopping: str, arm: str = "synthetic") -> str:
    """Result-folder prefix, e.g. ``cls_pattennet_1_esnested``, ``cls_resnet50_0.5_over`` or
    ``cls_pattennet_auto_esnested``."""
    return cls_run_name(canonical_arch(arch), ratio, crop_source, early_stopping, arm)


# ----------------------------------------------------------------------------- trainer
class ClsTrainer(NeoNetTrainer):
    """Trains one NeoCls fold; the model-selection protocol (``early_stopping``, default: the plans'
    ``cls.early_stopping``) is a :class:`~neonet_toolkit.training.cls_protocols.SelectionProtocol`.

    ``synthetic_ratio``: a float in [0, 1] or ``"auto"`` (chosen on the nested inner folds among the plans'
    ``cls.ratio_candidates``; see the module docstring for its known limitation). ``allow_failed_gate``: train on
    a synthetic set that failed the quality gate (logged, and recorded as overridden)."""

    stage = "cls"

    def __init__(self, dataset, fold: int, arch: str | None = None, synthetic_ratio: float | str = 0.0,
                 crop_source: str = "gt", early_stopping: str | None = None, arm: str = "synthetic",
                 allow_failed_gate: bool = False, **kw):
        self.ratio_setting = parse_ratio(synthetic_ratio)  # a float, or "auto"
        self.auto_ratio = self.ratio_setting == AUTO_RATIO
        # the ratio in use: for auto, the largest candidate while loading, then the chosen one (protocol.prepare)
        self.synthetic_ratio = 0.0 if self.auto_ratio else self.ratio_setting
        self.allow_failed_gate = bool(allow_failed_gate)
        self.gate: dict | None = None           # the quality-gate verdict of the synthetic set (None: not gated)
        self.ratio_candidates: list[float] = []  # auto: the ratios compared on the inner folds
        self.ratio_choice: dict | None = None    # auto: the choice and every candidate's inner AUC
        if crop_source not in CROP_SOURCES:
            raise ValueError(f"--crop-source must be gt or pred, got {crop_source!r}.")
        if arm not in ARMS:
            raise ValueError(f"--arm must be one of {ARMS}, got {arm!r}.")
        self.crop_source, self.arm = crop_source, arm
        super().__init__(dataset, fold, **kw)
        self.arch = canonical_arch(arch or self.config["architecture"])
        self.early_stopping = early_stopping or self.config["early_stopping"]
        self.protocol = get_protocol(self.early_stopping)
        if self.auto_ratio and not self.protocol.chooses_ratio:
            raise ValueError(f"--synthetic-ratio auto chooses the ratio on the inner folds of the nested protocol; "
                             f"--early-stopping {self.early_stopping} has no inner folds. Use --early-stopping nested "
                             "(the plans' default) or a fixed --synthetic-ratio.")
        self.stage_dir = run_name(self.arch, self.ratio_setting, crop_source, self.early_stopping, arm)
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
        self.steps_run = 0

    @property
    def protocol_label(self) -> str:
        return self.protocol.label

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
        if self.gate is None:
            self._apply_gate(self.check_synthetic_gate())

    def warn(self, msg: str, *args) -> None:
        """A WARNING on the console, also written to the fold's training log."""
        text = msg % args if args else msg
        logger.warning("[%s fold %d] %s", self.stage, self.fold, text)
        if self.dist.is_main and self._log_file is not None:
            with open(self._log_file, "a", encoding="utf-8") as f:
                f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} WARNING {text}\n")

    # -- the synthetic quality gate
    def _synthetic_folder(self) -> Path:
        return synthetic_folder(self.dataset_name, self.fold, self.plans["plans_name"], self.crop_source)

    def check_synthetic_gate(self) -> dict:
        """The quality-gate verdict of this fold's synthetic set (plans' ``gen_quality`` thresholds); logs nothing."""
        folder = self._synthetic_folder()
        thresholds = self.plans.stage("gen_quality", self.configuration_name, self.device.type)
        verdict = gate_verdict(load_quality(folder), thresholds, manifest_sha256(folder), self.dataset_name, self.fold)
        return {**verdict, "set": str(folder), "overridden": False}

    def _gate_refusal(self, verdict: dict) -> str:
        return (f"fold {self.fold}: the synthetic set {verdict['set']} failed the quality gate: "
                f"{'; '.join(verdict['reasons'])}. Either regenerate it (a better generator, or "
                f"`neonet_generate -d {self.dataset_name} -f {self.fold} ... --overwrite`) and measure it with "
                f"`neonet_evaluate {self.dataset_name} gen -f {self.fold}`, or train on it anyway with "
                "--allow-failed-gate (recorded as overridden in the run's provenance).")

    def _apply_gate(self, verdict: dict) -> None:
        """A fixed-ratio run: refuse a failed set, or record the override; a passed verdict is recorded too."""
        if not verdict["passed"]:
            if not self.allow_failed_gate:
                raise ValueError(self._gate_refusal(verdict))
            verdict["overridden"] = True
            self.warn("--allow-failed-gate: training on %s although it failed the quality gate (%s); recorded as "
                      "overridden", verdict["set"], "; ".join(verdict["reasons"]))
        self.gate = verdict
        self.log("synthetic quality gate: %s%s", "passed" if verdict["passed"] else "FAILED",
                 " (overridden)" if verdict["overridden"] else "")

    def _auto_candidates(self) -> list[float]:
        """``auto``: the plans' candidate ratios, cut to [0] when there is no synthetic set or it failed the gate
        (not overridden); the verdict is recorded either way. Control arms (no synthetic patches) are not gated."""
        cands = sorted({check_ratio(r) for r in self.config["ratio_candidates"]})
        if not cands:
            raise ValueError("cls.ratio_candidates in neonet_plans.json is empty; --synthetic-ratio auto needs at "
                             "least one candidate ratio.")
        if self.arm not in ("synthetic", "both") or max(cands) == 0:
            return cands
        folder = self._synthetic_folder()
        if not (folder / MANIFEST).is_file():
            self.log("--synthetic-ratio auto: no synthetic set at %s; only ratio 0 is a candidate", folder)
            return [0.0]
        verdict = self.check_synthetic_gate()
        if not verdict["passed"]:
            if not self.allow_failed_gate:
                self.gate = verdict
                self.warn("--synthetic-ratio auto: %s failed the quality gate (%s); only ratio 0 is a candidate "
                          "(--allow-failed-gate compares the others anyway)", folder, "; ".join(verdict["reasons"]))
                return [0.0]
        self._apply_gate(verdict)
        return cands

    def _load_data(self) -> None:
        def split(labels: dict[str, int]) -> tuple[list[str], list[str]]:
            return self.protocol.split_training(self.train_ids, labels, self.config, self.seed)

        if self.auto_ratio:  # load the synthetic entries of the largest candidate; each candidate uses a prefix
            self.ratio_candidates = self._auto_candidates()
            self.synthetic_ratio = max(self.ratio_candidates)
            self.log("--synthetic-ratio auto: candidates %s, chosen on the inner folds",
                     [f"{r:g}" for r in self.ratio_candidates])

        self.data = d = load_fold_data(self.dataset_name, self.preprocessed, self.fold, self.train_ids, self.val_ids,
                                       split, self.synthetic_ratio, self.arm, self.crop_source,
                                       self.plans["plans_name"], self.plans.crop_size, self._check_synthetic_upstream)
        if d.dropped_synthetic:
            self.log("inner split: %d synthetic patch(es) derived from inner-validation cases not used",
                     d.dropped_synthetic)
        self.train_set = self.training_set(set(d.fit_ids), salt=0)
        self.train_prevalence = self.train_set["prevalence"]
        self.log("data: %d real + %d synthetic training patches, arm %s (effective prevalence %.3f; real %.3f), "
                 "%d items/epoch, %d inner-val, %d validation cases, crop source %s", len(d.fit_ids),
                 len(d.synthetic_entries), self.arm, self.train_prevalence, d.real_prevalence,
                 self.train_set["budget"], len(d.inner_ids), len(self.val_ids), self.crop_source)
        if len(np.unique(d.y_train.numpy())) < 2:
            raise ValueError(f"fold {self.fold}: the training set holds a single class.")

    def training_set(self, allowed: set[str], salt: int) -> dict:
        """The items, loss weights and budget of one model trained on the ``allowed`` real cases at the ratio in
        use (``synthetic_ratio``)."""
        return self.data.training_set(allowed, self.synthetic_ratio, self.arm, self.seed * 7 + salt)

    def use_ratio(self, ratio: float) -> None:
        """Switch the final model's training set to ``ratio`` (``auto``: the ratio the inner folds chose)."""
        self.synthetic_ratio = float(ratio)
        self.train_set = self.training_set(set(self.data.fit_ids), salt=0)
        self.train_prevalence = self.train_set["prevalence"]
        self.log("synthetic ratio %g: %d synthetic patches, %d items/epoch (effective prevalence %.3f)", ratio,
                 len(self.data.synthetic_for_ratio(ratio)), self.train_set["budget"], self.train_prevalence)

    def new_model(self) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        net = build_classifier(self.arch, self.config, 2, self.vae_config, self.scale_factor, vae=self._vae)
        net = net.to(self.device)
        params = [p for p in net.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=float(self.config["lr"]), weight_decay=float(self.config["weight_decay"]))
        return net, opt

    def _load_vae(self) -> None:
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

    def _cache_latents(self, net: torch.nn.Module) -> None:
        self.z_train = None
        if self.config["cache_latents"] and encoder_is_frozen(net):
            if self.dist.world_size > 1:
                self.log("latent cache off under DDP (the wrapped model is called on images)")
            else:
                t0 = time.time()
                variants = tuple(range(len(FLIP_VARIANTS))) if self.config["augment"] else (0,)
                self.z_train = encode_latents(net, self.data.x_train, self.device, variants)
                net.train()
                self.log("frozen-encoder latents cached for %d training patches x %d flip variants %s in %.1fs",
                         len(self.data.x_train), len(variants), tuple(self.z_train.shape[2:]), time.time() - t0)

    def build(self) -> None:
        self._load_data()
        self._load_vae()
        net, self.optimizer = self.new_model()
        self.network = self.dist.wrap(net)
        self.scaler = make_grad_scaler(self.device)
        n_train = sum(p.numel() for p in net.parameters() if p.requires_grad)
        self.log("arch=%s (%s) trainable params=%d frozen=%d", self.arch, parse_arch(self.arch, self.config),
                 n_train, sum(p.numel() for p in net.parameters() if not p.requires_grad))
        self._cache_latents(net)
        self.protocol.prepare(self)  # nested: the inner CV, which sets num_epochs for the refit

    @torch.no_grad()
    def predict_items(self, net: torch.nn.Module, idx) -> np.ndarray:
        """Logits for training items (unflipped), from the frozen-latent cache when there is one."""
        if self.z_train is None:
            return predict_logits(net, self.data.x_train[idx].numpy(), self.device)
        net.eval()
        z = self.z_train[idx, 0].to(self.device)
        with autocast(self.device):
            return unwrap(net).forward_latents(z).float().reshape(-1).cpu().numpy()

    # -- loop
    def run_epoch(self, net: torch.nn.Module, optimizer, scaler, tset: dict, epoch: int, salt: int = 0,
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
        x_train, y_train, item_ids = self.data.x_train, self.data.y_train, self.data.train_item_ids
        for chunk in batches(mine, bs):
            if len(chunk) == 1 and len(mine) > 1:
                continue  # BatchNorm nets cannot train on one sample; it is seen in another epoch
            y = y_train[chunk].to(self.device)
            if track:
                self.seen_train_items.update(item_ids[i] for i in chunk)
            optimizer.zero_grad(set_to_none=True)
            if self.z_train is not None:  # frozen encoder: same draws as augment_batch, latents from the cache
                v = draw_flip_variants(len(chunk), aug_rng) if augment else [0] * len(chunk)
                z = self.z_train[chunk, v].to(self.device, non_blocking=True)
                with autocast(self.device):
                    logits = plain.forward_latents(z).reshape(-1).float()
            else:
                x = x_train[chunk]
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
        out = self.run_epoch(self.network, self.optimizer, self.scaler, self.train_set, epoch)
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
        """The monitored set's AUC and BCE (``val``: the reported fold, the paper's protocol; ``inner``: the inner
        split); a better (AUC, -BCE) after ``min_epochs`` saves ``checkpoint_best.pth``."""
        key = self.protocol.monitor
        if key is None:
            return {}
        x, y = (self.data.x_val, self.data.y_val) if key == "val" else (self.data.x_inner, self.data.y_inner)
        auc, loss, _ = self._eval(x, y)
        m = {f"{key}_auc": auc, f"{key}_loss": loss}
        if epoch + 1 >= self.min_epochs:
            score = [auc, -loss]  # AUC, ties broken by lower BCE
            if self.best_score is None or score > self.best_score:
                self.best_score, self.best_epoch, self.bad_epochs = score, epoch, 0
                if self.dist.is_main:
                    save_checkpoint({"network": unwrap(self.network).state_dict(), "epoch": epoch,
                                     "score": score}, self.output_folder / BEST_CHECKPOINT)
            else:
                self.bad_epochs += 1
        return m

    def is_done(self, epoch: int, metrics: dict) -> bool:
        if self.protocol.early_stops and self.bad_epochs >= self.patience:
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
            done = (ex.get("stopped") or self.protocol.final_when_finished
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
                "synthetic_ratio_setting": self.ratio_setting, "synthetic_ratio_choice": self.ratio_choice,
                "synthetic_gate": self.gate,
                "train_prevalence": self.train_prevalence, "real_prevalence": self.data.real_prevalence,
                "calibration": self.calibration, "threshold": self.threshold,
                "threshold_source": self.threshold_source, "threshold_method": self.threshold_method,
                "early_stopping": self.early_stopping, "protocol": self.protocol_label,
                "selected_epoch": self.selected_epoch}

    def finish(self) -> None:
        """Load the selected weights, fit threshold and calibration where the protocol says, write the
        out-of-fold and training predictions and ``cls_summary.json``."""
        if not self.dist.is_main:
            return
        net = unwrap(self.network)
        best = self.output_folder / BEST_CHECKPOINT
        self.selected_epoch = self.history[-1]["epoch"] if self.history else -1
        if self.protocol.early_stops and best.is_file():
            st = load_checkpoint(best, self.device)
            net.load_state_dict(st["network"])
            self.selected_epoch = int(st["epoch"])
        d = self.data
        recal = (lambda p: stats.recalibrate_prior(p, self.train_prevalence, d.real_prevalence))
        self.threshold_method = self.config["threshold_method"]
        fit = self.protocol.fit_threshold(self, net, recal)
        self.calibration, self.threshold, self.threshold_source = fit.calibration, fit.threshold, fit.source
        val_raw = sigmoid(predict_logits(net, d.x_val, self.device))
        val_p = stats.apply_calibration(recal(val_raw), self.calibration)
        val_auc = write_fold_outputs(self, fit, val_p, val_raw)
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
    g.add_argument("--synthetic-ratio", dest="synthetic_ratio", type=_ratio_arg, default=0.0,
                   help="fraction of the class gap filled with synthetic minority patches: 0, 0.25, 0.5, 0.75, 1.0; "
                        "or auto: chosen per training fold on the nested inner folds among the plans' "
                        "cls.ratio_candidates (0 = no synthetic)")
    g.add_argument("--allow-failed-gate", dest="allow_failed_gate", action="store_true",
                   help="train on a synthetic set that failed the quality gate (C2ST realism / copy rate, measured "
                        "by `neonet_evaluate DATASET gen -f FOLD`); logged and recorded as overridden")
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


def _ratio_arg(value: str) -> float | str:
    try:
        return parse_ratio(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def trainer_from_args(args) -> ClsTrainer:
    return ClsTrainer(args.dataset, args.fold, arch=args.arch, synthetic_ratio=args.synthetic_ratio,
                      crop_source=args.crop_source, early_stopping=args.early_stopping, arm=args.arm,
                      allow_failed_gate=getattr(args, "allow_failed_gate", False),
                      configuration=args.configuration, device=args.device, epochs=args.epochs,
                      continue_training=args.continue_training, overwrite=args.overwrite)


def train_from_args(args) -> Path:
    t = trainer_from_args(args)
    try:
        return t.run()
    finally:
        t.dist.close()
