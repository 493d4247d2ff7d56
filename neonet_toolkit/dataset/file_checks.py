"""Full-read integrity checks of image and label files, before anything uses their voxels.

SimpleITK reads a truncated ``.nii.gz`` without complaint and fills the missing voxels with zeros,
so a label cut in half would silently move the tumour crop. Every NIfTI file is therefore checked
end to end: the whole gzip stream is decompressed (which verifies its CRC and length) and the data
size the header promises is compared with what the file holds. Other formats (``.mha``, ``.nrrd``,
``.mhd`` + ``.raw``, ...) are read in full through SimpleITK, whose readers for these formats raise on
missing data (checked for MetaImage and NRRD, plain and compressed). Failures raise
:class:`FileIntegrityError` with a message that names the file and the fix; nothing is ever
zero-filled.
"""
from __future__ import annotations

import gzip
import zlib
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from neonet_toolkit.dataset.errors import DatasetError

_CHUNK = 1 << 22


class FileIntegrityError(DatasetError):
    """An image or label file is empty, truncated or corrupt."""


def _fix(path: Path) -> str:
    return f"copy {path.name} again from its source or re-export it"


def _gzip_length(path: Path) -> int:
    """Decompressed length of a whole gzip file (reading to the end checks the CRC-32 and the length)."""
    n = 0
    with gzip.open(path, "rb") as f:
        while True:
            block = f.read(_CHUNK)
            if not block:
                return n
            n += len(block)


def verify_image_file(path: str | Path) -> dict:
    """Raise :class:`FileIntegrityError` unless ``path`` is a complete, readable image. Returns
    ``{"shape": ...}`` in the file's own axis order (x, y, z, ...), plus ``"bytes"`` (the voxel payload
    with header) for NIfTI files."""
    path = Path(path)
    if not path.is_file():
        raise FileIntegrityError(f"{path} does not exist.")
    size = path.stat().st_size
    if size == 0:
        raise FileIntegrityError(f"{path} is empty (0 bytes): {_fix(path)}.")
    if path.name.endswith((".nii", ".nii.gz")):
        return _verify_nifti(path, size)
    import SimpleITK as sitk

    try:  # a full read: a header read alone would pass a file whose voxel data is cut short
        img = sitk.ReadImage(str(path))
    except RuntimeError as e:
        raise FileIntegrityError(f"{path} cannot be read in full ({_itk_reason(e)}): {_fix(path)}.") from None
    return {"shape": tuple(int(s) for s in img.GetSize())}


