"""Input discovery (nnU-Net naming, DICOM series), sharding and QC helpers."""
import os

import numpy as np
import pytest
import SimpleITK as sitk

from neonet_toolkit.dataset.errors import DatasetError
from neonet_toolkit.inference.inputs import InputCase, discover_inputs, scan_inputs, shard
from neonet_toolkit.inference.qc import (
    QC_FLAGS, WITHHOLDING_FLAGS, crop_border_flag, fold_cls_disagreement, fold_seg_disagreement, image_kind_flags,
    intensity_flag, spacing_flag)


def _nifti(path, shape=(6, 8, 10), spacing=(1.0, 1.0, 2.0), value=1.0):
    img = sitk.GetImageFromArray(np.full(shape, value, np.float32))
    img.SetSpacing(spacing)
    sitk.WriteImage(img, str(path))
    return img


def write_dicom_series(volume_zyx: np.ndarray, folder, spacing=(0.8, 0.8, 2.5), origin=(10.0, -5.0, 3.0)):
    """Write a 3D int16 volume as a DICOM series (one file per slice) with SimpleITK."""
    folder.mkdir(parents=True, exist_ok=True)
    img = sitk.GetImageFromArray(volume_zyx.astype(np.int16))
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    series_uid = "1.2.826.0.1.3680043.2.1125.1.42"
    for k in range(img.GetDepth()):
        sl = img[:, :, k]
        for tag, val in (("0020|000e", series_uid), ("0020|000d", series_uid + ".1"), ("0008|0060", "MR"),
                         ("0020|0013", str(k + 1)), ("0028|0030", f"{spacing[1]}\\{spacing[0]}"),
                         ("0018|0050", str(spacing[2])), ("0020|0037", "1\\0\\0\\0\\1\\0"),
                         ("0020|0032", "\\".join(str(v) for v in img.TransformIndexToPhysicalPoint((0, 0, k))))):
            sl.SetMetaData(tag, val)
        writer.SetFileName(str(folder / f"slice_{k:03d}.dcm"))
        writer.Execute(sl)
    return img


def test_nnunet_naming(tmp_path):
    for c in ("b", "a"):
        _nifti(tmp_path / f"{c}_0000.nii.gz")
    cases = discover_inputs(tmp_path)
    assert [c.case_id for c in cases] == ["a", "b"]
    assert cases[0].files == [tmp_path / "a_0000.nii.gz"]


def test_wrong_channel_naming_and_missing_channel(tmp_path):
    _nifti(tmp_path / "scan.nii.gz")
    with pytest.raises(DatasetError, match="do not follow nnU-Net naming.*scan_0000.nii.gz"):
        discover_inputs(tmp_path)
    (tmp_path / "scan.nii.gz").unlink()
    _nifti(tmp_path / "p1_0001.nii.gz")
    with pytest.raises(DatasetError, match=r"case 'p1': found channel\(s\) \[1\], the model expects \[0\]"):
        discover_inputs(tmp_path)


def test_naming_advice_never_renames_onto_an_existing_file(tmp_path):
    """A predicted mask CASE.nii.gz next to its scan CASE_0000.nii.gz (e.g. an earlier run wrote into the
    input folder): the advice must not be to rename the mask onto the scan."""
    _nifti(tmp_path / "p1_0000.nii.gz")
    _nifti(tmp_path / "p1.nii.gz")
    with pytest.raises(DatasetError) as err:
        discover_inputs(tmp_path)
    msg = str(err.value)
    assert "p1_0000.nii.gz already exists" in msg and "move such files out of the input folder" in msg
    assert "rename" not in msg.lower() and "->" not in msg


def test_empty_and_unreadable(tmp_path):
    with pytest.raises(DatasetError, match="the folder is empty"):
        discover_inputs(tmp_path)
    (tmp_path / "bad_0000.nii.gz").write_bytes(b"not a nifti")
    # one unreadable case never stops the batch: it is returned with the reason, named (issue #11)
    (case,) = discover_inputs(tmp_path)
    assert case.case_id == "bad" and case.error.startswith("case 'bad': ") and "bad_0000.nii.gz" in case.error


