"""What every NeoNet trainer shares: fold data, result folders, checkpoint/resume, AMP, DDP, logs, curves.

A stage trainer subclasses :class:`NeoNetTrainer` and implements ``build()``, ``train_epoch()``
and optionally ``validate()`` / ``extra_state()``. The base class handles:

* the fold: train/val case ids from ``splits_final.json`` (the same folds as nnU-Net);
* the result folder ``neonet_results/DatasetXXX_Name/<stage_dir>__<plans>/fold_N/`` with
  ``checkpoint_latest.pth`` (every epoch, atomic), ``checkpoint_final.pth``, ``training_log.txt``,
  ``progress.json`` and ``progress.png``;
* resuming (``continue_training=True``) from ``checkpoint_latest.pth``; refusing to overwrite a
  finished fold unless ``overwrite=True``, and then training in ``fold_N.overwriting`` so that the existing
  fold stays in place until the new ``checkpoint_final.pth`` is written and verified (then the old fold is
  moved aside to ``fold_N.replaced-<time>`` and the new one takes its name);
* devices: ``cpu`` / ``cuda`` / ``cuda:N`` / ``auto``; AMP (bf16 where supported, else fp16 with a
  GradScaler) on CUDA only;
* torch DDP under ``torchrun`` (NCCL on CUDA, gloo on CPU): only rank 0 writes files.

Checkpoints hold only tensors and plain Python types, so they load with
``torch.load(..., weights_only=True)``.
"""
from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from matplotlib.figure import Figure

from neonet_toolkit.experiment_planning.plans import NEONET_PLANS_FILE, NeoNetPlans
from neonet_toolkit.experiment_planning.splits import get_fold, load_splits
from neonet_toolkit.utilities.checkpoints import (
    UnsafeCheckpointError,
    check_upstream,
    load_checkpoint,
    save_checkpoint,
    upstream_record,
)
from neonet_toolkit.utilities.devices import Distributed, get_device, unwrap
from neonet_toolkit.utilities.identifiers import (
    FINAL_CHECKPOINT,
    LATEST_CHECKPOINT,
    ResultLayout,
    fold_is_finished,
    staging_fold_folder,
)
from neonet_toolkit.utilities.io import move_aside, save_figure, save_json

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- folders, data
def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def plot_curves(history: list[dict], path: Path, title: str) -> None:
    keys = sorted({k for h in history for k in h if k != "epoch" and isinstance(h[k], (int, float))})
    if not keys:
        return
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    for k in keys:
        xs = [h["epoch"] for h in history if k in h]
        ys = [h[k] for h in history if k in h]
        ax.plot(xs, ys, label=k, marker="." if len(xs) < 30 else None)
    ax.set_xlabel("epoch")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


