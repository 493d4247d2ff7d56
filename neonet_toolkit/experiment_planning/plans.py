"""NeoNet plans: one human-editable JSON that configures every stage after NeoSeg.

``nnUNet_preprocessed/DatasetXXX_Name/neonet_plans.json`` looks like nnU-Net's plans::

    {
      "plans_name": <identifiers.PLANS_NAME>,
      "nnunet_plans": <identifiers.NNUNET_PLANS_NAME>, "seg_configuration": "3d_fullres",
      "target": "PNI", "label_roles": {...},
      "spacing": [...], "transpose_forward": [...],
      "tlcr": {"crop_size": [z, y, x] (array order), "crop_size_xyz": [x, y, z], ...},
      "default_configuration": {"cpu": "cpu_small", "cuda": "gpu_full"},
      "configurations": {
        "gpu_full":  {"seg": {...}, "vae": {...}, "ldm": {...}, "controlnet": {...}, "cls": {...}},
        "cpu_small": {"inherits_from": "gpu_full", "vae": {"channels": [...]}, ...}
      }
    }

A configuration may ``inherits_from`` another; stage dictionaries are merged key by key, so a
user adds ``"my_cfg": {"inherits_from": "cpu_small", "cls": {"epochs": 5}}`` and selects it with
``-c my_cfg``. Every size that depends on the data (crop, latent shape, diffusion levels) is
derived here once, from the fingerprint, so the stages never disagree.
"""
from __future__ import annotations

import copy
import json
import logging
import math
from pathlib import Path
from typing import Any

from neonet_toolkit.experiment_planning.settings import as_dict, validate_stage
from neonet_toolkit.utilities.identifiers import PLANS_NAME, check_safe_name
from neonet_toolkit.utilities.io import load_json, save_json

logger = logging.getLogger(__name__)

NEONET_PLANS_FILE = "neonet_plans.json"
PAPER_CROP_XYZ = (96, 96, 48)
STAGES = ("seg", "vae", "vqvae", "ldm", "controlnet", "cls")
POSTPROCESSING = {
    # predicted tumour components smaller than this fraction of the smallest training tumour are spurious
    "spurious_tumor_fraction": 0.2,
    # QC flags: spacing outside [min x lo, max x hi] of the training spacings; mean pairwise fold tumour Dice
    # below; spread (max - min) of the fold probabilities above
    "qc_spacing_tolerance": [0.8, 1.25], "qc_fold_dice_min": 0.5, "qc_fold_probability_spread_max": 0.5,
    # neonet_predict refuses an image whose grid at the model's spacing would hold more than this many times
    # (or fewer than 1/this squared) the training median's voxels, before resampling (a 10x spacing error never
    # ends; a spacing in metres gives a few voxels)
    "qc_max_resampled_size_factor": 16.0,
}


def crop_xyz_to_array_order(crop_xyz, transpose_forward) -> list[int]:
    """The paper's crop (x, y, z) in the axis order of nnU-Net's preprocessed arrays.

    SimpleITK arrays are (z, y, x); nnU-Net then applies ``transpose_forward``. Array axis *i*
    is SimpleITK axis ``transpose_forward[i]``, i.e. world axis ``2 - transpose_forward[i]``.
    """
    return [int(crop_xyz[2 - int(t)]) for t in transpose_forward]


def round_up_to_multiple(values, m: int) -> list[int]:
    return [int(math.ceil(v / m) * m) for v in values]


def max_unet_levels(latent_shape, cap: int) -> int:
    """Largest number of diffusion U-Net levels L <= cap with every latent dim divisible by 2^(L-1)."""
    levels = 1
    while levels < cap and all(s % (2 ** levels) == 0 for s in latent_shape):
        levels += 1
    return levels


