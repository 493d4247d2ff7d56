"""neonet_plan_and_preprocess -d 501 [--verify_dataset_integrity] [-np N] [--clean] [--gpu_memory_target_gb 40]"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from neonet_toolkit.run.common import add_common, cli_main
from neonet_toolkit.training.planning import plan_and_preprocess
from neonet_toolkit.training.resources import DEFAULT_GPU_MEMORY_TARGET_GB


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Check a NeoNet dataset, make stratified folds, run nnU-Net fingerprint/planning/"
                    "preprocessing (NeoNetPlans, 3d_fullres) and extract TLCR patches.")
    p.add_argument("-d", "--dataset", nargs="+", required=True, help="dataset id(s) or name(s), e.g. 501")
    p.add_argument("--verify_dataset_integrity", action="store_true",
                   help="also run nnU-Net's own dataset verification (NeoNet's checks of geometry, NaN/Inf, "
                        "label values and case labels always run)")
    p.add_argument("-np", "--num_processes", type=int, default=2, help="worker processes (default 2)")
    p.add_argument("--clean", action="store_true",
                   help="recompute fingerprint, preprocessing, patches and neonet_plans.json (splits are kept)")
    p.add_argument("--overwrite_splits", action="store_true",
                   help="replace an existing splits_final.json (the old one is kept as .bak)")
    p.add_argument("--n_folds", type=int, default=5)
    p.add_argument("--seed", type=int, default=12345, help="seed of the stratified folds")
    p.add_argument("--repeats", type=int, default=None,
                   help="repeated stratified CV: R partitions of --n_folds folds (repeat r = folds r*K..r*K+K-1, "
                        "seed + r); existing folds are kept")
    p.add_argument("--crop_size", type=int, nargs=3, metavar=("X", "Y", "Z"),
                   help="TLCR crop in voxels, x y z (default: dataset.json neonet.crop_size or 96 96 48)")
    p.add_argument("--gpu_memory_target_gb", type=float, default=DEFAULT_GPU_MEMORY_TARGET_GB,
                   help="GPU memory each stage of the GPU configurations must fit (default %(default)s GB, an "
                        "A100 40 GB): batch sizes whose estimated peak exceeds it are lowered in "
                        "neonet_plans.json, with a warning. The estimates of every stage are written under "
                        "'resource_estimates'. nnU-Net's own -gpu_memory_target for its U-Net is not changed.")
    p.add_argument("--no_resource_estimates", action="store_true", help="skip the memory and time estimates")
    add_common(p)
    return p


def _run(args) -> None:
    for d in args.dataset:
        report = plan_and_preprocess(d, num_processes=args.num_processes,
                                     verify_dataset_integrity=args.verify_dataset_integrity, clean=args.clean,
                                     overwrite_splits=args.overwrite_splits, n_folds=args.n_folds, seed=args.seed,
                                     crop_size_xyz=args.crop_size, repeats=args.repeats,
                                     resource_estimates=not args.no_resource_estimates,
                                     gpu_memory_target_gb=args.gpu_memory_target_gb)
        est = report["resource_estimates"]
        if est is not None:
            print(f"Estimated peak GPU memory (GB, AMP; target {est['gpu_memory_target_gb']:g} GB) and seconds "
                  "per optimizer step (H200-calibrated) of each stage:")
            for conf, rows in est["configurations"].items():
                print(f"  {conf}: " + ", ".join(f"{k} {v['peak_gb']:g} GB {v['seconds_per_step']:.3g} s (batch "
                                                 f"{v['batch_size']})" if "error" not in v else f"{k} no estimate"
                                                 for k, v in rows.items()))
        print(Path(report["planning_summary"]).read_text(encoding="utf-8"))
        print(f"crop montage: {report['planning_montage']}")
        print("plain nnU-Net on this dataset:\n  " + "\n  ".join(report["nnunet_commands"]))
        print(json.dumps({k: v for k, v in report.items() if k not in ("nnunet_commands", "resource_estimates")},
                         indent=2))


def main(argv=None) -> int:
    return cli_main(build_parser, _run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
