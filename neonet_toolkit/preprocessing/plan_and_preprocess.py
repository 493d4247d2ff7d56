"""The data steps of ``neonet_plan_and_preprocess``: dataset checks → folds → nnU-Net planning → TLCR patches →
NeoNet plans.

Call :func:`neonet_toolkit.training.planning.plan_and_preprocess` (the CLI, the demo and the tests do): it runs
these steps and then the resource fitting (GPU batch sizes), so every entry point plans the same way.

Every nnU-Net step goes through nnU-Net's own API (fingerprint extraction, planning with a
planner subclass, preprocessing), so a folder planned here is a normal nnU-Net preprocessed
dataset. Re-running is idempotent: existing splits are reused (never silently replaced),
preprocessing and patches are skipped when their inputs did not change, and a user's edits to
``neonet_plans.json`` are kept.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from neonet_toolkit import paths
from neonet_toolkit.dataset.contract import NeoNetDataset
from neonet_toolkit.dataset.errors import DatasetError
from neonet_toolkit.dataset.verification import verify_dataset
from neonet_toolkit.experiment_planning.planner import NEONET_NNUNET_PLANS, NeoNetExperimentPlanner
from neonet_toolkit.experiment_planning.plans import (
    NEONET_PLANS_FILE,
    NeoNetPlans,
    build_neonet_plans,
    load_nnunet_plans,
)
from neonet_toolkit.experiment_planning.splits import add_repeats, write_or_reuse_splits
from neonet_toolkit.preprocessing.patches import extract_gt_patches, settings_hash, tumor_report
from neonet_toolkit.preprocessing.planning_report import nnunet_commands, write_planning_report
from neonet_toolkit.utilities.io import load_json, save_json

logger = logging.getLogger(__name__)

SEG_CONFIGURATION = "3d_fullres"
PREPROCESS_STAMP = "neonet_preprocess_stamp.json"
FINGERPRINT_STAMP = "neonet_fingerprint_stamp.json"


def _raw_files_hash(ds: NeoNetDataset) -> str:
    """Hash of the case ids and of every image/label file's name, size and modification time: changes when a
    case is added, removed, swapped for another or re-exported."""
    entries = []
    for cid in ds.case_ids:
        for f in [*ds.cases[cid]["images"], ds.cases[cid]["label"]]:
            st = Path(f).stat()
            entries.append((cid, Path(f).name, st.st_size, st.st_mtime_ns))
    return settings_hash(entries)


def _fingerprint_is_current(pp_dataset: Path, ds: NeoNetDataset) -> bool:
    """nnU-Net's ``dataset_fingerprint.json`` was computed from exactly the current raw files."""
    stamp = pp_dataset / FINGERPRINT_STAMP
    if not (pp_dataset / "dataset_fingerprint.json").is_file() or not stamp.is_file():
        return False
    return load_json(stamp).get("raw_files") == _raw_files_hash(ds)


def _preprocess_hash(plans: dict, ds: NeoNetDataset) -> str:
    cfg = plans["configurations"][SEG_CONFIGURATION]
    return settings_hash(cfg["spacing"], cfg["normalization_schemes"], cfg["use_mask_for_norm"],
                         plans["transpose_forward"], ds.case_ids, _raw_files_hash(ds))


def _preprocessing_is_current(pp_dataset: Path, plans: dict, ds: NeoNetDataset) -> bool:
    """nnU-Net's preprocessed data was made with these settings from exactly the current raw files."""
    stamp_file = pp_dataset / PREPROCESS_STAMP
    if not stamp_file.is_file() or load_json(stamp_file).get("hash") != _preprocess_hash(plans, ds):
        return False
    data = pp_dataset / plans["configurations"][SEG_CONFIGURATION]["data_identifier"]
    return data.is_dir() and all(any(data.glob(f"{c}.*")) for c in ds.case_ids)


def _write_preprocess_stamp(pp_dataset: Path, plans: dict, ds: NeoNetDataset) -> None:
    save_json({"hash": _preprocess_hash(plans, ds)}, pp_dataset / PREPROCESS_STAMP)


