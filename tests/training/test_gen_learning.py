"""NeoGen learns on the phantom with the cpu_small preset (slow: ~5-10 min on 2 loaded cores).

Run with ``pytest -m slow tests/training/test_gen_learning.py``.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from test_gen_pipeline import copy_planned


@pytest.mark.slow
def test_cpu_small_neogen_learns_on_phantom(planned_phantom, tmp_path, monkeypatch):
    from neonet_toolkit.generation.generate import load_synthetic_patch
    from neonet_toolkit.preprocessing.synthetic_sets import load_manifest
    from neonet_toolkit.preprocessing.patches import load_patch, patch_folder
    from neonet_toolkit.run.evaluate import main as evaluate_main
    from neonet_toolkit.run.generate import main as generate_main
    from neonet_toolkit.run.train import main as train_main

    env = copy_planned(planned_phantom, tmp_path, {"gen_learn": {"inherits_from": "cpu_small",
                                                                 "sampling": {"steps": 10}}})
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    for stage in ("vae", "ldm", "controlnet"):
        assert train_main(["501", stage, "0", "-device", "cpu", "--configuration", "gen_learn"]) == 0
    assert generate_main(["-d", "501", "-f", "0", "--ratio", "1.0", "--n-majority", "-1", "-device", "cpu",
                          "--configuration", "gen_learn"]) == 0
    assert evaluate_main(["501", "gen", "-f", "0", "-device", "cpu"]) == 0
    res = Path(env["neonet_results"]) / planned_phantom["dataset_name"]
    rep = json.loads((res / "gen_evaluation__NeoNetPlans/fold_0/gen_report.json").read_text(encoding="utf-8"))
    rec = rep["reconstruction"]
    assert rec["vae"]["psnr"] > rec["mean_patch_baseline"]["psnr"] + 3.0, rec

    # ControlNet samples: tumour region (from the conditioning mask) darker than the organ-only region,
    # as in the real patches
    folder = res / "synthetic__NeoNetPlans/fold_0"
    src = patch_folder(Path(env["nnUNet_preprocessed"]) / planned_phantom["dataset_name"], "gt")
    real_c, syn_c = [], []
    for e in load_manifest(folder)["entries"]:
        img, lab = load_synthetic_patch(folder, e["id"])
        real, _ = load_patch(src, e["source_case"])
        tum, organ = lab[1] > 0, (lab[0] > 0) & (lab[1] == 0)
        syn_c.append(float(img[0][organ].mean() - img[0][tum].mean()))
        real_c.append(float(real[0][organ].mean() - real[0][tum].mean()))
    assert all(c > 0 for c in real_c)
    assert np.mean(np.array(syn_c) > 0) >= 0.75 and np.mean(syn_c) > 0.2 * np.mean(real_c), (syn_c, real_c)
