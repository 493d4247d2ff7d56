"""A locked model that travels, end to end with the tiny trained models of the ``trained`` fixture: export to a zip,
install into clean empty result folders, predict from the installed copy and straight from the zip
(``model_package=``) with no training folders present: the same probabilities as from the original folders. The
manifest and the model card carry the numbers of the training folders. Hostile packages: tests/models/test_package.py.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys
import zipfile

import pytest

from e2e_models import DS, trained_env
from neonet_toolkit.inference.predict import predict
from neonet_toolkit.models.package import MODEL_CARD, PackageError, export_model, install_model, verify_package
from neonet_toolkit.utilities import stats
from neonet_toolkit.utilities.identifiers import ResultLayout


def _probabilities(res: dict) -> dict:
    return {r["case_id"]: r["probability"] for r in res["cases"]}


def _assert_same(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b) and len(a) == 2
    for k in a:
        assert (a[k] is None) == (b[k] is None), k
        if a[k] is not None:
            assert abs(float(a[k]) - float(b[k])) <= 1e-6, (k, a[k], b[k])


@pytest.fixture(scope="module")
def exported(trained_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("package")
    with trained_env(trained_models["root"]):
        z = export_model(DS, root / "model.zip", cls_run=trained_models["cls_run"],
                         seg_model=trained_models["seg_model"])
        ref = predict(trained_models["raw"] / "imagesTs", root / "ref", DS, seg_model=trained_models["seg_model"],
                      cls_run=trained_models["cls_run"], device="cpu")
    return z, ref


def test_manifest_and_card_carry_the_training_numbers(trained, exported):
    z, _ = exported
    m = verify_package(z)
    layout = ResultLayout.for_dataset(DS)
    name = layout.dataset_name
    assert m["dataset_name"] == name and m["cls_run"] == trained["cls_run"] and m["seg_folds"] == [0]
    assert m["seg_model"] == f"nnUNet_results/{name}/{trained['seg_model'].name}"
    for v in ("neonet_toolkit", "torch", "nnunetv2", "monai"):
        assert m["versions"][v], v
    with zipfile.ZipFile(z) as zf:
        names = set(zf.namelist())
    assert names == set(m["files"]) | {"manifest.json"}
    run_fold = f"neonet_results/{name}/{trained['cls_run']}__NeoNetPlans/fold_0"
    for f in (f"{m['seg_model']}/plans.json", f"{m['seg_model']}/dataset.json",
              f"{m['seg_model']}/fold_0/checkpoint_final.pth", f"{run_fold}/checkpoint_final.pth",
              f"{run_fold}/cls_summary.json", f"{run_fold}/oof_predictions.csv",
              f"neonet_results/{name}/vae__NeoNetPlans/fold_0/checkpoint_final.pth",
              f"nnUNet_preprocessed/{name}/neonet_plans.json", f"nnUNet_preprocessed/{name}/dataset_fingerprint.json",
              f"nnUNet_preprocessed/{name}/NeoNetPlans.json", f"nnUNet_preprocessed/{name}/neonet_tlcr/gt/metadata.json",
              MODEL_CARD):
        assert f in m["files"], f
    assert not any(f.endswith(".pkl") for f in m["files"])
    # calibration and threshold per fold: those of the run's summary
    summary = json.loads((layout.fold_folder(trained["cls_run"], 0) / "cls_summary.json").read_text("utf-8"))
    assert m["calibration"]["0"]["threshold"] == summary["threshold"]
    assert m["calibration"]["0"]["calibration"] == summary["calibration"]
    assert m["label_roles"]["tumor_labels"] and m["training_data"]["n_labelled"] == 15
    # cross-validated AUC: DeLong on the run's out-of-fold predictions, computed here independently
    with open(layout.fold_folder(trained["cls_run"], 0) / "oof_predictions.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    y, p = [int(r["label"]) for r in rows], [float(r["probability"]) for r in rows]
    assert m["performance"]["n"] == len(rows) == len(summary["val_ids"])
    with zipfile.ZipFile(z) as zf:
        card = zf.read(MODEL_CARD).decode("utf-8")
    assert "Research use only" in card and "T1" in card and "Known limitations" in card
    if len(set(y)) == 2:
        ci = stats.delong_ci(y, p)
        assert m["performance"]["auc"]["auc"] == pytest.approx(ci["auc"], abs=1e-12)
        assert f"AUC {ci['auc']:.3f} (95 % CI {ci['ci_low']:.3f} to {ci['ci_high']:.3f}, DeLong)" in card
    else:
        assert m["performance"]["auc"] is None and "one class" in card


def test_installed_and_zipped_model_predict_the_same_probabilities(trained, exported, tmp_path):
    z, ref = exported
    ref_p = _probabilities(ref)
    assert any(v is not None for v in ref_p.values()), "the fixture model should find at least one tumour"
    inp = trained["raw"] / "imagesTs"
    name = ResultLayout.for_dataset(DS).dataset_name
    # 1. installed into clean, empty result folders
    clean = tmp_path / "clean"
    with trained_env(clean):
        m = install_model(z)
        seg = clean / "nnUNet_results" / name / trained["seg_model"].name
        assert (seg / "fold_0" / "checkpoint_final.pth").is_file()
        res = predict(inp, tmp_path / "out_installed", DS, seg_model=seg, cls_run=m["cls_run"], device="cpu")
        _assert_same(ref_p, _probabilities(res))
        with pytest.raises(PackageError, match="--overwrite"):
            install_model(_other_version(z, tmp_path))  # another model over the installed one
    # 2. straight from the zip, with no result folders at all
    empty = tmp_path / "empty"
    with trained_env(empty):
        res = predict(inp, tmp_path / "out_zip", None, model_package=z, device="cpu")
        _assert_same(ref_p, _probabilities(res))
        assert not (empty / "neonet_results").exists()
    with pytest.raises(PackageError, match="not of dataset '999'"):
        predict(inp, tmp_path / "out_wrong", 999, model_package=z, device="cpu")


def _other_version(z, tmp_path):
    """The same package with another threshold in fold 0's summary, re-hashed: another valid model version."""
    out = tmp_path / "other.zip"
    with zipfile.ZipFile(z) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("cls_summary.json"):
                doc = json.loads(data)
                doc["threshold"] = 0.123
                data = json.dumps(doc).encode()
            dst.writestr(info.filename, data)
    # re-hash: the package is valid but differs from the installed one
    with zipfile.ZipFile(out) as zf:
        m = json.loads(zf.read("manifest.json"))
        contents = {n: zf.read(n) for n in zf.namelist()}
    for n, rec in m["files"].items():
        rec.update(sha256=hashlib.sha256(contents[n]).hexdigest(), size=len(contents[n]))
    contents["manifest.json"] = json.dumps(m).encode()
    with zipfile.ZipFile(out, "w") as zf:
        for n, data in contents.items():
            zf.writestr(n, data)
    return out


