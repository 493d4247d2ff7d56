"""Synthetic DICOM source series: geometry and intensities survive SimpleITK/GDCM, pydicom, dcmdump and
neonet_predict's input scan; the multi-frame form; the neonet_make_demo_dataset --dicom flag."""
import shutil
import subprocess

import highdicom
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from scipy.spatial.transform import Rotation

from neonet_toolkit.demo.dicom_series import (
    dataset_test_cases_to_dicom,
    phantom_case_to_dicom,
    pixel_encoding,
    read_slice_positions,
    write_dicom_series,
)
from neonet_toolkit.inference.inputs import scan_inputs
from neonet_toolkit.run.make_demo_dataset import main as make_demo_main

SIZE_XYZ = (20, 18, 7)
SPACING = (0.8, 0.9, 2.5)
ORIGIN = (12.5, -40.25, 33.3)
OBLIQUE = Rotation.from_euler("xy", [20, 20], degrees=True).as_matrix()  # ~20 degrees about two axes
# columns = directions of the x, y, z index axes in LPS; both right-handed (det +1)
SAGITTAL = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # rows along P, columns along S, slices L
CORONAL = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])  # rows along L, columns along S, slices A
DIRECTIONS = {"axial": np.eye(3), "oblique": OBLIQUE, "sagittal": SAGITTAL, "coronal": CORONAL}


def _image(direction=None, seed=0, scale=800.0):
    rng = np.random.default_rng(seed)
    arr = (rng.random(SIZE_XYZ[::-1]) * scale - 0.1 * scale).astype(np.float32)  # negative values included
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(SPACING)
    img.SetOrigin(ORIGIN)
    if direction is not None:
        img.SetDirection(tuple(float(v) for v in np.asarray(direction).ravel()))
    return img


def _slope(files):
    return float(pydicom.dcmread(str(files[0]), stop_before_pixels=True).RescaleSlope)


def _read_series(folder):
    reader = sitk.ImageSeriesReader()
    names = reader.GetGDCMSeriesFileNames(str(folder))
    reader.SetFileNames(names)
    return reader.Execute(), names


def assert_same_geometry(a, b):
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=1e-6)


@pytest.mark.parametrize("kind", list(DIRECTIONS))
def test_round_trip_through_simpleitk_series_reader(tmp_path, kind):
    src = _image(DIRECTIONS[kind])
    files = write_dicom_series(src, tmp_path, patient_id="case_001", uid_seed="t1")
    assert [f.name for f in files] == [f"IM_{k:05d}.dcm" for k in range(1, SIZE_XYZ[2] + 1)]
    out, names = _read_series(tmp_path)
    assert len(names) == SIZE_XYZ[2]
    assert_same_geometry(out, src)
    slope = _slope(files)
    assert 0 < slope < 800 * 1.1 / 60000  # uint16 codes span the range: the quantisation step is small
    err = np.abs(sitk.GetArrayFromImage(out).astype(np.float64) - sitk.GetArrayFromImage(src))
    assert err.max() <= slope / 2 * (1 + 1e-6)
    assert err.max() > slope / 10  # it is quantised (the test would notice a lossless or a wrong encoding)


def test_integer_image_is_stored_exactly(tmp_path):
    arr = np.arange(np.prod(SIZE_XYZ[::-1]), dtype=np.int16).reshape(SIZE_XYZ[::-1]) - 1000
    src = sitk.GetImageFromArray(arr)
    src.SetSpacing(SPACING)
    files = write_dicom_series(src, tmp_path, patient_id="p")
    ds = pydicom.dcmread(str(files[0]))
    assert (ds.PixelRepresentation, float(ds.RescaleSlope), float(ds.RescaleIntercept)) == (1, 1.0, 0.0)
    out, _ = _read_series(tmp_path)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(out), arr)


@pytest.mark.parametrize("values", [np.array([0.0, 1e-3]), np.array([-5e6, 7e6]), np.array([1234.5678, 1234.5678]),
                                    np.array([1e5, 1e5 + 0.37])])