def _merge_user_plans(plans: dict, fresh: dict) -> dict:
    """The user's ``neonet_plans.json`` wins: refresh only what describes the data, and fill in the settings a
    newer NeoNet added, never overriding a value the user set. Updates and returns ``plans``."""
    for key in ("dataset_name", "nnunet_plans", "seg_configuration", "target", "label_roles", "spacing",
                "transpose_forward", "transpose_backward", "class_counts"):
        plans[key] = fresh[key]
    plans.setdefault("postprocessing", fresh["postprocessing"])
    for k, v in fresh["postprocessing"].items():
        plans["postprocessing"].setdefault(k, v)
    for conf_name, conf in fresh["configurations"].items():
        mine = plans["configurations"].setdefault(conf_name, conf)
        for stage, values in conf.items():
            if isinstance(values, dict) and stage not in mine:  # a stage added by a newer NeoNet (e.g. vqvae)
                mine[stage] = dict(values)
            elif isinstance(values, dict) and isinstance(mine.get(stage), dict):
                for k, v in values.items():
                    mine[stage].setdefault(k, v)
    return plans


@paths.with_nnunet_environment
def plan_and_preprocess_data(dataset: int | str, num_processes: int = 2, verify_dataset_integrity: bool = False,
                             clean: bool = False, overwrite_splits: bool = False, n_folds: int = 5, seed: int = 12345,
                             crop_size_xyz=None, repeats: int | None = None) -> dict:
    """Plan and preprocess one dataset's data (no resource fitting: use
    :func:`neonet_toolkit.training.planning.plan_and_preprocess`). Returns a short report (timings, counts,
    warnings).

    ``repeats`` R > 1 extends ``splits_final.json`` to R stratified partitions (repeated CV, seeds
    ``seed + r``; the existing folds are kept)."""
    t0 = time.perf_counter()
    env = paths.ensure_environment()
    name = paths.find_dataset_name(dataset)
    raw = env["nnUNet_raw"] / name
    if not raw.is_dir():
        raise DatasetError(f"{name} is not in nnUNet_raw={env['nnUNet_raw']}; planning needs the raw dataset.")
    dataset_id = int(name[7:10])
    pp = env["nnUNet_preprocessed"] / name
    pp.mkdir(parents=True, exist_ok=True)
    report: dict = {"dataset": name, "timings_s": {}}

    ds = NeoNetDataset.load(raw)
    logger.info("%s: %d training cases, %s counts %s", name, len(ds.case_ids), ds.target, ds.class_counts())
    # plans files from an earlier run are read (and refused with the fix) before any work: the user's
    # neonet_plans.json is kept below, and nnU-Net's planner merges into an existing NeoNetPlans.json
    plans_file = pp / NEONET_PLANS_FILE
    keep_user_plans = plans_file.is_file() and not clean and crop_size_xyz is None
    user_plans = NeoNetPlans(plans_file).plans if keep_user_plans else None
    if (pp / f"{NEONET_NNUNET_PLANS}.json").is_file():
        load_nnunet_plans(pp / f"{NEONET_NNUNET_PLANS}.json")
    t = time.perf_counter()
    # NeoNet's own checks always read every voxel (ITK silently turns NIfTI NaNs into 0, so
    # nnU-Net alone would not notice); --verify_dataset_integrity adds nnU-Net's own verification.
    check = verify_dataset(ds, full=True, num_processes=num_processes)
    report["empty_tumor_cases"] = check["empty_tumor_cases"]
    if verify_dataset_integrity:
        from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity as nn_verify

        nn_verify(str(raw), num_processes)
    report["timings_s"]["verify"] = time.perf_counter() - t

    splits = write_or_reuse_splits(pp, ds.case_labels, n_folds=n_folds, seed=seed, overwrite=overwrite_splits,
                                   raw_folder=raw)
    if repeats is not None and int(repeats) > 1:
        splits = add_repeats(pp, ds.case_labels, int(repeats), seed)
    report["n_folds"] = len(splits)

    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprint_dataset,
        plan_experiment_dataset,
        preprocess_dataset,
    )

    t = time.perf_counter()
    stale = not _fingerprint_is_current(pp, ds)
    if stale and (pp / "dataset_fingerprint.json").is_file() and not clean:
        logger.info("The raw cases changed since the dataset fingerprint was computed (or it predates this check): "
                    "recomputing it.")
    extract_fingerprint_dataset(dataset_id, num_processes=num_processes, check_dataset_integrity=False,
                                clean=clean or stale, verbose=False)
    if clean or stale:
        save_json({"raw_files": _raw_files_hash(ds)}, pp / FINGERPRINT_STAMP)
    report["timings_s"]["fingerprint"] = time.perf_counter() - t

    t = time.perf_counter()
    plan_experiment_dataset(dataset_id, experiment_planner_class=NeoNetExperimentPlanner)
    nn_plans = load_nnunet_plans(pp / f"{NEONET_NNUNET_PLANS}.json")
    if SEG_CONFIGURATION not in nn_plans["configurations"]:
        raise DatasetError(f"{name}: nnU-Net planned no 3d_fullres configuration; NeoNet needs 3D images.")
    report["timings_s"]["plan"] = time.perf_counter() - t

    t = time.perf_counter()
    repreprocessed = clean or not _preprocessing_is_current(pp, nn_plans, ds)
    if repreprocessed:
        preprocess_dataset(dataset_id, NEONET_NNUNET_PLANS, (SEG_CONFIGURATION,), [num_processes])
        _write_preprocess_stamp(pp, nn_plans, ds)
    else:
        logger.info("nnU-Net preprocessing is up to date; skipped (use --clean to redo).")
    report["timings_s"]["preprocess"] = time.perf_counter() - t

    fresh = build_neonet_plans(
        dataset_name=name, target=ds.target, label_roles=ds.roles.to_dict(), nnunet_plans=nn_plans,
        nnunet_plans_name=NEONET_NNUNET_PLANS, seg_configuration=SEG_CONFIGURATION,
        crop_size_xyz=crop_size_xyz or ds.crop_size_xyz, n_folds=len(splits), split_seed=seed,
        class_counts=ds.class_counts())
    if user_plans is not None:
        plans = _merge_user_plans(user_plans, fresh)
        logger.info("Keeping existing %s (delete it or use --clean to regenerate).", plans_file)
    else:
        if plans_file.is_file():
            plans_file.replace(plans_file.with_name(NEONET_PLANS_FILE + ".bak"))
        plans = fresh

    t = time.perf_counter()
    crop = plans["tlcr"]["crop_size"]
    meta = extract_gt_patches(pp, nn_plans["configurations"][SEG_CONFIGURATION]["data_identifier"],
                              ds.case_labels, ds.roles, crop, plans["spacing"], ds.image_channel,
                              num_processes=num_processes, overwrite=repreprocessed)  # new data, new patches
    report["timings_s"]["tlcr"] = time.perf_counter() - t
    tr = tumor_report(meta)
    plans["tlcr"]["report"] = tr
    if tr["cases_tumor_exceeds_crop"]:
        logger.warning(
            "Tumour larger than (or cut by) the %s crop in %d case(s): %s. Largest tumour extent %s voxels. "
            "Increase neonet.crop_size in dataset.json (x, y, z) or accept partial tumours.",
            plans["tlcr"]["crop_size_xyz"], len(tr["cases_tumor_exceeds_crop"]),
            tr["cases_tumor_exceeds_crop"][:10], tr["max_tumor_extent_voxels"])
    if tr["cases_empty_tumor"]:
        logger.warning("Empty tumour in %d case(s): %s (patches are zeros, flagged empty_tumor).",
                       len(tr["cases_empty_tumor"]), tr["cases_empty_tumor"])
    NeoNetPlans(plans).save(plans_file)
    report["plans_file"] = str(plans_file)
    first_look = write_planning_report(pp, NeoNetPlans(plans), splits, ds.case_labels,
                                       load_json(pp / "dataset_fingerprint.json"),
                                       "cuda" if torch.cuda.is_available() else "cpu")
    report["planning_summary"] = first_look["summary_file"]
    report["planning_montage"] = first_look["montage_file"]
    report["nnunet_commands"] = nnunet_commands(name, str(paths.nnunet_ext_trainer_dir()))
    report["n_patches"] = len(meta["cases"])
    report["cases_tumor_exceeds_crop"] = tr["cases_tumor_exceeds_crop"]
    report["timings_s"]["total"] = time.perf_counter() - t0
    report["seconds_per_case"] = report["timings_s"]["total"] / max(len(ds.case_ids), 1)
    logger.info("Planned %s in %.1f s (%.2f s/case)", name, report["timings_s"]["total"], report["seconds_per_case"])
    return report
