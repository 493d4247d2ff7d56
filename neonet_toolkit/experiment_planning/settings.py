"""Typed, validated stage settings: the plans file is the only source of a stage's settings.

Every stage of a resolved ``neonet_plans.json`` configuration is checked once, when a trainer (or any
reader) asks for it through :meth:`NeoNetPlans.stage`: an unknown key (a typo such as ``"epoch"``) or a
value of the wrong type is refused with a message naming the configuration, the stage, the key and
the known keys. The dataclasses below document every setting; their fields carry no defaults, the
values come from the presets in :mod:`neonet_toolkit.experiment_planning.plans` (which a user
configuration inherits with ``inherits_from``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any

Num = (int, float)


@dataclass(frozen=True)
class SegSettings:
    architecture: str
    feature_size: int
    window_size: int
    depths: list
    num_heads: list
    segresnet_init_filters: int
    unet_num_res_units: int
    batch_size: int
    epochs: int
    iterations_per_epoch: int
    val_iterations_per_epoch: int
    initial_lr: float
    weight_decay: float
    optimizer: str
    loss: str


@dataclass(frozen=True)
class VAESettings:
    channels: list
    latent_channels: int
    num_res_blocks: int
    norm_num_groups: int
    attention_levels: list
    kl_weight: float
    loss: str
    epochs: int
    lr: float
    batch_size: int
    weight_decay: float
    val_every: int


@dataclass(frozen=True)
class VQVAESettings:
    channels: list
    num_res_layers: int
    num_res_channels: list
    num_embeddings: int
    embedding_dim: int
    commitment_cost: float
    ema_decay: float
    codebook_restart: bool
    loss: str
    epochs: int
    lr: float
    batch_size: int
    weight_decay: float
    val_every: int


@dataclass(frozen=True)
class LDMSettings:
    autoencoder: str
    objective: str
    rflow_sample_method: str
    channels: list
    num_res_blocks: int
    norm_num_groups: int
    attention_levels: list
    num_head_channels: int
    num_train_timesteps: int
    schedule: str
    beta_start: float
    beta_end: float
    loss: str
    epochs: int
    lr: float
    batch_size: int
    weight_decay: float
    val_every: int


@dataclass(frozen=True)
class ControlNetSettings:
    conditioning_embedding_num_channels: list
    class_conditional: bool
    epochs: int
    lr: float
    batch_size: int
    weight_decay: float
    loss: str
    val_every: int


@dataclass(frozen=True)
class SamplingSettings:
    steps: int
    sampler: str
    eta: float


@dataclass(frozen=True)
class ClsSettings:
    architecture: str
    n_dab: int
    dab_mode: str
    spatial_kernel: int
    input_mode: str
    adapter_channels: int
    reduction: int
    head_hidden: int
    dropout: float
    epochs: int
    lr: float
    weight_decay: float
    batch_size: int
    patience: int
    min_epochs: int
    optimizer: str
    early_stopping: str
    inner_folds: int
    selection_window: int
    calibration: str
    isotonic_min_per_class: int
    inner_val_fraction: float
    augment: bool
    cache_latents: bool
    threshold_method: str
    swin_feature_size: int
    resnet_conv1_stride: int
    fine_channels: int
    ratio_candidates: list


@dataclass(frozen=True)
class RadiomicsSettings:
    """The radiomics baseline (``training/radiomics.py``)."""
    shell_mm: float
    bin_width: float
    tumour_classes: list
    shell_classes: list
    k_features: list
    Cs: list
    inner_folds: int
    null_permutations: int
    null_alpha: float


@dataclass(frozen=True)
class GenQualitySettings:
    """The generation-quality suite (``neonet_evaluate DATASET gen``) and the gate in front of NeoCls."""
    c2st_auc_max: float
    copy_rate_max: float
    copy_quantile: float
    bin_width: float
    n_subsets: int
    subset_fraction: float


STAGE_SETTINGS = {"seg": SegSettings, "vae": VAESettings, "vqvae": VQVAESettings, "ldm": LDMSettings, "controlnet": ControlNetSettings,
                  "sampling": SamplingSettings, "cls": ClsSettings, "gen_quality": GenQualitySettings,
                  "radiomics": RadiomicsSettings}
_TYPES = {"int": int, "float": Num, "str": str, "bool": bool, "list": list}


class SettingTypeError(TypeError, ValueError):
    """A stage setting of the wrong type (a ``ValueError`` too, so the commands report it as a user error)."""


def validate_stage(stage: str, values: dict, configuration: str = "?") -> Any:
    """The stage's settings as its frozen dataclass; raise naming the problem (unknown key, wrong type,
    missing key). Stages without a dataclass (user extensions) are returned unchanged."""
    cls = STAGE_SETTINGS.get(stage)
    if cls is None:
        return values
    known = {f.name: f for f in fields(cls)}
    where = f"neonet_plans.json configuration {configuration!r}, stage {stage!r}"
    if not isinstance(values, dict):
        raise SettingTypeError(f"{where} must be a JSON object of settings, got {values!r}. Fix neonet_plans.json "
                               "(the gpu_full configuration lists every setting).")
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise KeyError(f"{where}: unknown setting(s) {unknown}; known settings: {sorted(known)}. Fix the spelling "
                       "or remove them.")
    missing = sorted(set(known) - set(values))
    if missing:
        raise KeyError(f"{where}: missing setting(s) {missing}. Re-plan with `neonet_plan_and_preprocess --clean` "
                       "or add them (the gpu_full configuration lists every setting).")
    for name, f in known.items():
        want = _TYPES[f.type if isinstance(f.type, str) else f.type.__name__]
        v = values[name]
        ok = isinstance(v, want) and not (want in (int, Num) and isinstance(v, bool) and f.type != "bool")
        if want is int and isinstance(v, float) and float(v).is_integer():
            ok = True
        if not ok:
            raise SettingTypeError(f"{where}: setting {name!r} must be {f.type}, got {v!r}.")
    return cls(**{k: values[k] for k in known})


def as_dict(settings) -> dict:
    return dataclasses.asdict(settings) if dataclasses.is_dataclass(settings) else dict(settings)
