"""Every result folder NeoNet writes or reads, built and parsed in one place: :class:`ResultLayout`.

In the spirit of nnU-Net's ``utilities/file_path_utilities.py``: a name is built by one method and parsed back by
its inverse, and no other module assembles ``<stage>__<plans>/fold_N`` or ``<Trainer>__<Plans>__<config>`` by hand.
A command resolves its dataset once (``layout = ResultLayout.for_dataset(ds)``) and passes the layout down.

Layout (``neonet_results`` is the NeoNet results root, see :mod:`neonet_toolkit.paths`)::

    neonet_results/<DatasetXXX_Name>/<stage_dir>__<plans_name>/fold_<N>/checkpoint_final.pth
    neonet_results/<DatasetXXX_Name>/<report>__<plans_name>/...          (evaluation reports, shortcut checks)
    neonet_results/<DatasetXXX_Name>/evaluation/seg/                       (NeoSeg Dice tables)
    nnUNet_results/<DatasetXXX_Name>/<Trainer>__<nnunet_plans>__<configuration>/fold_<N>/...

``stage_dir`` is the stage key (``vae``, ``vqvae``, ``ldm``, ``controlnet``, ``synthetic``... see
:func:`gen_stage_dir`) or, for a classifier, a run name built by :func:`cls_run_name`
(``cls_<arch>_<ratio>[_pred][_es<mode>]``).

One "finished" rule per artefact kind (:meth:`ResultLayout.is_finished`, :data:`FINISHED_RULES`):

* ``model`` -- a trained fold of any stage (NeoNet trainers, NeoCls runs, nnU-Net/NeoSeg folds):
  ``fold_N/checkpoint_final.pth`` exists. Every trainer writes it last, after its other outputs.
  (The ``extra.finished`` flag inside a NeoCls checkpoint and the "--c with more epochs?" check of the
  classifier trainer are not finished rules: the first is a content check when loading, the second a resume
  decision about an already finished fold.)
* ``seg_validation`` -- an nnU-Net fold that was validated: ``fold_N/validation/summary.json`` exists
  (nnU-Net writes it after ``checkpoint_final.pth``; the NeoSeg Dice tables read it).
* ``cls_predictions`` -- a classifier fold's out-of-fold predictions (deep runs, the radiomics baseline and
  late fusion, which have no checkpoint): ``fold_N/oof_predictions.csv`` and ``fold_N/cls_summary.json`` exist
  (the summary is written after the CSV).
* ``synthetic_set`` -- a generated set: ``fold_N/manifest.json`` exists (written after the patches).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from nnunetv2.utilities.file_path_utilities import (
    convert_identifier_to_trainer_plans_config,
    convert_trainer_plans_config_to_identifier,
    folds_tuple_to_string,
)

from neonet_toolkit import paths

PLANS_NAME = "NeoNetPlans"          # NeoNet plans name: the only place the literal is written
NNUNET_PLANS_NAME = PLANS_NAME      # nnU-Net plans identifier the NeoNet planner writes (<name>.json)
SEG_CONFIGURATION = "3d_fullres"    # the nnU-Net configuration NeoSeg trains
FINAL_CHECKPOINT = "checkpoint_final.pth"
LATEST_CHECKPOINT = "checkpoint_latest.pth"
BEST_CHECKPOINT = "checkpoint_best.pth"
NNUNET_VALIDATION_SUMMARY = "validation/summary.json"  # nnU-Net's per-fold validation metrics
OOF_FILE = "oof_predictions.csv"    # a classifier fold's out-of-fold predictions
CLS_SUMMARY_FILE = "cls_summary.json"
SYNTHETIC_MANIFEST = "manifest.json"
GEN_EVALUATION_DIR = "gen_evaluation"  # report folders: <report>__<plans>[/fold_N] (ResultLayout.report_folder)
CLS_EVALUATION_DIR = "cls_evaluation"
CLS_SHORTCUT_DIR = "cls_shortcut"
BEST_CONFIGURATION_DIR = "cls_best_configuration"  # neonet_find_best_configuration: the choice + its report
BEST_CONFIGURATION_FILE = "best_configuration.json"
SEG_EVALUATION_DIR = ("evaluation", "seg")  # neonet_results/<ds>/evaluation/seg (NeoSeg Dice tables)
DEMO_DIR = "demo"  # neonet_results/<ds>/demo (the demo's report and predictions)
EXPERIMENT_DIR = "experiment"  # neonet_results/<ds>/experiment__<plans>: neonet_experiment's job logs, locks, states
# the one "finished" rule per artefact kind: the files whose presence means the artefact is complete
FINISHED_RULES: dict[str, tuple[str, ...]] = {
    "model": (FINAL_CHECKPOINT,),
    "seg_validation": (NNUNET_VALIDATION_SUMMARY,),
    "cls_predictions": (OOF_FILE, CLS_SUMMARY_FILE),
    "synthetic_set": (SYNTHETIC_MANIFEST,),
}

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


_CLS_RUN_RE = re.compile(r"^cls_(?P<arch>[a-z0-9]+(?:_[a-z][a-z0-9]*)*?)_(?P<ratio>\d+(?:\.\d+)?|auto)"
                         r"(?P<arm>_both|_over|_wloss)?(?P<pred>_pred)?(?:_es(?P<es>nested|val|inner|none))?$")


# ----------------------------------------------------------------------------- folders
_FOLD_RE = re.compile(r"fold_(\d+)")


@dataclass(frozen=True)
class NnUNetModelId:
    """What nnU-Net's model folder name ``<Trainer>__<Plans>__<configuration>`` encodes."""

    trainer: str
    plans: str = NNUNET_PLANS_NAME
    configuration: str = SEG_CONFIGURATION

    @property
    def name(self) -> str:
        return ResultLayout.nnunet_identifier(self.trainer, self.plans, self.configuration)