def _gpu_full(n_vae_down: int, ldm_levels: int) -> dict:
    """Paper settings (AdamW everywhere; epochs, lrs and batch sizes from the method section)."""
    vae_channels = [32, 64, 64, 128][: n_vae_down + 1]
    ldm_channels = [64, 128, 256, 256][:ldm_levels]
    return {
        "seg": {"architecture": "swinunetr", "feature_size": 48, "window_size": 7, "depths": [2, 2, 2, 2],
                "num_heads": [3, 6, 12, 24], "segresnet_init_filters": 16, "unet_num_res_units": 2,
                "batch_size": 2, "epochs": 400,
                "iterations_per_epoch": 250, "val_iterations_per_epoch": 50,
                "initial_lr": 1e-4, "weight_decay": 1e-5, "optimizer": "AdamW", "loss": "dice_ce"},
        "vae": {"channels": vae_channels, "latent_channels": 4, "num_res_blocks": 1, "norm_num_groups": 32,
                "attention_levels": [False] * len(vae_channels), "kl_weight": 1e-7, "loss": "l1",
                "epochs": 6000, "lr": 1e-6, "batch_size": 2, "weight_decay": 0.0, "val_every": 50},
        # QNeoGen (Table 3): MONAI's VQVAE, one stride-2 level per VAE downsampling so its latents land on the same
        # grid; embedding_dim = the VAE's latent_channels, so the same diffusion U-Net / ControlNet fit either
        "vqvae": {"channels": [64, 128, 128][:n_vae_down], "num_res_layers": 2,
                  "num_res_channels": [64, 128, 128][:n_vae_down], "num_embeddings": 256, "embedding_dim": 4,
                  "commitment_cost": 0.25, "ema_decay": 0.99, "codebook_restart": True, "loss": "l1", "epochs": 6000, "lr": 1e-4,
                  "batch_size": 2, "weight_decay": 0.0, "val_every": 50},
        # autoencoder: whose latents (vae | vqvae); objective: eps (ε prediction, DDIM sampling) | rflow
        # (rectified-flow velocity x0 - noise, MONAI RFlowScheduler, Euler sampling); rflow_sample_method: how
        # training timesteps are drawn for rflow (uniform | logit-normal)
        "ldm": {"autoencoder": "vae", "objective": "eps", "rflow_sample_method": "uniform","channels": ldm_channels, "num_res_blocks": 2, "norm_num_groups": 32,
                "attention_levels": [False] + [True] * (ldm_levels - 1), "num_head_channels": 32,
                "num_train_timesteps": 1000, "schedule": "scaled_linear_beta", "beta_start": 0.0015,
                "beta_end": 0.0195, "loss": "l2", "epochs": 6000, "lr": 1e-5, "batch_size": 2, "weight_decay": 0.0,
                "val_every": 50},
        # conditioning embedding: n_vae_down stride-2 convs, so the full-resolution mask lands on the latent grid
        "controlnet": {"conditioning_embedding_num_channels": [16, 32, 64, 96][: n_vae_down + 1],
                       "class_conditional": True, "epochs": 3000, "lr": 1e-5, "batch_size": 8, "loss": "l2",
                       "weight_decay": 0.0, "val_every": 50},
        "sampling": {"steps": 50, "sampler": "ddim", "eta": 0.0},
        # NeoCls (docs/neocls.md). early_stopping (model selection): "nested" (default) = inner stratified
        # k-fold of the training fold picks the epoch and fits calibration + threshold, then a refit on the
        # whole training fold; "val" = the paper (validation fold, optimistic); "inner" = one stratified inner
        # split; "none" = last epoch. threshold_method: youden | prevalence | sensitivity@S.
        # calibration: auto (isotonic with >= isotonic_min_per_class cases of each class, else Platt) | platt |
        # isotonic | none, fitted on the inner out-of-fold predictions after the prior correction.
        "cls": {"architecture": "pattennet", "n_dab": 2, "dab_mode": "channel_spatial", "spatial_kernel": 7,
                "input_mode": "shared", "adapter_channels": 32, "reduction": 4, "head_hidden": 64, "dropout": 0.2,
                "epochs": 300, "lr": 1e-4, "weight_decay": 1e-2, "batch_size": 4, "patience": 20, "min_epochs": 0,
                "optimizer": "AdamW", "early_stopping": "nested", "inner_folds": 3, "selection_window": 3,
                "calibration": "auto", "isotonic_min_per_class": 50, "inner_val_fraction": 0.2, "augment": True,
                "cache_latents": True, "threshold_method": "youden", "swin_feature_size": 24,
                "resnet_conv1_stride": 2, "fine_channels": 16,
                # --synthetic-ratio auto: the ratios (0 = no synthetic) compared on the inner folds
                "ratio_candidates": [0.0, 0.25, 0.5, 0.75, 1.0]},
        # the generation-quality suite and the gate a synthetic set must pass before NeoCls trains on it
        # (docs/neogen.md): held-out C2ST AUC per class <= c2st_auc_max and copy rate <= copy_rate_max; a copy
        # is a synthetic patch closer to a training patch than the copy_quantile of real held-out cases;
        # bin_width: pyradiomics' fixed bin width on the z-scored patches; FRD/KID CIs: n_subsets subsets
        # without replacement of subset_fraction of each set (delete-d jackknife)
        # the radiomics baseline: features inside the tumour and inside a peritumoral shell of shell_mm (ROI
        # voxels within shell_mm of the tumour, physical distance), fixed bin width on the z-scored patches; inside
        # each training fold: standardisation, k best features (ANOVA F) and the L2 strength C, both chosen by
        # inner stratified CV (inner_folds) on AUC. Chosen a priori / on the tuning family (seed 71), see
        # docs/neocls.md "Radiomics baseline"
        "radiomics": {"shell_mm": 5.0, "bin_width": 0.25,
                      "tumour_classes": ["firstorder", "shape", "glcm", "glrlm", "glszm", "gldm", "ngtdm"],
                      "shell_classes": ["firstorder", "glcm", "glrlm", "glszm", "gldm", "ngtdm"],
                      "k_features": [2, 5, 10], "Cs": [0.01, 0.1, 1.0], "inner_folds": 3,
                      # no-signal guard: the inner AUC must beat the same search on permuted labels (p <= null_alpha
                      # over null_permutations), else every case of the fold gets the training prevalence
                      "null_permutations": 20, "null_alpha": 0.05},
        "gen_quality": {"c2st_auc_max": 0.75, "copy_rate_max": 0.05, "copy_quantile": 0.05, "bin_width": 0.25,
                        "n_subsets": 50, "subset_fraction": 0.5},
    }


