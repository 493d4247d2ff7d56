"""No code from the preprocessed folder (issue 21, item 1): a properties pickle carrying a payload is refused by
every NeoNet command that would unpickle it (planning's patch re-extraction, NeoSeg training through nnU-Net,
predicted-mask patches), by file name and with the fix, and the payload never runs."""
from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import pytest

from neonet_toolkit.utilities.safe_pickle import UnsafePickleError, load_pickle

DATA = "NeoNetPlans_3d_fullres"


class Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _copy_and_plant(planned_phantom, root: Path, monkeypatch) -> dict:
    """Copy raw + preprocessed of the planned phantom, point the path variables at the copy, plant a payload
    in one case's properties file and delete that case's TLCR patch (so planning re-extracts it)."""
    name = planned_phantom["dataset_name"]
    env = {"nnUNet_raw": root / "raw", "nnUNet_preprocessed": root / "preprocessed",
           "nnUNet_results": root / "nnunet_results", "neonet_results": root / "neonet_results"}
    shutil.copytree(planned_phantom["raw"], env["nnUNet_raw"] / name)
    shutil.copytree(planned_phantom["preprocessed"], env["nnUNet_preprocessed"] / name)
    for k, v in env.items():
        v.mkdir(parents=True, exist_ok=True)
        monkeypatch.setenv(k, str(v))
    pp = env["nnUNet_preprocessed"] / name
    case = "neonetphantom_004"
    victim = pp / DATA / f"{case}.pkl"
    marker = root / "MARKER"
    props = load_pickle(victim)
    props["sitk_stuff"]["comment"] = Payload(marker)
    with open(victim, "wb") as fh:
        pickle.dump(props, fh)
    (pp / "neonet_tlcr" / "gt" / f"{case}.npz").unlink()
    return {"pp": pp, "victim": victim, "marker": marker, "case": case, "raw": env["nnUNet_raw"] / name}


def test_plan_and_preprocess_refuses_planted_properties(planned_phantom, tmp_path, monkeypatch, capsys):
    from neonet_toolkit.run.plan_and_preprocess import main

    c = _copy_and_plant(planned_phantom, tmp_path, monkeypatch)
    rc = main(["-d", "501", "-np", "1", "--no_resource_estimates"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert f"{c['victim']}: it references" in err and "system" in err
    assert f"delete {c['pp'] / DATA}" in err and "neonet_plan_and_preprocess -d Dataset501_NeoNetPhantom`" in err
    assert not c["marker"].exists()
    # the API raises the named error too (nothing was unpickled in between)
    from neonet_toolkit.training.planning import plan_and_preprocess

    with pytest.raises(UnsafePickleError, match=c["case"]):
        plan_and_preprocess(501, num_processes=1)
    assert not c["marker"].exists()


def test_neoseg_training_refuses_before_nnunet_starts(planned_phantom, tmp_path, monkeypatch):
    import nnunetv2.run.run_training as nnunet_run_training
    import torch

    from neonet_toolkit.training.seg.api import train_seg
    from neonet_toolkit.training.seg.trainers import NeoSegTrainer
    from neonet_toolkit.utilities.io import load_json

    c = _copy_and_plant(planned_phantom, tmp_path, monkeypatch)

    def nnunet_started(*a, **k):
        raise AssertionError("nnU-Net was started on a folder holding a planted pickle")

    monkeypatch.setattr(nnunet_run_training, "run_training", nnunet_started)
    with pytest.raises(UnsafePickleError, match=rf"(?s){c['case']}\.pkl: it references .*system"):
        train_seg(501, 0, arch="unet", device="cpu")
    # the plain nnU-Net path (`nnUNetv2_train ... -tr NeoSegTrainer`) builds the trainer itself: it refuses too
    plans = load_json(c["pp"] / "NeoNetPlans.json")
    plans["continue_training"] = False  # as nnU-Net's get_trainer_from_args passes it
    with pytest.raises(UnsafePickleError, match=c["case"]):
        NeoSegTrainer(plans, "3d_fullres", 0, load_json(c["pp"] / "dataset.json"), torch.device("cpu"))
    assert not c["marker"].exists()


def test_pred_patches_refuse_planted_properties(planned_phantom, tmp_path, monkeypatch):
    from neonet_toolkit.training.seg.masks import build_pred_patches

    c = _copy_and_plant(planned_phantom, tmp_path, monkeypatch)
    labels = sorted((c["raw"] / "labelsTr").iterdir())
    predictions = {p.name.split(".")[0]: p for p in labels}  # the ground truth as a perfect "prediction"
    with pytest.raises(UnsafePickleError, match=c["case"]):
        build_pred_patches(501, predictions=predictions)
    assert not c["marker"].exists()
    assert not (c["pp"] / "neonet_tlcr" / "pred").exists()