def test_dicom_series_is_read_with_geometry(tmp_path):
    vol = (np.arange(5 * 12 * 10).reshape(5, 12, 10) % 300).astype(np.int16)
    src = tmp_path / "in" / "patient 7"
    ref = write_dicom_series(vol, src)
    cases = discover_inputs(tmp_path / "in", work_folder=tmp_path / "work")
    assert len(cases) == 1 and cases[0].case_id == "patient_7" and cases[0].source == "dicom"
    img = sitk.ReadImage(str(cases[0].files[0]))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(img), vol)
    np.testing.assert_allclose(img.GetSpacing(), ref.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(img.GetOrigin(), ref.GetOrigin(), atol=1e-3)


def test_shard_parts_partition_the_cases():
    cases = [InputCase(f"c{i}", []) for i in range(7)]
    parts = [shard(cases, 3, k) for k in range(3)]
    ids = sorted(c.case_id for p in parts for c in p)
    assert ids == sorted(c.case_id for c in cases)
    assert [len(p) for p in parts] == [3, 2, 2]
    with pytest.raises(ValueError, match="--part-id"):
        shard(cases, 2, 2)


def test_qc_helpers():
    assert spacing_flag((1.0, 1.0, 3.0), [(1.0, 1.0, 2.5), (0.9, 0.9, 3.0)]) is False
    assert spacing_flag((1.0, 1.0, 5.0), [(1.0, 1.0, 2.5), (0.9, 0.9, 3.0)]) is True
    img = np.full((4, 4, 4), 100.0)
    roi = np.ones((4, 4, 4), bool)
    fp = {"percentile_00_5": 10.0, "percentile_99_5": 90.0}
    assert intensity_flag(img, roi, fp) is True
    assert intensity_flag(img * 0.5, roi, fp) is False
    t = np.zeros((5, 5, 5), bool)
    t[2, 2, 2] = True
    assert crop_border_flag(t) is False
    t[0, 2, 2] = True
    assert crop_border_flag(t) is True
    a = np.zeros((4, 4, 4), bool)
    a[:2] = True
    b = np.zeros_like(a)
    b[2:] = True
    flag, d = fold_seg_disagreement([a, a.copy(), b])
    assert d == pytest.approx(1 / 3) and flag
    assert fold_cls_disagreement([0.1, 0.7]) and not fold_cls_disagreement([0.4, 0.6])


def test_spurious_tumour_components_are_relabelled_as_organ():
    from neonet_toolkit.dataset.labels import resolve_label_roles
    from neonet_toolkit.inference.segmenter import remove_spurious_tumor

    roles = resolve_label_roles({"labels": {"background": 0, "liver": 1, "vessel": 2, "tumor": 3}})
    seg = np.zeros((20, 20, 20), np.uint8)
    seg[2:18, 2:18, 2:18] = 1
    seg[4:10, 4:10, 4:10] = 3      # 216 voxels x 8 ul = 1.728 ml: kept
    seg[14:15, 14:16, 14:16] = 3   # 4 voxels = 0.032 ml < 0.2 ml: spurious
    removed = remove_spurious_tumor(seg, (2.0, 2.0, 2.0), roles, 1.0, 0.2)
    assert removed == 4
    assert (seg == 3).sum() == 216 and seg[14, 14, 14] == 1


def test_multiframe_dicom_is_read_as_one_3d_volume(tmp_path):
    vol = (np.arange(5 * 12 * 10).reshape(5, 12, 10) % 200).astype(np.uint16)
    img = sitk.GetImageFromArray(vol)
    img.SetSpacing((0.8, 0.8, 2.5))
    (tmp_path / "in" / "enhanced").mkdir(parents=True)
    sitk.WriteImage(img, str(tmp_path / "in" / "enhanced" / "volume.dcm"))  # one multi-frame file
    (case,) = discover_inputs(tmp_path / "in", work_folder=tmp_path / "work")
    out = sitk.ReadImage(str(case.files[0]))
    assert case.error is None and out.GetDimension() == 3
    np.testing.assert_array_equal(sitk.GetArrayFromImage(out), vol)
    np.testing.assert_allclose(out.GetSpacing()[:2], (0.8, 0.8), atol=1e-4)


@pytest.mark.parametrize("damage", ["truncate_2_bytes", "truncate_half", "empty", "removed"])
def test_damaged_dicom_slice_fails_its_case_by_name_and_keeps_the_others(tmp_path, damage):
    # GDCM leaves an unparsable slice out of the series and ITK stacks the rest with a console warning:
    # the volume silently lost a slice (issue #11). The case must fail by name; the other patient is read.
    vol = (np.arange(6 * 12 * 10).reshape(6, 12, 10) % 300 + 1).astype(np.int16)
    write_dicom_series(vol, tmp_path / "in" / "good")
    write_dicom_series(vol, tmp_path / "in" / "bad")
    victim = tmp_path / "in" / "bad" / "slice_003.dcm"
    data = victim.read_bytes()
    if damage == "removed":
        victim.unlink()
    else:
        victim.write_bytes({"truncate_2_bytes": data[:-2], "truncate_half": data[: len(data) // 2],
                            "empty": b""}[damage])
    cases = {c.case_id: c for c in discover_inputs(tmp_path / "in", work_folder=tmp_path / "work")}
    assert sorted(cases) == ["bad", "good"]
    assert cases["good"].error is None
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(cases["good"].files[0]))), vol)
    err = cases["bad"].error
    assert err and err.startswith("case 'bad': ")
    if damage == "removed":
        assert "uneven slice spacing" in err and "missing" in err and "5 mm" in err
    else:
        assert "slice_003.dcm" in err and "cannot be read" in err
    assert not cases["bad"].files[0].exists()  # nothing was converted from the damaged series