def test_export_cli_defaults_to_the_run_predict_would_use(trained, tmp_path):
    out = tmp_path / "cli.zip"
    env = {**os.environ, "NEONET_JOBS": "4", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "neonet_toolkit.run.export_model", "-d", str(DS), "-o", str(out)],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    m = verify_package(out)
    assert m["cls_run"] == trained["cls_run"] and m["seg_model"].endswith(trained["seg_model"].name)
    r = subprocess.run([sys.executable, "-m", "neonet_toolkit.run.export_model", "-d", str(DS), "-o", str(out)],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 2 and "exists" in r.stderr


def test_validate_the_exported_model_on_an_unshifted_and_a_shifted_site(exported, tmp_path):
    """Train (fixture) -> export -> neonet_validate on two external cohorts from other seeds: the whole external
    validation path with real predictions. The tiny classifier's discrimination is not the point; the shift is:
    an intensity x1.8 cohort is reported outside the training range, the same patients unshifted are not, and the
    report's calibration figures are statsmodels' fit of the report's own per-case probabilities."""
    import numpy as np
    import statsmodels.api as sm

    from neonet_toolkit.demo.external_site import SiteShift, make_external_site
    from neonet_toolkit.evaluation.external_validation import validate

    z, _ = exported
    kw = dict(n_cases=8, prevalence=0.5, seed=7, shape_xyz=(32, 32, 16), spacing=(1.5, 1.5, 3.0))
    same = make_external_site(tmp_path / "raw", "SiteA", **kw)
    shifted = make_external_site(tmp_path / "raw", "SiteB", shift=SiteShift(intensity_scale=1.8), **kw)
    reports = {}
    for name, cohort in (("A", same), ("B", shifted)):
        res = validate(z, cohort, tmp_path / f"val_{name}", device="cpu", n_boot=200)
        rep = json.loads((tmp_path / f"val_{name}" / "validation_report.json").read_text(encoding="utf-8"))
        assert rep["cohort"]["counts"] == res["report"]["cohort"]["counts"]
        assert (tmp_path / f"val_{name}" / "validation_report.md").is_file()
        reports[name] = (res, rep)
    shift_a, shift_b = reports["A"][1]["dataset_shift"], reports["B"][1]["dataset_shift"]
    assert shift_a["outside"] == [] and "OUTSIDE" not in shift_a["statement"]
    assert "foreground_intensity" in shift_b["outside"] and "OUTSIDE" in shift_b["statement"]
    # the calibration-in-the-large of the report is statsmodels' GLM with offset logit(p) on its own cases
    rows = [r for r in reports["A"][0]["cohort"]["rows"] if r["status"] == "included"]
    y = np.array([r["label"] for r in rows], float)
    p = np.clip(np.array([r["probability"] for r in rows], float), 1e-7, 1 - 1e-7)
    citl = reports["A"][1]["analysis"]["calibration"]["citl"]
    if citl.get("intercept") is not None:
        fit = sm.GLM(y, np.ones((len(y), 1)), family=sm.families.Binomial(), offset=np.log(p / (1 - p))).fit()
        assert citl["intercept"] == pytest.approx(float(fit.params[0]), abs=1e-6)
