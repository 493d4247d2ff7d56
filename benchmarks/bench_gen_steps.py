"""Generation quality vs number of denoiser calls: DDIM (and DDPM-1000) on the ε-trained NeoGen vs rectified flow on
the rectified-flow-trained NeoGen, the same fold, the same conditioning label patches and seeds, in one run, judged
with the generation-quality suite (:mod:`neonet_toolkit.evaluation.gen_quality`).

Needs both model sets of one fold (same autoencoder and conditioning), e.g. on the phantom::

    neonet_train 501 vae 0 -device cpu
    neonet_train 501 ldm 0 -device cpu;        neonet_train 501 controlnet 0 -device cpu
    neonet_train 501 ldm 0 -device cpu --objective rflow; neonet_train 501 controlnet 0 -device cpu --objective rflow
    python benchmarks/bench_gen_steps.py -d 501 -f 0 --ddim 10 50 --rflow 1 5 20 [--ddpm] --n 16 \
        [--configuration NAME] [--pca-fid]

Every setting generates ``--n`` patches conditioned on the fold's training label patches, alternating the two PNI
classes (source cases cycled within each class, the source case's class label, seeds 0..n-1), and scores them with
the suite against the fold's real patches (``evaluation.gen.real_reference``, the plans' ``gen_quality`` settings):
held-out C2ST AUC per class and pooled (real *validation* vs held-out synthetic, DeLong CI; 0.5 = indistinguishable),
FRD and KID against the real training patches (subset CIs), precision / recall and the copy rate. ``--pca-fid``
also computes the legacy per-view PCA-FID (no verdict rests on it). "DDPM-1000" is ancestral sampling with all 1000
training timesteps (DDIM with eta = 1 and 1000 steps, which is DDPM's posterior step).

Verdict ("fewer calls at equal quality"), against a reference setting R (DDIM-50; DDPM-1000 if run): a setting S is
*not worse* than R when its pooled C2ST AUC is at most the upper end of R's 95 % CI **and** its FRD is at most the
upper end of R's FRD CI (both CIs of R; with few patches this is a weak test and it is labelled as such), and
*as good on the point estimates* when both its pooled AUC and its FRD are at most R's. When R and every
rectified-flow setting have a pooled C2ST CI at 1 (``c2st_saturated``: every synthetic patch recognised), C2ST
cannot rank them and the criteria reduce to FRD; the verdict says so. Printed: the fewest
rectified-flow calls meeting each criterion and the call ratio (target >= 5x vs DDIM-50; MAISI's >= 30x vs
DDPM-1000), plus whether any setting passes the gate (C2ST AUC <= the plans' ``c2st_auc_max`` in every class and
copy rate <= ``copy_rate_max``): fewer calls at equal quality means little if neither side is realistic.
Seconds per patch are wall-clock on whatever machine runs it (on a shared machine, compare them only within one
run). Writes ``neonet_results/<ds>/bench_gen_steps_fold_N.json`` (and ``--out``).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from bench_gen import (
    fold_real_patches,  # benchmarks/ is on sys.path when run as a script
)

from neonet_toolkit.evaluation.gen import real_reference
from neonet_toolkit.evaluation.gen_quality import PatchSet, quality_report
from neonet_toolkit.evaluation.image_metrics import (
    fid_per_view_with_ci,
    make_feature_extractor,
)
from neonet_toolkit.experiment_planning.plans import NEONET_PLANS_FILE, NeoNetPlans
from neonet_toolkit.generation.generate import generate_patch, load_neogen_models
from neonet_toolkit.utilities.identifiers import GenRunId, ResultLayout

VIEWS = ("axial", "sagittal", "coronal")
SATURATED = 0.99  # lower C2ST CI bound from which a setting counts as "every synthetic patch recognised"


def balanced_sources(train: list[str], labels: dict, n: int) -> list[str]:
    """``n`` source cases alternating class 0 and class 1 (cycled within each class)."""
    by_class = {c: [t for t in train if labels[t] == c] for c in (0, 1)}
    if not all(by_class.values()):
        raise ValueError("The fold's training set has one class only.")
    return [by_class[k % 2][(k // 2) % len(by_class[k % 2])] for k in range(n)]


def suite_row(report: dict) -> dict:
    c = report["c2st"]
    return {"c2st": {k: {"auc": v["auc"], "ci": v["ci"]} for k, v in c["per_class"].items()},
            "c2st_pooled": {"auc": c["pooled"]["auc"], "ci": c["pooled"]["ci"]},
            "frd": report["frd"], "kid": report["kid"],
            "precision": report["prdc"].get("precision"), "recall": report["prdc"].get("recall"),
            "copy_rate": report["copy_rate"], "copy_ci": report["copy"]["ci"]}


def gate_ok(row: dict, settings: dict) -> bool:
    aucs = [v["auc"] for v in row["c2st"].values()]
    return bool(aucs and all(a is not None and a <= settings["c2st_auc_max"] for a in aucs)
                and row["copy_rate"] <= settings["copy_rate_max"])


def run(dataset, fold: int, ddim_steps, rflow_steps, n: int, ddpm: bool = False, device: str = "cpu",
        autoencoder: str = "vae", conditioning: str = "mask_class", configuration: str | None = None,
        pca_fid: bool = False, fid_network: str = "pca", fid_weights: str | None = None,
        n_boot: int = 200) -> tuple[list[dict], dict, Path]:
    name, res, tf, train, labels, real, real_img, real_roi = fold_real_patches(dataset, fold)
    layout = ResultLayout.for_dataset(name)
    plans = NeoNetPlans(layout.preprocessed / NEONET_PLANS_FILE)
    settings_q = dict(plans.stage("gen_quality", configuration, "cpu"))
    ref = real_reference(layout, fold, settings_q["bin_width"])
    real_by_id = dict(zip(train, real))
    sources = balanced_sources(train, labels, n)
    settings = [("ddpm", 1000, 1.0)] if ddpm else []
    settings += [("ddim", s, 0.0) for s in ddim_steps] + [("rflow", s, 0.0) for s in rflow_steps]
    models = {}
    rows = []
    for sampler, steps, eta in settings:
        objective = "eps" if sampler in ("ddim", "ddpm") else "rflow"
        if objective not in models:
            models[objective] = load_neogen_models(name, fold, device, configuration=configuration, variant=GenRunId(
                "synthetic", autoencoder=autoencoder, objective=objective, conditioning=conditioning))
        m = models[objective]
        imgs, labs = [], []
        t0 = time.perf_counter()
        for k, c in enumerate(sources):
            lab = real_by_id[c][1]
            imgs.append(generate_patch(m, lab, k, steps, class_label=labels[c], eta=eta))
            labs.append(lab)
        sec = (time.perf_counter() - t0) / n
        cand = PatchSet.from_patches(f"{sampler}{steps}", np.stack(imgs), np.stack(labs),
                                     [labels[c] for c in sources], [f"{sampler}{steps}_{k}" for k in range(n)])
        rep = quality_report(ref, cand, settings_q["copy_quantile"], settings_q["n_subsets"],
                             settings_q["subset_fraction"])
        row = {"sampler": sampler, "calls": int(steps), "eta": eta, "n": n, "s_per_patch": sec, **suite_row(rep),
               "checkpoint": m.checkpoint}
        row["gate_passed"] = gate_ok(row, settings_q)
        if pca_fid:
            f = fid_per_view_with_ci(real_img, real_roi, np.stack(imgs)[:, 0], np.stack(labs)[:, 0] > 0, tf,
                                     lambda: make_feature_extractor(fid_network, fid_weights, device=device), n_boot)
            row.update({f"fid_{v}": f[v] for v in (*VIEWS, "average")}, ci_fid_average=f["ci"]["average"],
                       fid_network=fid_network)
        rows.append(row)
        print(format_row(row), flush=True)
    verdict = verdicts(rows, settings_q)
    out = res / f"bench_gen_steps_fold_{fold}.json"
    out.write_text(json.dumps({"rows": rows, "verdicts": verdict, "autoencoder": autoencoder,
                               "conditioning": conditioning, "configuration": configuration, "n": n,
                               "gen_quality": settings_q, "n_boot": n_boot}, indent=1), encoding="utf-8")
    return rows, verdict, out


def _ci(m: dict, d: int = 2) -> str:
    lo, hi = m["ci"] if m.get("ci") else (float("nan"), float("nan"))
    v = m.get("auc", m.get("value"))
    return "n/a" if v is None else f"{v:.{d}f} [{lo:.{d}f}, {hi:.{d}f}]"


def format_row(r: dict) -> str:
    c = r["c2st"]
    return (f"| {r['sampler']} | {r['calls']} | {r['s_per_patch']:.2f} | {_ci(c['0']) if '0' in c else 'n/a'} | "
            f"{_ci(c['1']) if '1' in c else 'n/a'} | {_ci(r['c2st_pooled'])} | {_ci(r['frd'], 1)} | "
            f"{_ci(r['kid'], 2)} | {r['precision']:.2f} / {r['recall']:.2f} | {r['copy_rate']:.2f} | "
            f"{'pass' if r['gate_passed'] else 'fail'} |"
            + (f" {r['fid_average']:.1f} |" if "fid_average" in r else ""))


HEADER = ("| sampler | calls | s / patch | C2ST class 0 | C2ST class 1 | C2ST pooled | FRD [CI] | KID [CI] | "
          "precision / recall | copy rate | gate |")


def _not_worse(s: dict, r: dict) -> bool:
    return bool(s["c2st_pooled"]["auc"] <= r["c2st_pooled"]["ci"][1] and s["frd"]["value"] <= r["frd"]["ci"][1])


def _as_good(s: dict, r: dict) -> bool:
    return bool(s["c2st_pooled"]["auc"] <= r["c2st_pooled"]["auc"] and s["frd"]["value"] <= r["frd"]["value"])


def verdicts(rows: list[dict], settings_q: dict | None = None) -> dict:
    """Fewest rectified-flow calls at equal quality (C2ST pooled AUC and FRD, see the module docstring) vs DDIM-50
    and DDPM-1000."""
    def pick(sampler, calls):
        return next((r for r in rows if r["sampler"] == sampler and r["calls"] == calls), None)

    rf = sorted((r for r in rows if r["sampler"] == "rflow"), key=lambda r: r["calls"])
    out = {"any_setting_passes_gate": any(r.get("gate_passed") for r in rows)}
    for key, ref, ref_calls, target in (("vs_ddim50", pick("ddim", 50), 50, 5), ("vs_ddpm1000", pick("ddpm", 1000),
                                                                                 1000, 30)):
        if ref is None:
            continue
        res = {"reference_c2st_pooled": ref["c2st_pooled"], "reference_frd": ref["frd"],
               # every patch recognised (AUC CI at 1): C2ST cannot rank the settings, FRD decides alone
               "c2st_saturated": bool(ref["c2st_pooled"]["ci"] and ref["c2st_pooled"]["ci"][0] >= SATURATED
                                      and all(r["c2st_pooled"]["ci"] and r["c2st_pooled"]["ci"][0] >= SATURATED
                                              for r in rf))}
        for crit, fn in (("not_worse_within_ci", _not_worse), ("as_good_point_estimates", _as_good)):
            hit = next((r for r in rf if fn(r, ref)), None)
            res[crit] = {"rflow_calls": hit["calls"] if hit else None,
                         "call_ratio": ref_calls / hit["calls"] if hit else None,
                         f"target_{target}x_met": bool(hit and ref_calls / hit["calls"] >= target)}
        out[key] = res
    return out


def markdown(rows: list[dict], verdict: dict, title: str = "") -> str:
    pca = any("fid_average" in r for r in rows)
    lines = ([f"## {title}", ""] if title else []) + [HEADER + (" PCA-FID avg (legacy) |" if pca else ""),
                                                        "|" + "---|" * (HEADER.count("|") - 1 + pca)]
    lines += [format_row(r) for r in rows]
    lines += ["", "Verdicts (equal quality = pooled C2ST AUC and FRD; see bench_gen_steps.py):", "",
              "```", json.dumps(verdict, indent=1), "```", ""]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-d", "--dataset", required=True)
    p.add_argument("-f", "--fold", type=int, default=0)
    p.add_argument("--ddim", type=int, nargs="*", default=[10, 50], help="DDIM step counts")
    p.add_argument("--rflow", type=int, nargs="*", default=[1, 5, 20], help="rectified-flow step counts")
    p.add_argument("--ddpm", action="store_true", help="also DDPM-1000 (1000 calls per patch)")
    p.add_argument("--n", type=int, default=16, help="patches per setting (half of each PNI class)")
    p.add_argument("--autoencoder", default="vae", choices=["vae", "vqvae"])
    p.add_argument("--conditioning", default="mask_class", choices=["mask_class", "mask"])
    p.add_argument("--configuration", default=None, help="neonet_plans.json configuration (default: the device's)")
    p.add_argument("-device", "--device", default="cpu")
    p.add_argument("--pca-fid", action="store_true", help="also the legacy per-view PCA-FID")
    p.add_argument("--fid-network", default="pca")
    p.add_argument("--fid-weights", default=None)
    p.add_argument("--n-boot", type=int, default=200)
    p.add_argument("--out", type=Path, default=None, help="also write the markdown table there")
    a = p.parse_args(argv)
    rows, verdict, out = run(a.dataset, a.fold, a.ddim, a.rflow, a.n, a.ddpm, a.device, a.autoencoder,
                             a.conditioning, a.configuration, a.pca_fid, a.fid_network, a.fid_weights, a.n_boot)
    md = markdown(rows, verdict)
    print("\n" + md)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(md, encoding="utf-8")
    print(f"written {out}")


if __name__ == "__main__":
    main()