def test_patient_whose_only_dicom_file_is_unreadable_is_not_dropped(tmp_path):
    vol = (np.arange(5 * 12 * 10).reshape(5, 12, 10) % 200 + 1).astype(np.uint16)
    (tmp_path / "in" / "enhanced").mkdir(parents=True)
    sitk.WriteImage(sitk.GetImageFromArray(vol), str(tmp_path / "in" / "enhanced" / "volume.dcm"))
    write_dicom_series(vol.astype(np.int16), tmp_path / "in" / "other")
    f = tmp_path / "in" / "enhanced" / "volume.dcm"
    f.write_bytes(f.read_bytes()[:-100])  # a truncated multi-frame file: GDCM finds no series in the folder
    cases = {c.case_id: c for c in discover_inputs(tmp_path / "in", work_folder=tmp_path / "work")}
    assert sorted(cases) == ["enhanced", "other"]
    assert cases["other"].error is None
    assert cases["enhanced"].error.startswith("case 'enhanced': ") and "volume.dcm" in cases["enhanced"].error


@pytest.mark.parametrize("ending", [".mha", ".nrrd"])
def test_truncated_non_nifti_input_is_named(tmp_path, ending):
    # a header read alone passes these files; the full read fails, so the case gets its named error
    for c in ("a", "b"):
        img = sitk.GetImageFromArray(np.arange(6 * 8 * 10, dtype=np.float32).reshape(6, 8, 10))
        sitk.WriteImage(img, str(tmp_path / f"{c}_0000{ending}"), useCompression=True)
    f = tmp_path / f"b_0000{ending}"
    f.write_bytes(f.read_bytes()[: int(f.stat().st_size * 0.7)])
    cases = {c.case_id: c for c in discover_inputs(tmp_path, file_ending=ending)}
    assert cases["a"].error is None
    assert cases["b"].error.startswith("case 'b': ") and f"b_0000{ending} cannot be read in full" in cases["b"].error


def test_uncompressed_nifti_short_by_less_than_its_header_is_named(tmp_path):
    # the size check once took the data offset from a loaded image's header (always 0), so a .nii missing
    # fewer than 352 bytes passed and SimpleITK zero-filled the last voxels
    for c in ("a", "b"):
        _nifti(tmp_path / f"{c}_0000.nii", value=3.0)
    f = tmp_path / "b_0000.nii"
    f.write_bytes(f.read_bytes()[:-200])
    cases = {c.case_id: c for c in discover_inputs(tmp_path, file_ending=".nii")}
    assert cases["a"].error is None
    assert cases["b"].error.startswith("case 'b': ") and "b_0000.nii is truncated" in cases["b"].error


def test_damaged_cached_dicom_conversion_is_converted_again(tmp_path):
    vol = (np.arange(5 * 12 * 10).reshape(5, 12, 10) % 300 + 1).astype(np.int16)
    write_dicom_series(vol, tmp_path / "in" / "p1")
    (case,) = discover_inputs(tmp_path / "in", work_folder=tmp_path / "work")
    cached = case.files[0]
    cached.write_bytes(cached.read_bytes()[:-50])  # e.g. a disk that filled up after the first run
    (case,) = discover_inputs(tmp_path / "in", work_folder=tmp_path / "work")
    assert case.error is None
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(case.files[0]))), vol)


