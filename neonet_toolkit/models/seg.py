"""NeoSeg models on disk: nnU-Net model folders, their registration and labels, and the verified load.

A NeoSeg model is an nnU-Net model folder (``<Trainer>__<Plans>__<configuration>``): NeoSeg's own (trained by
``neonet_train DATASET seg FOLD``) or one trained elsewhere and registered (:func:`record_model`), whose labels
are mapped **by name** onto the NeoNet dataset's label ids. Every checkpoint is loaded once, with
``weights_only=True`` under an allow-list, checked to be an nnU-Net segmentation checkpoint, and handed to
nnU-Net's ``manual_initialization`` (:func:`initialize_predictor`).
"""
from __future__ import annotations

import inspect
import logging
import time
from pathlib import Path
from typing import Iterable, Sequence

from nnunetv2.utilities.find_class_by_name import recursive_find_python_class
from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from neonet_toolkit import paths
from neonet_toolkit.dataset.contract import NeoNetDataset
from neonet_toolkit.dataset.errors import DatasetError
from neonet_toolkit.utilities.checkpoints import load_verified_checkpoint, verify_model_folder
from neonet_toolkit.utilities.identifiers import (
    NNUNET_PLANS_NAME,
    SEG_CONFIGURATION,
    fold_is_finished,
    nnunet_model_folder,
)
from neonet_toolkit.utilities.io import load_json, save_json

logger = logging.getLogger(__name__)

REGISTERED_MODEL_FILE = "neoseg_model.json"
_ALIASES = {"tumour": "tumor"}
# NeoSeg's nnU-Net trainers (training/seg/trainers.py: TRAINERS) by architecture, as checkpoints and result folders
# name them; the classes are found by name like any nnU-Net trainer (:func:`seg_trainer_class`)
SEG_TRAINER_NAMES = {
    "swinunetr": "NeoSegTrainer",
    "unet": "NeoSegTrainer_UNet",
    "segresnet": "NeoSegTrainer_SegResNet",
    "dynunet": "NeoSegTrainer_DynUNet",
    "nnunet": "NeoSegTrainer_nnUNet",
}


def seg_trainer_name(arch: str) -> str:
    """The NeoSeg trainer class name of an architecture (``swinunetr`` → ``NeoSegTrainer``)."""
    key = str(arch).lower()
    if key not in SEG_TRAINER_NAMES:
        raise ValueError(f"Unknown NeoSeg architecture {arch!r}; choose one of {list(SEG_TRAINER_NAMES)} "
                         "(swinunetr is the paper's default, nnunet is nnU-Net's own U-Net).")
    return SEG_TRAINER_NAMES[key]


def _canon(name: str) -> str:
    n = str(name).strip().lower()
    return _ALIASES.get(n, n)


def label_map_by_name(source_labels: dict, target_labels: dict, extra: dict | None = None,
                      where: str = "model") -> dict[int, int]:
    """Map the label ids of a model (``source_labels``: name → id) onto the dataset's ids by name.

    Names match case-insensitively (``tumour`` = ``tumor``). ``extra`` maps source names to target
    names for labels named differently (e.g. ``{"hepatic_tumor": "tumor"}``). A source label with
    no counterpart maps to background (0) with a warning.
    """
    extra = {_canon(k): _canon(v) for k, v in (extra or {}).items()}
    tgt = {}
    for n, v in target_labels.items():
        if isinstance(v, (list, tuple)):
            raise ValueError(f"Region-based labels ({n}: {v}) are not supported for label mapping.")
        tgt[_canon(n)] = int(v)
    out, dropped = {}, []
    for n, v in source_labels.items():
        if isinstance(v, (list, tuple)):
            raise ValueError(f"{where}: region-based label {n}: {v} cannot be mapped; NeoSeg needs one id per label.")
        if _canon(n) == "ignore":
            continue
        name = extra.get(_canon(n), _canon(n))
        if name in tgt:
            out[int(v)] = tgt[name]
        else:
            out[int(v)] = 0
            dropped.append(n)
    if dropped:
        logger.warning("%s: label(s) %s have no counterpart in the dataset's labels %s and become background "
                       "(pass label_names={'<model name>': '<dataset name>'} to map them).", where, dropped,
                       sorted(target_labels))
    return out


def model_folds(model_folder: str | Path) -> list[int | str]:
    """Finished folds of an nnU-Net model folder (:func:`~neonet_toolkit.utilities.identifiers.fold_is_finished`:
    ``checkpoint_final.pth`` exists); folders moved aside by ``--overwrite`` are not folds."""
    model_folder = Path(model_folder)
    out = []
    for d in sorted(model_folder.glob("fold_*")):
        if d.is_dir() and "." not in d.name and fold_is_finished(d):
            f = d.name[5:]
            out.append(int(f) if f.isdigit() else f)
    return out


