"""CPU thread hygiene: one NeoNet workload idle, then two copies of it side by side.

    python benchmarks/bench_load.py [--root /tmp/neonet_load] [--vae-epochs 20] [--seg-iterations 10]

The workload is a slice of the demo on a planned phantom (planning is done once, untimed): the VAE of
fold 0 (``neonet_train 501 vae 0``), then one NeoSeg epoch through nnU-Net's trainer (``neonet_train
501 seg 0``, augmentation workers included). Each copy runs in its own folders. Three timings:

* ``idle``: one copy, the thread rule's defaults (threads = cores);
* ``2 jobs, rule``: two copies at once with ``NEONET_JOBS=2`` (threads = cores // 2, nnU-Net's
  augmentation workers = threads - 1), as the README says to run concurrent jobs;
* ``2 jobs, no rule``: two copies at once with what each process took before the rule (all cores for
  torch, ``nnUNet_n_proc_DA=12``, nnU-Net's default).

Prints the seconds and the slowdown of each loaded mode over idle (ideal: 2.0 for two jobs on the same
cores). Run it on an otherwise idle machine: a timing taken beside other work means nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

KEYS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "neonet_results")


def _env(root: Path, extra: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "NEONET_JOBS",
                                                           "nnUNet_n_proc_DA")}
    env.update({k: str(root / k) for k in KEYS})
    env.update(extra)
    return env


def _cli(name: str) -> list[str]:
    return [sys.executable, "-m", f"neonet_toolkit.run.{name}"]


def setup(template: Path, n_train: int) -> None:
    if (template / "nnUNet_preprocessed").is_dir():
        return
    env = _env(template, {})
    for k in KEYS:
        (template / k).mkdir(parents=True, exist_ok=True)
    subprocess.run(_cli("make_demo_dataset") + ["-d", "501", "--n_train", str(n_train), "--n_test", "0"], env=env,
                   check=True, capture_output=True)
    subprocess.run(_cli("plan_and_preprocess") + ["-d", "501", "-np", "2", "--no_resource_estimates"], env=env,
                   check=True, capture_output=True)


def workload(template: Path, root: Path, extra: dict, vae_epochs: int, seg_iterations: int) -> subprocess.Popen:
    if root.exists():
        shutil.rmtree(root)
    shutil.copytree(template, root)
    env = _env(root, extra)
    script = (f"{' '.join(_cli('train'))} 501 vae 0 -device cpu --epochs {vae_epochs} && "
              f"{' '.join(_cli('train'))} 501 seg 0 -device cpu --epochs 1 --iterations {seg_iterations} "
              f"--val-iterations 2")
    return subprocess.Popen(["bash", "-c", script], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)


def timed(template: Path, work: Path, copies: int, extra: dict, a) -> float:
    t0 = time.perf_counter()
    procs = [workload(template, work / f"copy{i}", extra, a.vae_epochs, a.seg_iterations) for i in range(copies)]
    for p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            raise RuntimeError(f"workload failed:\n{err[-3000:]}")
    return time.perf_counter() - t0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default="/tmp/neonet_load")
    p.add_argument("--n-train", type=int, default=20)
    p.add_argument("--vae-epochs", type=int, default=20)
    p.add_argument("--seg-iterations", type=int, default=10)
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    root = Path(a.root)
    template = root / "template"
    setup(template, a.n_train)
    cores = len(os.sched_getaffinity(0))
    modes = {"idle": (1, {}),
             "2 jobs, rule": (2, {"NEONET_JOBS": "2"}),
             "2 jobs, no rule": (2, {"OMP_NUM_THREADS": str(cores), "nnUNet_n_proc_DA": "12"})}
    res = {}
    for name, (copies, extra) in modes.items():
        res[name] = timed(template, root / "work", copies, extra, a)
        print(f"{name:16s}: {res[name]:7.1f} s  (slowdown over idle {res[name] / res['idle']:.2f}x)", flush=True)
    print(f"cores: {cores}; ideal slowdown for 2 jobs on the same cores: 2.00x")
    if a.json:
        Path(a.json).write_text(json.dumps({"cores": cores, "seconds": res, "args": vars(a)}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
