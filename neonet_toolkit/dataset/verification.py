"""Dataset verification: every case read in full (file integrity, geometry, spacing units, NaN/Inf, blank
images, undeclared labels)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable

import numpy as np

from neonet_toolkit.dataset.contract import NeoNetDataset
from neonet_toolkit.dataset.errors import DatasetError
from neonet_toolkit.dataset.file_checks import file_problem, metre_spacing_problem, nonfinite_problem, stored_voxels

logger = logging.getLogger(__name__)

# An image region whose spread (max - min) is at most this fraction of its largest magnitude is constant up to
# float32 rounding (float32 resolves ~1.2e-7 relative): a blank, all-zero or failed export, never an MRI, whose
# tissue always shows noise and texture. Scale-free, so it holds for any intensity unit.
FLAT_RELATIVE_SPREAD = 1e-6


def is_flat(values: np.ndarray) -> bool:
    """True when ``values`` are constant up to float32 rounding (:data:`FLAT_RELATIVE_SPREAD`); all-zero included."""
    values = np.asarray(values)
    if values.size == 0:
        return False
    lo, hi = float(values.min()), float(values.max())
    return hi - lo <= FLAT_RELATIVE_SPREAD * max(abs(lo), abs(hi))


def flat_region_problem(case_id: str, path: Path, voxels: np.ndarray, region: np.ndarray | None,
                        target: str = "", label: int | None = None) -> str | None:
    """A message naming the case, the file and the fix when ``voxels`` are constant inside ``region`` (the
    organ+tumour mask; the whole image when the mask is empty or ``None``), else ``None``."""
    use_region = region is not None and bool(region.any())
    values = np.asarray(voxels[region] if use_region else voxels)
    if not is_flat(values):
        return None
    lo, hi = float(values.min()), float(values.max())
    where = "inside the organ+tumour mask" if use_region else "everywhere"
    what = "all zero" if hi == 0 and lo == 0 else f"constant ({lo:g})"
    stake = (f"; its TLCR crop would be blank for a case labelled {target}={label}" if label is not None else "")
    return (f"case {case_id!r}: image {Path(path).name} is {what} {where} ({values.size} voxels, zero variance): "
            f"a blank or failed export, not a usable MRI{stake}. Replace the file with the real scan, or remove the "
            f"case (image, label and its row in the case-label CSV).")


def _geometry(img) -> tuple:
    return img.GetSize(), img.GetSpacing(), img.GetOrigin(), img.GetDirection()


def verify_case(ds: NeoNetDataset, case_id: str, full: bool = True) -> tuple[list[str], list[str], dict]:
    """Check one case. Returns (errors, warnings, info). ``full`` reads voxels (NaN/Inf, labels)."""
    import SimpleITK as sitk

    errors, warnings = [], []
    info: dict = {}
    files = [Path(f) for f in ds.cases[case_id]["images"]]
    label_file = ds.label_file(case_id)
    broken = [m for m in (file_problem(f, case_id) for f in [*files, label_file]) if m]
    if broken:  # never let SimpleITK zero-fill a truncated file
        return broken, [], info
    try:
        imgs = [sitk.ReadImage(str(f)) if full else _read_header(f) for f in files]
        lab = sitk.ReadImage(str(label_file)) if full else _read_header(label_file)
    except (RuntimeError, ValueError, OSError) as e:
        return [f"case {case_id!r}: cannot read image/label ({str(e).splitlines()[0][:200]}); re-export the file."], [], info
    g_lab = _geometry(lab)
    info["shape_xyz"] = list(g_lab[0])
    info["spacing_xyz"] = [float(s) for s in g_lab[1]]
    metres = [m for m in (metre_spacing_problem(_geometry(img)[1], f, case_id) for f, img in zip(files, imgs)) if m]
    if not metres:  # the label alone in metres (the images in mm) is an affine mismatch, named below too
        metres = [m for m in [metre_spacing_problem(g_lab[1], label_file, case_id)] if m]
    if metres:
        return metres, warnings, info
    for f, img in zip(files, imgs):
        g = _geometry(img)
        if len(g[0]) != len(g_lab[0]) or len(g[0]) != 3:
            errors.append(
                f"case {case_id!r}: image {f.name} has {len(g[0])} dimensions {tuple(g[0])}, the label "
                f"{len(g_lab[0])}; each image file must be one 3D volume. dataset.json declares "
                f"{len(ds.dataset_json.get('channel_names', {}))} channel(s): split a multi-channel/4D image into "
                f"{case_id}_0000, {case_id}_0001, ... files and declare every channel in channel_names."
            )
            continue
        if g[0] != g_lab[0]:
            errors.append(
                f"case {case_id!r}: image {f.name} has size {g[0]} but label has {g_lab[0]}; resample the label onto "
                "the image grid."
            )
        elif not (np.allclose(g[1], g_lab[1], atol=1e-4) and np.allclose(g[2], g_lab[2], atol=1e-3)
                  and np.allclose(g[3], g_lab[3], atol=1e-4)):
            errors.append(
                f"case {case_id!r}: image {f.name} and its label differ in spacing/origin/direction (affine "
                "mismatch); copy the image geometry onto the label (e.g. SimpleITK CopyInformation) if the voxels "
                "correspond, else resample."
            )
    if not full:
        return errors, warnings, info
    seg = sitk.GetArrayViewFromImage(lab)
    region = np.isin(seg, ds.roles.organ_ids + ds.roles.tumor_ids)
    for channel, (f, img) in enumerate(zip(files, imgs)):
        try:
            arr = stored_voxels(f, img)
        except Exception as e:  # a reader failing deep inside: never a traceback, always the case and the fix
            errors.append(f"case {case_id!r}: image {f.name} cannot be read in full ({type(e).__name__}: {e}); "
                          "copy it again from its source or re-export it.")
            continue
        problem = nonfinite_problem(f, case_id, arr)
        if problem:
            errors.append(problem)
        elif img.GetSize() == lab.GetSize():  # SimpleITK's (z, y, x) array, as the label's
            # a blank classifier channel is refused; another blank channel (e.g. a zero-filled missing sequence
            # for NeoSeg) is the user's choice: a warning
            flat = flat_region_problem(case_id, f, sitk.GetArrayViewFromImage(img), region, ds.target,
                                       ds.case_labels.get(case_id) if channel == ds.image_channel else None)
            if flat:
                (errors if channel == ds.image_channel else warnings).append(flat)
    values = np.unique(seg)
    unknown = sorted(set(values.tolist()) - set(ds.roles.all_ids) - {0})
    if unknown:
        errors.append(
            f"case {case_id!r}: label file contains value(s) {unknown} not declared in dataset.json 'labels' "
            f"{ds.roles.labels}; declare them or fix the label file."
        )
    n_tumor = int(np.isin(seg, ds.roles.tumor_ids).sum())
    info["tumor_voxels"] = n_tumor
    if n_tumor == 0:
        warnings.append(
            f"case {case_id!r}: empty tumour (no voxel of {list(ds.roles.tumor_names)}); its TLCR patch will be "
            "all zeros and flagged 'empty_tumor'."
        )
    return errors, warnings, info


def _read_header(path: Path):
    import SimpleITK as sitk

    r = sitk.ImageFileReader()
    r.SetFileName(str(path))
    r.ReadImageInformation()

    class _H:  # minimal view with the same accessors as an Image
        GetSize = staticmethod(lambda: r.GetSize())
        GetSpacing = staticmethod(lambda: r.GetSpacing())
        GetOrigin = staticmethod(lambda: r.GetOrigin())
        GetDirection = staticmethod(lambda: r.GetDirection())

    return _H()


def verify_dataset(ds: NeoNetDataset, full: bool = True, case_ids: Iterable[str] | None = None,
                   num_processes: int = 1) -> dict:
    """Check every case; raise :class:`DatasetError` listing all errors; return a report."""
    from tqdm import tqdm

    case_ids = list(case_ids) if case_ids is not None else ds.case_ids
    errors, warnings, infos = [], [], {}
    if num_processes > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(num_processes, mp_context=mp.get_context("spawn")) as ex:
            results = list(tqdm(ex.map(verify_case, [ds] * len(case_ids), case_ids, [full] * len(case_ids)),
                                total=len(case_ids), desc="verify", disable=None))
    else:
        results = [verify_case(ds, c, full) for c in tqdm(case_ids, desc="verify", disable=None)]
    for cid, (e, w, i) in zip(case_ids, results):
        errors += e
        warnings += w
        infos[cid] = i
    for w in warnings:
        logger.warning(w)
    if errors:
        raise DatasetError(errors)
    empty = [c for c, i in infos.items() if i.get("tumor_voxels", 1) == 0]
    return {"n_cases": len(case_ids), "warnings": warnings, "empty_tumor_cases": empty, "cases": infos}
