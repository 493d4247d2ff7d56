"""Local launcher: two folds side by side (two job slots, the thread rule splitting the cores) against one fold alone.

    python benchmarks/bench_launcher_concurrency.py [--epochs 20] [--out docs/results/cluster/concurrency.json]

On a fresh tiny phantom (the test suite's size), each fold's graph is VAE → PattenNet (real patches, nested
protocol). Measured in the same run, each on fresh result folders:

* one fold alone, one slot, run twice: first as a warm-up (imports, file caches; reported), then as the baseline
  (the job gets every core);
* two folds, two slots (``NEONET_JOBS=2``: each job gets cores // 2 threads), between the two;
* two folds, one slot (one after the other, for reference).

Prints the wall times and the ratio two-folds-side-by-side / one-fold-alone (the issue's target: under 1.3).
Run it alone on the machine: anything else on the cores makes the figures meaningless.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ENV_KEYS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "neonet_results")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="neonet_conc_"))
    for k in ENV_KEYS:
        (root / k).mkdir()
        os.environ[k] = str(root / k)
    os.environ.pop("NEONET_JOBS", None)
    os.environ.pop("OMP_NUM_THREADS", None)
    from neonet_toolkit.demo.phantom import make_phantom_dataset
    from neonet_toolkit.scheduling.graph import build_graph
    from neonet_toolkit.scheduling.launchers import run_local
    from neonet_toolkit.training.planning import plan_and_preprocess
    from neonet_toolkit.utilities.devices import available_cores

    make_phantom_dataset(root / "nnUNet_raw", 501, "NeoNetPhantom", n_train=20, n_test=1, shape_xyz=(48, 48, 24),
                         spacing=(1.5, 1.5, 3.0), shape_jitter=2, seed=0, neonet_options={"crop_size": [32, 32, 16]})
    plan_and_preprocess(501, num_processes=1, resource_estimates=False)

    def timed(folds, slots):
        for k in ("nnUNet_results", "neonet_results"):
            shutil.rmtree(root / k)
            (root / k).mkdir()
        g = build_graph(501, ["pattennet"], [0.0], folds=folds, seg=False, evaluate=False, device="cpu",
                        configuration="cpu_small", epochs=args.epochs)
        t0 = time.perf_counter()
        res = run_local(g, root / "neonet_results" / "run", slots=slots, progress=False)
        wall = time.perf_counter() - t0
        if res["failed"] or res["blocked"]:
            raise SystemExit(f"jobs failed: {res}")
        return wall, len(g.jobs)

    warm, n1 = timed([0], 1)       # first run: imports, file caches (reported, not the baseline)
    two_side, n2 = timed([0, 1], 2)
    one, _ = timed([0], 1)         # the baseline, warm
    two_seq, _ = timed([0, 1], 1)
    fig = {"cores": available_cores(), "epochs": args.epochs, "jobs_per_fold": n1,
           "one_fold_alone_first_run_s": round(warm, 1), "one_fold_alone_s": round(one, 1), "two_folds_two_slots_s": round(two_side, 1),
           "two_folds_one_slot_s": round(two_seq, 1), "ratio_side_by_side_vs_alone": round(two_side / one, 3),
           "ratio_sequential_vs_alone": round(two_seq / one, 3)}
    print(json.dumps(fig, indent=1))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(fig, indent=1) + "\n")
    shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