@dataclass(frozen=True)
class ResultLayout:
    """Builds and parses every result folder of one dataset; owns the "finished" rules (module docstring).

    ``dataset_name`` is a resolved name (``Dataset501_Name``); :meth:`for_dataset` resolves an id once. The
    environment folders are read once at construction unless given (tests pass them)."""

    dataset_name: str
    plans_name: str = PLANS_NAME
    nnunet_plans: str = NNUNET_PLANS_NAME
    env: dict | None = field(default=None, compare=False, repr=False)

    def __post_init__(self):
        check_safe_name(self.dataset_name, "dataset name", allow_double_underscore=True)
        check_safe_name(self.plans_name, "plans name")
        check_safe_name(self.nnunet_plans, "nnU-Net plans name")
        env = paths.ensure_environment() if self.env is None else {k: Path(v) for k, v in self.env.items()}
        object.__setattr__(self, "env", env)

    def __str__(self) -> str:
        return self.dataset_name

    @classmethod
    def for_dataset(cls, dataset: int | str | ResultLayout, plans_name: str = PLANS_NAME) -> ResultLayout:
        """The layout of ``dataset`` (an id, a name, or a layout, returned as it is when its plans name matches):
        the dataset name is resolved here, once per command."""
        if isinstance(dataset, ResultLayout):
            return dataset if dataset.plans_name == plans_name else replace(dataset, plans_name=plans_name)
        return cls(paths.find_dataset_name(dataset), plans_name)

    # -- dataset folders
    @property
    def preprocessed(self) -> Path:
        """``nnUNet_preprocessed/<ds>``."""
        return self.env["nnUNet_preprocessed"] / self.dataset_name

    @property
    def results(self) -> Path:
        """``neonet_results/<ds>``."""
        return self.env["neonet_results"] / self.dataset_name

    @property
    def nnunet_results(self) -> Path:
        """``nnUNet_results/<ds>``."""
        return self.env["nnUNet_results"] / self.dataset_name

    @property
    def nnunet_plans_file(self) -> Path:
        """``nnUNet_preprocessed/<ds>/<nnunet_plans>.json`` (the nnU-Net plans the NeoNet planner writes)."""
        return self.preprocessed / f"{self.nnunet_plans}.json"

    def folders(self) -> tuple[str, Path, Path]:
        """(dataset name, preprocessed folder, NeoNet results folder): :func:`dataset_folders`."""
        return self.dataset_name, self.preprocessed, self.results

    # -- NeoNet stage / run / report folders
    @staticmethod
    def stage_folder_name(stage_dir: str, plans_name: str = PLANS_NAME) -> str:
        """``<stage_dir>__<plans_name>`` (both parts checked with :func:`check_safe_name`)."""
        check_safe_name(stage_dir, "stage/run name")
        check_safe_name(plans_name, "plans name")
        return f"{stage_dir}__{plans_name}"

    @staticmethod
    def parse_stage_folder_name(folder_name: str) -> tuple[str, str]:
        """Inverse of :meth:`stage_folder_name`: ``(stage_dir, plans_name)``."""
        stage_dir, sep, plans_name = folder_name.rpartition("__")
        if not sep or not stage_dir or not plans_name:
            raise ValueError(f"{folder_name!r} is not a '<stage>__<plans>' result folder name.")
        return stage_dir, plans_name

    def stage_root(self, stage_dir: str) -> Path:
        """``neonet_results/<ds>/<stage_dir>__<plans>``: a stage, a classifier run, a synthetic set or a report."""
        return self.results / self.stage_folder_name(stage_dir, self.plans_name)

    def fold_folder(self, stage_dir: str, fold: int) -> Path:
        """``neonet_results/<ds>/<stage_dir>__<plans>/fold_N``."""
        return self.stage_root(stage_dir) / self.fold_folder_name(fold)

    def checkpoint(self, stage_dir: str, fold: int, name: str = FINAL_CHECKPOINT) -> Path:
        """A checkpoint file of a NeoNet stage fold (default ``checkpoint_final.pth``)."""
        return self.fold_folder(stage_dir, fold) / name

    def report_folder(self, report: str, fold: int | None = None) -> Path:
        """``neonet_results/<ds>/<report>__<plans>[/fold_N]`` (e.g. ``gen_evaluation``, ``cls_evaluation``)."""
        root = self.stage_root(report)
        return root if fold is None else root / self.fold_folder_name(fold)

    def best_configuration_file(self) -> Path:
        """``neonet_results/<ds>/cls_best_configuration__<plans>/best_configuration.json``: the NeoCls configuration
        chosen by ``neonet_find_best_configuration``, which ``neonet_predict`` uses by default."""
        return self.report_folder(BEST_CONFIGURATION_DIR) / BEST_CONFIGURATION_FILE

    def shortcut_check_file(self, fold: int, ratio: float, crop_source: str = "gt") -> Path:
        """``neonet_results/<ds>/cls_shortcut__<plans>/fold_N_r<ratio>_<crop>.json`` (one real-vs-synthetic check)."""
        if crop_source not in CROP_SOURCES:
            raise ValueError(f"crop_source must be one of {CROP_SOURCES}, got {crop_source!r}.")
        name = f"{self.fold_folder_name(fold)}_r{ratio_tag(ratio)}_{crop_source}.json"
        return self.report_folder(CLS_SHORTCUT_DIR) / name

    def shortcut_check_files(self) -> list[Path]:
        """Every shortcut-check file written by :meth:`shortcut_check_file`, sorted."""
        d = self.report_folder(CLS_SHORTCUT_DIR)
        return sorted(d.glob("fold_*.json")) if d.is_dir() else []

    @property
    def seg_evaluation_folder(self) -> Path:
        """``neonet_results/<ds>/evaluation/seg`` (NeoSeg Dice tables)."""
        return self.results.joinpath(*SEG_EVALUATION_DIR)

    @property
    def experiment_folder(self) -> Path:
        """``neonet_results/<ds>/experiment__<plans>``: the job graph's logs, locks, states and SLURM job ids."""
        return self.results / self.stage_folder_name(EXPERIMENT_DIR, self.plans_name)

    @property
    def demo_folder(self) -> Path:
        """``neonet_results/<ds>/demo`` (the one-command demo's report and predictions)."""
        return self.results / DEMO_DIR

    # -- fold folders (the one parser)
    @staticmethod
    def fold_folder_name(fold: int | str) -> str:
        """``fold_N`` (``fold_all`` for nnU-Net's fold ``"all"``: trained on every case, never parsed as a fold)."""
        return "fold_all" if fold == "all" else f"fold_{int(fold)}"

    @staticmethod
    def parse_fold_folder_name(name: str) -> int | None:
        """Inverse of :meth:`fold_folder_name`; ``None`` for anything else (``fold_0.overwriting``, ``fold_x``)."""
        m = _FOLD_RE.fullmatch(name)
        return int(m.group(1)) if m else None

    @staticmethod
    def fold_folders(run_root: Path) -> dict[int, Path]:
        """{fold: folder} for every ``fold_N`` directory under a stage/run/nnU-Net model folder."""
        out: dict[int, Path] = {}
        if Path(run_root).is_dir():
            for p in sorted(Path(run_root).iterdir()):
                k = ResultLayout.parse_fold_folder_name(p.name)
                if k is not None and p.is_dir():
                    out[k] = p
        return out

    @staticmethod
    def staging_fold_folder(fold_folder: Path, prefix: str = "") -> Path:
        """``<prefix>fold_N.overwriting`` next to ``fold_N``: where ``--overwrite`` trains until the new model is
        finished and verified (never parsed as a fold). nnU-Net model folders use ``prefix="new-"``: nnU-Net
        takes every ``fold_*`` folder of a model for a fold."""
        return Path(fold_folder).with_name(f"{prefix}{Path(fold_folder).name}.overwriting")

    # -- "finished": one rule per artefact kind
    @staticmethod
    def is_finished(kind: str, fold_folder: Path) -> bool:
        """Whether the artefact of ``kind`` (:data:`FINISHED_RULES`) in ``fold_folder`` is complete."""
        if kind not in FINISHED_RULES:
            raise ValueError(f"Unknown artefact kind {kind!r}; known: {sorted(FINISHED_RULES)}.")
        return all((Path(fold_folder) / f).is_file() for f in FINISHED_RULES[kind])

    @staticmethod
    def finished_folds(run_root: Path, kind: str = "model") -> dict[int, Path]:
        """{fold: folder} of the folds under ``run_root`` whose ``kind`` artefact is finished."""
        return {k: f for k, f in ResultLayout.fold_folders(run_root).items() if ResultLayout.is_finished(kind, f)}

    # -- classifier runs and synthetic sets
    def cls_runs(self, finished_only: bool = True, kind: str = "model") -> list[str]:
        """Classifier run names with at least one fold (finished by the ``kind`` rule if ``finished_only``).
        Folders that are not classifier runs (reports, shortcut checks...) never match."""
        out = []
        if not self.results.is_dir():
            return out
        for d in sorted(self.results.glob(f"{CLS_PREFIX}*__{self.plans_name}")):
            run, plans = self.parse_stage_folder_name(d.name)
            if plans != self.plans_name or parse_cls_run_name(run) is None:
                continue
            if self.finished_folds(d, kind) if finished_only else self.fold_folders(d):
                out.append(run)
        return out

    def synthetic_sets(self, fold: int) -> dict[str, GenRunId]:
        """{folder prefix: id} of every finished synthetic set of ``fold`` (rule ``synthetic_set``)."""
        out = {}
        for d in sorted(self.results.glob(f"synthetic*__{self.plans_name}")):
            prefix, plans = self.parse_stage_folder_name(d.name)
            rid = parse_gen_stage_dir(prefix)
            if (plans == self.plans_name and rid is not None and rid.stage == "synthetic"
                    and self.is_finished("synthetic_set", d / self.fold_folder_name(fold))):
                out[prefix] = rid
        return out

    # -- nnU-Net model folders
    @staticmethod
    def nnunet_identifier(trainer: str, nnunet_plans: str = NNUNET_PLANS_NAME,
                          configuration: str = SEG_CONFIGURATION) -> str:
        """nnU-Net's ``<Trainer>__<Plans>__<configuration>`` model folder name (each part checked)."""
        for what, part in (("nnU-Net trainer name", trainer), ("nnU-Net plans name", nnunet_plans),
                           ("nnU-Net configuration", configuration)):
            check_safe_name(part, what)
        return convert_trainer_plans_config_to_identifier(trainer, nnunet_plans, configuration)

    @staticmethod
    def parse_nnunet_identifier(name: str) -> NnUNetModelId | None:
        """Inverse of :meth:`nnunet_identifier` (nnU-Net's ``convert_identifier_to_trainer_plans_config``);
        ``None`` for a name that is not exactly three non-empty ``__``-separated parts."""
        parts = convert_identifier_to_trainer_plans_config(name)
        if len(parts) != 3 or not all(parts):
            return None
        return NnUNetModelId(*parts)

    def nnunet_model_folder(self, trainer: str, configuration: str = SEG_CONFIGURATION) -> Path:
        """``nnUNet_results/<ds>/<Trainer>__<nnunet_plans>__<configuration>``."""
        return self.nnunet_results / self.nnunet_identifier(trainer, self.nnunet_plans, configuration)

    def nnunet_fold_folder(self, trainer: str, fold: int | str, configuration: str = SEG_CONFIGURATION) -> Path:
        """``nnUNet_results/<ds>/<Trainer>__<Plans>__<configuration>/fold_N``."""
        return self.nnunet_model_folder(trainer, configuration) / self.fold_folder_name(fold)

    @staticmethod
    def nnunet_fold_candidates(model_folder: Path) -> list[Path]:
        """Every ``fold_*`` entry of an nnU-Net model folder, as nnU-Net's own fold detection sees it (any
        ``fold_*`` name, ``fold_all`` and ``fold_N.overwriting`` included): what a checkpoint safety check must
        cover, wider than :meth:`fold_folders`."""
        return sorted(Path(model_folder).glob("fold_*"))

    @staticmethod
    def nnunet_crossval_folder(model_folder: Path, folds) -> Path:
        """``<model>/crossval_results_folds_<0_1_...>``: nnU-Net's pooled out-of-fold validation of ``folds``."""
        return Path(model_folder) / f"crossval_results_folds_{folds_tuple_to_string(folds)}"

    def nnunet_model_folders(self) -> list[Path]:
        """Every nnU-Net model folder (any trainer, plans, configuration) of the dataset, sorted."""
        root = self.nnunet_results
        if not root.is_dir():
            return []
        return sorted(p for p in root.iterdir() if p.is_dir() and self.parse_nnunet_identifier(p.name) is not None)


