"""Storage order vs answer: the same anatomy stored in the 8 axis-flip and the 6 axis-permutation orders.

    python benchmarks/orientation.py --mini /tmp/orientation_mini          # trains tiny models there once
    python benchmarks/orientation.py -d 501 [-i imagesTs] [-m SEG_MODEL] [--cls-run RUN] [-f 0]

Every test case is written again with ``sitk.DICOMOrient`` (same voxels, same physical space, affine
adjusted; codes ``LPS`` … ``RAI`` for the flips, the 6 orderings of ``L``, ``P``, ``S`` for the
permutations) and run through ``neonet_predict`` twice: as shipped (TLCR crop in the canonical
orientation of :mod:`neonet_toolkit.preprocessing.orientation`) and with the canonicalisation switched off
(the crop taken in storage order, the behaviour before issue 21 item 5). Each predicted mask is brought
back to the case's own storage order and compared with the prediction on the original file: Dice of
organ∪tumour and of tumour, whether it is identical, and the change of the probability.

Prints a table and writes ``docs/results/orientation/orientation.json`` (``--json`` to change).

``--mini ROOT`` builds the mini phantom of the prediction tests (15 training cases of 32×32×16 voxels, 2
test cases), plans it and trains NeoSeg (nnU-Net U-Net, 10 epochs), a VAE and PattenNet on fold 0, on CPU,
in ROOT (reused when already there: a few minutes the first time).
"""
from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

FLIPS = ["".join(c) for c in itertools.product("LR", "PA", "SI")]
PERMUTATIONS = ["".join(p) for p in itertools.permutations("LPS")]
ENV_KEYS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "neonet_results")
MINI_ID = 503
OUT_JSON = Path(__file__).resolve().parent.parent / "docs" / "results" / "orientation" / "orientation.json"


def build_mini(root: Path) -> dict:
    """The tests' mini phantom with tiny trained models in ``root`` (built once; reused when finished)."""
    for k in ENV_KEYS:
        os.environ[k] = str(root / k)
    done = root / "mini.json"
    if done.is_file():
        return json.loads(done.read_text(encoding="utf-8"))
    from neonet_toolkit.demo.phantom import make_phantom_dataset
    from neonet_toolkit.training.planning import plan_and_preprocess
    from neonet_toolkit.training.cls import ClsTrainer
    from neonet_toolkit.training.seg.api import train_seg
    from neonet_toolkit.training.vae import VAETrainer

    if root.exists():
        shutil.rmtree(root)
    raw = make_phantom_dataset(root / "nnUNet_raw", MINI_ID, "Mini", n_train=15, n_test=2, shape_xyz=(32, 32, 16),
                               spacing=(1.5, 1.5, 3.0), shape_jitter=1, seed=1,
                               neonet_options={"crop_size": [16, 16, 8]})
    plan_and_preprocess(MINI_ID, num_processes=1)
    pp = root / "nnUNet_preprocessed" / raw.name
    plans = json.loads((pp / "neonet_plans.json").read_text(encoding="utf-8"))
    plans["configurations"]["test_tiny"] = {"inherits_from": "cpu_small", "vae": {"epochs": 2, "val_every": 1},
                                            "cls": {"epochs": 3, "patience": 10, "min_epochs": 0}}
    (pp / "neonet_plans.json").write_text(json.dumps(plans), encoding="utf-8")
    seg_folder = train_seg(MINI_ID, 0, arch="nnunet", device="cpu", epochs=10, iterations=12, val_iterations=1)
    VAETrainer(MINI_ID, 0, configuration="test_tiny", device="cpu").run()
    cls_out = ClsTrainer(MINI_ID, 0, arch="pattennet", synthetic_ratio=0.0, configuration="test_tiny",
                         device="cpu").run()
    info = {"dataset": raw.name, "input": str(raw / "imagesTs"), "seg_model": str(Path(seg_folder).parent),
            "cls_run": cls_out.parent.name.split("__")[0]}
    done.write_text(json.dumps(info), encoding="utf-8")
    return info


def _cases(folder: Path, file_ending: str) -> dict[str, list[Path]]:
    out: dict[str, list[Path]] = {}
    for f in sorted(folder.glob(f"*_[0-9][0-9][0-9][0-9]{file_ending}")):
        out.setdefault(f.name[: -len(file_ending) - 5], []).append(f)
    return out


