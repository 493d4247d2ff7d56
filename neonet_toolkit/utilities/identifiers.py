"""Every run / stage identifier and output folder, built and parsed in one place.

In the spirit of nnU-Net's ``utilities/file_path_utilities.py``: a name is built by one function
and parsed back by its inverse, and no other module assembles ``<stage>__<plans>/fold_N`` by hand.

Layout (``neonet_results`` is the NeoNet results root, see :mod:`neonet_toolkit.paths`)::

    neonet_results/<DatasetXXX_Name>/<stage_dir>__<plans_name>/fold_<N>/checkpoint_final.pth
    nnUNet_results/<DatasetXXX_Name>/<Trainer>__<nnunet_plans>__<configuration>/fold_<N>/...

``stage_dir`` is the stage key (``vae``, ``ldm``, ``controlnet``, ``synthetic``...) or, for a
classifier, a run name built by :func:`cls_run_name` (``cls_<arch>_<ratio>[_pred][_es<mode>]``).

One rule decides whether a fold is finished, for every stage (:func:`fold_is_finished`): its
``checkpoint_final.pth`` exists. Every trainer writes that file last, after all its other outputs
(predictions, summaries), so its presence means the fold completed.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from neonet_toolkit import paths

PLANS_NAME = "NeoNetPlans"          # NeoNet plans name; also the nnU-Net plans identifier NeoNet writes
NNUNET_PLANS_NAME = "NeoNetPlans"   # nnU-Net plans file written by the NeoNet planner (<name>.json)
SEG_CONFIGURATION = "3d_fullres"    # the nnU-Net configuration NeoSeg trains
FINAL_CHECKPOINT = "checkpoint_final.pth"
LATEST_CHECKPOINT = "checkpoint_latest.pth"
BEST_CHECKPOINT = "checkpoint_best.pth"

CLS_PREFIX = "cls_"
CROP_SOURCES = ("gt", "pred")
# model-selection protocols: "nested" (default: inner stratified k-fold of the training fold), "val" (the
# paper's: early stopping on the reported validation fold -- optimistic), "inner" (one inner split), "none"
EARLY_STOPPING_MODES = ("nested", "val", "inner", "none")
PROTOCOL_LABELS = {
    "nested": "nested CV (selection, calibration and threshold on inner folds of the training fold)",
    "val": "paper protocol (optimistic: early stopping on the reported validation fold)",
    "inner": "single inner split of the training fold",
    "none": "fixed epochs (last epoch, no selection)",
}
# training-set arms at a synthetic ratio r > 0 (all arms of one ratio run the same optimizer steps):
# "synthetic" = NeoGen minority patches (the paper), "both" = NeoGen patches of both classes,
# "oversample" = real minority cases repeated, "weighted" = class-weighted loss on the real cases
ARMS = ("synthetic", "both", "oversample", "weighted")
_ARM_TAGS = {"synthetic": "", "both": "_both", "oversample": "_over", "weighted": "_wloss"}
# A name read from a file (plans, dataset.json, a checkpoint) that becomes a folder name: the rule case ids follow
# (dataset/case_ids.check_case_id), so it can never leave its parent folder. '__' separates the parts of a
# result-folder name (``<stage>__<plans>``, nnU-Net's ``<Trainer>__<Plans>__<configuration>``), so a part may not
# contain it, or the folder would parse back into other parts.
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
SAFE_NAME_RULE = ("letters, digits, '_', '-' and '.' only, starting with a letter or digit, without '..', '__' or "
                  "path separators")


class UnsafeNameError(ValueError):
    """A name that would become a folder name could leave its folder (or be parsed back wrongly)."""


def check_safe_name(name, what: str = "name", where: str = "", fix: str = "", allow_double_underscore: bool = False
                    ) -> str:
    """Return ``name`` if it is safe as one folder-name segment (:data:`SAFE_NAME_RULE`), else raise
    :class:`UnsafeNameError` naming ``what``, ``where`` it was read and the ``fix``. ``allow_double_underscore``
    for names that are never one part of a ``__``-joined folder name (e.g. dataset folders)."""
    ok = isinstance(name, str) and bool(_SAFE_NAME.match(name)) and ".." not in name and (
        allow_double_underscore or "__" not in name)
    if not ok:
        rule = SAFE_NAME_RULE if not allow_double_underscore else SAFE_NAME_RULE.replace(", '__'", "")
        raise UnsafeNameError(f"{what} {name!r}{' in ' + str(where) if where else ''} is not a safe folder name "
                              f"(allowed: {rule}); it becomes part of a result path, so it is refused."
                              f"{' ' + fix if fix else ''}")
    return name


_CLS_RUN_RE = re.compile(r"^cls_(?P<arch>[a-z0-9]+(?:_[a-z][a-z0-9]*)*?)_(?P<ratio>\d+(?:\.\d+)?)"
                         r"(?P<arm>_both|_over|_wloss)?(?P<pred>_pred)?(?:_es(?P<es>nested|val|inner|none))?$")


# ----------------------------------------------------------------------------- folders
def dataset_folders(dataset: int | str) -> tuple[str, Path, Path]:
    """(dataset name, nnUNet_preprocessed/<name>, neonet_results/<name>)."""
    env = paths.ensure_environment()
    name = check_safe_name(paths.find_dataset_name(dataset), "dataset name", allow_double_underscore=True)
    return name, env["nnUNet_preprocessed"] / name, env["neonet_results"] / name


def stage_folder_name(stage_dir: str, plans_name: str = PLANS_NAME) -> str:
    """``<stage_dir>__<plans_name>`` (both parts checked with :func:`check_safe_name`)."""
    check_safe_name(stage_dir, "stage/run name")
    check_safe_name(plans_name, "plans name")
    return f"{stage_dir}__{plans_name}"


def parse_stage_folder_name(folder_name: str) -> tuple[str, str]:
    """Inverse of :func:`stage_folder_name`: ``(stage_dir, plans_name)``."""
    stage_dir, sep, plans_name = folder_name.rpartition("__")
    if not sep or not stage_dir or not plans_name:
        raise ValueError(f"{folder_name!r} is not a '<stage>__<plans>' result folder name.")
    return stage_dir, plans_name


def stage_root(results_root: Path, stage_dir: str, plans_name: str = PLANS_NAME) -> Path:
    """``<results_root>/<stage_dir>__<plans>`` (results_root = neonet_results/<DatasetXXX_Name>)."""
    return Path(results_root) / stage_folder_name(stage_dir, plans_name)


def fold_folder_name(fold: int) -> str:
    return f"fold_{int(fold)}"


def parse_fold_folder_name(name: str) -> int | None:
    m = re.fullmatch(r"fold_(\d+)", name)
    return int(m.group(1)) if m else None


def stage_fold_folder(dataset: int | str, stage_dir: str, fold: int, plans_name: str = PLANS_NAME) -> Path:
    """``neonet_results/<ds>/<stage_dir>__<plans>/fold_N``."""
    _, _, res = dataset_folders(dataset)
    return stage_root(res, stage_dir, plans_name) / fold_folder_name(fold)


def staging_fold_folder(fold_folder: Path, prefix: str = "") -> Path:
    """``<prefix>fold_N.overwriting`` next to ``fold_N``: where ``--overwrite`` trains until the new model is
    finished and verified (never taken for a fold: :func:`parse_fold_folder_name` does not match it). nnU-Net
    model folders use ``prefix="new-"``: nnU-Net takes every ``fold_*`` folder of a model for a fold."""
    return Path(fold_folder).with_name(f"{prefix}{Path(fold_folder).name}.overwriting")


def fold_folders(run_root: Path) -> dict[int, Path]:
    """{fold: folder} for every ``fold_N`` directory under a stage/run root."""
    out: dict[int, Path] = {}
    if Path(run_root).is_dir():
        for p in sorted(Path(run_root).iterdir()):
            k = parse_fold_folder_name(p.name)
            if k is not None and p.is_dir():
                out[k] = p
    return out


def fold_is_finished(fold_folder: Path) -> bool:
    """The one "finished" rule for every stage (NeoNet and nnU-Net): ``checkpoint_final.pth`` exists."""
    return (Path(fold_folder) / FINAL_CHECKPOINT).is_file()


def finished_folds(run_root: Path) -> dict[int, Path]:
    return {k: f for k, f in fold_folders(run_root).items() if fold_is_finished(f)}


def nnunet_trainer_folder_name(trainer: str, nnunet_plans: str = NNUNET_PLANS_NAME,
                               configuration: str = SEG_CONFIGURATION) -> str:
    """nnU-Net's ``<Trainer>__<Plans>__<configuration>`` result folder name (each part checked)."""
    for what, part in (("nnU-Net trainer name", trainer), ("nnU-Net plans name", nnunet_plans),
                       ("nnU-Net configuration", configuration)):
        check_safe_name(part, what)
    return f"{trainer}__{nnunet_plans}__{configuration}"


