"""TLCR patches of every training case, on nnU-Net's preprocessed (resampled, normalised) grid.

Layout (outside nnU-Net's own data folder, which must hold one file type)::

    nnUNet_preprocessed/DatasetXXX_Name/neonet_tlcr/<source>/
        CASE.npz          # image: float32 (2, *crop)  [organ∪tumour-masked, tumour-masked]
                          # label: uint8   (2, *crop)  [organ∪tumour mask, tumour mask]
        metadata.json     # {"crop_size": ..., "cases": {CASE: record}}

``source`` is ``gt`` (ground-truth labels, written by planning) or ``pred`` (NeoSeg's
out-of-fold predictions). Each record holds the crop origin, spacing, tumour voxel count and
volume, tumour bbox and whether the crop cut it, the empty-tumour flag, the case label and the axis
flips applied to reach the canonical orientation (``canonical_flips``, see
:mod:`neonet_toolkit.preprocessing.orientation`; origin and bbox are in those canonical coordinates).
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from neonet_toolkit.dataset.case_ids import safe_join
from neonet_toolkit.dataset.errors import DatasetError
from neonet_toolkit.dataset.labels import LabelRoles
from neonet_toolkit.preprocessing.orientation import (
    ORIENTATION_CONVENTION,
    CanonicalOrientation,
    canonical_orientation,
    canonical_tlcr,
)
from neonet_toolkit.utilities.identifiers import NNUNET_PLANS_NAME
from neonet_toolkit.utilities.io import load_json, save_json, save_npz
from neonet_toolkit.utilities.safe_pickle import verify_preprocessed_folder

logger = logging.getLogger(__name__)

PATCH_ROOT = "neonet_tlcr"
METADATA_FILE = "metadata.json"


def patch_folder(preprocessed_dataset_folder: str | Path, source: str = "gt") -> Path:
    if source not in ("gt", "pred"):
        raise ValueError(f"Unknown crop source {source!r}; use 'gt' or 'pred'.")
    return Path(preprocessed_dataset_folder) / PATCH_ROOT / source


def load_patch(folder: str | Path, case_id: str) -> tuple[np.ndarray, np.ndarray]:
    """(image (2, *crop) float32, label (2, *crop) uint8) of one case."""
    with np.load(safe_join(folder, case_id, ".npz")) as z:
        return z["image"], z["label"]


def load_metadata(folder: str | Path) -> dict:
    f = Path(folder) / METADATA_FILE
    if not f.is_file():
        raise FileNotFoundError(f"{f} not found: run `neonet_plan_and_preprocess` (gt) or NeoSeg prediction (pred).")
    return load_json(f)


def settings_hash(*objs) -> str:
    return hashlib.sha1(json.dumps(objs, sort_keys=True, default=str).encode()).hexdigest()[:16]


def make_record(case_id: str, info, spacing, label: int | None, source: str) -> dict:
    rec = {"case_id": case_id, "source": source, "label": label, "spacing": [float(s) for s in spacing]}
    rec.update(info.to_dict())
    rec["tumor_volume_ml"] = float(info.tumor_voxels * np.prod(spacing) / 1000.0)
    return rec


def extract_patch_for_case(case_id: str, data: np.ndarray, seg: np.ndarray, roles: LabelRoles, crop_size,
                           spacing, image_channel: int, out_folder: Path, label: int | None, source: str, *,
                           orientation: CanonicalOrientation) -> dict:
    """TLCR patch of one case on the preprocessed grid, brought to the canonical orientation first
    (``orientation``: :func:`~neonet_toolkit.preprocessing.orientation.canonical_orientation` of the case's
    nnU-Net properties), written to ``out_folder/CASE.npz``; returns the case record."""
    image = np.asarray(data[image_channel], dtype=np.float32)
    seg = np.asarray(seg)
    if seg.ndim == image.ndim + 1:
        seg = seg[0]
    if not np.all(np.isfinite(image)):
        raise ValueError(f"case {case_id!r}: preprocessed image has NaN/Inf voxels; fix the raw image.")
    img_p, lab_p, info = canonical_tlcr(image, seg, roles, crop_size, orientation)
    save_npz(safe_join(out_folder, case_id, ".npz"), image=img_p, label=lab_p)
    rec = make_record(case_id, info, spacing, label, source)
    roi = lab_p[0].astype(bool)
    rec["roi_intensity"] = ({"mean": float(img_p[0][roi].mean()), "std": float(img_p[0][roi].std()),
                             "p01": float(np.percentile(img_p[0][roi], 1)),
                             "p99": float(np.percentile(img_p[0][roi], 99))} if roi.any() else None)
    return rec


def _extract_one(args):
    (case_id, pp_folder, roles, crop_size, spacing, channel, out_folder, label, source, transpose_forward) = args
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    ds_cls = infer_dataset_class(str(pp_folder))
    data, seg, _, props = ds_cls(str(pp_folder), [case_id]).load_case(case_id)
    return extract_patch_for_case(case_id, np.asarray(data[:]), np.asarray(seg[:]), roles, crop_size, spacing,
                                  channel, out_folder, label, source,
                                  orientation=canonical_orientation(props, transpose_forward))


def transpose_forward_of(preprocessed_dataset_folder: str | Path, data_identifier: str) -> list[int]:
    """``transpose_forward`` of the nnU-Net plans (``<folder>/NeoNetPlans.json``) that made ``data_identifier``."""
    f = Path(preprocessed_dataset_folder) / f"{NNUNET_PLANS_NAME}.json"
    plans = load_json(f) if f.is_file() else {}
    ids = {c.get("data_identifier") for c in plans.get("configurations", {}).values() if isinstance(c, dict)}
    if data_identifier not in ids or "transpose_forward" not in plans:
        raise DatasetError(f"{f} is missing or did not make the preprocessed data {data_identifier!r}, so the "
                           "orientation of the TLCR crops is unknown; re-run `neonet_plan_and_preprocess`.")
    return [int(t) for t in plans["transpose_forward"]]


def extract_gt_patches(preprocessed_dataset_folder: Path, data_identifier: str, case_labels: dict[str, int],
                       roles: LabelRoles, crop_size, spacing, image_channel: int = 0, num_processes: int = 1,
                       overwrite: bool = False, progress: Callable | None = None,
                       transpose_forward: Sequence[int] | None = None) -> dict:
    """TLCR patches from the ground-truth labels for every case in ``case_labels``.

    Idempotent: cases whose patch exists and was made with the same settings (orientation convention
    included) are kept. ``transpose_forward``: that of the nnU-Net plans which made ``data_identifier``
    (default: read from them, :func:`transpose_forward_of`).
    """
    from tqdm import tqdm

    verify_preprocessed_folder(preprocessed_dataset_folder)  # every properties .pkl, before anything unpickles one
    pp_folder = Path(preprocessed_dataset_folder) / data_identifier
    out = patch_folder(preprocessed_dataset_folder, "gt")
    out.mkdir(parents=True, exist_ok=True)
    tf = list(transpose_forward) if transpose_forward is not None else transpose_forward_of(
        preprocessed_dataset_folder, data_identifier)
    stamp = settings_hash(list(crop_size), list(spacing), roles.to_dict(), image_channel, data_identifier,
                          ORIENTATION_CONVENTION, tf)
    old = {}
    meta_file = out / METADATA_FILE
    if meta_file.is_file() and not overwrite:
        m = load_json(meta_file)
        if m.get("settings_hash") == stamp:
            old = m.get("cases", {})
        else:
            logger.info("TLCR settings changed since the last run: re-extracting every patch.")
    records = {}
    todo = []
    for cid in sorted(case_labels):
        if cid in old and safe_join(out, cid, ".npz").is_file():
            rec = dict(old[cid])
            rec["label"] = int(case_labels[cid])
            records[cid] = rec
        else:
            todo.append((cid, pp_folder, roles, list(crop_size), list(spacing), image_channel, out,
                         int(case_labels[cid]), "gt", tf))
    if todo:
        if num_processes > 1:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            with ProcessPoolExecutor(num_processes, mp_context=mp.get_context("spawn")) as ex:
                results = list(tqdm(ex.map(_extract_one, todo), total=len(todo), desc="TLCR", disable=None))
        else:
            results = [_extract_one(t) for t in tqdm(todo, desc="TLCR", disable=None)]
        for r in results:
            records[r["case_id"]] = r
    meta = {"source": "gt", "crop_size": list(crop_size), "spacing": list(spacing), "settings_hash": stamp,
            "data_identifier": data_identifier, "orientation": ORIENTATION_CONVENTION, "transpose_forward": tf,
            "cases": {k: records[k] for k in sorted(records)}}
    save_json(meta, meta_file)
    logger.info("TLCR: %d patches (%d new) in %s", len(records), len(todo), out)
    return meta


def tumor_report(meta: dict) -> dict:
    """Summary for the plans: tumour extents, cases whose tumour the crop cuts, empty tumours."""
    cases = meta["cases"].values()
    extents = [np.subtract(r["bbox_max"], r["bbox_min"]).tolist() for r in cases if not r["empty_tumor"]]
    return {
        "max_tumor_extent_voxels": np.max(extents, axis=0).tolist() if extents else None,
        "median_tumor_extent_voxels": np.median(extents, axis=0).tolist() if extents else None,
        "cases_tumor_exceeds_crop": sorted(r["case_id"] for r in cases if r["tumor_clipped"]),
        "cases_empty_tumor": sorted(r["case_id"] for r in cases if r["empty_tumor"]),
        "cases_padded": sorted(r["case_id"] for r in cases if r["padded"]),
    }