def gpu_full_settings(n_vae_down: int = 2, ldm_levels: int = 3) -> dict:
    """The ``gpu_full`` preset for a crop planned with ``n_vae_down`` VAE downsamplings and ``ldm_levels``
    diffusion levels (defaults: the paper's 96×96×48 crop)."""
    return _gpu_full(n_vae_down, ldm_levels)


def paper_seg_settings() -> dict:
    """The paper's NeoSeg settings (the ``gpu_full`` seg stage), for nnU-Net runs without a neonet_plans.json."""
    return _gpu_full(2, 3)["seg"]


def paper_cls_settings() -> dict:
    """The paper's NeoCls settings (the ``gpu_full`` cls stage)."""
    return _gpu_full(2, 3)["cls"]


def _cpu_small(n_vae_down: int, ldm_levels: int) -> dict:
    """Small enough to run the whole pipeline on 2 CPU cores in minutes (learning rates raised to match)."""
    return {
        "inherits_from": "gpu_full",
        "seg": {"feature_size": 12, "window_size": 4, "epochs": 20, "iterations_per_epoch": 25,
                "val_iterations_per_epoch": 5, "initial_lr": 1e-3, "batch_size": 2},
        # measured on the 32x32x16 test phantom (16 training cases): fewer epochs leave the VAE blurring the
        # tumour away and the ControlNet ignoring the mask
        "vae": {"channels": [8, 16, 16, 32][: n_vae_down + 1], "norm_num_groups": 8, "epochs": 60, "lr": 3e-3,
                "batch_size": 2, "val_every": 10},
        "vqvae": {"channels": [16, 32, 32][:n_vae_down], "num_res_layers": 1, "num_res_channels": [16, 32, 32][:n_vae_down],
                  "num_embeddings": 64, "epochs": 60, "lr": 3e-3, "batch_size": 2, "val_every": 10},
        "ldm": {"channels": [16, 32, 32, 64][:ldm_levels], "num_res_blocks": 1, "norm_num_groups": 8,
                "attention_levels": [False] * ldm_levels, "num_head_channels": 8, "epochs": 200, "lr": 2e-3,
                "batch_size": 4, "val_every": 20},
        "controlnet": {"conditioning_embedding_num_channels": [8, 16, 16, 32][: n_vae_down + 1], "epochs": 120,
                       "lr": 2e-3, "batch_size": 4, "val_every": 20},
        "sampling": {"steps": 20},
        # measured on a 60-case phantom, 5 folds, real NeoGen VAEs (docs/neocls.md): 40 epochs with patience 10
        # "selected" epochs 0-4 on 12-case validation folds (pooled PattenNet AUC ~0.6); 60 / 20 / min 20: 0.79
        "cls": {"epochs": 60, "lr": 1e-3, "batch_size": 4, "patience": 20, "min_epochs": 20,
                "swin_feature_size": 12, "fine_channels": 8},
    }