def nnunet_model_folder(dataset: int | str, trainer: str, nnunet_plans: str = NNUNET_PLANS_NAME,
                        configuration: str = SEG_CONFIGURATION) -> Path:
    """``nnUNet_results/<ds>/<Trainer>__<Plans>__<configuration>``."""
    env = paths.ensure_environment()
    name = check_safe_name(paths.find_dataset_name(dataset), "dataset name", allow_double_underscore=True)
    return env["nnUNet_results"] / name / nnunet_trainer_folder_name(trainer, nnunet_plans, configuration)


# ----------------------------------------------------------------------------- classifier runs
def ratio_tag(ratio: float) -> str:
    return f"{float(ratio):g}"


@dataclass(frozen=True)
class ClsRunId:
    """What a NeoCls run name encodes. ``arch`` is the canonical architecture name."""

    arch: str
    ratio: float = 0.0
    crop_source: str = "gt"
    early_stopping: str = "val"
    arm: str = "synthetic"

    def __post_init__(self):
        if self.arm not in ARMS:
            raise ValueError(f"arm must be one of {ARMS}, got {self.arm!r}.")
        if self.crop_source not in CROP_SOURCES:
            raise ValueError(f"crop_source must be one of {CROP_SOURCES}, got {self.crop_source!r}.")
        if self.early_stopping not in EARLY_STOPPING_MODES:
            raise ValueError(f"early_stopping must be one of {EARLY_STOPPING_MODES}, got {self.early_stopping!r}.")

    @property
    def name(self) -> str:
        return cls_run_name(self.arch, self.ratio, self.crop_source, self.early_stopping, self.arm)

    @property
    def protocol_label(self) -> str:
        return PROTOCOL_LABELS[self.early_stopping]


