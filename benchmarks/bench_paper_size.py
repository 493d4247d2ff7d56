"""gpu_full at the paper's size: one optimizer step of every stage, each in its own process (peak RSS).

    python benchmarks/bench_paper_size.py [--device cpu|cuda] [--stages vae ldm ...] [--seg-batch 1]
        [--steps N] [--threads N] [--objective eps|rflow] [--json out.json]

Builds every stage's ``gpu_full`` network for the paper's 96×96×48 crop (SwinUNETR fs48 on a
64×160×160 patch), runs one AdamW step with the paper's batch size and checks shapes, latent
divisibility, a finite loss > 0 (the LDM and ControlNet against their real objective: noisy latents from the
scheduler, ε or velocity target), gradients on every trainable tensor (non-zero on every one of them from
``--steps 3`` on) and a checkpoint round trip (:mod:`neonet_toolkit.training.paper_size`). Prints seconds per step and peak memory (RSS on CPU;
``torch.cuda.max_memory_allocated`` on CUDA, with AMP). CPU activation memory scales like GPU memory, so
the RSS column is also a first check of the GPU estimate. Beside each measurement: the planner's
estimate for the same network (``neonet_toolkit.training.resources.estimate_stage``, written into
``neonet_plans.json`` by ``neonet_plan_and_preprocess``) and the ratio measured / estimated. On CUDA the
stages run in one process (peak memory is reset per stage), on CPU each in its own (peak RSS).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from neonet_toolkit.training.paper_size import STAGES

CODE = ("import json, sys, torch; torch.set_num_threads(int(sys.argv[3])); "
        "from neonet_toolkit.training.paper_size import step_stage; "
        "print('RESULT ' + json.dumps(step_stage(sys.argv[1], sys.argv[2], batch=int(sys.argv[4]) or None, "
        "steps=int(sys.argv[5]), objective=sys.argv[6] or None)))")


def run_stage(stage: str, device: str, threads: int, batch: int = 0, steps: int = 1, timeout: int = 3600,
              objective: str | None = None) -> dict:
    if device.startswith("cuda"):
        import torch

        from neonet_toolkit.training.paper_size import step_stage
        try:
            r = step_stage(stage, device, batch=batch or None, steps=steps, objective=objective)
        except Exception as e:  # noqa: BLE001 - a benchmark row, not a crash of the whole table
            return {"stage": stage, "error": f"{type(e).__name__}: {e}"}
        finally:
            torch.cuda.empty_cache()
        return r
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    p = subprocess.run([sys.executable, "-c", CODE, stage, device, str(threads), str(batch), str(steps), objective or ""],
                       env=env,
                       capture_output=True, text=True, timeout=timeout, check=False)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    if p.returncode != 0 or not lines:
        return {"stage": stage, "error": (p.stderr or p.stdout)[-1500:]}
    return json.loads(lines[-1][len("RESULT "):])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    p.add_argument("--seg-batch", type=int, default=0, help="NeoSeg batch (default: the paper's, 2)")
    p.add_argument("--steps", type=int, default=1, help="optimizer steps per stage (time: median after the first)")
    p.add_argument("--threads", type=int, default=max(1, len(os.sched_getaffinity(0))))
    p.add_argument("--objective", choices=("eps", "rflow"), default=None,
                   help="LDM / ControlNet objective (default: the gpu_full preset's ldm.objective, eps)")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    if a.device.startswith("cuda"):
        import torch
        torch.backends.cudnn.benchmark = True
    rows = [run_stage(s, a.device, a.threads, a.seg_batch if s == "seg" else 0, a.steps, objective=a.objective)
            for s in a.stages]
    mem = "peak_gpu_mb" if a.device.startswith("cuda") else "peak_rss_mb"
    print(f"| stage | batch | input | trainable params | s / step ({a.device}, {a.threads} thread(s)) | "
          f"estimated s / step | {mem}{'' if mem == 'peak_gpu_mb' else ' above imports'} | estimated MB | measured / estimated memory | "
          f"last loss |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['stage']} | FAILED | | | | | | | {r['error'].splitlines()[-1] if r['error'] else ''} | |")
            continue
        shape = r.get("patch_zyx") or r.get("latent_shape") or r["crop_zyx"]
        est_mb = round(r["estimate"]["peak_gb"] * 1024, 1)
        used = r[mem] if mem == "peak_gpu_mb" else round(r[mem] - r["baseline_rss_mb"], 1)  # RSS above imports
        print(f"| {r['stage']} | {r['batch']} | {shape} | {r['trainable_params']:,} | {r['step_s']} | "
              f"{r['estimate']['seconds_per_step']} | {used} | {est_mb} | {used / max(est_mb, 1e-6):.2f} | {r['loss']:.4g} |")
    if a.json:
        with open(a.json, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=1)
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
