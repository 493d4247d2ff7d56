"""Hostile checkpoints (issue 21, item 10): NeoNet's own checkpoints with a payload or truncated, ``--overwrite``
that must keep the working fold until the new one is verified, and NeoSeg checkpoints that are not what the
model folder says (edited trainer name, a classifier fold given as a segmentation model)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from neonet_toolkit.utilities.checkpoints import UnsafeCheckpointError, load_checkpoint, save_checkpoint


class Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _no_weights_only_advice(msg: str) -> None:
    assert "weights_only" not in msg and "weights only" not in msg.lower()


# ----------------------------------------------------------------------------- NeoNet's own checkpoints
def test_vae_checkpoint_with_payload_is_refused_by_name(isolated_env):
    from neonet_toolkit.networks.generative import load_fold_vae

    fold = isolated_env / "neonet_results" / "Dataset501_X" / "vae__NeoNetPlans" / "fold_0"
    fold.mkdir(parents=True)
    marker = isolated_env / "MARKER"
    torch.save({"network": {"w": torch.ones(2)}, "config": {}, "extra": Payload(marker)},
               fold / "checkpoint_final.pth")
    with pytest.raises(UnsafeCheckpointError) as e:
        load_fold_vae("Dataset501_X", 0)
    msg = str(e.value)
    assert msg.startswith(f"Refused to load {fold / 'checkpoint_final.pth'}: it references ['posix.system']")
    assert "nothing in it was loaded" in msg and "`neonet_train Dataset501_X vae 0 --overwrite`" in msg
    _no_weights_only_advice(msg)
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage", "not_a_dict"])
def test_damaged_classifier_checkpoint_is_refused_by_name(isolated_env, damage, capsys):
    from neonet_toolkit.run.common import run_cli
    from neonet_toolkit.models.cls import load_fold_classifier

    fold = isolated_env / "neonet_results" / "Dataset501_X" / "cls_pattennet_1_esnested__NeoNetPlans" / "fold_2"
    ck = fold / "checkpoint_final.pth"
    save_checkpoint({"network": {"w": torch.ones(500)}, "extra": {"finished": True}}, ck)
    data = ck.read_bytes()
    if damage == "truncated":
        ck.write_bytes(data[: len(data) // 2])
    elif damage == "empty":
        ck.write_bytes(b"")
    elif damage == "garbage":
        ck.write_bytes(b"PK\x03\x04 not really a zip")
    else:
        torch.save([1, 2, 3], ck)
    with pytest.raises(UnsafeCheckpointError) as e:
        load_fold_classifier("Dataset501_X", "cls_pattennet_1_esnested", 2)
    msg = str(e.value)
    assert msg.startswith(f"Refused to load {ck}: ")
    assert "`neonet_train Dataset501_X cls 2 --overwrite` with the options that made cls_pattennet_1_esnested" in msg
    _no_weights_only_advice(msg)
    # a command reports it as one line, exit code 2, no traceback
    assert run_cli(lambda _: load_checkpoint(ck), None) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: Refused to load {ck}") and "Traceback" not in err
    _no_weights_only_advice(err)


def test_load_never_passes_on_torchs_weights_only_advice(tmp_path):
    """torch's own refusal text advises weights_only=False, the one thing a user must not do."""
    from neonet_toolkit.utilities.checkpoints import verify_checkpoint

    ck = tmp_path / "checkpoint_final.pth"
    torch.save({"w": torch.ones(2), "p": Path("x")}, ck)  # a global torch's weights-only loader refuses
    with pytest.raises(Exception, match="weights_only"):
        torch.load(ck, weights_only=True)
    for load in (load_checkpoint, verify_checkpoint):
        with pytest.raises(UnsafeCheckpointError, match=r"pathlib") as e:
            load(ck)
        _no_weights_only_advice(str(e.value))
    ck.write_bytes(ck.read_bytes()[:200])
    for load in (load_checkpoint, verify_checkpoint):
        with pytest.raises(UnsafeCheckpointError, match="truncated|not a readable") as e:
            load(ck)
        _no_weights_only_advice(str(e.value))


# ----------------------------------------------------------------------------- --overwrite keeps the working fold
@pytest.fixture
def toy_env(phantom_env, tmp_path, monkeypatch):
    """The planned phantom (read only) with a private neonet_results."""
    monkeypatch.setenv("neonet_results", str(tmp_path / "neonet_results"))
    return tmp_path / "neonet_results"


