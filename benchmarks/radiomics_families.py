"""Radiomics baseline across phantom families: pooled out-of-fold AUC with DeLong CIs (not in the test suite).

    python benchmarks/radiomics_families.py --root /tmp/neonet_rad --families tune_tube report_tube report_halo \
        --out docs/results/radiomics_families/after.json

Each family is a phantom written with ``make_phantom_dataset`` and planned with ``plan_and_preprocess`` (5
stratified folds); the baseline is ``run_radiomics_baseline`` (the toolkit's, with the plans' settings), scored
on every fold's validation cases and pooled. Families (seeds never used for anything else):

* ``tune_tube`` (seed 71): thin tube cue of 2 voxels, 8 % label noise, 60 cases — the family on which the
  baseline's settings were chosen;
* ``report_tube`` (seed 81) and ``report_halo`` (seed 91, a 2-voxel shell): the same laws, reported only.
* ``no_signal`` (seed 101, used while choosing the no-signal guard) and ``no_signal_report`` (seed 111, reported
  only): cue strength 0 (no PNI cue at all): the CI must cover 0.5.

One thread; re-running reuses the planned datasets under ``--root``. Prints one row per family.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

KEYS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "neonet_results")
FAMILIES = {
    "tune_tube": {"dataset_id": 971, "seed": 71, "cue_kind": "tube", "cue_width": 2.0, "label_noise": 0.08},
    "report_tube": {"dataset_id": 981, "seed": 81, "cue_kind": "tube", "cue_width": 2.0, "label_noise": 0.08},
    "report_halo": {"dataset_id": 991, "seed": 91, "cue_kind": "halo", "cue_width": 2.0, "label_noise": 0.08},
    "no_signal": {"dataset_id": 961, "seed": 101, "cue_kind": "halo", "cue_width": None, "label_noise": 0.0,
                  "cue_strength": 0.0},
    "no_signal_report": {"dataset_id": 962, "seed": 111, "cue_kind": "halo", "cue_width": None, "label_noise": 0.0,
                         "cue_strength": 0.0},
}


def _env(root: Path) -> None:
    for k in KEYS:
        (root / k).mkdir(parents=True, exist_ok=True)
        os.environ[k] = str(root / k)


def ensure_family(root: Path, fam: str, n_cases: int = 60) -> int:
    """Write and plan (5 stratified folds) the family's phantom under ``root`` unless it is there; its dataset id."""
    from neonet_toolkit.demo.phantom import make_phantom_dataset
    from neonet_toolkit.training.planning import plan_and_preprocess

    spec = dict(FAMILIES[fam])
    ds = spec.pop("dataset_id")
    if not any((root / "nnUNet_raw").glob(f"Dataset{ds:03d}_*")):
        make_phantom_dataset(root / "nnUNet_raw", ds, f"Rad{fam.title().replace('_', '')}", n_train=n_cases,
                             n_test=0, shape_xyz=(48, 48, 24), shape_jitter=2,
                             neonet_options={"crop_size": [32, 32, 16]}, **spec)
    if not any((root / "nnUNet_preprocessed").glob(f"Dataset{ds:03d}_*")):
        plan_and_preprocess(ds, num_processes=1, n_folds=5)
    return ds


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", required=True, type=Path)
    p.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    p.add_argument("--n-cases", type=int, default=60)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--overwrite", action="store_true", help="recompute the baseline (features are cached)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    root = a.root.resolve()
    _env(root)
    import torch

    torch.set_num_threads(1)
    from neonet_toolkit.models.cls_results import OOF_FILE, read_predictions_csv
    from neonet_toolkit.training.radiomics import run_radiomics_baseline
    from neonet_toolkit.utilities import stats
    from neonet_toolkit.utilities.identifiers import ResultLayout

    rows = []
    for fam in a.families:
        t = time.perf_counter()
        ds = ensure_family(root, fam, a.n_cases)
        folder = run_radiomics_baseline(ds, overwrite=a.overwrite)
        layout = ResultLayout.for_dataset(ds)
        ys, ps = [], []
        for fold in range(5):
            for r in read_predictions_csv(folder / f"fold_{fold}" / OOF_FILE):
                ys.append(int(r["label"]))
                ps.append(float(r["probability"]))
        ci = stats.delong_ci(ys, ps)
        rows.append({"family": fam, "dataset": layout.dataset_name, **FAMILIES[fam], "n": len(ys),
                     "auc": ci["auc"], "ci": [ci["ci_low"], ci["ci_high"]], "seconds": round(time.perf_counter() - t, 1)})
        r = rows[-1]
        print(f"{fam:12s} n={r['n']} pooled OOF AUC {r['auc']:.3f} [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}] "
              f"({r['seconds']} s)", flush=True)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(rows, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