def _dice(a: np.ndarray, b: np.ndarray) -> float | None:
    s = int(a.sum() + b.sum())
    return None if s == 0 else 2.0 * float((a & b).sum()) / s


def _run(predict_kw: dict, inp: Path, out: Path, canonical: bool) -> None:
    from neonet_toolkit.inference import predict as P
    from neonet_toolkit.preprocessing.orientation import CanonicalOrientation

    original = P.canonical_orientation
    if not canonical:  # the crop in storage order: what neonet_predict did before the canonical orientation
        P.canonical_orientation = lambda props, tf: CanonicalOrientation((), None, tuple(2 - int(t) for t in tf),
                                                                         "disabled")
    try:
        P.predict(inp, out, **predict_kw)
    finally:
        P.canonical_orientation = original


def measure(dataset: str, input_folder: Path, seg_model: str | None, cls_run: str | None, folds: list[int],
            device: str, work: Path) -> dict:
    from neonet_toolkit.dataset.labels import resolve_label_roles
    from neonet_toolkit.utilities.io import load_json

    seg_json = load_json(Path(seg_model) / "dataset.json") if seg_model else None
    file_ending = seg_json["file_ending"] if seg_json else ".nii.gz"
    cases = _cases(input_folder, file_ending)
    inp = work / "in"
    inp.mkdir(parents=True)
    variants = {}  # stored case id -> (case, code)
    own_code = {}
    for cid, files in cases.items():
        own_code[cid] = sitk.DICOMOrientImageFilter_GetOrientationFromDirectionCosines(
            sitk.ReadImage(str(files[0])).GetDirection())
        for code in dict.fromkeys(FLIPS + PERMUTATIONS):
            vid = f"{cid}-{code.lower()}"
            variants[vid] = (cid, code)
            for f in files:
                sitk.WriteImage(sitk.DICOMOrient(sitk.ReadImage(str(f)), code), str(inp / f"{vid}{f.name[len(cid):]}"))
    kw = dict(dataset=dataset, seg_model=seg_model, cls_run=cls_run, folds=folds, device=device)
    t0 = time.perf_counter()
    results = {}
    for canonical in (True, False):
        out = work / ("canonical" if canonical else "storage_order")
        _run(kw, inp, out, canonical)
        results[canonical] = out
    seconds = time.perf_counter() - t0

    from neonet_toolkit import paths

    roles = resolve_label_roles(load_json(paths.nnunet_preprocessed() / paths.find_dataset_name(dataset)
                                          / "dataset.json"), dataset)
    rows = []
    for canonical, out in results.items():
        recs = {v: load_json(out / "cases" / f"{v}.json") for v in variants}
        masks = {}
        for vid, (cid, code) in variants.items():
            seg = sitk.ReadImage(str(out / f"{vid}{file_ending}"))
            masks[vid] = sitk.GetArrayFromImage(sitk.DICOMOrient(seg, own_code[cid]))
        for vid, (cid, code) in variants.items():
            ref = f"{cid}-{own_code[cid].lower()}"
            organ_a, tumor_a = roles.masks(masks[vid])
            organ_r, tumor_r = roles.masks(masks[ref])
            p, p_ref = recs[vid].get("probability"), recs[ref].get("probability")
            rows.append({
                "case": cid, "code": code, "kind": "flip" if code in FLIPS else "permutation",
                "canonical_crop": canonical,
                "canonical_flips": (recs[vid].get("tlcr") or {}).get("canonical_flips"),
                "mask_identical": bool(np.array_equal(masks[vid], masks[ref])),
                "dice_organ_tumor": _dice(organ_a | tumor_a, organ_r | tumor_r), "dice_tumor": _dice(tumor_a, tumor_r),
                "probability": p, "probability_ref": p_ref,
                "abs_dp": None if p is None or p_ref is None else abs(float(p) - float(p_ref)),
                "decision_changed": recs[vid].get("decision") != recs[ref].get("decision"),
                "qc_flags": recs[vid].get("qc_flags"),
            })
    return {"rows": rows, "seconds_predict": seconds, "n_cases": len(cases)}


