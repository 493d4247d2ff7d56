"""Five-fold NeoCls report on the phantom, from real NeoGen output (CPU tiny preset).

    python benchmarks/phantom_cv_report.py --root /tmp/neonet_cv --n-cases 48 --seed 2 \
        --archs pattennet resnet10 --ratios 0 1.0 --arms synthetic both oversample weighted --jobs 2

What it does, with the toolkit's own APIs and nothing stood in:

1. a phantom dataset (``make_phantom_dataset``) and ``plan_and_preprocess`` (5 stratified folds);
2. per fold, on that fold's training cases only: the VAE, the latent diffusion U-Net and the
   ControlNet trainers, then ``generate_synthetic_set(ratio=1.0, n_majority=-1)`` (the minority patches
   that balance 1:1, plus as many majority-class patches for the both-classes control arm);
3. ``run_experiment`` for the NeoCls grid (archs × ratios × arms × folds, the plans' default model
   selection — nested — unless ``--early-stopping`` says otherwise; finished runs are skipped, so the
   script resumes after an interruption) with the shortcut check; the CPU-tiny generators fail any honest
   synthetic quality gate, so the grid runs with ``allow_failed_gate=True`` (logged, and recorded as
   overridden in every run's ``cls_summary.json``); ``--ratios ... auto`` adds the inner-fold ratio choice;
4. ``evaluate_cls``: Table 2, pooled AUCs with DeLong and bootstrap CIs, paired DeLong tests,
   ROC / calibration PNGs, under ``neonet_results/<ds>/cls_evaluation__NeoNetPlans/``.

``--jobs 2`` runs two folds (NeoGen) or two architecture groups (NeoCls) at a time, one thread
each. The path variables point under ``--root`` (a user's own variables are not touched). Prints
the timings and the report's path.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

KEYS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "neonet_results")


def _env(root: Path) -> None:
    for k in KEYS:
        (root / k).mkdir(parents=True, exist_ok=True)
        os.environ[k] = str(root / k)


def _neogen_fold(args) -> dict:
    root, dataset_id, fold, steps, vae_only = args
    _env(Path(root))
    import torch

    torch.set_num_threads(1)
    from neonet_toolkit.generation.generate import generate_synthetic_set
    from neonet_toolkit.training.controlnet import ControlNetTrainer
    from neonet_toolkit.training.ldm import LDMTrainer
    from neonet_toolkit.training.vae import VAETrainer

    times = {}
    stages = (("vae", VAETrainer),) if vae_only else (("vae", VAETrainer), ("ldm", LDMTrainer),
                                                      ("controlnet", ControlNetTrainer))
    for name, cls in stages:
        t = time.perf_counter()
        tr = cls(dataset_id, fold, device="cpu", continue_training=True)
        if not (tr.output_folder / "checkpoint_final.pth").is_file():
            tr.run()
        times[name] = round(time.perf_counter() - t, 1)
    if vae_only:  # PattenNet's frozen encoder only (no synthetic set on this fold)
        return {"fold": fold, **times}
    t = time.perf_counter()
    generate_synthetic_set(dataset_id, fold, ratio=1.0, n_majority=-1, steps=steps, device="cpu")
    times["generate"] = round(time.perf_counter() - t, 1)
    return {"fold": fold, **times}


def _cls_group(args) -> dict:
    root, dataset_id, archs, ratios, folds, epochs, shortcut, arms, early_stopping = args
    _env(Path(root))
    import torch

    torch.set_num_threads(1)
    from neonet_toolkit.run.experiment import run_experiment

    t = time.perf_counter()
    # tiny CPU generators cannot pass the realism / copy-rate gate: override it, on the record
    logging.getLogger(__name__).warning("phantom benchmark: synthetic quality gate overridden (--allow-failed-gate): "
                                        "the CPU-tiny NeoGen models are not meant to pass it")
    st = run_experiment(dataset_id, archs, ratios, folds, device="cpu", epochs=epochs, evaluate=False,
                        shortcut=shortcut, arms=arms, early_stopping=early_stopping, allow_failed_gate=True)
    return {"archs": archs, "seconds": round(time.perf_counter() - t, 1), "failed": st["failed"],
            "shortcut": st["shortcut"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", required=True, type=Path)
    p.add_argument("-d", "--dataset-id", type=int, default=501)
    p.add_argument("--n-cases", type=int, default=60)
    p.add_argument("--archs", nargs="+", default=["pattennet", "resnet18", "densenet121"])
    p.add_argument("--ratios", nargs="+", default=["0", "1.0"], help="synthetic ratios (floats) and/or auto")
    p.add_argument("--folds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    p.add_argument("--epochs", type=int, default=None, help="NeoCls epochs (default: the preset's)")
    p.add_argument("--steps", type=int, default=None, help="DDIM steps (default: the preset's)")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--seed", type=int, default=2,
                   help="phantom seed (default 2: the cpu_small presets were tuned on seed 1, never on seed 2)")
    p.add_argument("--arms", nargs="+", default=["synthetic", "both", "oversample", "weighted"])
    p.add_argument("--early-stopping", default=None, help="model selection (default: the plans', nested)")
    p.add_argument("--neogen-folds", nargs="+", type=int, default=None,
                   help="folds that get the full NeoGen chain and the synthetic arms (default: all); the other folds "
                        "get the VAE only and run the real-data arms (R, oversample, weighted)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    root = a.root.resolve()
    _env(root)
    from neonet_toolkit.demo.phantom import make_phantom_dataset
    from neonet_toolkit.evaluation.cls import evaluate_cls
    from neonet_toolkit.training.planning import plan_and_preprocess

    timings = {}
    t = time.perf_counter()
    if not any((root / "nnUNet_raw").glob(f"Dataset{a.dataset_id:03d}_*")):
        make_phantom_dataset(root / "nnUNet_raw", a.dataset_id, "NeoNetPhantom", n_train=a.n_cases, n_test=0,
                             shape_xyz=(48, 48, 24), shape_jitter=2, seed=a.seed,
                             neonet_options={"crop_size": [32, 32, 16]})
        plan_and_preprocess(a.dataset_id, num_processes=a.jobs, n_folds=5)
    timings["phantom+plan"] = round(time.perf_counter() - t, 1)

    t = time.perf_counter()
    with ProcessPoolExecutor(a.jobs) as ex:
        neogen = set(a.folds if a.neogen_folds is None else a.neogen_folds)
        gen = list(ex.map(_neogen_fold, [(str(root), a.dataset_id, f, a.steps, f not in neogen) for f in a.folds]))
    timings["neogen"] = round(time.perf_counter() - t, 1)

    # split the architectures into `jobs` groups of similar cost (PattenNet is cheap)
    real_arms = [x for x in a.arms if x not in ("synthetic", "both")]
    jobs = [(list(a.archs), sorted(neogen), list(a.arms)),
            (list(a.archs), [f for f in a.folds if f not in neogen], real_arms)]
    jobs = [j for j in jobs if j[1] and j[2]]
    t = time.perf_counter()
    with ProcessPoolExecutor(max(1, min(a.jobs, len(jobs)))) as ex:
        cls = list(ex.map(_cls_group, [(str(root), a.dataset_id, archs, a.ratios, folds, a.epochs, i == 0, arms,
                                        a.early_stopping) for i, (archs, folds, arms) in enumerate(jobs)]))
    timings["neocls"] = round(time.perf_counter() - t, 1)

    t = time.perf_counter()
    res = evaluate_cls(a.dataset_id)
    timings["evaluate"] = round(time.perf_counter() - t, 1)
    out = {"timings_s": timings, "neogen": gen, "neocls": cls, "report": str(Path(res["output"]) / "report.md")}
    print(json.dumps(out, indent=1))
    print((Path(res["output"]) / "report.md").read_text(encoding="utf-8"))
    return 0 if not any(c["failed"] for c in cls) else 1


if __name__ == "__main__":
    raise SystemExit(main())
