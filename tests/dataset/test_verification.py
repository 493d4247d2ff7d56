"""Planning's dataset verification: blank training images and spacing in metres are refused by name
(issue 21 items 8 and 10), on copies of a tiny phantom."""
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from neonet_toolkit.dataset.contract import NeoNetDataset
from neonet_toolkit.dataset.errors import DatasetError
from neonet_toolkit.dataset.verification import verify_dataset
from neonet_toolkit.demo.phantom import make_phantom_dataset


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    root = tmp_path_factory.mktemp("verification")
    return make_phantom_dataset(root, 778, "Tiny", n_train=6, n_test=0, shape_xyz=(20, 20, 10),
                                spacing=(2.0, 2.0, 4.0), shape_jitter=1, seed=4)


@pytest.fixture
def ds(template, tmp_path):
    dst = tmp_path / template.name
    shutil.copytree(template, dst)
    return NeoNetDataset.load(dst)


def _positive(ds):
    return next(c for c in ds.case_ids if ds.case_labels[c] == 1)


def _rewrite(path, fn=None, spacing_factor=None):
    img = sitk.ReadImage(str(path))
    new = sitk.GetImageFromArray(fn(sitk.GetArrayFromImage(img))) if fn else img
    new.CopyInformation(img)
    if spacing_factor:
        new.SetSpacing([s * spacing_factor for s in img.GetSpacing()])
        new.SetOrigin([o * spacing_factor for o in img.GetOrigin()])
    sitk.WriteImage(new, str(path))


def test_all_zero_training_image_is_refused(ds):
    # it passed planning and gave an all-zero TLCR crop for a positive case
    cid = _positive(ds)
    _rewrite(ds.image_file(cid), lambda a: np.zeros_like(a))
    with pytest.raises(DatasetError) as err:
        verify_dataset(ds, full=True)
    assert str(err.value) == (
        f"case {cid!r}: image {cid}_0000.nii.gz is all zero inside the organ+tumour mask "
        f"({int((sitk.GetArrayFromImage(sitk.ReadImage(str(ds.label_file(cid)))) > 0).sum())} voxels, zero "
        "variance): a blank or failed export, not a usable MRI; its TLCR crop would be blank for a case labelled "
        "PNI=1. Replace the file with the real scan, or remove the case (image, label and its row in the case-label "
        "CSV).")


def test_constant_organ_region_is_refused_and_every_blank_case_is_listed(ds):
    a, b = ds.case_ids[:2]
    lab = sitk.GetArrayFromImage(sitk.ReadImage(str(ds.label_file(a)))) > 0

    def flat_organ(arr):
        arr = arr.copy()
        arr[lab] = 812.25
        return arr

    _rewrite(ds.image_file(a), flat_organ)
    _rewrite(ds.image_file(b), lambda arr: np.full_like(arr, 300.0))
    with pytest.raises(DatasetError) as err:
        verify_dataset(ds, full=True)
    msg = str(err.value)
    assert msg.startswith("2 problems found")
    assert f"case {a!r}: image {a}_0000.nii.gz is constant (812.25) inside the organ+tumour mask" in msg
    assert f"case {b!r}: image {b}_0000.nii.gz is constant (300) inside the organ+tumour mask" in msg


def test_a_normal_image_with_a_dark_background_passes(ds):
    cid = ds.case_ids[0]
    lab = sitk.GetArrayFromImage(sitk.ReadImage(str(ds.label_file(cid)))) > 0

    def background_zero(arr):
        return np.where(lab, arr, 0).astype(arr.dtype)

    _rewrite(ds.image_file(cid), background_zero)
    assert verify_dataset(ds, full=True)["n_cases"] == 6


@pytest.mark.parametrize("full", [False, True])
def test_spacing_in_metres_is_refused_with_the_fix(ds, full):
    # planning ran on and failed deep in nnU-Net's resampling: "zero-size array to reduction operation maximum"
    cid = ds.case_ids[1]
    _rewrite(ds.image_file(cid), spacing_factor=1e-3)
    _rewrite(ds.label_file(cid), spacing_factor=1e-3)
    with pytest.raises(DatasetError) as err:
        verify_dataset(ds, full=full)
    msg = str(err.value)
    assert msg.startswith(f"case {cid!r}: {cid}_0000.nii.gz has voxel spacing [0.002, 0.002, 0.004] (x, y, z), "
                          "below 0.05 on every axis: it looks like metres")
    assert "(in mm it would be [2.0, 2.0, 4.0])" in msg and "for the image and its label alike" in msg


def test_blank_second_channel_is_a_warning_blank_classifier_channel_an_error(ds):
    # a zero-filled missing sequence for NeoSeg is the user's choice; the classifier's channel must be an image
    import json

    folder = ds.folder
    dj = json.loads((folder / "dataset.json").read_text(encoding="utf-8"))
    dj["channel_names"] = {"0": "T2", "1": "DWI"}
    (folder / "dataset.json").write_text(json.dumps(dj), encoding="utf-8")
    for cid in ds.case_ids:
        img = sitk.ReadImage(str(ds.image_file(cid)))
        z = sitk.GetImageFromArray(np.zeros_like(sitk.GetArrayFromImage(img)))
        z.CopyInformation(img)
        sitk.WriteImage(z, str(folder / "imagesTr" / f"{cid}_0001.nii.gz"))
    report = verify_dataset(NeoNetDataset.load(folder), full=True)
    assert len(report["warnings"]) == 6 and all("_0001.nii.gz is all zero" in w for w in report["warnings"])
    dj["neonet"]["image_channel"] = 1
    (folder / "dataset.json").write_text(json.dumps(dj), encoding="utf-8")
    with pytest.raises(DatasetError, match=r"(?s)6 problems found.*_0001.nii.gz is all zero inside the organ\+tumour"):
        verify_dataset(NeoNetDataset.load(folder), full=True)