def summarise(rows: list[dict]) -> list[dict]:
    """One line per (crop mode, kind): worst case over cases and orders."""
    out = []
    for canonical, kind in itertools.product((True, False), ("flip", "permutation")):
        sel = [r for r in rows if r["canonical_crop"] == canonical and r["kind"] == kind
               and (kind == "flip" or r["code"] != "LPS")]
        dps = [r["abs_dp"] for r in sel if r["abs_dp"] is not None]
        dt = [r["dice_tumor"] for r in sel if r["dice_tumor"] is not None]
        do = [r["dice_organ_tumor"] for r in sel if r["dice_organ_tumor"] is not None]
        out.append({"crop": "canonical" if canonical else "storage order", "kind": kind, "n": len(sel),
                    "masks_identical": sum(r["mask_identical"] for r in sel),
                    "min_dice_organ_tumor": min(do) if do else None, "min_dice_tumor": min(dt) if dt else None,
                    "max_abs_dp": max(dps) if dps else None,
                    "median_abs_dp": float(np.median(dps)) if dps else None,
                    "decisions_changed": sum(r["decision_changed"] for r in sel)})
    return out


def _fmt(v, spec=".4f") -> str:
    return "-" if v is None else format(v, spec)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-d", "--dataset", default=None)
    p.add_argument("-i", "--input", default=None, help="test images (default: the dataset's imagesTs)")
    p.add_argument("-m", "--seg-model", dest="seg_model", default=None)
    p.add_argument("--cls-run", dest="cls_run", default=None)
    p.add_argument("-f", "--folds", nargs="+", type=int, default=[0])
    p.add_argument("-device", "--device", default="cpu")
    p.add_argument("--mini", type=Path, default=None, help="build/reuse tiny trained models in this folder")
    p.add_argument("--json", type=Path, default=OUT_JSON)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if a.mini is None and a.dataset is None:
        p.error("give -d DATASET (trained models) or --mini FOLDER")
    setup = build_mini(a.mini.resolve()) if a.mini is not None else {}

    from neonet_toolkit import paths
    from neonet_toolkit.models.seg import default_model_folder

    paths.apply_defaults_to_process()
    dataset = a.dataset or setup["dataset"]
    name = paths.find_dataset_name(dataset)
    seg_model = a.seg_model or setup.get("seg_model") or str(default_model_folder(name))
    cls_run = a.cls_run or setup.get("cls_run")
    inp = Path(a.input or setup.get("input") or paths.nnunet_raw() / name / "imagesTs")
    with tempfile.TemporaryDirectory() as tmp:
        res = measure(name, inp, seg_model, cls_run, a.folds, a.device, Path(tmp))
    summary = summarise(res["rows"])
    print(f"{name}: {res['n_cases']} test case(s) x (8 flips + 5 other permutations), seg model {seg_model}, "
          f"cls run {cls_run}, folds {a.folds}, {a.device}; predict {res['seconds_predict']:.0f} s")
    print(f"{'crop':14s} {'orders':12s} {'n':>3s} {'identical':>9s} {'minDice org':>11s} {'minDice tum':>11s} "
          f"{'max|dp|':>8s} {'med|dp|':>8s} {'dec.chg':>7s}")
    for s in summary:
        print(f"{s['crop']:14s} {s['kind']:12s} {s['n']:3d} {s['masks_identical']:9d} "
              f"{_fmt(s['min_dice_organ_tumor']):>11s} {_fmt(s['min_dice_tumor']):>11s} {_fmt(s['max_abs_dp']):>8s} "
              f"{_fmt(s['median_abs_dp']):>8s} {s['decisions_changed']:7d}")
    print("\nper order (canonical crop):")
    print(f"{'case':16s} {'code':5s} {'flips':10s} {'identical':>9s} {'Dice org':>8s} {'Dice tum':>8s} {'p':>8s} "
          f"{'|dp|':>8s} flags")
    for r in res["rows"]:
        if r["canonical_crop"]:
            print(f"{r['case']:16s} {r['code']:5s} {str(r['canonical_flips']):10s} {str(r['mask_identical']):>9s} "
                  f"{_fmt(r['dice_organ_tumor']):>8s} {_fmt(r['dice_tumor']):>8s} {_fmt(r['probability']):>8s} "
                  f"{_fmt(r['abs_dp'], '.2e'):>8s} {','.join(r['qc_flags'] or [])}")
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps({"dataset": name, "seg_model": seg_model, "cls_run": cls_run, "folds": a.folds,
                                  "device": a.device, "machine": platform.platform(), "summary": summary,
                                  **res}, indent=1), encoding="utf-8")
    print(f"\nwritten: {a.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
