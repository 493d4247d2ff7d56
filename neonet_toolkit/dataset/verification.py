"""Dataset verification: every case read in full (file integrity, geometry, NaN/Inf, undeclared labels)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable

import numpy as np

from neonet_toolkit.dataset.contract import NeoNetDataset
from neonet_toolkit.dataset.errors import DatasetError
from neonet_toolkit.dataset.file_checks import file_problem

logger = logging.getLogger(__name__)


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
    for f, img in zip(files, imgs):
        try:
            arr = _raw_voxels(f, img)
        except Exception as e:  # a reader failing deep inside: never a traceback, always the case and the fix
            errors.append(f"case {case_id!r}: image {f.name} cannot be read in full ({type(e).__name__}: {e}); "
                          "copy it again from its source or re-export it.")
            continue
        if not np.all(np.isfinite(arr)):
            n = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
            errors.append(f"case {case_id!r}: image {f.name} has {n} NaN/Inf voxel(s); replace them (e.g. with 0).")
    seg = sitk.GetArrayViewFromImage(lab)
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


def _raw_voxels(path: Path, img) -> np.ndarray:
    """Voxels as stored. ITK's NIfTI reader turns NaN into 0, so NIfTI files are read with nibabel."""
    import SimpleITK as sitk

    if path.name.endswith((".nii", ".nii.gz")):
        import nibabel as nib

        return np.asanyarray(nib.load(str(path)).dataobj)
    return sitk.GetArrayViewFromImage(img)


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