# --- issue 21 item 6: nothing dropped silently; mixed inputs; unique case ids -------------------------------

def test_nii_case_beside_niigz_cases_is_predicted(tmp_path):
    # c2_0000.nii was never predicted beside .nii.gz cases; nnU-Net's readers read both, so it is a case
    _nifti(tmp_path / "c1_0000.nii.gz")
    _nifti(tmp_path / "c2_0000.nii", value=2.0)
    scan = scan_inputs(tmp_path)
    assert [(c.case_id, c.files[0].name, c.error) for c in scan.cases] == [
        ("c1", "c1_0000.nii.gz", None), ("c2", "c2_0000.nii", None)]
    assert scan.unused == []


def test_same_channel_as_nii_and_niigz_is_refused_naming_both(tmp_path):
    _nifti(tmp_path / "c1_0000.nii.gz")
    _nifti(tmp_path / "c1_0000.nii")
    with pytest.raises(DatasetError, match=r"case 'c1': channel 0000 is given by 2 files.*c1_0000.nii.*keep one"):
        scan_inputs(tmp_path)


def test_case_in_another_image_format_fails_by_name(tmp_path):
    _nifti(tmp_path / "c1_0000.nii.gz")
    img = sitk.GetImageFromArray(np.ones((6, 8, 10), np.float32))
    sitk.WriteImage(img, str(tmp_path / "c3_0000.nrrd"))
    cases = {c.case_id: c for c in scan_inputs(tmp_path).cases}
    assert cases["c1"].error is None
    assert cases["c3"].error == ("case 'c3': not in this model's image format (.nii.gz or .nii): convert "
                                 "c3_0000.nrrd -> c3_0000.nii.gz (e.g. SimpleITK WriteImage(ReadImage(old), new)) "
                                 "and rerun.")


def test_dicom_folder_beside_nifti_cases_is_predicted_and_the_rest_is_listed(tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    _nifti(inp / "c1_0000.nii.gz")
    vol = (np.arange(5 * 12 * 10).reshape(5, 12, 10) % 300 + 1).astype(np.int16)
    write_dicom_series(vol, inp / "pat 7")
    (inp / "pat 7" / "notes.txt").write_text("referral", encoding="utf-8")
    (inp / "README.md").write_text("batch of May", encoding="utf-8")
    (inp / ".DS_Store").write_bytes(b"\0")
    (inp / ".work").mkdir()
    (inp / "labels").mkdir()
    _nifti(inp / "labels" / "c1.nii.gz")
    (inp / "empty").mkdir()
    scan = scan_inputs(inp, work_folder=tmp_path / "work")
    cases = {c.case_id: c for c in scan.cases}
    assert sorted(cases) == ["c1", "pat_7"] and all(c.error is None for c in scan.cases)
    assert cases["pat_7"].source == "dicom" and len(cases["pat_7"].extra["source_files"]) == 5
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(cases["pat_7"].files[0]))), vol)
    unused = scan.unused_dict()
    assert set(unused) == {".DS_Store", ".work", "README.md", "empty", "labels", "pat 7/notes.txt"}
    assert unused[".work"].startswith("hidden") and unused[".DS_Store"].startswith("hidden")
    assert unused["README.md"].startswith("not an input image")
    assert "sub-folders are not read" in unused["labels"] and "without a DICOM series (0 file(s))" in unused["empty"]
    assert unused["pat 7/notes.txt"].startswith("not part of a DICOM series")
    assert discover_inputs(inp, work_folder=tmp_path / "work")[1].case_id == "pat_7"  # the old API: the cases


@pytest.mark.parametrize("names", [("pat_1", "pat 1"), ("a/p1", "b/p1"), ("P1", "p1")])
def test_colliding_dicom_case_ids_stop_the_batch_before_any_work(tmp_path, names):
    vol = (np.arange(4 * 12 * 10).reshape(4, 12, 10) % 300 + 1).astype(np.int16)
    for n in names:
        write_dicom_series(vol, tmp_path / "in" / n)
    with pytest.raises(DatasetError) as err:
        scan_inputs(tmp_path / "in", work_folder=tmp_path / "work")
    msg = str(err.value)
    assert "would be given to 2 inputs" in msg and "Rename one of them" in msg
    assert all(f"DICOM folder {n!r}" in msg for n in names)
    assert not (tmp_path / "work").exists()  # stopped before converting anything


