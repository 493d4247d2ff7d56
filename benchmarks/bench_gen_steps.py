"""FID per view vs number of denoiser calls: DDIM (and DDPM-1000) on the ε-trained NeoGen vs rectified flow on the
rectified-flow-trained NeoGen, the same fold, the same conditioning label patches and seeds, in one run.

Needs both model sets of one fold (same autoencoder and conditioning), e.g. on the phantom::

    neonet_train 501 vae 0 -device cpu
    neonet_train 501 ldm 0 -device cpu;        neonet_train 501 controlnet 0 -device cpu
    neonet_train 501 ldm 0 -device cpu --objective rflow; neonet_train 501 controlnet 0 -device cpu --objective rflow
    python benchmarks/bench_gen_steps.py -d 501 -f 0 --ddim 5 10 20 50 --rflow 1 2 5 10 20 --ddpm --n 16

Every setting generates ``--n`` patches conditioned on the fold's training label patches (cycling, class label
of the source case, seeds 0..n-1) and computes FID per view against the fold's real training patches
(:func:`neonet_toolkit.evaluation.image_metrics.fid_per_view_with_ci`: weight-free ``pca`` features unless
``--fid-network``/``--fid-weights``; 95 % bootstrap CIs over patches). "DDPM-1000" is ancestral sampling with
all 1000 training timesteps (DDIM with eta = 1 and 1000 steps, which is DDPM's posterior step).

Printed verdicts: the fewest rectified-flow calls whose average FID is at most DDIM-50's (and at most the upper
end of DDIM-50's CI), with the call ratio (target >= 5x); and whether rectified flow with <= 1000/30 calls
reaches DDPM-1000's average FID (MAISI's >= 30x). Seconds per patch are wall-clock on whatever machine runs it
(on a shared machine, compare them only within one run). Writes ``neonet_results/<ds>/bench_gen_steps_fold_N.json``.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
from bench_gen import fold_real_patches  # benchmarks/ is on sys.path when run as a script

from neonet_toolkit.evaluation.image_metrics import fid_per_view_with_ci, make_feature_extractor
from neonet_toolkit.generation.generate import generate_patch, load_neogen_models
from neonet_toolkit.utilities.identifiers import GenRunId

VIEWS = ("axial", "sagittal", "coronal")


def run(dataset, fold: int, ddim_steps, rflow_steps, n: int, ddpm: bool = False, device: str = "cpu",
        autoencoder: str = "vae", conditioning: str = "mask_class", fid_network: str = "pca",
        fid_weights: str | None = None, n_boot: int = 200) -> tuple[list[dict], dict, object]:
    name, res, tf, train, labels, real, real_img, real_roi = fold_real_patches(dataset, fold)
    settings = [("ddpm", 1000, 1.0)] if ddpm else []
    settings += [("ddim", s, 0.0) for s in ddim_steps] + [("rflow", s, 0.0) for s in rflow_steps]
    models = {}
    rows = []
    for sampler, steps, eta in settings:
        objective = "eps" if sampler in ("ddim", "ddpm") else "rflow"
        if objective not in models:
            models[objective] = load_neogen_models(name, fold, device, variant=GenRunId(
                "synthetic", autoencoder=autoencoder, objective=objective, conditioning=conditioning))
        m = models[objective]
        imgs, rois = [], []
        t0 = time.perf_counter()
        for k in range(n):
            c = train[k % len(train)]
            _, lab = real[k % len(train)]
            imgs.append(generate_patch(m, lab, k, steps, class_label=labels[c], eta=eta)[0])
            rois.append(lab[0] > 0)
        sec = (time.perf_counter() - t0) / n
        f = fid_per_view_with_ci(real_img, real_roi, np.stack(imgs), np.stack(rois), tf,
                                 lambda: make_feature_extractor(fid_network, fid_weights, device=device), n_boot)
        row = {"sampler": sampler, "calls": int(steps), "eta": eta, "n": n, "s_per_patch": sec,
               **{f"fid_{v}": f[v] for v in (*VIEWS, "average")}, "ci_average": f["ci"]["average"],
               "fid_network": fid_network, "checkpoint": m.checkpoint}
        rows.append(row)
        print(f"{sampler:6s} {steps:5d} calls  {sec:8.3f} s/patch  FID A/S/C {f['axial']:.3f} {f['sagittal']:.3f} "
              f"{f['coronal']:.3f}  avg {f['average']:.3f} [{f['ci']['average'][0]:.3f}, {f['ci']['average'][1]:.3f}]",
              flush=True)
    verdict = verdicts(rows)
    out = res / f"bench_gen_steps_fold_{fold}.json"
    out.write_text(json.dumps({"rows": rows, "verdicts": verdict, "autoencoder": autoencoder,
                               "conditioning": conditioning, "n": n, "n_boot": n_boot}, indent=1), encoding="utf-8")
    return rows, verdict, out


def verdicts(rows: list[dict]) -> dict:
    """Fewest rectified-flow calls matching DDIM-50 (point estimate and CI upper end) and DDPM-1000."""
    def pick(sampler, calls):
        return next((r for r in rows if r["sampler"] == sampler and r["calls"] == calls), None)

    rf = sorted((r for r in rows if r["sampler"] == "rflow"), key=lambda r: r["calls"])
    out = {}
    ddim50 = pick("ddim", 50)
    if ddim50 is not None:
        for key, bound in (("match_ddim50", ddim50["fid_average"]), ("within_ddim50_ci", ddim50["ci_average"][1])):
            hit = next((r for r in rf if r["fid_average"] <= bound), None)
            out[key] = {"ddim50_fid": ddim50["fid_average"], "bound": bound,
                        "rflow_calls": hit["calls"] if hit else None,
                        "call_ratio": 50 / hit["calls"] if hit else None,
                        "target_5x_met": bool(hit and 50 / hit["calls"] >= 5)}
    ddpm = pick("ddpm", 1000)
    if ddpm is not None:
        hit = next((r for r in rf if r["fid_average"] <= ddpm["fid_average"]), None)
        out["match_ddpm1000"] = {"ddpm1000_fid": ddpm["fid_average"], "rflow_calls": hit["calls"] if hit else None,
                                 "call_ratio": 1000 / hit["calls"] if hit else None,
                                 "maisi_30x_reached": bool(hit and 1000 / hit["calls"] >= 30)}
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-d", "--dataset", required=True)
    p.add_argument("-f", "--fold", type=int, default=0)
    p.add_argument("--ddim", type=int, nargs="*", default=[5, 10, 20, 50], help="DDIM step counts")
    p.add_argument("--rflow", type=int, nargs="*", default=[1, 2, 5, 10, 20], help="rectified-flow step counts")
    p.add_argument("--ddpm", action="store_true", help="also DDPM-1000 (1000 calls per patch)")
    p.add_argument("--n", type=int, default=16, help="patches per setting")
    p.add_argument("--autoencoder", default="vae", choices=["vae", "vqvae"])
    p.add_argument("--conditioning", default="mask_class", choices=["mask_class", "mask"])
    p.add_argument("-device", "--device", default="cpu")
    p.add_argument("--fid-network", default="pca")
    p.add_argument("--fid-weights", default=None)
    p.add_argument("--n-boot", type=int, default=200)
    a = p.parse_args(argv)
    rows, verdict, out = run(a.dataset, a.fold, a.ddim, a.rflow, a.n, a.ddpm, a.device, a.autoencoder, a.conditioning,
                             a.fid_network, a.fid_weights, a.n_boot)
    print(f"\n{'sampler':8s} {'calls':>5s} {'s/patch':>9s} {'FID A':>9s} {'FID S':>9s} {'FID C':>9s} {'FID avg':>9s}")
    for r in rows:
        print(f"{r['sampler']:8s} {r['calls']:5d} {r['s_per_patch']:9.3f} {r['fid_axial']:9.3f} "
              f"{r['fid_sagittal']:9.3f} {r['fid_coronal']:9.3f} {r['fid_average']:9.3f}")
    for k, v in verdict.items():
        print(f"{k}: {v}")
    print(f"written {out}")


if __name__ == "__main__":
    main()
