"""Integration: phantom → neonet_plan_and_preprocess → plans, splits, TLCR patches."""
import json
import os
from pathlib import Path

import numpy as np
import pytest

from neonet_toolkit.experiment_planning.plans import NeoNetPlans, crop_xyz_to_array_order, max_unet_levels
from neonet_toolkit.experiment_planning.planner import swin_compatible_patch
from neonet_toolkit.preprocessing.patches import load_metadata, load_patch, patch_folder
from neonet_toolkit.preprocessing.tlcr import tlcr_from_segmentation


def test_plans_splits_and_one_patch_per_case(planned_phantom):
    pp = planned_phantom["preprocessed"]
    labels = {}
    for line in (planned_phantom["raw"] / "case_labels.csv").read_text(encoding="utf-8").splitlines()[1:]:
        c, y = line.split(",")
        labels[c] = int(y)
    splits = json.loads((pp / "splits_final.json").read_text(encoding="utf-8"))
    assert len(splits) == 5
    assert sorted(sum((s["val"] for s in splits), [])) == sorted(labels)
    # nnU-Net plans: SwinUNETR-compatible patch
    nn_plans = json.loads((pp / "NeoNetPlans.json").read_text(encoding="utf-8"))
    patch = nn_plans["configurations"]["3d_fullres"]["patch_size"]
    assert all(p % 32 == 0 for p in patch)
    plans = NeoNetPlans(pp / "neonet_plans.json")
    assert plans.crop_size == [16, 32, 32]  # dataset.json asks 32x32x16 (x, y, z); arrays are z, y, x
    assert plans["tlcr"]["crop_size_xyz"] == [32, 32, 16]
    assert plans.latent_shape == [4, 8, 8]
    assert plans["latent"]["ldm_levels"] == 3
    assert plans["label_roles"]["tumor_labels"] == {"tumor": [2]}
    small = plans.configuration("cpu_small")
    full = plans.configuration("gpu_full")
    assert small["cls"]["architecture"] == full["cls"]["architecture"] == "pattennet"
    assert full["seg"]["epochs"] == 400 and full["vae"]["epochs"] == 6000 and full["cls"]["patience"] == 20
    assert small["vae"]["channels"] != full["vae"]["channels"]
    meta = load_metadata(patch_folder(pp, "gt"))
    assert sorted(meta["cases"]) == sorted(labels)
    for cid, rec in meta["cases"].items():
        assert rec["label"] == labels[cid]
        assert not rec["empty_tumor"] and rec["tumor_voxels"] > 0
        img, lab = load_patch(patch_folder(pp, "gt"), cid)
        assert img.shape == (2, 16, 32, 32) and lab.shape == (2, 16, 32, 32)
        assert int(lab[1].sum()) == rec["tumor_voxels_in_crop"]
        # channel 1 is channel 0 restricted to the tumour; both are zero outside their masks
        np.testing.assert_array_equal(img[1], img[0] * lab[1])
        assert not img[0][lab[0] == 0].any()


def test_patch_equals_tlcr_on_preprocessed_grid(planned_phantom):
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    from neonet_toolkit.dataset.contract import NeoNetDataset

    pp = planned_phantom["preprocessed"]
    folder = pp / "NeoNetPlans_3d_fullres"
    ds = NeoNetDataset.load(planned_phantom["raw"])
    cid = ds.case_ids[3]
    data, seg, _, props = infer_dataset_class(str(folder))(str(folder), [cid]).load_case(cid)
    img_p, lab_p, info = tlcr_from_segmentation(np.asarray(data[0]), np.asarray(seg[0]), ds.roles, (16, 32, 32))
    img, lab = load_patch(patch_folder(pp, "gt"), cid)
    np.testing.assert_array_equal(img, img_p)
    np.testing.assert_array_equal(lab, lab_p)
    assert load_metadata(patch_folder(pp, "gt"))["cases"][cid]["start"] == list(info.start)


def test_rerun_is_idempotent(planned_phantom, monkeypatch):
    from neonet_toolkit.training.planning import plan_and_preprocess

    for k, v in planned_phantom["env"].items():
        monkeypatch.setenv(k, v)
    pp = planned_phantom["preprocessed"]
    before = {p: p.read_bytes() for p in [pp / "splits_final.json", pp / "neonet_tlcr/gt/metadata.json"]}
    mtimes = {p: p.stat().st_mtime_ns for p in (pp / "NeoNetPlans_3d_fullres").iterdir()}
    report = plan_and_preprocess(501, num_processes=1, seed=999)  # another seed must not change folds
    for p, b in before.items():
        assert p.read_bytes() == b
    assert {p: p.stat().st_mtime_ns for p in (pp / "NeoNetPlans_3d_fullres").iterdir()} == mtimes
    assert report["timings_s"]["preprocess"] < 5