def _toy_trainer_class():
    from neonet_toolkit.training.base import NeoNetTrainer

    class ToyTrainer(NeoNetTrainer):
        """One weight set to ``value`` each epoch; ``crash_at`` simulates a kill (KeyboardInterrupt)."""

        stage = "vae"
        stage_dir = "toyoverwrite"

        def __init__(self, *a, value: float = 1.0, crash_at: int | None = None, **k):
            super().__init__(*a, **k)
            self.value, self.crash_at = value, crash_at

        def build(self):
            self.network = torch.nn.Linear(2, 1)
            self.optimizer = torch.optim.SGD(self.network.parameters(), lr=0.1)

        def train_epoch(self, epoch):
            if self.crash_at is not None and epoch >= self.crash_at:
                raise KeyboardInterrupt
            with torch.no_grad():
                self.network.weight.fill_(self.value)
            return {"train_loss": 0.0}

    return ToyTrainer


def _weight(folder: Path) -> float:
    return float(load_checkpoint(folder / "checkpoint_final.pth")["network"]["weight"][0, 0])


def test_overwrite_keeps_the_working_fold_until_the_new_one_is_verified(toy_env, monkeypatch):
    from neonet_toolkit.training import base
    from neonet_toolkit.utilities.identifiers import fold_is_finished

    Toy = _toy_trainer_class()
    kw = dict(dataset=501, fold=0, device="cpu", epochs=2)
    fold = Toy(**kw, value=1.0).run()
    assert fold.name == "fold_0" and fold_is_finished(fold) and _weight(fold) == 1.0
    snapshot = {p.name: p.read_bytes() for p in fold.iterdir()}
    staging = fold.with_name("fold_0.overwriting")

    # 1) killed during the new training: the working fold is untouched (not moved, not deleted)
    with pytest.raises(KeyboardInterrupt):
        Toy(**kw, value=2.0, crash_at=1, overwrite=True).run()
    assert {p.name: p.read_bytes() for p in fold.iterdir()} == snapshot
    assert (staging / "checkpoint_latest.pth").is_file() and not fold_is_finished(staging)

    # 2) the new final checkpoint does not verify (written damaged): refused, the working fold still untouched
    real_save = base.save_checkpoint

    def damaged_final(state, path):
        real_save(state, path)
        if Path(path).name == "checkpoint_final.pth":
            Path(path).write_bytes(Path(path).read_bytes()[:64])

    with monkeypatch.context() as m:  # (undo only this patch: the path variables stay set)
        m.setattr(base, "save_checkpoint", damaged_final)
        with pytest.raises(UnsafeCheckpointError, match=r"Refused to load .*fold_0\.overwriting/checkpoint_final"):
            Toy(**kw, value=3.0, overwrite=True).run()
    assert {p.name: p.read_bytes() for p in fold.iterdir()} == snapshot

    # 3) a verified new model takes the fold's place; the previous one is kept aside; no staging folder is left
    out = Toy(**kw, value=4.0, overwrite=True).run()
    assert out == fold and _weight(fold) == 4.0
    aside = [p for p in fold.parent.iterdir() if p.name.startswith("fold_0.replaced-")]
    assert len(aside) == 1 and _weight(aside[0]) == 1.0
    assert not staging.exists()
    assert "new model verified and in place" in (fold / "training_log.txt").read_text(encoding="utf-8")


def test_continue_after_an_interrupted_overwrite_continues_the_working_fold(toy_env, caplog):
    Toy = _toy_trainer_class()
    kw = dict(dataset=501, fold=0, device="cpu", epochs=2)
    fold = Toy(**kw, value=1.0).run()
    with pytest.raises(KeyboardInterrupt):
        Toy(**kw, value=2.0, crash_at=0, overwrite=True).run()
    Toy(**kw, value=5.0, continue_training=True).run()
    assert _weight(fold) == 1.0  # finished: nothing more to train, the working fold is the one continued
    assert "left from an interrupted --overwrite" in caplog.text


