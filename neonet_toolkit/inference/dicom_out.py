"""``neonet_predict --dicom-out``: a case's result as DICOM a viewer opens as it is (built with highdicom).

Per case whose source is a DICOM series (its own input, or ``--dicom-reference`` for a NIfTI input):

* **DICOM SEG** (``dicom/CASE_seg.dcm``): one segment per label of the dataset except background (the organ,
  the tumour, any extra label), coded with SNOMED CT categories and types where one is known (liver, tumour =
  neoplasm, vessel; any other label: tissue, with its own name as the segment label). It references the source
  series and is frame-aligned with it: each source frame (slice, or frame of an enhanced multi-frame image) gets
  the mask slice at the same ``ImagePositionPatient``. The mask is the one ``neonet_predict`` wrote (nnU-Net's
  export in the input geometry, after resampling back); its geometry must match the series, else the case is
  refused by name.
* **Comprehensive 3D SR** (``dicom/CASE_sr.dcm``), a TID 1500 measurement report (``highdicom.sr``): the PNI
  probability, the decision, its threshold and the QC flags, the tumour volume referencing the tumour segment of the
  SEG, and the model identity (toolkit version and the model's content hash as the algorithm identification, a
  device observer whose UID is derived from that hash, so the same model always has the same device UID). A case
  without a probability says so (``withheld`` evaluations naming the flags). Concepts without a standard code
  (PNI probability, decision threshold, QC flags) use the private coding scheme ``99NEONET``.

Both carry new UIDs; patient and study attributes are copied from the source (missing PatientID or
StudyInstanceUID is refused by name, never invented). Series descriptions carry the research-use disclaimer.
Files are written atomically. :func:`read_seg` reads a SEG written here back into a label volume in the source
geometry (SimpleITK image; the round trip mask → SEG → mask is voxel-identical for labels with one id each).
"""
from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from neonet_toolkit.dataset.errors import DatasetError
from neonet_toolkit.dataset.labels import LabelRoles
from neonet_toolkit.utilities.io import atomic_path
from neonet_toolkit.version import __version__

logger = logging.getLogger(__name__)

DISCLAIMER = "RESEARCH USE ONLY - NOT FOR DIAGNOSTIC USE"
SCHEME = "99NEONET"  # private coding scheme for concepts without a standard code
MANUFACTURER = "NeoNet toolkit"
SEG_SERIES_NUMBER, SR_SERIES_NUMBER = 9901, 9902
POSITION_TOL_MM = 1e-2
_TRACKING_ID = re.compile(r"^label ([0-9,]+): ")
DIRECTION_TOL = 1e-3

PNI_PROBABILITY = hd.sr.CodedConcept("PNI-P", SCHEME, "Perineural invasion probability")
PNI_DECISION = hd.sr.CodedConcept("PNI-D", SCHEME, "Perineural invasion (model decision)")
PNI_THRESHOLD = hd.sr.CodedConcept("PNI-T", SCHEME, "Perineural invasion decision threshold")
PNI_WITHHELD = hd.sr.CodedConcept("PNI-W", SCHEME, "Perineural invasion probability withheld")
QC_FLAG = hd.sr.CodedConcept("QC", SCHEME, "Quality control flag")
MORPH_ALTERED = hd.sr.CodedConcept("49755003", "SCT", "Morphologically Altered Structure")
_TYPE_BY_NAME = {"liver": codes.SCT.Liver, "vessel": hd.sr.CodedConcept("59820001", "SCT", "Blood vessel"),
                 "tumor": codes.SCT.Neoplasm, "tumour": codes.SCT.Neoplasm}


def _fail(case_id: str, why: str, fix: str) -> DatasetError:
    return DatasetError(f"case {case_id!r}: {why}. {fix}")


