"""neonet_predict end to end with the tiny models of the ``trained`` fixture (tests/inference/conftest.py:
NeoSeg → TLCR → NeoCls, trained once per session on a mini phantom). Everything is real; the models are
just small.
"""
from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from e2e_models import DS, trained_env
from neonet_toolkit.dataset.errors import DatasetError


def _predict(trained, inp, out, **kw):
    from neonet_toolkit.inference.predict import predict

    kw.setdefault("folds", [0])
    return predict(inp, out, DS, seg_model=trained["seg_model"], cls_run=trained["cls_run"], device="cpu", **kw)


def _read_csv(path):
    with open(path, encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def full_run(trained_models, tmp_path_factory):
    out = tmp_path_factory.mktemp("pred_full")
    with trained_env(trained_models["root"]):
        res = _predict(trained_models, trained_models["raw"] / "imagesTs", out, save_crops=True, saliency=True)
    return out, res


def test_end_to_end_outputs(trained, full_run):
    out, res = full_run
    rows = _read_csv(out / "predictions.csv")
    ids = sorted(p.name[:-12] for p in (trained["raw"] / "imagesTs").glob("*_0000.nii.gz"))
    assert [r["case_id"] for r in rows] == ids
    meta = json.loads((out / "predictions.json").read_text(encoding="utf-8"))
    prov = meta["provenance"]
    assert prov["cls_run"] == trained["cls_run"] and prov["cls_folds"] == [0] and prov["seg_folds"] == ["0"]
    assert "threshold_rule" in prov and "no_tumor" in prov["qc_flags"]
    for r, rec in zip(rows, meta["cases"]):
        # masks: same geometry as the input image
        img = sitk.ReadImage(str(trained["raw"] / "imagesTs" / f"{r['case_id']}_0000.nii.gz"))
        seg = sitk.ReadImage(str(out / f"{r['case_id']}.nii.gz"))
        assert seg.GetSize() == img.GetSize()
        np.testing.assert_allclose(seg.GetSpacing(), img.GetSpacing(), atol=1e-5)
        np.testing.assert_allclose(seg.GetOrigin(), img.GetOrigin(), atol=1e-4)
        np.testing.assert_allclose(seg.GetDirection(), img.GetDirection(), atol=1e-6)
        gt = sitk.GetArrayFromImage(sitk.ReadImage(str(trained["raw"] / "labelsTs" / f"{r['case_id']}.nii.gz")))
        pred = sitk.GetArrayFromImage(seg)
        assert set(np.unique(pred)) <= {0, 1, 2}
        if "no_tumor" not in rec["qc_flags"]:
            p = float(r["probability"])
            assert 0.0 <= p <= 1.0
            assert r["decision"] in ("0", "1") and int(r["decision"]) == int(p >= float(r["threshold"]))
            assert (out / "crops" / f"{r['case_id']}_crop.png").is_file()
            assert (out / "crops" / f"{r['case_id']}_saliency.nii.gz").is_file()
            assert rec["tumor_voxels"] == int((pred == 2).sum())
        # the tiny model really segments: liver overlap with the ground truth
        liver = np.isin(gt, (1, 2))
        pl = np.isin(pred, (1, 2))
        assert 2 * (liver & pl).sum() / (liver.sum() + pl.sum()) > 0.7
    assert any(r["probability"] for r in rows), "the fixture model should find at least one tumour"
    assert not list(out.rglob(".*.tmp*")), "no temporary file may be left behind"


def test_removed_tumour_gives_no_tumor_and_no_probability(trained, tmp_path):
    raw = trained["raw"]
    cid = sorted(p.name[:-12] for p in (raw / "imagesTs").glob("*_0000.nii.gz"))[0]
    img = sitk.ReadImage(str(raw / "imagesTs" / f"{cid}_0000.nii.gz"))
    arr = sitk.GetArrayFromImage(img)
    lab = sitk.GetArrayFromImage(sitk.ReadImage(str(raw / "labelsTs" / f"{cid}.nii.gz")))
    rng = np.random.default_rng(0)
    liver = arr[lab == 1]
    arr[lab == 2] = rng.choice(liver, size=int((lab == 2).sum()))  # tumour replaced by liver tissue
    new = sitk.GetImageFromArray(arr)
    new.CopyInformation(img)
    inp = tmp_path / "in"
    inp.mkdir()
    sitk.WriteImage(new, str(inp / "notumour_0000.nii.gz"))
    _predict(trained, inp, tmp_path / "out")
    row = _read_csv(tmp_path / "out" / "predictions.csv")[0]
    assert row["qc_flags"].split(";")[0] == "no_tumor"
    assert row["probability"] == "" and row["decision"] == ""
    rec = json.loads((tmp_path / "out" / "cases" / "notumour.json").read_text(encoding="utf-8"))
    assert rec["probability"] is None and rec["tlcr"]["empty_tumor"]


def test_rerun_after_crash_completes_only_what_is_missing(trained, full_run, tmp_path, monkeypatch):
    from neonet_toolkit.inference import predict as P

    out = tmp_path / "out"
    calls = {"n": 0}
    original = P.NeoNetPredictor.predict_case

    def crashing(self, case, o, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("simulated crash")
        return original(self, case, o, **kw)

    monkeypatch.setattr(P.NeoNetPredictor, "predict_case", crashing)
    with pytest.raises(KeyboardInterrupt):
        _predict(trained, trained["raw"] / "imagesTs", out)
    monkeypatch.setattr(P.NeoNetPredictor, "predict_case", original)
    assert len(list((out / "cases").glob("*.json"))) == 1
    res = _predict(trained, trained["raw"] / "imagesTs", out)
    assert len(res["skipped"]) == 1 and len(res["predicted"]) == 1
    full = _read_csv(full_run[0] / "predictions.csv")
    assert [r["case_id"] for r in _read_csv(out / "predictions.csv")] == [r["case_id"] for r in full]
    for a, b in zip(_read_csv(out / "predictions.csv"), full):
        assert a["probability"] == b["probability"] and a["qc_flags"] == b["qc_flags"]
    # --overwrite redoes everything
    res = _predict(trained, trained["raw"] / "imagesTs", out, overwrite=True)
    assert len(res["predicted"]) == 2 and not res["skipped"]


def test_two_parts_equal_one_run(trained, full_run, tmp_path):
    from neonet_toolkit.inference.writers import collect

    out = tmp_path / "sharded"
    r0 = _predict(trained, trained["raw"] / "imagesTs", out, num_parts=2, part_id=0)
    r1 = _predict(trained, trained["raw"] / "imagesTs", out, num_parts=2, part_id=1)
    assert len(r0["predicted"]) == len(r1["predicted"]) == 1 and r0["predicted"] != r1["predicted"]
    collect(out)
    assert _read_csv(out / "predictions.csv") == _read_csv(full_run[0] / "predictions.csv")


def test_dicom_series_input(trained, tmp_path):
    from test_inputs import write_dicom_series

    raw = trained["raw"]
    cid = sorted(p.name[:-12] for p in (raw / "imagesTs").glob("*_0000.nii.gz"))[1]
    img = sitk.ReadImage(str(raw / "imagesTs" / f"{cid}_0000.nii.gz"))
    vol = np.clip(sitk.GetArrayFromImage(img), -32000, 32000).astype(np.int16)
    write_dicom_series(vol, tmp_path / "dicom" / "patient_A", spacing=img.GetSpacing(), origin=img.GetOrigin())
    _predict(trained, tmp_path / "dicom", tmp_path / "out")
    rows = _read_csv(tmp_path / "out" / "predictions.csv")
    assert [r["case_id"] for r in rows] == ["patient_A"]
    seg = sitk.ReadImage(str(tmp_path / "out" / "patient_A.nii.gz"))
    assert seg.GetSize() == img.GetSize()
    np.testing.assert_allclose(seg.GetSpacing(), img.GetSpacing(), atol=1e-4)


def test_clear_errors(trained, tmp_path):
    from neonet_toolkit.inference.predict import predict

    with pytest.raises(DatasetError, match="the folder is empty"):
        (tmp_path / "empty").mkdir()
        _predict(trained, tmp_path / "empty", tmp_path / "o1")
    with pytest.raises(FileNotFoundError, match="fold"):
        _predict(trained, trained["raw"] / "imagesTs", tmp_path / "o2", folds=[1])  # fold 1 never trained
    with pytest.raises(FileNotFoundError, match="cls_resnet50_1__NeoNetPlans has trained folds \\[\\]"):
        predict(trained["raw"] / "imagesTs", tmp_path / "o3", DS, seg_model=trained["seg_model"],
                cls_run="cls_resnet50_1", folds=[0], device="cpu")
    # plans changed after training: classifier and plans disagree
    plans_file = trained["pp"] / "neonet_plans.json"
    backup = plans_file.read_text(encoding="utf-8")
    try:
        p = json.loads(backup)
        p["tlcr"]["crop_size"] = [16, 32, 32]
        plans_file.write_text(json.dumps(p), encoding="utf-8")
        with pytest.raises(DatasetError, match="Mismatched plans"):
            _predict(trained, trained["raw"] / "imagesTs", tmp_path / "o4")
    finally:
        plans_file.write_text(backup, encoding="utf-8")


def test_cli(trained, tmp_path, capsys):
    from neonet_toolkit.run.predict import main

    src = trained["raw"] / "imagesTs"
    inp = tmp_path / "in"
    inp.mkdir()
    f = sorted(src.glob("*_0000.nii.gz"))[0]
    shutil.copy(f, inp / f.name)
    code = main(["-i", str(inp), "-o", str(tmp_path / "out"), "-d", str(DS), "-m", str(trained["seg_model"]),
                 "--cls-run", trained["cls_run"], "-f", "0", "-device", "cpu"])
    assert code == 0
    assert "predictions.csv" in capsys.readouterr().out
    assert main(["-i", str(tmp_path / "nope"), "-o", str(tmp_path / "o"), "-d", str(DS)]) == 2


def test_one_bad_case_never_sinks_the_batch(trained, tmp_path):
    """An unreadable input gets a 'failed' row with the reason; the others are predicted; exit status 1."""
    from neonet_toolkit.run.predict import main

    src = sorted((trained["raw"] / "imagesTs").glob("*_0000.nii.gz"))
    inp = tmp_path / "in"
    inp.mkdir()
    for f in src:
        shutil.copy(f, inp / f.name)
    data = (inp / src[0].name).read_bytes()
    (inp / "broken_0000.nii.gz").write_bytes(data[: len(data) // 2])  # truncated: would be zero-filled by ITK
    code = main(["-i", str(inp), "-o", str(tmp_path / "out"), "-d", str(DS), "-m", str(trained["seg_model"]),
                 "--cls-run", trained["cls_run"], "-f", "0", "-device", "cpu"])
    assert code == 1
    rows = {r["case_id"]: r for r in _read_csv(tmp_path / "out" / "predictions.csv")}
    assert rows["broken"]["status"] == "failed" and "truncated" in rows["broken"]["error"]
    good = [f.name[:-12] for f in src]
    assert all(rows[c]["status"] == "ok" and rows[c]["probability"] != "" for c in good)


def test_output_folder_equal_inside_or_containing_the_input_is_refused(trained, tmp_path):
    inp = trained["raw"] / "imagesTs"
    for out in (inp, inp / "preds", inp.parent):
        with pytest.raises(DatasetError, match="input folder"):
            _predict(trained, inp, out)
    assert not (inp / "preds").exists()


def test_predict_picks_the_only_trained_run_after_an_evaluation(trained, tmp_path):
    """Issue: `neonet_evaluate DS cls` writes cls_evaluation__NeoNetPlans/, which must never be taken for a run."""
    from neonet_toolkit.evaluation.cls import evaluate_cls
    from neonet_toolkit.inference.predict import predict

    evaluate_cls(DS, n_boot=50)
    assert (trained["root"] / "neonet_results" / trained["raw"].name / "cls_evaluation__NeoNetPlans").is_dir()
    res = predict(trained["raw"] / "imagesTs", tmp_path / "out", DS, seg_model=trained["seg_model"], folds=[0],
                  device="cpu")
    prov = json.loads((tmp_path / "out" / "predictions.json").read_text(encoding="utf-8"))["provenance"]
    assert prov["cls_run"] == trained["cls_run"] and res["predicted"]
    # the classifier was trained on ground-truth crops and is applied to NeoSeg's masks: said, per case
    assert prov["cls_crop_source"] == ["gt"]
    assert all("gt_trained_classifier_on_predicted_mask" in r["qc_flags"] for r in res["cases"]
               if r.get("probability") is not None)


class _Planted:
    """What an attacker pickles into a shared model folder: unpickling it creates a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_planted_checkpoint_is_refused_by_neonet_predict(trained, tmp_path, capsys):
    """Issue #11.1: a pickle planted as fold_0/checkpoint_final.pth never runs; the file is named; the real
    (tiny, nnU-Net-trained) model passes; --trust-checkpoints is logged and written to provenance."""
    import torch

    from neonet_toolkit.run.predict import main

    src = trained["seg_model"]
    evil = tmp_path / "shared_models" / src.name
    (evil / "fold_0").mkdir(parents=True)
    for f in ("plans.json", "dataset.json"):
        shutil.copy(src / f, evil / f)
    marker = tmp_path / "PWNED"
    torch.save({"network_weights": _Planted(marker)}, evil / "fold_0" / "checkpoint_final.pth")
    inp = tmp_path / "in"
    inp.mkdir()
    f = sorted((trained["raw"] / "imagesTs").glob("*_0000.nii.gz"))[0]
    shutil.copy(f, inp / f.name)
    args = ["-i", str(inp), "-d", str(DS), "--cls-run", trained["cls_run"], "-f", "0", "-device", "cpu"]
    assert main(args + ["-o", str(tmp_path / "out_evil"), "-m", str(evil)]) == 2
    err = capsys.readouterr().err
    assert f"{evil}/fold_0/checkpoint_final.pth references" in err and "open" in err  # the global it names
    assert "--trust-checkpoints" in err
    assert not marker.exists() and not (tmp_path / "out_evil" / "predictions.csv").exists()
    # the genuine model: checked and used; with --trust-checkpoints: unchecked, and provenance says so
    assert main(args + ["-o", str(tmp_path / "out_ok"), "-m", str(src)]) == 0
    prov = json.loads((tmp_path / "out_ok" / "predictions.json").read_text(encoding="utf-8"))["provenance"]
    assert prov["checkpoint_check"].startswith("NeoSeg checkpoints verified loadable with weights_only=True")
    assert main(args + ["-o", str(tmp_path / "out_trusted"), "-m", str(src), "--trust-checkpoints"]) == 0
    prov = json.loads((tmp_path / "out_trusted" / "predictions.json").read_text(encoding="utf-8"))["provenance"]
    assert prov["checkpoint_check"].startswith("SKIPPED (--trust-checkpoints)")


def test_shared_preprocessing_gives_the_crop_of_a_second_preprocessing(trained, tmp_path):
    """With the NeoSeg model planned by the NeoNet plans, TLCR reuses NeoSeg's preprocessed image and
    resamples only the final mask onto that grid; the crop equals what preprocessing image + mask again gives."""
    from neonet_toolkit import paths
    from neonet_toolkit.inference.inputs import discover_inputs
    from neonet_toolkit.inference.predict import NeoNetPredictor

    pr = NeoNetPredictor(DS, seg_model=trained["seg_model"], cls_run=trained["cls_run"], folds=[0], device="cpu")
    assert pr.reuse_preprocessing
    assert "shared preprocessing" in pr.provenance()["tlcr_grid"]
    cases = discover_inputs(trained["raw"] / "imagesTs", pr.file_ending, pr.n_channels)
    checked = 0
    with paths.nnunet_environment():
        for c in cases:
            seg, props, data, _, preprocessed = pr.segmenter.segment(c)
            img_shared, lab_shared, info_shared = pr.crop(data, seg, props, preprocessed)  # NeoSeg's kept grid
            pr.cropper.reuse_preprocessing = False
            img_again, lab_again, info_again = pr.crop(data, seg, props)
            pr.cropper.reuse_preprocessing = True
            assert info_shared.empty_tumor == info_again.empty_tumor
            if info_shared.empty_tumor:
                continue
            np.testing.assert_allclose(img_shared, img_again, atol=1e-5)  # the same image grid and crop origin
            np.testing.assert_array_equal(lab_shared, lab_again)  # the same final mask on that grid
            checked += 1
    assert checked >= 1


def test_default_classifier_comes_from_find_best_configuration(trained):
    """Without --cls-run the predictor takes neonet_find_best_configuration's deployable choice and records where
    it came from; a choice naming a run that is not trained falls back to the default rule, also recorded."""
    from neonet_toolkit.inference.predict import NeoNetPredictor
    from neonet_toolkit.utilities.identifiers import ResultLayout
    from neonet_toolkit.utilities.io import save_json

    f = ResultLayout.for_dataset(DS).best_configuration_file()
    try:
        save_json({"chosen": "cls_radiomics_0 + " + trained["cls_run"], "predict_default": trained["cls_run"]}, f)
        pr = NeoNetPredictor(DS, seg_model=trained["seg_model"], folds=[0], device="cpu")
        prov = pr.provenance()
        assert prov["cls_run"] == trained["cls_run"] and prov["cls_run_source"] == "neonet_find_best_configuration"
        save_json({"chosen": "cls_gone_0_esnested", "predict_default": "cls_gone_0_esnested"}, f)
        pr = NeoNetPredictor(DS, seg_model=trained["seg_model"], folds=[0], device="cpu")
        assert pr.provenance()["cls_run_source"] == "default rule" and pr.cls_run == trained["cls_run"]
    finally:
        f.unlink(missing_ok=True)