# ----------------------------------------------------------------------------- module-level helpers (delegate)
def dataset_folders(dataset: int | str) -> tuple[str, Path, Path]:
    """(dataset name, nnUNet_preprocessed/<name>, neonet_results/<name>)."""
    return ResultLayout.for_dataset(dataset).folders()


stage_folder_name = ResultLayout.stage_folder_name
parse_stage_folder_name = ResultLayout.parse_stage_folder_name
fold_folder_name = ResultLayout.fold_folder_name
parse_fold_folder_name = ResultLayout.parse_fold_folder_name
fold_folders = ResultLayout.fold_folders
staging_fold_folder = ResultLayout.staging_fold_folder
nnunet_trainer_folder_name = ResultLayout.nnunet_identifier
parse_nnunet_identifier = ResultLayout.parse_nnunet_identifier


def stage_root(results_root: Path, stage_dir: str, plans_name: str = PLANS_NAME) -> Path:
    """``<results_root>/<stage_dir>__<plans>`` (results_root = neonet_results/<DatasetXXX_Name>)."""
    return Path(results_root) / stage_folder_name(stage_dir, plans_name)


def stage_fold_folder(dataset: int | str | ResultLayout, stage_dir: str, fold: int,
                      plans_name: str = PLANS_NAME) -> Path:
    """``neonet_results/<ds>/<stage_dir>__<plans>/fold_N``."""
    return ResultLayout.for_dataset(dataset, plans_name).fold_folder(stage_dir, fold)


