"""NeoSeg trainers: ordinary nnU-Net trainers (subclasses of ``nnUNetTrainer``).

=========================== ============ ===============================================
trainer (``-tr``)            ``--arch``   network
=========================== ============ ===============================================
``NeoSegTrainer``            swinunetr    MONAI SwinUNETR (paper default)
``NeoSegTrainer_UNet``       unet         MONAI UNet (nnU-Net's channels and strides)
``NeoSegTrainer_SegResNet``  segresnet    MONAI SegResNet
``NeoSegTrainer_DynUNet``    dynunet      MONAI DynUNet (nnU-Net's kernels and strides)
``NeoSegTrainer_nnUNet``     nnunet       nnU-Net's own U-Net from the plans (reference)
=========================== ============ ===============================================

Settings come from the ``seg`` stage of ``neonet_plans.json``, read through the typed settings, falling
back to the paper's values when the dataset has no NeoNet plans. The configuration is the one
``neonet_train ... --configuration`` selected (a configuration of the plans, e.g. a user's own with
``inherits_from``), else the plans' ``default_configuration`` for the device (``cpu_small`` on CPU /
``gpu_full`` on CUDA; plain ``nnUNetv2_train`` runs always use it). nnU-Net builds the trainer from its own
arguments only (also in its DDP worker processes), so ``train_seg`` records the selection beside the fold it
trains (``<model folder>/neoseg_configuration_fold_N.json``: ``{"inherits_from": <configuration>, "seg":
{<epoch budget>}}``, a configuration resolved like those of the plans) before nnU-Net starts. The MONAI networks use AdamW (lr 1e-4,
paper) with nnU-Net's poly schedule, nnU-Net's Dice+CE loss and no deep supervision; the nnU-Net reference
keeps nnU-Net's own recipe (SGD, lr 1e-2, deep supervision).

The network settings are written into the trained model's ``plans.json`` (key ``neoseg`` of
the configuration), so ``nnUNetv2_predict`` and the toolkit rebuild exactly the trained network.
Nothing assumes a single device: nnU-Net's ``-num_gpus`` DDP path wraps the network after
``configure_optimizers`` and splits the batch; the overrides below unwrap DDP/compiled modules.
"""
from __future__ import annotations

import copy
import logging
import os
import time
from pathlib import Path

import torch
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from neonet_toolkit.experiment_planning.plans import (
    NEONET_PLANS_FILE,
    NeoNetPlans,
    PlansError,
    check_nnunet_plans,
    paper_seg_settings,
    read_plans_json,
)
from neonet_toolkit.experiment_planning.settings import as_dict, validate_stage
from neonet_toolkit.training.seg.networks import NETWORK_KEYS, build_network, check_architecture
from neonet_toolkit.utilities.devices import unwrap
from neonet_toolkit.utilities.identifiers import NNUNET_PLANS_NAME, SEG_CONFIGURATION, nnunet_model_folder
from neonet_toolkit.utilities.io import load_json, save_json
from neonet_toolkit.utilities.safe_pickle import verify_preprocessed_folder

logger = logging.getLogger(__name__)

# set by ``neonet_train ... seg --overwrite``, which trains the new fold under a staging results folder: the model
# folder the new fold will replace a fold of (its other folds must share the network)
ENV_REPLACES = "NEONET_SEG_REPLACES"
PLANS_KEY = "neoseg"
# the NeoNet configuration a toolkit run selected, recorded in the model folder before nnU-Net starts (out of
# nnU-Net's fold_* pattern; nnU-Net creates the fold folder itself)
RUN_CONFIGURATION_FILE = "neoseg_configuration_fold_{fold}.json"
# the name under which that record is resolved among the plans' configurations
RUN_CONFIGURATION_NAME = "neoseg_run"
# the seg settings a run may set besides the configuration (the epoch budget of short runs), with their minimum
RUN_OVERRIDES = {"epochs": 0, "iterations_per_epoch": 1, "val_iterations_per_epoch": 1}


def seg_overrides(epochs: int | None = None, iterations: int | None = None,
                  val_iterations: int | None = None) -> dict:
    """The epoch budget of a short run as ``seg`` settings (only those given); ``ValueError`` when out of range."""
    out = {}
    for key, value, option in (("epochs", epochs, "--epochs"), ("iterations_per_epoch", iterations, "--iterations"),
                               ("val_iterations_per_epoch", val_iterations, "--val-iterations")):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{option} {value!r} must be an integer.")
        if value < RUN_OVERRIDES[key]:
            raise ValueError(f"{option} {value} is out of range (at least {RUN_OVERRIDES[key]}).")
        out[key] = int(value)
    return out


