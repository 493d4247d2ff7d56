"""neonet_predict gives the same answer whatever the storage order of the axes' directions (issue 21, item 5).

The test cases of the tiny trained models (the ``trained`` fixture, tests/inference/conftest.py) are stored
in each of the 8 axis-flip combinations with the affine adjusted (``sitk.DICOMOrient``: same anatomy,
other storage order).

* ``crop()`` (both branches: NeoSeg's grid reused, or a second preprocessing) gives the same TLCR crop
  for the same mask in every storage order;
* end to end, the written mask must be the mirrored mask exactly, and the probability agree to 1e-4.
  NeoSeg predicts in the canonical orientation too (``SegmentationEnsemble.segment`` flips its input and its
  logits back): nnU-Net's sliding window alone is not mirror-equivariant (it pads an odd size difference
  ``d // 2`` below and the rest above, and sums tiles and test-time mirrors in storage order), which moved
  2-27 voxels of the mask before.
"""
from __future__ import annotations

import csv
import itertools
import json

import numpy as np
import SimpleITK as sitk

FLIP_CODES = ["".join(c) for c in itertools.product("LR", "PA", "SI")]  # "LPS" = the stored order


def _flipped(code: str) -> list[int]:
    """Array axes (z, y, x) reversed by storing an LPS image as ``code``."""
    return sorted(a for a, c, canon in zip((2, 1, 0), code, "LPS") if c != canon)


def _write_orientations(src_folder, cid: str, folder, suffix: str = "_0000") -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    img = sitk.ReadImage(str(src_folder / f"{cid}{suffix}.nii.gz"))
    ids = {}
    for code in FLIP_CODES:
        ids[code] = f"{cid}-{code.lower()}"
        sitk.WriteImage(sitk.DICOMOrient(img, code), str(folder / f"{ids[code]}{suffix}.nii.gz"))
    return ids


def test_the_8_flipped_storage_orders_give_the_same_probability_and_mirrored_mask(trained, tmp_path):
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from neonet_toolkit.inference.predict import predict

    raw, inp, out = trained["raw"], tmp_path / "in", tmp_path / "out"
    cids = sorted(p.name[:-12] for p in (raw / "imagesTs").glob("*_0000.nii.gz"))
    ids = {cid: _write_orientations(raw / "imagesTs", cid, inp) for cid in cids}
    predict(inp, out, raw.name, seg_model=trained["seg_model"], cls_run=trained["cls_run"], folds=[0], device="cpu")
    with open(out / "predictions.csv", encoding="utf-8") as f:
        rows = {r["case_id"]: r for r in csv.DictReader(f)}
    pm = PlansManager(str(trained["seg_model"] / "plans.json"))
    assert list(pm.transpose_forward) == [0, 1, 2]  # preprocessed axes = (z, y, x), as _flipped assumes
    with_p, checked = 0, 0
    for cid in cids:
        ref = ids[cid]["LPS"]
        mask_ref = sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"{ref}.nii.gz")))
        p_ref = rows[ref]["probability"]
        with_p += p_ref != ""
        for code, case in ids[cid].items():
            rec = json.loads((out / "cases" / f"{case}.json").read_text(encoding="utf-8"))
            assert rec["tlcr"]["canonical_flips"] == _flipped(code), code
            seg = sitk.ReadImage(str(out / f"{case}.nii.gz"))  # the input's geometry ...
            np.testing.assert_allclose(seg.GetDirection(), sitk.ReadImage(str(inp / f"{case}_0000.nii.gz"))
                                       .GetDirection(), atol=1e-6)
            back = sitk.GetArrayFromImage(sitk.DICOMOrient(seg, "LPS"))  # ... and back in the stored order
            p = rows[case]["probability"]
            # NeoSeg predicts in the canonical orientation: the mask is exactly the mirrored mask
            assert np.array_equal(back, mask_ref), (cid, code, int((back != mask_ref).sum()))
            assert (p == "") == (p_ref == ""), (cid, code, p, p_ref)
            if p_ref != "":
                assert abs(float(p) - float(p_ref)) <= 1e-4, (cid, code, p, p_ref)
                assert rows[case]["decision"] == rows[ref]["decision"], (cid, code)
                checked += code != "LPS"
    assert with_p >= 1, "the fixture model should find at least one tumour"
    assert checked >= 7


def test_crop_is_canonical_in_both_branches(trained, tmp_path):
    """Same mask, 8 storage orders: ``crop()`` gives the same crop, on NeoSeg's kept grid and on a second
    preprocessing. The mask is the ground truth stored the same way (no network involved)."""
    from neonet_toolkit import paths
    from neonet_toolkit.inference.predict import NeoNetPredictor

    raw = trained["raw"]
    cid = sorted(p.name[:-12] for p in (raw / "imagesTs").glob("*_0000.nii.gz"))[0]
    ids = _write_orientations(raw / "imagesTs", cid, tmp_path)
    _write_orientations(raw / "labelsTs", cid, tmp_path, suffix="")
    pr = NeoNetPredictor(raw.name, seg_model=trained["seg_model"], cls_run=trained["cls_run"], folds=[0],
                         device="cpu")
    assert pr.reuse_preprocessing
    nn, cropper = pr.segmenter.predictor, pr.cropper
    rw = nn.plans_manager.image_reader_writer_class()
    crops = {}
    with paths.nnunet_environment():
        for code, case in ids.items():
            data, props = rw.read_images([str(tmp_path / f"{case}_0000.nii.gz")])
            seg = rw.read_seg(str(tmp_path / f"{case}.nii.gz"))[0][0].astype(np.uint8)
            pdata, _, pprops = nn.configuration_manager.preprocessor_class(verbose=False).run_case_npy(
                data, None, props, nn.plans_manager, nn.configuration_manager, nn.dataset_json)
            shared = cropper.crop(data, seg, props, (pdata, pprops))  # NeoSeg's kept grid, as segment() returns it
            cropper.reuse_preprocessing = False
            again = cropper.crop(data, seg, props)  # the NeoNet plans' preprocessing of image + mask
            cropper.reuse_preprocessing = True
            crops[code] = (shared, again)
    (ref_img, ref_lab, ref_info), _ = crops["LPS"]
    assert not ref_info.empty_tumor
    for code, branches in crops.items():
        for img_p, lab_p, info in branches:
            assert list(info.canonical_flips) == _flipped(code)
            assert info.start == ref_info.start and info.bbox_min == ref_info.bbox_min
            np.testing.assert_array_equal(lab_p, ref_lab, err_msg=code)
            # nnU-Net's z-score mean is a float32 sum whose last bit depends on the voxel order
            np.testing.assert_allclose(img_p, ref_img, rtol=0, atol=1e-5, err_msg=code)
