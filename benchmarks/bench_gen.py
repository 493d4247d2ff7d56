"""NeoGen sampling benchmark: seconds per generated patch and FID vs number of DDIM steps.

Needs a fold with trained VAE/LDM/ControlNet, e.g. on the phantom::

    neonet_make_demo_dataset -d 501 ...; neonet_plan_and_preprocess -d 501
    neonet_train 501 vae 0 -device cpu; neonet_train 501 ldm 0 -device cpu; neonet_train 501 controlnet 0 -device cpu
    python benchmarks/bench_gen.py -d 501 -f 0 --steps 5 10 20 50 --n 12

Each step count generates ``--n`` patches conditioned on the fold's training label patches (cycling
through them, class label of the source case, seeds 0..n-1), times them (after one warm-up patch)
and computes FID per view (weight-free pca extractor unless --fid-network/--fid-weights are given)
against the fold's real training patches. Runs on CPU, and on CUDA too when available (or --devices).
Prints a table and writes JSON next to the results (``neonet_results/<ds>/bench_gen_fold_N.json``).
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch


def fold_real_patches(dataset, fold: int):
    """The fold's real training patches, the FID reference of both generation benchmarks:
    (dataset name, results folder, transpose_forward, train ids, labels, [(image, label)], images ch 0, ROIs)."""
    from neonet_toolkit.experiment_planning.plans import NEONET_PLANS_FILE, NeoNetPlans
    from neonet_toolkit.experiment_planning.splits import get_fold, load_splits
    from neonet_toolkit.preprocessing.patches import load_patch, patch_folder
    from neonet_toolkit.training.gen_common import case_labels
    from neonet_toolkit.utilities.identifiers import dataset_folders

    name, pp, res = dataset_folders(dataset)
    tf = NeoNetPlans(pp / NEONET_PLANS_FILE)["transpose_forward"]
    train = get_fold(load_splits(pp), fold)["train"]
    labels = case_labels(pp, train)
    src = patch_folder(pp, "gt")
    real = [load_patch(src, c) for c in train]
    return (name, res, tf, train, labels, real, np.stack([r[0][0] for r in real]),
            np.stack([r[1][0] > 0 for r in real]))


def run(dataset, fold, steps_list, n, devices, fid_network="pca", fid_weights=None):
    from neonet_toolkit.evaluation.image_metrics import fid_per_view, make_feature_extractor
    from neonet_toolkit.generation.generate import generate_patch, load_neogen_models

    name, res, tf, train, labels, real, real_img, real_roi = fold_real_patches(dataset, fold)
    rows = []
    for dev in devices:
        models = load_neogen_models(name, fold, dev)
        generate_patch(models, real[0][1], 0, min(steps_list), class_label=labels[train[0]])  # warm-up
        for steps in steps_list:
            imgs, rois = [], []
            if dev.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            for k in range(n):
                c = train[k % len(train)]
                _, lab = real[k % len(train)]
                imgs.append(generate_patch(models, lab, k, steps, class_label=labels[c])[0])
                rois.append(lab[0] > 0)
            if dev.startswith("cuda"):
                torch.cuda.synchronize()
            sec = (time.perf_counter() - t0) / n
            f = fid_per_view(real_img, real_roi, np.stack(imgs), np.stack(rois), tf,
                             lambda: make_feature_extractor(fid_network, fid_weights, device=dev))
            rows.append({"device": dev, "steps": steps, "n": n, "s_per_patch": sec,
                         "fid_axial": f["axial"], "fid_sagittal": f["sagittal"], "fid_coronal": f["coronal"],
                         "fid_avg": f["average"], "fid_network": fid_network})
    out = res / f"bench_gen_fold_{fold}.json"
    out.write_text(json.dumps(rows, indent=1), encoding="utf-8")
    return rows, out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-d", "--dataset", required=True)
    p.add_argument("-f", "--fold", type=int, default=0)
    p.add_argument("--steps", type=int, nargs="+", default=[5, 10, 20, 50])
    p.add_argument("--n", type=int, default=12, help="patches per step count")
    p.add_argument("--devices", nargs="+", default=None, help="default: cpu (+ cuda when available)")
    p.add_argument("--fid-network", default="pca")
    p.add_argument("--fid-weights", default=None)
    a = p.parse_args(argv)
    devices = a.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    rows, out = run(a.dataset, a.fold, a.steps, a.n, devices, a.fid_network, a.fid_weights)
    print(f"{'device':8s} {'steps':>5s} {'s/patch':>9s} {'FID A':>9s} {'FID S':>9s} {'FID C':>9s} {'FID avg':>9s}")
    for r in rows:
        print(f"{r['device']:8s} {r['steps']:5d} {r['s_per_patch']:9.3f} {r['fid_axial']:9.3f} {r['fid_sagittal']:9.3f} "
              f"{r['fid_coronal']:9.3f} {r['fid_avg']:9.3f}")
    print(f"written {out}")


if __name__ == "__main__":
    main()
