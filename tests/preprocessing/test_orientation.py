"""Canonical orientation of TLCR crops: hand-computed flips, and the same crop for every storage order."""
from __future__ import annotations

import itertools
import logging
import math

import numpy as np
import pytest
import SimpleITK as sitk

from neonet_toolkit.preprocessing import orientation as orient
from neonet_toolkit.preprocessing.orientation import (
    canonical_orientation,
    canonical_tlcr,
    flips_from_directions,
    to_canonical,
)

# the 8 storage orders of the same anatomy with the axes kept in x, y, z order (DICOM orientation codes)
FLIP_CODES = ["".join(c) for c in itertools.product("LR", "PA", "SI")]


def _sitk_props(direction) -> dict:
    return {"sitk_stuff": {"direction": tuple(float(v) for v in np.asarray(direction).ravel()),
                           "spacing": (1.0, 1.0, 1.0), "origin": (0.0, 0.0, 0.0)}, "spacing": [1.0, 1.0, 1.0]}


# ----------------------------------------------------------------------------- hand-computed flips
def test_identity_direction_needs_no_flip_and_returns_the_same_array():
    o = canonical_orientation(_sitk_props(np.eye(3)), [0, 1, 2])
    assert o.flips == () and o.physical_axes == (2, 1, 0) and not o.permuted and o.source == "sitk_stuff"
    a = np.arange(24.0).reshape(2, 3, 4)
    assert to_canonical(a, o.flips) is a  # identity: not even a copy


@pytest.mark.parametrize("index_axis, array_axis", [(0, 2), (1, 1), (2, 0)])
def test_each_single_axis_reversal_flips_its_array_axis(index_axis, array_axis):
    # index axis x is numpy axis 2 of the (z, y, x) array, y is 1, z is 0 (transpose_forward = identity)
    d = np.eye(3)
    d[index_axis, index_axis] = -1.0
    flips, axes = flips_from_directions(d, [0, 1, 2])
    assert flips == (array_axis,) and axes == (2, 1, 0)


def test_all_three_reversed():
    assert flips_from_directions(-np.eye(3), [0, 1, 2]) == ((0, 1, 2), (2, 1, 0))


def test_transposed_direction_with_transpose_forward():
    # columns = index axes: x -> +z (physical), y -> -x, z -> +y
    d = np.array([[0.0, -1.0, 0.0],
                  [0.0, 0.0, 1.0],
                  [1.0, 0.0, 0.0]])
    # transpose_forward (2, 0, 1): preprocessed axis 0 = raw axis 2 = index x (+z); axis 1 = raw axis 0 =
    # index z (+y); axis 2 = raw axis 1 = index y (-x) -> only axis 2 is reversed
    flips, axes = flips_from_directions(d, [2, 0, 1])
    assert flips == (2,) and axes == (2, 1, 0)
    o = canonical_orientation(_sitk_props(d), [2, 0, 1])
    assert o.expected_axes == (0, 2, 1) and o.permuted  # an identity image on this grid would be (x, z, y)
    # identity direction with the same transpose_forward: nothing to flip, not permuted
    o = canonical_orientation(_sitk_props(np.eye(3)), [2, 0, 1])
    assert o.flips == () and o.physical_axes == (0, 2, 1) and not o.permuted


def test_oblique_directions_use_the_dominant_axis():
    def rot_z(deg):
        c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
        return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])

    assert flips_from_directions(rot_z(30), [0, 1, 2]) == ((), (2, 1, 0))
    # 150 degrees: x points mostly to -x, y mostly to -y
    assert flips_from_directions(rot_z(150), [0, 1, 2]) == ((1, 2), (2, 1, 0))
    # 100 degrees: x points mostly to +y, y mostly to -x -> a permutation plus one reversal
    assert flips_from_directions(rot_z(100), [0, 1, 2]) == ((1,), (2, 0, 1))