def build_neonet_plans(*, dataset_name: str, target: str, label_roles: dict, nnunet_plans: dict,
                       nnunet_plans_name: str, seg_configuration: str, crop_size_xyz=None,
                       n_vae_down: int = 2, ldm_level_cap: int = 3, n_folds: int = 5, split_seed: int = 12345,
                       class_counts: dict | None = None) -> dict:
    cfg = nnunet_plans["configurations"][seg_configuration]
    transpose_forward = list(nnunet_plans["transpose_forward"])
    requested_xyz = list(crop_size_xyz) if crop_size_xyz is not None else list(PAPER_CROP_XYZ)
    crop = crop_xyz_to_array_order(requested_xyz, transpose_forward)
    # the crop must downsample to a latent grid that the diffusion U-Net can halve (levels - 1) times
    multiple = 2 ** (n_vae_down + 1)  # at least 2 diffusion levels
    rounded = round_up_to_multiple(crop, multiple)
    if rounded != crop:
        logger.warning("TLCR crop %s (array order) rounded up to %s: every side must be a multiple of %d "
                       "(VAE downsampling 2^%d x one diffusion U-Net halving).", crop, rounded, multiple, n_vae_down)
        crop = rounded
    latent = [c // 2 ** n_vae_down for c in crop]
    levels = max_unet_levels(latent, ldm_level_cap)
    plans = {
        "plans_name": PLANS_NAME,
        "dataset_name": dataset_name,
        "nnunet_plans": nnunet_plans_name,
        "seg_configuration": seg_configuration,
        "target": target,
        "label_roles": label_roles,
        "spacing": [float(s) for s in cfg["spacing"]],
        "transpose_forward": transpose_forward,
        "transpose_backward": list(nnunet_plans["transpose_backward"]),
        "splits": {"n_folds": n_folds, "seed": split_seed, "stratified_by": target, "file": "splits_final.json"},
        "class_counts": class_counts or {},
        "tlcr": {
            "crop_size": crop,
            "crop_size_xyz": [crop[transpose_forward.index(2 - a)] for a in range(3)],
            "requested_crop_size_xyz": requested_xyz,
            "crop_size_mm": [c * s for c, s in zip(crop, cfg["spacing"])],
            "channels": ["organ_and_tumor_masked_image", "tumor_masked_image"],
            "label_channels": ["organ_or_tumor_mask", "tumor_mask"],
        },
        "latent": {"vae_downsampling": 2 ** n_vae_down, "latent_shape": latent, "ldm_levels": levels},
        "default_configuration": {"cpu": "cpu_small", "cuda": "gpu_full"},
        # inference rules, stored with the plans the models were trained under (as nnU-Net stores its
        # postprocessing choice) and recorded in neonet_predict's provenance
        "postprocessing": dict(POSTPROCESSING),
        "configurations": {"gpu_full": _gpu_full(n_vae_down, levels), "cpu_small": _cpu_small(n_vae_down, levels)},
    }
    return plans


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if k == "inherits_from":
            continue
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


# ----------------------------------------------------------------------------- reading plans files
class PlansError(ValueError):
    """A plans file NeoNet cannot use (not JSON, wrong shape, missing keys, unsafe names); names file and fix."""


# what every neonet_plans.json holds (build_neonet_plans has written all of them since the first release)
_REQUIRED_KEYS = {"plans_name": str, "nnunet_plans": str, "seg_configuration": str, "spacing": list,
                  "tlcr": dict, "latent": dict, "configurations": dict}


def _dataset_of(path: Path) -> str:
    """The dataset a plans file belongs to, as the commands take it: its folder name (``Dataset501_Name``)."""
    return path.parent.name


def _neonet_plans_fix(path: Path | None) -> str:
    if path is None:
        return "Build the plans with build_neonet_plans (or run neonet_plan_and_preprocess)."
    ds = _dataset_of(path)
    return (f"Fix the file, or move it away and rerun `neonet_plan_and_preprocess -d {ds}`, which writes a fresh "
            f"{path.name}. Your own settings live in its \"configurations\" (a configuration of your own with "
            "\"inherits_from\"): copy them back from the old file.")


def _nnunet_plans_fix(path: Path | None) -> str:
    if path is None:
        return "Use the plans nnU-Net's planner wrote."
    return (f"{path.name} is written by nnU-Net's planner: delete it and rerun `neonet_plan_and_preprocess -d "
            f"{_dataset_of(path)}`, which regenerates it.")


def read_plans_json(path: str | Path, fix: str) -> Any:
    """The JSON content of a plans file; :class:`PlansError` naming the file and ``fix`` if it is not JSON."""
    path = Path(path)
    try:
        return load_json(path)
    except json.JSONDecodeError as e:
        raise PlansError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}). {fix}") from None
    except UnicodeDecodeError as e:
        raise PlansError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}). {fix}") from None
    except OSError as e:
        raise PlansError(f"{path} cannot be read ({e.strerror or e}). {fix}") from None