def read_series(files: Sequence[str | Path], case_id: str) -> list[pydicom.Dataset]:
    """The source series' datasets (pixel data included), single-frame slices sorted along the slice normal, or
    one multi-frame image. Refuses what a SEG/SR cannot reference honestly: no PatientID or StudyInstanceUID,
    several series, slices of another orientation (a localizer mixed in)."""
    ds = []
    for f in files:
        try:
            ds.append(pydicom.dcmread(str(f)))
        except Exception as e:  # noqa: BLE001 - any parse failure of a user file is reported by name
            raise _fail(case_id, f"source file {f} is not readable DICOM ({type(e).__name__}: {e})",
                        "Copy the series again from its source.") from None
    if not ds:
        raise _fail(case_id, "no DICOM source files", "Give the case's series (--dicom-reference FOLDER/CASE/).")
    for attr in ("PatientID", "StudyInstanceUID"):
        missing = [Path(f).name for f, d in zip(files, ds) if not str(getattr(d, attr, "") or "").strip()]
        if missing:
            raise _fail(case_id, f"the source series has no {attr} (files {missing[:3]})",
                        "A SEG/SR must belong to the patient's study: export the series with its patient and study "
                        "attributes (NeoNet never invents them).")
    if not all(str(getattr(d, "FrameOfReferenceUID", "") or "").strip() for d in ds):
        raise _fail(case_id, "the source series has no FrameOfReferenceUID",
                    "A SEG is placed in the source's frame of reference: export the series with it (every MR "
                    "scanner writes it; an anonymiser may have removed it).")
    series = sorted({str(d.SeriesInstanceUID) for d in ds})
    if len(series) > 1:
        raise _fail(case_id, f"the source files hold {len(series)} series ({series[:3]})",
                    "Put one series per case folder.")
    if len(ds) == 1:
        return ds
    iops = [np.asarray(d.ImageOrientationPatient, float) for d in ds]
    odd = [Path(f).name for f, o in zip(files, iops) if np.abs(o - iops[0]).max() > DIRECTION_TOL]
    if odd:
        raise _fail(case_id, f"slices {odd[:3]} have another orientation than the series (a localizer mixed in?)",
                    "Remove them from the case's folder.")
    normal = np.cross(iops[0][:3], iops[0][3:])
    order = np.argsort([float(np.dot(np.asarray(d.ImagePositionPatient, float), normal)) for d in ds])
    return [ds[i] for i in order]