def check_model_folder(model_folder: str | Path, folds: Iterable | None = None,
                       trust_checkpoints: bool = False, checkpoint_name: str = "checkpoint_final.pth",
                       verify: bool = True) -> Path:
    """Validate an nnU-Net model folder (``<Trainer>__<Plans>__<config>``); raise naming what is missing.

    Every ``fold_N/<checkpoint_name>`` that will be used is verified loadable with
    ``weights_only=True`` under an allow-list before nnU-Net (which loads with ``weights_only=False``)
    ever touches it (:func:`neonet_toolkit.utilities.checkpoints.verify_model_folder`);
    ``trust_checkpoints=True`` skips that check (logged). ``verify=False`` leaves the check to the caller's own
    load of the same files (:func:`initialize_predictor` verifies each checkpoint in its one load)."""
    model_folder = Path(model_folder)
    if not model_folder.is_dir():
        raise FileNotFoundError(f"NeoSeg model folder {model_folder} does not exist.")
    missing = [f for f in ("plans.json", "dataset.json") if not (model_folder / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{model_folder} is not an nnU-Net model folder (no {missing}); point at "
                                "nnUNet_results/DatasetXXX/<Trainer>__<Plans>__<configuration>.")
    have = model_folds(model_folder)
    if not have:
        raise FileNotFoundError(f"{model_folder} has no trained fold (no fold_N/checkpoint_final.pth).")
    if folds is not None:
        lacking = [f for f in folds if f not in have]
        if lacking:
            raise FileNotFoundError(
                f"NeoSeg model {model_folder} lacks fold(s) {lacking} (trained folds: {have}). Train them "
                f"(e.g. `neonet_train {model_folder.parent.name} seg {lacking[0]}`) or restrict to the trained "
                "folds (--folds).")
    if checkpoint_name != "checkpoint_final.pth":
        lacking = [f for f in (folds if folds is not None else have)
                   if not (model_folder / f"fold_{f}" / checkpoint_name).is_file()]
        if lacking:
            raise FileNotFoundError(f"NeoSeg model {model_folder} has no {checkpoint_name} in fold(s) {lacking}.")
    if verify or trust_checkpoints:  # trusted: nothing is loaded, the skipped check is logged
        verify_model_folder(model_folder, folds if folds is not None else have, checkpoint_name=checkpoint_name,
                            trust=trust_checkpoints)
    return model_folder


class SegCheckpointError(ValueError):
    """A file in a NeoSeg/nnU-Net model folder that is not the nnU-Net checkpoint of that model."""


SEG_MODEL_EXPECTED = ("-m/--seg-model expects an nnU-Net model folder (nnUNet_results/DatasetXXX/"
                      "<Trainer>__<Plans>__<configuration>) whose fold_N/checkpoint_final.pth nnU-Net's trainer wrote")


def check_seg_checkpoint(state, path: str | Path, model_folder: str | Path, configurations=None) -> str:
    """Check a loaded (``weights_only``) NeoSeg/nnU-Net checkpoint before a network is built from it; return its
    ``trainer_name``.

    Refused with :class:`SegCheckpointError` naming the file and the fix: a NeoNet stage checkpoint (e.g. a
    classifier fold) given as a segmentation model, a file without nnU-Net's keys, a ``trainer_name`` that is not
    a class name, and an ``init_args`` configuration missing from the model's plans (``configurations``, when
    given). A trainer that does not exist, or whose network the weights do not fit, is refused where the network
    is built (:func:`initialize_predictor`)."""
    path, model_folder = Path(path), Path(model_folder)
    restore = "Replace it with the model's original checkpoint, or retrain that fold."
    if not isinstance(state, dict):
        raise SegCheckpointError(f"{path} holds a {type(state).__name__}, not an nnU-Net checkpoint. "
                                 f"{SEG_MODEL_EXPECTED}.")
    missing = [k for k in ("trainer_name", "network_weights", "init_args") if k not in state]
    if missing:
        stage = state.get("stage")
        if isinstance(stage, str) and "network" in state:
            where = f"dataset {state.get('dataset_name', '?')}, fold {state.get('fold', '?')}"
            hint = ("; a classifier run is chosen with --cls-run" if stage == "cls" else "")
            raise SegCheckpointError(
                f"{path} is a NeoNet {stage!r} checkpoint ({where}), not a NeoSeg/nnU-Net segmentation checkpoint "
                f"(it has no {missing}). {SEG_MODEL_EXPECTED}{hint}.")
        raise SegCheckpointError(f"{path} is not an nnU-Net checkpoint: it has no {missing} (keys: "
                                 f"{sorted(map(str, state))[:12]}). {SEG_MODEL_EXPECTED}.")
    name = state["trainer_name"]
    if not isinstance(name, str) or not name.isidentifier():
        raise SegCheckpointError(f"{path} records trainer_name {name!r}, which is not a class name: the file was "
                                 f"edited or damaged. {restore}")
    parts = model_folder.name.split("__")
    if len(parts) == 3 and parts[0] != name:  # a renamed or shared folder is legitimate; the weights must still fit
        logger.warning("%s records trainer %s but its folder is named for %s; building %s's network", path, name,
                       parts[0], name)
    init_args = state["init_args"]
    conf = init_args.get("configuration") if isinstance(init_args, dict) else None
    if not isinstance(conf, str) or (configurations is not None and conf not in configurations):
        raise SegCheckpointError(
            f"{path} records configuration {conf!r}, which is not one of the configurations of "
            f"{model_folder / 'plans.json'} ({sorted(configurations or [])}). {restore}")
    return name


def registered_model(dataset: int | str) -> dict | None:
    """The record :func:`record_model` wrote for ``dataset`` (``neoseg_model.json``), or None."""
    name = paths.find_dataset_name(dataset)
    f = paths.neonet_results() / name / REGISTERED_MODEL_FILE
    return load_json(f) if f.is_file() else None


def default_model_folder(dataset: int | str, arch: str | None = None) -> Path:
    """The registered external model if any (and no arch given), else NeoSeg's result folder for ``arch``."""
    reg = registered_model(dataset) if arch is None else None
    if reg is not None:
        return Path(reg["model_folder"])
    return nnunet_model_folder(dataset, seg_trainer_name(arch or "swinunetr"), NNUNET_PLANS_NAME, SEG_CONFIGURATION)


def record_model(dataset: int | str, model_folder: str | Path, folds: Iterable | None = None,
                 label_names: dict | None = None, trust_checkpoints: bool = False) -> dict:
    """Record an existing nnU-Net model (any trainer) as NeoSeg for ``dataset``; return the record.

    Checks the folder, maps its labels by name onto the dataset's (organ and tumour must be
    found) and writes ``neonet_results/<dataset>/neoseg_model.json`` (``model_folder`` resolved).
    :func:`neonet_toolkit.training.seg.masks.register_model` also builds the pred patches.
    """
    name = paths.find_dataset_name(dataset)
    model_folder = check_model_folder(Path(model_folder).resolve(), folds, trust_checkpoints)
    ds = NeoNetDataset.load(paths.nnunet_raw() / name)
    model_labels = load_json(model_folder / "dataset.json")["labels"]
    mapping = label_map_by_name(model_labels, ds.dataset_json["labels"], label_names, where=str(model_folder))
    needed = {"organ": ds.roles.organ_ids, "tumour": ds.roles.tumor_ids}
    for role, ids in needed.items():
        if not set(ids) & set(mapping.values()):
            raise DatasetError(
                f"Model {model_folder} has labels {sorted(model_labels)}, none of which maps to the dataset's {role} "
                f"label(s) {[n for n, v in ds.dataset_json['labels'].items() if v in ids]}. Name them alike or pass "
                "label_names={'<model label>': '<dataset label>'}.")
    rec = {"model_folder": str(model_folder), "label_names": label_names or {},
           "label_map": {str(k): v for k, v in mapping.items()}, "folds": model_folds(model_folder),
           "registered": time.strftime("%Y-%m-%d %H:%M:%S"),
           "checkpoint_check": ("SKIPPED (--trust-checkpoints): the checkpoints were accepted unchecked"
                                if trust_checkpoints else "verified loadable with weights_only=True and the "
                                "nnU-Net allow-list")}
    save_json(rec, paths.neonet_results() / name / REGISTERED_MODEL_FILE)
    logger.info("NeoSeg for %s: using existing model %s (label map %s)", name, model_folder, mapping)
    return rec


def is_own_model(model_folder: Path, dataset_name: str) -> bool:
    """True when the folder is a model of this dataset trained on its splits (NeoSeg or nnU-Net here)."""
    try:
        return model_folder.resolve().parent.name == dataset_name
    except OSError:
        return False


# ----------------------------------------------------------------------------- loading for nnU-Net's predictor
def seg_trainer_class(trainer_name: str, where: str | Path) -> type:
    """The nnU-Net trainer class a checkpoint names (``trainer_name``), found by name as nnU-Net finds trainers.

    NeoSeg's trainers come from the folder NeoNet gives nnU-Net as ``nnUNet_extTrainer``
    (:func:`neonet_toolkit.paths.nnunet_ext_trainer_dir`; only that folder's one module is imported: nnU-Net's
    search in 2.8.1 iterates ``sys.modules`` while module attribute access may import, which fails on some
    installations with "dictionary changed size during iteration"); other trainers through nnU-Net's own
    search (``nnunetv2.training.nnUNetTrainer`` and the user's ``nnUNet_extTrainer``). ``where`` names the file
    that records the name, for the error."""
    trainer_class = None
    if trainer_name in SEG_TRAINER_NAMES.values():
        trainer_class = recursive_find_python_class(str(paths.nnunet_ext_trainer_dir()), trainer_name, None)
    if trainer_class is None:
        try:
            trainer_class = recursive_find_trainer_class_by_name(trainer_name)
        except (RuntimeError, AssertionError, ImportError) as e:
            raise SegCheckpointError(
                f"{where} records trainer_name {trainer_name!r}, which is neither a NeoSeg trainer "
                f"({sorted(SEG_TRAINER_NAMES.values())}) nor an nnU-Net trainer class (searched "
                f"nnunetv2.training.nnUNetTrainer and nnUNet_extTrainer: {type(e).__name__}). A model trained with "
                "your own trainer: add its folder to nnUNet_extTrainer. Otherwise the checkpoint was edited: replace "
                "it with the original.") from None
    return trainer_class


def initialize_predictor(predictor, model_folder: str | Path, folds: Sequence[int | str],
                         checkpoint_name: str = "checkpoint_final.pth", trust_checkpoints: bool = False) -> None:
    """Initialise an ``nnUNetPredictor`` from a model folder, as ``initialize_from_trained_model_folder`` does,
    but loading every checkpoint once, with ``weights_only=True`` under the allow-list (the load is the safety
    check: :func:`~neonet_toolkit.utilities.checkpoints.load_verified_checkpoint`), checking what each file is
    (:func:`check_seg_checkpoint`) and handing the loaded weights to nnU-Net's ``manual_initialization``; the
    trainer class is found by :func:`seg_trainer_class`. ``trust_checkpoints`` hands the folder to nnU-Net's own
    loader unchanged (``weights_only=False``)."""
    model_folder = Path(model_folder)
    if trust_checkpoints:
        predictor.initialize_from_trained_model_folder(str(model_folder), use_folds=tuple(folds),
                                                       checkpoint_name=checkpoint_name)
        return
    dataset_json = load_json(model_folder / "dataset.json")
    plans_manager = PlansManager(load_json(model_folder / "plans.json"))
    files = [model_folder / f"fold_{f}" / checkpoint_name for f in folds]
    checkpoints = [load_verified_checkpoint(f) for f in files]
    # what each file says it is, before a network is built from it (an edited trainer_name, a classifier fold)
    names = [check_seg_checkpoint(c, f, model_folder, plans_manager.available_configurations)
             for c, f in zip(checkpoints, files)]
    if len(set(names)) > 1:
        raise SegCheckpointError(f"The folds of {model_folder} record different trainers "
                                 f"{dict(zip(map(str, files), names))}: one model's folds share one trainer. Replace "
                                 "the edited checkpoint(s) with the originals.")
    first = checkpoints[0]
    trainer_name = names[0]
    configuration_manager = plans_manager.get_configuration(first["init_args"]["configuration"])
    trainer_class = seg_trainer_class(trainer_name, files[0])
    if "plans_manager" not in inspect.signature(trainer_class.build_network_architecture).parameters:
        # a trainer with nnU-Net's old build signature: nnU-Net's own loader knows both (checked files above)
        predictor.initialize_from_trained_model_folder(str(model_folder), use_folds=tuple(folds),
                                                       checkpoint_name=checkpoint_name)
        return
    network = trainer_class.build_network_architecture(
        plans_manager, configuration_manager,
        determine_num_input_channels(plans_manager, configuration_manager, dataset_json),
        plans_manager.get_label_manager(dataset_json).num_segmentation_heads, enable_deep_supervision=False)
    parameters = [c["network_weights"] for c in checkpoints]
    for f, weights in zip(files, parameters):
        try:
            network.load_state_dict(weights)
        except RuntimeError as e:
            raise SegCheckpointError(
                f"The weights in {f} do not fit the {trainer_name} network built from {model_folder / 'plans.json'} "
                f"({str(e).strip().splitlines()[0][:200]}): the checkpoint was edited or belongs to another model. "
                "Replace it with the original, or retrain that fold.") from None
    network.load_state_dict(parameters[0])
    predictor.manual_initialization(network, plans_manager, configuration_manager, parameters, dataset_json,
                                    trainer_name, first.get("inference_allowed_mirroring_axes"))
