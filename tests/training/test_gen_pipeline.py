"""NeoGen end to end on the tiny phantom (fold 0, CPU): VAE -> LDM -> ControlNet -> synthetic set -> report.

The pipeline runs once per module through the real CLIs on a copy of the planned phantom with a
``gen_test`` configuration (inherits cpu_small, fewer epochs).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

GEN_TEST = {"inherits_from": "cpu_small",
            "vae": {"epochs": 15, "lr": 3e-3, "batch_size": 2, "val_every": 5},
            "ldm": {"epochs": 30, "lr": 2e-3, "val_every": 10},
            "controlnet": {"epochs": 15, "lr": 2e-3, "val_every": 5},
            "sampling": {"steps": 5}}


def copy_planned(planned, dst: Path, configurations: dict) -> dict:
    env = {}
    for k, v in planned["env"].items():
        target = dst / Path(v).name
        if k in ("nnUNet_raw", "nnUNet_preprocessed"):
            shutil.copytree(v, target)
        else:
            target.mkdir(parents=True, exist_ok=True)
        env[k] = str(target)
    plans_file = Path(env["nnUNet_preprocessed"]) / planned["dataset_name"] / "neonet_plans.json"
    plans = json.loads(plans_file.read_text(encoding="utf-8"))
    plans["configurations"].update(configurations)
    plans_file.write_text(json.dumps(plans, indent=1), encoding="utf-8")
    return env


@pytest.fixture(scope="module")
def neogen_run(planned_phantom, tmp_path_factory):
    from neonet_toolkit.run.evaluate import main as evaluate_main
    from neonet_toolkit.run.generate import main as generate_main
    from neonet_toolkit.run.train import main as train_main

    root = tmp_path_factory.mktemp("neogen")
    env = copy_planned(planned_phantom, root, {"gen_test": GEN_TEST})
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        for stage in ("vae", "ldm", "controlnet"):
            assert train_main(["501", stage, "0", "-device", "cpu", "--configuration", "gen_test"]) == 0
        assert generate_main(["-d", "501", "-f", "0", "--ratio", "1.0", "--n-majority", "2", "-device", "cpu",
                              "--configuration", "gen_test"]) == 0
        assert evaluate_main(["501", "gen", "-f", "0", "-device", "cpu", "--n-montage", "3"]) == 0
        yield {"env": env, "name": planned_phantom["dataset_name"],
               "res": Path(env["neonet_results"]) / planned_phantom["dataset_name"],
               "pp": Path(env["nnUNet_preprocessed"]) / planned_phantom["dataset_name"]}


def _split(run):
    return json.loads((run["pp"] / "splits_final.json").read_text(encoding="utf-8"))[0]


def test_trainers_write_nnunet_style_folders(neogen_run):
    from neonet_toolkit.networks.generative import load_fold_vae
    from neonet_toolkit.utilities.checkpoints import load_checkpoint

    for stage in ("vae", "ldm", "controlnet"):
        fold = neogen_run["res"] / f"{stage}__NeoNetPlans" / "fold_0"
        for f in ("checkpoint_final.pth", "checkpoint_latest.pth", "training_log.txt", "progress.png",
                  "progress.json", "training_manifest.json"):
            assert (fold / f).is_file(), (stage, f)
        ck = load_checkpoint(fold / "checkpoint_final.pth")  # weights_only=True
        assert ck["epoch"] == GEN_TEST[stage]["epochs"] - 1
        assert ck["extra"]["scale_factor"] > 0
    vae, sf, cfg = load_fold_vae(neogen_run["name"], 0)
    assert sf > 0 and cfg["input_intensity"]["scale"] > 0
    assert list(load_checkpoint(neogen_run["res"] / "vae__NeoNetPlans/fold_0/checkpoint_final.pth")["extra"]
                ["latent_shape"]) == [4, 4, 8, 8]


def test_no_validation_case_in_any_neogen_training_manifest(neogen_run):
    val = set(_split(neogen_run)["val"])
    train = set(_split(neogen_run)["train"])
    for stage in ("vae", "ldm", "controlnet"):
        m = json.loads((neogen_run["res"] / f"{stage}__NeoNetPlans/fold_0/training_manifest.json").read_text(encoding="utf-8"))
        assert set(m["train_ids"]) == train and not (set(m["train_ids"]) & val)
    syn = json.loads((neogen_run["res"] / "synthetic__NeoNetPlans/fold_0/manifest.json").read_text(encoding="utf-8"))
    assert {e["source_case"] for e in syn["entries"]} <= train
    assert not ({e["source_case"] for e in syn["entries"]} & val)
    assert not (set(syn["train_ids"]) & val)


def test_synthetic_set_balances_the_fold_and_is_classifier_ready(neogen_run):
    from neonet_toolkit.generation.generate import load_synthetic_patch
    from neonet_toolkit.preprocessing.synthetic_sets import load_manifest, select_for_ratio, synthetic_folder
    from neonet_toolkit.preprocessing.patches import load_metadata, load_patch, patch_folder

    with pytest.MonkeyPatch.context() as mp:
        for k, v in neogen_run["env"].items():
            mp.setenv(k, v)
        folder = synthetic_folder(neogen_run["name"], 0)
    m = load_manifest(folder)
    meta = load_metadata(patch_folder(neogen_run["pp"], "gt"))["cases"]
    counts = np.bincount([meta[c]["label"] for c in _split(neogen_run)["train"]], minlength=2)
    minority = int(np.argmin(counts))
    assert m["minority_class"] == minority and m["gap"] == int(abs(counts[1] - counts[0]))
    sel = select_for_ratio(m, 1.0)
    assert len(sel) == m["gap"] and all(e["label"] == minority for e in sel)
    assert counts[minority] + len(sel) == counts[1 - minority]  # 1:1
    maj = select_for_ratio(m, 0.0, n_majority=2)
    assert len(maj) == 2 and all(e["label"] == 1 - minority for e in maj)
    src = patch_folder(neogen_run["pp"], "gt")
    for e in m["entries"]:
        img, lab = load_synthetic_patch(folder, e["id"])
        _, src_lab = load_patch(src, e["source_case"])
        assert img.shape == (2, 16, 32, 32) and img.dtype == np.float32 and lab.dtype == np.uint8
        assert np.array_equal(lab, src_lab) and meta[e["source_case"]]["label"] == e["label"]
        assert np.all(img[0][lab[0] == 0] == 0) and np.array_equal(img[1], img[0] * lab[1])
        assert np.isfinite(img).all() and img[0][lab[0] > 0].std() > 0
        with np.load(folder / "patches" / f"{e['id']}.npz") as z:
            prov = json.loads(str(z["provenance"]))
        assert prov["source_case"] == e["source_case"] and prov["seed"] == e["seed"] and prov["steps"] == 5
        assert prov["checkpoint"].endswith("controlnet__NeoNetPlans/fold_0/checkpoint_final.pth")


def test_seeded_generation_with_trained_models_is_bit_identical(neogen_run):
    from neonet_toolkit.generation.generate import generate_patch, load_neogen_models, load_synthetic_patch
    from neonet_toolkit.preprocessing.synthetic_sets import load_manifest

    with pytest.MonkeyPatch.context() as mp:
        for k, v in neogen_run["env"].items():
            mp.setenv(k, v)
        models = load_neogen_models(neogen_run["name"], 0, "cpu")
        folder = neogen_run["res"] / "synthetic__NeoNetPlans/fold_0"
        e = load_manifest(folder)["entries"][0]
        stored, lab = load_synthetic_patch(folder, e["id"])
        again = generate_patch(models, lab, e["seed"], e["steps"], class_label=e["label"])
        twice = generate_patch(models, lab, e["seed"], e["steps"], class_label=e["label"])
    assert np.array_equal(again, twice) and np.array_equal(again, stored)


def test_quality_report_vae_beats_mean_patch_and_montage(neogen_run):
    rep = json.loads((neogen_run["res"] / "gen_evaluation__NeoNetPlans/fold_0/gen_report.json").read_text(encoding="utf-8"))
    rec = rep["reconstruction"]
    assert rec["vae"]["psnr"] > rec["mean_patch_baseline"]["psnr"] + 1.0, rec
    assert rec["vae"]["ssim"] > rec["mean_patch_baseline"]["ssim"], rec
    gen = rep["generation"]
    for key in ("fid_synthetic_vs_real_train", "fid_real_val_vs_real_train"):
        for v in ("axial", "sagittal", "coronal", "average"):
            assert np.isfinite(gen[key][v]) and gen[key][v] >= 0
    assert Path(rep["montage"]).is_file() and Path(rep["montage"]).stat().st_size > 10_000
    assert "| NeoGen VAE |" in (neogen_run["res"] / "gen_evaluation__NeoNetPlans/fold_0/tables.md").read_text(encoding="utf-8")


def test_quality_suite_in_the_report_and_beside_the_set(neogen_run):
    """`neonet_evaluate 501 gen` measures the set with the suite, writes quality.json for the gate and puts the
    headline table before the legacy PCA-FID one."""
    pytest.importorskip("radiomics")
    from neonet_toolkit.preprocessing.synthetic_sets import load_quality, manifest_sha256

    folder = neogen_run["res"] / "gen_evaluation__NeoNetPlans/fold_0"
    rep = json.loads((folder / "gen_report.json").read_text(encoding="utf-8"))
    q = rep["quality"]["synthetic"]
    n_syn = len(json.loads((neogen_run["res"] / "synthetic__NeoNetPlans/fold_0/manifest.json")
                           .read_text(encoding="utf-8"))["entries"])
    assert q["n_candidate"] == n_syn and q["n_val"] == len(_split(neogen_run)["val"])
    assert 0.0 <= q["copy_rate"] <= 1.0 and q["copy"]["n"] == n_syn
    lo, hi = q["kid"]["ci"]
    assert lo <= q["kid"]["value"] <= hi
    st = q["settings"]
    aucs = [v["auc"] for v in q["c2st"]["per_class"].values() if v["auc"] is not None]
    expect_pass = all(a <= st["c2st_auc_max"] for a in aucs) and q["copy_rate"] <= st["copy_rate_max"] \
        and len(aucs) == len(q["c2st"]["per_class"])
    assert q["gate"]["passed"] == expect_pass, q["gate"]
    assert not any("stale" in r for r in q["gate"]["reasons"]), q["gate"]  # judged on the figures, not the stamp
    if not expect_pass:  # the reasons name the measured figures
        assert any("C2ST" in r or "copy rate" in r for r in q["gate"]["reasons"]), q["gate"]
    syn_folder = neogen_run["res"] / "synthetic__NeoNetPlans/fold_0"
    stored = load_quality(syn_folder)
    assert stored["manifest_sha256"] == manifest_sha256(syn_folder) and stored["copy_rate"] == q["copy_rate"]
    assert (folder / "copies_synthetic.png").is_file()
    table = (folder / "tables.md").read_text(encoding="utf-8")
    assert table.index("Generation quality (headline)") < table.index("Legacy Table 4")
    assert "| real val vs real train (reference) |" in table


def test_quality_report_lpips_with_local_weights(neogen_run, tmp_path, monkeypatch):
    """``neonet_evaluate 501 gen --lpips-weights PATH``: LPIPS per view fills the Table 3 column."""
    pytest.importorskip("lpips")
    import torch
    import torchvision

    from neonet_toolkit.run.evaluate import main as evaluate_main

    torch.manual_seed(0)
    f = tmp_path / "alexnet.pth"
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), f)
    for k, v in neogen_run["env"].items():
        monkeypatch.setenv(k, v)
    assert evaluate_main(["501", "gen", "-f", "0", "-device", "cpu", "--reconstruction-only",
                          "--lpips-weights", str(f)]) == 0
    rep = json.loads((neogen_run["res"] / "gen_evaluation__NeoNetPlans/fold_0/gen_report.json").read_text(encoding="utf-8"))
    rec = rep["reconstruction"]
    views = rec["vae"]["lpips_per_view"]
    assert set(views) == {"axial", "sagittal", "coronal", "average"} and all(v > 0 for v in views.values())
    assert rec["vae"]["lpips"] == views["average"] and rec["mean_patch_baseline"]["lpips"] > 0
    table = (neogen_run["res"] / "gen_evaluation__NeoNetPlans/fold_0/tables.md").read_text(encoding="utf-8")
    assert f"| NeoGen VAE | {rec['vae']['lpips']:.4f} |" in table
    assert evaluate_main(["501", "gen", "-f", "0", "-device", "cpu", "--reconstruction-only",
                          "--lpips-weights", str(tmp_path / "nope.pth")]) != 0


def test_generation_is_incremental_and_refuses_other_settings(neogen_run):
    from neonet_toolkit.generation.generate import generate_synthetic_set
    from neonet_toolkit.preprocessing.synthetic_sets import load_manifest

    with pytest.MonkeyPatch.context() as mp:
        for k, v in neogen_run["env"].items():
            mp.setenv(k, v)
        folder = neogen_run["res"] / "synthetic__NeoNetPlans/fold_0"
        before = load_manifest(folder)
        mtimes = {f.name: f.stat().st_mtime_ns for f in (folder / "patches").iterdir()}
        # same settings, lower ratio: nothing regenerated, the existing entries are kept
        generate_synthetic_set(neogen_run["name"], 0, ratio=0.5, n_majority=2, device="cpu",
                               configuration="gen_test")
        after = load_manifest(folder)
        assert after["entries"] == before["entries"]
        assert {f.name: f.stat().st_mtime_ns for f in (folder / "patches").iterdir()} == mtimes
        with pytest.raises(FileExistsError, match="overwrite"):
            generate_synthetic_set(neogen_run["name"], 0, ratio=1.0, steps=3, device="cpu")


def test_pred_conditioned_set_follows_the_neoseg_masks(neogen_run):
    """End-to-end protocol: with --crop-source pred every synthetic patch is conditioned on (and masked by) the
    source case's predicted mask patch, lands in its own set, and only pred classifier runs read it."""
    from neonet_toolkit.generation.generate import generate_synthetic_set
    from neonet_toolkit.preprocessing.patches import load_patch
    from neonet_toolkit.preprocessing.synthetic_sets import load_manifest
    from neonet_toolkit.training.cls_data import select_synthetic

    split = _split(neogen_run)
    gt, pred = neogen_run["pp"] / "neonet_tlcr/gt", neogen_run["pp"] / "neonet_tlcr/pred"
    with pytest.MonkeyPatch.context() as mp:
        for k, v in neogen_run["env"].items():
            mp.setenv(k, v)
        with pytest.raises(FileNotFoundError, match="pred TLCR mask patch.*neonet_train .* seg"):
            generate_synthetic_set(neogen_run["name"], 0, ratio=1.0, device="cpu", configuration="gen_test",
                                   crop_source="pred")
        # stand-in NeoSeg masks: the ground truth shifted by 2 voxels, so pred and gt conditioning differ
        shutil.copytree(gt, pred)
        for f in pred.glob("*.npz"):
            with np.load(f) as z:
                arrays = dict(z)
            arrays["label"] = np.roll(arrays["label"], 2, axis=1)
            np.savez_compressed(f, **arrays)
        out = generate_synthetic_set(neogen_run["name"], 0, ratio=1.0, device="cpu", configuration="gen_test",
                                     crop_source="pred")
        assert out == neogen_run["res"] / "synthetic_pred__NeoNetPlans/fold_0"
        man = load_manifest(out)
        assert man["crop_source"] == "pred" and man["entries"]
        assert {e["source_case"] for e in man["entries"]} <= set(split["train"])
        for e in man["entries"]:
            with np.load(out / "patches" / f"{e['id']}.npz") as z:
                img, lab = z["image"], z["label"]
            _, lab_pred = load_patch(pred, e["source_case"])
            _, lab_gt = load_patch(gt, e["source_case"])
            assert np.array_equal(lab, lab_pred) and not np.array_equal(lab, lab_gt)
            assert not img[0][lab_pred[0] == 0].any() and not img[1][lab_pred[1] == 0].any()
        entries, folder = select_synthetic(neogen_run["name"], 0, 1.0, split["train"], split["val"],
                                           crop_source="pred")
        assert folder == out / "patches" and {e["id"] for e in entries} <= {e["id"] for e in man["entries"]}
        # a pred run never silently reads a set conditioned on other masks
        (out / "manifest.json").write_text(json.dumps({**man, "crop_source": "gt"}), encoding="utf-8")
        with pytest.raises(ValueError, match="conditioned on gt masks.*--crop-source pred --overwrite"):
            select_synthetic(neogen_run["name"], 0, 1.0, split["train"], split["val"], crop_source="pred")
        (out / "manifest.json").write_text(json.dumps(man), encoding="utf-8")


