"""Resolution-limit benchmark: pooled out-of-fold AUC against the PNI cue's width (not in the test suite).

    python benchmarks/cue_width_sweep.py --root /tmp/neonet_sweep --seed 21 --widths 1 2 3 5 7 \
        --archs pattennet pattennet_fine resnet10 --radiomics --fusion pattennet_fine \
        --png docs/figures/cue_width_sweep.png --table docs/figures/cue_width_sweep.md

Per width, with the toolkit's own APIs and nothing stood in:

1. a thin-cue phantom (``make_phantom_dataset(cue_kind=..., cue_width=w, seed=...)``, the dataset
   seed derived from ``--seed`` and the width) and ``plan_and_preprocess`` (``--folds`` stratified folds);
2. per fold, on that fold's training cases only: the fold's VAE (``VAETrainer``; the encoder is
   trained on this data, so one VAE per width and fold, shared by every PattenNet variant), then each
   ``--archs`` classifier (``ClsTrainer``) with ``--early-stopping none`` and the fixed epochs of the
   ``sweep`` configuration (inherits ``cpu_small``; ``--vae-epochs`` / ``--cls-epochs``);
3. the radiomics baseline on the same folds (``run_radiomics_baseline``; pyradiomics needed) and the
   late fusion of radiomics with ``--fusion`` (``run_late_fusion``);
4. pooled out-of-fold AUC with DeLong 95 % CIs per model and width -> JSON, a markdown table, a PNG.

``--x2-vae`` adds ``pattennet (x2 VAE)``: the same phantom planned again and its VAE built with one
downsampling level (``vae.channels`` of length 2 in the ``sweep_x2`` configuration).

Protocol: ``--early-stopping none`` (fixed epochs chosen on tuning seeds, then frozen). Every result
is kept under ``--root`` and reused on a re-run (the script resumes). One thread.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

KEYS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "neonet_results")
LABELS = {"pattennet": "PattenNet", "pattennet_fine": "PattenNet-fine", "pattennet_ms": "PattenNet + taps (a)",
          "pattennet_fb": "PattenNet + fine branch (b)", "pattennet_ms_fb": "PattenNet + taps + branch",
          "pattennet_x2vae": "PattenNet, x2 VAE (c)", "resnet10": "ResNet-10 (CNN)", "radiomics": "Radiomics + LR",
          "fusion": "Fusion (radiomics + PattenNet-fine)"}


def _env(root: Path) -> None:
    for k in KEYS:
        (root / k).mkdir(parents=True, exist_ok=True)
        os.environ[k] = str(root / k)


def _dataset(args, width: float, x2: bool) -> tuple[str, int]:
    from neonet_toolkit.demo.phantom import make_phantom_dataset
    from neonet_toolkit.training.planning import plan_and_preprocess
    from neonet_toolkit.utilities.io import load_json, save_json

    w10 = int(round(width * 10))
    did = 700 + (100 if x2 else 0) + w10 % 100
    name = f"Sweep{'X2' if x2 else ''}S{args.seed}W{w10}"
    raw = Path(os.environ["nnUNet_raw"]) / f"Dataset{did:03d}_{name}"
    pp = Path(os.environ["nnUNet_preprocessed"]) / raw.name
    if not (pp / "neonet_plans.json").is_file():
        for old in Path(os.environ["nnUNet_raw"]).glob(f"Dataset{did:03d}_*"):
            if old.name != raw.name:
                raise FileExistsError(f"{old} uses dataset id {did}; use another --root per seed.")
        if not raw.is_dir():
            make_phantom_dataset(os.environ["nnUNet_raw"], did, name, n_train=args.n_cases, n_test=0,
                                 shape_xyz=(48, 48, 24), shape_jitter=2, seed=args.seed * 1000 + w10,
                                 cue_kind=args.cue_kind, cue_width=width, label_noise=args.label_noise,
                                 neonet_options={"crop_size": [32, 32, 16]})
        plan_and_preprocess(did, num_processes=1, n_folds=args.folds)
        plans = load_json(pp / "neonet_plans.json")
        over = {"inherits_from": "cpu_small", "vae": {"epochs": args.vae_epochs, "val_every": args.vae_epochs},
                "cls": {"epochs": args.cls_epochs}}
        plans["configurations"]["sweep"] = over
        plans["configurations"]["sweep_x2"] = {"inherits_from": "sweep", "vae": {
            "channels": [8, 16], "attention_levels": [False, False]}}
        save_json(plans, pp / "neonet_plans.json")
    return raw.name, did


def _pooled(run_root: Path, folds: int) -> dict | None:
    import numpy as np

    from neonet_toolkit.models.cls_results import read_predictions_csv
    from neonet_toolkit.utilities import stats

    ys, ps = [], []
    for k in range(folds):
        f = run_root / f"fold_{k}" / "oof_predictions.csv"
        if not f.is_file():
            return None
        rows = read_predictions_csv(f)
        ys += [r["label"] for r in rows]
        ps += [r["probability"] for r in rows]
    d = stats.delong_ci(np.array(ys), np.array(ps))
    return {"auc": d["auc"], "ci_low": d["ci_low"], "ci_high": d["ci_high"], "n": len(ys), "n_pos": int(sum(ys))}


def run_width(args, width: float) -> dict:
    from neonet_toolkit.training.cls import ClsTrainer
    from neonet_toolkit.training.radiomics import run_late_fusion, run_radiomics_baseline
    from neonet_toolkit.training.vae import VAETrainer
    from neonet_toolkit.utilities.identifiers import dataset_folders, fold_is_finished

    out, times = {}, {}
    plans_sets = [(False, list(args.archs))] + ([(True, ["pattennet"])] if args.x2_vae else [])
    for x2, archs in plans_sets:
        t = time.perf_counter()
        ds, _ = _dataset(args, width, x2)
        times["data" + ("_x2" if x2 else "")] = round(time.perf_counter() - t, 1)
        conf = "sweep_x2" if x2 else "sweep"
        _, _, res_root = dataset_folders(ds)
        for fold in range(args.folds):
            t = time.perf_counter()
            vae = VAETrainer(ds, fold, configuration=conf, device="cpu", continue_training=True)
            if not fold_is_finished(vae.output_folder):
                vae.run()
            times[f"vae{'_x2' if x2 else ''}"] = times.get(f"vae{'_x2' if x2 else ''}", 0) + round(
                time.perf_counter() - t, 1)
            for arch in archs:
                t = time.perf_counter()
                tr = ClsTrainer(ds, fold, arch=arch, configuration=conf, device="cpu", early_stopping="none",
                                continue_training=True)
                tr.run()
                key = "pattennet_x2vae" if x2 else arch
                times[key] = times.get(key, 0) + round(time.perf_counter() - t, 1)
        for arch in archs:
            key = "pattennet_x2vae" if x2 else arch
            out[key] = _pooled(res_root / f"cls_{arch}_0_esnone__NeoNetPlans", args.folds)
        if not x2 and args.radiomics:
            t = time.perf_counter()
            root = run_radiomics_baseline(ds, list(range(args.folds)))
            times["radiomics"] = round(time.perf_counter() - t, 1)
            out["radiomics"] = _pooled(root, args.folds)
            if args.fusion:
                root = run_late_fusion(ds, f"cls_{args.fusion}_0_esnone", folds=list(range(args.folds)))
                out["fusion"] = _pooled(root, args.folds)
    return {"width": width, "results": out, "seconds": times}


def _table(widths: list[float], models: list[str], results: dict, caption: str) -> str:
    head = "| model | " + " | ".join(f"{w:g} vox" for w in widths) + " |"
    md = [caption, "", head, "|---|" + "---|" * len(widths)]
    for m in models:
        cells = []
        for w in widths:
            r = results.get(f"{w:g}", {}).get("results", {}).get(m)
            cells.append("—" if not r else f"{r['auc']:.3f} [{r['ci_low']:.2f}, {r['ci_high']:.2f}]")
        md.append(f"| {LABELS.get(m, m)} | " + " | ".join(cells) + " |")
    return "\n".join(md) + "\n"


def _plot(widths, models, results, png: Path, title: str) -> None:
    from matplotlib.figure import Figure

    from neonet_toolkit.utilities.io import save_figure

    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.add_subplot(1, 1, 1)
    for i, m in enumerate(models):
        pts = [(w, results[f"{w:g}"]["results"][m]) for w in widths
               if results.get(f"{w:g}", {}).get("results", {}).get(m)]
        if not pts:
            continue
        x = [w + (i - len(models) / 2) * 0.06 for w, _ in pts]  # small dodge so the CIs do not overlap
        y = [r["auc"] for _, r in pts]
        err = [[r["auc"] - r["ci_low"] for _, r in pts], [r["ci_high"] - r["auc"] for _, r in pts]]
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=LABELS.get(m, m))
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("cue width (in-plane voxels)")
    ax.set_ylabel("pooled out-of-fold AUC (95% DeLong CI)")
    ax.set_ylim(0.2, 1.02)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    save_figure(fig, png, dpi=120)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--root", required=True)
    p.add_argument("--seed", type=int, required=True, help="phantom seed family (tuning or held-out)")
    p.add_argument("--widths", type=float, nargs="+", default=[1, 2, 3, 5, 7])
    p.add_argument("--cue-kind", default="halo", choices=("halo", "tube"))
    p.add_argument("--label-noise", type=float, default=0.0)
    p.add_argument("--n-cases", type=int, default=36)
    p.add_argument("--folds", type=int, default=3)
    p.add_argument("--vae-epochs", type=int, default=30)
    p.add_argument("--cls-epochs", type=int, default=40)
    p.add_argument("--archs", nargs="+", default=["pattennet", "pattennet_fine", "resnet10"])
    p.add_argument("--radiomics", action="store_true")
    p.add_argument("--fusion", default=None, help="deep arch fused with radiomics (needs --radiomics)")
    p.add_argument("--x2-vae", action="store_true")
    p.add_argument("--png", default=None)
    p.add_argument("--table", default=None)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    root = Path(args.root)
    _env(root)
    import torch

    torch.set_num_threads(1)
    res_file = root / f"sweep_seed{args.seed}.json"
    results = json.loads(res_file.read_text()) if res_file.is_file() else {}
    for w in args.widths:
        t = time.perf_counter()
        r = run_width(args, w)
        r["total_seconds"] = round(time.perf_counter() - t, 1)
        results[f"{w:g}"] = r
        res_file.write_text(json.dumps(results, indent=1))
        print(json.dumps(r), flush=True)
    models = [*args.archs, *(["pattennet_x2vae"] if args.x2_vae else []),
              *(["radiomics"] if args.radiomics else []), *(["fusion"] if args.fusion else [])]
    caption = (f"Pooled out-of-fold AUC [95% DeLong CI], {args.cue_kind} cue, phantom seed family {args.seed}, "
               f"{args.n_cases} cases, {args.folds} folds, label noise {args.label_noise:g}; deep models: "
               f"--early-stopping none, {args.cls_epochs} epochs, per-fold VAE {args.vae_epochs} epochs (cpu_small).")
    md = _table(args.widths, models, results, caption)
    print(md)
    if args.table:
        Path(args.table).parent.mkdir(parents=True, exist_ok=True)
        Path(args.table).write_text(md, encoding="utf-8")
    if args.png:
        _plot(args.widths, models, results, Path(args.png), f"cue width sweep, seed family {args.seed} (held out)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