def _itk_reason(e: Exception) -> str:
    """The informative line of an ITK exception (the first names ITK's own source file)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    useful = [ln for ln in lines if "ITK ERROR" in ln or not ln.startswith(("Exception thrown", "/"))]
    return (useful or lines or ["unknown reader error"])[0][:160]


def _verify_nifti(path: Path, size: int) -> dict:
    import nibabel as nib

    compressed = path.name.endswith(".gz")
    if compressed:
        try:
            payload = _gzip_length(path)
        except (EOFError, OSError, zlib.error) as e:
            raise FileIntegrityError(f"{path}: the gzip stream is truncated or corrupt ({type(e).__name__}: {e}): "
                                     f"{_fix(path)}.") from None
    else:
        payload = size
    try:
        # the array proxy holds the file's own layout (a loaded image's ``header`` has its offset reset to 0)
        proxy = nib.load(str(path)).dataobj
        shape = tuple(int(s) for s in proxy.shape)
        dtype = np.dtype(proxy.dtype)
        offset = int(proxy.offset)
    except Exception as e:  # nibabel raises many kinds on a bad header
        raise FileIntegrityError(f"{path}: the NIfTI header cannot be read ({type(e).__name__}: {e}): "
                                 f"{_fix(path)}.") from None
    if not shape or any(d <= 0 for d in shape):
        raise FileIntegrityError(f"{path}: the NIfTI header declares an invalid shape {shape} (corrupt header): "
                                 f"{_fix(path)}.")
    expected = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if payload < expected:
        raise FileIntegrityError(
            f"{path} is truncated: its header promises {expected} bytes of voxel data (shape {shape}, "
            f"{dtype}, data from byte {offset}) but the file holds {payload}: {_fix(path)}.")
    return {"shape": shape, "bytes": payload}


def file_problem(path: str | Path, case_id: str) -> str | None:
    """:func:`verify_image_file` as a message naming the case (``None`` when the file is fine)."""
    try:
        verify_image_file(path)
    except FileIntegrityError as e:
        return f"case {case_id!r}: {e}"
    return None


def stored_voxels(path: str | Path, img=None) -> np.ndarray:
    """The voxels as stored in the file. ITK's NIfTI reader (SimpleITK, and so nnU-Net's ``SimpleITKIO``)
    turns NaN and Inf into 0, so NIfTI files are read with nibabel; other formats through SimpleITK
    (``img``, when the caller has read it already)."""
    import SimpleITK as sitk

    path = Path(path)
    if path.name.endswith((".nii", ".nii.gz")):
        import nibabel as nib

        return np.asanyarray(nib.load(str(path)).dataobj)
    return sitk.GetArrayViewFromImage(img if img is not None else sitk.ReadImage(str(path)))


def nonfinite_problem(path: str | Path, case_id: str | None, voxels: np.ndarray | None = None) -> str | None:
    """A message naming the case, the file and the fix when the file holds NaN or Inf voxels (``None`` when
    every voxel is finite). One check for planning (training images) and prediction (input images): a
    reader that silently maps NaN to 0 would otherwise hand the models an image with a hole in it."""
    path = Path(path)
    arr = stored_voxels(path) if voxels is None else voxels
    finite = np.isfinite(arr)
    if finite.all():
        return None
    n = int(finite.size - np.count_nonzero(finite))
    who = f"case {case_id!r}: " if case_id is not None else ""
    return (f"{who}image {path.name} has {n} NaN/Inf voxel(s) (of {finite.size}); replace them "
            "(e.g. with 0) or re-export the image from its source.")


# Voxel spacing is read in millimetres by nnU-Net and NeoNet. Clinical MRI and CT voxels are 0.2-10 mm; written
# in metres they are 0.0002-0.01. Below 0.05 on every axis is therefore a unit error for the images this toolkit
# is for (only ex-vivo micro-MRI has such voxels).
METRE_SPACING_LIMIT_MM = 0.05


def metre_spacing_problem(spacing, path: str | Path, case_id: str) -> str | None:
    """A message naming the case, the file and the fix when ``spacing`` (x, y, z) looks like metres."""
    sp = [float(s) for s in spacing]
    if not sp or max(sp) >= METRE_SPACING_LIMIT_MM:
        return None
    mm = [round(s * 1000, 4) for s in sp]
    return (f"case {case_id!r}: {Path(path).name} has voxel spacing {[round(s, 7) for s in sp]} (x, y, z), below "
            f"{METRE_SPACING_LIMIT_MM} on every axis: it looks like metres, but spacing is read in millimetres "
            f"(in mm it would be {mm}). Rewrite the header in millimetres (spacing and origin x 1000, e.g. SimpleITK "
            "img.SetSpacing([s * 1000 for s in img.GetSpacing()]); img.SetOrigin([o * 1000 for o in "
            "img.GetOrigin()])) for the image and its label alike, or re-export the file in mm.")


# --- DICOM series -------------------------------------------------------------------------------
# GDCM's series scanner silently leaves out a file it cannot parse (a slice cut short by even two
# bytes, an empty file), and ITK's series reader then stacks the remaining slices with only a
# console warning ("Non uniform sampling or missing slices detected"): the volume loses a slice and
# its spacing is averaged. Both are therefore checked before a series is converted.

_DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
_NOT_IMAGES = ("DICOMDIR",)


def looks_like_dicom(path: str | Path) -> bool:
    """A DICOM file by name (``.dcm``, ``.dicom``, ``.ima``) or by its ``DICM`` magic at byte 128."""
    path = Path(path)
    if path.name.upper() in _NOT_IMAGES or not path.is_file():
        return False
    if path.name.lower().endswith(_DICOM_SUFFIXES):
        return True
    with open(path, "rb") as f:
        head = f.read(132)
    return head[128:132] == b"DICM"


def unreadable_dicom_files(folder: str | Path, series_files: Iterable[str | Path]) -> list[Path]:
    """DICOM files directly inside ``folder`` that belong to none of its readable series (``series_files``)."""
    folder = Path(folder)
    known = {Path(f).resolve() for f in series_files}
    return sorted(p for p in folder.iterdir() if p.resolve() not in known and looks_like_dicom(p))


def dicom_orphans_problem(folder: str | Path, orphans: Sequence[Path]) -> str:
    names = [p.name for p in orphans]
    return (f"{len(names)} DICOM file(s) in {folder} cannot be read and would be left out of the series "
            f"(e.g. {names[:3]}; truncated, empty or corrupt): copy the series again from its source, or move "
            "the file(s) out of the folder if they are not part of the scan.")


def verify_dicom_slices(files: Sequence[str | Path], what: str = "DICOM series", tolerance: float = 0.1) -> None:
    """Raise :class:`FileIntegrityError` when the slice positions of a single-frame series are not evenly
    spaced (a missing or duplicated slice). ``files`` are in GDCM's slice order."""
    import SimpleITK as sitk

    if len(files) < 3:
        return
    positions = []
    for f in files:
        r = sitk.ImageFileReader()
        r.SetFileName(str(f))
        try:
            r.ReadImageInformation()
        except RuntimeError as e:
            raise FileIntegrityError(f"{what}: slice {Path(f).name} cannot be read ({_itk_reason(e)}): "
                                     "copy the series again from its source.") from None
        d = np.asarray(r.GetDirection(), dtype=float)
        normal = d.reshape(3, 3)[:, 2] if d.size == 9 else np.array([0.0, 0.0, 1.0])
        positions.append(float(np.dot(np.asarray(r.GetOrigin(), dtype=float)[:3], normal)))
    pos = np.sort(np.asarray(positions))
    gaps = np.diff(pos)
    step = float(np.median(gaps))
    if step <= 1e-6:
        raise FileIntegrityError(f"{what}: the slices do not advance along the slice normal (duplicated slice "
                                 "positions); export one series per folder.")
    bad = np.flatnonzero(np.abs(gaps - step) > tolerance * step)
    if bad.size:
        i = int(bad[0])
        kind = "missing" if gaps[i] > step else "duplicated or extra"
        raise FileIntegrityError(
            f"{what}: uneven slice spacing ({bad.size} gap(s); e.g. {gaps[i]:.3g} mm between positions "
            f"{pos[i]:.4g} and {pos[i + 1]:.4g} where the others are {step:.3g} mm apart): a slice is {kind} or "
            "unreadable. Copy the complete series again from its source.")
