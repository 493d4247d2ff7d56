"""``neonet_find_best_configuration`` across phantom families: the honest AUC of the choice (not in the test suite).

    python benchmarks/find_best_families.py --root /tmp/neonet_rad \\
        --families report_tube report_halo tune_tube no_signal_report \\
        --archs radiomics pattennet fusion --out docs/results/find_best_families/families.json

The families are ``benchmarks/radiomics_families.py``'s (60 cases, 48×48×24 phantom, 32×32×16 crops, 5 stratified
folds; thin 2-voxel tube or halo cue, 8 % label noise; seeds used for nothing else; ``tune_tube`` is the family on
which the radiomics baseline's settings were chosen, the ``report_*`` families were only reported). Per family:

1. the phantom is written and planned unless it is already under ``--root``;
2. a ``families`` configuration is added to its plans: ``cpu_small`` with the VAE at ``--vae-epochs`` and NeoCls at
   ``--cls-epochs`` (defaults 30 / 40: the values ``benchmarks/cue_width_sweep.py`` froze on its tuning family 21;
   nothing here is tuned on these families);
3. per fold, the fold's VAE (``VAETrainer``, training cases only) when a listed family needs one;
4. :func:`neonet_toolkit.run.find_best_configuration.find_best` (the command's own function): trains every missing
   candidate with the nested protocol, reuses the finished ones, and makes the nested choice.

Prints and writes one row per family: every candidate's pooled out-of-fold AUC [DeLong 95 % CI], the per-fold
choices, the selection procedure's honest pooled AUC and the cost of choosing. One thread per process; run
families in separate processes to use more cores (``NEONET_JOBS``-style: one thread each). Resumes on re-run.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from radiomics_families import FAMILIES, _env, ensure_family  # the families' one definition

CONF = "families"


def _add_configuration(ds: int, vae_epochs: int, cls_epochs: int) -> None:
    from neonet_toolkit.utilities.identifiers import dataset_folders
    from neonet_toolkit.utilities.io import load_json, save_json

    _, pp, _ = dataset_folders(ds)
    plans = load_json(pp / "neonet_plans.json")
    want = {"inherits_from": "cpu_small", "vae": {"epochs": vae_epochs, "val_every": vae_epochs},
            "cls": {"epochs": cls_epochs}}
    have = plans["configurations"].get(CONF)
    if have is not None and have != want:
        raise ValueError(f"{pp} already has a '{CONF}' configuration {have} != {want}: use another --root.")
    if have is None:
        plans["configurations"][CONF] = want
        save_json(plans, pp / "neonet_plans.json")


def run_family(root: Path, fam: str, archs: list[str], vae_epochs: int, cls_epochs: int, n_cases: int) -> dict:
    from neonet_toolkit.networks.classifiers import canonical_arch, needs_vae
    from neonet_toolkit.run.find_best_configuration import find_best
    from neonet_toolkit.training.vae import VAETrainer
    from neonet_toolkit.utilities.identifiers import fold_is_finished

    t0 = time.perf_counter()
    ds = ensure_family(root, fam, n_cases)
    _add_configuration(ds, vae_epochs, cls_epochs)
    seconds = {"data": round(time.perf_counter() - t0, 1)}
    deep = [canonical_arch(a) for a in archs if a.lower() not in ("radiomics", "fusion")]
    if any(needs_vae(a) for a in deep):
        t = time.perf_counter()
        for fold in range(5):
            vae = VAETrainer(ds, fold, configuration=CONF, device="cpu", continue_training=True)
            if not fold_is_finished(vae.output_folder):
                vae.run()
        seconds["vae"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    result = find_best(ds, archs, ratios=["0"], device="cpu", configuration=CONF)
    seconds["find_best"] = round(time.perf_counter() - t, 1)
    return {"family": fam, **FAMILIES[fam], "archs": archs, "vae_epochs": vae_epochs, "cls_epochs": cls_epochs,
            "seconds": seconds, "result": result}


def row_markdown(r: dict) -> str:
    res = r["result"]
    best = res["best_candidate_pooled_auc"]
    proc = res["selection_procedure"]
    choices = ", ".join(f["chosen"] for f in res["per_fold"])
    return (f"| {r['family']} | {best['candidate']} {best['pooled_auc']:.3f} | {choices} | "
            f"**{proc['pooled_auc']:.3f}** [{proc['ci'][0]:.3f}, {proc['ci'][1]:.3f}] | {res['cost_of_choosing']:+.3f} | "
            f"{res['chosen']} | {res['predict_default']} |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", required=True, type=Path)
    p.add_argument("--families", nargs="+", default=["report_tube", "report_halo"], choices=list(FAMILIES))
    # pattennet_fine / resnet10 are accepted but cost 2-3 h per family on 2 shared cores with the nested protocol
    # (measured: 5-9 min per inner-fold model of pattennet_fine under load; 50 s per ResNet-10 epoch)
    p.add_argument("--archs", nargs="+", default=["radiomics", "pattennet", "fusion"])
    p.add_argument("--vae-epochs", type=int, default=30)
    p.add_argument("--cls-epochs", type=int, default=40)
    p.add_argument("--n-cases", type=int, default=60)
    p.add_argument("--out", type=Path, default=None, help="JSON of the rows (one file per invocation)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    root = a.root.resolve()
    _env(root)
    import torch

    torch.set_num_threads(1)
    rows = []
    for fam in a.families:
        rows.append(run_family(root, fam, a.archs, a.vae_epochs, a.cls_epochs, a.n_cases))
        print(row_markdown(rows[-1]), f"({rows[-1]['seconds']} s)", flush=True)
        if a.out:
            a.out.parent.mkdir(parents=True, exist_ok=True)
            a.out.write_text(json.dumps(rows, indent=1), encoding="utf-8")
    print("| family | best candidate (its own pooled AUC) | chosen per outer fold | honest AUC of the choice | "
          "cost of choosing | deployment choice | neonet_predict default |\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(row_markdown(r))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
