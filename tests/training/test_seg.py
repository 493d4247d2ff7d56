"""NeoSeg: nnU-Net trainers with MONAI networks, both command paths, OOF masks, pred TLCR, evaluation.

One SwinUNETR fold is trained once per module (``neonet_train``, tiny configuration) in a copy of
the session's planned phantom; the plain ``nnUNetv2_train``/``nnUNetv2_predict`` path runs in a
second copy. Everything on CPU.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

DATASET = "Dataset501_NeoNetPhantom"
TINY = {"inherits_from": "cpu_small",
        "seg": {"feature_size": 12, "window_size": 4, "epochs": 8, "iterations_per_epoch": 8,
                "val_iterations_per_epoch": 1, "initial_lr": 1e-3}}
ENV_KEYS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "neonet_results", "nnUNet_extTrainer",
            "nnUNet_def_n_proc")
# plain nnUNetv2_train runs the plans' default configuration for the device: a one-epoch one on top of seg_tiny
PLAIN_TINY = {"inherits_from": "seg_tiny",
              "seg": {"epochs": 1, "iterations_per_epoch": 2, "val_iterations_per_epoch": 1}}


def _copy_planned(planned, root: Path) -> dict:
    """Copy raw + preprocessed of the planned phantom (not its results) and add the 'seg_tiny' configuration."""
    env = {"nnUNet_raw": root / "raw", "nnUNet_preprocessed": root / "preprocessed",
           "nnUNet_results": root / "nnunet_results", "neonet_results": root / "neonet_results"}
    shutil.copytree(planned["raw"], env["nnUNet_raw"] / DATASET)
    shutil.copytree(planned["preprocessed"], env["nnUNet_preprocessed"] / DATASET,
                    ignore=shutil.ignore_patterns("pred"))
    for v in env.values():
        v.mkdir(parents=True, exist_ok=True)
    f = env["nnUNet_preprocessed"] / DATASET / "neonet_plans.json"
    plans = json.loads(f.read_text(encoding="utf-8"))
    plans["configurations"]["seg_tiny"] = TINY
    f.write_text(json.dumps(plans, indent=1), encoding="utf-8")
    return {k: str(v) for k, v in env.items()}


class _Env:
    """Set path variables for a module and restore them afterwards."""

    def __init__(self, env: dict):
        self.env = env
        self.old = {k: os.environ.get(k) for k in ENV_KEYS}

    def __enter__(self):
        for k in ENV_KEYS:
            os.environ.pop(k, None) if k not in self.env else None
        os.environ.update(self.env)
        return self

    def __exit__(self, *exc):
        for k, v in self.old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _sub_env(env: dict, **extra) -> dict:
    e = {k: v for k, v in os.environ.items() if k not in ENV_KEYS}
    e.update(env)
    e.update({"OMP_NUM_THREADS": "1", "nnUNet_n_proc_DA": "1", "nnUNet_def_n_proc": "1", "nnUNet_compile": "f"})
    e.update({k: str(v) for k, v in extra.items()})
    return e


def _bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def _run(cmd, env, timeout=400):
    r = subprocess.run(cmd, env=env, capture_output=True, encoding="utf-8", errors="replace", timeout=timeout)
    assert r.returncode == 0, f"{cmd} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


@pytest.fixture(scope="module")
def trained(planned_phantom, tmp_path_factory):
    """fold 0 of SwinUNETR NeoSeg trained with `neonet_train 501 seg 0 -device cpu --configuration seg_tiny`."""
    import time

    env = _copy_planned(planned_phantom, tmp_path_factory.mktemp("seg_trained"))
    t = time.perf_counter()
    r = _run([_bin("neonet_train"), "501", "seg", "0", "-device", "cpu", "--configuration", "seg_tiny"],
             _sub_env(env))
    seconds = time.perf_counter() - t
    model = Path(env["nnUNet_results"]) / DATASET / "NeoSegTrainer__NeoNetPlans__3d_fullres"
    with _Env(env):
        yield {"env": env, "model": model, "log": r.stdout, "train_seconds": seconds}


def _val_dice(model: Path, cases, pp: Path, untrained_seed: int | None = None) -> dict:
    """Dice per label on the preprocessed grid (no mirroring) for the trained model, or an untrained twin."""
    from neonet_toolkit import paths

    with paths.nnunet_environment():  # nnU-Net finds NeoSegTrainer through nnUNet_extTrainer
        return _val_dice_in_env(model, cases, pp, untrained_seed)


def _val_dice_in_env(model: Path, cases, pp: Path, untrained_seed: int | None) -> dict:
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from neonet_toolkit.training.seg.trainers import NeoSegTrainer

    pred = nnUNetPredictor(tile_step_size=0.5, use_mirroring=False, perform_everything_on_device=False,
                           device=torch.device("cpu"), allow_tqdm=False)
    if untrained_seed is None:
        pred.initialize_from_trained_model_folder(str(model), (0,))
    else:
        pm = PlansManager(str(model / "plans.json"))
        cm = pm.get_configuration("3d_fullres")
        dj = json.loads((model / "dataset.json").read_text(encoding="utf-8"))
        torch.manual_seed(untrained_seed)
        net = NeoSegTrainer.build_network_architecture(pm, cm, 1, 3, False)
        pred.manual_initialization(net, pm, cm, None, dj, "NeoSegTrainer", (0, 1, 2))
    folder = pp / "NeoNetPlans_3d_fullres"
    ds_cls = infer_dataset_class(str(folder))
    tp, fp, fn = np.zeros(3), np.zeros(3), np.zeros(3)
    for c in cases:
        data, seg, _, _ = ds_cls(str(folder), [c]).load_case(c)
        with torch.no_grad():
            logits = pred.predict_sliding_window_return_logits(torch.from_numpy(np.asarray(data[:])))
        p = logits.argmax(0).numpy()
        g = np.asarray(seg[0])
        for lab in (1, 2):
            tp[lab] += np.sum((p == lab) & (g == lab))
            fp[lab] += np.sum((p == lab) & (g != lab))
            fn[lab] += np.sum((p != lab) & (g == lab))
    return {lab: float(2 * tp[lab] / max(2 * tp[lab] + fp[lab] + fn[lab], 1)) for lab in (1, 2)}


# ----------------------------------------------------------------------------- training through neonet_train
def test_seg_neonet_train_writes_nnunet_result_folder_and_learns(trained):
    model = trained["model"]
    fold = model / "fold_0"
    for f in ("checkpoint_final.pth", "progress.png", "validation/summary.json"):
        assert (fold / f).is_file(), f
    for f in ("plans.json", "dataset.json", "dataset_fingerprint.json"):
        assert (model / f).is_file(), f
    plans = json.loads((model / "plans.json").read_text(encoding="utf-8"))
    neoseg = plans["configurations"]["3d_fullres"]["neoseg"]
    assert neoseg["architecture"] == "swinunetr" and neoseg["feature_size"] == 12 and neoseg["window_size"] == 4
    assert plans["configurations"]["3d_fullres"]["batch_size"] == 2
    log = "".join(p.read_text(encoding="utf-8") for p in fold.glob("training_log_*.txt"))
    assert "Epoch 7" in log and "Epoch 8" not in log  # 8 epochs from the tiny configuration
    assert log.count("time estimate (seg):") == 1 and "epoch(s) left" in log  # told once, at the start
    import torch

    ck = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert ck["trainer_name"] == "NeoSegTrainer"
    # out-of-fold masks: nnU-Net's validation of fold 0 holds exactly the fold's validation cases
    from neonet_toolkit.experiment_planning.splits import get_fold, load_splits

    pp = Path(trained["env"]["nnUNet_preprocessed"]) / DATASET
    val = get_fold(load_splits(pp), 0)["val"]
    assert sorted(p.name[:-7] for p in (fold / "validation").glob("*.nii.gz")) == sorted(val)
    # quality bar: clearly better than the same network untrained
    after = _val_dice(model, val, pp)
    before = _val_dice(model, val, pp, untrained_seed=0)
    print(f"\nSwinUNETR tiny config ({trained['train_seconds']:.0f} s incl. validation): liver Dice "
          f"{before[1]:.3f} -> {after[1]:.3f}, tumour {before[2]:.3f} -> {after[2]:.3f}")
    assert after[1] > 0.5 and after[1] > before[1] + 0.3


def test_seg_continue_and_overwrite_rules(trained):
    from neonet_toolkit.run.train import main

    # a finished fold is never silently retrained
    assert main(["501", "seg", "0", "-device", "cpu", "--configuration", "seg_tiny"]) == 2
    # a real nnU-Net checkpoint passes the pre-load safety check (allow-list read off these files)
    from neonet_toolkit.utilities.checkpoints import verify_model_folder

    assert [p.name for p in verify_model_folder(trained["model"], [0])] == ["checkpoint_final.pth"]
    # ... and the allow-list is what such a file needs: numpy scalars/dtypes from nnU-Net's training log,
    # which a plain weights_only=True load refuses
    import torch

    from neonet_toolkit.utilities.checkpoints import NNUNET_CHECKPOINT_GLOBALS

    ck = Path(trained["model"]) / "fold_0" / "checkpoint_final.pth"
    found = set(torch.serialization.get_unsafe_globals_in_checkpoint(str(ck)))
    assert found and found <= {f"{g.__module__}.{g.__qualname__}" for g in NNUNET_CHECKPOINT_GLOBALS}
    with pytest.raises(Exception, match="Weights only load failed"):
        torch.load(ck, map_location="cpu", weights_only=True)


def test_seg_interrupted_overwrite_leaves_no_stale_final(planned_phantom, tmp_path, monkeypatch):
    """`neonet_train DS seg 0 --overwrite` killed mid-run: nnU-Net trains the new fold under a staging folder
    (new-fold_0.overwriting), so the working fold keeps its old checkpoint_final.pth and nothing of the new run
    (never a new checkpoint_latest.pth beside the old final), and nnU-Net's own fold detection is not confused by
    the staging folder (issue 21: the working fold is replaced only once the new model is written and verified)."""
    import nnunetv2.run.run_training as nnunet_run_training
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from neonet_toolkit.training.seg.api import train_seg
    from neonet_toolkit.models.seg import model_folds
    from neonet_toolkit.utilities.identifiers import fold_is_finished

    for k, v in planned_phantom["env"].items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("nnUNet_results", str(tmp_path))
    model = tmp_path / DATASET / "NeoSegTrainer_nnUNet__NeoNetPlans__3d_fullres"
    fold = model / "fold_0"
    fold.mkdir(parents=True)
    torch.save({"network_weights": {"w": torch.ones(1)}}, fold / "checkpoint_final.pth")  # the old model
    with pytest.raises(FileExistsError, match="already holds a finished training"):
        train_seg(501, 0, arch="nnunet", device="cpu")

    def killed(dataset, configuration, fold_, trainer, plans, **kw):
        out = Path(os.environ["nnUNet_results"]) / dataset / f"{trainer}__{plans}__{configuration}" / f"fold_{fold_}"
        assert out != fold and (fold / "checkpoint_final.pth").exists()  # the working fold is left alone
        out.mkdir(parents=True)
        torch.save({"network_weights": {"w": torch.zeros(1)}}, out / "checkpoint_latest.pth")
        raise KeyboardInterrupt

    monkeypatch.setattr(nnunet_run_training, "run_training", killed)
    with pytest.raises(KeyboardInterrupt):
        train_seg(501, 0, arch="nnunet", device="cpu", overwrite=True)
    assert sorted(p.name for p in fold.iterdir()) == ["checkpoint_final.pth"]
    assert torch.load(fold / "checkpoint_final.pth")["network_weights"]["w"].item() == 1.0
    assert fold_is_finished(fold) and model_folds(model) == [0]
    assert (model / "new-fold_0.overwriting").is_dir()
    assert nnUNetPredictor.auto_detect_available_folds(str(model), "checkpoint_final.pth") == [0]


# ----------------------------------------------------------------------------- masks for the next stages
def test_seg_pred_tlcr_patches_from_oof_masks(trained):
    from neonet_toolkit.experiment_planning.splits import get_fold, load_splits
    from neonet_toolkit.preprocessing.patches import load_metadata, load_patch, patch_folder
    from neonet_toolkit.training.seg.masks import build_pred_patches

    pp = Path(trained["env"]["nnUNet_preprocessed"]) / DATASET
    val = get_fold(load_splits(pp), 0)["val"]
    meta = build_pred_patches(501, folds=[0])
    assert sorted(meta["cases"]) == sorted(val)
    gt_meta = load_metadata(patch_folder(pp, "gt"))
    assert meta["crop_size"] == gt_meta["crop_size"] and meta["data_identifier"] == gt_meta["data_identifier"]
    for c in val:
        img, lab = load_patch(patch_folder(pp, "pred"), c)
        gimg, glab = load_patch(patch_folder(pp, "gt"), c)
        assert img.shape == gimg.shape and img.dtype == gimg.dtype == np.float32
        assert lab.shape == glab.shape and lab.dtype == glab.dtype == np.uint8
        rec = meta["cases"][c]
        assert rec["source"] == "pred" and rec["fold"] == 0 and rec["label"] == gt_meta["cases"][c]["label"]
        assert set(gt_meta["cases"][c]) <= set(rec)
    assert load_metadata(patch_folder(pp, "pred"))["cases"].keys() == meta["cases"].keys()
    # asking for folds the model does not have is a clear error
    with pytest.raises(FileNotFoundError, match=r"lacks fold\(s\) \[1, 2, 3, 4\]"):
        build_pred_patches(501)


def test_seg_pred_patch_from_perfect_prediction_equals_gt_patch(trained):
    from neonet_toolkit.preprocessing.patches import load_metadata, load_patch, patch_folder
    from neonet_toolkit.training.seg.masks import build_pred_patches

    raw = Path(trained["env"]["nnUNet_raw"]) / DATASET
    pp = Path(trained["env"]["nnUNet_preprocessed"]) / DATASET
    cases = ["neonetphantom_000", "neonetphantom_007", "neonetphantom_013"]
    meta = build_pred_patches(501, predictions={c: raw / "labelsTr" / f"{c}.nii.gz" for c in cases})
    gt = load_metadata(patch_folder(pp, "gt"))["cases"]
    for c in cases:
        gi, gl = load_patch(patch_folder(pp, "gt"), c)
        pi, pl = load_patch(patch_folder(pp, "pred"), c)
        assert np.array_equal(gi, pi) and np.array_equal(gl, pl), c
        assert gl[1].sum() > 0
        for k in ("start", "bbox_min", "bbox_max", "tumor_voxels", "tumor_clipped"):
            assert meta["cases"][c][k] == gt[c][k], (c, k)
    build_pred_patches(501, folds=[0])  # back to the OOF patches for the other tests


# ----------------------------------------------------------------------------- prediction and evaluation
def test_seg_toolkit_prediction_and_evaluation_table(trained, tmp_path, capsys):
    from neonet_toolkit.inference.seg import predict_folder
    from neonet_toolkit.run.evaluate import main as evaluate_main

    raw = Path(trained["env"]["nnUNet_raw"]) / DATASET
    files = predict_folder(raw / "imagesTs", tmp_path / "pred", dataset=501, device="cpu", use_mirroring=False)
    assert [f.name for f in files] == ["neonetphantom_020.nii.gz", "neonetphantom_021.nii.gz"]
    import SimpleITK as sitk

    for f in files:
        seg = sitk.GetArrayFromImage(sitk.ReadImage(str(f)))
        img = sitk.ReadImage(str(raw / "imagesTs" / f.name.replace(".nii.gz", "_0000.nii.gz")))
        assert seg.shape == sitk.GetArrayFromImage(img).shape and set(np.unique(seg)) <= {0, 1, 2}
        assert (seg == 1).sum() > 1000  # the trained model finds the liver

    capsys.readouterr()
    assert evaluate_main(["501", "seg"]) == 0
    printed = capsys.readouterr().out
    assert "# NeoSeg segmentation (Table 1 shape)" in printed and "seg_dice.csv" in printed
    out = Path(trained["env"]["neonet_results"]) / DATASET / "evaluation" / "seg"
    md = (out / "seg_dice.md").read_text(encoding="utf-8")
    assert "swinunetr" in md and "liver Dice" in md and "tumor Dice" in md
    import csv

    rows = list(csv.DictReader(open(out / "seg_dice_per_fold.csv", encoding="utf-8")))
    summary = json.loads((trained["model"] / "fold_0" / "validation" / "summary.json").read_text(encoding="utf-8"))
    assert len(rows) == 1 and rows[0]["fold"] == "0"
    assert float(rows[0]["dice_liver"]) == pytest.approx(summary["mean"]["1"]["Dice"])
    assert float(rows[0]["mean_dice"]) == pytest.approx(summary["foreground_mean"]["Dice"])
    pooled = trained["model"] / "crossval_results_folds_0" / "summary.json"
    assert pooled.is_file()
    assert json.loads(pooled.read_text(encoding="utf-8"))["foreground_mean"]["Dice"] == pytest.approx(
        summary["foreground_mean"]["Dice"])


def test_seg_reuse_existing_model_maps_labels_by_name(trained, tmp_path):
    """Another group's model whose label ids differ: masks come back in the dataset's ids."""
    import SimpleITK as sitk

    from neonet_toolkit.inference.seg import predict_folder
    from neonet_toolkit.run.train import main as train_main
    from neonet_toolkit.models.seg import registered_model

    ext = tmp_path / "other_group" / "Dataset777_Liver" / "nnUNetTrainer_theirs__nnUNetPlans__3d_fullres"
    shutil.copytree(trained["model"], ext, ignore=shutil.ignore_patterns("crossval_results*"))
    dj = json.loads((ext / "dataset.json").read_text(encoding="utf-8"))
    dj["labels"] = {"background": 0, "Tumour": 1, "LIVER": 2}  # their channel 1 is called Tumour
    (ext / "dataset.json").write_text(json.dumps(dj), encoding="utf-8")
    raw = Path(trained["env"]["nnUNet_raw"]) / DATASET
    try:
        assert train_main(["501", "seg", "0", "--from-model", str(ext)]) == 0
        reg = registered_model(501)
        assert reg["label_map"] == {"0": 0, "1": 2, "2": 1}
        theirs = predict_folder(raw / "imagesTs", tmp_path / "theirs", dataset=501, device="cpu",
                                use_mirroring=False)
        ours = predict_folder(raw / "imagesTs", tmp_path / "ours", model_folder=trained["model"], device="cpu",
                              use_mirroring=False)
        for a, b in zip(theirs, ours):
            sa = sitk.GetArrayFromImage(sitk.ReadImage(str(a)))
            sb = sitk.GetArrayFromImage(sitk.ReadImage(str(b)))
            swapped = np.choose(sb, [0, 2, 1])
            assert np.array_equal(sa, swapped)
        # and the registered model fed pred patches from its own validation folder
        pred_meta = json.loads((Path(trained["env"]["nnUNet_preprocessed"]) / DATASET / "neonet_tlcr" / "pred"
                                / "metadata.json").read_text(encoding="utf-8"))
        assert pred_meta["model_folder"] == str(ext.resolve()) and pred_meta["label_map"] == {"0": 0, "1": 2, "2": 1}
    finally:
        (Path(trained["env"]["neonet_results"]) / DATASET / "neoseg_model.json").unlink(missing_ok=True)
        from neonet_toolkit.training.seg.masks import build_pred_patches

        build_pred_patches(501, folds=[0])


def test_seg_reuse_model_without_organ_label_is_refused(trained, tmp_path):
    from neonet_toolkit.dataset.errors import DatasetError
    from neonet_toolkit.training.seg.masks import register_model

    ext = tmp_path / "m"
    shutil.copytree(trained["model"], ext, ignore=shutil.ignore_patterns("crossval_results*", "validation"))
    dj = json.loads((ext / "dataset.json").read_text(encoding="utf-8"))
    dj["labels"] = {"background": 0, "spleen": 1, "tumor": 2}
    (ext / "dataset.json").write_text(json.dumps(dj), encoding="utf-8")
    with pytest.raises(DatasetError, match="organ"):
        register_model(501, ext, folds=[0], build_patches=False)
    with pytest.raises(FileNotFoundError, match=r"lacks fold\(s\) \[2\]"):
        register_model(501, ext, folds=[2], build_patches=False)


# ----------------------------------------------------------------------------- plain nnU-Net path
@pytest.fixture(scope="module")
def plain_nnunet(planned_phantom, tmp_path_factory):
    env = _copy_planned(planned_phantom, tmp_path_factory.mktemp("seg_plain"))
    f = Path(env["nnUNet_preprocessed"]) / DATASET / "neonet_plans.json"
    plans = json.loads(f.read_text(encoding="utf-8"))
    plans["configurations"]["seg_plain_tiny"] = PLAIN_TINY
    plans["default_configuration"]["cpu"] = "seg_plain_tiny"
    f.write_text(json.dumps(plans, indent=1), encoding="utf-8")
    from neonet_toolkit.training.seg import trainer_dir

    sub = _sub_env(env, nnUNet_extTrainer=trainer_dir())
    _run([_bin("nnUNetv2_train"), "501", "3d_fullres", "0", "-p", "NeoNetPlans", "-tr", "NeoSegTrainer_UNet",
          "-device", "cpu"], sub)
    return {"env": env, "sub": sub,
            "model": Path(env["nnUNet_results"]) / DATASET / "NeoSegTrainer_UNet__NeoNetPlans__3d_fullres"}


def test_seg_plain_nnunet_train_predict_evaluate(plain_nnunet, tmp_path):
    model, sub, env = plain_nnunet["model"], plain_nnunet["sub"], plain_nnunet["env"]
    assert (model / "fold_0" / "checkpoint_final.pth").is_file()
    assert (model / "fold_0" / "validation" / "summary.json").is_file()
    assert json.loads((model / "plans.json").read_text(encoding="utf-8"))["configurations"]["3d_fullres"]["neoseg"][
        "architecture"] == "unet"
    raw = Path(env["nnUNet_raw"]) / DATASET
    _run([_bin("nnUNetv2_predict"), "-i", str(raw / "imagesTs"), "-o", str(tmp_path / "nn"), "-d", "501", "-c",
          "3d_fullres", "-p", "NeoNetPlans", "-tr", "NeoSegTrainer_UNet", "-f", "0", "-device", "cpu",
          "--disable_tta", "-npp", "1", "-nps", "1"], sub)
    # nnUNetv2_evaluate_folder's function, in-process (saves one interpreter start)
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder2

    compute_metrics_on_folder2(str(Path(env["nnUNet_preprocessed"]) / DATASET / "gt_segmentations"),
                               str(model / "fold_0" / "validation"), str(model / "dataset.json"),
                               str(model / "plans.json"), str(tmp_path / "summary.json"), 1, chill=True)
    assert "foreground_mean" in json.loads((tmp_path / "summary.json").read_text(encoding="utf-8"))
    # the toolkit predicts the same masks from the same model
    import SimpleITK as sitk

    with _Env(env):
        from neonet_toolkit.inference.seg import predict_folder

        files = predict_folder(raw / "imagesTs", tmp_path / "tk", model_folder=model, folds=[0], device="cpu",
                               use_mirroring=False)
    assert len(files) == 2
    for f in files:
        a = sitk.GetArrayFromImage(sitk.ReadImage(str(f)))
        b = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "nn" / f.name)))
        assert np.array_equal(a, b)


@pytest.mark.slow
def test_seg_find_best_configuration_runs_on_neoseg_model(plain_nnunet):
    _run([_bin("nnUNetv2_find_best_configuration"), "501", "-c", "3d_fullres", "-tr", "NeoSegTrainer_UNet", "-p",
          "NeoNetPlans", "-f", "0", "-np", "1", "--disable_ensembling"], plain_nnunet["sub"])
    out = Path(plain_nnunet["env"]["nnUNet_results"]) / DATASET / "inference_information.json"
    assert out.is_file()


# ----------------------------------------------------------------------------- lookup, networks, errors
def test_seg_trainers_found_by_nnunet_ext_trainer_lookup(monkeypatch):
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    from neonet_toolkit.training.seg import ensure_trainer_env, trainer_dir
    from neonet_toolkit.training.seg.trainers import TRAINERS

    from neonet_toolkit import paths

    monkeypatch.setenv("nnUNet_extTrainer", "/nonexistent/other")
    value = ensure_trainer_env()
    assert value.split(os.pathsep) == ["/nonexistent/other", str(trainer_dir())]
    assert ensure_trainer_env() == value  # idempotent
    with paths.nnunet_environment():  # NeoNet's nnU-Net calls run in this scope
        for cls in TRAINERS.values():
            found = recursive_find_trainer_class_by_name(cls.__name__)
            assert found.__name__ == cls.__name__ and found.__module__ == "neonet_toolkit.training.seg.trainers"
    assert os.environ["nnUNet_extTrainer"] == "/nonexistent/other"  # restored: no process-wide side effect


@pytest.mark.parametrize("arch", ["swinunetr", "unet", "segresnet", "dynunet", "nnunet"])
def test_seg_networks_from_plans(planned_phantom, arch):
    import torch
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from neonet_toolkit.training.seg.trainers import trainer_for

    pm = PlansManager(str(planned_phantom["preprocessed"] / "NeoNetPlans.json"))
    cm = pm.get_configuration("3d_fullres")
    cm.configuration["neoseg"] = {"architecture": arch, "feature_size": 12, "window_size": 4}
    cls = trainer_for(arch)
    net = cls.build_network_architecture(pm, cm, 1, 3, enable_deep_supervision=False).eval()
    x = torch.zeros(1, 1, *cm.patch_size)
    with torch.no_grad():
        y = net(x)
    assert tuple(y.shape) == (1, 3, *cm.patch_size)
    if arch != "nnunet":
        import monai.networks.nets as mn

        assert type(net).__module__.startswith("monai.networks.nets")
        assert isinstance(net, {"swinunetr": mn.SwinUNETR, "unet": mn.UNet, "segresnet": mn.SegResNet,
                                "dynunet": mn.DynUNet}[arch])


def test_seg_swin_patch_size_errors():
    from neonet_toolkit.training.seg.networks import check_swin_patch_size

    check_swin_patch_size([32, 64, 64])
    with pytest.raises(ValueError, match=r"not multiples of 32.*\[32, 64, 64\]"):
        check_swin_patch_size([24, 64, 64])
    with pytest.raises(ValueError, match="single voxel"):
        check_swin_patch_size([32, 32, 32])


def test_seg_cli_errors(planned_phantom, monkeypatch, capsys):
    from neonet_toolkit.run.train import main

    for k, v in planned_phantom["env"].items():
        monkeypatch.setenv(k, v)
    assert main(["501", "seg", "7", "-device", "cpu"]) == 2
    assert "Fold 7 does not exist" in capsys.readouterr().err
    assert main(["501", "seg", "0", "-device", "cpu", "--arch", "vnet"]) == 2
    err = capsys.readouterr().err
    assert "Unknown NeoSeg architecture 'vnet'" in err and "swinunetr" in err


def test_seg_trainer_refuses_missing_fold(planned_phantom, tmp_path, monkeypatch):
    """Under plain nnUNetv2_train, nnU-Net would silently use a random 80:20 split; NeoSeg refuses."""
    import torch

    for k, v in planned_phantom["env"].items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("nnUNet_results", str(tmp_path))
    from neonet_toolkit.training.seg.trainers import NeoSegTrainer

    plans = json.loads((planned_phantom["preprocessed"] / "NeoNetPlans.json").read_text(encoding="utf-8"))
    plans["continue_training"] = False
    dj = json.loads((planned_phantom["preprocessed"] / "dataset.json").read_text(encoding="utf-8"))
    with pytest.raises(ValueError, match=r"Fold 9 does not exist.*folds 0\.\.4"):
        NeoSegTrainer(plans, "3d_fullres", 9, dj, torch.device("cpu"))


def test_seg_truncated_predicted_mask_is_named_before_any_patch(planned_phantom, tmp_path):
    """SimpleITK zero-fills a truncated mask, which would move the crop (issue #11): the pred patches refuse it
    by name, before any patch is written."""
    from neonet_toolkit.dataset.errors import DatasetError
    from neonet_toolkit.preprocessing.patches import patch_folder
    from neonet_toolkit.training.seg.masks import build_pred_patches

    env = _copy_planned(planned_phantom, tmp_path)
    raw = Path(env["nnUNet_raw"]) / DATASET
    good, bad = "neonetphantom_000", "neonetphantom_007"
    cut = tmp_path / f"{bad}.nii.gz"
    data = (raw / "labelsTr" / f"{bad}.nii.gz").read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with _Env(env):
        with pytest.raises(DatasetError, match=rf"case '{bad}': .*{bad}.nii.gz.*truncated"):
            build_pred_patches(501, predictions={good: raw / "labelsTr" / f"{good}.nii.gz", bad: cut})
    assert not list(patch_folder(Path(env["nnUNet_preprocessed"]) / DATASET, "pred").glob("*.npz"))


def test_seg_time_estimate_from_the_first_iterations():
    from neonet_toolkit.training.seg.trainers import seg_time_estimate

    # start-up 5 s, then 2 s per iteration: 2 s x 250 = 500 s per epoch; x 400 epochs = 55.6 h
    msg = seg_time_estimate([0.0, 5.0, 7.0, 9.0, 11.0], 250, 400)
    assert "2.00 s/iteration" in msg and "8.3 min per epoch" in msg and "55.6 h for the 400 epoch(s)" in msg