def cls_run_name(arch: str, ratio: float = 0.0, crop_source: str = "gt", early_stopping: str = "val",
                 arm: str = "synthetic") -> str:
    """Result-folder prefix of a NeoCls run, e.g. ``cls_pattennet_1_esnested`` or ``cls_resnet50_0.5_over_pred``.

    No ``_es`` suffix means the paper's ``val`` protocol (names written before the nested default keep
    their meaning); the arm tag is absent for the paper's arm (synthetic minority patches) and for ratio 0."""
    if crop_source not in CROP_SOURCES:
        raise ValueError(f"crop_source must be one of {CROP_SOURCES}, got {crop_source!r}.")
    if early_stopping not in EARLY_STOPPING_MODES:
        raise ValueError(f"early_stopping must be one of {EARLY_STOPPING_MODES}, got {early_stopping!r}.")
    if arm not in ARMS:
        raise ValueError(f"arm must be one of {ARMS}, got {arm!r}.")
    if float(ratio) == 0.0 and arm != "synthetic":
        raise ValueError(f"arm {arm!r} needs a synthetic ratio > 0 (it sets the class balance to match).")
    name = f"{CLS_PREFIX}{arch}_{ratio_tag(ratio)}{_ARM_TAGS[arm]}"
    if crop_source != "gt":
        name += f"_{crop_source}"
    if early_stopping != "val":
        name += f"_es{early_stopping}"
    return name


def parse_cls_run_name(name: str) -> ClsRunId | None:
    """Inverse of :func:`cls_run_name`; ``None`` for a name that is not a classifier run (e.g. a report)."""
    m = _CLS_RUN_RE.match(name)
    if not m:
        return None
    arm = {v: k for k, v in _ARM_TAGS.items()}[m.group("arm") or ""]
    return ClsRunId(arch=m.group("arch"), ratio=float(m.group("ratio")),
                    crop_source="pred" if m.group("pred") else "gt", early_stopping=m.group("es") or "val", arm=arm)


def list_cls_runs(results_root: Path, plans_name: str = PLANS_NAME, finished_only: bool = True) -> list[str]:
    """Classifier run names under ``neonet_results/<ds>`` with at least one (finished) fold.

    Folders that are not trained runs (evaluation reports, shortcut checks, ...) never match."""
    out = []
    root = Path(results_root)
    check_safe_name(plans_name, "plans name")
    if not root.is_dir():
        return out
    for d in sorted(root.glob(f"{CLS_PREFIX}*__{plans_name}")):
        try:
            run, _ = parse_stage_folder_name(d.name)
        except ValueError:
            continue
        if parse_cls_run_name(run) is None:
            continue
        folds = finished_folds(d) if finished_only else fold_folders(d)
        if folds:
            out.append(run)
    return out


# ----------------------------------------------------------------------------- NeoGen stage and synthetic-set names
# Which autoencoder the latent stages use, the diffusion training objective (ε prediction or rectified-flow
# velocity), and what the ControlNet is conditioned on ("mask_class": mask + PNI label, NeoNet's default;
# "mask": the anatomical mask only, the paper). A synthetic set also records its generator ("controlnet":
# the mask-conditioned NeoGen; "dm": the latent diffusion model alone, Table 4's "DM" rows).
AUTOENCODERS = ("vae", "vqvae")
OBJECTIVES = ("eps", "rflow")
CONDITIONINGS = ("mask_class", "mask")
GENERATORS = ("controlnet", "dm")
SAMPLER_OF_OBJECTIVE = {"eps": "ddim", "rflow": "rflow"}
_GEN_TAGS = (("generator", "dm", "_dm"), ("autoencoder", "vqvae", "_vqvae"), ("objective", "rflow", "_rflow"),
             ("conditioning", "mask", "_maskonly"))
