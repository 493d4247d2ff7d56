"""Masks for the next stages: out-of-fold NeoSeg predictions → TLCR patches with ``source="pred"``.

nnU-Net's own final validation writes every fold's validation cases, predicted by the model of
that fold (out-of-fold), to ``<model>/fold_k/validation/CASE<ending>`` in the original image
space. TLCR works on nnU-Net's *preprocessed* grid, so each predicted mask is brought onto that
grid exactly the way the ground truth was: the raw image and the predicted mask go through the
NeoNet plans' own preprocessor (transpose → crop to non-zero → resample), i.e.
``DefaultPreprocessor.run_case_npy``. A perfect prediction therefore gives the very same patch as
the ground truth.

Models trained elsewhere (any nnU-Net trainer, other label ids) are used through
:func:`register_model`: labels are mapped **by name** onto the NeoNet dataset's label ids.
"""
from __future__ import annotations

import fcntl
import logging
import shutil
from pathlib import Path
from typing import Iterable

import numpy as np

from neonet_toolkit import paths
from neonet_toolkit.dataset.contract import NeoNetDataset
from neonet_toolkit.dataset.errors import DatasetError
from neonet_toolkit.dataset.file_checks import file_problem
from neonet_toolkit.dataset.labels import remap_labels
from neonet_toolkit.experiment_planning.plans import NEONET_PLANS_FILE, NeoNetPlans, load_nnunet_plans
from neonet_toolkit.experiment_planning.splits import get_fold, load_splits
from neonet_toolkit.models.seg import (
    check_model_folder,
    default_model_folder,
    is_own_model,
    label_map_by_name,
    model_folds,
    record_model,
)
from neonet_toolkit.preprocessing.orientation import ORIENTATION_CONVENTION, canonical_orientation
from neonet_toolkit.preprocessing.patches import METADATA_FILE, extract_patch_for_case, patch_folder, settings_hash
from neonet_toolkit.utilities.io import load_json, save_json
from neonet_toolkit.utilities.safe_pickle import verify_preprocessed_folder

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- external models
def register_model(dataset: int | str, model_folder: str | Path, folds: Iterable | None = None,
                   label_names: dict | None = None, build_patches: bool = True,
                   trust_checkpoints: bool = False) -> dict:
    """Use an existing nnU-Net model (any trainer) as NeoSeg for ``dataset``.

    Checks the folder, maps its labels by name onto the dataset's (organ and tumour must be
    found), records it in ``neonet_results/<dataset>/neoseg_model.json``
    (:func:`neonet_toolkit.models.seg.record_model`) and, if its validation folders hold out-of-fold
    predictions of the requested folds' cases, builds pred patches.
    """
    rec = record_model(dataset, model_folder, folds, label_names, trust_checkpoints)
    if build_patches:
        build_pred_patches(paths.find_dataset_name(dataset), Path(rec["model_folder"]),
                           folds=list(folds) if folds is not None else None, label_names=label_names,
                           trust_checkpoints=trust_checkpoints)
    return rec


# ----------------------------------------------------------------------------- OOF predictions
def collect_oof_predictions(model_folder: str | Path, splits: list[dict], folds: Iterable[int],
                            file_ending: str) -> dict[str, tuple[int, Path]]:
    """``{case: (fold, prediction file)}`` for the validation cases of ``folds``.

    A case is taken from the validation folder of its own fold; failing that (a model trained on
    other splits) from any fold's validation folder, which is still out-of-fold for that model.
    """
    model_folder = Path(model_folder)
    out, missing = {}, []
    val_dirs = {f: model_folder / f"fold_{f}" / "validation" for f in model_folds(model_folder)}
    for k in folds:
        order = ([k] if k in val_dirs else []) + [f for f in val_dirs if f != k]
        for cid in splits[k]["val"]:
            hit = next(((f, val_dirs[f] / f"{cid}{file_ending}") for f in order
                        if (val_dirs[f] / f"{cid}{file_ending}").is_file()), None)
            if hit is None:
                missing.append((k, cid))
                continue
            if hit[0] != k:
                logger.info("case %s (fold %s): out-of-fold prediction taken from the model's fold %s", cid, k, hit[0])
            out[cid] = hit
    if missing:
        folds_missing = sorted({k for k, _ in missing})
        raise FileNotFoundError(
            f"No out-of-fold prediction in {model_folder} for {len(missing)} case(s) of fold(s) {folds_missing} "
            f"(e.g. {missing[0][1]}). Train those folds (nnU-Net writes fold_N/validation/ at the end of training), "
            "run `nnUNetv2_train ... --val` for a fold whose validation is missing, or restrict --folds.")
    return out