def _positive_ints(v, n: int) -> bool:
    return (isinstance(v, list) and len(v) == n
            and all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in v))


def check_neonet_plans(plans: Any, path: Path | None = None) -> dict:
    """Refuse a ``neonet_plans.json`` content NeoNet cannot use, with the file and the fix; returns it.

    Checked once, where the plans are read: the object shape, the keys every stage reads, the crop and latent
    sizes, the configurations (objects, ``inherits_from`` naming one of them), and every name that becomes part
    of a folder name (``plans_name``, ``nnunet_plans``, ``seg_configuration``, ``dataset_name``, configuration
    names) with :func:`~neonet_toolkit.utilities.identifiers.check_safe_name`. Stage settings are validated when
    a stage is read (:meth:`NeoNetPlans.stage`)."""
    where = str(path) if path is not None else "the NeoNet plans"
    fix = _neonet_plans_fix(path)
    if not isinstance(plans, dict):
        raise PlansError(f"{where} holds a JSON {type(plans).__name__}, not the NeoNet plans object. {fix}")
    missing = [k for k in _REQUIRED_KEYS if k not in plans]
    if missing:
        raise PlansError(f"{where} lacks {missing} (keys every NeoNet plans file has). {fix}")
    for key, kind in _REQUIRED_KEYS.items():
        if not isinstance(plans[key], kind):
            raise PlansError(f"{where}: {key!r} must be a JSON {'object' if kind is dict else kind.__name__}, got "
                             f"{plans[key]!r}. {fix}")
    for key in ("plans_name", "nnunet_plans", "seg_configuration"):
        check_safe_name(plans[key], repr(key), where, fix)
    if "dataset_name" in plans:
        check_safe_name(plans["dataset_name"], "'dataset_name'", where, fix, allow_double_underscore=True)
    if not _positive_ints(plans["tlcr"].get("crop_size"), 3):
        raise PlansError(f"{where}: tlcr.crop_size must be 3 positive integers, got {plans['tlcr'].get('crop_size')!r}. "
                         f"{fix}")
    if not _positive_ints(plans["latent"].get("latent_shape"), 3):
        raise PlansError(f"{where}: latent.latent_shape must be 3 positive integers, got "
                         f"{plans['latent'].get('latent_shape')!r}. {fix}")
    confs = plans["configurations"]
    if not confs:
        raise PlansError(f"{where} has no configurations. {fix}")
    for name, conf in confs.items():
        check_safe_name(name, "configuration name", where, fix)
        if not isinstance(conf, dict):
            raise PlansError(f"{where}: configuration {name!r} must be a JSON object, got {conf!r}. {fix}")
        parent = conf.get("inherits_from")
        if parent is not None and parent not in confs:
            raise PlansError(f"{where}: configuration {name!r} inherits from {parent!r}, which is not one of its "
                             f"configurations {sorted(confs)}. {fix}")
        bad = [k for k, v in conf.items() if k != "inherits_from" and not isinstance(v, dict)]
        if bad:
            raise PlansError(f"{where}: configuration {name!r}: {bad} must be JSON objects of stage settings. {fix}")
    default = plans.get("default_configuration", {})
    if not isinstance(default, dict) or any(v not in confs for v in default.values()):
        raise PlansError(f"{where}: default_configuration must map 'cpu'/'cuda' to configurations of the file "
                         f"{sorted(confs)}, got {default!r}. {fix}")
    return plans


