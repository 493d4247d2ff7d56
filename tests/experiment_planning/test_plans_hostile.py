"""Hostile plans (issue 21, item 7): names read from plans files never become paths outside the results folders,
and a garbage ``neonet_plans.json`` gives a clear error naming the file and the fix, never a traceback."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from neonet_toolkit.experiment_planning.plans import NeoNetPlans, PlansError, check_nnunet_plans
from neonet_toolkit.utilities.identifiers import UnsafeNameError


def _copy(planned_phantom, root: Path, monkeypatch, raw: bool = False) -> Path:
    """Copy the phantom's preprocessed folder (and raw, if asked) under ``root``; point the variables at it."""
    name = planned_phantom["dataset_name"]
    env = {k: root / k for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "neonet_results")}
    shutil.copytree(planned_phantom["preprocessed"], env["nnUNet_preprocessed"] / name,
                    ignore=shutil.ignore_patterns("NeoNetPlans_3d_fullres", "gt_segmentations", "neonet_tlcr"))
    if raw:
        shutil.copytree(planned_phantom["raw"], env["nnUNet_raw"] / name)
    for k, v in env.items():
        v.mkdir(parents=True, exist_ok=True)
        monkeypatch.setenv(k, str(v))
    return env["nnUNet_preprocessed"] / name


