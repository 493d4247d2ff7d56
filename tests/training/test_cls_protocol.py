"""The evaluation protocol of NeoCls: nested selection by default, inner-fitted calibration and threshold,
control arms at equal optimizer steps, Holm, and a no-signal check (labels permuted on the phantom)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from neonet_toolkit.training.cls_data import arm_training_set, epoch_order, select_epoch
from neonet_toolkit.utilities import stats
from neonet_toolkit.utilities.identifiers import ARMS, cls_run_name, parse_cls_run_name

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ (shared helpers)
import test_cls_utils as U  # noqa: E402


# ----------------------------------------------------------------------------- statistics with known answers
def test_platt_recovers_a_known_logistic_model():
    rng = np.random.default_rng(0)
    score_logit = rng.normal(0.0, 1.5, 40_000)
    a0, b0 = 0.6, -0.4
    y = rng.random(score_logit.size) < 1 / (1 + np.exp(-(a0 * score_logit + b0)))
    cal = stats.fit_platt(y.astype(int), 1 / (1 + np.exp(-score_logit)))
    assert cal["a"] == pytest.approx(a0, abs=0.03) and cal["b"] == pytest.approx(b0, abs=0.03)
    # the calibrated probabilities are then well calibrated: ECE small, far smaller than before
    p_raw = 1 / (1 + np.exp(-score_logit))
    p_cal = stats.apply_calibration(p_raw, cal)
    assert stats.expected_calibration_error(y, p_cal) < 0.02 < stats.expected_calibration_error(y, p_raw)


def test_calibration_auto_rule_and_isotonic_is_monotone():
    rng = np.random.default_rng(1)
    p = rng.random(400)
    y = (rng.random(400) < p ** 2).astype(int)
    assert stats.fit_calibration(y[:40], p[:40], "auto", isotonic_min_per_class=50)["method"] == "platt"
    iso = stats.fit_calibration(y, p, "auto", isotonic_min_per_class=50)
    assert iso["method"] == "isotonic"
    q = stats.apply_calibration(np.linspace(0, 1, 50), iso)
    assert np.all(np.diff(q) >= -1e-12) and q[0] < 0.1 and q[-1] > 0.7


def test_holm_hand_computed():
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> running max 0.02, 0.03, 0.06, 0.06
    assert stats.holm_adjust([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    adj = stats.holm_adjust([0.2, float("nan"), 0.9])
    assert adj[0] == pytest.approx(0.4) and np.isnan(adj[1]) and adj[2] == pytest.approx(0.9)


def test_threshold_at_target_sensitivity():
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.6, 0.4, 0.7, 0.8, 0.9])
    t = stats.select_threshold(y, p, "sensitivity@0.75")
    assert stats.sensitivity_specificity(y, p, t)["sensitivity"] >= 0.75 and 0.6 < t <= 0.7
    assert stats.sensitivity_specificity(y, p, stats.select_threshold(y, p, "sensitivity@1.0"))["sensitivity"] == 1


def test_select_epoch_smooths_and_respects_min_epochs():
    auc = np.array([0.9, 0.5, 0.6, 0.7, 0.72, 0.71, 0.5])
    bce = np.full(7, 0.6)
    assert select_epoch(auc, bce, min_epochs=0, window=1) == 0
    assert select_epoch(auc, bce, min_epochs=2, window=1) == 4
    assert select_epoch(auc, bce, min_epochs=2, window=3) == 4  # (0.7+0.72+0.71)/3 beats the neighbours


# ----------------------------------------------------------------------------- arms and step budgets
def test_arms_share_budget_balance_and_names():
    real_ids = [f"c{i}" for i in range(12)]
    real_y = [1, 1, 1] + [0] * 9                       # gap 6
    syn_y = [1] * 6 + [0] * 6                          # minority and majority synthetic patches
    syn_src = [real_ids[i % 3] for i in range(6)] + [real_ids[3 + i] for i in range(6)]
    sets = {arm: arm_training_set(real_y, syn_y if arm in ("synthetic", "both") else [],
                                  syn_src if arm in ("synthetic", "both") else [], real_ids, set(real_ids), 1.0, arm, 0)
            for arm in ARMS}
    assert {s["budget"] for s in sets.values()} == {12 + 2 * 6}     # equal items per epoch for every arm
    assert sets["synthetic"]["prevalence"] == pytest.approx(0.5)
    assert sets["oversample"]["prevalence"] == pytest.approx(0.5)  # same balance as the paper's arm
    assert sets["weighted"]["prevalence"] == pytest.approx(0.5) and len(sets["weighted"]["items"]) == 12
    both_labels = [syn_y[i - 12] for i in sets["both"]["items"] if i >= 12]
    assert sorted(set(both_labels)) == [0, 1]                      # "synthetic" carries no label
    assert all(syn_y[i - 12] == 1 for i in sets["synthetic"]["items"] if i >= 12)
    # an epoch draws exactly the budget, covering every item before repeating one
    order = epoch_order(len(sets["synthetic"]["items"]), 24, np.random.default_rng(0))
    assert len(order) == 24 and sorted(order[:18]) == list(range(18))
    for arm in ARMS:
        name = cls_run_name("resnet10", 0.5, "gt", "nested", arm)
        assert parse_cls_run_name(name).arm == arm and parse_cls_run_name(name).name == name


# ----------------------------------------------------------------------------- the trainer on the phantom
@pytest.fixture
def proto_env(planned_phantom, tmp_path, monkeypatch):
    env = U.copy_planned(planned_phantom, tmp_path, monkeypatch)
    env["cfg"] = U.add_configuration(env["preprocessed"], "cls_proto", {"epochs": 3, "inner_folds": 2})
    return env


def _summary(out: Path) -> dict:
    return json.loads((out / "cls_summary.json").read_text(encoding="utf-8"))


def test_default_is_nested_and_nothing_fitted_sees_the_reported_fold(proto_env):
    from neonet_toolkit.preprocessing.patches import load_patch, patch_folder
    from neonet_toolkit.training.cls import ClsTrainer
    from neonet_toolkit.models.cls import load_fold_classifier, predict_proba

    ds, pp = proto_env["dataset_name"], proto_env["preprocessed"]
    U.make_fold_vae(ds, pp, 0)
    out = ClsTrainer(ds, 0, configuration=proto_env["cfg"], device="cpu").run()
    assert out.parent.name == "cls_pattennet_0_esnested__NeoNetPlans"
    s = _summary(out)
    train, val = set(s["train_ids"]), set(s["val_ids"])
    assert s["early_stopping"] == "nested" and "nested" in s["protocol"]
    # every inner fold: disjoint, inside the training fold; together they cover it
    inner = s["nested_inner_folds"]
    assert len(inner) == 2 and set().union(*(set(f["val_ids"]) for f in inner)) == train
    for f in inner:
        assert not set(f["train_ids"]) & set(f["val_ids"]) and set(f["train_ids"]) | set(f["val_ids"]) <= train
    for key in ("selection_ids", "calibration_ids", "threshold_ids"):
        assert set(s[key]) <= train and not set(s[key]) & val, key
    seen = {x for x in s["seen_train_items"] if not x.startswith("synthetic:")}
    assert seen and not seen & val
    assert s["calibration"]["method"] == "platt" and s["threshold_source"] == "nested_inner_oof"
    nested = json.loads((out / "nested_selection.json").read_text(encoding="utf-8"))
    assert s["selected_epoch"] == nested["selected_epoch"] and s["epochs_run"] == nested["selected_epoch"] + 1
    # reported probabilities = prior correction, then the inner-fitted calibration; predict_proba reproduces them
    rows = U_rows(out / "oof_predictions.csv")
    raw = np.array([float(r["probability_raw"]) for r in rows])
    expect = stats.apply_calibration(stats.recalibrate_prior(raw, s["train_prevalence"], s["real_prevalence"]),
                                     s["calibration"])
    np.testing.assert_allclose([float(r["probability"]) for r in rows], expect, atol=2e-6)
    net, info = load_fold_classifier(ds, "cls_pattennet_0_esnested", 0)
    x = np.stack([load_patch(patch_folder(pp, "gt"), c)[0] for c in s["val_ids"]])
    np.testing.assert_allclose(predict_proba(net, info, x), expect, atol=1e-5)


def U_rows(path: Path) -> list[dict]:
    import csv

    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_control_arms_run_equal_optimizer_steps(proto_env):
    from neonet_toolkit.training.cls import ClsTrainer

    ds, pp = proto_env["dataset_name"], proto_env["preprocessed"]
    U.make_synthetic_set(ds, pp, 1, n_majority=10)
    steps, prevalence = {}, {}
    for arm in ARMS:
        out = ClsTrainer(ds, 1, arch="resnet10", synthetic_ratio=1.0, arm=arm, early_stopping="none",
                         configuration=proto_env["cfg"], device="cpu", epochs=2, allow_failed_gate=True).run()
        s = _summary(out)
        steps[arm], prevalence[arm] = s["optimizer_steps"], s["train_prevalence"]
        assert s["arm"] == arm and parse_cls_run_name(out.parent.name.split("__")[0]).arm == arm
        gated = arm in ("synthetic", "both")  # the control arms train on no synthetic patch: not gated
        assert (s["synthetic_gate"] is not None) == gated and (not gated or s["synthetic_gate"]["overridden"])
        if arm == "both":
            labels = {e.split("<-")[0] for e in s["seen_train_items"] if e.startswith("synthetic:")}
            assert len(labels) == s["n_train_synthetic"] and s["n_train_synthetic"] > 0
    assert len(set(steps.values())) == 1 and steps["synthetic"] > 0, steps
    assert prevalence["oversample"] == pytest.approx(prevalence["synthetic"])
    assert prevalence["weighted"] == pytest.approx(prevalence["synthetic"])


# ----------------------------------------------------------------------------- no signal
def _permute_labels(pp: Path, seed: int) -> None:
    """Permute labels within each validation fold, so the stratified folds stay stratified (a global
    permutation makes training and validation prevalence move in opposite directions per fold, which
    biases the pooled AUC below 0.5; benchmarks/no_signal.py)."""
    meta_f = pp / "neonet_tlcr" / "gt" / "metadata.json"
    meta = json.loads(meta_f.read_text(encoding="utf-8"))
    rng = np.random.default_rng(seed)
    for fold in json.loads((pp / "splits_final.json").read_text(encoding="utf-8")):
        ids = sorted(fold["val"])
        for c, lab in zip(ids, rng.permutation([meta["cases"][c]["label"] for c in ids])):
            meta["cases"][c]["label"] = int(lab)
    meta_f.write_text(json.dumps(meta), encoding="utf-8")


def no_signal_run(env: dict, seed: int, protocol: str, epochs: int = 12) -> dict:
    """Permuted labels, PattenNet R, all folds; pooled and per-fold AUC of one protocol."""
    from neonet_toolkit.run.experiment import run_experiment

    st = run_experiment(env["dataset_name"], ["pattennet"], [0.0], device="cpu", configuration=env["cfg"],
                        epochs=epochs, early_stopping=protocol, evaluate=True, shortcut=False, n_boot=200)
    assert not st["failed"], st["failed"]
    res = json.loads((Path(st["evaluation"]) / "summary.json").read_text(encoding="utf-8"))
    r = res["runs"][cls_run_name("pattennet", 0.0, "gt", protocol)]
    return {"pooled": r["pooled_auc"], "ci": [r["pooled_delong"]["ci_low"], r["pooled_delong"]["ci_high"]],
            "fold_mean": r["fold_auc_mean"]}


@pytest.mark.slow
@pytest.mark.parametrize("seed", [11, 12, 13])
def test_no_signal_nested_is_not_inflated_and_val_is(planned_phantom, tmp_path, monkeypatch, seed):
    env = U.copy_planned(planned_phantom, tmp_path, monkeypatch)
    env["cfg"] = U.add_configuration(env["preprocessed"], "cls_nosignal", {"inner_folds": 2, "min_epochs": 0})
    _permute_labels(env["preprocessed"], seed)
    for f in range(5):
        U.make_fold_vae(env["dataset_name"], env["preprocessed"], f, pretrain_steps=20)
    nested = no_signal_run(env, seed, "nested")
    val = no_signal_run(env, seed, "val")
    print(f"NO-SIGNAL seed={seed} nested={nested} val={val}")
    assert nested["ci"][0] <= 0.5 <= nested["ci"][1]
    assert val["fold_mean"] > nested["fold_mean"]


def test_classifier_shortcut_check_known_answer(proto_env):
    """Synthetic patches that are exact copies of real validation patches get the same scores: AUC 0.5."""
    from neonet_toolkit.evaluation.cls_shortcut import classifier_shortcut_check
    from neonet_toolkit.experiment_planning.splits import get_fold, load_splits
    from neonet_toolkit.preprocessing.patches import load_metadata, load_patch, patch_folder
    from neonet_toolkit.preprocessing.synthetic_sets import MANIFEST, synthetic_folder
    from neonet_toolkit.training.cls import ClsTrainer
    from neonet_toolkit.utilities.io import save_json, save_npz

    ds, pp = proto_env["dataset_name"], proto_env["preprocessed"]
    out = ClsTrainer(ds, 2, arch="resnet10", early_stopping="none", configuration=proto_env["cfg"],
                     device="cpu", epochs=1).run()
    val = get_fold(load_splits(pp), 2)["val"]
    labels = {c: r["label"] for c, r in load_metadata(patch_folder(pp, "gt"))["cases"].items()}
    folder = synthetic_folder(ds, 2)
    entries = []
    for k, c in enumerate(val):
        img, lab = load_patch(patch_folder(pp, "gt"), c)
        save_npz(folder / "patches" / f"syn_{k:05d}.npz", image=img, label=lab)
        entries.append({"id": f"syn_{k:05d}", "label": labels[c], "role": "minority", "source_case": c, "order": k})
    save_json({"fold": 2, "gap": 0, "entries": entries}, folder / MANIFEST)
    res = classifier_shortcut_check(ds, out.parent.name.split("__")[0], 2)
    assert res["n_synthetic_held_out"] == len(val)
    checked = [r for r in res["per_class"].values() if r["auc"] is not None]
    assert checked and all(r["auc"] == pytest.approx(0.5) for r in checked)
