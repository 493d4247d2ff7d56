"""The NeoCls quality bar: PattenNet really learns the phantom's PNI cue.

Real pipeline, no stand-ins: a 48-case phantom is planned with 2 stratified folds; for each fold
the real VAE trainer fits the fold's VAE on that fold's training patches only, then PattenNet
(default architecture: frozen fold encoder, 2 DABs) is trained with the cpu_small settings and no
early stopping (the validation fold is never looked at during training). The pooled out-of-fold
AUC over all 48 real cases must be clearly above chance.

Measured when written (2 CPU threads): pooled AUC 0.838 [0.726, 0.949] (DeLong), per-fold 0.867 /
0.914, 152 s. The 5-fold figures on a 60-case phantom are in docs/neocls.md.
"""
from __future__ import annotations

import time

import torch

from neonet_toolkit.utilities import stats

import test_cls_utils as U


def test_pattennet_learns_phantom_cue(tmp_path, monkeypatch):
    from neonet_toolkit.demo.phantom import make_phantom_dataset
    from neonet_toolkit.training.planning import plan_and_preprocess
    from neonet_toolkit.networks.generative import vae_checkpoint_path
    from neonet_toolkit.utilities.checkpoints import load_checkpoint
    from neonet_toolkit.training.cls import ClsTrainer
    from neonet_toolkit.models.cls_results import read_predictions_csv
    from neonet_toolkit.training.vae import VAETrainer
    from neonet_toolkit.utilities.io import load_json, save_json

    for k in U.ENV_KEYS:
        (tmp_path / k).mkdir()
        monkeypatch.setenv(k, str(tmp_path / k))
    t0 = time.perf_counter()
    raw = make_phantom_dataset(tmp_path / "nnUNet_raw", 503, "NeoNetPhantomLearn", n_train=48, n_test=0,
                               shape_xyz=(48, 48, 24), shape_jitter=2, seed=7,
                               neonet_options={"crop_size": [32, 32, 16]})
    plan_and_preprocess(503, num_processes=1, n_folds=2)
    pp = tmp_path / "nnUNet_preprocessed" / raw.name
    plans = load_json(pp / "neonet_plans.json")
    plans["configurations"]["learn"] = {"inherits_from": "cpu_small", "vae": {"epochs": 40, "val_every": 40},
                                        "cls": {"epochs": 40}}
    save_json(plans, pp / "neonet_plans.json")
    ys, ps, per_fold = [], [], []
    for fold in (0, 1):
        VAETrainer(raw.name, fold, configuration="learn", device="cpu").run()
        out = ClsTrainer(raw.name, fold, configuration="learn", device="cpu", early_stopping="none").run()
        assert out.parent.name == "cls_pattennet_0_esnone__NeoNetPlans"
        # the frozen encoder is the fold's trained VAE encoder
        vae_sd = load_checkpoint(vae_checkpoint_path(raw.name, fold))["network"]
        cls_sd = load_checkpoint(out / "checkpoint_final.pth")["network"]
        assert torch.equal(cls_sd["encoder.encoder.blocks.0.conv.weight"], vae_sd["encoder.blocks.0.conv.weight"])
        rows = read_predictions_csv(out / "oof_predictions.csv")
        assert len(rows) == 24
        y, p = [r["label"] for r in rows], [r["probability"] for r in rows]
        per_fold.append(stats.roc_auc(y, p))
        ys += y
        ps += p
    d = stats.delong_ci(ys, ps)
    msg = (f"pooled OOF AUC {d['auc']:.3f} [{d['ci_low']:.3f}, {d['ci_high']:.3f}], per fold "
           f"{[round(a, 3) for a in per_fold]}, {time.perf_counter() - t0:.0f} s")
    print("\n" + msg)
    assert d["auc"] > 0.75 and d["ci_low"] > 0.5, msg
