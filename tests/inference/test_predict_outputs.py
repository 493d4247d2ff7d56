"""neonet_predict never overwrites what it did not write, and never reports a result made from other inputs,
models or settings as complete (issue 21, items 2, 3, 9 and 10).

Uses the tiny trained models of the ``trained`` fixture (tests/inference/conftest.py)."""
from __future__ import annotations

import csv
import errno
import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest
import SimpleITK as sitk

from e2e_models import DS
from neonet_toolkit.dataset.errors import DatasetError


def _predict(trained, inp, out, **kw):
    from neonet_toolkit.inference.predict import predict

    kw.setdefault("folds", [0])
    kw.setdefault("cls_run", trained["cls_run"])
    return predict(inp, out, DS, seg_model=trained["seg_model"], device="cpu", **kw)


def _rows(out: Path) -> dict[str, dict]:
    with open(out / "predictions.csv", encoding="utf-8") as f:
        return {r["case_id"]: r for r in csv.DictReader(f)}


def tree_hash(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _one_case_input(trained, folder: Path, k: int = 0, cid: str | None = None) -> str:
    src = sorted((trained["raw"] / "imagesTs").glob("*_0000.nii.gz"))[k]
    folder.mkdir(parents=True, exist_ok=True)
    cid = cid or src.name[:-12]
    shutil.copy(src, folder / f"{cid}_0000.nii.gz")
    return cid


def test_ground_truth_labels_are_never_overwritten(trained, tmp_path):
    """`-o ds/labelsTs` replaced every ground-truth label with a prediction, exit 0."""
    ds = tmp_path / "ds"
    shutil.copytree(trained["raw"] / "imagesTs", ds / "imagesTs")
    shutil.copytree(trained["raw"] / "labelsTs", ds / "labelsTs")
    before = tree_hash(ds)
    with pytest.raises(DatasetError, match=r"labelsTs/.*\.nii\.gz \(no NeoNet case record lists it\)") as e:
        _predict(trained, ds / "imagesTs", ds / "labelsTs")
    assert "Nothing was written" in str(e.value)
    assert tree_hash(ds) == before  # nothing changed, no cases/ folder either
    # --overwrite never replaces a file NeoNet did not write
    with pytest.raises(DatasetError, match="did not write"):
        _predict(trained, ds / "imagesTs", ds / "labelsTs", overwrite=True)
    assert tree_hash(ds) == before


def test_a_mask_edited_after_prediction_is_not_replaced(trained, tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    cid = _one_case_input(trained, inp)
    _predict(trained, inp, out)
    mask = out / f"{cid}.nii.gz"
    img = sitk.ReadImage(str(mask))
    arr = sitk.GetArrayFromImage(img)
    arr[0, 0, 0] = 1  # a user corrected the mask by hand
    edited = sitk.GetImageFromArray(arr)
    edited.CopyInformation(img)
    sitk.WriteImage(edited, str(mask))
    before = tree_hash(out)
    with pytest.raises(DatasetError, match="changed since NeoNet wrote it"):
        _predict(trained, inp, out, overwrite=True)
    assert tree_hash(out) == before


def test_foreign_tables_are_not_replaced(trained, tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    _one_case_input(trained, inp)
    out.mkdir()
    (out / "predictions.csv").write_text("patient,label\na,1\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"predictions.csv \(its header is not NeoNet's\)"):
        _predict(trained, inp, out)
    assert (out / "predictions.csv").read_text(encoding="utf-8") == "patient,label\na,1\n"


def test_same_ids_other_images_are_not_reported_complete(trained, tmp_path):
    """An output folder holding results from other images under the same ids was reported "already complete"."""
    inp, out = tmp_path / "in", tmp_path / "out"
    cid = _one_case_input(trained, inp, 0)
    _predict(trained, inp, out)
    p_first = float(_rows(out)[cid]["probability"])
    _one_case_input(trained, inp, 1, cid=cid)  # another patient's image under the same id
    with pytest.raises(DatasetError, match="not the one that result was computed from"):
        _predict(trained, inp, out)
    res = _predict(trained, inp, out, overwrite=True)
    assert res["predicted"] == [cid]
    # the new answer is the other image's answer, computed afresh
    ref = tmp_path / "ref"
    _one_case_input(trained, tmp_path / "in2", 1, cid=cid)
    _predict(trained, tmp_path / "in2", ref)
    assert _rows(out)[cid]["probability"] == _rows(ref)[cid]["probability"]
    assert float(_rows(out)[cid]["probability"]) != p_first


def test_a_crash_inside_a_case_leaves_files_the_rerun_recognises(trained, tmp_path, monkeypatch):
    """Killed after the mask was written and before the record: the rerun computes the case (it must not take
    NeoNet's own half-written mask for someone else's file)."""
    from neonet_toolkit.inference import predict as P

    inp, out = tmp_path / "in", tmp_path / "out"
    cid = _one_case_input(trained, inp)

    def crash(self, *a, **k):
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(P.NeoNetPredictor, "crop", crash)
    with pytest.raises(KeyboardInterrupt):
        _predict(trained, inp, out)
    monkeypatch.undo()
    assert (out / f"{cid}.nii.gz").is_file()
    assert json.loads((out / "cases" / f"{cid}.json").read_text(encoding="utf-8"))["status"] == "pending"
    res = _predict(trained, inp, out)
    assert res["predicted"] == [cid] and _rows(out)[cid]["status"] == "ok"


def test_changed_settings_or_models_are_not_reported_complete(trained, tmp_path):
    """A rerun with other postprocessing rules (settings) or other models must not keep the old rows under the
    new provenance."""
    inp, out = tmp_path / "in", tmp_path / "out"
    cid = _one_case_input(trained, inp)
    _predict(trained, inp, out)
    plans_file = trained["pp"] / "neonet_plans.json"
    backup = plans_file.read_text(encoding="utf-8")
    try:
        p = json.loads(backup)
        p["postprocessing"]["spurious_tumor_fraction"] = 0.1
        plans_file.write_text(json.dumps(p), encoding="utf-8")
        with pytest.raises(DatasetError, match="other settings"):
            _predict(trained, inp, out)
    finally:
        plans_file.write_text(backup, encoding="utf-8")
    # another model: the classifier checkpoint is replaced by a retrained one (here: its bytes change)
    ckpt = next((trained["root"] / "neonet_results").rglob("cls_pattennet_0_esnested__NeoNetPlans/fold_0/"
                                                             "checkpoint_final.pth"))
    saved = ckpt.read_bytes()
    try:
        import torch

        state = torch.load(ckpt, weights_only=True)
        state["extra"]["note"] = "retrained"
        torch.save(state, ckpt)
        with pytest.raises(DatasetError, match="computed by other models"):
            _predict(trained, inp, out)
        # a case not in this input but from the old models stays refused even with --overwrite
        other = tmp_path / "in_other"
        _one_case_input(trained, other, 1)
        with pytest.raises(DatasetError, match=rf"not in this input.*\['{cid}'\]"):
            _predict(trained, other, out, overwrite=True)
        res = _predict(trained, inp, out, overwrite=True)
        assert res["predicted"] == [cid]
        prov = json.loads((out / "predictions.json").read_text(encoding="utf-8"))["provenance"]
        rec = json.loads((out / "cases" / f"{cid}.json").read_text(encoding="utf-8"))
        assert rec["result_key"]["model_sha256"] == prov["model_sha256"]
    finally:
        ckpt.write_bytes(saved)


def test_output_that_is_a_file_or_not_writable(trained, tmp_path, monkeypatch):
    import tempfile

    inp = tmp_path / "in"
    _one_case_input(trained, inp)
    (tmp_path / "afile.csv").write_text("x", encoding="utf-8")
    with pytest.raises(DatasetError, match="is a file, not a folder"):
        _predict(trained, inp, tmp_path / "afile.csv")
    ro = tmp_path / "readonly"
    ro.mkdir()
    real = tempfile.mkstemp

    def denied(*a, dir=None, **k):  # a read-only folder (the tests may run as root, which chmod does not stop)
        if dir is not None and Path(dir) == ro:
            raise PermissionError(errno.EACCES, "Permission denied", str(dir))
        return real(*a, dir=dir, **k)

    monkeypatch.setattr(tempfile, "mkstemp", denied)
    with pytest.raises(DatasetError, match="cannot be written \\(Permission denied\\).*-o"):
        _predict(trained, inp, ro)


def test_full_disk_keeps_what_is_complete_and_stops(trained, tmp_path, monkeypatch):
    from neonet_toolkit.inference import predict as P

    inp, out = tmp_path / "in", tmp_path / "out"
    first = _one_case_input(trained, inp, 0)
    _one_case_input(trained, inp, 1)
    original = P.NeoNetPredictor.predict_case
    calls = {"n": 0}

    def full(self, case, o, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(o / f"{case.case_id}.nii.gz"))
        return original(self, case, o, **kw)

    monkeypatch.setattr(P.NeoNetPredictor, "predict_case", full)
    with pytest.raises(DatasetError, match="No space left on device.*predictions.csv lists the 1 complete case"):
        _predict(trained, inp, out)
    rows = _rows(out)
    assert list(rows) == [first] and rows[first]["status"] == "ok"
    monkeypatch.undo()
    res = _predict(trained, inp, out)  # space freed: the rerun completes the rest
    assert res["skipped"] == [first] and len(res["predicted"]) == 1


@pytest.mark.parametrize("factor, message", [(10.0, r"refuses more than 16x"), (0.001, "looks like metres")])
def test_spacing_far_from_training_is_refused_before_resampling(trained, tmp_path, factor, message):
    """10x the training spacing was resampled to ~650x670x300 voxels and did not finish in 5 minutes."""
    inp, out = tmp_path / "in", tmp_path / "out"
    good = _one_case_input(trained, inp, 0)
    src = sorted((trained["raw"] / "imagesTs").glob("*_0000.nii.gz"))[1]
    img = sitk.ReadImage(str(src))
    img.SetSpacing(tuple(s * factor for s in img.GetSpacing()))
    sitk.WriteImage(img, str(inp / "odd_0000.nii.gz"))
    res = _predict(trained, inp, out)
    assert res["failed"] == ["odd"] and res["predicted"] == [good]
    row = _rows(out)["odd"]
    assert row["status"] == "failed" and "case 'odd'" in row["error"]
    assert re.search(message, row["error"])
