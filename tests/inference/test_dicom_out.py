"""``neonet_predict --dicom-out``: DICOM SEG + Comprehensive 3D SR (issue #24), checked by independent readers.

Unit tests build small MR series with the demo's writer (:mod:`neonet_toolkit.demo.dicom_series`, pydicom) and
check the SEG and SR with pydicom, highdicom and dcmtk's ``dcmdump``; the end-to-end test runs the real pipeline on a
DICOM series of the ``trained`` fixture's phantom and compares the SR with ``predictions.json``.
"""
from __future__ import annotations

import json
import shutil
import subprocess

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from e2e_models import DS, trained_env
from neonet_toolkit.dataset.errors import DatasetError
from neonet_toolkit.dataset.labels import resolve_label_roles
from neonet_toolkit.demo.dicom_series import write_dicom_series
from neonet_toolkit.inference import dicom_out as D
from neonet_toolkit.inference.inputs import InputCase

ROLES = resolve_label_roles({"labels": {"background": 0, "liver": 1, "vessel": 2, "tumor": 3}})
SHA = "c0ffee" * 10 + "abcd"


def _rotation(ax_deg: float, ay_deg: float) -> np.ndarray:
    a, b = np.deg2rad(ax_deg), np.deg2rad(ay_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    return rx @ ry


DIRECTIONS = {"axial": np.eye(3), "oblique": _rotation(20, 15),
              "sagittal": np.array([[0, 0, 1], [1, 0, 0], [0, 1, 0]], float)}


def _case(tmp_path, direction=np.eye(3), multiframe=False, empty=False, patient_id="PAT-1"):
    """A 20x18x7 MR series, its NIfTI conversion (SimpleITK) and a label mask on that grid."""
    rng = np.random.default_rng(0)
    img = sitk.GetImageFromArray((rng.random((7, 18, 20)) * 400 + 100).astype(np.float32))
    img.SetSpacing((0.8, 0.9, 2.5))
    img.SetOrigin((10.0, -5.0, 3.0))
    img.SetDirection(tuple(np.asarray(direction, float).ravel()))
    files = write_dicom_series(img, tmp_path / "src", patient_id=patient_id, multiframe=multiframe, uid_seed="t")
    if multiframe:
        ref = sitk.ReadImage(str(files[0]))
    else:
        r = sitk.ImageSeriesReader()
        r.SetFileNames(r.GetGDCMSeriesFileNames(str(tmp_path / "src")))
        ref = r.Execute()
    mask = np.zeros((7, 18, 20), np.uint8)
    if not empty:
        mask[1:6, 3:15, 2:18] = 1
        mask[2:5, 10:12, 3:17] = 2
        mask[2:4, 5:9, 5:9] = 3
    m = sitk.GetImageFromArray(mask)
    m.CopyInformation(ref)
    sitk.WriteImage(m, str(tmp_path / "mask.nii.gz"))
    return files, tmp_path / "mask.nii.gz", mask


def _record(mask, probability=0.7312345678901234):
    rec = {"case_id": "c1", "qc_flags": ["small_tumor"], "tumor_voxels": int((mask == 3).sum()),
           "tumor_volume_ml": float((mask == 3).sum() * 0.8 * 0.9 * 2.5 / 1000)}
    if probability is None:
        rec.update(probability=None, decision=None, withheld_because=["no_tumor"], qc_flags=["no_tumor"])
    else:
        rec.update(probability=probability, threshold=0.41, decision=int(probability >= 0.41))
    return rec


def _dcmdump_errors(path) -> list[str]:
    if shutil.which("dcmdump") is None:
        pytest.skip("dcmtk's dcmdump is not installed (README: Install, `apt-get install dcmtk`)")
    r = subprocess.run(["dcmdump", "-q", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return [ln for ln in (r.stdout + r.stderr).splitlines() if ln.startswith(("E:", "F:"))]


@pytest.mark.parametrize("kind", ["axial", "oblique", "sagittal", "multiframe"])
def test_seg_round_trip_is_voxel_identical_and_frame_aligned(tmp_path, kind):
    files, mask_path, mask = _case(tmp_path, DIRECTIONS.get(kind, np.eye(3)), multiframe=kind == "multiframe")
    out = D.write_dicom_results("c1", files, mask_path, _record(mask), ROLES, tmp_path / "dicom", SHA)
    seg = hd.seg.segread(str(out["seg"]))
    assert [d.SegmentLabel for d in seg.SegmentSequence] == ["liver", "vessel", "tumor"]
    assert seg.SegmentSequence[2].SegmentedPropertyTypeCodeSequence[0].CodeValue == "108369006"  # neoplasm
    assert seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == "10200004"  # liver
    src = [pydicom.dcmread(str(f)) for f in files]
    assert seg.PatientID == src[0].PatientID == "PAT-1"
    assert seg.StudyInstanceUID == src[0].StudyInstanceUID
    assert seg.FrameOfReferenceUID == src[0].FrameOfReferenceUID
    assert seg.SeriesInstanceUID != src[0].SeriesInstanceUID and seg.SOPInstanceUID not in {d.SOPInstanceUID for d in src}
    assert "RESEARCH USE ONLY" in seg.SeriesDescription
    # every SEG frame sits at the position of the source frame it was taken from
    if kind == "multiframe":
        src_pos = [np.asarray(fg.PlanePositionSequence[0].ImagePositionPatient, float)
                   for fg in src[0].PerFrameFunctionalGroupsSequence]
    else:
        src_pos = {d.SOPInstanceUID: np.asarray(d.ImagePositionPatient, float) for d in src}
    for fg in seg.PerFrameFunctionalGroupsSequence:
        pos = np.asarray(fg.PlanePositionSequence[0].ImagePositionPatient, float)
        ref = fg.DerivationImageSequence[0].SourceImageSequence[0]
        want = (src_pos[int(ref.ReferencedFrameNumber) - 1] if kind == "multiframe"
                else src_pos[ref.ReferencedSOPInstanceUID])
        np.testing.assert_allclose(pos, want, atol=1e-3)
    back = D.read_seg(out["seg"], files, sitk.ReadImage(str(mask_path)), "c1")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), mask)
    assert _dcmdump_errors(out["seg"]) == [] and _dcmdump_errors(out["sr"]) == []


def test_sr_carries_the_record_and_the_model_identity(tmp_path):
    files, mask_path, mask = _case(tmp_path)
    rec = _record(mask)
    out = D.write_dicom_results("c1", files, mask_path, rec, ROLES, tmp_path / "dicom", SHA)
    sr = pydicom.dcmread(str(out["sr"]))
    assert sr.SOPClassUID == pydicom.uid.Comprehensive3DSRStorage and "RESEARCH USE ONLY" in sr.SeriesDescription
    got = D.read_sr(out["sr"])
    assert got["probability"] == pytest.approx(rec["probability"], abs=1e-12)  # DS keeps 16 characters
    assert got["threshold"] == pytest.approx(0.41) and got["decision"] == 1
    assert got["tumor_volume_ml"] == pytest.approx(rec["tumor_volume_ml"], abs=1e-12)
    assert got["qc_flags"] == ["small_tumor"] and got["withheld_because"] == []
    assert got["device_uid"] == D.device_uid(SHA) != D.device_uid("0" * 64)
    assert f"model_sha256={SHA}" in got["algorithm_parameters"]
    # the tumour volume references the SEG's tumour segment
    seg = pydicom.dcmread(str(out["seg"]))
    assert got["referenced_segment"] == {"sop_instance_uid": seg.SOPInstanceUID, "segment_number": 3}
    assert seg.SegmentSequence[2].SegmentLabel == "tumor"
    report = hd.sr.srread(str(out["sr"]))  # highdicom parses it back as a TID 1500 report
    assert len(report.content.get_volumetric_roi_measurement_groups()) == 1
    # pydicom and highdicom both parse it; dcmtk too
    assert _dcmdump_errors(out["sr"]) == []


def test_no_tumour_case_gets_an_organ_seg_and_an_sr_that_says_why(tmp_path):
    files, mask_path, mask = _case(tmp_path)
    mask[mask == 3] = 1
    m = sitk.GetImageFromArray(mask)
    m.CopyInformation(sitk.ReadImage(str(mask_path)))
    sitk.WriteImage(m, str(mask_path))
    out = D.write_dicom_results("c1", files, mask_path, _record(mask, None), ROLES, tmp_path / "dicom", SHA)
    back = sitk.GetArrayFromImage(D.read_seg(out["seg"], files, m, "c1"))
    np.testing.assert_array_equal(back, mask)
    assert not (back == 3).any()
    got = D.read_sr(out["sr"])
    assert got["probability"] is None and got["decision"] is None and got["tumor_volume_ml"] is None
    assert got["withheld_because"] == ["no_tumor"] and got["qc_flags"] == ["no_tumor"]


def test_empty_mask_still_gives_a_readable_seg(tmp_path):
    files, mask_path, mask = _case(tmp_path, empty=True)
    out = D.write_dicom_results("c1", files, mask_path, _record(mask, None), ROLES, tmp_path / "dicom", SHA)
    back = D.read_seg(out["seg"], files, sitk.ReadImage(str(mask_path)), "c1")
    assert not sitk.GetArrayFromImage(back).any()
    assert _dcmdump_errors(out["seg"]) == []


def test_bad_sources_are_refused_by_name(tmp_path):
    files, mask_path, mask = _case(tmp_path)
    rec = _record(mask)
    for attr in ("PatientID", "StudyInstanceUID"):
        bad = tmp_path / f"no_{attr}"
        bad.mkdir()
        for f in files:
            d = pydicom.dcmread(str(f))
            delattr(d, attr)
            d.save_as(str(bad / f.name))
        with pytest.raises(DatasetError, match=f"case 'c1': the source series has no {attr}"):
            D.write_dicom_results("c1", sorted(bad.iterdir()), mask_path, rec, ROLES, tmp_path / "o", SHA)
    # a localizer (other orientation) mixed into the series
    loc = pydicom.dcmread(str(files[0]))
    loc.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
    loc.SOPInstanceUID = pydicom.uid.generate_uid()
    loc.save_as(str(tmp_path / "localizer.dcm"))
    with pytest.raises(DatasetError, match="localizer.dcm.*another orientation"):
        D.write_dicom_results("c1", [*files, tmp_path / "localizer.dcm"], mask_path, rec, ROLES, tmp_path / "o", SHA)
    # a mask that is not on the series' grid (shifted by 5 mm)
    m = sitk.ReadImage(str(mask_path))
    m.SetOrigin(tuple(np.asarray(m.GetOrigin()) + [0, 0, 5.0]))
    sitk.WriteImage(m, str(tmp_path / "shifted.nii.gz"))
    with pytest.raises(DatasetError, match="case 'c1': source frame 1 .* is no slice of the mask"):
        D.write_dicom_results("c1", files, tmp_path / "shifted.nii.gz", rec, ROLES, tmp_path / "o", SHA)
    assert not (tmp_path / "o" / "c1_seg.dcm").exists() and not (tmp_path / "o" / "c1_sr.dcm").exists()


def test_nifti_cases_need_a_reference_series(tmp_path):
    files, _, _ = _case(tmp_path)
    cases = [InputCase("c1", [tmp_path / "c1_0000.nii.gz"]), InputCase("c2", [tmp_path / "c2_0000.nii.gz"])]
    with pytest.raises(DatasetError, match=r"2 case\(s\) are NIfTI without one: \['c1', 'c2'\].*--dicom-reference"):
        D.attach_dicom_sources(cases, None)
    ref = tmp_path / "ref"
    shutil.copytree(tmp_path / "src", ref / "c1")
    with pytest.raises(DatasetError, match="case 'c2': .*ref/c2 does not exist"):
        D.attach_dicom_sources(cases, ref)
    shutil.copytree(tmp_path / "src", ref / "c2")
    D.attach_dicom_sources(cases, ref)
    assert [f.name for f in cases[0].extra["dicom_source_files"]] == [f.name for f in files]
    assert cases[1].extra["dicom_reference_files"] == cases[1].extra["dicom_source_files"]


def test_predict_writes_seg_and_sr_that_match_the_predictions(trained, tmp_path):
    """The real pipeline on a phantom case stored as a DICOM series: the SR's values are predictions.json's, the
    SEG read back is the NIfTI mask neonet_predict wrote, and a rerun recognises the DICOM files as its own."""
    from neonet_toolkit.inference.predict import predict

    raw = trained["raw"]
    cid = sorted(p.name[:-12] for p in (raw / "imagesTs").glob("*_0000.nii.gz"))[0]
    img = sitk.ReadImage(str(raw / "imagesTs" / f"{cid}_0000.nii.gz"))
    write_dicom_series(img, tmp_path / "dicom" / "patient_A", patient_id="PAT-A", uid_seed="e2e")
    out = tmp_path / "out"
    kw = dict(seg_model=trained["seg_model"], cls_run=trained["cls_run"], folds=[0], device="cpu", dicom_out=True)
    with trained_env(trained["root"]):
        res = predict(tmp_path / "dicom", out, DS, **kw)
        assert res["predicted"] == ["patient_A"]
        rec = json.loads((out / "predictions.json").read_text(encoding="utf-8"))["cases"][0]
        assert rec["dicom"] == {"seg": "dicom/patient_A_seg.dcm", "sr": "dicom/patient_A_sr.dcm"}
        got = D.read_sr(out / rec["dicom"]["sr"])
        if rec["probability"] is None:
            assert got["probability"] is None and got["withheld_because"] == rec["withheld_because"]
        else:
            assert got["probability"] == pytest.approx(rec["probability"], abs=1e-12)
            assert got["threshold"] == pytest.approx(rec["threshold"], abs=1e-12)
            assert got["decision"] == rec["decision"]
        assert got["qc_flags"] == rec["qc_flags"]
        mask = sitk.ReadImage(str(out / "patient_A.nii.gz"))
        back = D.read_seg(out / rec["dicom"]["seg"], sorted((tmp_path / "dicom" / "patient_A").iterdir()), mask)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(mask))
        assert pydicom.dcmread(str(out / rec["dicom"]["seg"])).PatientID == "PAT-A"
        again = predict(tmp_path / "dicom", out, DS, **kw)  # complete: nothing redone, nothing refused
        assert again["skipped"] == ["patient_A"] and again["predicted"] == []
        # NIfTI input without a reference series: refused before any work
        with pytest.raises(DatasetError, match="--dicom-reference"):
            predict(raw / "imagesTs", tmp_path / "out2", DS, **kw)
        assert not (tmp_path / "out2" / "cases").exists()
        # with the series it was converted from (FOLDER/<case_id>/): SEG and SR of the NIfTI's own prediction
        (tmp_path / "nifti").mkdir()
        shutil.copy(raw / "imagesTs" / f"{cid}_0000.nii.gz", tmp_path / "nifti")
        shutil.copytree(tmp_path / "dicom" / "patient_A", tmp_path / "ref" / cid)
        predict(tmp_path / "nifti", tmp_path / "out3", DS, dicom_reference=tmp_path / "ref", **kw)
        rec3 = json.loads((tmp_path / "out3" / "cases" / f"{cid}.json").read_text(encoding="utf-8"))
        got3 = D.read_sr(tmp_path / "out3" / rec3["dicom"]["sr"])
        assert got3["qc_flags"] == rec3["qc_flags"]
        assert (got3["probability"] is None) == (rec3["probability"] is None)
        if rec3["probability"] is not None:
            assert got3["probability"] == pytest.approx(rec3["probability"], abs=1e-12)
        mask3 = sitk.ReadImage(str(tmp_path / "out3" / f"{cid}.nii.gz"))
        back3 = D.read_seg(tmp_path / "out3" / rec3["dicom"]["seg"], sorted((tmp_path / "ref" / cid).iterdir()), mask3)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(back3), sitk.GetArrayFromImage(mask3))
