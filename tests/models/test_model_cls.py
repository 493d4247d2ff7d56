"""neonet_toolkit.models.cls: classifier inputs, raw outputs and the decision rule (fast, no training)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from neonet_toolkit.models.cls import decision_rule, load_real, load_synthetic, predict_logits, sigmoid


def test_sigmoid_and_predict_logits_batches():
    np.testing.assert_allclose(sigmoid([0.0, np.log(3.0)]), [0.5, 0.75])
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(2 * 2 * 2 * 1, 1))
    x = np.random.default_rng(0).normal(size=(5, 2, 2, 2, 1)).astype(np.float32)
    out = predict_logits(net, x, torch.device("cpu"), batch_size=2)
    with torch.no_grad():
        expect = net(torch.from_numpy(x)).reshape(-1).numpy()
    np.testing.assert_allclose(out, expect, rtol=1e-6)
    assert predict_logits(net, x[:0], torch.device("cpu")).shape == (0,)


def test_load_real_names_the_missing_patch(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"No pred TLCR patch for case 'c1'.*run NeoSeg prediction first"):
        load_real(tmp_path, "pred", ["c1"])
    assert load_real(tmp_path, "gt", []).shape == (0, 2, 1, 1, 1)


def test_load_synthetic_checks_shape(tmp_path):
    np.savez(tmp_path / "s1.npz", image=np.zeros((2, 4, 4, 2), np.float32))
    assert load_synthetic([{"id": "s1"}], tmp_path, [4, 4, 2]).shape == (1, 2, 4, 4, 2)
    with pytest.raises(ValueError, match=r"s1\.npz has shape \(2, 4, 4, 2\), expected \(2, 8, 8, 4\)"):
        load_synthetic([{"id": "s1"}], tmp_path, [8, 8, 4])
    with pytest.raises(FileNotFoundError, match="listed in the manifest is missing"):
        load_synthetic([{"id": "s2"}], tmp_path, [4, 4, 2])


def test_decision_rule_describes_calibration_and_threshold():
    rule = decision_rule({"threshold": 0.4, "calibration": {"method": "platt", "a": 1.0, "b": 0.0},
                          "early_stopping": "nested", "threshold_source": "inner"})
    assert rule["threshold"] == 0.4 and rule["threshold_method"] == "youden"
    assert rule["probability"].endswith("then platt calibration") and rule["protocol"].startswith("nested CV")
    plain = decision_rule({"threshold": 0.5, "protocol": "custom"})
    assert plain["calibration"] == {"method": "none"} and plain["protocol"] == "custom"
