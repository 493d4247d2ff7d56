"""NeoCls: PattenNet/DAB, baselines, trainer (frozen encoder, leakage, OOF outputs, resume, CLI),
evaluation and experiment runner, shortcut check, DDP (gloo) and a learning run on the phantom."""
from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from neonet_toolkit.utilities import stats
from neonet_toolkit.networks.classifiers import (TABLE2_ARCHS, TABLE5_ARCHS, build_classifier, canonical_arch,
                                                 parse_arch)
from neonet_toolkit.networks.pattennet import DualAttentionBlock, FrozenVAEEncoder, PattenNet

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ (shared helpers)
import test_cls_utils as U  # noqa: E402

from neonet_toolkit.experiment_planning.plans import paper_cls_settings  # noqa: E402

CLS = paper_cls_settings()  # every setting comes from the plans (the gpu_full preset)

torch.set_num_threads(1)


def tiny_pattennet(**kw) -> PattenNet:
    torch.manual_seed(0)
    enc = FrozenVAEEncoder(U.TINY_VAE, 1.0)
    return PattenNet(enc, adapter_channels=16, head_hidden=16, dropout=0.0, **kw)


# ----------------------------------------------------------------------------- networks
def test_dab_shapes_and_maps():
    x = torch.randn(2, 16, 4, 8, 8)
    dab = DualAttentionBlock(16, "channel_spatial")
    assert dab.channel(x).shape == (2, 16, 1, 1, 1)
    assert dab.spatial(x).shape == (2, 1, 4, 8, 8)
    assert dab.spatial.conv.kernel_size == (7, 7, 7)
    out = dab(x)
    assert out.shape == x.shape
    xc = x * dab.channel(x)
    torch.testing.assert_close(out, xc * dab.spatial(xc))  # channel first, then spatial, both multiplied in
    assert DualAttentionBlock(16, "channel").spatial is None and DualAttentionBlock(16, "spatial").channel is None
    with pytest.raises(ValueError):
        DualAttentionBlock(16, "both")


def test_attention_maps_are_applied_and_trained():
    net = tiny_pattennet(n_dab=2)
    x = torch.randn(2, 2, 16, 32, 32)
    net(x).sum().backward()
    for dab in net.dabs:
        assert dab.spatial.conv.weight.grad is not None and dab.spatial.conv.weight.grad.abs().sum() > 0
        assert dab.channel.mlp[0].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in net.encoder.parameters())  # frozen: no gradient at all
    net.eval()
    with torch.no_grad():
        ref = net(x)
        for which in ("spatial", "channel"):
            h = getattr(net.dabs[0], which).register_forward_hook(lambda m, i, o: torch.zeros_like(o))
            zeroed = net(x)
            h.remove()
            assert not torch.allclose(zeroed, ref), which
            # a zero map zeroes the features: the output is the head applied to zero pooled features
            assert torch.allclose(zeroed, net.head(torch.zeros(2, net.head[0].in_features)), atol=1e-6)
        torch.testing.assert_close(net(x), ref)


@pytest.mark.parametrize("mode", ["shared", "mask"])
def test_pattennet_uses_both_channels(mode):
    net = tiny_pattennet(n_dab=1, input_mode=mode).eval()
    x = torch.rand(2, 2, 16, 32, 32)
    x2 = x.clone()
    x2[:, 1, 4:8, 10:20, 10:20] = 0  # change the tumour channel only
    with torch.no_grad():
        assert not torch.allclose(net(x), net(x2))
    assert net.adapter[0].in_channels == (8 if mode == "shared" else 5)


