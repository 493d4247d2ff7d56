"""The ``gpu_full`` networks at the paper's size: one optimizer step of every stage, on any device.

``step_stage(stage)`` builds the stage's network from the paper settings (:func:`gpu_full_settings`, the
``gpu_full`` preset of ``neonet_plans.json`` for the paper's 96×96×48 crop), runs one AdamW step on a
random batch of the paper's batch size (a real phantom-like mask for the ControlNet), and checks what
a GPU run would otherwise find out hours in: output shapes, latent divisibility by the diffusion
U-Net's levels, a finite loss > 0, gradients on every trainable tensor, and a checkpoint that
round-trips through ``save_checkpoint`` / ``load_checkpoint(weights_only=True)``. It returns the
step's seconds and, when run in its own process (``benchmarks/bench_paper_size.py``), the peak RSS.

The LDM and the ControlNet train against their trainers' objective (``training/resources.build_stage``):
noise and timesteps drawn, noisy latents from the scheduler, L2 against ε (DDPM) or the rectified-flow
velocity ``x0 - noise``; the ControlNet through its residuals into the frozen U-Net. (Until 2026-12 both
regressed onto a zero target: MONAI's zero-initialised output layer made that loss exactly 0.0 and every
gradient 0, so the gradient check could not fail; the H200 figures of docs/results/gpu_h200 were taken so.)

The gradient check (:func:`check_gradients`, every step): every trainable tensor has a gradient (the
autograd graph reaches it; an unused or detached parameter fails), finite, and not all gradients are zero.
MONAI's zero-initialised layers keep the gradients of the layers behind them at exactly 0 for the first
steps, so only from :data:`STEPS_PAST_ZERO_INIT` steps on must every trainable tensor have had a non-zero
gradient (``steps`` >= 3 makes that check; the result's ``zero_grad_tensors`` counts those still at zero).

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
from neonet_toolkit.training.resources import (
    StageBuild,
    build_stage,
    estimate_stage,
    latent_shape,
)
from neonet_toolkit.utilities.checkpoints import load_checkpoint, save_checkpoint
from neonet_toolkit.utilities.devices import autocast, get_device, make_grad_scaler
from neonet_toolkit.utilities.identifiers import FINAL_CHECKPOINT

logger = logging.getLogger(__name__)

PAPER_CROP_ZYX = (48, 96, 96)  # the paper's 96×96×48 (x, y, z) TLCR crop in array order
SEG_PATCH_ZYX = (64, 160, 160)  # a planned NeoSeg patch for a realistic volume (~160×144×64 voxels)
# MONAI's zero-initialised layers (the diffusion U-Net's output and residual-branch convolutions, the attention
# output projections, the ControlNet's zero convolutions and its conditioning embedding's output) hold the
# gradient of the layers behind them at exactly 0 until an optimizer step has moved them; at most two lie in
# series (the U-Net's output convolution, then a residual block's second convolution; a ControlNet's zero
# convolutions, then its conditioning embedding's output), so by the third step every trainable tensor must
# have had a non-zero gradient (measured on tiny networks: 142, 68, then 0 LDM tensors still at zero after
# steps 1, 2, 3; ControlNet 79, 6, 0)
STEPS_PAST_ZERO_INIT = 3
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


def check_gradients(net: torch.nn.Module, stage: str, check_finite: bool = True) -> dict[str, bool]:
    """After ``backward()``: every trainable tensor of ``net`` has a gradient (the autograd graph reaches it),
    finite where ``check_finite`` (off while a float16 grad scaler may still back off), and not all of them
    are zero. Returns, per trainable tensor, whether its gradient has a non-zero entry."""
    named = [(n, p) for n, p in net.named_parameters() if p.requires_grad]
    missing = [n for n, p in named if p.grad is None]
    if missing:
        raise AssertionError(f"{stage}: no gradient for {len(missing)} trainable tensor(s), e.g. {missing[:3]}")
    if check_finite:
        bad = [n for n, p in named if not bool(torch.isfinite(p.grad).all())]
        if bad:
            raise AssertionError(f"{stage}: non-finite gradient in {len(bad)} tensor(s), e.g. {bad[:3]}")
    nonzero = {n: bool(p.grad.any()) for n, p in named}
    if named and not any(nonzero.values()):
        raise AssertionError(f"{stage}: every gradient is exactly zero: the step trains nothing (a loss that "
                             "does not depend on the trainable tensors, or a target the output already equals)")
    return nonzero


def train_steps(build: StageBuild, dev: torch.device, steps: int = 1) -> dict:
    """``steps`` AdamW steps of ``build`` on ``dev`` (AMP on CUDA) with the step checks (module docstring):
    a finite loss > 0, a gradient on every trainable tensor at every step (finite, not all zero) and, once
    ``steps`` >= :data:`STEPS_PAST_ZERO_INIT`, a non-zero gradient on every trainable tensor at some step.
    Returns the losses, the step times and ``zero_grad_tensors`` (tensors whose gradient was zero at every step)."""
    net = build.net.to(dev)
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    scaler = make_grad_scaler(dev)
    inputs = build.make_batch(build.batch_size, dev)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    times, losses, reached = [], [], {}
    for _ in range(max(1, int(steps))):
        t1 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with autocast(dev):
            loss = build.loss_fn(net, inputs)
        loss = loss.float()
        if not torch.isfinite(loss):
            raise AssertionError(f"{build.stage}: non-finite loss {loss.item()}")
        if not loss.item() > 0:
            raise AssertionError(f"{build.stage}: loss {loss.item()} is not > 0: the output already equals the "
                                 "target, so the step has nothing to learn")
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        nonzero = check_gradients(net, build.stage, check_finite=not scaler.is_enabled())
        reached = {n: reached.get(n, False) or z for n, z in nonzero.items()}
        scaler.step(opt)
        scaler.update()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        times.append(time.perf_counter() - t1)
        losses.append(float(loss.item()))
    zero = [n for n, z in reached.items() if not z]
    if zero and len(times) >= STEPS_PAST_ZERO_INIT:
        raise AssertionError(f"{build.stage}: {len(zero)} trainable tensor(s) got only zero gradients in "
                             f"{len(times)} steps, e.g. {zero[:3]}")
    return {"losses": losses, "times": times, "zero_grad_tensors": zero}


def step_stage(stage: str, device: str = "cpu", seed: int = 0, batch: int | None = None, steps: int = 1,
               conf: dict | None = None, crop_zyx=None, objective: str | None = None) -> dict:
    """``steps`` optimizer steps of ``stage`` with the paper's network, batch and crop (AMP on CUDA), next to
    the planner's estimate for the same network (:func:`estimate_stage`). See the module docstring.

    ``batch`` overrides the paper's batch size (e.g. NeoSeg at batch 1 on a CPU with little memory); the
    result records the batch used. ``step_s`` is the median of the steps after the first when
    ``steps`` > 1 (the first pays cuDNN's algorithm search), else the single step. ``conf`` / ``crop_zyx``
    replace the paper's settings and crop (tests run the same checks on tiny networks); ``objective``
    (``eps`` | ``rflow``) the configuration's LDM / ControlNet objective."""
    if stage not in STAGES:
        raise ValueError(f"Unknown stage {stage!r}; choose from {STAGES}.")
    dev = get_device(device)
    torch.manual_seed(seed)
    cfg = gpu_full_settings() if conf is None else conf
    crop = tuple(int(c) for c in (PAPER_CROP_ZYX if crop_zyx is None else crop_zyx))
    seg_plan = {"patch_size": list(SEG_PATCH_ZYX)}
    kind = "cls" if stage not in ("vae", "ldm", "controlnet", "seg") else stage
    arch = stage if kind == "cls" else None
    out: dict = {"stage": stage, "device": str(dev), "crop_zyx": list(crop),
                 "baseline_rss_mb": round(_peak_rss_mb(), 1)}  # the interpreter + imports, before the stage
    t0 = time.perf_counter()
    build = build_stage(kind, cfg, crop, seg_plan=seg_plan, arch=arch, batch=batch, objective=objective)
    net = build.net.to(dev)
    out["batch"] = build.batch_size
    if stage in ("ldm", "controlnet"):
        out["latent_shape"] = latent_shape(cfg, crop)
        out["objective"] = str(objective or cfg["ldm"]["objective"])
    if stage == "seg":
        out["patch_zyx"] = build.input_shape[1:]
    if stage == "pattennet":
        frozen = [n for n, p in net.named_parameters() if not p.requires_grad]
        out["frozen_tensors"] = len(frozen)
        if not frozen:
            raise AssertionError("PattenNet's VAE encoder is not frozen")
    out["build_s"] = round(time.perf_counter() - t0, 2)
    out["trainable_params"] = int(sum(p.numel() for p in net.parameters() if p.requires_grad))
    r = train_steps(build, dev, steps)
    times = r["times"]
    out["loss"] = r["losses"][-1]
    out["losses"] = r["losses"]
    out["zero_grad_tensors"] = len(r["zero_grad_tensors"])
    out["step_s"] = round(float(np.median(times[1:] if len(times) > 1 else times)), 4)
    out["first_step_s"] = round(times[0], 4)
    if dev.type == "cuda":
        out["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated(dev) / 2 ** 20, 1)
    _round_trip(net)
    out["peak_rss_mb"] = round(_peak_rss_mb(), 1)
    est = estimate_stage(kind, cfg, crop, seg_plan=seg_plan, arch=arch, batch=build.batch_size,
                         amp=dev.type == "cuda", objective=objective)
    out["estimate"] = {k: est[k] for k in ("peak_gb", "seconds_per_step", "gflop_per_step",
                                           "activation_gb_per_sample_fp32", "static_gb")}
    logger.info("%s: %s", stage, out)
    return out
