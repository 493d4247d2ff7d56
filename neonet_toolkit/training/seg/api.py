"""``neonet_train DATASET seg FOLD``: NeoSeg through nnU-Net's own training entry point.

Equivalent plain nnU-Net command (same result folder)::

    export nnUNet_extTrainer=$(python -m neonet_toolkit.training.seg.trainer_path)
    nnUNetv2_train 501 3d_fullres 0 -p NeoNetPlans -tr NeoSegTrainer -device cpu

``--configuration`` (a configuration of ``neonet_plans.json``) and ``--epochs/--iterations/--val-iterations``
(resolved as a configuration inheriting from it) reach the trainer through a record beside the fold
(:func:`neonet_toolkit.training.seg.trainers.write_run_configuration`, in the model folder), so the DDP worker
processes that nnU-Net spawns read them too.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
from pathlib import Path

from neonet_toolkit import paths
from neonet_toolkit.experiment_planning.plans import NEONET_PLANS_FILE, NeoNetPlans, PlansError, load_nnunet_plans
from neonet_toolkit.experiment_planning.splits import get_fold, load_splits
from neonet_toolkit.models.seg import check_seg_checkpoint
from neonet_toolkit.training.seg.masks import build_pred_patches, register_model
from neonet_toolkit.training.seg.networks import ARCHITECTURES, check_architecture
from neonet_toolkit.training.seg.trainers import ENV_REPLACES, seg_overrides, trainer_name, write_run_configuration
from neonet_toolkit.utilities.checkpoints import load_verified_checkpoint, verify_checkpoint
from neonet_toolkit.utilities.devices import get_device
from neonet_toolkit.utilities.identifiers import (
    BEST_CHECKPOINT,
    FINAL_CHECKPOINT,
    LATEST_CHECKPOINT,
    NNUNET_PLANS_NAME,
    NNUNET_VALIDATION_SUMMARY,
    SEG_CONFIGURATION,
    ResultLayout,
    staging_fold_folder,
)
from neonet_toolkit.utilities.io import atomic_path, move_aside, save_text
from neonet_toolkit.utilities.safe_pickle import verify_preprocessed_folder

logger = logging.getLogger(__name__)

NNUNET_PLANS = NNUNET_PLANS_NAME
NNUNET_CONFIGURATION = SEG_CONFIGURATION
# what nnU-Net's ``--c`` may load (nnUNetTrainer.maybe_load_checkpoint: final, else latest, else best)
NNUNET_RESUME_CHECKPOINTS = (FINAL_CHECKPOINT, LATEST_CHECKPOINT, BEST_CHECKPOINT)
# model-level files nnU-Net (re)writes beside the folds when a training starts
NNUNET_MODEL_FILES = ("plans.json", "dataset.json", "dataset_fingerprint.json")
# files of a fold in which nnU-Net records the fold's own path (validation predictions, its debug dump)
NNUNET_FOLD_PATH_RECORDS = (NNUNET_VALIDATION_SUMMARY, "debug.json")


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("NeoSeg (seg stage)")
    g.add_argument("--arch", default=None, type=str.lower,
                   help=f"network: {', '.join(ARCHITECTURES)} (default: the plans' seg architecture, swinunetr)")
    g.add_argument("--iterations", type=int, default=None, help="training iterations per epoch (override)")
    g.add_argument("--val-iterations", dest="val_iterations", type=int, default=None,
                   help="pseudo-Dice validation iterations per epoch (override)")
    g.add_argument("-num_gpus", "--num-gpus", dest="num_gpus", type=int, default=1,
                   help="nnU-Net DDP training on this many GPUs (CUDA only)")
    g.add_argument("--nnunet-configuration", dest="nnunet_configuration", default=NNUNET_CONFIGURATION,
                   help=f"nnU-Net configuration in {NNUNET_PLANS}.json (default {NNUNET_CONFIGURATION})")
    g.add_argument("--npz", action="store_true", help="also save validation softmax (nnU-Net --npz)")
    g.add_argument("--from-model", dest="from_model", default=None,
                   help="do not train: use this existing nnU-Net model folder (any trainer) as NeoSeg")
    g.add_argument("--oof-masks", dest="oof_masks", action="store_true",
                   help="do not train: build the TLCR pred patches of this fold's validation cases from this "
                        "NeoSeg fold's out-of-fold predictions (what --crop-source pred reads; a neonet_experiment job)")
    g.add_argument("--trust-checkpoints", dest="trust_checkpoints", action="store_true",
                   help="skip the safety check of the model's checkpoints (nnU-Net loads them with "
                        "weights_only=False, which runs any code a file carries): only for files you trust")


def _device(name: str):
    import torch


    dev = get_device(name)
    if dev.type == "cuda" and dev.index not in (None, 0):
        raise ValueError(f"-device {name}: nnU-Net always trains on the first visible GPU; select it with "
                         f"CUDA_VISIBLE_DEVICES={dev.index} and -device cuda.")
    return torch.device(dev.type)


def train_seg(dataset: int | str | ResultLayout, fold: int | str, arch: str | None = None, device: str = "auto",
              epochs: int | None = None, iterations: int | None = None, val_iterations: int | None = None,
              configuration: str | None = None, continue_training: bool = False, overwrite: bool = False,
              num_gpus: int = 1, nnunet_configuration: str = NNUNET_CONFIGURATION, npz: bool = False,
              trust_checkpoints: bool = False) -> Path:
    """Train one NeoSeg fold with nnU-Net's ``run_training``; returns the fold folder."""
    layout = ResultLayout.for_dataset(dataset)
    name, pp = layout.dataset_name, layout.preprocessed
    plans_file = layout.nnunet_plans_file
    if not plans_file.is_file():
        raise FileNotFoundError(f"{plans_file} not found: run `neonet_plan_and_preprocess -d {dataset}` first.")
    # before nnU-Net sees anything: the names nnU-Net turns into folders, and every properties pickle it will load
    nn_plans = load_nnunet_plans(plans_file)
    if nnunet_configuration not in nn_plans["configurations"]:
        raise PlansError(f"nnU-Net configuration {nnunet_configuration!r} is not in {plans_file} (configurations: "
                         f"{sorted(nn_plans['configurations'])}); pick one of those with --nnunet-configuration.")
    if nn_plans["plans_name"] != NNUNET_PLANS:
        raise PlansError(f"{plans_file} names its plans {nn_plans['plans_name']!r}, but NeoSeg trains with "
                         f"{NNUNET_PLANS!r} (nnU-Net would write the model to a folder NeoNet does not read). Set "
                         f"\"plans_name\": \"{NNUNET_PLANS}\" again, or delete the file and rerun "
                         f"`neonet_plan_and_preprocess -d {dataset}`.")
    verify_preprocessed_folder(pp)

    if fold != "all":
        fold = int(fold)
        get_fold(load_splits(pp), fold)  # clear error for a fold that does not exist
    if arch is None:
        arch = "swinunetr"
        if (pp / NEONET_PLANS_FILE).is_file():
            arch = NeoNetPlans(pp / NEONET_PLANS_FILE).stage("seg", configuration, device).get("architecture", arch)
    arch = check_architecture(arch)
    dev = _device(device)
    if configuration is not None and (pp / NEONET_PLANS_FILE).is_file():
        NeoNetPlans(pp / NEONET_PLANS_FILE).configuration(configuration)  # clear error for an unknown name
    run_seg = seg_overrides(epochs, iterations, val_iterations)  # clear error for an out-of-range budget
    tr = trainer_name(arch)
    fold_dir = layout.nnunet_fold_folder(tr, fold, nnunet_configuration)
    if layout.is_finished("model", fold_dir) and not (continue_training or overwrite):
        raise FileExistsError(f"{fold_dir} already holds a finished training; use --overwrite to retrain it or "
                              "--c to continue/re-validate.")
    # --overwrite of an existing fold: nnU-Net trains under a staging results folder (nnUNet_results for this call),
    # so the working fold stays in place until the new checkpoint_final.pth is written and verified
    staging = staging_fold_folder(fold_dir, prefix="new-")  # out of nnU-Net's fold_* pattern
    staged = overwrite and not continue_training and fold_dir.is_dir()
    if staging.exists() and (staged or continue_training):
        if continue_training:
            logger.warning("%s is left from an interrupted --overwrite; --c continues %s, not that run (rerun with "
                           "--overwrite to start it again).", staging, fold_dir)
        else:
            logger.warning("--overwrite: removing %s, left by an interrupted --overwrite run", staging)
            shutil.rmtree(staging)
    if continue_training:  # nnU-Net resumes from final, latest or best with torch.load(weights_only=False)
        resumable = [fold_dir / ck for ck in NNUNET_RESUME_CHECKPOINTS if (fold_dir / ck).is_file()]
        if trust_checkpoints:
            logger.warning("--trust-checkpoints: %s resumed WITHOUT the checkpoint safety check (%s)", fold_dir,
                           [f.name for f in resumable])
        else:
            for ck in resumable:
                verify_checkpoint(ck)
    # nnU-Net reads its folders + nnUNet_extTrainer (and the NeoSeg trainer ENV_REPLACES) for this call only
    overrides = {"nnUNet_def_n_proc": os.environ.get("nnUNet_def_n_proc") or max(1, min(8, os.cpu_count() or 1))}
    if staged:
        overrides.update({"nnUNet_results": staging, ENV_REPLACES: fold_dir.parent})
        logger.warning("--overwrite: training in %s; %s stays as it is until the new model is finished and verified",
                       staging, fold_dir)
    # the NeoNet configuration (and epoch budget) of this run, read by the trainer in every (DDP) process
    write_run_configuration(staging / name / fold_dir.parent.name if staged else fold_dir.parent, fold,
                            configuration, run_seg)
    from nnunetv2.run.run_training import run_training

    logger.info("NeoSeg: nnUNetv2_train %s %s %s -p %s -tr %s -device %s%s", name, nnunet_configuration, fold,
                NNUNET_PLANS, tr, dev.type, f" -num_gpus {num_gpus}" if num_gpus > 1 else "")
    with paths.nnunet_environment(overrides):
        run_training(name, nnunet_configuration, fold, tr, NNUNET_PLANS, num_gpus=num_gpus,
                     export_validation_probabilities=npz, continue_training=continue_training, device=dev)
    if staged:
        _publish_staged_fold(staging / name / fold_dir.parent.name / fold_dir.name, fold_dir, staging)
    return fold_dir