def test_frozen_encoder_unchanged_by_training_step():
    net = tiny_pattennet(n_dab=2)
    before = {k: v.clone() for k, v in net.encoder.state_dict().items()}
    other = {k: v.clone() for k, v in net.state_dict().items() if not k.startswith("encoder.")}
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], 1e-2)
    net.train()
    assert not net.encoder.training  # train() never unfreezes the encoder (eval mode kept)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(net(torch.randn(4, 2, 16, 32, 32)).reshape(-1),
                                                                torch.tensor([0.0, 1.0, 0.0, 1.0]))
    loss.backward()
    opt.step()
    for k, v in net.encoder.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert any(not torch.equal(v, other[k]) for k, v in net.state_dict().items() if k in other)


def test_frozen_encoder_is_the_vaes_encoder_with_its_intensity_mapping():
    from neonet_toolkit.networks.generative import build_vae

    torch.manual_seed(0)
    cfg = dict(U.TINY_VAE, input_intensity={"scale": 2.0, "clip": 3.0})
    vae = build_vae(cfg).eval()
    enc = FrozenVAEEncoder(cfg, 0.7, vae=vae)
    x = 4 * torch.randn(2, 1, 16, 32, 32)
    with torch.no_grad():
        ref = vae.encode(torch.clamp(x / 2.0, -3.0, 3.0))[0] * 0.7
    torch.testing.assert_close(enc(x), ref)


@pytest.mark.parametrize("n_dab", [0, 1, 3])
def test_number_of_dabs(n_dab):
    net = build_classifier(f"pattennet_dab{n_dab}", {**CLS, "adapter_channels": 8}, vae_config=U.TINY_VAE)
    assert len(net.dabs) == n_dab
    assert net(torch.randn(1, 2, 16, 32, 32)).shape == (1, 1)


def test_arch_names():
    assert len(TABLE2_ARCHS) == 14 and all(parse_arch(a) for a in TABLE2_ARCHS + TABLE5_ARCHS)
    assert canonical_arch("EfficientNet-B0") == "efficientnet_b0"
    assert canonical_arch("pattennet_dab2") == "pattennet"
    assert parse_arch("pattennet_dab1_spatial") == {"family": "pattennet", "n_dab": 1, "dab_mode": "spatial"}
    with pytest.raises(ValueError, match="Unknown classifier"):
        parse_arch("vgg16")


def test_baselines_forward_2ch_3d():
    torch.manual_seed(0)
    x = torch.randn(2, 2, 16, 32, 32)
    for arch in ("resnet50", "densenet121", "efficientnet_b0", "swin"):
        net = build_classifier(arch, {**CLS, "swin_feature_size": 12}).eval()
        with torch.no_grad():
            assert net(x).shape == (2, 1), arch
    r = build_classifier("resnet50", CLS)
    assert r.conv1.stride == (2, 2, 2) and r.conv1.in_channels == 2
    # EfficientNet built with pretrained=False: two seeds give different (random) stems, as expected
    torch.manual_seed(1)
    a = build_classifier("efficientnet_b0", CLS).net._conv_stem.weight.clone()
    torch.manual_seed(2)
    assert not torch.equal(a, build_classifier("efficientnet_b0", CLS).net._conv_stem.weight)


# ----------------------------------------------------------------------------- trainer on the phantom
@pytest.fixture
def cls_env(planned_phantom, tmp_path, monkeypatch):
    env = U.copy_planned(planned_phantom, tmp_path, monkeypatch)
    env["cfg"] = U.add_configuration(env["preprocessed"], "cls_tiny", {"epochs": 2})
    return env


