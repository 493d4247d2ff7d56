"""NeoCls: the synthetic quality gate in front of training and ``--synthetic-ratio auto`` chosen on inner folds."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from neonet_toolkit.preprocessing.synthetic_sets import load_manifest, save_quality, synthetic_folder
from neonet_toolkit.training import cls_protocols
from neonet_toolkit.training.cls import ClsTrainer
from neonet_toolkit.training.cls_data import parse_ratio
from neonet_toolkit.utilities.checkpoints import load_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ (shared helpers)
import test_cls_utils as U  # noqa: E402


def quality(auc0: float, auc1: float, copy_rate: float) -> dict:
    return {"set": "synthetic", "fold": 1, "copy_rate": copy_rate, "copy_threshold": 0.4,
            "c2st": {"per_class": {"0": {"auc": auc0, "ci": [0.4, 1.0], "n_real": 3, "n_synthetic": 6},
                                   "1": {"auc": auc1, "ci": [0.4, 1.0], "n_real": 2, "n_synthetic": 6}},
                     "pooled": {"auc": (auc0 + auc1) / 2, "ci": [0.4, 1.0]}}}


@pytest.fixture
def auto_env(planned_phantom, tmp_path, monkeypatch):
    env = U.copy_planned(planned_phantom, tmp_path, monkeypatch)
    env["cfg"] = U.add_configuration(env["preprocessed"], "cls_auto",
                                     {"epochs": 2, "inner_folds": 2, "ratio_candidates": [1.0, 0.0, 0.5]})
    return env


def _summary(out: Path) -> dict:
    return json.loads((out / "cls_summary.json").read_text(encoding="utf-8"))


def _trainer(env, fold: int = 1, **kw) -> ClsTrainer:
    return ClsTrainer(env["dataset_name"], fold, arch="resnet10", configuration=env["cfg"], device="cpu", **kw)


def test_failed_gate_refuses_with_the_figures_and_override_is_recorded(auto_env):
    ds, pp = auto_env["dataset_name"], auto_env["preprocessed"]
    folder = U.make_synthetic_set(ds, pp, 1, n_majority=10)
    with pytest.raises(ValueError) as e:  # never measured
        _trainer(auto_env, synthetic_ratio=1.0, early_stopping="none", epochs=1).run()
    assert "not measured" in str(e.value) and f"neonet_evaluate {ds} gen -f 1" in str(e.value)
    save_quality(folder, quality(0.93, 0.71, 0.12))
    with pytest.raises(ValueError) as e:
        _trainer(auto_env, synthetic_ratio=1.0, arm="both", early_stopping="none", epochs=1).run()
    msg = str(e.value)
    for part in ("fold 1", str(folder), "C2ST AUC 0.93 > 0.75 for class 0", "copy rate 0.12 > 0.05",
                 f"neonet_evaluate {ds} gen -f 1", "--allow-failed-gate"):
        assert part in msg, part
    assert "class 1" not in msg  # 0.71 is within the limit
    out = _trainer(auto_env, synthetic_ratio=1.0, early_stopping="none", epochs=1, allow_failed_gate=True).run()
    s = _summary(out)
    gate = s["synthetic_gate"]
    assert gate["overridden"] is True and gate["passed"] is False and s["n_train_synthetic"] > 0
    assert gate["c2st_auc"] == {"0": 0.93, "1": 0.71} and gate["copy_rate"] == 0.12 and len(gate["reasons"]) == 2
    info = load_checkpoint(out / "checkpoint_final.pth")["extra"]["inference"]
    assert info["synthetic_gate"]["overridden"] is True and info["synthetic_ratio_setting"] == 1.0
    assert "WARNING --allow-failed-gate" in (out / "training_log.txt").read_text(encoding="utf-8")


def test_auto_runs_the_inner_cv_per_candidate_and_refits_at_the_choice(auto_env):
    ds, pp = auto_env["dataset_name"], auto_env["preprocessed"]
    folder = U.make_synthetic_set(ds, pp, 1)
    save_quality(folder, quality(0.6, 0.7, 0.0))
    out = _trainer(auto_env, synthetic_ratio="auto").run()
    assert out.parent.name == "cls_resnet10_auto_esnested__NeoNetPlans"
    s = _summary(out)
    nested = json.loads((out / cls_protocols.NESTED_FILE).read_text(encoding="utf-8"))
    search = nested["ratio_search"]
    gap = load_manifest(folder)["gap"]
    cands = search["candidates"]
    assert [c["ratio"] for c in cands] == [0.0, 0.5, 1.0]  # sorted, each one inner CV
    assert [c["n_synthetic"] for c in cands] == [0, round(0.5 * gap), gap] and gap >= 2
    for c in cands:  # the inner AUC is the pooled inner-OOF AUC at that candidate's selected epoch
        assert c["inner_auc"] == c["curve_inner_auc"][c["selected_epoch"]]
        # each candidate's inner models train on its own entries; one derived from an inner-validation case is
        # left out of that inner fold, so over 2 inner folds every entry is used exactly once
        assert len(c["n_synthetic_inner"]) == 2 and sum(c["n_synthetic_inner"]) == c["n_synthetic"]
    best = max(c["inner_auc"] for c in cands)
    expect = min(c["ratio"] for c in cands if c["inner_auc"] >= best - 1e-9)  # ties -> less synthetic
    assert search["chosen"] == expect == s["synthetic_ratio_choice"] == s["synthetic_ratio"]
    chosen = next(c for c in cands if c["ratio"] == expect)
    # the refit uses the chosen candidate's epoch, threshold and synthetic patches
    assert nested["selected_epoch"] == chosen["selected_epoch"] == s["selected_epoch"]
    assert s["epochs_run"] == chosen["selected_epoch"] + 1 and s["threshold"] == nested["threshold"]
    assert s["n_train_synthetic"] == chosen["n_synthetic"]
    seen_syn = {x.split(":")[1].split("<-")[0] for x in s["seen_train_items"] if x.startswith("synthetic:")}
    assert seen_syn <= set(s["synthetic_ids"]) and len(s["synthetic_ids"]) == chosen["n_synthetic"]
    # the chosen candidate's inner models trained on its own prefix of the synthetic entries only
    inner_syn = {x.split(":")[1].split("<-")[0] for f in nested["inner_folds"] for x in f["train_items"]
                 if x.startswith("synthetic:")}
    assert inner_syn <= set(s["synthetic_ids"]) and (inner_syn or expect == 0.0)
    assert [(c["ratio"], c["inner_auc"]) for c in s["synthetic_ratio_candidates"]] == [
        (c["ratio"], c["inner_auc"]) for c in cands]
    assert s["synthetic_gate"]["passed"] is True and s["synthetic_gate"]["overridden"] is False
    assert s["synthetic_ratio_setting"] == "auto" and search["gate"]["passed"] is True

    # the report lists the fold's choice, the candidates' inner AUCs and the gate
    from neonet_toolkit.evaluation.cls import evaluate_cls

    ev = evaluate_cls(ds, runs=["cls_resnet10_auto_esnested"], n_boot=20)
    report = (Path(ev["output"]) / "report.md").read_text(encoding="utf-8")
    assert "Synthetic ratio chosen on the inner folds" in report
    row = next(line for line in report.splitlines() if line.startswith("| cls_resnet10_auto_esnested | 1 |"))
    assert f"| {expect:g} |" in row and "0.5: " in row and "| passed |" in row


def test_auto_with_a_failed_gate_or_no_set_compares_ratio_0_only(auto_env):
    ds, pp = auto_env["dataset_name"], auto_env["preprocessed"]
    save_quality(U.make_synthetic_set(ds, pp, 1), quality(0.99, 0.6, 0.0))
    out = _trainer(auto_env, synthetic_ratio="auto", epochs=1).run()
    s = _summary(out)
    assert s["synthetic_ratio_choice"] == 0.0 and [c["ratio"] for c in s["synthetic_ratio_candidates"]] == [0.0]
    assert s["n_train_synthetic"] == 0 and not any(x.startswith("synthetic:") for x in s["seen_train_items"])
    assert s["synthetic_gate"]["passed"] is False and s["synthetic_gate"]["overridden"] is False
    assert "C2ST AUC 0.99 > 0.75 for class 0" in s["synthetic_gate"]["reasons"][0]
    assert "only ratio 0 is a candidate" in (out / "training_log.txt").read_text(encoding="utf-8")
    # no synthetic set at all for fold 2: ratio 0 only, said so, nothing gated
    tr = _trainer(auto_env, fold=2, synthetic_ratio="auto", epochs=1)
    assert not (synthetic_folder(ds, 2)).exists()
    s2 = _summary(tr.run())
    assert [c["ratio"] for c in s2["synthetic_ratio_candidates"]] == [0.0] and s2["synthetic_gate"] is None
    assert "no synthetic set" in (tr.output_folder / "training_log.txt").read_text(encoding="utf-8")


def test_auto_needs_the_nested_protocol(auto_env, capsys):
    from neonet_toolkit.run.experiment import build_parser, run_experiment
    from neonet_toolkit.run.train import main as train_main

    for es in ("val", "inner", "none"):
        with pytest.raises(ValueError, match="nested"):
            _trainer(auto_env, synthetic_ratio="auto", early_stopping=es)
    assert train_main(["501", "cls", "0", "--synthetic-ratio", "auto", "--early-stopping", "val", "-device", "cpu",
                       "--configuration", auto_env["cfg"]]) == 2
    assert "nested" in capsys.readouterr().err
    with pytest.raises(ValueError, match="nested"):
        run_experiment(auto_env["dataset_name"], ["resnet10"], ["auto"], early_stopping="val", evaluate=False)
    assert parse_ratio("AUTO") == "auto" and parse_ratio("0.25") == 0.25
    for bad in ("1.5", "half"):
        with pytest.raises(ValueError, match="synthetic-ratio"):
            parse_ratio(bad)
    a = build_parser().parse_args(["501", "--ratios", "0", "auto", "--allow-failed-gate"])
    assert a.ratios == [0.0, "auto"] and a.allow_failed_gate


def test_ratio_choice_prefers_less_synthetic_on_ties(monkeypatch):
    aucs = {0.0: 0.80, 0.5: 0.85, 1.0: 0.85}
    trainer = SimpleNamespace(ratio_candidates=[1.0, 0.5, 0.0], synthetic_ratio=1.0, gate={"passed": True},
                              data=SimpleNamespace(synthetic_for_ratio=lambda r: [None] * int(4 * r)),
                              log=lambda *a: None)

    def fake_inner_cv(t):
        return {"selected_epoch": 1, "curve_inner_auc": [0.5, aucs[t.synthetic_ratio]], "curve_inner_bce": [0.7, 0.6],
                "threshold": t.synthetic_ratio}

    monkeypatch.setattr(cls_protocols, "run_inner_cv", fake_inner_cv)
    rec = cls_protocols.choose_ratio(trainer)
    assert rec["ratio_search"]["chosen"] == 0.5 and rec["threshold"] == 0.5  # the chosen candidate's record
    assert [c["n_synthetic"] for c in rec["ratio_search"]["candidates"]] == [0, 2, 4]
    aucs.update({0.0: 0.9, 0.5: float("nan")})
    assert cls_protocols.choose_ratio(trainer)["ratio_search"]["chosen"] == 0.0
    aucs.update({0.0: float("nan"), 0.5: float("nan"), 1.0: float("nan")})
    assert cls_protocols.choose_ratio(trainer)["ratio_search"]["chosen"] == 0.0 and math.isnan(aucs[1.0])


def test_paired_comparisons_with_auto_beside_fixed_ratios():
    """An auto run beside fixed-ratio runs of the same architecture: compared with R, never sorted against floats."""
    from neonet_toolkit.evaluation.cls_metrics import auto_comparisons

    def run(name, ratio, arm="synthetic"):
        return {"run": name, "arch": "pattennet", "ratio": ratio, "arm": arm, "crop_source": "gt",
                "early_stopping": "nested"}

    results = {r["run"]: r for r in (run("r0", 0.0), run("r1", 1.0), run("auto", "auto"), run("over", 1.0, "oversample"))}
    pairs = auto_comparisons(results)
    assert ("r1", "r0") in pairs and ("auto", "r0") in pairs and ("over", "r0") in pairs
    assert len(pairs) == len(set(pairs)) == 3