def _edit(file: Path, fn) -> None:
    data = json.loads(file.read_text(encoding="utf-8"))
    fn(data)
    file.write_text(json.dumps(data), encoding="utf-8")


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_plans_name_escaping_the_results_folder_is_refused(planned_phantom, tmp_path, monkeypatch, capsys):
    from neonet_toolkit.run.train import main

    root = tmp_path / "a" / "b" / "c"
    pp = _copy(planned_phantom, root, monkeypatch)
    plans_file = pp / "neonet_plans.json"
    _edit(plans_file, lambda p: p.update(plans_name="../../../x"))
    before = _tree(tmp_path)
    assert main(["501", "vae", "0", "-device", "cpu", "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"'plans_name' '../../../x' in {plans_file} is not a safe folder name" in err
    assert "neonet_plan_and_preprocess -d Dataset501_NeoNetPhantom`" in err
    assert _tree(tmp_path) == before  # nothing written anywhere, inside or outside neonet_results


@pytest.mark.parametrize("key,value", [
    ("plans_name", "a/b"), ("plans_name", "x__y"), ("nnunet_plans", "../NeoNetPlans"),
    ("seg_configuration", "/abs"), ("dataset_name", "../Dataset501_X"),
])
def test_every_name_that_becomes_a_path_is_checked(planned_phantom, key, value):
    plans = json.loads((planned_phantom["preprocessed"] / "neonet_plans.json").read_text(encoding="utf-8"))
    NeoNetPlans(dict(plans))  # the real file passes
    plans[key] = value
    with pytest.raises(UnsafeNameError, match=rf"'{key}' '{value}' .* not a safe folder name"):
        NeoNetPlans(plans)


def test_configuration_names_are_checked(planned_phantom):
    plans = json.loads((planned_phantom["preprocessed"] / "neonet_plans.json").read_text(encoding="utf-8"))
    plans["configurations"]["../mine"] = {"inherits_from": "cpu_small"}
    with pytest.raises(UnsafeNameError, match=r"configuration name '\.\./mine'"):
        NeoNetPlans(plans)


GARBAGE = {
    "not_json": ("{ this is not json", r"is not valid JSON \(.* at line 1, column 3\)"),
    "latin1": (b'{"plans_name": "caf\xe9"}', "is not UTF-8 text"),
    "list": ("[1, 2, 3]", "holds a JSON list, not the NeoNet plans object"),
    "missing_keys": ('{"plans_name": "NeoNetPlans"}', r"lacks \['nnunet_plans', 'seg_configuration'"),
}


@pytest.mark.parametrize("kind", sorted(GARBAGE))
def test_garbage_neonet_plans_is_named_with_the_fix(planned_phantom, tmp_path, monkeypatch, capsys, kind):
    from neonet_toolkit.run.train import main

    pp = _copy(planned_phantom, tmp_path, monkeypatch)
    plans_file = pp / "neonet_plans.json"
    content, pattern = GARBAGE[kind]
    (plans_file.write_bytes if isinstance(content, bytes) else plans_file.write_text)(content)
    with pytest.raises(PlansError, match=pattern):
        NeoNetPlans(plans_file)
    assert main(["501", "vae", "0", "-device", "cpu", "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and str(plans_file) in err
    assert "rerun `neonet_plan_and_preprocess -d Dataset501_NeoNetPhantom`" in err and '"configurations"' in err


@pytest.mark.parametrize("edit,pattern", [
    (lambda p: p.update(configurations=[]), r"'configurations' must be a JSON object"),
    (lambda p: p["configurations"].update(cpu_small=5), r"configuration 'cpu_small' must be a JSON object"),
    (lambda p: p["configurations"]["cpu_small"].update(vae=3), r"configuration 'cpu_small': \['vae'\] must be"),
    (lambda p: p["configurations"]["cpu_small"].update(inherits_from="nope"), r"inherits from 'nope'"),
    (lambda p: p["tlcr"].update(crop_size="big"), r"tlcr\.crop_size must be 3 positive integers"),
    (lambda p: p.update(default_configuration={"cpu": "gone"}), r"default_configuration must map"),
])
def test_wrong_shapes_are_named(planned_phantom, tmp_path, monkeypatch, capsys, edit, pattern):
    from neonet_toolkit.run.train import main

    pp = _copy(planned_phantom, tmp_path, monkeypatch)
    _edit(pp / "neonet_plans.json", edit)
    with pytest.raises(PlansError, match=pattern):
        NeoNetPlans(pp / "neonet_plans.json")
    assert main(["501", "vae", "0", "-device", "cpu", "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and str(pp / "neonet_plans.json") in err


def test_wrong_setting_type_is_a_user_error_not_a_traceback(planned_phantom, tmp_path, monkeypatch, capsys):
    from neonet_toolkit.run.train import main

    pp = _copy(planned_phantom, tmp_path, monkeypatch)
    _edit(pp / "neonet_plans.json", lambda p: p["configurations"]["cpu_small"]["vae"].update(epochs="many"))
    assert main(["501", "vae", "0", "-device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "setting 'epochs' must be int, got 'many'" in err


def test_garbage_plans_refused_by_planning_before_any_work(planned_phantom, tmp_path, monkeypatch):
    import nnunetv2.experiment_planning.plan_and_preprocess_api as api

    from neonet_toolkit.training.planning import plan_and_preprocess

    pp = _copy(planned_phantom, tmp_path, monkeypatch, raw=True)
    monkeypatch.setattr(api, "extract_fingerprint_dataset", lambda *a, **k: pytest.fail("nnU-Net was started"))
    (pp / "neonet_plans.json").write_text("not json", encoding="utf-8")
    with pytest.raises(PlansError, match=r"neonet_plans\.json is not valid JSON"):
        plan_and_preprocess(501, num_processes=1)
    (pp / "neonet_plans.json").unlink()
    (pp / "NeoNetPlans.json").write_text("{", encoding="utf-8")  # nnU-Net's planner would merge into it
    with pytest.raises(PlansError, match=r"NeoNetPlans\.json is not valid JSON.*delete it and rerun"):
        plan_and_preprocess(501, num_processes=1)


@pytest.mark.parametrize("edit,what", [
    (lambda p: p.update(plans_name="../../../x"), "'plans_name'"),
    (lambda p: p.update(dataset_name="../../elsewhere"), "'dataset_name'"),
    (lambda p: p["configurations"]["3d_fullres"].update(data_identifier="../../evil"), "data_identifier"),
])
def test_nnunet_plans_names_refused_before_nnunet_writes(planned_phantom, tmp_path, monkeypatch, edit, what):
    """nnU-Net builds nnUNet_results/<dataset_name>/<Trainer>__<plans_name>__<cfg> (and creates it in the
    trainer's __init__) and nnUNet_preprocessed/<dataset_name>/<data_identifier> from NeoNetPlans.json."""
    import nnunetv2.run.run_training as nnunet_run_training
    import torch

    from neonet_toolkit.training.seg.api import train_seg
    from neonet_toolkit.training.seg.trainers import NeoSegTrainer
    from neonet_toolkit.utilities.io import load_json

    root = tmp_path / "a" / "b" / "c"
    pp = _copy(planned_phantom, root, monkeypatch)
    _edit(pp / "NeoNetPlans.json", edit)
    monkeypatch.setattr(nnunet_run_training, "run_training", lambda *a, **k: pytest.fail("nnU-Net was started"))
    before = _tree(tmp_path)
    with pytest.raises(UnsafeNameError, match=rf"{what} .* not a safe folder name.*delete it and rerun"):
        train_seg(501, 0, arch="unet", device="cpu")
    plans = load_json(pp / "NeoNetPlans.json")
    plans["continue_training"] = False
    with pytest.raises(UnsafeNameError, match=what):
        NeoSegTrainer(plans, "3d_fullres", 0, load_json(pp / "dataset.json"), torch.device("cpu"))
    assert _tree(tmp_path) == before
    with pytest.raises(UnsafeNameError):
        check_nnunet_plans(plans)


def test_identifiers_refuse_unsafe_parts():
    from neonet_toolkit.utilities.identifiers import (
        list_cls_runs,
        nnunet_trainer_folder_name,
        stage_folder_name,
        staging_fold_folder,
    )

    assert stage_folder_name("cls_pattennet_0.5_over", "NeoNetPlans") == "cls_pattennet_0.5_over__NeoNetPlans"
    for bad in ("../x", "a/b", "", ".x", "a__b"):
        with pytest.raises(UnsafeNameError):
            stage_folder_name("vae", bad)
        with pytest.raises(UnsafeNameError):
            stage_folder_name(bad, "NeoNetPlans")
        with pytest.raises(UnsafeNameError):
            nnunet_trainer_folder_name("NeoSegTrainer", "NeoNetPlans", bad)
    with pytest.raises(UnsafeNameError):
        list_cls_runs(Path("."), plans_name="*")
    assert staging_fold_folder(Path("r/vae__P/fold_3")).name == "fold_3.overwriting"