def test_nifti_and_dicom_case_ids_must_not_collide(tmp_path):
    (tmp_path / "in").mkdir()
    _nifti(tmp_path / "in" / "p1_0000.nii.gz")
    write_dicom_series((np.arange(4 * 12 * 10).reshape(4, 12, 10) % 300 + 1).astype(np.int16), tmp_path / "in" / "p1")
    with pytest.raises(DatasetError, match=r"case id 'p1' would be given to 2 inputs.*file p1_0000.nii.gz.*"
                                           r"DICOM folder 'p1'"):
        scan_inputs(tmp_path / "in", work_folder=tmp_path / "work")


def test_replaced_dicom_series_is_converted_again(tmp_path):
    # the cached conversion was returned for a replaced series (issue 21 item 3): the cache is keyed by the series'
    # file contents, even when the new files keep the old names, sizes and times
    vol = (np.arange(5 * 12 * 10).reshape(5, 12, 10) % 300 + 1).astype(np.int16)
    src = tmp_path / "in" / "p1"
    write_dicom_series(vol, src)
    (case,) = discover_inputs(tmp_path / "in", work_folder=tmp_path / "work")
    stat = {f.name: f.stat() for f in src.iterdir()}
    write_dicom_series(vol[:, ::-1].copy(), src)
    for f in src.iterdir():
        os.utime(f, ns=(stat[f.name].st_atime_ns, stat[f.name].st_mtime_ns))
    (case,) = discover_inputs(tmp_path / "in", work_folder=tmp_path / "work")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(case.files[0]))), vol[:, ::-1])


# --- issue 21 item 4a: prediction inputs get planning's NaN/Inf check -----------------------------------------

@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("ending", [".nii.gz", ".mha"])
def test_nonfinite_block_in_a_prediction_input_fails_the_case(tmp_path, bad, ending):
    # SimpleITK's NIfTI reader (nnU-Net's SimpleITKIO) reads NaN and Inf as 0: the case was predicted unflagged
    arr = np.random.default_rng(0).random((6, 8, 10)).astype(np.float32)
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(tmp_path / f"good_0000{ending}"))
    arr[1:3, 2:5, 2:5] = bad
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(tmp_path / f"bad_0000{ending}"))
    if ending == ".nii.gz":
        assert np.isfinite(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "bad_0000.nii.gz")))).all()
    cases = {c.case_id: c for c in discover_inputs(tmp_path, file_ending=ending)}
    assert cases["good"].error is None
    assert cases["bad"].error == (f"case 'bad': image bad_0000{ending} has 18 NaN/Inf voxel(s) (of 480); replace "
                                  "them (e.g. with 0) or re-export the image from its source.")


def test_prediction_input_with_spacing_in_metres_fails_the_case(tmp_path):
    _nifti(tmp_path / "mm_0000.nii.gz", spacing=(1.5, 1.5, 3.0))
    _nifti(tmp_path / "m_0000.nii.gz", spacing=(0.0015, 0.0015, 0.003))
    cases = {c.case_id: c for c in discover_inputs(tmp_path)}
    assert cases["mm"].error is None
    err = cases["m"].error
    assert err.startswith("case 'm': m_0000.nii.gz has voxel spacing [0.0015, 0.0015, 0.003]") and \
        "looks like metres" in err and "[1.5, 1.5, 3.0]" in err and "x 1000" in err


# --- issue 21 item 4b: "this image is not an MRI of the kind trained on" -------------------------------------

@pytest.fixture(scope="module")
def phantom_fingerprint():
    """Four phantom cases' pooled foreground mean/std (what nnU-Net's fingerprint records) and a fifth case."""
    from neonet_toolkit.demo.phantom import make_case

    rng = np.random.default_rng(5)
    cases = [make_case(rng, (32, 32, 12), (1.5, 1.5, 3.0), positive=bool(k % 2), with_vessel=True)
             for k in range(5)]
    fg = np.concatenate([img[m["liver"] | m["tumor"] | m["vessel"]] for img, m in cases[:4]])
    img, m = cases[4]
    return {"mean": float(fg.mean()), "std": float(fg.std())}, img, m["liver"] | m["tumor"]