def test_pixel_encoding_within_half_slope(values):
    a = np.linspace(values.min(), values.max(), 1001)
    stored, slope, intercept, rep = pixel_encoding(a)
    assert stored.dtype == np.uint16 and rep == 0
    # slope and intercept are what a reader parses: they fit a DICOM decimal string
    assert len(pydicom.valuerep.format_number_as_ds(slope)) <= 16
    assert np.abs(stored * slope + intercept - a).max() <= slope / 2 * (1 + 1e-6) + 1e-9 * np.abs(a).max()


def test_pydicom_attributes_and_uids(tmp_path):
    src = _image(OBLIQUE)
    files = write_dicom_series(src, tmp_path, patient_id="case_007", patient_name="Phantom^Seven",
                               study_instance_uid="1.2.826.0.1.3680043.8.498.1", series_number=3)
    dsets = [pydicom.dcmread(str(f)) for f in files]
    d = np.asarray(src.GetDirection()).reshape(3, 3)
    for k, ds in enumerate(dsets):
        assert ds.pixel_array.shape == SIZE_XYZ[1::-1]  # every file's pixel data decodes
        np.testing.assert_allclose([float(v) for v in ds.ImagePositionPatient],
                                   src.TransformIndexToPhysicalPoint((0, 0, k)), atol=1e-6)
        np.testing.assert_allclose([float(v) for v in ds.ImageOrientationPatient],
                                   np.concatenate([d[:, 0], d[:, 1]]), atol=1e-9)
        np.testing.assert_allclose([float(v) for v in ds.PixelSpacing], (SPACING[1], SPACING[0]))
        assert (ds.Rows, ds.Columns, ds.InstanceNumber) == (SIZE_XYZ[1], SIZE_XYZ[0], k + 1)
        assert ds.PatientID == "case_007" and str(ds.PatientName) == "Phantom^Seven"
        assert ds.StudyInstanceUID == "1.2.826.0.1.3680043.8.498.1" and ds.SeriesNumber == 3
        assert ds.Modality == "MR" and ds.Manufacturer == "NeoNet toolkit (synthetic phantom)"
        assert ds.SOPClassUID == pydicom.uid.MRImageStorage
        for kw in ("PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "AccessionNumber", "StudyID",
                   "ReferringPhysicianName"):
            assert kw in ds, kw
    assert len({ds.SeriesInstanceUID for ds in dsets}) == 1
    assert len({ds.FrameOfReferenceUID for ds in dsets}) == 1
    assert len({ds.SOPInstanceUID for ds in dsets}) == len(dsets)
    np.testing.assert_allclose(read_slice_positions(files)[-1], src.TransformIndexToPhysicalPoint((0, 0, 6)),
                               atol=1e-6)


def test_uids_deterministic_with_seed_random_without(tmp_path):
    src = _image()

    def uids(name, seed):
        ds = pydicom.dcmread(str(write_dicom_series(src, tmp_path / name, patient_id="p", uid_seed=seed)[0]))
        return ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID, ds.SOPInstanceUID

    a, b, c = uids("a", "s1"), uids("b", "s1"), uids("c", "s2")
    assert a == b
    assert not set(a) & set(c)
    r1, r2 = uids("r1", None), uids("r2", None)
    assert not set(r1) & set(r2)
    assert all(pydicom.uid.UID(u).is_valid for u in a + r1)


def test_dcmdump_reports_no_errors(tmp_path):
    if shutil.which("dcmdump") is None:
        pytest.skip("dcmdump (dcmtk) is not installed")
    files = write_dicom_series(_image(OBLIQUE), tmp_path / "single", patient_id="p", uid_seed="d")
    multi = write_dicom_series(_image(OBLIQUE), tmp_path / "multi", patient_id="p", uid_seed="d", multiframe=True)
    for f in (files[0], files[-1], multi[0]):
        r = subprocess.run(["dcmdump", str(f)], capture_output=True, text=True, timeout=60, check=False)
        assert r.returncode == 0, r.stderr
        errors = [ln for ln in (r.stdout + r.stderr).splitlines() if ln.startswith("E:")]
        assert not errors, errors
        assert "MR" in r.stdout and "NeoNet toolkit (synthetic phantom)" in r.stdout