def _frames(ds: list[pydicom.Dataset]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(ImagePositionPatient, ImageOrientationPatient) of every source frame, in SEG frame order."""
    if len(ds) > 1 or "PerFrameFunctionalGroupsSequence" not in ds[0]:
        return [(np.asarray(d.ImagePositionPatient, float), np.asarray(d.ImageOrientationPatient, float))
                for d in ds]
    d = ds[0]
    shared = d.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in d else None
    out = []
    for fg in d.PerFrameFunctionalGroupsSequence:
        ori = fg.PlaneOrientationSequence[0] if "PlaneOrientationSequence" in fg else \
            shared.PlaneOrientationSequence[0]
        out.append((np.asarray(fg.PlanePositionSequence[0].ImagePositionPatient, float),
                    np.asarray(ori.ImageOrientationPatient, float)))
    return out


def frames_from_volume(volume: sitk.Image, ds: list[pydicom.Dataset], case_id: str) -> np.ndarray:
    """``volume``'s slices in the source frames' order, (frames, rows, columns): frame k is the slice whose
    position is the frame's ImagePositionPatient. Refuses a volume whose geometry is not the series'."""
    arr = sitk.GetArrayFromImage(volume)  # (z, y, x): y = rows, x = columns
    d = np.asarray(volume.GetDirection(), float).reshape(3, 3)
    rows, cols = int(ds[0].Rows), int(ds[0].Columns)
    out = np.zeros((len(_frames(ds)), rows, cols), arr.dtype)
    fix = ("The mask must be in the source series' geometry: give the series the NIfTI was converted from "
           "(--dicom-reference), or predict from the DICOM series itself.")
    if arr.shape[1:] != (rows, cols):
        raise _fail(case_id, f"the mask is {arr.shape[2]}x{arr.shape[1]} pixels per slice, the source series "
                    f"{cols}x{rows}", fix)
    for k, (ipp, iop) in enumerate(_frames(ds)):
        if np.abs(d[:, 0] - iop[:3]).max() > DIRECTION_TOL or np.abs(d[:, 1] - iop[3:]).max() > DIRECTION_TOL:
            raise _fail(case_id, f"source frame {k + 1} has orientation {list(np.round(iop, 4))}, the mask "
                        f"{list(np.round(d[:, :2].T.ravel(), 4))}", fix)
        idx = np.asarray(volume.TransformPhysicalPointToContinuousIndex([float(v) for v in ipp]))
        z = int(round(idx[2]))
        err = np.abs(idx - [0, 0, z]) * np.asarray(volume.GetSpacing())
        if err.max() > POSITION_TOL_MM or not 0 <= z < arr.shape[0]:
            raise _fail(case_id, f"source frame {k + 1} at {list(np.round(ipp, 3))} mm is no slice of the mask "
                        f"(nearest index {np.round(idx, 3).tolist()})", fix)
        out[k] = arr[z]
    return out


def segment_descriptions(roles: LabelRoles) -> tuple[list[hd.seg.SegmentDescription], list[tuple[int, ...]]]:
    """One segment per non-background label (in label-id order) and the label ids each segment covers."""
    algo = hd.AlgorithmIdentificationSequence(name="NeoNet NeoSeg (nnU-Net)", version=__version__,
                                              family=codes.DCM.ArtificialIntelligence)
    descs, ids = [], []
    named = sorted(((n, v) for n, v in roles.labels.items() if any(i != 0 for i in v)), key=lambda t: min(t[1]))
    for number, (name, label_ids) in enumerate(named, start=1):
        tumour = name in roles.tumor_names
        ptype = _TYPE_BY_NAME.get(name.lower(), codes.SCT.Neoplasm if tumour else codes.SCT.Tissue)
        descs.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=name[:64],
            segmented_property_category=MORPH_ALTERED if tumour else codes.SCT.AnatomicalStructure,
            segmented_property_type=ptype, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algo, tracking_uid=generate_uid(),
            tracking_id=f"label {','.join(str(i) for i in label_ids)}: {name}"[:64]))
        ids.append(tuple(label_ids))
    return descs, ids


def write_seg(mask: sitk.Image, ds: list[pydicom.Dataset], roles: LabelRoles, target: Path, case_id: str,
              model_sha256: str) -> hd.seg.Segmentation:
    """The SEG of ``mask`` (dataset label ids, source geometry) over the source series ``ds``."""
    frames = frames_from_volume(mask, ds, case_id)
    descs, ids = segment_descriptions(roles)
    pixels = np.stack([np.isin(frames, i) for i in ids], axis=-1).astype(np.uint8)
    seg = hd.seg.Segmentation(
        source_images=ds, pixel_array=pixels, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descs, series_instance_uid=generate_uid(), series_number=SEG_SERIES_NUMBER,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer=MANUFACTURER,
        manufacturer_model_name=f"NeoNet model {model_sha256[:16]}", software_versions=__version__,
        device_serial_number=model_sha256[:16], series_description=f"NeoNet segmentation ({DISCLAIMER})"[:64],
        content_description="NeoSeg liver and tumour", content_label="NEONET_SEG", omit_empty_frames=False)
    with atomic_path(target, suffix=".dcm") as tmp:
        seg.save_as(str(tmp))
    return seg


def device_uid(model_sha256: str) -> str:
    """A UID that stays the same for the same model (derived from its content hash)."""
    return generate_uid(entropy_srcs=["neonet_toolkit device", model_sha256])


def write_sr(record: dict, seg: hd.seg.Segmentation, ds: list[pydicom.Dataset], roles: LabelRoles, target: Path,
             model_sha256: str) -> hd.sr.Comprehensive3DSR:
    """The TID 1500 report of a case record (``cases/CASE.json``) referencing the SEG's tumour segment."""
    algo = hd.sr.AlgorithmIdentification(name="NeoNet toolkit PNI", version=__version__,
                                         parameters=[f"model_sha256={model_sha256}"])
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=device_uid(model_sha256), name="NeoNet toolkit", manufacturer_name=MANUFACTURER,
            model_name=f"model {model_sha256[:16]}"))
    context = hd.sr.ObservationContext(observer_person_context=None, observer_device_context=observer)
    evals = []
    measurements = []
    if record.get("probability") is not None:
        measurements += [
            hd.sr.Measurement(name=PNI_PROBABILITY, value=float(record["probability"]), unit=codes.UCUM.NoUnits,
                              algorithm_id=algo),
            hd.sr.Measurement(name=PNI_THRESHOLD, value=float(record["threshold"]), unit=codes.UCUM.NoUnits,
                              algorithm_id=algo)]
        evals.append(hd.sr.QualitativeEvaluation(
            PNI_DECISION, codes.SCT.Present if int(record["decision"]) == 1 else codes.SCT.Absent))
    else:
        for flag in record.get("withheld_because") or ["no_probability"]:
            evals.append(hd.sr.QualitativeEvaluation(PNI_WITHHELD, hd.sr.CodedConcept(flag[:16], SCHEME, flag)))
    for flag in record.get("qc_flags", []):
        evals.append(hd.sr.QualitativeEvaluation(QC_FLAG, hd.sr.CodedConcept(flag[:16], SCHEME, flag)))
    tumour_numbers = [d.segment_number for d in seg.SegmentSequence if d.SegmentLabel in roles.tumor_names]
    groups = []
    if record.get("tumor_voxels", 0) > 0 and tumour_numbers:
        volume = hd.sr.Measurement(name=codes.SCT.Volume, value=float(record["tumor_volume_ml"]),
                                   unit=hd.sr.CodedConcept("ml", "UCUM", "milliliter"), algorithm_id=algo)
        groups.append(hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier="tumour"),
            referenced_segment=hd.sr.ReferencedSegment(
                sop_class_uid=seg.SOPClassUID, sop_instance_uid=seg.SOPInstanceUID,
                segment_number=int(tumour_numbers[0]),
                source_series=hd.sr.SourceSeriesForSegmentation(str(ds[0].SeriesInstanceUID))),
            finding_type=codes.SCT.Neoplasm, algorithm_id=algo, measurements=[volume, *measurements],
            qualitative_evaluations=evals))
    else:  # no tumour (or no tumour segment): the case-level answer, without a region
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier="case"),
            algorithm_id=algo, measurements=measurements or None, qualitative_evaluations=evals))
    report = hd.sr.MeasurementReport(observation_context=context, procedure_reported=codes.LN.MRIUnspecifiedBodyRegion,
                                     imaging_measurements=groups)
    sr = hd.sr.Comprehensive3DSR(
        evidence=[*ds, seg], content=report, series_instance_uid=generate_uid(), series_number=SR_SERIES_NUMBER,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer=MANUFACTURER,
        series_description=f"NeoNet PNI ({DISCLAIMER})"[:64], is_complete=True, is_final=False,
        is_verified=False)
    with atomic_path(target, suffix=".dcm") as tmp:
        sr.save_as(str(tmp))
    return sr


