"""Hostile-input matrix (issue 21): every finding of the second hostile-input battery, run through the real
command (``neonet_predict`` / ``neonet_plan_and_preprocess`` / ``neonet_train`` entry points), asserting its
outcome class and that nothing outside the command's output folder changed (the input tree is hashed before
and after).

Outcome classes: ``named error`` (exit code != 0, no traceback, the message names the case or file),
``qc flag, no decision`` (exit 0, the case row has a withholding QC flag and no probability/decision),
``correct acceptance`` (exit 0 and the answer checked). A traceback fails the test (an exception escapes).

``NEONET_HOSTILE_MATRIX=path.json pytest tests/inference/test_hostile_matrix.py`` also writes the rows (the table
in docs/robustness.md is made from it).
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from e2e_models import DS

NAMED, QC, ACCEPT = "named error", "qc flag, no decision", "correct acceptance"
RESULTS: list[dict] = []


def tree_hash(*folders: Path, skip: Path | None = None) -> dict[str, str]:
    out = {}
    for folder in folders:
        for p in sorted(Path(folder).rglob("*")):
            if p.is_file() and not (skip is not None and (skip == p or skip in p.parents)):
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def rows(out: Path) -> dict[str, dict]:
    with open(out / "predictions.csv", encoding="utf-8") as f:
        return {r["case_id"]: r for r in csv.DictReader(f)}


@dataclass
class Ctx:
    trained: dict
    tmp: Path
    capsys: object
    monkeypatch: object

    def test_images(self) -> list[Path]:
        return sorted((self.trained["raw"] / "imagesTs").glob("*_0000.nii.gz"))

    def input_with(self, k: int = 0, cid: str | None = None, folder: str = "in") -> tuple[Path, str]:
        src = self.test_images()[k]
        d = self.tmp / folder
        d.mkdir(parents=True, exist_ok=True)
        cid = cid or src.name[:-12]
        shutil.copy(src, d / f"{cid}_0000.nii.gz")
        return d, cid

    def predict(self, inp: Path, out: Path, *extra: str, seg_model: Path | None = None) -> tuple[int, str]:
        from neonet_toolkit.run.predict import main

        argv = ["-i", str(inp), "-o", str(out), "-d", str(DS), "-m", str(seg_model or self.trained["seg_model"]),
                "--cls-run", self.trained["cls_run"], "-f", "0", "-device", "cpu", *extra]
        self.capsys.readouterr()
        rc = main(argv)
        return rc, self.capsys.readouterr().err

    def cli(self, main: Callable, argv: list[str]) -> tuple[int, str]:
        self.capsys.readouterr()
        rc = main(argv)
        return rc, self.capsys.readouterr().err

    def copy_results(self) -> Path:
        """A private copy of the trained NeoNet results (models may be damaged here), the env pointed at it."""
        dst = self.tmp / "neonet_results"
        shutil.copytree(self.trained["root"] / "neonet_results", dst)
        self.monkeypatch.setenv("neonet_results", str(dst))
        return dst

    def copy_preprocessed(self) -> Path:
        dst = self.tmp / "nnUNet_preprocessed"
        shutil.copytree(self.trained["root"] / "nnUNet_preprocessed", dst)
        self.monkeypatch.setenv("nnUNet_preprocessed", str(dst))
        return dst / self.trained["pp"].name

    def copy_seg_model(self) -> Path:
        dst = self.tmp / "seg_model"
        shutil.copytree(self.trained["seg_model"], dst)
        return dst


def named(rc: int, err: str, pattern: str) -> tuple[str, str]:
    import re

    assert "Traceback" not in err, err
    assert rc != 0, f"exit 0, expected a named error; stderr: {err[-500:]}"
    msg = next((ln for ln in err.splitlines() if ln.startswith("error:")), err.strip().splitlines()[-1])
    assert re.search(pattern, err), f"message does not name {pattern!r}: {err[-800:]}"
    return NAMED, msg[:300]


def failed_case(rc: int, err: str, out: Path, cid: str, pattern: str) -> tuple[str, str]:
    import re

    assert "Traceback" not in err and rc == 1, (rc, err[-500:])
    row = rows(out)[cid]
    assert row["status"] == "failed" and f"'{cid}'" in row["error"] and re.search(pattern, row["error"]), row
    return NAMED, row["error"][:300]


def withheld(rc: int, err: str, out: Path, cid: str, flag: str) -> tuple[str, str]:
    assert rc == 0 and "Traceback" not in err, (rc, err[-500:])
    row = rows(out)[cid]
    assert flag in row["qc_flags"].split(";") and row["probability"] == "" and row["decision"] == "", row
    return QC, f"qc_flags={row['qc_flags']}, probability and decision empty"


# ----------------------------------------------------------------------------- scenarios
def s_ground_truth_as_output(c: Ctx):
    ds = c.tmp / "ds"
    shutil.copytree(c.trained["raw"] / "imagesTs", ds / "imagesTs")
    shutil.copytree(c.trained["raw"] / "labelsTs", ds / "labelsTs")
    return lambda: c.predict(ds / "imagesTs", ds / "labelsTs"), [ds], None, lambda r: named(*r, r"labelsTs/\w+\.nii\.gz")


def s_dicom_series_replaced(c: Ctx):
    from test_inputs import write_dicom_series

    imgs = [sitk.ReadImage(str(p)) for p in c.test_images()[:2]]
    inp, out = c.tmp / "dicom", c.tmp / "out"

    def series(img):
        vol = np.clip(sitk.GetArrayFromImage(img), -32000, 32000).astype(np.int16)
        shutil.rmtree(inp / "patient_A", ignore_errors=True)
        write_dicom_series(vol, inp / "patient_A", spacing=img.GetSpacing(), origin=img.GetOrigin())

    series(imgs[0])
    assert c.predict(inp, out)[0] == 0
    first = rows(out)["patient_A"]["probability"]
    series(imgs[1])  # the series is replaced by another patient's
    ref = c.tmp / "ref"

    def check(r):
        assert r[0] == 0
        assert c.predict(inp, ref)[0] == 0
        assert rows(out)["patient_A"]["probability"] == rows(ref)["patient_A"]["probability"] != first
        return ACCEPT, "the new series is converted and predicted again (the cached conversion is tied to its bytes)"
    return lambda: c.predict(inp, out, "--overwrite"), [inp], out, check


def s_case_id_collision(c: Ctx):
    from test_inputs import write_dicom_series

    img = sitk.ReadImage(str(c.test_images()[0]))
    vol = np.clip(sitk.GetArrayFromImage(img), -32000, 32000).astype(np.int16)
    inp = c.tmp / "dicom"
    for name in ("pat_1", "pat 1"):
        write_dicom_series(vol, inp / name, spacing=img.GetSpacing(), origin=img.GetOrigin())
    out = c.tmp / "out"
    return lambda: c.predict(inp, out), [inp], out, lambda r: named(*r, r"pat 1.*pat_1|pat_1.*pat 1")


def s_same_ids_other_images(c: Ctx):
    inp, cid = c.input_with(0)
    out = c.tmp / "out"
    assert c.predict(inp, out)[0] == 0
    c.input_with(1, cid=cid)
    return lambda: c.predict(inp, out), [inp], out, lambda r: named(*r, rf"{cid}.*not the one that result was computed")


def s_provenance_mismatch(c: Ctx):
    inp, cid = c.input_with(0)
    out = c.tmp / "out"
    assert c.predict(inp, out)[0] == 0
    results = c.copy_results()
    ckpt = next(results.rglob(f"{c.trained['cls_run']}__NeoNetPlans/fold_0/checkpoint_final.pth"))
    state = torch.load(ckpt, weights_only=True)
    state["extra"]["note"] = "another training run"
    torch.save(state, ckpt)
    return lambda: c.predict(inp, out), [inp], out, lambda r: named(*r, rf"{cid}.*computed by other models")


def _image_like(c: Ctx, fn, name: str, k: int = 0) -> tuple[Path, str]:
    src = sitk.ReadImage(str(c.test_images()[k]))
    arr = fn(sitk.GetArrayFromImage(src).astype(np.float32))
    img = sitk.GetImageFromArray(arr)
    img.CopyInformation(src)
    inp = c.tmp / "in"
    inp.mkdir(exist_ok=True)
    sitk.WriteImage(img, str(inp / f"{name}_0000.nii.gz"))
    return inp, name


def s_nan_block(c: Ctx):
    def nan(a):
        a[2:6, 10:20, 10:20] = np.nan
        return a
    inp, cid = _image_like(c, nan, "nanblock")
    out = c.tmp / "out"
    return lambda: c.predict(inp, out), [inp], out, lambda r: failed_case(*r, out, cid, "NaN")


def s_constant_image(c: Ctx):
    inp, cid = _image_like(c, lambda a: np.full_like(a, 300.0), "constant")
    out = c.tmp / "out"
    return lambda: c.predict(inp, out), [inp], out, lambda r: _qc_or_no_tumor(r, out, cid)


def s_all_zero_image(c: Ctx):
    inp, cid = _image_like(c, np.zeros_like, "allzero")
    out = c.tmp / "out"
    return lambda: c.predict(inp, out), [inp], out, lambda r: _qc_or_no_tumor(r, out, cid)


def _qc_or_no_tumor(r, out, cid):
    row = rows(out)[cid]
    flag = "constant_image" if "constant_image" in row["qc_flags"] else "no_tumor"
    return withheld(*r, out, cid, flag)


def s_storage_order_flipped(c: Ctx):
    inp, cid = c.input_with(0)
    src = sitk.ReadImage(str(inp / f"{cid}_0000.nii.gz"))
    sitk.WriteImage(sitk.DICOMOrient(src, "RPS"), str(inp / f"{cid}x_0000.nii.gz"))  # x stored reversed
    out = c.tmp / "out"

    def check(r):
        assert r[0] == 0
        rw = rows(out)
        assert abs(float(rw[cid]["probability"]) - float(rw[cid + "x"]["probability"])) < 1e-4, rw
        a = sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"{cid}.nii.gz")))
        b = sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"{cid}x.nii.gz")))
        assert np.array_equal(a, b[:, :, ::-1])
        return ACCEPT, "same probability (|dp| < 1e-4), mask mirrored exactly"
    return lambda: c.predict(inp, out), [inp], out, check


def s_nii_beside_niigz(c: Ctx):
    inp, cid = c.input_with(0)
    sitk.WriteImage(sitk.ReadImage(str(c.test_images()[1])), str(inp / "c2_0000.nii"))
    out = c.tmp / "out"

    def check(r):
        assert r[0] == 0 and set(rows(out)) == {cid, "c2"} and rows(out)["c2"]["status"] == "ok"
        return ACCEPT, "c2_0000.nii is predicted with the .nii.gz cases"
    return lambda: c.predict(inp, out), [inp], out, check


def s_dicom_beside_nifti(c: Ctx):
    from test_inputs import write_dicom_series

    inp, cid = c.input_with(0)
    img = sitk.ReadImage(str(c.test_images()[1]))
    vol = np.clip(sitk.GetArrayFromImage(img), -32000, 32000).astype(np.int16)
    write_dicom_series(vol, inp / "patient_B", spacing=img.GetSpacing(), origin=img.GetOrigin())
    (inp / "notes.txt").write_text("scanner notes", encoding="utf-8")
    out = c.tmp / "out"

    def check(r):
        assert r[0] == 0 and set(rows(out)) == {cid, "patient_B"}
        unused = json.loads((out / "predictions.json").read_text(encoding="utf-8"))["provenance"]["unused_inputs"]
        assert "notes.txt" in unused
        return ACCEPT, "both predicted; notes.txt listed in predictions.json unused_inputs with the reason"
    return lambda: c.predict(inp, out), [inp], out, check


def _respaced(c: Ctx, factor: float, name: str):
    src = sitk.ReadImage(str(c.test_images()[0]))
    src.SetSpacing(tuple(s * factor for s in src.GetSpacing()))
    inp = c.tmp / "in"
    inp.mkdir(exist_ok=True)
    sitk.WriteImage(src, str(inp / f"{name}_0000.nii.gz"))
    return inp, name


def s_ten_times_spacing(c: Ctx):
    inp, cid = _respaced(c, 10.0, "coarse")
    out = c.tmp / "out"
    return lambda: c.predict(inp, out), [inp], out, lambda r: failed_case(*r, out, cid, "training median")


def s_spacing_in_metres(c: Ctx):
    inp, cid = _respaced(c, 0.001, "metres")
    out = c.tmp / "out"
    return lambda: c.predict(inp, out), [inp], out, lambda r: failed_case(*r, out, cid, "metres")


def s_output_is_a_file(c: Ctx):
    inp, _ = c.input_with(0)
    f = c.tmp / "results.csv"
    f.write_text("keep me", encoding="utf-8")
    return lambda: c.predict(inp, f), [inp, f], None, lambda r: named(*r, "results.csv is a file")


def s_output_read_only(c: Ctx):
    import errno
    import tempfile

    inp, _ = c.input_with(0)
    ro = c.tmp / "ro"
    ro.mkdir()
    real = tempfile.mkstemp

    def denied(*a, dir=None, **k):  # the suite may run as root, which chmod does not stop
        if dir is not None and Path(dir) == ro:
            raise PermissionError(errno.EACCES, "Permission denied", str(dir))
        return real(*a, dir=dir, **k)

    c.monkeypatch.setattr(tempfile, "mkstemp", denied)
    return lambda: c.predict(inp, ro), [inp], None, lambda r: named(*r, "ro cannot be written")


def s_disk_full(c: Ctx):
    import errno

    from neonet_toolkit.inference import predict as P

    inp, first = c.input_with(0)
    c.input_with(1)
    out = c.tmp / "out"
    original, calls = P.NeoNetPredictor.predict_case, {"n": 0}

    def full(self, case, o, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(o / f"{case.case_id}.nii.gz"))
        return original(self, case, o, **kw)

    c.monkeypatch.setattr(P.NeoNetPredictor, "predict_case", full)

    def check(r):
        out_ = named(*r, "No space left on device")
        assert list(rows(out)) == [first]
        return out_
    return lambda: c.predict(inp, out), [inp], out, check


def _damage_seg_checkpoint(c: Ctx, fn) -> Path:
    model = c.copy_seg_model()
    ck = model / "fold_0" / "checkpoint_final.pth"
    state = torch.load(ck, weights_only=False)  # our own fixture's checkpoint
    fn(state, ck)
    return model


def s_seg_trainer_name_edited(c: Ctx):
    def edit(state, ck):
        state["trainer_name"] = "nnUNetTrainerDoesNotExist"
        torch.save(state, ck)
    model = _damage_seg_checkpoint(c, edit)
    inp, _ = c.input_with(0)
    return (lambda: c.predict(inp, c.tmp / "out", seg_model=model), [inp, model], c.tmp / "out",
            lambda r: named(*r, "checkpoint_final.pth"))


def s_cls_checkpoint_as_seg(c: Ctx):
    model = c.copy_seg_model()
    cls_ckpt = next((c.trained["root"] / "neonet_results").rglob(
        f"{c.trained['cls_run']}__NeoNetPlans/fold_0/checkpoint_final.pth"))
    shutil.copy(cls_ckpt, model / "fold_0" / "checkpoint_final.pth")
    inp, _ = c.input_with(0)
    return (lambda: c.predict(inp, c.tmp / "out", seg_model=model), [inp, model], c.tmp / "out",
            lambda r: named(*r, "checkpoint_final.pth"))


class Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def s_cls_checkpoint_payload(c: Ctx):
    results = c.copy_results()
    ckpt = next(results.rglob(f"{c.trained['cls_run']}__NeoNetPlans/fold_0/checkpoint_final.pth"))
    marker = c.tmp / "MARKER"
    state = torch.load(ckpt, weights_only=True)
    state["extra"]["evil"] = Payload(marker)
    torch.save(state, ckpt)
    inp, _ = c.input_with(0)

    def check(r):
        res = named(*r, "checkpoint_final.pth")
        assert not marker.exists() and "weights_only=False" not in r[1].replace("nnU-Net uses weights_only=False", "")
        return res
    return lambda: c.predict(inp, c.tmp / "out"), [inp, results], c.tmp / "out", check


def s_cls_checkpoint_truncated(c: Ctx):
    results = c.copy_results()
    ckpt = next(results.rglob(f"{c.trained['cls_run']}__NeoNetPlans/fold_0/checkpoint_final.pth"))
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2])
    inp, _ = c.input_with(0)
    return lambda: c.predict(inp, c.tmp / "out"), [inp, results], c.tmp / "out", lambda r: named(*r, "checkpoint_final.pth")


def s_vae_checkpoint_payload(c: Ctx):
    from neonet_toolkit.run.train import main

    results = c.copy_results()
    ckpt = next(p for p in results.rglob("checkpoint_final.pth") if "vae" in str(p.parent.parent.name))
    marker = c.tmp / "MARKER"
    state = torch.load(ckpt, weights_only=True)
    state["extra"] = {**state.get("extra", {}), "evil": Payload(marker)}
    torch.save(state, ckpt)
    argv = [str(DS), "cls", "0", "-device", "cpu", "--configuration", "test_tiny", "--arch", "pattennet",
            "--synthetic-ratio", "0", "--overwrite"]

    def check(r):
        res = named(*r, "checkpoint_final.pth")
        assert not marker.exists()
        return res
    return lambda: c.cli(main, argv), [c.tmp / "nnUNet_raw_unused"], None, check


def s_plans_name_escape(c: Ctx):
    from neonet_toolkit.run.train import main

    pp = c.copy_preprocessed()
    c.copy_results()
    plans = json.loads((pp / "neonet_plans.json").read_text(encoding="utf-8"))
    plans["plans_name"] = "../../../escaped"
    (pp / "neonet_plans.json").write_text(json.dumps(plans), encoding="utf-8")
    return (lambda: c.cli(main, [str(DS), "vae", "1", "-device", "cpu", "--configuration", "test_tiny"]), [c.tmp], None,
            lambda r: named(*r, "plans_name"))


def s_garbage_plans(c: Ctx):
    from neonet_toolkit.run.train import main

    pp = c.copy_preprocessed()
    c.copy_results()
    (pp / "neonet_plans.json").write_text("{not json", encoding="utf-8")
    return (lambda: c.cli(main, [str(DS), "vae", "1", "-device", "cpu"]), [c.tmp], None,
            lambda r: named(*r, "neonet_plans.json"))


# ---- planning scenarios: on a copy of the session's planned 20-case phantom (dataset 501)
def _raw_copy(c: Ctx, planned) -> Path:
    name = planned["dataset_name"]
    for k, sub in (("nnUNet_raw", "raw"), ("nnUNet_preprocessed", "pp"), ("nnUNet_results", "nr"),
                   ("neonet_results", "res")):
        (c.tmp / sub).mkdir(exist_ok=True)
        c.monkeypatch.setenv(k, str(c.tmp / sub))
    shutil.copytree(planned["raw"], c.tmp / "raw" / name)
    return c.tmp / "raw" / name


def _plan(c: Ctx):
    from neonet_toolkit.run.plan_and_preprocess import main

    return c.cli(main, ["-d", "501", "-np", "1", "--no_resource_estimates"])


def s_pickle_payload(c: Ctx, planned):
    from neonet_toolkit.utilities.safe_pickle import load_pickle

    _raw_copy(c, planned)
    pp = c.tmp / "pp" / planned["dataset_name"]
    shutil.copytree(planned["preprocessed"], pp)
    victim = pp / "NeoNetPlans_3d_fullres" / "neonetphantom_004.pkl"
    marker = c.tmp / "MARKER"
    props = load_pickle(victim)
    props["sitk_stuff"]["comment"] = Payload(marker)
    victim.write_bytes(pickle.dumps(props))
    (pp / "neonet_tlcr" / "gt" / "neonetphantom_004.npz").unlink()

    def check(r):
        res = named(*r, "neonetphantom_004.pkl")
        assert not marker.exists()
        return res
    return lambda: _plan(c), [c.tmp / "raw"], pp, check


def s_blank_training_image(c: Ctx, planned):
    raw = _raw_copy(c, planned)
    f = sorted((raw / "imagesTr").glob("*_0000.nii.gz"))[3]
    img = sitk.ReadImage(str(f))
    z = sitk.GetImageFromArray(np.zeros_like(sitk.GetArrayFromImage(img)))
    z.CopyInformation(img)
    sitk.WriteImage(z, str(f))
    return lambda: _plan(c), [raw], c.tmp / "pp", lambda r: named(*r, f.name)


def _csv_edit(c: Ctx, planned, fn):
    raw = _raw_copy(c, planned)
    csv_file = raw / "case_labels.csv"
    fn(csv_file)
    return lambda: _plan(c), [raw], c.tmp / "pp", lambda r: named(*r, csv_file.name)


def s_csv_trailing_comma(c: Ctx, planned):
    def edit(f):
        lines = f.read_text(encoding="utf-8").splitlines()
        f.write_text("\n".join([lines[0]] + [ln + "," for ln in lines[1:]]) + "\n", encoding="utf-8")
    return _csv_edit(c, planned, edit)


def s_csv_latin1(c: Ctx, planned):
    def edit(f):
        text = f.read_text(encoding="utf-8").rstrip("\n") + "\n"
        f.write_bytes(text.encode("latin-1") + "# Bemerkung: Müller\n".encode("latin-1"))
    return _csv_edit(c, planned, edit)


def s_two_dataset_folders(c: Ctx, planned):
    raw = _raw_copy(c, planned)
    shutil.copytree(raw, raw.parent / "Dataset501_Other")
    return lambda: _plan(c), [c.tmp / "raw"], c.tmp / "pp", lambda r: named(*r, "Dataset501_Other")


def s_dataset_json_without_labels(c: Ctx, planned):
    raw = _raw_copy(c, planned)
    dj = json.loads((raw / "dataset.json").read_text(encoding="utf-8"))
    del dj["labels"]
    (raw / "dataset.json").write_text(json.dumps(dj), encoding="utf-8")
    return lambda: _plan(c), [raw], c.tmp / "pp", lambda r: named(*r, "dataset.json.*labels")


def s_training_spacing_in_metres(c: Ctx, planned):
    raw = _raw_copy(c, planned)
    for sub in ("imagesTr", "labelsTr"):
        f = sorted((raw / sub).glob("*.nii.gz"))[2]
        img = sitk.ReadImage(str(f))
        img.SetSpacing(tuple(s / 1000 for s in img.GetSpacing()))
        sitk.WriteImage(img, str(f))
    return lambda: _plan(c), [raw], c.tmp / "pp", lambda r: named(*r, "metres")


PREDICT = {  # name: (issue item, what the battery found before, expected outcome, scenario)
    "ground truth folder as -o": ("2", "data loss", NAMED, s_ground_truth_as_output),
    "DICOM series replaced, --overwrite": ("3", "silent wrong result", ACCEPT, s_dicom_series_replaced),
    "DICOM folders 'pat_1' and 'pat 1'": ("3", "silent wrong result", NAMED, s_case_id_collision),
    "same ids, other images": ("3", "silent wrong result", NAMED, s_same_ids_other_images),
    "rerun with another classifier": ("3", "silent wrong result", NAMED, s_provenance_mismatch),
    "block of NaN voxels": ("4", "silent wrong result", NAMED, s_nan_block),
    "constant image": ("4", "silent wrong result", QC, s_constant_image),
    "all-zero image": ("4", "silent wrong result", QC, s_all_zero_image),
    "x stored reversed, affine adjusted": ("5", "silent wrong result", ACCEPT, s_storage_order_flipped),
    "c2_0000.nii beside .nii.gz cases": ("6", "silent wrong result", ACCEPT, s_nii_beside_niigz),
    "DICOM subfolder beside NIfTI cases": ("6", "silent wrong result", ACCEPT, s_dicom_beside_nifti),
    "10x the training spacing": ("9", "hang", NAMED, s_ten_times_spacing),
    "spacing in metres (prediction)": ("10", "unclear error", NAMED, s_spacing_in_metres),
    "-o names a file": ("10", "unclear error", NAMED, s_output_is_a_file),
    "read-only output folder": ("10", "traceback", NAMED, s_output_read_only),
    "disk full mid-batch": ("10", "traceback", NAMED, s_disk_full),
    "NeoSeg checkpoint, trainer name edited": ("10", "traceback", NAMED, s_seg_trainer_name_edited),
    "classifier checkpoint given as NeoSeg": ("10", "unclear error", NAMED, s_cls_checkpoint_as_seg),
    "classifier checkpoint with a payload": ("10", "traceback", NAMED, s_cls_checkpoint_payload),
    "classifier checkpoint truncated": ("10", "traceback", NAMED, s_cls_checkpoint_truncated),
    "VAE checkpoint with a payload (neonet_train cls)": ("10", "traceback", NAMED, s_vae_checkpoint_payload),
    "plans_name '../../../escaped'": ("7", "write outside the results folder", NAMED, s_plans_name_escape),
    "garbage neonet_plans.json": ("10", "unclear error", NAMED, s_garbage_plans),
}
PLANNING = {
    "payload in a preprocessed .pkl": ("1", "code execution", NAMED, s_pickle_payload),
    "all-zero training image": ("8", "silent wrong result", NAMED, s_blank_training_image),
    "CSV with trailing commas": ("10", "traceback", NAMED, s_csv_trailing_comma),
    "Latin-1 CSV": ("10", "unclear error", NAMED, s_csv_latin1),
    "two Dataset501_* folders": ("10", "traceback", NAMED, s_two_dataset_folders),
    "dataset.json without labels": ("10", "unclear error", NAMED, s_dataset_json_without_labels),
    "training spacing in metres": ("10", "unclear error", NAMED, s_training_spacing_in_metres),
}


def _record(name, item, before, outcome, message):
    RESULTS.append({"input": name, "item": item, "before": before, "after": outcome, "message": message})
    target = os.environ.get("NEONET_HOSTILE_MATRIX")
    if target:
        Path(target).write_text(json.dumps(RESULTS, indent=1), encoding="utf-8")


def _check_scenario(name, spec, ctx: Ctx, *args):
    item, before, expected, scenario = spec
    run, watched, out, check = scenario(ctx, *args)
    watched = [Path(w) for w in watched] + [Path(ctx.trained["seg_model"]), Path(ctx.trained["pp"])]
    snapshot = tree_hash(*[w for w in watched if w.exists()], skip=out)
    result = run()
    after = tree_hash(*[w for w in watched if w.exists()], skip=out)
    changed = sorted(k for k in set(snapshot) | set(after) if snapshot.get(k) != after.get(k))
    assert not changed, f"files outside the output folder changed: {changed[:5]}"
    outcome, message = check(result)
    assert outcome == expected, (outcome, message)
    _record(name, item, before, outcome, message)


@pytest.mark.parametrize("name", list(PREDICT))
def test_prediction_and_training_inputs(name, trained, tmp_path, capsys, monkeypatch):
    _check_scenario(name, PREDICT[name], Ctx(trained, tmp_path, capsys, monkeypatch))


@pytest.mark.parametrize("name", list(PLANNING))
def test_planning_inputs(name, planned_phantom, trained_models, tmp_path, capsys, monkeypatch):
    _check_scenario(name, PLANNING[name], Ctx(trained_models, tmp_path, capsys, monkeypatch), planned_phantom)