def check_nnunet_plans(plans: Any, path: Path | None = None) -> dict:
    """Refuse nnU-Net plans (``NeoNetPlans.json``, a model's ``plans.json``) whose names would put nnU-Net's output
    outside its folders: nnU-Net builds ``nnUNet_results/<dataset_name>/<Trainer>__<plans_name>__<configuration>``
    and ``nnUNet_preprocessed/<dataset_name>/<data_identifier>`` from them. Returns ``plans``."""
    where = str(path) if path is not None else "the nnU-Net plans"
    fix = _nnunet_plans_fix(path)
    if not isinstance(plans, dict) or not isinstance(plans.get("configurations"), dict):
        raise PlansError(f"{where} is not nnU-Net plans (a JSON object with \"configurations\"). {fix}")
    for key in ("plans_name", "dataset_name"):
        if key not in plans:
            raise PlansError(f"{where} lacks {key!r}. {fix}")
    check_safe_name(plans["plans_name"], "'plans_name'", where, fix)
    check_safe_name(plans["dataset_name"], "'dataset_name'", where, fix, allow_double_underscore=True)
    for name, conf in plans["configurations"].items():
        check_safe_name(name, "nnU-Net configuration name", where, fix)
        if not isinstance(conf, dict):
            raise PlansError(f"{where}: configuration {name!r} must be a JSON object. {fix}")
        if "data_identifier" in conf:
            check_safe_name(conf["data_identifier"], f"configuration {name!r} data_identifier", where, fix)
    return plans


def load_nnunet_plans(path: str | Path) -> dict:
    """nnU-Net plans read from ``path`` and checked with :func:`check_nnunet_plans`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run `neonet_plan_and_preprocess -d {_dataset_of(path)}` first.")
    return check_nnunet_plans(read_plans_json(path, _nnunet_plans_fix(path)), path)


class NeoNetPlans:
    """Read access to ``neonet_plans.json`` with configuration inheritance resolved (checked on reading:
    :func:`check_neonet_plans`)."""

    def __init__(self, plans: dict | str | Path):
        path = None
        if not isinstance(plans, dict):
            path = Path(plans)
            if not path.is_file():
                raise FileNotFoundError(f"{path} not found: run `neonet_plan_and_preprocess -d {_dataset_of(path)}` "
                                        "first.")
            plans = read_plans_json(path, _neonet_plans_fix(path))
        self.path = path
        self.plans = check_neonet_plans(plans, path)

    def __getitem__(self, key: str) -> Any:
        return self.plans[key]

    @property
    def crop_size(self) -> list[int]:
        return list(self.plans["tlcr"]["crop_size"])

    @property
    def latent_shape(self) -> list[int]:
        return list(self.plans["latent"]["latent_shape"])

    @property
    def available_configurations(self) -> list[str]:
        return list(self.plans["configurations"])

    def default_configuration(self, device: str = "cpu") -> str:
        kind = "cuda" if str(device).startswith("cuda") else "cpu"
        return self.plans.get("default_configuration", {}).get(kind, "cpu_small")

    def configuration(self, name: str | None = None, device: str = "cpu") -> dict:
        name = name or self.default_configuration(device)
        confs = self.plans["configurations"]
        if name not in confs:
            raise KeyError(f"Configuration {name!r} is not in neonet_plans.json; available: {sorted(confs)}.")
        chain, seen = [], set()
        cur = name
        while cur is not None:
            if cur in seen:
                raise ValueError(f"neonet_plans.json: circular inherits_from at {cur!r}.")
            if cur not in confs:
                raise KeyError(f"neonet_plans.json: {chain[-1]!r} inherits from unknown configuration {cur!r}.")
            seen.add(cur)
            chain.append(cur)
            cur = confs[cur].get("inherits_from")
        resolved: dict = {}
        for c in reversed(chain):
            resolved = _merge(resolved, confs[c])
        resolved["name"] = name
        return resolved

    def stage(self, stage: str, configuration: str | None = None, device: str = "cpu") -> dict:
        """The resolved settings of one stage, validated once (unknown keys and wrong types are refused)."""
        conf = self.configuration(configuration, device)
        if stage not in conf:
            raise KeyError(f"Stage {stage!r} not configured; stages: {[s for s in conf if s != 'name']}.")
        return as_dict(validate_stage(stage, conf[stage], conf["name"]))

    def settings(self, stage: str, configuration: str | None = None, device: str = "cpu"):
        """The stage's settings as its typed, frozen dataclass (:mod:`.settings`)."""
        conf = self.configuration(configuration, device)
        return validate_stage(stage, conf[stage], conf["name"])

    def save(self, path: str | Path) -> None:
        save_json(self.plans, path)
