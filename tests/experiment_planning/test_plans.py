"""experiment_planning/plans.py + settings.py: presets, inherits_from resolution, typed settings refusal.

Fast: plans built in memory from a hand-written nnU-Net plans dict (no dataset, no planning)."""
from __future__ import annotations

import dataclasses

import pytest

from neonet_toolkit.experiment_planning.plans import (
    NeoNetPlans,
    PlansError,
    build_neonet_plans,
    crop_xyz_to_array_order,
    gpu_full_settings,
    max_unet_levels,
    paper_cls_settings,
    paper_seg_settings,
)
from neonet_toolkit.experiment_planning.settings import STAGE_SETTINGS, SettingTypeError, validate_stage

NN_PLANS = {"transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
            "configurations": {"3d_fullres": {"spacing": [3.0, 1.5, 1.5]}}}


def _plans(**extra_confs) -> dict:
    p = build_neonet_plans(dataset_name="Dataset501_X", target="PNI", label_roles={}, nnunet_plans=NN_PLANS,
                           nnunet_plans_name="NeoNetPlans", seg_configuration="3d_fullres",
                           crop_size_xyz=[96, 96, 48])
    p["configurations"].update(extra_confs)
    return p


def test_presets_hold_every_setting_of_every_stage():
    plans = NeoNetPlans(_plans())
    for conf in ("gpu_full", "cpu_small"):
        for stage, cls in STAGE_SETTINGS.items():
            s = plans.settings(stage, conf)
            assert isinstance(s, cls) and dataclasses.is_dataclass(s)
            assert plans.stage(stage, conf) == dataclasses.asdict(s)
    assert plans.default_configuration("cpu") == "cpu_small"
    assert plans.default_configuration("cuda:0") == "gpu_full"
    assert paper_seg_settings() == gpu_full_settings()["seg"] and paper_cls_settings() == gpu_full_settings()["cls"]
    assert plans.stage("cls")["early_stopping"] == "nested"  # the default protocol is the plans'


def test_crop_latent_and_levels_are_derived_once():
    p = _plans()
    assert p["tlcr"]["crop_size"] == [48, 96, 96] and p["tlcr"]["crop_size_xyz"] == [96, 96, 48]
    assert p["latent"]["latent_shape"] == [12, 24, 24] and p["latent"]["ldm_levels"] == 3
    assert crop_xyz_to_array_order([96, 80, 48], [2, 1, 0]) == [96, 80, 48]
    assert max_unet_levels([12, 24, 24], cap=5) == 3 and max_unet_levels([5, 8, 8], cap=3) == 1


def test_inherits_from_merges_stage_by_stage():
    mine = {"inherits_from": "cpu_small", "cls": {"epochs": 5}, "seg": {"epochs": 1}}
    deeper = {"inherits_from": "mine", "cls": {"lr": 0.5}}
    plans = NeoNetPlans(_plans(mine=mine, deeper=deeper))
    small, gpu = plans.stage("cls", "cpu_small"), plans.stage("cls", "gpu_full")
    got = plans.stage("cls", "deeper")
    assert got == {**small, "epochs": 5, "lr": 0.5}
    assert got["architecture"] == gpu["architecture"]  # from gpu_full through cpu_small
    assert plans.stage("seg", "mine")["epochs"] == 1
    assert plans.configuration("deeper")["name"] == "deeper"
    assert plans.stage("vae", "deeper") == plans.stage("vae", "cpu_small")


def test_inherits_from_refusals():
    with pytest.raises(PlansError, match="inherits from 'nowhere', which is not one of its configurations"):
        NeoNetPlans(_plans(bad={"inherits_from": "nowhere"}))
    loop = NeoNetPlans(_plans(a={"inherits_from": "b"}, b={"inherits_from": "a"}))
    with pytest.raises(ValueError, match="circular inherits_from"):
        loop.stage("cls", "a")
    with pytest.raises(KeyError, match="Configuration 'missing' is not in neonet_plans.json"):
        loop.configuration("missing")


def test_typed_settings_refuse_unknown_missing_and_wrong_types():
    cls = gpu_full_settings()["cls"]
    with pytest.raises(KeyError, match=r"configuration 'mine', stage 'cls': unknown setting\(s\) \['epoch'\]"):
        validate_stage("cls", {**cls, "epoch": 3}, "mine")
    without_lr = {k: v for k, v in cls.items() if k != "lr"}
    with pytest.raises(KeyError, match=r"missing setting\(s\) \['lr'\]"):
        validate_stage("cls", without_lr, "mine")
    with pytest.raises(SettingTypeError, match="setting 'epochs' must be int, got 'ten'"):
        validate_stage("cls", {**cls, "epochs": "ten"}, "mine")
    with pytest.raises(SettingTypeError, match="setting 'epochs' must be int, got True"):
        validate_stage("cls", {**cls, "epochs": True}, "mine")
    with pytest.raises(SettingTypeError, match="must be a JSON object"):
        validate_stage("cls", [1, 2], "mine")
    assert validate_stage("cls", {**cls, "epochs": 10.0}, "mine").epochs == 10.0  # JSON 10.0 is an int
    assert validate_stage("my_stage", {"anything": 1}) == {"anything": 1}  # user extensions pass through
    plans = NeoNetPlans(_plans(mine={"inherits_from": "gpu_full", "cls": {"dropuot": 0.1}}))
    with pytest.raises(KeyError, match="dropuot"):
        plans.stage("cls", "mine")
    with pytest.raises(dataclasses.FrozenInstanceError):
        plans.settings("cls", "gpu_full").lr = 1.0