def pred_seg_on_preprocessed_grid(image_files: list[str], pred_file: str | Path, plans_manager, configuration_manager,
                                  dataset_json: dict, label_map: dict[int, int] | None = None):
    """(data, seg) of one case on the preprocessed grid, preprocessing the raw image with the predicted mask."""
    rw = plans_manager.image_reader_writer_class()
    data, props = rw.read_images(list(image_files))
    seg, _ = rw.read_seg(str(pred_file))
    if seg.shape[1:] != data.shape[1:]:
        raise DatasetError(f"Prediction {pred_file} has shape {seg.shape[1:]} but the image has {data.shape[1:]}; "
                           "predict on the same images.")
    if label_map:
        seg = remap_labels(seg, label_map, np.int16)
    pre = configuration_manager.preprocessor_class(verbose=False)
    d, s, _ = pre.run_case_npy(data, seg, props, plans_manager, configuration_manager, dataset_json)
    return d, s


def build_pred_patches(dataset: int | str, model_folder: str | Path | None = None, folds: Iterable[int] | None = None,
                       predictions: dict[str, str | Path] | None = None, label_names: dict | None = None,
                       source_labels: dict | None = None, trust_checkpoints: bool = False) -> dict:
    """TLCR patches from predicted masks, written to ``neonet_tlcr/pred/`` (same format as ``gt``).

    Args:
        model_folder: NeoSeg/nnU-Net model folder; default: the registered model, else NeoSeg's SwinUNETR.
        folds: folds whose validation cases get patches (default: every fold in splits_final.json).
        predictions: explicit ``{case: mask file}`` in the raw image space (skips the model's OOF folders).
        source_labels: label names → ids of ``predictions`` files (default: the model's dataset.json, or
            the dataset's own labels).
        trust_checkpoints: accept the model's checkpoints without the safety check (logged).
    Returns the metadata written (``metadata.json``).
    """
    name = paths.find_dataset_name(dataset)
    pp = paths.ensure_environment()["nnUNet_preprocessed"] / name
    if not pp.is_dir():
        raise DatasetError(f"{pp} does not exist: run `neonet_plan_and_preprocess -d {dataset}` first")
    # one writer of pred/metadata.json at a time: per-fold mask jobs of neonet_experiment may run side by side.
    # The lock lives beside (not in) pred/, so a refused run leaves no pred/ folder behind.
    with open(pp / ".neonet_pred_patches.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return _build_pred_patches(name, model_folder, folds, predictions, label_names, source_labels,
                                       trust_checkpoints)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _build_pred_patches(dataset: str, model_folder, folds, predictions, label_names, source_labels,
                        trust_checkpoints) -> dict:
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from tqdm import tqdm


    env = paths.ensure_environment()
    name = paths.find_dataset_name(dataset)
    pp = env["nnUNet_preprocessed"] / name
    verify_preprocessed_folder(pp)  # every properties .pkl, before the case loop unpickles any
    ds = NeoNetDataset.load(env["nnUNet_raw"] / name)
    nplans = NeoNetPlans(pp / NEONET_PLANS_FILE)
    plans_manager = PlansManager(load_nnunet_plans(pp / f"{nplans['nnunet_plans']}.json"))
    cfg = plans_manager.get_configuration(nplans["seg_configuration"])
    dataset_json = load_json(pp / "dataset.json")
    splits = load_splits(pp)
    crop = nplans.crop_size
    spacing = nplans["spacing"]

    fold_of = {c: k for k, s in enumerate(splits) for c in s["val"]}
    if predictions is None:
        model_folder = Path(model_folder) if model_folder is not None else default_model_folder(name)
        folds = list(range(len(splits))) if folds is None else [int(f) for f in folds]
        for k in folds:
            get_fold(splits, k)
        # a model of this dataset must have the requested folds; an external one may hold them under other folds
        check_model_folder(model_folder, folds if is_own_model(model_folder, name) else None, trust_checkpoints)
        file_ending = load_json(model_folder / "dataset.json")["file_ending"]
        found = collect_oof_predictions(model_folder, splits, folds, file_ending)
        items = {c: (fold_of.get(c), p) for c, (_, p) in found.items()}
        src_labels = load_json(model_folder / "dataset.json")["labels"]
    else:
        items = {c: (fold_of.get(c), Path(p)) for c, p in predictions.items()}
        src_labels = source_labels or (load_json(Path(model_folder) / "dataset.json")["labels"]
                                       if model_folder is not None else ds.dataset_json["labels"])
    label_map = label_map_by_name(src_labels, ds.dataset_json["labels"], label_names,
                                  where=str(model_folder or "predictions"))
    identity = all(k == v for k, v in label_map.items())

    out = patch_folder(pp, "pred")
    out.mkdir(parents=True, exist_ok=True)
    tf = [int(t) for t in plans_manager.transpose_forward]
    stamp = settings_hash(list(crop), list(spacing), ds.roles.to_dict(), ds.image_channel, cfg.data_identifier,
                          ORIENTATION_CONVENTION, tf)
    meta_file = out / METADATA_FILE
    records = {}
    model_str = str(Path(model_folder).resolve()) if model_folder is not None else None
    if meta_file.is_file():
        old = load_json(meta_file)
        if old.get("settings_hash") == stamp and old.get("model_folder") == model_str:
            records = {c: r for c, r in old.get("cases", {}).items() if c not in items}
        else:
            logger.info("pred patches were made with other settings or another model: rebuilding %s", out)
            for f in out.glob("*.npz"):
                f.unlink()
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    data_folder = pp / cfg.data_identifier
    ds_cls = infer_dataset_class(str(data_folder))
    # full-read integrity first: SimpleITK would zero-fill a truncated mask or image and the crop would move
    broken = [m for cid in sorted(items) if cid in ds.cases
              for m in (file_problem(f, cid) for f in [*ds.cases[cid]["images"], items[cid][1]]) if m]
    if broken:
        raise DatasetError(broken)
    for cid in tqdm(sorted(items), desc="TLCR pred", disable=None):
        fold, pred_file = items[cid]
        if cid not in ds.cases:
            raise DatasetError(f"Predicted case {cid!r} ({pred_file}) is not a training case of {name}; TLCR pred "
                               "patches are built for the dataset's cases (imagesTr).")
        _, seg = pred_seg_on_preprocessed_grid(ds.cases[cid]["images"], pred_file, plans_manager, cfg, dataset_json,
                                               None if identity else label_map)
        data, _, _, props = ds_cls(str(data_folder), [cid]).load_case(cid)
        data = np.asarray(data[:])
        if data.shape[1:] != seg.shape[1:]:
            raise DatasetError(f"case {cid!r}: predicted mask on the preprocessed grid has shape {seg.shape[1:]} but "
                               f"the preprocessed image has {data.shape[1:]}; re-run neonet_plan_and_preprocess.")
        rec = extract_patch_for_case(cid, data, seg, ds.roles, crop, spacing, ds.image_channel, out,
                                     int(ds.case_labels[cid]), "pred", orientation=canonical_orientation(props, tf))
        rec["fold"] = fold
        rec["prediction_file"] = str(pred_file)
        records[cid] = rec
    meta = {"source": "pred", "crop_size": list(crop), "spacing": list(spacing), "settings_hash": stamp,
            "data_identifier": cfg.data_identifier, "orientation": ORIENTATION_CONVENTION, "transpose_forward": tf,
            "model_folder": model_str,
            "label_map": {str(k): v for k, v in label_map.items()},
            "cases": {k: records[k] for k in sorted(records)}}
    save_json(meta, meta_file)
    logger.info("TLCR pred: %d patches (%d new) in %s", len(records), len(items), out)
    return meta


def clear_pred_patches(dataset: int | str) -> None:

    name = paths.find_dataset_name(dataset)
    d = patch_folder(paths.nnunet_preprocessed() / name, "pred")
    if d.is_dir():
        shutil.rmtree(d)

