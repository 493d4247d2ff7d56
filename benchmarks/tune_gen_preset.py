"""Tune the CPU NeoGen preset against the generation-quality suite (issue #27 part 2), on a tuning seed.

    python benchmarks/tune_gen_preset.py --root /tmp/neonet_tune --seed 11 --jobs 2 \
        -c base '{}' -c vae_big '{"vae": {"channels": [16, 32, 32], "epochs": 120}}'
    python benchmarks/tune_gen_preset.py --root /tmp/neonet_tune --table-only --docs docs/results/gen_tuning
    # freeze the best candidate, then report it ONCE on the reporting seed:
    python benchmarks/tune_gen_preset.py --root /tmp/neonet_frozen --seed 2 -c frozen '{...}' \
        --report-name frozen_seed2 --docs docs/results/gen_tuning

What it does, with the toolkit's own APIs and nothing stood in:

1. a phantom (``make_phantom_dataset``, 48x48x24 voxels, TLCR crop 32x32x16, ``--n-cases``, ``--seed``; default
   seed 11 is a *tuning* seed that is never reported) and ``plan_and_preprocess`` (5 stratified folds);
2. every candidate is a named configuration ``tune_<name>`` = ``{"inherits_from": "cpu_small", **overrides}``
   added to the dataset's ``neonet_plans.json`` (the documented way to add a configuration; the presets in
   ``experiment_planning/plans.py`` are not touched). ``"ldm": {"objective": "rflow"}`` also sets the sampler to
   rflow. Each candidate trains in its own ``neonet_results`` folder under ``--root/candidates/<name>`` (the
   result layout does not name the configuration), one thread per process, ``--jobs`` processes at a time;
3. per candidate, on fold ``--fold``'s training cases only: the VAE, LDM and ControlNet trainers, then
   ``generate_synthetic_set(ratio=1.0, n_majority=-1)`` (the minority patches that balance the fold 1:1 plus as
   many majority-class patches), timed per stage;
4. the suite (``evaluation.gen.real_reference`` + ``quality_metrics`` = ``gen_quality.quality_report``): held-out
   C2ST AUC per PNI class and pooled (DeLong CI), FRD and KID (subset CIs), precision / recall, copy rate; and
   the diagnostic row "VAE reconstruction as a candidate": the candidate's VAE applied to the fold's real
   *validation* patches (posterior mean, decoded, masked with the patch's ROI as a synthetic patch is), scored as
   if it were a synthetic set. If reconstructions already fail C2ST, the autoencoder is the bottleneck;
5. every candidate's result is kept in ``--root/results/<name>.json``; the table of all results under
   ``--root`` is printed and, with ``--docs DIR``, written to ``DIR/<report-name>.md`` and ``.json``.

Gate (plans' ``gen_quality``): C2ST AUC <= 0.75 in every class and copy rate <= 5 %. Seconds are wall-clock on a
shared 2-core machine, one thread per process (two candidates side by side).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

from neonet_toolkit.demo.phantom import make_phantom_dataset
from neonet_toolkit.evaluation.gen import quality_metrics, real_reference
from neonet_toolkit.evaluation.gen_quality import (
    PatchSet,
    quality_report,
    reference_report,
)
from neonet_toolkit.experiment_planning.plans import NEONET_PLANS_FILE, NeoNetPlans
from neonet_toolkit.generation.generate import generate_synthetic_set
from neonet_toolkit.networks.generative import (
    from_vae_output,
    load_fold_autoencoder,
    to_vae_input,
)
from neonet_toolkit.training.controlnet import ControlNetTrainer
from neonet_toolkit.training.ldm import LDMTrainer
from neonet_toolkit.training.planning import plan_and_preprocess
from neonet_toolkit.training.vae import VAETrainer
from neonet_toolkit.utilities.identifiers import ResultLayout

logger = logging.getLogger(__name__)
KEYS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "neonet_results")
STAGES = ("vae", "ldm", "controlnet")


def _env(root: Path, results: Path | None = None) -> None:
    """Point the four path variables under ``root`` (``neonet_results`` at ``results`` if given)."""
    for k in KEYS:
        folder = results if (k == "neonet_results" and results is not None) else root / k
        folder.mkdir(parents=True, exist_ok=True)
        os.environ[k] = str(folder)


def configuration(overrides: dict) -> dict:
    """The named configuration of a candidate: cpu_small plus the overrides (rflow objective -> rflow sampler)."""
    cfg = {"inherits_from": "cpu_small", **json.loads(json.dumps(overrides))}
    if cfg.get("ldm", {}).get("objective") == "rflow":
        cfg.setdefault("sampling", {}).setdefault("sampler", "rflow")
    return cfg


def reconstruction_candidate(layout, fold: int, ref):
    """The fold's real validation patches through the fold's VAE (posterior mean -> decoder), ROI-masked like a
    synthetic patch: a candidate set with the validation patches' masks and classes."""
    ae = load_fold_autoencoder(layout, fold, "vae", "cpu")
    x = torch.from_numpy(ref.val.images[:, None].astype(np.float32))
    recs = []
    with torch.no_grad():
        for s in range(0, len(x), 4):
            mu, _ = ae.encode_posterior(to_vae_input(x[s:s + 4], ae.config))
            recs.append(from_vae_output(ae.decode(mu).float(), ae.config))
    rec = torch.cat(recs)[:, 0].numpy() * ref.val.rois
    images = np.stack([rec, rec * ref.val.tumours], 1)
    labels = np.stack([ref.val.rois, ref.val.tumours], 1).astype(np.uint8)
    return PatchSet.from_patches("vae_reconstruction", images, labels, ref.val.classes,
                            [f"rec_{i}" for i in ref.val.ids])