def _rows(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_train_fold_pattennet_rs(cls_env):
    from neonet_toolkit.networks.generative import vae_checkpoint_path
    from neonet_toolkit.utilities.checkpoints import load_checkpoint
    from neonet_toolkit.training.cls import ClsTrainer
    from neonet_toolkit.models.cls import load_fold_classifier, predict_proba
    from neonet_toolkit.preprocessing.patches import load_patch, patch_folder

    ds, pp = cls_env["dataset_name"], cls_env["preprocessed"]
    U.make_fold_vae(ds, pp, 0)
    U.make_synthetic_set(ds, pp, 0, n_majority=2)
    # the paper protocol (the default is nested; test_cls_protocol.py); the noisy test set fails any honest quality
    # gate (test_cls_auto_ratio.py), so it is overridden here and the override recorded
    tr = ClsTrainer(ds, 0, arch="pattennet", synthetic_ratio=1.0, configuration=cls_env["cfg"], device="cpu",
                    early_stopping="val", allow_failed_gate=True)
    out = tr.run()
    assert out == cls_env["results"] / "cls_pattennet_1__NeoNetPlans" / "fold_0"
    for f in ("checkpoint_final.pth", "checkpoint_best.pth", "progress.png", "training_log.txt",
              "oof_predictions.csv", "train_predictions.csv", "cls_summary.json"):
        assert (out / f).is_file(), f
    summ = __import__("json").loads((out / "cls_summary.json").read_text(encoding="utf-8"))
    val, train = set(summ["val_ids"]), set(summ["train_ids"])
    rows = _rows(out / "oof_predictions.csv")
    assert [r["case_id"] for r in rows] == summ["val_ids"] and not val & train
    # leakage: nothing seen in training is a validation case or derived from one
    seen_real = {s for s in summ["seen_train_items"] if not s.startswith("synthetic:")}
    seen_src = {s.split("<-")[1] for s in summ["seen_train_items"] if s.startswith("synthetic:")}
    assert seen_real and seen_src and not (seen_real | seen_src) & val and seen_src <= train
    # ratio 1.0 -> balanced training set; probabilities recalibrated to the real prevalence
    assert summ["train_prevalence"] == pytest.approx(0.5) and summ["real_prevalence"] < 0.45
    raw = np.array([float(r["probability_raw"]) for r in rows])
    np.testing.assert_allclose([float(r["probability"]) for r in rows],
                               stats.recalibrate_prior(raw, 0.5, summ["real_prevalence"]), atol=2e-6)
    # frozen encoder: identical to the fold's VAE checkpoint
    vae_sd = load_checkpoint(vae_checkpoint_path(ds, 0))["network"]
    final = load_checkpoint(out / "checkpoint_final.pth")
    for k, v in final["network"].items():
        if k.startswith("encoder.encoder.") or k.startswith("encoder.quant_conv_mu."):
            assert torch.equal(v, vae_sd[k[len("encoder."):]]), k
    n_enc = sum(k.startswith("encoder.encoder.") for k in final["network"])
    assert n_enc == sum(k.startswith("encoder.") for k in vae_sd)
    info = final["extra"]["inference"]
    assert info["arch"] == "pattennet" and info["threshold"] == summ["threshold"]
    # importable loader reproduces the out-of-fold probabilities
    net, info2 = load_fold_classifier(ds, "cls_pattennet_1", 0)
    x = np.stack([load_patch(patch_folder(pp, "gt"), c)[0] for c in summ["val_ids"]])
    np.testing.assert_allclose(predict_proba(net, info2, x), [float(r["probability"]) for r in rows], atol=1e-5)


def test_min_epochs_keeps_early_stopping_from_selecting_untrained_epochs(cls_env):
    """``min_epochs``: epochs before it are neither selected nor counted against the patience."""
    import json

    from neonet_toolkit.utilities.checkpoints import load_checkpoint
    from neonet_toolkit.training.cls import ClsTrainer

    ds, pp = cls_env["dataset_name"], cls_env["preprocessed"]
    U.make_fold_vae(ds, pp, 0)
    cfg = U.add_configuration(pp, "cls_min", {"epochs": 4, "min_epochs": 3, "patience": 1})
    out = ClsTrainer(ds, 0, configuration=cfg, device="cpu", early_stopping="val").run()
    summ = json.loads((out / "cls_summary.json").read_text(encoding="utf-8"))
    assert summ["selected_epoch"] in (2, 3)  # epochs 0 and 1 are not candidates
    assert load_checkpoint(out / "checkpoint_best.pth")["epoch"] == summ["selected_epoch"]
    log = json.loads((out / "progress.json").read_text(encoding="utf-8"))
    assert len(log) == 4  # patience 1 did not stop it before epoch 3


def test_latent_cache_matches_uncached_training(cls_env):
    """Caching the frozen encoder's latents (all flip variants) is a pure speed-up: same augmentation
    draws, same updates, same out-of-fold probabilities as encoding every batch."""
    from neonet_toolkit.training.cls import ClsTrainer
    from neonet_toolkit.models.cls_results import OOF_FILE, read_predictions_csv

    ds, pp = cls_env["dataset_name"], cls_env["preprocessed"]
    U.make_fold_vae(ds, pp, 0)
    probs = {}
    for cache in (True, False):
        cfg = U.add_configuration(pp, f"cls_cache_{int(cache)}", {"epochs": 2, "cache_latents": cache,
                                                                   "dropout": 0.0})
        tr = ClsTrainer(ds, 0, configuration=cfg, device="cpu", early_stopping="none")
        out = tr.run()
        assert (tr.z_train is not None) == cache
        if cache:
            assert tuple(tr.z_train.shape[:2]) == (len(tr.data.y_train), 8)  # every flip variant encoded once
        probs[cache] = [r["probability_raw"] for r in read_predictions_csv(out / OOF_FILE)]
        for f in out.iterdir():
            f.unlink()
    np.testing.assert_allclose(probs[True], probs[False], atol=1e-5)


def test_synthetic_from_validation_case_is_refused(cls_env):
    from neonet_toolkit.training.cls import ClsTrainer

    ds, pp = cls_env["dataset_name"], cls_env["preprocessed"]
    U.make_synthetic_set(ds, pp, 1, val_leak=True)
    tr = ClsTrainer(ds, 1, arch="resnet10", synthetic_ratio=1.0, configuration=cls_env["cfg"], device="cpu")
    with pytest.raises(ValueError, match="validation"):
        tr.run()


def test_inner_split_resume_and_cli(cls_env):
    from neonet_toolkit.run.train import main as train_main
    from neonet_toolkit.utilities.checkpoints import load_checkpoint

    ds, pp = cls_env["dataset_name"], cls_env["preprocessed"]
    U.make_synthetic_set(ds, pp, 2)
    args = ["501", "cls", "2", "--arch", "resnet10", "--synthetic-ratio", "0.5", "--allow-failed-gate", "-device",
            "cpu", "--configuration", cls_env["cfg"], "--early-stopping", "inner", "--epochs", "1"]
    assert train_main(args) == 0
    out = cls_env["results"] / "cls_resnet10_0.5_esinner__NeoNetPlans" / "fold_2"
    summ = __import__("json").loads((out / "cls_summary.json").read_text(encoding="utf-8"))
    inner = set(summ["inner_val_ids"])
    assert inner and not inner & set(summ["fit_ids"]) and summ["threshold_source"] == "inner_split"
    assert not set(summ["synthetic_sources"]) & inner  # synthetic derived from inner-val cases left out
    assert train_main(args) == 2  # refuses to overwrite a finished fold
    assert train_main(args[:-1] + ["3", "--c"]) == 0  # continue to 3 epochs
    assert len(load_checkpoint(out / "checkpoint_final.pth")["history"]) == 3
    assert train_main(args + ["--arch", "vgg"]) == 2


def test_shortcut_check_detects_noisy_synthetic(cls_env):
    from neonet_toolkit.evaluation.cls_shortcut import shortcut_check

    ds, pp = cls_env["dataset_name"], cls_env["preprocessed"]
    U.make_synthetic_set(ds, pp, 0, noise=0.5, n_majority=4)
    noisy = shortcut_check(ds, 0, 1.0)
    assert noisy["all"]["auc"] > 0.9 and noisy["warning"]
    U.make_synthetic_set(ds, pp, 1, noise=0.0, n_majority=4)  # exact copies: indistinguishable
    clean = shortcut_check(ds, 1, 1.0)
    assert clean["all"]["auc"] < 0.75 and not clean["warning"]
    assert (cls_env["results"] / "cls_shortcut__NeoNetPlans" / "fold_0_r1_gt.json").is_file()


def test_experiment_grid_evaluation_resume(cls_env):
    from neonet_toolkit.run.experiment import run_experiment

    ds, pp = cls_env["dataset_name"], cls_env["preprocessed"]
    for f in range(5):
        U.make_fold_vae(ds, pp, f)
        U.make_synthetic_set(ds, pp, f)
    kw = dict(archs=["pattennet", "resnet10"], ratios=[0, 1.0], device="cpu", configuration=cls_env["cfg"], epochs=1,
              n_boot=200, early_stopping="val", allow_failed_gate=True)
    st = run_experiment(ds, **kw)
    assert not st["failed"] and len(st["trained"]) == 20 and len(st["shortcut"]) == 5
    ev = Path(st["evaluation"])
    for f in ("report.md", "table2.md", "table2.csv", "table5.md", "paired_tests.csv", "summary.json",
              "roc_all.png", "roc_cls_pattennet_1.png", "calibration_cls_resnet10_0.png"):
        assert (ev / f).is_file(), f
    table = (ev / "table2.md").read_text(encoding="utf-8")
    assert "PattenNet" in table and "ResNet-10" in table and "R+S (100% balanced)" in table and "pooled" in table
    summary = __import__("json").loads((ev / "summary.json").read_text(encoding="utf-8"))
    r = summary["runs"]["cls_pattennet_1"]
    assert r["complete"] and r["n"] == 20
    assert r["pooled_delong"]["ci_low"] <= r["pooled_auc"] <= r["pooled_delong"]["ci_high"]
    pairs = {(t["run_a"], t["run_b"]) for t in summary["paired_tests"]}
    assert ("cls_pattennet_1", "cls_pattennet_0") in pairs and ("cls_pattennet_0", "cls_resnet10_0") in pairs
    assert all(t["n_common"] == 20 for t in summary["paired_tests"])
    # interruption: one fold left with only its latest checkpoint -> resumed; the rest skipped
    fold = cls_env["results"] / "cls_resnet10_1__NeoNetPlans" / "fold_3"
    for f in ("checkpoint_final.pth", "oof_predictions.csv"):
        (fold / f).unlink()
    st2 = run_experiment(ds, **kw, evaluate=False, shortcut=False)
    assert len(st2["resumed"]) == 1 and len(st2["skipped"]) == 19 and (fold / "oof_predictions.csv").is_file()
    from neonet_toolkit.run.experiment import main as experiment_main

    argv = ["501", "--archs", "pattennet", "resnet10", "--ratios", "0", "1.0", "-device", "cpu", "--configuration",
            cls_env["cfg"], "--epochs", "1", "--no-shortcut", "--n-boot", "100", "--allow-failed-gate"]
    assert experiment_main(argv + ["--launcher", "inline"]) == 0
    # the default launcher runs the job graph: every classifier run is finished, so neither their unfinished
    # ancestors (this fixture has VAEs and synthetic sets but no LDM/ControlNet) nor they run again; the evaluation
    # job does, because fold 3's checkpoint is newer than the report
    report = ev / "report.md"
    os.utime(report, (report.stat().st_mtime - 60,) * 2)
    before = report.stat().st_mtime
    ckpts = {p: p.stat().st_mtime for p in cls_env["results"].glob("cls_*/fold_*/checkpoint_final.pth")}
    assert experiment_main(argv + ["--no-seg"]) == 0
    assert report.stat().st_mtime > before
    assert {p: p.stat().st_mtime for p in ckpts} == ckpts
    assert not any(cls_env["results"].glob("ldm*/fold_*/checkpoint_final.pth"))


def test_evaluation_numbers_match_stats(tmp_path, monkeypatch, planned_phantom, capsys):
    """evaluate_cls on hand-written OOF files: per-fold/pooled AUCs and the paired test equal stats/sklearn."""
    from sklearn.metrics import roc_auc_score

    from neonet_toolkit.evaluation.cls import evaluate_cls
    from neonet_toolkit.models.cls_results import OOF_FILE, SUMMARY_FILE, write_predictions_csv
    from neonet_toolkit.utilities.io import save_json

    env = U.copy_planned(planned_phantom, tmp_path, monkeypatch)
    splits = __import__("json").loads((env["preprocessed"] / "splits_final.json").read_text(encoding="utf-8"))
    labels = {c: r["label"] for c, r in __import__("json").loads(
        (env["preprocessed"] / "neonet_tlcr/gt/metadata.json").read_text(encoding="utf-8"))["cases"].items()}
    rng = np.random.default_rng(0)
    allp = {}
    for run, signal in (("cls_pattennet_1", 1.5), ("cls_resnet50_1", 0.3)):
        for k, s in enumerate(splits):
            out = env["results"] / f"{run}__NeoNetPlans" / f"fold_{k}"
            ps = {c: float(1 / (1 + np.exp(-(signal * labels[c] + rng.normal())))) for c in s["val"]}
            allp.setdefault(run, {}).update(ps)
            write_predictions_csv(out / OOF_FILE, [{"case_id": c, "label": labels[c], "probability": p,
                                                   "probability_raw": p} for c, p in ps.items()],
                                  ["case_id", "label", "probability", "probability_raw"])
            save_json({"arch": run.split("_")[1], "early_stopping": "val", "threshold": 0.5,
                       "threshold_source": "training_cases"}, out / SUMMARY_FILE)
    res = evaluate_cls(env["dataset_name"], n_boot=300)
    ids = sorted(labels)
    y = [labels[c] for c in ids]
    r = res["runs"]["cls_pattennet_1"]
    assert r["pooled_auc"] == pytest.approx(roc_auc_score(y, [allp["cls_pattennet_1"][c] for c in ids]))
    fold_aucs = [roc_auc_score([labels[c] for c in s["val"]], [allp["cls_pattennet_1"][c] for c in s["val"]])
                 for s in splits]
    assert r["fold_auc_mean"] == pytest.approx(np.mean(fold_aucs))
    t = res["paired_tests"][0]
    ref = stats.delong_paired_test(y, [allp["cls_pattennet_1"][c] for c in ids], [allp["cls_resnet50_1"][c] for c in ids])
    assert (t["run_a"], t["run_b"]) == ("cls_pattennet_1", "cls_resnet50_1") and t["p_value"] == pytest.approx(ref["p_value"])
    assert "ResNet-50" in (Path(res["output"]) / "table2.md").read_text(encoding="utf-8")
    from neonet_toolkit.run.evaluate import main as evaluate_main

    capsys.readouterr()
    assert evaluate_main(["501", "cls", "--n-boot", "100", "--compare", "cls_resnet50_1", "cls_pattennet_1"]) == 0
    printed = capsys.readouterr().out  # the main table, the protocol, the tests, then the files
    assert "| PattenNet |" in printed and "PAPER PROTOCOL (OPTIMISTIC)" in printed
    assert "cls_resnet50_1 vs cls_pattennet_1" in printed and "Holm" in printed and "report.md" in printed
    assert evaluate_main(["501", "cls", "--compare", "cls_resnet50_1", "cls_nope_1"]) == 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_gloo_two_processes(cls_env):
    ds, pp = cls_env["dataset_name"], cls_env["preprocessed"]
    U.make_fold_vae(ds, pp, 0)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", "-m", "neonet_toolkit.run.train", "501", "cls", "0", "-device", "cpu",
           "--configuration", cls_env["cfg"], "--epochs", "2"]
    p = subprocess.run(cmd, env=env, capture_output=True, encoding="utf-8", errors="replace", timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    out = cls_env["results"] / "cls_pattennet_0_esnested__NeoNetPlans" / "fold_0"  # default protocol: nested
    summ = __import__("json").loads((out / "cls_summary.json").read_text(encoding="utf-8"))
    assert summ["world_size"] == 2 and len(_rows(out / "oof_predictions.csv")) == 4
    assert "world=2" in (out / "training_log.txt").read_text(encoding="utf-8")


# ----------------------------------------------------------------------------- radiomics (optional extra)
def test_radiomics_missing_is_a_clear_skip(cls_env, monkeypatch):
    from neonet_toolkit.training import radiomics
    from neonet_toolkit.run.experiment import run_experiment

    monkeypatch.setattr(radiomics, "radiomics_available", lambda: False)
    with pytest.raises(radiomics.RadiomicsUnavailable, match="pip install"):
        radiomics.run_radiomics_baseline(cls_env["dataset_name"], [0])
    st = run_experiment(cls_env["dataset_name"], ["radiomics"], [0], device="cpu", evaluate=False)
    assert not st["failed"] and any("pyradiomics is not installed" in s for s in st["skipped"])


def test_radiomics_baseline_same_folds(cls_env):
    pytest.importorskip("radiomics")
    from neonet_toolkit.training import radiomics
    from neonet_toolkit.evaluation.cls import evaluate_cls

    if not radiomics.radiomics_available():
        pytest.skip("pyradiomics installed but not importable")
    root = radiomics.run_radiomics_baseline(cls_env["dataset_name"])
    assert root.name == "cls_radiomics_0__NeoNetPlans"
    res = evaluate_cls(cls_env["dataset_name"], n_boot=200)
    r = res["runs"]["cls_radiomics_0"]
    assert r["complete"] and r["n"] == 20 and 0.0 <= r["pooled_auc"] <= 1.0
    assert "Radiomics" in (Path(res["output"]) / "table2.md").read_text(encoding="utf-8")
    # a second run reuses the finished folds (same settings, same split); overwrite refits them
    oof = root / "fold_0" / "oof_predictions.csv"
    before = (oof.stat().st_mtime_ns, oof.read_bytes())
    radiomics.run_radiomics_baseline(cls_env["dataset_name"], [0])
    assert (oof.stat().st_mtime_ns, oof.read_bytes()) == before
    radiomics.run_radiomics_baseline(cls_env["dataset_name"], [0], overwrite=True)
    assert oof.stat().st_mtime_ns != before[0] and oof.read_bytes() == before[1]  # refitted, same answer


@pytest.mark.slow  # 1.5 min of CPU: five nested ResNet-10 folds and the radiomics baseline's permutation guard
def test_find_best_configuration_cli_on_the_phantom(cls_env, capsys):
    """`neonet_find_best_configuration` end to end: trains the nested runs and the radiomics baseline, chooses on the
    inner folds, prints the table and leaves neonet_predict a deployable default."""
    pytest.importorskip("radiomics")
    from neonet_toolkit.run.find_best_configuration import main
    from neonet_toolkit.utilities.identifiers import ResultLayout

    ds = cls_env["dataset_name"]
    assert main([ds, "--archs", "resnet10", "radiomics", "fusion", "--configuration", cls_env["cfg"],
                 "-device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "Selection procedure" in out and "cls_resnet10_0_esnested + cls_radiomics_0" in out
    res = json.loads(ResultLayout.for_dataset(ds).best_configuration_file().read_text(encoding="utf-8"))
    assert res["candidates"] == ["cls_resnet10_0_esnested", "cls_radiomics_0", "cls_resnet10_0_esnested + cls_radiomics_0"]
    assert res["selection_procedure"]["n"] == 20 and len(res["per_fold"]) == 5
    assert res["predict_default"] == "cls_resnet10_0_esnested"  # the only candidate with checkpoints
    assert all(f["chosen"] in res["candidates"] for f in res["per_fold"])