def write_dicom_results(case_id: str, source_files: Sequence[str | Path], mask_path: Path, record: dict,
                        roles: LabelRoles, folder: Path, model_sha256: str) -> dict[str, Path]:
    """SEG and SR of one case into ``folder`` (``CASE_seg.dcm``, ``CASE_sr.dcm``)."""
    ds = read_series(source_files, case_id)
    mask = sitk.ReadImage(str(mask_path))
    folder.mkdir(parents=True, exist_ok=True)
    seg = write_seg(mask, ds, roles, folder / f"{case_id}_seg.dcm", case_id, model_sha256)
    write_sr(record, seg, ds, roles, folder / f"{case_id}_sr.dcm", model_sha256)
    return {"seg": folder / f"{case_id}_seg.dcm", "sr": folder / f"{case_id}_sr.dcm"}


def seg_label_frames(seg_path: str | Path, ds: list[pydicom.Dataset], case_id: str = "") -> np.ndarray:
    """A SEG written by :func:`write_seg` as label ids per source frame, (frames, rows, columns) in the order of
    :func:`read_series`'s ``ds``: each segment's pixels get the label id its ``TrackingID`` names."""
    seg = hd.seg.segread(str(seg_path))
    numbers = [int(d.SegmentNumber) for d in seg.SegmentSequence]
    label_of = {}
    for d in seg.SegmentSequence:
        m = _TRACKING_ID.match(str(getattr(d, "TrackingID", "")))
        if m is None:
            raise _fail(case_id or str(seg_path), f"{seg_path} segment {d.SegmentNumber} has no NeoNet label id "
                        f"(TrackingID {getattr(d, 'TrackingID', None)!r})",
                        "Only SEGs written by neonet_predict can be read back.")
        label_of[int(d.SegmentNumber)] = int(m.group(1).split(",")[0])
    if len(ds) == 1 and "PerFrameFunctionalGroupsSequence" in ds[0]:
        n = len(ds[0].PerFrameFunctionalGroupsSequence)
        pixels = seg.get_pixels_by_source_frame(
            source_sop_instance_uid=str(ds[0].SOPInstanceUID), source_frame_numbers=list(range(1, n + 1)),
            segment_numbers=numbers, assert_missing_frames_are_empty=True)
    else:
        pixels = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=[str(d.SOPInstanceUID) for d in ds], segment_numbers=numbers,
            assert_missing_frames_are_empty=True)
    frames = np.zeros(pixels.shape[:3], np.uint8)
    for j, number in enumerate(numbers):
        frames[pixels[..., j] > 0] = label_of[number]
    return frames