def test_seg_overwrite_replaces_the_fold_only_after_the_new_checkpoint_verifies(planned_phantom, tmp_path,
                                                                                monkeypatch):
    """NeoSeg (nnU-Net) --overwrite: nnU-Net trains under a staging results folder; a new checkpoint that does not
    verify leaves the working fold as it was; a verified one takes its place (old fold moved aside)."""
    import nnunetv2.run.run_training as nnunet_run_training

    from neonet_toolkit.training.seg.api import train_seg
    from neonet_toolkit.models.seg import model_folds
    from neonet_toolkit.utilities.checkpoints import load_verified_checkpoint

    for k, v in planned_phantom["env"].items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("nnUNet_results", str(tmp_path))
    model = tmp_path / planned_phantom["dataset_name"] / "NeoSegTrainer_nnUNet__NeoNetPlans__3d_fullres"
    fold = model / "fold_0"
    fold.mkdir(parents=True)
    torch.save({"network_weights": {"w": torch.ones(1)}, "trainer_name": "NeoSegTrainer_nnUNet",
                "init_args": {"configuration": "3d_fullres"}}, fold / "checkpoint_final.pth")
    old = (fold / "checkpoint_final.pth").read_bytes()
    seen = {}

    def nnunet(final_state):
        def run_training(dataset, configuration, fold_, trainer, plans, **kw):
            seen["replaces"] = os.environ.get("NEONET_SEG_REPLACES")
            out = Path(os.environ["nnUNet_results"]) / dataset / f"{trainer}__{plans}__{configuration}" / f"fold_{fold_}"
            out.mkdir(parents=True)
            (out.parent / "plans.json").write_text('{"new": true}', encoding="utf-8")
            if final_state is None:
                (out / "checkpoint_final.pth").write_bytes(b"PK\x03\x04 damaged")
            else:
                torch.save(final_state, out / "checkpoint_final.pth")
        return run_training

    monkeypatch.setattr(nnunet_run_training, "run_training", nnunet(None))
    with pytest.raises(UnsafeCheckpointError, match=r"new-fold_0\.overwriting/.*/fold_0/checkpoint_final\.pth"):
        train_seg(501, 0, arch="nnunet", device="cpu", overwrite=True)
    assert seen["replaces"] == str(model)  # the trainer checks the new fold's network against the model's folds
    assert (fold / "checkpoint_final.pth").read_bytes() == old and model_folds(model) == [0]
    assert not (model / "plans.json").exists()

    new_state = {"network_weights": {"w": torch.zeros(1)}, "trainer_name": "NeoSegTrainer_nnUNet",
                 "init_args": {"configuration": "3d_fullres"}, "logging": {"x": [np.float64(1)]}}
    monkeypatch.setattr(nnunet_run_training, "run_training", nnunet(new_state))
    assert train_seg(501, 0, arch="nnunet", device="cpu", overwrite=True) == fold
    assert load_verified_checkpoint(fold / "checkpoint_final.pth")["network_weights"]["w"].item() == 0.0
    aside = [p for p in model.iterdir() if p.name.startswith("old-fold_0.replaced-")]
    assert len(aside) == 1 and (aside[0] / "checkpoint_final.pth").read_bytes() == old
    assert not (model / "new-fold_0.overwriting").exists() and model_folds(model) == [0]
    assert (model / "plans.json").read_text(encoding="utf-8") == '{"new": true}'  # nnU-Net's files taken over


# ----------------------------------------------------------------------------- NeoSeg checkpoints
@pytest.fixture
def seg_model(planned_phantom, tmp_path):
    """A NeoSeg model folder (nnU-Net's U-Net trainer) built from the phantom's plans, with a real state dict."""
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from neonet_toolkit.training.seg.trainers import NeoSegTrainer_nnUNet
    from neonet_toolkit.utilities.io import load_json

    pp = planned_phantom["preprocessed"]
    folder = tmp_path / "NeoSegTrainer_nnUNet__NeoNetPlans__3d_fullres"
    (folder / "fold_0").mkdir(parents=True)
    shutil.copy(pp / "NeoNetPlans.json", folder / "plans.json")
    shutil.copy(pp / "dataset.json", folder / "dataset.json")
    pm = PlansManager(str(folder / "plans.json"))
    cm = pm.get_configuration("3d_fullres")
    dj = load_json(folder / "dataset.json")
    net = NeoSegTrainer_nnUNet.build_network_architecture(pm, cm, determine_num_input_channels(pm, cm, dj),
                                                          pm.get_label_manager(dj).num_segmentation_heads, False)
    state = {"network_weights": net.state_dict(), "optimizer_state": {"state": {}, "param_groups": []},
             "grad_scaler_state": None, "logging": {}, "_best_ema": None, "current_epoch": 1,
             "init_args": {"plans": {}, "configuration": "3d_fullres", "fold": 0, "dataset_json": {},
                           "device": torch.device("cpu")},
             "trainer_name": "NeoSegTrainer_nnUNet", "inference_allowed_mirroring_axes": (0, 1, 2)}
    torch.save(state, folder / "fold_0" / "checkpoint_final.pth")
    return folder, state


