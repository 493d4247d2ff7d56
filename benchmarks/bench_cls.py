"""NeoCls throughput: training and inference patches/s per architecture (CPU, and CUDA if present).

    python benchmarks/bench_cls.py --archs pattennet resnet50 densenet121 efficientnet_b0 swin \
        --crop 16 32 32 --batch 4 --steps 5 --device cpu [--json out.json]

``--crop`` is in array order (D H W); the paper's TLCR crop is 48 96 96. PattenNet uses a randomly
initialised VAE encoder of the given ``--vae-channels`` (throughput does not depend on its weights).
Training = forward + backward + AdamW step (AMP on CUDA); inference = forward under no_grad.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from neonet_toolkit.networks.classifiers import build_classifier
from neonet_toolkit.utilities.devices import autocast, get_device, make_grad_scaler


def bench(arch: str, crop, batch: int, steps: int, warmup: int, device: torch.device, vae_channels) -> dict:
    vae_cfg = {"channels": list(vae_channels), "latent_channels": 4, "norm_num_groups": 8}
    net = build_classifier(arch, {"swin_feature_size": 12 if device.type == "cpu" else 24}, vae_config=vae_cfg).to(device)
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, 1e-4)
    scaler = make_grad_scaler(device)
    x = torch.randn(batch, 2, *crop, device=device)
    y = torch.randint(0, 2, (batch,), device=device).float()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    net.train()
    for i in range(warmup + steps):
        if i == warmup:
            sync()
            t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with autocast(device):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(net(x).reshape(-1).float(), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    sync()
    train = batch * steps / (time.perf_counter() - t0)
    net.eval()
    with torch.no_grad():
        for i in range(warmup + steps):
            if i == warmup:
                sync()
                t0 = time.perf_counter()
            with autocast(device):
                net(x)
    sync()
    infer = batch * steps / (time.perf_counter() - t0)
    return {"arch": arch, "device": str(device), "crop": list(crop), "batch": batch,
            "trainable_params_M": sum(p.numel() for p in params) / 1e6,
            "train_patches_per_s": train, "infer_patches_per_s": infer}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--archs", nargs="+", default=["pattennet", "resnet50", "densenet121", "efficientnet_b0", "swin"])
    p.add_argument("--crop", nargs=3, type=int, default=[16, 32, 32])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (CPU, plus CUDA when available)")
    p.add_argument("--vae-channels", nargs="+", type=int, default=[8, 16, 16])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    devices = ([get_device("cpu")] + ([get_device("cuda")] if torch.cuda.is_available() else [])
               if a.device == "auto" else [get_device(a.device)])
    rows = []
    print(f"{'arch':18s} {'device':6s} {'params(M)':>9s} {'train p/s':>10s} {'infer p/s':>10s}")
    for dev in devices:
        for arch in a.archs:
            r = bench(arch, a.crop, a.batch, a.steps, a.warmup, dev, a.vae_channels)
            rows.append(r)
            print(f"{arch:18s} {dev.type:6s} {r['trainable_params_M']:9.2f} {r['train_patches_per_s']:10.1f} "
                  f"{r['infer_patches_per_s']:10.1f}", flush=True)
    if a.json:
        with open(a.json, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