def seg_label_names(seg_path: str | Path) -> dict[int, str]:
    """{label id: segment label} of a SEG written by :func:`write_seg`."""
    seg = pydicom.dcmread(str(seg_path), stop_before_pixels=True)
    out = {}
    for d in seg.SegmentSequence:
        m = _TRACKING_ID.match(str(getattr(d, "TrackingID", "")))
        if m is not None:
            out[int(m.group(1).split(",")[0])] = str(d.SegmentLabel)
    return out


def source_pixels(ds: list[pydicom.Dataset]) -> np.ndarray:
    """The source frames' stored values after the modality rescale, (frames, rows, columns) float32."""
    if len(ds) == 1 and int(getattr(ds[0], "NumberOfFrames", 1) or 1) > 1:
        arr = ds[0].pixel_array.astype(np.float32)
        fg = ds[0].SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in ds[0] else None
        pvt = fg.PixelValueTransformationSequence[0] if fg is not None and \
            "PixelValueTransformationSequence" in fg else ds[0]
        return arr * float(getattr(pvt, "RescaleSlope", 1) or 1) + float(getattr(pvt, "RescaleIntercept", 0) or 0)
    return np.stack([d.pixel_array.astype(np.float32) * float(getattr(d, "RescaleSlope", 1) or 1)
                     + float(getattr(d, "RescaleIntercept", 0) or 0) for d in ds])


def read_seg(seg_path: str | Path, source_files: Sequence[str | Path], reference: sitk.Image,
             case_id: str = "") -> sitk.Image:
    """A SEG written by :func:`write_seg` as a label volume on ``reference``'s grid (the source series'
    geometry, e.g. the mask ``neonet_predict`` wrote): the inverse of :func:`frames_from_volume`."""
    ds = read_series(source_files, case_id or str(seg_path))
    frames = seg_label_frames(seg_path, ds, case_id)
    out = np.zeros(sitk.GetArrayViewFromImage(reference).shape, np.uint8)
    for k, (ipp, _) in enumerate(_frames(ds)):
        z = int(round(reference.TransformPhysicalPointToContinuousIndex([float(v) for v in ipp])[2]))
        out[z] = frames[k]
    img = sitk.GetImageFromArray(out)
    img.CopyInformation(reference)
    return img


def _items(seq):
    for item in seq:
        yield item
        if "ContentSequence" in item:
            yield from _items(item.ContentSequence)


