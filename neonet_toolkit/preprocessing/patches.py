"""TLCR patches of every training case, on nnU-Net's preprocessed (resampled, normalised) grid.

Layout (outside nnU-Net's own data folder, which must hold one file type)::

    nnUNet_preprocessed/DatasetXXX_Name/neonet_tlcr/<source>/
        CASE.npz          # image: float32 (2, *crop)  [organ∪tumour-masked, tumour-masked]
                          # label: uint8   (2, *crop)  [organ∪tumour mask, tumour mask]
        metadata.json     # {"crop_size": ..., "cases": {CASE: record}}

``source`` is ``gt`` (ground-truth labels, written by planning) or ``pred`` (NeoSeg's
out-of-fold predictions). Each record holds the crop origin, spacing, tumour voxel count and
volume, tumour bbox and whether the crop cut it, the empty-tumour flag and the case label.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Callable

import numpy as np

from neonet_toolkit.dataset.case_ids import safe_join
from neonet_toolkit.dataset.labels import LabelRoles
from neonet_toolkit.preprocessing.tlcr import tlcr_from_segmentation
from neonet_toolkit.utilities.io import load_json, save_json, save_npz

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
                           spacing, image_channel: int, out_folder: Path, label: int | None, source: str) -> dict:
    image = np.asarray(data[image_channel], dtype=np.float32)
    seg = np.asarray(seg)
    if seg.ndim == image.ndim + 1:
        seg = seg[0]
    if not np.all(np.isfinite(image)):
        raise ValueError(f"case {case_id!r}: preprocessed image has NaN/Inf voxels; fix the raw image.")
    img_p, lab_p, info = tlcr_from_segmentation(image, seg, roles, crop_size)
    save_npz(safe_join(out_folder, case_id, ".npz"), image=img_p, label=lab_p)
    rec = make_record(case_id, info, spacing, label, source)
    roi = lab_p[0].astype(bool)
    rec["roi_intensity"] = ({"mean": float(img_p[0][roi].mean()), "std": float(img_p[0][roi].std()),
                             "p01": float(np.percentile(img_p[0][roi], 1)),
                             "p99": float(np.percentile(img_p[0][roi], 99))} if roi.any() else None)
    return rec


def _extract_one(args):
    (case_id, pp_folder, roles, crop_size, spacing, channel, out_folder, label, source) = args
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    ds_cls = infer_dataset_class(str(pp_folder))
    data, seg, _, _ = ds_cls(str(pp_folder), [case_id]).load_case(case_id)
    return extract_patch_for_case(case_id, np.asarray(data[:]), np.asarray(seg[:]), roles, crop_size, spacing,
                                  channel, out_folder, label, source)


def extract_gt_patches(preprocessed_dataset_folder: Path, data_identifier: str, case_labels: dict[str, int],
                       roles: LabelRoles, crop_size, spacing, image_channel: int = 0, num_processes: int = 1,
                       overwrite: bool = False, progress: Callable | None = None) -> dict:
    """TLCR patches from the ground-truth labels for every case in ``case_labels``.

    Idempotent: cases whose patch exists and was made with the same settings are kept.
    """
    from tqdm import tqdm

    pp_folder = Path(preprocessed_dataset_folder) / data_identifier
    out = patch_folder(preprocessed_dataset_folder, "gt")
    out.mkdir(parents=True, exist_ok=True)
    stamp = settings_hash(list(crop_size), list(spacing), roles.to_dict(), image_channel, data_identifier)
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
                         int(case_labels[cid]), "gt"))
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
            "data_identifier": data_identifier, "cases": {k: records[k] for k in sorted(records)}}
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
