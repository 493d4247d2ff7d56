"""NeoSeg benchmark (not a test): SwinUNETR vs nnU-Net's default U-Net, on the same phantom cases.

Prints training iterations/s (nnU-Net data loading + augmentation + forward/backward/step, batch
from the plans) and prediction seconds per case (nnU-Net sliding window with mirroring, on the
preprocessed validation cases of fold 0) for each network, on CPU and, when available, on CUDA.

    python benchmarks/bench_seg.py [--iterations 10] [--configuration cpu_small] [--workdir DIR]

The phantom dataset is generated and planned in a temporary folder (or --workdir).
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path


def _setup(workdir: Path) -> str:
    for k, sub in (("nnUNet_raw", "raw"), ("nnUNet_preprocessed", "preprocessed"), ("nnUNet_results", "results"),
                   ("neonet_results", "neonet_results")):
        (workdir / sub).mkdir(parents=True, exist_ok=True)
        os.environ[k] = str(workdir / sub)
    os.environ.setdefault("nnUNet_n_proc_DA", "1")
    os.environ.setdefault("nnUNet_compile", "f")
    from neonet_toolkit.demo.phantom import make_phantom_dataset
    from neonet_toolkit.training.planning import plan_and_preprocess

    if not list((workdir / "raw").glob("Dataset502_*")):
        make_phantom_dataset(workdir / "raw", 502, "SegBench", n_train=10, n_test=0, shape_xyz=(64, 64, 32), positive_fraction=0.5,
                             neonet_options={"crop_size": [32, 32, 16]})
    plan_and_preprocess(502, num_processes=1, n_folds=2)
    return "Dataset502_SegBench"


def bench(trainer_cls, device, iterations: int, n_predict: int, configuration: str | None = None) -> dict:
    import numpy as np
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name  # noqa: F401

    pp = Path(os.environ["nnUNet_preprocessed"]) / "Dataset502_SegBench"
    plans = json.loads((pp / "NeoNetPlans.json").read_text(encoding="utf-8"))
    plans["continue_training"] = False
    dj = json.loads((pp / "dataset.json").read_text(encoding="utf-8"))
    from neonet_toolkit.training.seg.trainers import result_folder, write_run_configuration

    # the neonet_plans.json configuration, recorded beside the fold as neonet_train does (None: default by device)
    write_run_configuration(result_folder(502, trainer_cls.architecture), 0, configuration)
    tr = trainer_cls(plans, "3d_fullres", 0, dj, device)
    tr.on_train_start()
    tr.on_train_epoch_start()
    tr.train_step(next(tr.dataloader_train))  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(iterations):
        tr.train_step(next(tr.dataloader_train))
    if device.type == "cuda":
        torch.cuda.synchronize()
    it_s = iterations / (time.perf_counter() - t)
    tr.network.eval()
    tr.set_deep_supervision_enabled(False)
    pred = nnUNetPredictor(tile_step_size=0.5, use_mirroring=True, perform_everything_on_device=device.type == "cuda",
                           device=device, allow_tqdm=False)
    pred.manual_initialization(tr.network, tr.plans_manager, tr.configuration_manager, None, dj,
                               type(tr).__name__, tr.inference_allowed_mirroring_axes)
    _, val = tr.do_split()
    ds = tr.dataset_class(tr.preprocessed_dataset_folder, val[:n_predict])
    times = []
    for c in val[:n_predict]:
        data, _, _, _ = ds.load_case(c)
        x = torch.from_numpy(np.asarray(data[:]))
        t = time.perf_counter()
        with torch.no_grad():
            pred.predict_sliding_window_return_logits(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    tr.on_train_end()
    n_params = sum(p.numel() for p in tr.network.parameters())
    return {"it_per_s": it_s, "predict_s_per_case": float(np.mean(times)), "params": n_params,
            "patch": list(tr.configuration_manager.patch_size), "batch": tr.batch_size}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iterations", type=int, default=10)
    ap.add_argument("--predict-cases", type=int, default=2)
    ap.add_argument("--configuration", default=None, help="neonet_plans.json configuration (default by device)")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    import logging

    import torch

    logging.basicConfig(level=logging.WARNING)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="neoseg_bench_"))
    _setup(workdir)
    from neonet_toolkit.training.seg.trainers import NeoSegTrainer, NeoSegTrainer_nnUNet

    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    rows = []
    for dev in devices:
        for cls in (NeoSegTrainer, NeoSegTrainer_nnUNet):
            r = bench(cls, dev, args.iterations, args.predict_cases, args.configuration)
            rows.append((dev.type, cls.__name__, r))
    print(f"\nNeoSeg benchmark ({workdir}, torch threads {torch.get_num_threads()}, "
          f"{args.iterations} iterations, {args.predict_cases} cases)")
    print(f"{'device':6} {'trainer':22} {'patch':>14} {'batch':>5} {'params':>9} {'train it/s':>10} "
          f"{'predict s/case':>14}")
    for dev, name, r in rows:
        print(f"{dev:6} {name:22} {str(r['patch']):>14} {r['batch']:>5} {r['params']:>9} {r['it_per_s']:>10.3f} "
              f"{r['predict_s_per_case']:>14.2f}")


if __name__ == "__main__":
    main()