def test_nnunet_own_planner_accepts_the_dataset(planned_phantom, monkeypatch):
    """Untouched nnU-Net planning on the same raw folder (as nnUNetv2_plan_and_preprocess would)."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import plan_experiment_dataset

    for k, v in planned_phantom["env"].items():
        monkeypatch.setenv(k, v)
    plans, ident = plan_experiment_dataset(501)
    assert ident == "nnUNetPlans"
    assert "3d_fullres" in plans["configurations"]
    assert (planned_phantom["preprocessed"] / "nnUNetPlans.json").is_file()


def test_other_label_ids_extra_labels_and_spacing(isolated_env):
    """A dataset we did not generate the default way: ids {bg 0, liver 1, vessel 2, tumor 3}, other spacing."""
    from neonet_toolkit.demo.phantom import make_phantom_dataset
    from neonet_toolkit.training.planning import plan_and_preprocess

    raw = make_phantom_dataset(isolated_env / "nnUNet_raw", 612, "OtherLabels", n_train=10, n_test=0,
                               shape_xyz=(41, 37, 15), spacing=(0.9, 0.9, 2.5),
                               labels={"background": 0, "liver": 1, "vessel": 2, "tumor": 3}, seed=5,
                               neonet_options={"crop_size": [48, 48, 16]})
    dj = json.loads((raw / "dataset.json").read_text(encoding="utf-8"))
    dj.pop("neonet")  # roles by default names, crop from the command line
    (raw / "dataset.json").write_text(json.dumps(dj), encoding="utf-8")
    report = plan_and_preprocess(612, num_processes=1, n_folds=3, crop_size_xyz=(48, 48, 16))
    pp = isolated_env / "nnUNet_preprocessed" / raw.name
    plans = NeoNetPlans(pp / "neonet_plans.json")
    assert plans["label_roles"]["tumor_labels"] == {"tumor": [3]}
    assert plans["label_roles"]["organ_labels"] == {"liver": [1]}
    assert plans.crop_size == [16, 48, 48]
    assert report["n_patches"] == 10
    meta = load_metadata(patch_folder(pp, "gt"))
    import SimpleITK as sitk

    for cid, rec in meta["cases"].items():
        seg = sitk.GetArrayFromImage(sitk.ReadImage(str(raw / "labelsTr" / f"{cid}.nii.gz")))
        assert rec["tumor_voxels"] == int((seg == 3).sum())  # vessel voxels (2) are not tumour
        _, lab = load_patch(patch_folder(pp, "gt"), cid)
        assert rec["padded"]  # 15 slices < 16: padded, still exactly the crop
        assert lab.shape == (2, 16, 48, 48)


def test_tumor_larger_than_crop_is_reported(isolated_env, caplog):
    from neonet_toolkit.demo.phantom import make_phantom_dataset
    from neonet_toolkit.training.planning import plan_and_preprocess

    make_phantom_dataset(isolated_env / "nnUNet_raw", 613, "BigTumour", n_train=10, n_test=0,
                         shape_xyz=(32, 32, 16), spacing=(1.5, 1.5, 3.0), seed=2,
                         neonet_options={"crop_size": [8, 8, 8]})
    report = plan_and_preprocess(613, num_processes=1, n_folds=3, resource_estimates=False)
    assert report["cases_tumor_exceeds_crop"]
    assert "Tumour larger than" in caplog.text


def test_helpers():
    assert crop_xyz_to_array_order((96, 96, 48), [0, 1, 2]) == [48, 96, 96]
    assert crop_xyz_to_array_order((96, 80, 48), [2, 1, 0]) == [96, 80, 48]
    assert max_unet_levels([24, 24, 12], 4) == 3
    assert max_unet_levels([8, 8, 4], 4) == 3
    assert max_unet_levels([6, 6, 3], 4) == 1
    assert swin_compatible_patch([40, 100, 160], [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]]) == [32, 96, 160]
    assert swin_compatible_patch([20, 320, 256], [[1, 1, 1]] + [[1, 2, 2]] * 6) == [32, 320, 256]


def test_paths_defaults_and_user_variables_win(monkeypatch, tmp_path):
    from neonet_toolkit import paths

    for k in paths.ENV_VARS:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("NEONET_HOME", str(tmp_path))
    env = paths.ensure_environment()
    assert env["nnUNet_raw"] == tmp_path / "nnUNet_raw"
    assert env["neonet_results"] == tmp_path / "neonet_results"
    # reading the folders never writes the environment (issue #9); nnU-Net calls see them in a scope
    assert "nnUNet_preprocessed" not in os.environ
    with paths.nnunet_environment({"NEONET_EXAMPLE_SETTING": 3}):
        assert os.environ["nnUNet_preprocessed"] == str(tmp_path / "neonet_results" / "nnUNet_preprocessed")
        assert os.environ["NEONET_EXAMPLE_SETTING"] == "3"
        assert str(paths.nnunet_ext_trainer_dir()) in os.environ["nnUNet_extTrainer"].split(os.pathsep)
    assert "nnUNet_preprocessed" not in os.environ and "NEONET_EXAMPLE_SETTING" not in os.environ
    monkeypatch.setenv("nnUNet_raw", "/data/mine")
    assert paths.ensure_environment()["nnUNet_raw"] == Path("/data/mine")


def test_cli_reports_bad_dataset_clearly(isolated_env, capsys):
    from neonet_toolkit.run.plan_and_preprocess import main

    assert main(["-d", "999"]) == 2
    assert "No dataset with id 999" in capsys.readouterr().err


def test_first_look_summary_montage_and_nnunet_commands(planned_phantom):
    """After planning: cases per class and fold, shapes, the crop vs the tumours, the configuration, a montage
    of TLCR crops, and the plain nnU-Net commands for this dataset."""
    import json as _json

    from neonet_toolkit.preprocessing.planning_report import MONTAGE_FILE, SUMMARY_FILE, nnunet_commands

    pp = Path(planned_phantom["preprocessed"])
    text = (pp / SUMMARY_FILE).read_text(encoding="utf-8")
    splits = _json.loads((pp / "splits_final.json").read_text(encoding="utf-8"))
    for k, sp in enumerate(splits):
        assert f"| {k} | {len(sp['train'])} (" in text
    assert "**Cases**: 20 (7 PNI=1, 13 PNI=0)" in text
    assert "**TLCR crop**: [16, 32, 32] voxels = [48.0, 48.0, 48.0] mm" in text
    assert "Tumour larger than the crop:" in text and "`cpu_small`" in text
    png = (pp / MONTAGE_FILE).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    cmds = nnunet_commands(planned_phantom["dataset_name"], "/x/nnunet_ext")
    assert cmds[1] == "nnUNetv2_train 501 3d_fullres 0 -p NeoNetPlans -tr NeoSegTrainer"
    assert "-d 501 -c 3d_fullres -p NeoNetPlans -tr NeoSegTrainer" in cmds[2]


@pytest.mark.slow
def test_replaced_case_refreshes_fingerprint_preprocessing_and_patch(isolated_env):
    """A case swapped for another scan under the same id (same case count) must not keep its old fingerprint,
    preprocessed data or TLCR patch (issue #11: the old rule only compared the number of cases)."""
    import shutil

    from neonet_toolkit.demo.phantom import make_phantom_dataset
    from neonet_toolkit.preprocessing.plan_and_preprocess import FINGERPRINT_STAMP
    from neonet_toolkit.training.planning import plan_and_preprocess

    raw = make_phantom_dataset(isolated_env / "nnUNet_raw", 512, "Swap", n_train=6, n_test=0,
                               shape_xyz=(32, 32, 16), shape_jitter=0, seed=5, positive_fraction=0.5,
                               neonet_options={"crop_size": [16, 16, 8]})
    plan_and_preprocess(512, num_processes=1, n_folds=2, resource_estimates=False)
    pp = isolated_env / "nnUNet_preprocessed" / raw.name
    stamp_before = (pp / FINGERPRINT_STAMP).read_text()
    ids = sorted(p.name[: -len("_0000.nii.gz")] for p in (raw / "imagesTr").glob("*_0000.nii.gz"))
    a, b = ids[0], ids[1]
    img_b, lab_b = load_patch(patch_folder(pp, "gt"), b)
    assert not np.array_equal(load_patch(patch_folder(pp, "gt"), a)[0], img_b)
    # case a is re-exported: it now holds the scan of case b (same size on disk is possible; mtime changes)
    shutil.copyfile(raw / "imagesTr" / f"{b}_0000.nii.gz", raw / "imagesTr" / f"{a}_0000.nii.gz")
    shutil.copyfile(raw / "labelsTr" / f"{b}.nii.gz", raw / "labelsTr" / f"{a}.nii.gz")
    plan_and_preprocess(512, num_processes=1, n_folds=2, resource_estimates=False)
    assert (pp / FINGERPRINT_STAMP).read_text() != stamp_before
    img_a, lab_a = load_patch(patch_folder(pp, "gt"), a)
    np.testing.assert_array_equal(img_a, img_b)
    np.testing.assert_array_equal(lab_a, lab_b)