def fold_is_finished(fold_folder: Path) -> bool:
    """A trained fold (NeoNet stage, NeoCls run, nnU-Net fold): rule ``model``, ``checkpoint_final.pth`` exists."""
    return ResultLayout.is_finished("model", fold_folder)


def finished_folds(run_root: Path) -> dict[int, Path]:
    """{fold: folder} of the trained folds (rule ``model``) under ``run_root``."""
    return ResultLayout.finished_folds(run_root, "model")


def nnunet_model_folder(dataset: int | str | ResultLayout, trainer: str, nnunet_plans: str = NNUNET_PLANS_NAME,
                        configuration: str = SEG_CONFIGURATION) -> Path:
    """``nnUNet_results/<ds>/<Trainer>__<Plans>__<configuration>``."""
    layout = ResultLayout.for_dataset(dataset)
    return layout.nnunet_results / nnunet_trainer_folder_name(trainer, nnunet_plans, configuration)


# ----------------------------------------------------------------------------- classifier runs
AUTO_RATIO = "auto"  # --synthetic-ratio auto: the ratio is chosen on the inner folds of each training fold


def is_auto_ratio(ratio) -> bool:
    return isinstance(ratio, str) and ratio.strip().lower() == AUTO_RATIO


def ratio_sort_key(ratio) -> tuple:
    """Sort key of a run's synthetic ratio: the fixed ratios in order, then ``auto``."""
    return (1, 0.0) if is_auto_ratio(ratio) else (0, float(ratio))


