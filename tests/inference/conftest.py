"""Tiny trained models shared by the prediction tests (trained once per test session).

``trained_models`` trains, on a mini phantom (15 cases, 32×32×16 voxels, 2 folds): nnU-Net's U-Net through
the NeoSeg trainer (fold 0, a few epochs: enough to find these tumours), a VAE and a PattenNet (fold 0, 2-3
epochs). Everything is real; the models are just small. The path variables point at its folders only while
it trains and inside each test that asks for ``trained`` (or enters :func:`trained_env`).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from e2e_models import DS, trained_env


@pytest.fixture(scope="session")
def trained_models(tmp_path_factory):
    from neonet_toolkit.demo.phantom import make_phantom_dataset
    from neonet_toolkit.training.planning import plan_and_preprocess
    from neonet_toolkit.training.cls import ClsTrainer
    from neonet_toolkit.training.seg.api import train_seg
    from neonet_toolkit.training.vae import VAETrainer

    root = tmp_path_factory.mktemp("e2e")
    with trained_env(root):
        raw = make_phantom_dataset(root / "nnUNet_raw", DS, "Mini", n_train=15, n_test=2, shape_xyz=(32, 32, 16),
                                   spacing=(1.5, 1.5, 3.0), shape_jitter=1, seed=1,
                                   neonet_options={"crop_size": [16, 16, 8]})
        plan_and_preprocess(DS, num_processes=1)
        pp = root / "nnUNet_preprocessed" / raw.name
        plans = json.loads((pp / "neonet_plans.json").read_text(encoding="utf-8"))
        plans["configurations"]["test_tiny"] = {"inherits_from": "cpu_small", "vae": {"epochs": 2, "val_every": 1},
                                                "cls": {"epochs": 3, "patience": 10, "min_epochs": 0}}
        (pp / "neonet_plans.json").write_text(json.dumps(plans), encoding="utf-8")
        seg_folder = train_seg(DS, 0, arch="nnunet", device="cpu", epochs=20, iterations=12, val_iterations=1)
        VAETrainer(DS, 0, configuration="test_tiny", device="cpu").run()
        cls_out = ClsTrainer(DS, 0, arch="pattennet", synthetic_ratio=0.0, configuration="test_tiny",
                             device="cpu").run()
    assert cls_out.parent.name == "cls_pattennet_0_esnested__NeoNetPlans"  # the default protocol is nested
    return {"root": root, "raw": raw, "pp": pp, "seg_model": Path(seg_folder).parent,
            "cls_run": "cls_pattennet_0_esnested"}


@pytest.fixture
def trained(trained_models):
    """The trained models, with the path variables pointing at their folders for this test."""
    with trained_env(trained_models["root"]):
        yield trained_models
