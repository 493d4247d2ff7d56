"""neonet_toolkit.models.seg: model folders, registration record, label mapping, trainer lookup (fast, no training)."""
from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import pytest
import torch

from neonet_toolkit.models.seg import (
    REGISTERED_MODEL_FILE,
    SEG_TRAINER_NAMES,
    check_model_folder,
    default_model_folder,
    label_map_by_name,
    model_folds,
    registered_model,
    seg_trainer_class,
    seg_trainer_name,
)

DATASET = "Dataset501_Phantom"


# ----------------------------------------------------------------------------- label mapping
def test_label_map_by_name_matches_names_case_insensitively_and_tumour_alias():
    model = {"background": 0, "Liver": 3, "Tumour": 7, "ignore": 9}
    target = {"background": 0, "liver": 1, "tumor": 2}
    assert label_map_by_name(model, target) == {0: 0, 3: 1, 7: 2}


def test_label_map_by_name_extra_names_and_unmatched_labels_become_background(caplog):
    model = {"background": 0, "liver": 1, "hepatic_lesion": 2, "spleen": 3}
    target = {"background": 0, "liver": 1, "tumor": 2}
    with caplog.at_level(logging.WARNING, logger="neonet_toolkit.models.seg"):
        out = label_map_by_name(model, target, extra={"Hepatic_Lesion": "tumour"}, where="m")
    assert out == {0: 0, 1: 1, 2: 2, 3: 0}
    assert "['spleen'] have no counterpart" in caplog.text


def test_label_map_by_name_refuses_region_labels():
    with pytest.raises(ValueError, match="region-based label liver"):
        label_map_by_name({"background": 0, "liver": [1, 2]}, {"background": 0, "liver": 1})
    with pytest.raises(ValueError, match="Region-based labels"):
        label_map_by_name({"background": 0}, {"background": 0, "liver": [1, 2]})


# ----------------------------------------------------------------------------- model folders
def _model_folder(root: Path, folds=(0,)) -> Path:
    folder = root / "nnUNet_results" / DATASET / "NeoSegTrainer_nnUNet__NeoNetPlans__3d_fullres"
    folder.mkdir(parents=True)
    for f in ("plans.json", "dataset.json"):
        (folder / f).write_text("{}", encoding="utf-8")
    for k in folds:
        (folder / f"fold_{k}").mkdir()
        torch.save({"network_weights": {"w": torch.ones(2)}}, folder / f"fold_{k}" / "checkpoint_final.pth")
    return folder


def test_model_folds_lists_finished_folds_only(tmp_path):
    folder = _model_folder(tmp_path, folds=(0, "all"))
    (folder / "fold_1").mkdir()                                   # unfinished: no checkpoint_final.pth
    aside = folder / "fold_2.overwriting"                         # moved aside by --overwrite: not a fold
    aside.mkdir()
    (aside / "checkpoint_final.pth").write_bytes(b"x")
    assert model_folds(folder) == [0, "all"]


def test_check_model_folder_verifies_each_checkpoint_unless_the_caller_loads_it(tmp_path, monkeypatch):
    folder = _model_folder(tmp_path, folds=(0, 1))
    loads: Counter = Counter()
    real_load = torch.load

    def counting_load(f, *args, **kwargs):
        loads[Path(f).parent.name] += 1
        return real_load(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", counting_load)
    assert check_model_folder(folder, [0, 1]) == folder
    assert loads == Counter({"fold_0": 1, "fold_1": 1})
    loads.clear()
    assert check_model_folder(folder, [0, 1], verify=False) == folder
    assert not loads
    with pytest.raises(FileNotFoundError, match=r"lacks fold\(s\) \[3\]"):
        check_model_folder(folder, [3], verify=False)


# ----------------------------------------------------------------------------- registration and defaults
@pytest.fixture
def dataset_env(isolated_env):
    (isolated_env / "nnUNet_raw" / DATASET).mkdir()
    return isolated_env


def test_default_model_folder_prefers_the_registered_model(dataset_env):
    own = dataset_env / "nnUNet_results" / DATASET
    assert registered_model(501) is None
    assert default_model_folder(501) == own / "NeoSegTrainer__NeoNetPlans__3d_fullres"
    assert default_model_folder(501, "unet") == own / "NeoSegTrainer_UNet__NeoNetPlans__3d_fullres"
    rec_file = dataset_env / "neonet_results" / DATASET / REGISTERED_MODEL_FILE
    rec_file.parent.mkdir(parents=True)
    rec_file.write_text(json.dumps({"model_folder": "/elsewhere/Dataset777_X/T__P__3d_fullres"}), encoding="utf-8")
    assert registered_model(DATASET)["model_folder"] == "/elsewhere/Dataset777_X/T__P__3d_fullres"
    assert default_model_folder(501) == Path("/elsewhere/Dataset777_X/T__P__3d_fullres")
    # an explicit architecture names NeoSeg's own folder, registered model or not
    assert default_model_folder(501, "nnunet") == own / "NeoSegTrainer_nnUNet__NeoNetPlans__3d_fullres"


def test_seg_trainer_name_refuses_unknown_architecture():
    assert seg_trainer_name("SwinUNETR") == "NeoSegTrainer"
    with pytest.raises(ValueError, match="Unknown NeoSeg architecture 'vit'"):
        seg_trainer_name("vit")


# ----------------------------------------------------------------------------- trainer classes
def test_seg_trainer_names_and_classes_are_the_trainers_own():
    from neonet_toolkit.training.seg.trainers import TRAINERS

    assert SEG_TRAINER_NAMES == {arch: cls.__name__ for arch, cls in TRAINERS.items()}
    for cls in TRAINERS.values():
        assert seg_trainer_class(cls.__name__, "ck") is cls


def test_seg_trainer_class_finds_nnunet_trainers_and_refuses_unknown_names():
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from neonet_toolkit.models.seg import SegCheckpointError

    assert seg_trainer_class("nnUNetTrainer", "ck") is nnUNetTrainer
    with pytest.raises(SegCheckpointError, match="ck records trainer_name 'NoSuchTrainer', which is neither"):
        seg_trainer_class("NoSuchTrainer", "ck")