def run_configuration_file(model_folder: str | Path, fold: int | str) -> Path:
    """Where :func:`write_run_configuration` records a fold's NeoNet configuration."""
    return Path(model_folder) / RUN_CONFIGURATION_FILE.format(fold=fold)


def write_run_configuration(model_folder: str | Path, fold: int | str, configuration: str | None,
                            seg: dict | None = None) -> Path:
    """Record, in the model folder nnU-Net will train fold ``fold`` in, the NeoNet configuration (``None``: the
    plans' default for the device) and the ``seg`` settings this run sets on top of it; the trainer reads it in
    ``__init__``."""
    target = run_configuration_file(model_folder, fold)
    save_json({"inherits_from": configuration, "seg": dict(seg or {})}, target)
    return target


def read_run_configuration(model_folder: str | Path, fold: int | str) -> dict:
    """The record :func:`write_run_configuration` left for the fold (``{"inherits_from": None, "seg": {}}`` when
    there is none: a plain ``nnUNetv2_train`` run); :class:`PlansError` naming the file when it is damaged."""
    f = run_configuration_file(model_folder, fold)
    if not f.is_file():
        return {"inherits_from": None, "seg": {}}
    fix = "Delete it and rerun `neonet_train` (it writes the file again from --configuration)."
    rec = read_plans_json(f, fix)
    if (not isinstance(rec, dict) or set(rec) != {"inherits_from", "seg"} or not isinstance(rec["seg"], dict)
            or not isinstance(rec["inherits_from"], (str, type(None)))
            or not set(rec["seg"]) <= set(RUN_OVERRIDES)):
        raise PlansError(f"{f} must be {{\"inherits_from\": <configuration or null>, \"seg\": {{...}}}} with seg "
                         f"settings among {sorted(RUN_OVERRIDES)}, got {rec!r}. {fix}")
    return rec


def resolve_seg_settings(dataset_name: str, device: torch.device | str = "cpu", configuration: str | None = None,
                         overrides: dict | None = None) -> dict:
    """The NeoSeg settings for a dataset: the ``seg`` stage of the ``neonet_plans.json`` configuration
    (``None``: the default for the device), with ``overrides`` resolved as a configuration inheriting from it;
    the paper's settings when the dataset has no NeoNet plans."""
    settings = copy.deepcopy(paper_seg_settings())
    overrides = dict(overrides or {})
    pp = os.environ.get("nnUNet_preprocessed")
    plans_file = Path(pp) / dataset_name / NEONET_PLANS_FILE if pp else None
    if plans_file is not None and plans_file.is_file():
        plans = NeoNetPlans(plans_file)
        base = plans.configuration(configuration, str(device))["name"]
        name = base
        if overrides:
            with_run = copy.deepcopy(plans.plans)
            with_run["configurations"][RUN_CONFIGURATION_NAME] = {"inherits_from": base, "seg": overrides}
            plans, name = NeoNetPlans(with_run), RUN_CONFIGURATION_NAME
        settings.update(plans.stage("seg", name, str(device)))
        settings["neonet_configuration"] = base
    else:
        if configuration:
            raise FileNotFoundError(f"--configuration {configuration} but {plans_file} does not exist; run "
                                    "`neonet_plan_and_preprocess` first or leave --configuration out.")
        logger.info("No neonet_plans.json for %s: NeoSeg uses the paper's settings.", dataset_name)
        settings = as_dict(validate_stage("seg", {**settings, **overrides}, "paper"))
        settings["neonet_configuration"] = None
    return settings


