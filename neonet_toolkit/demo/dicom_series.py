"""Synthetic DICOM source series: a 3D image written as an MR series, for the demo and the tests.

``neonet_predict`` reads DICOM series (``inference/inputs.py``) and writes DICOM-SEG/SR results beside them;
the phantom has no DICOM of its own, so this module writes one from any 3D SimpleITK image:

* ``multiframe=False`` (default): one MR Image Storage file per slice (``IM_00001.dcm`` ...), written with
  pydicom, in slice order (slice ``k`` of the image is file ``k + 1``);
* ``multiframe=True``: ONE Legacy Converted Enhanced MR Image file built with ``highdicom.legacy`` from those
  slices (per-frame positions in ``PerFrameFunctionalGroupsSequence``).

Geometry is the image's: ``ImagePositionPatient`` of slice ``k`` is ``TransformIndexToPhysicalPoint((0, 0, k))``,
``ImageOrientationPatient`` the first two columns of the direction (ITK's physical space is DICOM's LPS patient
space), ``PixelSpacing`` (row, column) = (spacing y, spacing x). Readers order the slices along
``row x column``; an image whose direction is left-handed (third column ``-(row x column)``) is therefore read
back as its right-handed twin (same voxels in the same physical places, slice axis and origin flipped), which is
logged.

Pixel data: an integer image that fits ``int16`` is stored as is (slope 1, intercept 0); any other image as
``uint16`` with ``RescaleSlope``/``RescaleIntercept`` chosen (from the values as written in the file, decimal
strings of at most 16 characters) so that ``stored * slope + intercept`` is within ``slope / 2`` of the
original intensity.

UIDs are deterministic when ``uid_seed`` is given (``pydicom.uid.generate_uid`` with ``entropy_srcs``), random
otherwise. The patient, study and manufacturer attributes say plainly that the data are synthetic.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from highdicom.legacy import LegacyConvertedEnhancedMRImage
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid
from pydicom.valuerep import format_number_as_ds

from neonet_toolkit.dataset.case_ids import check_case_id, safe_join
from neonet_toolkit.utilities.io import atomic_path

logger = logging.getLogger(__name__)

MANUFACTURER = "NeoNet toolkit (synthetic phantom)"
STORED_MAX = 65000  # uint16 codes used for float images (headroom below 65535 for the rounded slope)
STORED_OFFSET = 200  # codes kept below the image minimum (the rounded intercept may sit slightly above it)
DICOM_TEST_FOLDER = "dicomTs"  # beside imagesTs in a raw dataset: one series folder per test case


def _ds(value: float) -> str:
    """A decimal string of at most 16 characters (the DS limit)."""
    return format_number_as_ds(float(value))


def _uid(uid_seed: str | None, *parts) -> str:
    if uid_seed is None:
        return generate_uid()
    return generate_uid(entropy_srcs=[str(uid_seed), *(str(p) for p in parts)])


def _check_image(image: sitk.Image) -> None:
    if not isinstance(image, sitk.Image):
        raise TypeError(f"write_dicom_series expects a SimpleITK.Image, got {type(image).__name__}")
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(f"write_dicom_series expects a scalar 3D image, got dimension {image.GetDimension()} "
                         f"with {image.GetNumberOfComponentsPerPixel()} component(s) per pixel")


def pixel_encoding(array: np.ndarray) -> tuple[np.ndarray, float, float, int]:
    """``(stored, slope, intercept, pixel_representation)`` for ``array`` (any shape).

    ``stored * slope + intercept`` reproduces ``array`` within ``slope / 2``; ``slope`` and ``intercept`` are
    the values a reader parses from the file (already rounded to DICOM decimal strings)."""
    a = np.asarray(array)
    if a.size == 0:
        raise ValueError("cannot encode an empty image")
    if not np.all(np.isfinite(a)):
        raise ValueError("the image holds NaN or infinite values, which DICOM integer pixel data cannot store")
    lo, hi = float(a.min()), float(a.max())
    if np.issubdtype(a.dtype, np.integer) and lo >= -32768 and hi <= 32767:
        return a.astype(np.int16), 1.0, 0.0, 1
    a = a.astype(np.float64)
    slope = float(_ds((hi - lo) / STORED_MAX)) if hi > lo else 1.0
    if slope <= 0.0:  # a range so narrow that the DS string rounds the slope to zero
        slope = float(_ds(max(abs(hi), abs(lo), 1.0) * 1e-12))
    intercept = float(_ds(lo - STORED_OFFSET * slope))
    stored = np.rint((a - intercept) / slope)
    if stored.min() < 0 or stored.max() > 65535:  # cannot happen with the headroom above; never clip silently
        raise ValueError(f"pixel encoding out of range (slope {slope}, intercept {intercept})")
    return stored.astype(np.uint16), slope, intercept, 0


def _slice_datasets(image: sitk.Image, *, patient_id: str, patient_name: str | None, study_instance_uid: str,
                    series_instance_uid: str, frame_of_reference_uid: str, series_description: str,
                    series_number: int, uid_seed: str | None) -> list[Dataset]:
    arr = sitk.GetArrayFromImage(image)  # (z, y, x)
    stored, slope, intercept, representation = pixel_encoding(arr)
    sx, sy, sz = (float(s) for s in image.GetSpacing())
    d = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    row, col = d[:, 0], d[:, 1]
    normal = np.cross(row, col)
    if float(np.dot(normal, d[:, 2])) < 0:
        logger.warning("The image's direction is left-handed (slice axis opposite to row x column): DICOM readers "
                       "order the slices along row x column and read it back with the slice axis flipped "
                       "(same voxels in the same physical places).")
    # a seeded series is reproducible byte for byte: its dates are fixed too (a synthetic acquisition)
    now = _dt.datetime(2026, 1, 1, tzinfo=_dt.timezone.utc) if uid_seed is not None else \
        _dt.datetime.now(_dt.timezone.utc)
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    lo, hi = float(arr.min()), float(arr.max())
    iop = [_ds(v) for v in (*row, *col)]
    out = []
    for k in range(stored.shape[0]):
        pos = image.TransformIndexToPhysicalPoint((0, 0, k))
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
        sop_uid = _uid(uid_seed, "sop", series_instance_uid, k)
        ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = date
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = time
        ds.AccessionNumber = ""
        ds.Modality = "MR"
        ds.Manufacturer = MANUFACTURER
        ds.ManufacturerModelName = "phantom"
        ds.InstitutionName = "synthetic"
        ds.ReferringPhysicianName = ""
        ds.StudyDescription = "NeoNet synthetic phantom (not patient data)"
        ds.SeriesDescription = series_description
        ds.PatientName = patient_name if patient_name is not None else f"Phantom^{patient_id}"
        ds.PatientID = patient_id
        ds.PatientBirthDate = ""
        ds.PatientSex = "O"
        ds.PatientIdentityRemoved = "YES"  # nothing here ever identified a person
        ds.BodyPartExamined = "LIVER"
        ds.ScanningSequence = "GR"
        ds.SequenceVariant = "SP"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "3D"
        ds.SliceThickness = _ds(sz)
        ds.SpacingBetweenSlices = _ds(sz)
        ds.RepetitionTime = "4"
        ds.EchoTime = "2"
        ds.EchoTrainLength = "1"
        ds.MagneticFieldStrength = "3"
        ds.ImagedNucleus = "1H"
        ds.PatientPosition = "HFS"
        ds.StudyInstanceUID = study_instance_uid
        ds.SeriesInstanceUID = series_instance_uid
        ds.StudyID = "1"
        ds.SeriesNumber = int(series_number)
        ds.AcquisitionNumber = 1
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [_ds(v) for v in pos]
        ds.ImageOrientationPatient = iop
        ds.FrameOfReferenceUID = frame_of_reference_uid
        ds.PositionReferenceIndicator = ""
        ds.SliceLocation = _ds(float(np.dot(pos, normal)))
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = int(stored.shape[1]), int(stored.shape[2])
        ds.PixelSpacing = [_ds(sy), _ds(sx)]
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = representation
        ds.WindowCenter = _ds((lo + hi) / 2)
        ds.WindowWidth = _ds(max(hi - lo, 1.0))
        ds.RescaleIntercept = _ds(intercept)
        ds.RescaleSlope = _ds(slope)
        ds.RescaleType = "US"
        ds.PixelData = np.ascontiguousarray(stored[k]).astype(stored.dtype.newbyteorder("<")).tobytes()
        ds["PixelData"].VR = "OW"
        out.append(ds)
    return out


def write_dicom_series(image: sitk.Image, folder, *, patient_id: str, patient_name: str | None = None,
                       study_instance_uid: str | None = None, series_description: str = "NeoNet phantom T1 HBP",
                       multiframe: bool = False, series_number: int = 1, uid_seed: str | None = None) -> list[Path]:
    """Write a 3D SimpleITK image as an MR series with pydicom (one MR Image Storage file per slice), or with
    ``multiframe=True`` as ONE Legacy Converted Enhanced MR file built with ``highdicom.legacy`` from those
    slices. Returns the written paths in slice order (``IM_00001.dcm`` ...); files are written atomically.

    ``study_instance_uid``: put the series into an existing study (default: a new study). ``uid_seed``: the
    same seed gives the same UIDs (study, series, frame of reference, instances), ``None`` random ones."""
    _check_image(image)
    if not str(patient_id):
        raise ValueError("patient_id must not be empty")
    folder = Path(folder)
    study_uid = study_instance_uid or _uid(uid_seed, "study")
    series_uid = _uid(uid_seed, "series", study_uid, series_number)
    frame_uid = _uid(uid_seed, "frame-of-reference", study_uid)
    slices = _slice_datasets(image, patient_id=str(patient_id), patient_name=patient_name,
                             study_instance_uid=study_uid, series_instance_uid=series_uid,
                             frame_of_reference_uid=frame_uid, series_description=series_description,
                             series_number=series_number, uid_seed=uid_seed)
    folder.mkdir(parents=True, exist_ok=True)
    if multiframe:
        if len(slices) < 2:
            raise ValueError("a multi-frame series needs at least 2 slices")
        enhanced = LegacyConvertedEnhancedMRImage(
            legacy_datasets=slices, series_instance_uid=series_uid, series_number=int(series_number),
            sop_instance_uid=_uid(uid_seed, "enhanced", series_uid), instance_number=1)
        target = folder / "IM_00001.dcm"
        with atomic_path(target, suffix=".dcm") as tmp:
            enhanced.save_as(tmp, enforce_file_format=True)
        written = [target]
    else:
        written = []
        for k, ds in enumerate(slices):
            target = folder / f"IM_{k + 1:05d}.dcm"
            with atomic_path(target, suffix=".dcm") as tmp:
                ds.save_as(tmp, enforce_file_format=True)
            written.append(target)
    logger.info("Wrote %s DICOM %s (%d slice(s), %s) to %s", "multi-frame" if multiframe else "single-frame",
                series_description, len(slices), patient_id, folder)
    return written


def phantom_case_to_dicom(nifti_image_path, folder, case_id: str, **kw) -> list[Path]:
    """Read ``CASE_0000.nii.gz`` with SimpleITK and write it as a series (``PatientID = case_id``); ``kw`` go to
    :func:`write_dicom_series`."""
    check_case_id(case_id)
    image = sitk.ReadImage(str(nifti_image_path))
    return write_dicom_series(image, folder, patient_id=case_id, **kw)


def image_digest(image: sitk.Image) -> str:
    """sha256 of an image's voxels and geometry (a content-bound ``uid_seed``: the same image gives the same
    UIDs, another image other UIDs)."""
    h = hashlib.sha256()
    for v in (image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection(),
              image.GetPixelIDTypeAsString()):
        h.update(repr(v).encode())
    h.update(np.ascontiguousarray(sitk.GetArrayViewFromImage(image)).tobytes())
    return h.hexdigest()


def dataset_test_cases_to_dicom(dataset_folder, case_ids: Sequence[str] | None = None,
                                multiframe: bool = False) -> dict[str, list[Path]]:
    """Write each test image ``imagesTs/<case>_0000.nii.gz`` of a raw dataset as a series in
    ``dicomTs/<case>/`` (the folder name is the case id ``neonet_predict`` gives the series). ``case_ids``:
    default every ``*_0000.nii.gz`` in ``imagesTs``. UIDs are deterministic, seeded by the dataset name, the case
    id and the image content. Returns ``{case_id: files}``."""
    folder = Path(dataset_folder)
    images = folder / "imagesTs"
    if case_ids is None:
        case_ids = sorted(p.name[: -len("_0000.nii.gz")] for p in images.glob("*_0000.nii.gz"))
    out = {}
    for cid in case_ids:
        image = sitk.ReadImage(str(safe_join(images, cid, "_0000.nii.gz")))
        out[cid] = write_dicom_series(image, safe_join(folder / DICOM_TEST_FOLDER, cid), patient_id=cid,
                                      multiframe=multiframe,
                                      uid_seed=f"neonet-phantom/{folder.name}/{cid}/{image_digest(image)}")
    logger.info("Wrote %d test case(s) of %s as DICOM series in %s", len(out), folder.name,
                folder / DICOM_TEST_FOLDER)
    return out


def read_slice_positions(files: Sequence[str | Path]) -> np.ndarray:
    """``ImagePositionPatient`` of each single-frame file, (n, 3) (a helper for checks and tests)."""
    return np.array([[float(v) for v in pydicom.dcmread(str(f), stop_before_pixels=True).ImagePositionPatient]
                     for f in files])