def test_nibabel_affines_are_converted_from_ras():
    # the usual NIfTI affine (RAS diag(-1, -1, 1)) is LPS identity -> no flip, like SimpleITK's identity
    o = canonical_orientation({"nibabel_stuff": {"original_affine": np.diag([-2.0, -2.0, 3.0, 1.0])}}, [0, 1, 2])
    assert o.flips == () and o.source == "nibabel_stuff"
    # a RAS-canonical affine points x to R and y to A: both reversed in LPS
    o = canonical_orientation({"nibabel_stuff": {"original_affine": np.eye(4)}}, [0, 1, 2])
    assert o.flips == (1, 2)
    # NibabelIOWithReorient: the array is on the reoriented grid, so its affine wins
    o = canonical_orientation({"nibabel_stuff": {"original_affine": np.eye(4),
                                                 "reoriented_affine": np.diag([-1.0, -1.0, 1.0, 1.0])}}, [0, 1, 2])
    assert o.flips == ()


@pytest.mark.parametrize("props", [{"spacing": [1, 1, 1]}, {"sitk_stuff": {"direction": (1.0, 0.0, 0.0, 1.0)}},
                                   {"sitk_stuff": {"direction": (np.nan,) * 9}},
                                   {"nibabel_stuff": {"original_affine": np.zeros((4, 4))}}])
def test_unknown_geometry_warns_once_and_changes_nothing(props, caplog, monkeypatch):
    monkeypatch.setattr(orient, "_warned", set())
    with caplog.at_level(logging.WARNING, logger=orient.__name__):
        first = canonical_orientation(props, [0, 1, 2])
        second = canonical_orientation(props, [0, 1, 2])
    assert first == second and first.flips == () and not first.known and not first.permuted
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "Orientation unknown" in warnings[0].getMessage()
    image = np.arange(64.0, dtype=np.float32).reshape(4, 4, 4)
    seg = np.zeros((4, 4, 4), np.uint8)
    seg[1:3, 1:3, 1:3] = 2

    class Roles:  # liver 1, tumour 2
        def masks(self, s):
            return np.isin(s, (1, 2)), s == 2

    _, _, info = canonical_tlcr(image, seg, Roles(), (2, 2, 2), first)
    assert info.canonical_flips is None and info.start == (1, 1, 1)


def test_bad_transpose_forward_is_refused():
    with pytest.raises(ValueError, match="permutation"):
        flips_from_directions(np.eye(3), [0, 0, 1])


# ----------------------------------------------------------------------------- phantom: 8 storage orders
def test_existing_phantom_patches_are_unchanged(phantom_env):
    """Identity direction: every record says no flip, and the patch is TLCR on the stored array as before."""
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    from neonet_toolkit.dataset.contract import NeoNetDataset
    from neonet_toolkit.preprocessing.patches import load_metadata, load_patch, patch_folder
    from neonet_toolkit.preprocessing.tlcr import tlcr_from_segmentation

    pp = phantom_env["preprocessed"]
    meta = load_metadata(patch_folder(pp, "gt"))
    assert meta["orientation"] == orient.ORIENTATION_CONVENTION
    assert all(r["canonical_flips"] == [] for r in meta["cases"].values())
    ds = NeoNetDataset.load(phantom_env["raw"])
    folder = pp / "NeoNetPlans_3d_fullres"
    cid = ds.case_ids[0]
    data, seg, _, _ = infer_dataset_class(str(folder))(str(folder), [cid]).load_case(cid)
    img_p, lab_p, _ = tlcr_from_segmentation(np.asarray(data[0]), np.asarray(seg[0]), ds.roles, meta["crop_size"])
    img, lab = load_patch(patch_folder(pp, "gt"), cid)
    np.testing.assert_array_equal(img, img_p)
    np.testing.assert_array_equal(lab, lab_p)