def test_resume_continues_from_latest_and_refuses_silent_overwrite(neogen_run):
    from neonet_toolkit.run.train import main as train_main
    from neonet_toolkit.utilities.checkpoints import load_checkpoint

    with pytest.MonkeyPatch.context() as mp:
        for k, v in neogen_run["env"].items():
            mp.setenv(k, v)
        assert train_main(["501", "ldm", "0", "-device", "cpu", "--configuration", "gen_test"]) == 2  # exists
        n = GEN_TEST["ldm"]["epochs"]
        assert train_main(["501", "ldm", "0", "-device", "cpu", "--configuration", "gen_test", "--c",
                           "--epochs", str(n + 2)]) == 0
    ck = load_checkpoint(neogen_run["res"] / "ldm__NeoNetPlans/fold_0/checkpoint_final.pth")
    assert ck["epoch"] == n + 1 and len(ck["history"]) == n + 2
    assert "resumed from checkpoint_latest.pth" in \
        (neogen_run["res"] / "ldm__NeoNetPlans/fold_0/training_log.txt").read_text(encoding="utf-8")
    # the ControlNet was trained on the LDM as it was: sampling from it now refuses and names the fix
    from neonet_toolkit.generation.generate import generate_synthetic_set
    from neonet_toolkit.utilities.checkpoints import UpstreamMismatchError

    with pytest.MonkeyPatch.context() as mp:
        for k, v in neogen_run["env"].items():
            mp.setenv(k, v)
        with pytest.raises(UpstreamMismatchError, match="neonet_train .* controlnet 0 --overwrite"):
            generate_synthetic_set(neogen_run["name"], 0, ratio=1.0, n_majority=2, device="cpu",
                                   configuration="gen_test")
    # an interrupted --overwrite never mixes two runs in one fold: the new run trains in fold_0.overwriting and the
    # working fold stays untouched until the new model is finished and verified (issue 21)
    from neonet_toolkit.training.vae import VAETrainer

    with pytest.MonkeyPatch.context() as mp:
        for k, v in neogen_run["env"].items():
            mp.setenv(k, v)
        vae_dir = neogen_run["res"] / "vae__NeoNetPlans/fold_0"
        old_final = (vae_dir / "checkpoint_final.pth").read_bytes()
        tr = VAETrainer(neogen_run["name"], 0, configuration="gen_test", device="cpu", overwrite=True, epochs=1)
        mp.setattr(tr, "train_epoch", lambda epoch: (_ for _ in ()).throw(KeyboardInterrupt()))
        with pytest.raises(KeyboardInterrupt):
            tr.run()
        assert (vae_dir / "checkpoint_final.pth").read_bytes() == old_final
        assert not (vae_dir.parent / "fold_0.overwriting" / "checkpoint_final.pth").exists()
        # the VAE is retrained: the LDM built on the old one refuses to resume, and says how to fix it
        assert train_main(["501", "vae", "0", "-device", "cpu", "--configuration", "gen_test", "--overwrite",
                           "--epochs", "1"]) == 0
        with pytest.raises(UpstreamMismatchError, match="neonet_train .* ldm 0 --overwrite"):
            from neonet_toolkit.training.ldm import LDMTrainer

            LDMTrainer(neogen_run["name"], 0, configuration="gen_test", device="cpu", continue_training=True,
                       epochs=n + 3).run()

