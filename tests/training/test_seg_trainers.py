"""NeoSeg trainer settings: only the plans (a configuration selected with --configuration, a run's epoch budget
resolved as a configuration inheriting from it), never environment variables. Fast: no training."""
from __future__ import annotations

import json
import os

import pytest
import torch

from neonet_toolkit.experiment_planning.plans import NEONET_PLANS_FILE, NeoNetPlans, PlansError
from neonet_toolkit.experiment_planning.settings import SettingTypeError
from neonet_toolkit.training.seg.trainers import (
    NeoSegTrainer_UNet,
    read_run_configuration,
    resolve_seg_settings,
    run_configuration_file,
    seg_overrides,
    write_run_configuration,
)
from neonet_toolkit.utilities.io import load_json

OLD_ENV = {"NEONET_SEG_CONFIGURATION": "gpu_full", "NEONET_SEG_EPOCHS": "3", "NEONET_SEG_ITERATIONS": "7",
           "NEONET_SEG_VAL_ITERATIONS": "5"}


def test_settings_come_from_the_plans_not_the_environment(phantom_env, monkeypatch):
    plans = NeoNetPlans(phantom_env["preprocessed"] / NEONET_PLANS_FILE)
    for k, v in OLD_ENV.items():
        monkeypatch.setenv(k, v)
    s = resolve_seg_settings(phantom_env["dataset_name"], "cpu")
    assert s["neonet_configuration"] == "cpu_small"
    assert {k: s[k] for k in plans.stage("seg", "cpu_small")} == plans.stage("seg", "cpu_small")
    s = resolve_seg_settings(phantom_env["dataset_name"], "cpu", "gpu_full", {"epochs": 2})
    assert s["neonet_configuration"] == "gpu_full" and s["epochs"] == 2
    assert s["iterations_per_epoch"] == plans.stage("seg", "gpu_full")["iterations_per_epoch"]


def test_run_overrides_go_through_the_typed_settings(phantom_env):
    with pytest.raises(SettingTypeError, match="'epochs' must be int"):
        resolve_seg_settings(phantom_env["dataset_name"], "cpu", None, {"epochs": "many"})
    with pytest.raises(KeyError, match="Configuration 'nope' is not in neonet_plans.json"):
        resolve_seg_settings(phantom_env["dataset_name"], "cpu", "nope")
    with pytest.raises(ValueError, match="--iterations 0 is out of range"):
        seg_overrides(iterations=0)
    with pytest.raises(ValueError, match="--epochs '3' must be an integer"):
        seg_overrides(epochs="3")
    assert seg_overrides(epochs=0, val_iterations=2) == {"epochs": 0, "val_iterations_per_epoch": 2}


def test_run_record_roundtrip_and_damage(tmp_path):
    assert read_run_configuration(tmp_path, 0) == {"inherits_from": None, "seg": {}}
    f = write_run_configuration(tmp_path, 1, "cpu_small", {"epochs": 1})
    assert f == run_configuration_file(tmp_path, 1) and not f.name.startswith("fold_")
    assert read_run_configuration(tmp_path, 1) == {"inherits_from": "cpu_small", "seg": {"epochs": 1}}
    f.write_text(json.dumps({"inherits_from": "cpu_small", "seg": {"lr": 1}}), encoding="utf-8")
    with pytest.raises(PlansError, match=r"neoseg_configuration_fold_1\.json must be .*Delete it and rerun"):
        read_run_configuration(tmp_path, 1)


def test_trainer_reads_the_configuration_train_seg_recorded(phantom_env, monkeypatch, tmp_path):
    """The channel nnU-Net's run_training (and its DDP workers) leaves us: the record beside the fold."""
    monkeypatch.setenv("nnUNet_results", str(tmp_path))  # the session phantom's folders stay untouched
    monkeypatch.setenv("NEONET_SEG_EPOCHS", "9")  # ignored
    pp = phantom_env["preprocessed"]
    model = tmp_path / phantom_env["dataset_name"] / "NeoSegTrainer_UNet__NeoNetPlans__3d_fullres"
    write_run_configuration(model, 0, "cpu_small", {"epochs": 2, "iterations_per_epoch": 3})
    nn_plans = {**load_json(pp / "NeoNetPlans.json"), "continue_training": False}  # as run_training passes them
    tr = NeoSegTrainer_UNet(nn_plans, "3d_fullres", 0, load_json(pp / "dataset.json"), torch.device("cpu"))
    assert (tr.num_epochs, tr.num_iterations_per_epoch) == (2, 3)
    cpu_small = NeoNetPlans(pp / NEONET_PLANS_FILE).stage("seg", "cpu_small")
    assert tr.num_val_iterations_per_epoch == cpu_small["val_iterations_per_epoch"]
    assert tr.neoseg_settings["neonet_configuration"] == "cpu_small"


def test_train_seg_records_configuration_and_budget_before_nnunet_starts(phantom_env, monkeypatch, tmp_path):
    import nnunetv2.run.run_training as nnunet_run_training

    from neonet_toolkit.training.seg.api import train_seg

    monkeypatch.setenv("nnUNet_results", str(tmp_path))  # the session phantom's folders stay untouched
    seen = {}

    def run_training(dataset, configuration, fold, trainer, plans, **kw):
        model = tmp_path / dataset / f"{trainer}__{plans}__{configuration}"
        seen["record"] = read_run_configuration(model, fold)
        seen["env"] = sorted(k for k in os.environ if k.startswith("NEONET_SEG_"))

    monkeypatch.setattr(nnunet_run_training, "run_training", run_training)
    train_seg(501, 0, arch="unet", device="cpu", configuration="cpu_small", epochs=1, iterations=2)
    assert seen == {"record": {"inherits_from": "cpu_small", "seg": {"epochs": 1, "iterations_per_epoch": 2}},
                    "env": []}
    with pytest.raises(ValueError, match="--val-iterations 0 is out of range"):
        train_seg(501, 0, arch="unet", device="cpu", val_iterations=0)