def _crop_of_stored(phantom_env, cid: str, code: str, tmp_path):
    """Store case ``cid`` in orientation ``code`` (same anatomy, affine adjusted), then read it with the plans'
    reader, preprocess it as the predictor does (run_case_npy) and take the canonical TLCR crop."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from neonet_toolkit.dataset.contract import NeoNetDataset
    from neonet_toolkit.experiment_planning.plans import NEONET_PLANS_FILE, NeoNetPlans
    from neonet_toolkit.utilities.io import load_json

    raw, pp = phantom_env["raw"], phantom_env["preprocessed"]
    ds = NeoNetDataset.load(raw)
    nplans = NeoNetPlans(pp / NEONET_PLANS_FILE)
    pm = PlansManager(str(pp / f"{nplans['nnunet_plans']}.json"))
    cfg = pm.get_configuration(nplans["seg_configuration"])
    files = []
    for src, name in ((ds.cases[cid]["images"][0], f"{code}_0000.nii.gz"), (ds.cases[cid]["label"], f"{code}.nii.gz")):
        im = sitk.DICOMOrient(sitk.ReadImage(str(src)), code)
        sitk.WriteImage(im, str(tmp_path / name))
        files.append(str(tmp_path / name))
    rw = pm.image_reader_writer_class()
    data, props = rw.read_images([files[0]])
    seg, _ = rw.read_seg(files[1])
    d, s, _ = cfg.preprocessor_class(verbose=False).run_case_npy(data, seg, props, pm, cfg,
                                                                 load_json(pp / "dataset.json"))
    o = canonical_orientation(props, pm.transpose_forward)
    img_p, lab_p, info = canonical_tlcr(d[ds.image_channel], s[0], ds.roles, nplans.crop_size, o)
    return img_p, lab_p, info, o


def _order_free_zscore(self, image, seg=None):
    """nnU-Net's ZScoreNormalization (no mask) with its mean and std summed exactly (math.fsum), i.e.
    independent of the voxel order; stock numpy float32 pairwise sums differ in the last bit between storage
    orders."""
    assert not self.use_mask_for_norm
    image = image.astype(self.target_dtype, copy=False)
    x = image.ravel().astype(np.float64)
    mean = math.fsum(x) / x.size
    std = math.sqrt(math.fsum((x - mean) ** 2) / x.size)
    image -= np.float32(mean)
    image /= max(np.float32(std), np.float32(1e-8))
    return image


def test_the_8_flipped_storage_orders_give_the_same_crop(phantom_env, tmp_path, monkeypatch):
    from nnunetv2.preprocessing.normalization.default_normalization_schemes import ZScoreNormalization

    from neonet_toolkit.dataset.contract import NeoNetDataset
    from neonet_toolkit.preprocessing.patches import load_patch, patch_folder

    cid = NeoNetDataset.load(phantom_env["raw"]).case_ids[1]
    ref_img, ref_lab = load_patch(patch_folder(phantom_env["preprocessed"], "gt"), cid)
    ref_info = None
    seen_flips, stock_diff = set(), 0.0
    for code in FLIP_CODES:
        img_p, lab_p, info, o = _crop_of_stored(phantom_env, cid, code, tmp_path)
        assert not o.permuted and o.known
        expected = tuple(a for a, (c, canon) in zip((2, 1, 0), zip(code, "LPS")) if c != canon)
        assert o.flips == tuple(sorted(expected)) and list(info.canonical_flips) == sorted(expected), code
        seen_flips.add(o.flips)
        # geometry is exact: same masks, same crop origin and tumour bbox
        np.testing.assert_array_equal(lab_p, ref_lab, err_msg=code)
        ref_info = ref_info or info
        assert (info.start, info.bbox_min, info.bbox_max) == (ref_info.start, ref_info.bbox_min, ref_info.bbox_max)
        # intensities: stock nnU-Net z-scores with a float32 mean whose last bit depends on the storage order
        stock_diff = max(stock_diff, float(np.abs(img_p - ref_img).max()))
        np.testing.assert_allclose(img_p, ref_img, rtol=0, atol=1e-5, err_msg=code)
        # ... with an order-independent mean/std the crops are bit-identical: nothing else depends on the order
        with monkeypatch.context() as m:
            m.setattr(ZScoreNormalization, "run", _order_free_zscore)
            exact, exact_lab, _, _ = _crop_of_stored(phantom_env, cid, code, tmp_path)
            if code == FLIP_CODES[0]:
                exact_ref = exact
        np.testing.assert_array_equal(exact_lab, ref_lab, err_msg=code)
        np.testing.assert_array_equal(exact, exact_ref, err_msg=code)
    assert len(seen_flips) == 8
    assert stock_diff < 1e-5


def test_training_patches_of_a_case_stored_reversed_equal_the_original(phantom_env, tmp_path, monkeypatch):
    """gt patches (planning) and pred patches (NeoSeg masks) of a training case stored with all three axes
    reversed (affine adjusted, re-preprocessed by nnU-Net) are the original case's patches."""
    import shutil

    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from neonet_toolkit.dataset.contract import NeoNetDataset
    from neonet_toolkit.preprocessing.patches import extract_gt_patches, load_metadata, load_patch, patch_folder
    from neonet_toolkit.training.seg.masks import build_pred_patches
    from neonet_toolkit.utilities.io import load_json

    name = phantom_env["dataset_name"]
    env = {"nnUNet_raw": tmp_path / "raw", "nnUNet_preprocessed": tmp_path / "pp",
           "nnUNet_results": tmp_path / "res", "neonet_results": tmp_path / "neo"}
    shutil.copytree(phantom_env["raw"], env["nnUNet_raw"] / name)  # the session fixture is never modified
    shutil.copytree(phantom_env["preprocessed"], env["nnUNet_preprocessed"] / name,
                    ignore=shutil.ignore_patterns("pred"))
    for k, v in env.items():
        v.mkdir(exist_ok=True)
        monkeypatch.setenv(k, str(v))
    raw, pp = env["nnUNet_raw"] / name, env["nnUNet_preprocessed"] / name
    ds = NeoNetDataset.load(raw)
    cid = ds.case_ids[2]
    for f in (ds.cases[cid]["images"][0], ds.cases[cid]["label"]):  # same anatomy, every axis stored reversed
        sitk.WriteImage(sitk.DICOMOrient(sitk.ReadImage(str(f)), "RAI"), str(f))
    pm = PlansManager(str(pp / "NeoNetPlans.json"))
    cfg = pm.get_configuration("3d_fullres")
    for f in (pp / cfg.data_identifier).glob(f"{cid}[._]*"):  # nnU-Net's blosc2 writer will not overwrite
        f.unlink()
    cfg.preprocessor_class(verbose=False).run_case_save(
        str(pp / cfg.data_identifier / cid), [str(ds.cases[cid]["images"][0])], str(ds.cases[cid]["label"]), pm, cfg,
        load_json(pp / "dataset.json"))
    meta_old = load_metadata(patch_folder(phantom_env["preprocessed"], "gt"))
    ref_img, ref_lab = load_patch(patch_folder(phantom_env["preprocessed"], "gt"), cid)

    meta = extract_gt_patches(pp, cfg.data_identifier, {cid: ds.case_labels[cid]}, ds.roles, meta_old["crop_size"],
                              meta_old["spacing"], overwrite=True)
    assert meta["cases"][cid]["canonical_flips"] == [0, 1, 2]
    assert meta["cases"][cid]["start"] == meta_old["cases"][cid]["start"]
    img, lab = load_patch(patch_folder(pp, "gt"), cid)
    np.testing.assert_array_equal(lab, ref_lab)
    np.testing.assert_allclose(img, ref_img, rtol=0, atol=1e-5)  # nnU-Net's float32 z-score mean (see above)

    pred = build_pred_patches(name, predictions={cid: ds.cases[cid]["label"]})  # a perfect NeoSeg mask
    assert pred["cases"][cid]["canonical_flips"] == [0, 1, 2] and pred["orientation"] == meta["orientation"]
    img, lab = load_patch(patch_folder(pp, "pred"), cid)
    np.testing.assert_array_equal(lab, ref_lab)
    np.testing.assert_allclose(img, ref_img, rtol=0, atol=1e-5)