@pytest.mark.parametrize("kind", ["axial", "oblique"])
def test_multiframe_legacy_converted_enhanced(tmp_path, kind):
    src = _image(DIRECTIONS[kind])
    single = write_dicom_series(src, tmp_path / "single", patient_id="p", uid_seed="m")
    files = write_dicom_series(src, tmp_path / "multi", patient_id="p", uid_seed="m", multiframe=True)
    assert [f.name for f in files] == ["IM_00001.dcm"] and len(list((tmp_path / "multi").iterdir())) == 1
    ds = pydicom.dcmread(str(files[0]))
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.4.4"  # Legacy Converted Enhanced MR Image Storage
    assert int(ds.NumberOfFrames) == SIZE_XYZ[2] and ds.pixel_array.shape == SIZE_XYZ[::-1]
    hd = highdicom.imread(str(files[0]))
    assert hd.number_of_frames == SIZE_XYZ[2]
    frame_pos = np.array([[float(v) for v in f.PlanePositionSequence[0].ImagePositionPatient]
                          for f in ds.PerFrameFunctionalGroupsSequence])
    slice_pos = np.array([src.TransformIndexToPhysicalPoint((0, 0, k)) for k in range(SIZE_XYZ[2])])
    # highdicom orders the frames by its dimension index: descending along row x column (frame 1 = last slice)
    np.testing.assert_allclose(frame_pos, slice_pos[::-1], atol=1e-6)
    np.testing.assert_allclose(read_slice_positions(single), slice_pos, atol=1e-6)
    # What SimpleITK (GDCM) reads from it: the same voxels in the same physical places, with the slice axis of
    # the file's frame order: origin = the last slice, third direction column negated, same size and spacing.
    out = sitk.ReadImage(str(files[0]))
    assert out.GetSize() == src.GetSize()
    np.testing.assert_allclose(out.GetSpacing(), SPACING, atol=1e-5)
    np.testing.assert_allclose(out.GetOrigin(), slice_pos[-1], atol=1e-4)
    d_src, d_out = (np.asarray(x.GetDirection()).reshape(3, 3) for x in (src, out))
    np.testing.assert_allclose(d_out[:, :2], d_src[:, :2], atol=1e-6)
    np.testing.assert_allclose(d_out[:, 2], -d_src[:, 2], atol=1e-6)
    err = np.abs(sitk.GetArrayFromImage(out)[::-1] - sitk.GetArrayFromImage(src))
    assert err.max() <= _slope(single) / 2 * (1 + 1e-6)
    # physically identical: resampled onto the source grid it is the source
    back = sitk.Resample(out, src, sitk.Transform(), sitk.sitkNearestNeighbor, 0.0, sitk.sitkFloat64)
    assert np.abs(sitk.GetArrayFromImage(back) - sitk.GetArrayFromImage(src)).max() <= _slope(single) / 2 * 1.000001