def read_sr(sr_path: str | Path) -> dict:
    """What a NeoNet SR says, read back with pydicom from the content tree: probability, threshold, decision
    (1/0/None), QC flags, withheld reasons, tumour volume (ml) and the SEG segment it references, device UID,
    algorithm version and parameters."""
    sr = pydicom.dcmread(str(sr_path))
    out = {"probability": None, "threshold": None, "decision": None, "qc_flags": [], "withheld_because": [],
           "tumor_volume_ml": None, "referenced_segment": None, "device_uid": None, "algorithm_version": None, "algorithm_parameters": [],
           "series_description": str(sr.SeriesDescription)}
    for it in _items(sr.ContentSequence):
        name = it.ConceptNameCodeSequence[0] if "ConceptNameCodeSequence" in it else None
        if name is None:
            continue
        key = (str(name.CodingSchemeDesignator), str(name.CodeValue))
        if it.ValueType == "NUM":
            value = float(it.MeasuredValueSequence[0].NumericValue)
            if key == (SCHEME, PNI_PROBABILITY.value):
                out["probability"] = value
            elif key == (SCHEME, PNI_THRESHOLD.value):
                out["threshold"] = value
            elif key == ("SCT", codes.SCT.Volume.value):
                out["tumor_volume_ml"] = value
        elif it.ValueType == "CODE":
            code = it.ConceptCodeSequence[0]
            if key == (SCHEME, PNI_DECISION.value):
                out["decision"] = int(str(code.CodeValue) == codes.SCT.Present.value)
            elif key == (SCHEME, QC_FLAG.value):
                out["qc_flags"].append(str(code.CodeMeaning))
            elif key == (SCHEME, PNI_WITHHELD.value):
                out["withheld_because"].append(str(code.CodeMeaning))
        elif it.ValueType == "IMAGE" and key == ("DCM", "121191"):  # Referenced Segment
            ref = it.ReferencedSOPSequence[0]
            out["referenced_segment"] = {"sop_instance_uid": str(ref.ReferencedSOPInstanceUID),
                                         "segment_number": int(ref.ReferencedSegmentNumber)}
        elif it.ValueType == "UIDREF" and key == ("DCM", "121012"):  # Device Observer UID
            out["device_uid"] = str(it.UID)
        elif it.ValueType == "TEXT" and key == ("DCM", "111003"):  # Algorithm Version
            out["algorithm_version"] = str(it.TextValue)
        elif it.ValueType == "TEXT" and key == ("DCM", "111002"):  # Algorithm Parameters
            if str(it.TextValue) not in out["algorithm_parameters"]:
                out["algorithm_parameters"].append(str(it.TextValue))
    return out


def attach_dicom_sources(cases: list, reference: str | Path | None) -> None:
    """Give every case of a ``--dicom-out`` run its source series (``case.extra['dicom_source_files']``): a DICOM
    input is its own source; a NIfTI case needs ``reference/<case_id>/`` holding the one series it was converted
    from (``case.extra['dicom_reference_files']``, part of the case's input hash). Refuses before any work."""
    missing, problems = [], []
    for c in cases:
        if c.source == "dicom":
            c.extra["dicom_source_files"] = [Path(f) for f in c.extra.get("source_files") or c.files]
            continue
        if reference is None:
            missing.append(c.case_id)
            continue
        folder = Path(reference) / c.case_id
        ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)) if folder.is_dir() else ()
        if len(ids) != 1:
            problems.append(f"case {c.case_id!r}: {folder} " + ("does not exist" if not folder.is_dir() else
                                                                 f"holds {len(ids)} DICOM series, not one"))
            continue
        files = [Path(f) for f in sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), ids[0])]
        c.extra["dicom_source_files"] = c.extra["dicom_reference_files"] = files
    if missing:
        raise DatasetError(
            f"--dicom-out writes DICOM that references each case's source series, and {len(missing)} case(s) are "
            f"NIfTI without one: {missing[:8]}{' ...' if len(missing) > 8 else ''}. Give --dicom-reference FOLDER "
            "with FOLDER/<case_id>/ holding the series each NIfTI was converted from, or predict from the DICOM "
            "series themselves. Nothing was written.")
    if problems:
        raise DatasetError("--dicom-reference: " + "; ".join(problems[:8]) + ". Put exactly one series per case "
                           "folder (named by case id). Nothing was written.")