def ratio_tag(ratio: float | str) -> str:
    return AUTO_RATIO if is_auto_ratio(ratio) else f"{float(ratio):g}"


@dataclass(frozen=True)
class ClsRunId:
    """What a NeoCls run name encodes. ``arch`` is the canonical architecture name; ``ratio`` is a float, or
    ``"auto"`` (:data:`AUTO_RATIO`) for a run that chooses its ratio on inner folds."""

    arch: str
    ratio: float | str = 0.0
    crop_source: str = "gt"
    early_stopping: str | None = None  # None: no protocol suffix, i.e. the paper's "val" (see cls_run_name)
    arm: str = "synthetic"

    def __post_init__(self):
        if self.early_stopping is None:
            object.__setattr__(self, "early_stopping", "val")
        if self.arm not in ARMS:
            raise ValueError(f"arm must be one of {ARMS}, got {self.arm!r}.")
        if is_auto_ratio(self.ratio):
            object.__setattr__(self, "ratio", AUTO_RATIO)
            if self.early_stopping != "nested":
                raise ValueError(f"synthetic ratio 'auto' needs early_stopping 'nested', got {self.early_stopping!r}.")
        if self.crop_source not in CROP_SOURCES:
            raise ValueError(f"crop_source must be one of {CROP_SOURCES}, got {self.crop_source!r}.")
        if self.early_stopping not in EARLY_STOPPING_MODES:
            raise ValueError(f"early_stopping must be one of {EARLY_STOPPING_MODES}, got {self.early_stopping!r}.")

    @property
    def name(self) -> str:
        return cls_run_name(self.arch, self.ratio, self.crop_source, self.early_stopping, self.arm)

    @property
    def is_auto(self) -> bool:
        return is_auto_ratio(self.ratio)

    @property
    def protocol_label(self) -> str:
        return PROTOCOL_LABELS[self.early_stopping]


