"""NeoGen trainers under torchrun DDP (CPU, gloo, 2 processes): VAE and ControlNet on the tiny phantom
(the LDM in between is trained in-process; it shares the DDP code path of the ControlNet trainer)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from test_gen_pipeline import copy_planned

DDP_CFG = {"inherits_from": "cpu_small", "vae": {"epochs": 2, "batch_size": 2, "val_every": 1},
           "ldm": {"epochs": 2, "batch_size": 2, "val_every": 1},
           "controlnet": {"epochs": 2, "batch_size": 2, "val_every": 1}}


@pytest.mark.ddp
def test_vae_and_controlnet_train_under_torchrun_gloo(planned_phantom, tmp_path, monkeypatch):
    from neonet_toolkit.run.train import main as train_main

    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    env = dict(os.environ, OMP_NUM_THREADS="1",
               **copy_planned(planned_phantom, tmp_path, {"ddp_test": DDP_CFG}))
    res = Path(env["neonet_results"]) / planned_phantom["dataset_name"]
    for stage in ("vae", "ldm", "controlnet"):
        if stage == "ldm":
            for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "neonet_results"):
                monkeypatch.setenv(k, env[k])
            assert train_main(["501", "ldm", "0", "-device", "cpu", "--configuration", "ddp_test"]) == 0
            continue
        cmd = [torchrun, "--standalone", "--nproc_per_node=2", "-m", "neonet_toolkit.run.train", "501", stage, "0",
               "-device", "cpu", "--configuration", "ddp_test"]
        p = subprocess.run(cmd, env=env, capture_output=True, encoding="utf-8", errors="replace", timeout=300)
        assert p.returncode == 0, p.stderr[-3000:]
        fold = res / f"{stage}__NeoNetPlans" / "fold_0"
        log = (fold / "training_log.txt").read_text(encoding="utf-8")
        assert "world=2" in log
        ck = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=True)
        assert ck["epoch"] == 1 and all(torch.isfinite(v).all() for v in ck["network"].values()
                                        if torch.is_tensor(v) and v.is_floating_point())
        hist = json.loads((fold / "progress.json").read_text(encoding="utf-8"))
        assert len(hist) == 2 and all("train_loss" in h for h in hist)
        assert json.loads((fold / "training_manifest.json").read_text(encoding="utf-8"))["train_ids"]
    assert torch.load(res / "vae__NeoNetPlans/fold_0/checkpoint_final.pth", weights_only=True)["extra"]["scale_factor"] > 0