class NeoSegTrainerBase(nnUNetTrainer):
    """Shared NeoSeg behaviour; use one of the concrete trainers below."""

    architecture = "swinunetr"

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        # nnU-Net builds its result and data folders from these names (and creates the result folder) in __init__
        check_nnunet_plans(plans, Path(os.environ.get("nnUNet_preprocessed", ".")) / str(plans.get("dataset_name"))
                           / f"{plans.get('plans_name')}.json")
        super().__init__(plans, configuration, fold, dataset_json, device)
        # nnU-Net unpickles every case's properties file (dataloaders, final validation): none may carry code
        if self.preprocessed_dataset_folder is not None:
            verify_preprocessed_folder(self.preprocessed_dataset_folder)
        arch = check_architecture(self.architecture)
        run = (read_run_configuration(self.output_folder_base, self.fold) if self.output_folder_base is not None
               else {"inherits_from": None, "seg": {}})
        settings = resolve_seg_settings(self.plans_manager.dataset_name, self.device, run["inherits_from"], run["seg"])
        settings["architecture"] = arch
        network_settings = {k: settings[k] for k in NETWORK_KEYS}
        network_settings = self._check_same_network_as_saved(network_settings)
        self.neoseg_settings = settings
        # freeze the network settings and the batch size into the plans that nnU-Net copies to the result folder
        for conf in (self.plans_manager.plans["configurations"][configuration], self.configuration_manager.configuration):
            conf[PLANS_KEY] = dict(network_settings)
            conf["batch_size"] = int(settings["batch_size"])
        self.num_epochs = int(settings["epochs"])
        self.num_iterations_per_epoch = int(settings["iterations_per_epoch"])
        self.num_val_iterations_per_epoch = int(settings["val_iterations_per_epoch"])
        self.save_every = max(1, min(self.save_every, self.num_epochs))
        if arch != "nnunet":
            self.initial_lr = float(settings["initial_lr"])
            self.weight_decay = float(settings["weight_decay"])
            self.enable_deep_supervision = False  # MONAI networks return a single full-resolution output
        self._check_fold_exists()
        self.print_to_log_file(f"NeoSeg: architecture {arch}, NeoNet configuration {settings['neonet_configuration']}, "
                               f"network {network_settings}, epochs {self.num_epochs} x {self.num_iterations_per_epoch} "
                               f"iterations, batch {settings['batch_size']}, lr {self.initial_lr}",
                               also_print_to_console=False)

    # ------------------------------------------------------------------ checks
    def _check_same_network_as_saved(self, network_settings: dict) -> dict:
        """Folds of one result folder share plans.json: refuse to mix network settings between folds (also those
        of the model folder a staged ``--overwrite`` run will replace a fold of, :data:`ENV_REPLACES`)."""
        bases = [Path(self.output_folder_base)] if self.output_folder_base else []
        if os.environ.get(ENV_REPLACES):
            bases.append(Path(os.environ[ENV_REPLACES]))
        for base in bases:
            saved_plans = base / "plans.json"
            if not saved_plans.is_file():
                continue
            saved = load_json(saved_plans)["configurations"].get(self.configuration_name, {}).get(PLANS_KEY)
            if saved is not None and saved != network_settings:
                others = sorted(p.name for p in base.glob("fold_*") if p.name != f"fold_{self.fold}")
                if others:
                    raise ValueError(
                        f"{base} holds {others} trained with NeoSeg network {saved}, but the current NeoNet "
                        f"configuration gives {network_settings}. All folds of one model must share the network: "
                        f"train with the same --configuration or move that folder away.")
        return network_settings

    def _check_fold_exists(self) -> None:
        if self.fold == "all" or self.preprocessed_dataset_folder_base is None:
            return
        splits_file = Path(self.preprocessed_dataset_folder_base) / "splits_final.json"
        if splits_file.is_file():

            n = len(load_json(splits_file))
            if not 0 <= int(self.fold) < n:
                raise ValueError(f"Fold {self.fold} does not exist: {splits_file} defines folds 0..{n - 1}. "
                                 "Pick one of those (nnU-Net would silently train on a random 80:20 split).")

    # ------------------------------------------------------------------ network
    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True) -> torch.nn.Module:
        settings = configuration_manager.configuration.get(PLANS_KEY)
        if settings is None:  # plans without the frozen entry (e.g. building before __init__ ran)
            settings = {k: v for k, v in resolve_seg_settings(plans_manager.dataset_name).items() if k in NETWORK_KEYS}
        paper = paper_seg_settings()
        settings = {**{k: paper[k] for k in NETWORK_KEYS}, **settings, "architecture": cls.architecture}
        if cls.architecture == "nnunet":
            return nnUNetTrainer.build_network_architecture(plans_manager, configuration_manager, num_input_channels,
                                                            num_output_channels, enable_deep_supervision)
        arch_kwargs = configuration_manager.network_arch_init_kwargs
        missing = [k for k in ("strides", "kernel_sizes", "features_per_stage") if k not in arch_kwargs]
        if missing:
            raise ValueError(f"NeoSeg sizes its MONAI networks from nnU-Net's U-Net topology, but the plans' "
                             f"architecture {configuration_manager.network_arch_class_name} has no {missing} in "
                             "arch_kwargs; plan the dataset with `neonet_plan_and_preprocess` (NeoNetPlans).")
        return build_network(settings, configuration_manager.patch_size, arch_kwargs["strides"],
                             arch_kwargs["kernel_sizes"], arch_kwargs["features_per_stage"],
                             num_input_channels, num_output_channels)

    # ------------------------------------------------------------------ time expectations
    ESTIMATE_AFTER_ITERATIONS = 4

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        self._iteration_marks = [time.perf_counter()]

    def train_step(self, batch: dict) -> dict:
        out = super().train_step(batch)
        marks = getattr(self, "_iteration_marks", None)
        n = max(1, min(self.ESTIMATE_AFTER_ITERATIONS, int(self.num_iterations_per_epoch)))
        if marks is not None and len(marks) <= n:
            marks.append(time.perf_counter())
            if len(marks) == n + 1 and not getattr(self, "_estimated", False):
                self._estimated = True
                self.print_to_log_file(seg_time_estimate(marks, self.num_iterations_per_epoch,
                                                         self.num_epochs - self.current_epoch),
                                       also_print_to_console=True)
        return out

    def set_deep_supervision_enabled(self, enabled: bool):
        """nnU-Net's version touches ``network.decoder``; MONAI networks have no deep supervision to toggle."""
        mod = unwrap(self.network)
        decoder = getattr(mod, "decoder", None)
        if decoder is not None and hasattr(decoder, "deep_supervision"):
            decoder.deep_supervision = enabled and self.enable_deep_supervision

    def configure_optimizers(self):
        if self.architecture == "nnunet":
            return super().configure_optimizers()
        optimizer = torch.optim.AdamW(self.network.parameters(), lr=self.initial_lr, weight_decay=self.weight_decay)
        return optimizer, PolyLRScheduler(optimizer, self.initial_lr, self.num_epochs)


