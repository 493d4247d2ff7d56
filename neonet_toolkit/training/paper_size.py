"""The ``gpu_full`` networks at the paper's size: one optimizer step of every stage, on any device.

``step_stage(stage)`` builds the stage's network from the paper settings (:func:`gpu_full_settings`, the
``gpu_full`` preset of ``neonet_plans.json`` for the paper's 96×96×48 crop), runs one AdamW step on a
random batch of the paper's batch size (a real phantom-like mask for the ControlNet), and checks what
a GPU run would otherwise find out hours in: output shapes, latent divisibility by the diffusion
U-Net's levels, a finite loss, gradients on every trainable tensor, and a checkpoint that
round-trips through ``save_checkpoint`` / ``load_checkpoint(weights_only=True)``. It returns the
step's seconds and, when run in its own process (``benchmarks/bench_paper_size.py``), the peak RSS.

Stages: ``vae``, ``ldm``, ``controlnet``, ``pattennet``, ``resnet50``, ``densenet121``,
``efficientnet_b0``, ``swin`` (NeoCls baselines) and ``seg`` (SwinUNETR, feature size 48, on a
planned patch).
"""
from __future__ import annotations

import logging
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from neonet_toolkit.experiment_planning.plans import gpu_full_settings
from neonet_toolkit.training.resources import build_stage, estimate_stage, latent_shape
from neonet_toolkit.utilities.checkpoints import load_checkpoint, save_checkpoint
from neonet_toolkit.utilities.devices import autocast, get_device, make_grad_scaler
from neonet_toolkit.utilities.identifiers import FINAL_CHECKPOINT

logger = logging.getLogger(__name__)

PAPER_CROP_ZYX = (48, 96, 96)  # the paper's 96×96×48 (x, y, z) TLCR crop in array order
SEG_PATCH_ZYX = (64, 160, 160)  # a planned NeoSeg patch for a realistic volume (~160×144×64 voxels)
STAGES = ("vae", "ldm", "controlnet", "pattennet", "resnet50", "densenet121", "efficientnet_b0", "swin", "seg")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kB


def _round_trip(net: torch.nn.Module) -> None:
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / FINAL_CHECKPOINT
        save_checkpoint({"network": net.state_dict(), "epoch": 0}, f)
        sd = load_checkpoint(f)["network"]  # weights_only=True
    ref = net.state_dict()
    if set(sd) != set(ref) or any(not torch.equal(sd[k].cpu(), ref[k].cpu()) for k in ref):
        raise AssertionError("checkpoint did not round-trip")


def step_stage(stage: str, device: str = "cpu", seed: int = 0, batch: int | None = None, steps: int = 1) -> dict:
    """``steps`` optimizer steps of ``stage`` with the paper's network, batch and crop (AMP on CUDA), next to
    the planner's estimate for the same network (:func:`estimate_stage`). See the module docstring.

    ``batch`` overrides the paper's batch size (e.g. NeoSeg at batch 1 on a CPU with little memory); the
    result records the batch used. ``step_s`` is the median of the steps after the first when
    ``steps`` > 1 (the first pays cuDNN's algorithm search), else the single step."""
    if stage not in STAGES:
        raise ValueError(f"Unknown stage {stage!r}; choose from {STAGES}.")
    dev = get_device(device)
    torch.manual_seed(seed)
    cfg = gpu_full_settings()
    seg_plan = {"patch_size": list(SEG_PATCH_ZYX)}
    kind = "cls" if stage not in ("vae", "ldm", "controlnet", "seg") else stage
    arch = stage if kind == "cls" else None
    out: dict = {"stage": stage, "device": str(dev), "crop_zyx": list(PAPER_CROP_ZYX),
                 "baseline_rss_mb": round(_peak_rss_mb(), 1)}  # the interpreter + imports, before the stage
    t0 = time.perf_counter()
    build = build_stage(kind, cfg, PAPER_CROP_ZYX, seg_plan=seg_plan, arch=arch, batch=batch)
    net = build.net.to(dev)
    out["batch"] = build.batch_size
    if stage in ("ldm", "controlnet"):
        out["latent_shape"] = latent_shape(cfg, PAPER_CROP_ZYX)
    if stage == "seg":
        out["patch_zyx"] = build.input_shape[1:]
    if stage == "pattennet":
        frozen = [n for n, p in net.named_parameters() if not p.requires_grad]
        out["frozen_tensors"] = len(frozen)
        if not frozen:
            raise AssertionError("PattenNet's VAE encoder is not frozen")
    out["build_s"] = round(time.perf_counter() - t0, 2)
    params = [p for p in net.parameters() if p.requires_grad]
    out["trainable_params"] = int(sum(p.numel() for p in params))
    opt = torch.optim.AdamW(params, lr=1e-4)
    scaler = make_grad_scaler(dev)
    inputs = build.make_batch(build.batch_size, dev)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    times, losses = [], []
    for _ in range(max(1, int(steps))):
        t1 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with autocast(dev):
            loss = build.loss_fn(net, inputs)
        loss = loss.float()
        if not torch.isfinite(loss):
            raise AssertionError(f"{stage}: non-finite loss {loss.item()}")
        scaler.scale(loss).backward()
        missing = [n for n, p in net.named_parameters() if p.requires_grad and p.grad is None]
        if missing:
            raise AssertionError(f"{stage}: no gradient for {len(missing)} trainable tensor(s), e.g. {missing[:3]}")
        scaler.step(opt)
        scaler.update()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        times.append(time.perf_counter() - t1)
        losses.append(float(loss.item()))
    out["loss"] = losses[-1]
    out["step_s"] = round(float(np.median(times[1:] if len(times) > 1 else times)), 4)
    out["first_step_s"] = round(times[0], 4)
    if dev.type == "cuda":
        out["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated(dev) / 2 ** 20, 1)
    _round_trip(net)
    out["peak_rss_mb"] = round(_peak_rss_mb(), 1)
    est = estimate_stage(kind, cfg, PAPER_CROP_ZYX, seg_plan=seg_plan, arch=arch, batch=build.batch_size,
                         amp=dev.type == "cuda")
    out["estimate"] = {k: est[k] for k in ("peak_gb", "seconds_per_step", "gflop_per_step",
                                           "activation_gb_per_sample_fp32", "static_gb")}
    logger.info("%s: %s", stage, out)
    return out