def _init(folder: Path):
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from neonet_toolkit.models.seg import initialize_predictor

    predictor = nnUNetPredictor(device=torch.device("cpu"), perform_everything_on_device=False, allow_tqdm=False)
    initialize_predictor(predictor, folder, [0])
    return predictor


def _rewrite(folder: Path, state: dict) -> Path:
    ck = folder / "fold_0" / "checkpoint_final.pth"
    torch.save(state, ck)
    return ck


def test_seg_checkpoint_with_edited_trainer_name_is_named(seg_model, capsys):
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from neonet_toolkit.models.seg import initialize_predictor
    from neonet_toolkit.run.common import run_cli
    from neonet_toolkit.models.seg import SegCheckpointError

    folder, state = seg_model
    assert _init(folder).trainer_name == "NeoSegTrainer_nnUNet"  # the untouched model loads
    # edited to another existing class (SwinUNETR): its network does not fit the weights
    ck = _rewrite(folder, {**state, "trainer_name": "NeoSegTrainer"})
    with pytest.raises(SegCheckpointError, match=rf"The weights in {ck} do not fit the NeoSegTrainer network built "
                                                 r"from .*plans\.json .*edited or belongs to another model"):
        _init(folder)
    assert run_cli(lambda _: _init(folder), None) == 2 and "Traceback" not in capsys.readouterr().err
    # edited to a name no trainer has
    _rewrite(folder, {**state, "trainer_name": "NoSuchTrainer"})
    with pytest.raises(SegCheckpointError, match=rf"{ck} records trainer_name 'NoSuchTrainer', which is neither a "
                                                 r"NeoSeg trainer .* nor an nnU-Net trainer class"):
        _init(folder)
    # edited to something that is not a class name at all
    _rewrite(folder, {**state, "trainer_name": "os.system"})
    with pytest.raises(SegCheckpointError, match=r"records trainer_name 'os\.system', which is not a class name"):
        _init(folder)
    # folds that disagree
    (folder / "fold_1").mkdir()
    _rewrite(folder, state)
    torch.save({**state, "trainer_name": "NeoSegTrainer_UNet"}, folder / "fold_1" / "checkpoint_final.pth")
    with pytest.raises(SegCheckpointError, match="record different trainers"):
        initialize_predictor(nnUNetPredictor(device=torch.device("cpu"), perform_everything_on_device=False),
                             folder, [0, 1])


def test_classifier_checkpoint_given_as_seg_model_says_what_it_is(seg_model, capsys):
    from neonet_toolkit.run.common import run_cli
    from neonet_toolkit.models.seg import SegCheckpointError

    folder, _ = seg_model
    ck = _rewrite(folder, {"network": {"w": torch.ones(2)}, "epoch": 3, "stage": "cls", "fold": 0,
                           "dataset_name": "Dataset501_NeoNetPhantom", "config": {}, "extra": {"finished": True}})
    with pytest.raises(SegCheckpointError) as e:
        _init(folder)
    msg = str(e.value)
    assert msg.startswith(f"{ck} is a NeoNet 'cls' checkpoint (dataset Dataset501_NeoNetPhantom, fold 0), not a "
                          "NeoSeg/nnU-Net segmentation checkpoint")
    assert "-m/--seg-model expects an nnU-Net model folder" in msg and "--cls-run" in msg
    assert run_cli(lambda _: _init(folder), None) == 2
    err = capsys.readouterr().err
    assert "is a NeoNet 'cls' checkpoint" in err and "error: trainer_name" not in err
