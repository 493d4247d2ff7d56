"""The synthetic-set quality record (quality.json) and the gate NeoCls puts in front of training on it."""
from __future__ import annotations

import hashlib

import pytest

from neonet_toolkit.preprocessing.synthetic_sets import (
    MANIFEST,
    QUALITY_FILE,
    gate_verdict,
    load_quality,
    manifest_sha256,
    save_quality,
)
from neonet_toolkit.utilities.io import load_json, save_json

LIMITS = {"c2st_auc_max": 0.75, "copy_rate_max": 0.05, "copy_quantile": 0.05, "bin_width": 0.25}


def record(auc0: float | None = 0.6, auc1: float | None = 0.7, copy_rate: float | None = 0.02) -> dict:
    per_class = {}
    for c, auc in (("0", auc0), ("1", auc1)):
        if auc is not None:
            per_class[c] = {"auc": auc, "ci": [auc - 0.1, min(1.0, auc + 0.1)], "n_real": 5, "n_synthetic": 12}
    return {"set": "synthetic", "fold": 0, "c2st": {"per_class": per_class, "pooled": {"auc": 0.65, "ci": [0.5, 0.8]}},
            "copy_rate": copy_rate, "copy_threshold": 0.41, "frd": {"value": 1.0}, "kid": {}, "prdc": {}}


@pytest.fixture
def set_folder(tmp_path):
    folder = tmp_path / "synthetic__NeoNetPlans" / "fold_0"
    folder.mkdir(parents=True)
    save_json({"fold": 0, "gap": 2, "entries": []}, folder / MANIFEST)
    return folder


def test_save_stamps_the_manifest_hash_and_load_round_trips(set_folder):
    assert load_quality(set_folder) is None
    out = save_quality(set_folder, record())
    assert out == set_folder / QUALITY_FILE
    sha = hashlib.sha256((set_folder / MANIFEST).read_bytes()).hexdigest()
    got = load_quality(set_folder)
    assert got == {**record(), "manifest_sha256": sha} == load_json(out)
    assert manifest_sha256(set_folder) == sha
    assert not list(set_folder.glob("*.tmp*"))  # written atomically, nothing left behind


def test_passing_record_passes_with_its_figures(set_folder):
    save_quality(set_folder, record(0.6, 0.75, 0.05))  # at the limits: still passes (limits are inclusive)
    v = gate_verdict(load_quality(set_folder), LIMITS, manifest_sha256(set_folder))
    assert v["passed"] and v["reasons"] == []
    assert v["c2st_auc"] == {"0": 0.6, "1": 0.75} and v["copy_rate"] == 0.05
    assert v["thresholds"] == {"c2st_auc_max": 0.75, "copy_rate_max": 0.05}


def test_each_failure_is_named_with_its_figure(set_folder):
    save_quality(set_folder, record(0.93, 0.71, 0.12))
    v = gate_verdict(load_quality(set_folder), LIMITS, manifest_sha256(set_folder))
    assert not v["passed"] and len(v["reasons"]) == 2
    assert v["reasons"][0] == "C2ST AUC 0.93 > 0.75 for class 0 (real validation vs held-out synthetic)"
    assert v["reasons"][1].startswith("copy rate 0.12 > 0.05")
    # only class 1 over a stricter limit
    strict = gate_verdict(load_quality(set_folder), {**LIMITS, "c2st_auc_max": 0.95, "copy_rate_max": 0.2},
                          manifest_sha256(set_folder))
    assert strict["passed"]
    v1 = gate_verdict(load_quality(set_folder), {**LIMITS, "c2st_auc_max": 0.7, "copy_rate_max": 0.2},
                      manifest_sha256(set_folder))
    assert [r.split(" for ")[1].split(" ")[1] for r in v1["reasons"]] == ["0", "1"]


def test_missing_class_figures_and_unmeasured_sets_fail(set_folder):
    v = gate_verdict(None, LIMITS, manifest_sha256(set_folder), "Dataset501_X", 3)
    assert not v["passed"] and v["reasons"] == [
        "not measured: no quality.json; run `neonet_evaluate Dataset501_X gen -f 3`"]
    save_quality(set_folder, record(None, 0.6, None))  # class 0 had no synthetic patch; copy rate missing
    v = gate_verdict(load_quality(set_folder), LIMITS, manifest_sha256(set_folder))
    assert v["c2st_auc"] == {"1": 0.6} and not v["passed"]
    assert any(r.startswith("copy rate not measured") for r in v["reasons"])
    save_quality(set_folder, record(float("nan"), 0.6, 0.0))
    v = gate_verdict(load_quality(set_folder), LIMITS, manifest_sha256(set_folder))
    assert v["reasons"] == ["C2ST AUC not measured for class 0 (too few real or synthetic patches?)"]


def test_a_regenerated_set_makes_the_record_stale(set_folder):
    save_quality(set_folder, record())
    old = manifest_sha256(set_folder)
    assert gate_verdict(load_quality(set_folder), LIMITS, old)["passed"]
    save_json({"fold": 0, "gap": 2, "entries": [{"id": "syn_00000"}]}, set_folder / MANIFEST)  # regenerated
    v = gate_verdict(load_quality(set_folder), LIMITS, manifest_sha256(set_folder), "501", 0)
    assert not v["passed"] and len(v["reasons"]) == 1 and v["reasons"][0].startswith("stale:")
    assert "`neonet_evaluate 501 gen -f 0`" in v["reasons"][0]
    assert v["c2st_auc"] == {"0": 0.6, "1": 0.7}  # the old figures are still shown