def summarise(report: dict) -> dict:
    """The table's numbers from one quality report."""
    c = report["c2st"]
    return {
        "c2st": {k: {"auc": v["auc"], "ci": v["ci"], "n_synthetic": v["n_synthetic"], "n_real": v["n_real"]}
                 for k, v in c["per_class"].items()},
        "c2st_pooled": {"auc": c["pooled"]["auc"], "ci": c["pooled"]["ci"]},
        "frd": report["frd"], "kid": report["kid"],
        "precision": report["prdc"].get("precision"), "recall": report["prdc"].get("recall"),
        "density": report["prdc"].get("density"), "coverage": report["prdc"].get("coverage"),
        "copy_rate": report["copy_rate"], "copy_ci": report["copy"]["ci"], "n_candidate": report["n_candidate"],
    }


def gate(summary: dict, settings: dict) -> bool:
    aucs = [v["auc"] for v in summary["c2st"].values()]
    return bool(aucs and all(a is not None and a <= settings["c2st_auc_max"] for a in aucs)
                and summary["copy_rate"] <= settings["copy_rate_max"])


def run_candidate(args) -> dict:
    """Train the chain of one candidate, generate its balanced set and score it (one process, one thread)."""
    root, dataset_id, fold, name, overrides, steps, vae_only = args
    root = Path(root)
    results = root / "candidates" / name / "neonet_results"
    _env(root, results)
    torch.set_num_threads(1)
    log = root / "candidates" / name / "run.log"
    handler = logging.FileHandler(log)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s"))
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.INFO)

    conf = f"tune_{name}"
    layout = ResultLayout.for_dataset(dataset_id)
    plans = NeoNetPlans(layout.preprocessed / NEONET_PLANS_FILE)
    objective = str(plans.stage("ldm", conf, "cpu")["objective"])
    settings = dict(plans.stage("gen_quality", conf, "cpu"))
    times = {}
    for stage, cls in list(zip(STAGES, (VAETrainer, LDMTrainer, ControlNetTrainer)))[:1 if vae_only else 3]:
        t = time.perf_counter()
        kw = {} if stage == "vae" else {"objective": objective}
        tr = cls(dataset_id, fold, configuration=conf, device="cpu", continue_training=True, **kw)
        if not (tr.output_folder / "checkpoint_final.pth").is_file():
            tr.run()
        times[stage] = round(time.perf_counter() - t, 1)
    set_dir = None
    if not vae_only:
        t = time.perf_counter()
        syn = generate_synthetic_set(dataset_id, fold, ratio=1.0, n_majority=-1, steps=steps, device="cpu",
                                     configuration=conf, objective=objective)
        times["generate"] = round(time.perf_counter() - t, 1)
        set_dir = syn.parent.name.split("__")[0]

    t = time.perf_counter()
    ref = real_reference(layout, fold, settings["bin_width"])
    out_folder = root / "candidates" / name / "quality"
    out_folder.mkdir(parents=True, exist_ok=True)
    rep = None if vae_only else quality_metrics(layout, fold, ref, settings, set_dir, out_folder)
    rec = quality_report(ref, reconstruction_candidate(layout, fold, ref), settings["copy_quantile"],
                         settings["n_subsets"], settings["subset_fraction"])
    times["evaluate"] = round(time.perf_counter() - t, 1)
    row = {"name": name, "configuration": configuration(overrides), "seed_root": str(root), "fold": fold,
           "set": set_dir, "objective": objective, "sampling": dict(plans.stage("sampling", conf, "cpu")),
           "steps": steps, "seconds": times,
           "seconds_train_generate": round(sum(times.get(k, 0.0) for k in (*STAGES, "generate")), 1),
           "synthetic": None if rep is None else summarise(rep), "vae_reconstruction": summarise(rec),
           "reference": {k: v for k, v in reference_report(ref, settings["n_subsets"], settings["subset_fraction"]
                                                            ).items() if k in ("frd", "kid", "prdc", "n_candidate")}}
    if rep is not None:
        row["synthetic"]["gate_passed"] = gate(row["synthetic"], settings)
    row["vae_reconstruction"]["gate_passed"] = gate(row["vae_reconstruction"], settings)
    row["finished"] = time.time()
    (root / "results").mkdir(exist_ok=True)
    (root / "results" / f"{name}.json").write_text(json.dumps(row, indent=1), encoding="utf-8")
    logging.getLogger().removeHandler(handler)
    return row