@pytest.mark.parametrize("kind", ["axial", "oblique", "coronal"])
def test_scan_inputs_reads_dicomts_case(tmp_path, kind):
    src = _image(DIRECTIONS[kind], seed=4)
    nifti = tmp_path / "src" / "pat_01_0000.nii.gz"
    nifti.parent.mkdir()
    sitk.WriteImage(src, str(nifti))
    files = phantom_case_to_dicom(nifti, tmp_path / "dicomTs" / "pat_01", "pat_01", uid_seed="scan")
    assert pydicom.dcmread(str(files[0]), stop_before_pixels=True).PatientID == "pat_01"
    scan = scan_inputs(tmp_path / "dicomTs", work_folder=tmp_path / "work")
    assert [c.case_id for c in scan.cases] == ["pat_01"]
    case = scan.cases[0]
    assert case.source == "dicom" and case.error is None and len(case.extra["source_files"]) == SIZE_XYZ[2]
    conv = sitk.ReadImage(str(case.files[0]))
    assert_same_geometry(conv, src)
    err = np.abs(sitk.GetArrayFromImage(conv).astype(np.float64) - sitk.GetArrayFromImage(src))
    assert err.max() <= _slope(files) / 2 * (1 + 1e-6)


def test_left_handed_direction_reads_back_as_its_right_handed_twin(tmp_path, caplog):
    flip = np.diag([1.0, 1.0, -1.0])
    src = _image(flip)
    with caplog.at_level("WARNING"):
        write_dicom_series(src, tmp_path, patient_id="p")
    assert "left-handed" in caplog.text
    out, _ = _read_series(tmp_path)
    np.testing.assert_allclose(out.GetDirection(), np.eye(3).ravel(), atol=1e-6)
    np.testing.assert_allclose(out.GetOrigin(), src.TransformIndexToPhysicalPoint((0, 0, SIZE_XYZ[2] - 1)), atol=1e-4)
    err = np.abs(sitk.GetArrayFromImage(out)[::-1] - sitk.GetArrayFromImage(src))
    assert err.max() <= 800 / 60000


def test_refuses_bad_input(tmp_path):
    with pytest.raises(ValueError, match="scalar 3D"):
        write_dicom_series(sitk.Image(4, 4, sitk.sitkFloat32), tmp_path, patient_id="p")
    arr = np.zeros(SIZE_XYZ[::-1], np.float32)
    arr[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        write_dicom_series(sitk.GetImageFromArray(arr), tmp_path, patient_id="p")
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_dataset_test_cases_to_dicom_is_deterministic(tmp_path):
    for name in ("a", "b"):
        images = tmp_path / name / "Dataset990_X" / "imagesTs"
        images.mkdir(parents=True)
        sitk.WriteImage(_image(seed=1), str(images / "x_001_0000.nii.gz"))
    a = dataset_test_cases_to_dicom(tmp_path / "a" / "Dataset990_X")
    b = dataset_test_cases_to_dicom(tmp_path / "b" / "Dataset990_X")
    assert list(a) == ["x_001"] and a["x_001"][0].parent == tmp_path / "a" / "Dataset990_X" / "dicomTs" / "x_001"
    ua, ub = (pydicom.dcmread(str(f["x_001"][2]), stop_before_pixels=True) for f in (a, b))
    assert (ua.SOPInstanceUID, ua.StudyInstanceUID) == (ub.SOPInstanceUID, ub.StudyInstanceUID)


def test_cli_dicom_flag(tmp_path, monkeypatch):
    monkeypatch.setenv("nnUNet_raw", str(tmp_path))
    assert make_demo_main(["-d", "987", "--n_train", "4", "--n_test", "2", "--shape", "24", "24", "8",
                           "--dicom"]) == 0
    folder = tmp_path / "Dataset987_NeoNetPhantom"
    test_images = sorted((folder / "imagesTs").glob("*_0000.nii.gz"))
    assert len(test_images) == 2
    series = sorted(p.name for p in (folder / "dicomTs").iterdir())
    assert series == [p.name[: -len("_0000.nii.gz")] for p in test_images]
    for img_file in test_images:
        cid = img_file.name[: -len("_0000.nii.gz")]
        src = sitk.ReadImage(str(img_file))
        out, names = _read_series(folder / "dicomTs" / cid)
        assert len(names) == src.GetSize()[2]
        assert_same_geometry(out, src)
        assert pydicom.dcmread(names[0], stop_before_pixels=True).PatientID == cid
    assert not (folder / "dicomTr").exists()