def test_image_kind_flags(phantom_fingerprint):
    fp, img, roi = phantom_fingerprint
    assert image_kind_flags(img, roi, fp) == []                       # a normal phantom image
    assert image_kind_flags(img * 1e-3, roi, fp) == []                # scaling is not a reason (z-score per image)
    assert image_kind_flags(np.zeros_like(img), roi, fp) == ["constant_image"]          # all zero
    assert image_kind_flags(np.full_like(img, 812.5), roi, fp) == ["constant_image"]    # constant
    assert image_kind_flags(np.full_like(img, 812.5), roi, None) == ["constant_image"]   # without a fingerprint
    noisy = 800 + np.random.default_rng(1).normal(0, 1.5, img.shape).astype(np.float32)  # near-constant
    assert image_kind_flags(noisy, roi, fp) == ["constant_image"]
    assert image_kind_flags(noisy, roi, None) == []  # without a fingerprint only exact constancy is judged
    flat_organ = img.copy()
    flat_organ[roi] = 640.0                                            # zero variance inside the organ
    assert image_kind_flags(flat_organ, roi, fp) == ["image_not_trained_kind"]
    near_flat = img.copy()
    near_flat[roi] = 640.0 + np.random.default_rng(2).normal(0, 1.0, int(roi.sum()))  # near-zero vs training
    assert image_kind_flags(near_flat, roi, fp) == ["image_not_trained_kind"]
    assert image_kind_flags(near_flat, np.zeros_like(roi), fp) == []  # no organ: nothing to judge inside it
    assert {"constant_image", "image_not_trained_kind", "no_tumor"} <= WITHHOLDING_FLAGS <= set(QC_FLAGS)


def test_case_qc_flags_alone(phantom_fingerprint):
    """The predictor's QC step works without any model: each flag from hand-made inputs, in the record's order."""
    from neonet_toolkit.experiment_planning.plans import POSTPROCESSING
    from neonet_toolkit.inference.qc import CaseQC
    from neonet_toolkit.preprocessing.tlcr import TLCRInfo

    fp, img, roi = phantom_fingerprint
    vals = img[roi]
    fp = {**fp, "percentile_00_5": float(vals.min()), "percentile_99_5": float(vals.max())}
    fingerprint = {"spacings": [[2.0, 2.0, 2.0], [2.0, 2.0, 2.5]],
                   "foreground_intensity_properties_per_channel": {"0": fp}}
    q = CaseQC(fingerprint, dict(POSTPROCESSING), image_channel=0, min_train_tumor=100)
    t = np.zeros((4, 4, 4), bool)
    t[1:3, 1:3, 1:3] = True
    flags, dice_ = q.image_flags(img[None], roi, [2.0, 2.0, 2.0], [t, t.copy()])
    assert flags == [] and dice_ == 1.0
    flags, dice_ = q.image_flags(img[None], roi, [5.0, 2.0, 2.0], [t, ~t])   # spacing x2.5; disjoint fold tumours
    assert flags == ["spacing_out_of_range", "fold_disagreement_seg"] and dice_ == 0.0
    flags, _ = q.image_flags(10 * img[None], roi, [2.0, 2.0, 2.0], [t])   # another scaling: median out of range
    assert flags == ["intensity_out_of_range"]
    flags, _ = q.image_flags(np.full_like(img, 812.5)[None], roi, [2.0, 2.0, 2.0], [t])
    assert "constant_image" in flags
    patch = np.zeros((8, 8, 8), bool)
    patch[0, 3:5, 3:5] = True   # on the crop's first face, 4 voxels < 100
    info = TLCRInfo((8, 8, 8), (0, 0, 0), (4, 4, 4), (0, 3, 3), (1, 5, 5), 4, 4, False, False, False)
    assert q.crop_flags(info, patch) == ["tumor_at_crop_border", "small_tumor"]
    assert q.classifier_flags([0.1, 0.9], ["pred", "pred"]) == ["fold_disagreement_cls"]
    assert q.classifier_flags([0.4, 0.5], ["gt", "pred"]) == ["gt_trained_classifier_on_predicted_mask"]