_GEN_STAGE_RE = re.compile(r"^(?P<stage>ldm|controlnet|synthetic)(?P<dm>_dm)?(?P<vq>_vqvae)?(?P<rf>_rflow)?"
                           r"(?P<mask>_maskonly)?$")


@dataclass(frozen=True)
class GenRunId:
    """What a latent-diffusion stage folder (``ldm``, ``controlnet``) or a synthetic-set folder encodes.

    The defaults (VAE latents, ε objective, mask + class ControlNet, ControlNet generator) give the names
    written before these variants existed: ``ldm``, ``controlnet``, ``synthetic``."""

    stage: str                      # "ldm" | "controlnet" | "synthetic"
    autoencoder: str = "vae"
    objective: str = "eps"
    conditioning: str = "mask_class"  # ControlNet (and its synthetic sets) only
    generator: str = "controlnet"     # synthetic sets only

    def __post_init__(self):
        if self.stage not in ("ldm", "controlnet", "synthetic"):
            raise ValueError(f"stage must be ldm, controlnet or synthetic, got {self.stage!r}.")
        for field_name, allowed in (("autoencoder", AUTOENCODERS), ("objective", OBJECTIVES),
                                    ("conditioning", CONDITIONINGS), ("generator", GENERATORS)):
            if getattr(self, field_name) not in allowed:
                raise ValueError(f"{field_name} must be one of {allowed}, got {getattr(self, field_name)!r}.")
        if self.stage != "synthetic" and self.generator != "controlnet":
            raise ValueError("generator is a property of synthetic sets only.")
        uses_conditioning = self.stage == "controlnet" or (self.stage == "synthetic" and self.generator == "controlnet")
        if not uses_conditioning and self.conditioning != "mask_class":
            raise ValueError(f"conditioning {self.conditioning!r} applies to ControlNet stages and sets only.")

    @property
    def name(self) -> str:
        return self.stage + "".join(tag for field_name, value, tag in _GEN_TAGS if getattr(self, field_name) == value)

    @property
    def sampler(self) -> str:
        """The sampler that matches the objective (DDIM for ε, Euler rectified flow for velocity)."""
        return SAMPLER_OF_OBJECTIVE[self.objective]

    def upstream(self, stage: str) -> "GenRunId":
        """The id of the ``ldm`` / ``controlnet`` stage this run or set is built on (same latents, same objective)."""
        return GenRunId(stage=stage, autoencoder=self.autoencoder, objective=self.objective,
                        conditioning=self.conditioning if stage == "controlnet" else "mask_class")


def gen_stage_dir(stage: str, autoencoder: str = "vae", objective: str = "eps", conditioning: str = "mask_class",
                  generator: str = "controlnet") -> str:
    """Folder prefix of a latent-diffusion stage or synthetic set, e.g. ``ldm_vqvae_rflow``,
    ``controlnet_maskonly``, ``synthetic_dm_vqvae`` (defaults: ``ldm``, ``controlnet``, ``synthetic``)."""
    return GenRunId(stage, autoencoder, objective, conditioning, generator).name


def parse_gen_stage_dir(name: str) -> GenRunId | None:
    """Inverse of :func:`gen_stage_dir`; ``None`` for any other folder prefix."""
    m = _GEN_STAGE_RE.match(name)
    if not m:
        return None
    try:
        return GenRunId(stage=m.group("stage"), autoencoder="vqvae" if m.group("vq") else "vae",
                        objective="rflow" if m.group("rf") else "eps",
                        conditioning="mask" if m.group("mask") else "mask_class",
                        generator="dm" if m.group("dm") else "controlnet")
    except ValueError:
        return None


def list_synthetic_sets(results_root: Path, fold: int, plans_name: str = PLANS_NAME) -> dict[str, GenRunId]:
    """{folder prefix: id} of every synthetic set of ``fold`` under ``neonet_results/<ds>`` that has a manifest."""
    out = {}
    check_safe_name(plans_name, "plans name")
    for d in sorted(Path(results_root).glob(f"synthetic*__{plans_name}")):
        try:
            prefix, _ = parse_stage_folder_name(d.name)
        except ValueError:
            continue
        rid = parse_gen_stage_dir(prefix)
        if rid is not None and rid.stage == "synthetic" and (d / fold_folder_name(fold) / "manifest.json").is_file():
            out[prefix] = rid
    return out