def cls_run_name(arch: str, ratio: float | str = 0.0, crop_source: str = "gt", early_stopping: str | None = None,
                 arm: str = "synthetic") -> str:
    """Result-folder prefix of a NeoCls run, e.g. ``cls_pattennet_1_esnested``, ``cls_resnet50_0.5_over_pred`` or
    ``cls_pattennet_auto_esnested`` (``ratio="auto"``: chosen on the inner folds, nested protocol only).

    No ``_es`` suffix means the paper's ``val`` protocol (names written before the nested default keep
    their meaning); ``early_stopping=None`` names a run without a protocol suffix (the paper's ``val`` runs, the
    radiomics baseline). This is naming, not a setting: which protocol a run uses comes from the plans
    (``cls.early_stopping``). The arm tag is absent for the paper's arm (synthetic minority patches) and for
    ratio 0."""
    if crop_source not in CROP_SOURCES:
        raise ValueError(f"crop_source must be one of {CROP_SOURCES}, got {crop_source!r}.")
    early_stopping = "val" if early_stopping is None else early_stopping
    if early_stopping not in EARLY_STOPPING_MODES:
        raise ValueError(f"early_stopping must be one of {EARLY_STOPPING_MODES}, got {early_stopping!r}.")
    if arm not in ARMS:
        raise ValueError(f"arm must be one of {ARMS}, got {arm!r}.")
    if is_auto_ratio(ratio):
        if early_stopping != "nested":
            raise ValueError(f"synthetic ratio 'auto' is chosen on the nested protocol's inner folds; early_stopping "
                             f"{early_stopping!r} has none.")
    elif float(ratio) == 0.0 and arm != "synthetic":
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
    ratio = AUTO_RATIO if m.group("ratio") == AUTO_RATIO else float(m.group("ratio"))
    if ratio == AUTO_RATIO and m.group("es") != "nested":
        return None  # auto runs exist only under the nested protocol (cls_run_name refuses the others)
    return ClsRunId(arch=m.group("arch"), ratio=ratio,
                    crop_source="pred" if m.group("pred") else "gt", early_stopping=m.group("es") or "val", arm=arm)


def list_cls_runs(results_root: Path, plans_name: str = PLANS_NAME, finished_only: bool = True) -> list[str]:
    """Classifier run names under ``neonet_results/<ds>`` with at least one (trained) fold:
    :meth:`ResultLayout.cls_runs`."""
    return _layout_of_results(results_root, plans_name).cls_runs(finished_only)


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
    """{folder prefix: id} of every synthetic set of ``fold`` under ``neonet_results/<ds>`` that has a manifest:
    :meth:`ResultLayout.synthetic_sets`."""
    return _layout_of_results(results_root, plans_name).synthetic_sets(fold)


def _layout_of_results(results_root: Path, plans_name: str) -> ResultLayout:
    """The layout whose :attr:`ResultLayout.results` is ``results_root`` (``<neonet_results>/<ds>``)."""
    root = Path(results_root)
    env = dict(paths.ensure_environment(), neonet_results=root.parent)
    return ResultLayout(root.name, plans_name, env=env)