# ----------------------------------------------------------------------------- table
def _f(v, d=2) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.{d}f}"


def _auc(c: dict | None) -> str:
    if not c or c.get("auc") is None:
        return "n/a"
    lo, hi = c["ci"]
    return f"{c['auc']:.2f} [{lo:.2f}, {hi:.2f}]"


def _val(m: dict, d=1) -> str:
    ci = m.get("ci") or [None, None]
    return f"{_f(m.get('value'), d)} [{_f(ci[0], d)}, {_f(ci[1], d)}]"


HEADER = ("| candidate | set | C2ST class 0 | C2ST class 1 | C2ST pooled | FRD [CI] | KID [CI] | precision | recall "
          "| copy rate | gate | s train+gen (vae/ldm/cn/gen) |")


def table_rows(rows: list[dict]) -> list[str]:
    out = [HEADER, "|" + "---|" * (HEADER.count("|") - 1)]
    refs = [r["reference"] for r in rows if r.get("reference")]
    if refs:  # the same real sets for every candidate of a root: one row
        m = refs[0]
        out.append(f"| real validation (reference) | {m['n_candidate']} real val. patches | - | - | - | {_val(m['frd'])} | "
                   f"{_val(m['kid'], 2)} | {_f(m['prdc'].get('precision'))} | {_f(m['prdc'].get('recall'))} | - | - | - |")
    for r in rows:
        s = r["seconds"]
        for kind, label in (("synthetic", r["set"]), ("vae_reconstruction", "VAE recon. of val")):
            m = r[kind]
            if m is None:
                continue
            secs = (f"{r['seconds_train_generate']:.0f} ({s['vae']:.0f}/{s['ldm']:.0f}/{s['controlnet']:.0f}/"
                    f"{s['generate']:.0f})" if kind == "synthetic" else f"(vae {s['vae']:.0f})")
            out.append(f"| {r['name']} | {label} | {_auc(m['c2st'].get('0'))} | {_auc(m['c2st'].get('1'))} | "
                       f"{_auc(m['c2st_pooled'])} | {_val(m['frd'])} | {_val(m['kid'], 2)} | {_f(m['precision'])} | "
                       f"{_f(m['recall'])} | {m['copy_rate']:.2f} (n={m['n_candidate']}) | "
                       f"{'pass' if m['gate_passed'] else 'fail'} | {secs} |")
    return out