def seg_time_estimate(marks: list[float], iterations_per_epoch: int, remaining_epochs: int) -> str:
    """What NeoSeg training will cost on this machine, from the first iterations of its first epoch
    (``marks``: the epoch's start, then the end of each iteration; the first iteration pays the data
    loader's start-up and is left out when later ones exist)."""
    steps = [b - a for a, b in zip(marks, marks[1:])]
    per = sum(steps[1:]) / len(steps[1:]) if len(steps) > 1 else steps[0]
    epoch_s = per * iterations_per_epoch
    total = epoch_s * remaining_epochs
    return (f"time estimate (seg): {per:.2f} s/iteration from the first {len(steps)} iterations -> about "
            f"{epoch_s / 60:.1f} min per epoch of {iterations_per_epoch} iterations (validation not counted), "
            f"{total / 3600:.1f} h for the {remaining_epochs} epoch(s) left. Too long? Use a GPU, or a smaller "
            "configuration (--configuration) or patch.")


class NeoSegTrainer(NeoSegTrainerBase):
    """SwinUNETR (the paper's NeoSeg backbone)."""

    architecture = "swinunetr"


class NeoSegTrainer_UNet(NeoSegTrainerBase):
    architecture = "unet"


class NeoSegTrainer_SegResNet(NeoSegTrainerBase):
    architecture = "segresnet"


class NeoSegTrainer_DynUNet(NeoSegTrainerBase):
    architecture = "dynunet"


class NeoSegTrainer_nnUNet(NeoSegTrainerBase):
    """nnU-Net's default U-Net and recipe, with NeoNet's epoch/iteration budget (the reference)."""

    architecture = "nnunet"


TRAINERS = {
    "swinunetr": NeoSegTrainer,
    "unet": NeoSegTrainer_UNet,
    "segresnet": NeoSegTrainer_SegResNet,
    "dynunet": NeoSegTrainer_DynUNet,
    "nnunet": NeoSegTrainer_nnUNet,
}


def trainer_for(arch: str) -> type[NeoSegTrainerBase]:
    return TRAINERS[check_architecture(arch)]


def trainer_name(arch: str) -> str:
    return trainer_for(arch).__name__


def result_folder(dataset: int | str, arch: str = "swinunetr", nnunet_configuration: str = SEG_CONFIGURATION,
                  plans: str = NNUNET_PLANS_NAME) -> Path:
    """``nnUNet_results/DatasetXXX/<Trainer>__NeoNetPlans__3d_fullres`` for an architecture."""
    return nnunet_model_folder(dataset, trainer_name(arch), plans, nnunet_configuration)