# ----------------------------------------------------------------------------- trainer base
class NeoNetTrainer:
    """Base class of the per-fold NeoNet trainers (VAE, LDM, ControlNet, classifier)."""

    stage: str = "base"          # key in neonet_plans.json configurations
    stage_dir: str | None = None  # result folder prefix, defaults to ``stage``

    def __init__(self, dataset: int | str | ResultLayout, fold: int, configuration: str | None = None,
                 device: str = "auto", epochs: int | None = None, continue_training: bool = False,
                 overwrite: bool = False, seed: int = 12345, plans: NeoNetPlans | None = None):
        self.device = get_device(device)
        self.dist = Distributed(self.device)
        self.device = self.dist.device
        layout = ResultLayout.for_dataset(dataset)
        self.dataset_name, self.preprocessed, self.results_root = layout.folders()
        self.plans = plans or NeoNetPlans(self.preprocessed / NEONET_PLANS_FILE)
        self.layout = ResultLayout.for_dataset(layout, self.plans["plans_name"])  # where this stage's folds live
        self.configuration_name = configuration or self.plans.default_configuration(self.device.type)
        self.config = dict(self.plans.stage(self.stage, self.configuration_name, self.device.type))
        if epochs is not None:
            self.config["epochs"] = int(epochs)
        self.num_epochs = int(self.config["epochs"])
        self.fold = int(fold)
        split = get_fold(load_splits(self.preprocessed), self.fold)
        self.train_ids, self.val_ids = list(split["train"]), list(split["val"])
        self.seed = int(seed) + self.fold
        self.output_folder = self.fold_output_folder(self.stage_dir or self.stage)
        self.continue_training = continue_training
        self.overwrite = overwrite
        self.history: list[dict] = []
        self.upstream: dict[str, dict] = {}  # checkpoints this stage is built on (name -> path, sha256)
        self.start_epoch = 0
        self._log_file = None

    def register_upstream(self, **checkpoints: str | Path) -> None:
        """Record (path, SHA-256) of upstream checkpoints; stored in every checkpoint of this stage and
        checked on resume, so a stage never silently continues on a retrained upstream."""
        self.upstream.update(upstream_record(checkpoints))

    def fold_output_folder(self, stage_dir: str) -> Path:
        """``neonet_results/<ds>/<stage_dir>__<plans>/fold_N`` of this trainer's fold."""
        return self.layout.fold_folder(stage_dir, self.fold)

    # -- to implement
    def build(self) -> None:
        """Create networks/optimisers (``self.network``, ``self.optimizer``, ...)."""
        raise NotImplementedError

    def train_epoch(self, epoch: int) -> dict:
        """One epoch; returns scalar metrics (e.g. {'train_loss': ...})."""
        raise NotImplementedError

    def validate(self, epoch: int) -> dict:
        return {}

    def modules_to_save(self) -> dict[str, Any]:
        """Objects with state_dict()/load_state_dict() to checkpoint, e.g. {'network': ..., 'optimizer': ...}."""
        return {"network": unwrap(self.network), "optimizer": self.optimizer}

    def extra_state(self) -> dict:
        """Plain values stored with every checkpoint (e.g. scale_factor)."""
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass

    def is_done(self, epoch: int, metrics: dict) -> bool:
        """Early stopping hook."""
        return False

    def finish(self) -> None:
        """Called once after training (rank 0 and others), e.g. to export predictions. Runs before
        ``checkpoint_final.pth`` is written, so a fold is finished only once its outputs exist."""

    def final_state(self, epoch: int) -> dict:
        """What ``checkpoint_final.pth`` holds (default: the last checkpoint state)."""
        return self.checkpoint_state(epoch)

    # -- machinery
    def log(self, msg: str, *args) -> None:
        text = msg % args if args else msg
        logger.info("[%s fold %d] %s", self.stage, self.fold, text)
        if self.dist.is_main and self._log_file is not None:
            with open(self._log_file, "a", encoding="utf-8") as f:
                f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")

    def checkpoint_state(self, epoch: int) -> dict:
        state = {k: v.state_dict() for k, v in self.modules_to_save().items() if v is not None}
        state.update({
            "epoch": int(epoch),
            "history": self.history,
            "config": self.config,
            "configuration_name": self.configuration_name,
            "stage": self.stage,
            "fold": self.fold,
            "dataset_name": self.dataset_name,
            "train_ids": self.train_ids,
            "val_ids": self.val_ids,
            "torch_rng_state": torch.get_rng_state(),
            "extra": self.extra_state(),
            "upstream": self.upstream,
        })
        return state

    def save(self, name: str, epoch: int) -> None:
        if self.dist.is_main:
            save_checkpoint(self.checkpoint_state(epoch), self.output_folder / name)

    def _prepare_folder(self) -> None:
        """Refuse to replace an existing fold without ``overwrite``. With it, train in a staging folder next to
        the fold (:func:`~neonet_toolkit.utilities.identifiers.staging_fold_folder`): the existing fold stays
        untouched until the new final checkpoint is written and verified (:meth:`_publish`)."""
        self.final_folder = self.output_folder
        staging = staging_fold_folder(self.output_folder)
        final = self.output_folder / FINAL_CHECKPOINT
        latest = self.output_folder / LATEST_CHECKPOINT
        if self.continue_training:
            if staging.exists():
                logger.warning("%s is left from an interrupted --overwrite; --c continues %s, not that run (rerun "
                               "with --overwrite to start it again).", staging, self.output_folder)
            return
        if (final.exists() or latest.exists()) and not self.overwrite:
            what = (f"a trained {self.stage} model ({FINAL_CHECKPOINT})" if fold_is_finished(self.output_folder)
                    else f"an unfinished {self.stage} training ({LATEST_CHECKPOINT}, no {FINAL_CHECKPOINT})")
            raise FileExistsError(
                f"{self.output_folder} already holds {what}. Use --c to continue training "
                "or --overwrite to start again (the old fold stays in place until the new model is finished and "
                "verified, then it is moved aside)."
            )
        if self.overwrite and self.output_folder.is_dir():
            if self.dist.is_main and staging.exists():
                logger.warning("--overwrite: removing %s, left by an interrupted --overwrite run", staging)
                shutil.rmtree(staging)
            self.output_folder = staging
            self.log("--overwrite: training in %s; %s stays as it is until the new model is finished and verified",
                     staging, self.final_folder)

    def _publish(self) -> None:
        """After ``--overwrite``: check that the staged ``checkpoint_final.pth`` loads (``weights_only=True``) and
        holds every saved module, then move the old fold aside and give the staged folder its name. A check
        that fails leaves the old fold in place and raises naming the staged file."""
        if self.output_folder == self.final_folder:
            return
        ck = self.output_folder / FINAL_CHECKPOINT
        state = load_checkpoint(ck)
        lacking = [k for k, mod in self.modules_to_save().items() if mod is not None
                   and (k not in state or set(state[k]) != set(mod.state_dict()))]
        if "epoch" not in state or lacking:
            raise UnsafeCheckpointError(
                f"The new {self.stage} checkpoint {ck} does not hold what it should ({lacking or ['epoch']}); "
                f"{self.final_folder} was left as it was. Rerun with --overwrite.")
        aside = move_aside(self.final_folder)
        try:
            os.replace(self.output_folder, self.final_folder)
        except BaseException:
            os.replace(aside, self.final_folder)
            raise
        self.output_folder = self.final_folder
        self._log_file = self.output_folder / "training_log.txt"
        self.log("--overwrite: new model verified and in place; previous results moved to %s", aside)

    def _resume(self) -> None:
        for name in (LATEST_CHECKPOINT, FINAL_CHECKPOINT):
            f = self.output_folder / name
            if f.is_file():
                state = load_checkpoint(f, self.device)
                check_upstream(state.get("upstream"), {k: v["path"] for k, v in self.upstream.items()},
                               f"{self.stage} fold {self.fold} ({f})",
                               f"Retrain this stage: `neonet_train {self.dataset_name} {self.stage} {self.fold} "
                               "--overwrite`.")
                for k, mod in self.modules_to_save().items():
                    if mod is not None and k in state:
                        mod.load_state_dict(state[k])
                self.history = list(state.get("history", []))
                self.start_epoch = int(state["epoch"]) + 1
                torch.set_rng_state(state["torch_rng_state"].cpu())
                self.load_extra_state(state.get("extra", {}))
                self.log("resumed from %s at epoch %d", name, self.start_epoch)
                return
        self.log("--c given but no checkpoint found in %s; starting from scratch", self.output_folder)

    def run(self) -> Path:
        self.dist.init()
        self._prepare_folder()
        if self.dist.is_main:
            self.output_folder.mkdir(parents=True, exist_ok=True)
            self._log_file = self.output_folder / "training_log.txt"
        seed_everything(self.seed + self.dist.rank)
        self.build()
        if self.continue_training:
            self._resume()
        self.log("stage=%s configuration=%s device=%s epochs=%d train=%d val=%d world=%d threads=%d",
                 self.stage, self.configuration_name, self.device, self.num_epochs, len(self.train_ids),
                 len(self.val_ids), self.dist.world_size, torch.get_num_threads())
        from tqdm import tqdm

        bar = tqdm(range(self.start_epoch, self.num_epochs), desc=f"{self.stage} fold {self.fold}",
                   disable=None if self.dist.is_main else True)
        epoch = self.start_epoch - 1
        for epoch in bar:
            t0 = time.perf_counter()
            metrics = {"epoch": epoch}
            metrics.update(self.train_epoch(epoch))
            metrics.update(self.validate(epoch))
            metrics["epoch_time_s"] = time.perf_counter() - t0
            self.history.append(metrics)
            if epoch - self.start_epoch in (0, 2):  # honest expectations, from this machine's first epochs
                self.log(time_estimate(self.history, self.num_epochs - epoch - 1, self.stage))
            bar.set_postfix({k: f"{v:.4g}" for k, v in metrics.items() if isinstance(v, float) and k != "epoch_time_s"})
            self.log(" ".join(f"{k}={v:.5g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()))
            stop = self.is_done(epoch, metrics)
            self.save(LATEST_CHECKPOINT, epoch)
            if self.dist.is_main:
                save_json(self.history, self.output_folder / "progress.json")
                plot_curves([{k: v for k, v in h.items() if k != "epoch_time_s"} for h in self.history],
                            self.output_folder / "progress.png", f"{self.stage} fold {self.fold}")
            if stop:
                self.log("early stopping at epoch %d", epoch)
                break
        last = max(epoch, self.start_epoch - 1)
        self.finish()
        if self.dist.is_main:  # written last: its presence is the "finished" rule (identifiers.fold_is_finished)
            save_checkpoint(self.final_state(last), self.output_folder / FINAL_CHECKPOINT)
            self._publish()
        self.dist.barrier()
        self.output_folder = self.final_folder
        return self.output_folder


def time_estimate(history: list[dict], remaining_epochs: int, stage: str) -> str:
    """One line: this run's seconds per epoch so far and the time the remaining epochs will take at that pace
    (from the latest epochs; the first one includes warm-up)."""
    times = [float(h["epoch_time_s"]) for h in history if "epoch_time_s" in h]
    per = float(np.median(times[-3:])) if times else float("nan")
    total = per * max(0, int(remaining_epochs))
    return (f"time estimate ({stage}): {per:.1f} s/epoch on this machine; {remaining_epochs} epoch(s) left ≈ "
            f"{total / 60:.1f} min (early stopping may end sooner)")


def batches(items: list, batch_size: int, rng: np.random.Generator | None = None, drop_last: bool = False
            ) -> Iterable[list]:
    idx = np.arange(len(items))
    if rng is not None:
        rng.shuffle(idx)
    for s in range(0, len(idx), batch_size):
        chunk = idx[s:s + batch_size]
        if drop_last and len(chunk) < batch_size:
            break
        yield [items[i] for i in chunk]