def load_rows(root: Path, names=None) -> list[dict]:
    rows = [json.loads(p.read_text(encoding="utf-8")) for p in sorted((root / "results").glob("*.json"))]
    if names:
        rows = [r for r in rows if r["name"] in names]
    return sorted(rows, key=lambda r: r.get("finished", 0))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", required=True, type=Path)
    p.add_argument("-d", "--dataset-id", type=int, default=501)
    p.add_argument("--n-cases", type=int, default=48)
    p.add_argument("--seed", type=int, default=11, help="phantom seed (default 11: a tuning seed, never reported)")
    p.add_argument("-f", "--fold", type=int, default=0)
    p.add_argument("-c", "--candidate", nargs=2, action="append", default=[], metavar=("NAME", "JSON"),
                   help="a candidate: name and its overrides of cpu_small as JSON (repeatable)")
    p.add_argument("--candidates-file", type=Path, default=None, help="JSON {name: overrides}")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the configuration's)")
    p.add_argument("--vae-only", action="store_true",
                   help="train only the VAE and report the reconstruction diagnostic row (the autoencoder's ceiling)")
    p.add_argument("--jobs", type=int, default=2, help="candidates trained at a time (one thread each)")
    p.add_argument("--table-only", action="store_true", help="only print (and --docs write) the table of --root")
    p.add_argument("--docs", type=Path, default=None, help="also write <report-name>.md/.json there")
    p.add_argument("--report-name", default="tuning")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    root = a.root.resolve()
    cands = dict(a.candidate and [(n, json.loads(j)) for n, j in a.candidate] or [])
    if a.candidates_file:
        cands.update(json.loads(a.candidates_file.read_text(encoding="utf-8")))

    if not a.table_only:
        _env(root)
        if not any((root / "nnUNet_raw").glob(f"Dataset{a.dataset_id:03d}_*")):
            make_phantom_dataset(root / "nnUNet_raw", a.dataset_id, "NeoNetPhantom", n_train=a.n_cases, n_test=0,
                                 shape_xyz=(48, 48, 24), shape_jitter=2, seed=a.seed,
                                 neonet_options={"crop_size": [32, 32, 16]})
            plan_and_preprocess(a.dataset_id, num_processes=min(2, a.jobs), n_folds=5)
        plans_file = ResultLayout.for_dataset(a.dataset_id).preprocessed / NEONET_PLANS_FILE
        plans = json.loads(plans_file.read_text(encoding="utf-8"))
        for name, ov in cands.items():
            plans["configurations"][f"tune_{name}"] = configuration(ov)
        plans_file.write_text(json.dumps(plans, indent=1), encoding="utf-8")
        todo = [n for n in cands if not (root / "results" / f"{n}.json").is_file()]
        with ProcessPoolExecutor(max(1, min(a.jobs, len(todo) or 1))) as ex:
            futs = {n: ex.submit(run_candidate, (str(root), a.dataset_id, a.fold, n, cands[n], a.steps,
                                                    a.vae_only)) for n in todo}
            for n, fu in futs.items():
                try:
                    row = fu.result()
                    logger.info("candidate %s done: %s", n, json.dumps(row["seconds"]))
                except Exception:  # one failed candidate must not lose the others
                    logger.exception("candidate %s failed", n)

    rows = load_rows(root, list(cands) or None)
    lines = table_rows(rows)
    print("\n".join(lines))
    if a.docs:
        a.docs.mkdir(parents=True, exist_ok=True)
        (a.docs / f"{a.report_name}.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
        (a.docs / f"{a.report_name}.json").write_text(json.dumps(rows, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