def _publish_staged_fold(staged_fold: Path, fold_dir: Path, staging: Path) -> None:
    """After a staged ``--overwrite``: check the new ``checkpoint_final.pth`` (allow-listed ``weights_only`` load, an
    nnU-Net segmentation checkpoint), then move the old fold aside (``old-fold_N.replaced-<time>``), give the new
    one its name and take over nnU-Net's model-level files. A failed check leaves the working fold as it was."""
    ck = staged_fold / FINAL_CHECKPOINT
    if not ck.is_file():
        raise FileNotFoundError(f"nnU-Net finished without writing {ck}; {fold_dir} was left as it was. Rerun with "
                                "--overwrite.")
    check_seg_checkpoint(load_verified_checkpoint(ck), ck, staged_fold.parent)
    for rel in NNUNET_FOLD_PATH_RECORDS:  # the paths nnU-Net wrote name the staging folder: name the fold instead
        f = staged_fold / rel
        if f.is_file():
            text = f.read_text(encoding="utf-8").replace(str(staged_fold), str(fold_dir))
            save_text(text.replace(str(staged_fold.parent), str(fold_dir.parent)), f)
    for f in NNUNET_MODEL_FILES:
        if (staged_fold.parent / f).is_file():
            with atomic_path(fold_dir.parent / f) as tmp:
                shutil.copyfile(staged_fold.parent / f, tmp)
    aside = move_aside(fold_dir, prefix="old-")  # out of nnU-Net's fold_* pattern
    try:
        os.replace(staged_fold, fold_dir)
    except BaseException:
        os.replace(aside, fold_dir)
        raise
    shutil.rmtree(staging)
    logger.warning("--overwrite: new fold verified and in place; previous fold moved to %s", aside)


def train_from_args(args) -> None:
    if args.oof_masks:
        arch = check_architecture(args.arch or "swinunetr")
        build_pred_patches(args.dataset, ResultLayout.for_dataset(args.dataset).nnunet_model_folder(trainer_name(arch)),
                           folds=[args.fold], trust_checkpoints=args.trust_checkpoints)
        return
    if args.from_model:
        register_model(args.dataset, args.from_model, folds=[args.fold], trust_checkpoints=args.trust_checkpoints)
        return
    train_seg(args.dataset, args.fold, arch=args.arch, device=args.device, epochs=args.epochs,
              iterations=args.iterations, val_iterations=args.val_iterations, configuration=args.configuration,
              continue_training=args.continue_training, overwrite=args.overwrite, num_gpus=args.num_gpus,
              nnunet_configuration=args.nnunet_configuration, npz=args.npz, trust_checkpoints=args.trust_checkpoints)
