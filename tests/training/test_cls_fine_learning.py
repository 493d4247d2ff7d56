"""pattennet_fine sees a thin cue: the quality bar of the fine-detail variant (slow).

Real pipeline, no stand-ins: a 36-case thin-cue phantom (halo and strands 2 in-plane voxels wide, i.e.
half a cell of the frozen encoder's x4 latent grid) is planned with 2 stratified folds. Per fold:

* control: the fold's VAE trainer run for 0 epochs (a random, untrained encoder), then the paper's
  ``pattennet`` on it;
* ``pattennet_fine``: the fold's VAE trained on the fold's training patches, then ``pattennet_fine``.

Both with the cpu_small settings and no early stopping (the validation fold is never looked at).
pattennet_fine's pooled out-of-fold AUC must be clearly above chance, the control's must not be.
Its thresholds are those of tests/training/test_cls_learning.py, set before it first ran. Measured
(2026-12-04, one thread on the loaded 2-core machine): pattennet_fine 0.910 [0.747, 1.000], random-encoder
pattennet 0.510 [0.284, 0.737], 117 s.
"""
from __future__ import annotations

import time

import pytest

from neonet_toolkit.demo.phantom import make_phantom_dataset
from neonet_toolkit.training.cls import ClsTrainer
from neonet_toolkit.models.cls_results import read_predictions_csv
from neonet_toolkit.training.planning import plan_and_preprocess
from neonet_toolkit.training.vae import VAETrainer
from neonet_toolkit.utilities import stats
from neonet_toolkit.utilities.io import load_json, save_json

import test_cls_utils as U


def _pooled(outs):
    ys, ps = [], []
    for out in outs:
        rows = read_predictions_csv(out / "oof_predictions.csv")
        ys += [r["label"] for r in rows]
        ps += [r["probability"] for r in rows]
    return stats.delong_ci(ys, ps)


@pytest.mark.slow
def test_pattennet_fine_learns_thin_cue_where_random_encoder_does_not(tmp_path, monkeypatch):
    for k in U.ENV_KEYS:
        (tmp_path / k).mkdir()
        monkeypatch.setenv(k, str(tmp_path / k))
    t0 = time.perf_counter()
    raw = make_phantom_dataset(tmp_path / "nnUNet_raw", 504, "ThinCue", n_train=36, n_test=0,
                               shape_xyz=(48, 48, 24), shape_jitter=2, seed=31, cue_width=2,
                               neonet_options={"crop_size": [32, 32, 16]})
    plan_and_preprocess(504, num_processes=1, n_folds=2)
    pp = tmp_path / "nnUNet_preprocessed" / raw.name
    plans = load_json(pp / "neonet_plans.json")
    plans["configurations"]["learn"] = {"inherits_from": "cpu_small", "vae": {"epochs": 15, "val_every": 15},
                                        "cls": {"epochs": 30}}
    save_json(plans, pp / "neonet_plans.json")
    control, fine = [], []
    for fold in (0, 1):
        VAETrainer(raw.name, fold, configuration="learn", device="cpu", epochs=0).run()  # random encoder
        control.append(ClsTrainer(raw.name, fold, arch="pattennet", configuration="learn", device="cpu",
                                  early_stopping="none").run())
        VAETrainer(raw.name, fold, configuration="learn", device="cpu", overwrite=True).run()
        fine.append(ClsTrainer(raw.name, fold, arch="pattennet_fine", configuration="learn", device="cpu",
                               early_stopping="none").run())
    c, f = _pooled(control), _pooled(fine)
    msg = (f"pooled OOF AUC: pattennet_fine {f['auc']:.3f} [{f['ci_low']:.3f}, {f['ci_high']:.3f}], random-encoder "
           f"pattennet {c['auc']:.3f} [{c['ci_low']:.3f}, {c['ci_high']:.3f}], {time.perf_counter() - t0:.0f} s")
    print("\n" + msg)
    assert f["auc"] > 0.75 and f["ci_low"] > 0.5, msg
    assert c["ci_low"] < 0.5 and c["auc"] < f["auc"] - 0.15, msg
