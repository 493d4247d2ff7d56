"""Full-read integrity checks of image and label files, before anything uses their voxels.

SimpleITK reads a truncated ``.nii.gz`` without complaint and fills the missing voxels with zeros,
so a label cut in half would silently move the tumour crop. Every NIfTI file is therefore checked
end to end: the whole gzip stream is decompressed (which verifies its CRC and length) and the data
size the header promises is compared with what the file holds. Other formats (``.mha``, ``.nrrd``,
...) are read through SimpleITK's header reader. Failures raise :class:`FileIntegrityError` with a
message that names the file and the fix; nothing is ever zero-filled.
"""
from __future__ import annotations

import gzip
import zlib
from pathlib import Path

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
    ``{"shape": ..., "bytes": ...}`` for NIfTI files (``{}`` for other formats)."""
    path = Path(path)
    if not path.is_file():
        raise FileIntegrityError(f"{path} does not exist.")
    size = path.stat().st_size
    if size == 0:
        raise FileIntegrityError(f"{path} is empty (0 bytes): {_fix(path)}.")
    if path.name.endswith((".nii", ".nii.gz")):
        return _verify_nifti(path, size)
    import SimpleITK as sitk

    r = sitk.ImageFileReader()
    r.SetFileName(str(path))
    try:
        r.ReadImageInformation()
    except RuntimeError as e:
        raise FileIntegrityError(f"{path} cannot be read ({str(e).splitlines()[0][:160]}): {_fix(path)}.") from None
    return {}


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
        hdr = nib.load(str(path)).header
        shape = tuple(int(s) for s in hdr.get_data_shape())
        itemsize = np.dtype(hdr.get_data_dtype()).itemsize
        offset = int(hdr.get_data_offset())
    except Exception as e:  # nibabel raises many kinds on a bad header
        raise FileIntegrityError(f"{path}: the NIfTI header cannot be read ({type(e).__name__}: {e}): "
                                 f"{_fix(path)}.") from None
    if not shape or any(d <= 0 for d in shape):
        raise FileIntegrityError(f"{path}: the NIfTI header declares an invalid shape {shape} (corrupt header): "
                                 f"{_fix(path)}.")
    expected = offset + int(np.prod(shape, dtype=np.int64)) * itemsize
    if payload < expected:
        raise FileIntegrityError(
            f"{path} is truncated: its header promises {expected} bytes of voxel data (shape {shape}, "
            f"{hdr.get_data_dtype()}) but the file holds {payload}: {_fix(path)}.")
    return {"shape": shape, "bytes": payload}


def file_problem(path: str | Path, case_id: str) -> str | None:
    """:func:`verify_image_file` as a message naming the case (``None`` when the file is fine)."""
    try:
        verify_image_file(path)
    except FileIntegrityError as e:
        return f"case {case_id!r}: {e}"
    return None
