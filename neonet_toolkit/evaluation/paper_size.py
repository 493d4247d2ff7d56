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

from neonet_toolkit.experiment_planning.planner import swin_compatible_patch
from neonet_toolkit.experiment_planning.plans import gpu_full_settings
from neonet_toolkit.networks.classifiers import build_classifier
from neonet_toolkit.networks.generative import (
    build_controlnet,
    build_unet,
    build_vae,
    check_latent_divisible,
    controlled_unet_output,
    freeze,
    vae_downsampling_factor,
)
from neonet_toolkit.training.seg.networks import build_network
from neonet_toolkit.utilities.checkpoints import load_checkpoint, save_checkpoint
from neonet_toolkit.utilities.devices import autocast, get_device

logger = logging.getLogger(__name__)

PAPER_CROP_ZYX = (48, 96, 96)  # the paper's 96×96×48 (x, y, z) TLCR crop in array order
SEG_PATCH_ZYX = (64, 160, 160)  # a planned NeoSeg patch for a realistic volume (~160×144×64 voxels)
STAGES = ("vae", "ldm", "controlnet", "pattennet", "resnet50", "densenet121", "efficientnet_b0", "swin", "seg")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kB


def _mask_batch(n: int, shape) -> torch.Tensor:
    """(n, 2, *shape) {0,1}: an organ ellipsoid and a tumour ball inside it (channel 0 = organ ∪ tumour)."""
    zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    organ = (zz ** 2 + yy ** 2 / 0.8 + xx ** 2 / 0.9) < 0.8
    tumour = (zz ** 2 + (yy - 0.1) ** 2 + xx ** 2) < 0.1
    m = np.stack([organ | tumour, tumour]).astype(np.float32)
    return torch.from_numpy(np.repeat(m[None], n, axis=0))


def _round_trip(net: torch.nn.Module) -> None:
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / "checkpoint_final.pth"
        save_checkpoint({"network": net.state_dict(), "epoch": 0}, f)
        sd = load_checkpoint(f)["network"]  # weights_only=True
    ref = net.state_dict()
    if set(sd) != set(ref) or any(not torch.equal(sd[k].cpu(), ref[k].cpu()) for k in ref):
        raise AssertionError("checkpoint did not round-trip")


def _step(net: torch.nn.Module, loss_fn, device: torch.device) -> float:
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    opt.zero_grad(set_to_none=True)
    with autocast(device):
        loss = loss_fn()
    loss = loss.float()
    if not torch.isfinite(loss):
        raise AssertionError(f"non-finite loss {loss.item()}")
    loss.backward()
    missing = [n for n, p in net.named_parameters() if p.requires_grad and p.grad is None]
    if missing:
        raise AssertionError(f"no gradient for {len(missing)} trainable tensor(s), e.g. {missing[:3]}")
    opt.step()
    return float(loss.item())


def step_stage(stage: str, device: str = "cpu", seed: int = 0, batch: int | None = None) -> dict:
    """One optimizer step of ``stage`` with the paper's network, batch and crop. See the module docstring.

    ``batch`` overrides the paper's batch size (e.g. NeoSeg at batch 1 on a CPU with little memory); the
    result records the batch used."""
    if stage not in STAGES:
        raise ValueError(f"Unknown stage {stage!r}; choose from {STAGES}.")
    dev = get_device(device)
    torch.manual_seed(seed)
    cfg = gpu_full_settings()
    crop = PAPER_CROP_ZYX
    down = vae_downsampling_factor(cfg["vae"])
    latent = [int(cfg["vae"]["latent_channels"])] + [s // down for s in crop]
    out: dict = {"stage": stage, "device": str(dev), "crop_zyx": list(crop)}
    t0 = time.perf_counter()
    if stage == "vae":
        net = build_vae(cfg["vae"]).to(dev)
        b = int(batch or cfg["vae"]["batch_size"])
        x = torch.randn(b, 1, *crop, device=dev)

        def loss_fn():
            recon, mu, sigma = net(x)
            if tuple(recon.shape) != tuple(x.shape) or list(mu.shape[1:]) != latent:
                raise AssertionError(f"VAE shapes: recon {tuple(recon.shape)}, latent {tuple(mu.shape)}")
            return (recon - x).abs().mean() + 1e-7 * (mu.pow(2) + sigma.pow(2) - torch.log(sigma.pow(2)) - 1).mean()
        out["batch"] = b
    elif stage in ("ldm", "controlnet"):
        check_latent_divisible(latent[1:], len(cfg["ldm"]["channels"]))
        unet = build_unet(cfg["ldm"], latent[0]).to(dev)
        b = int(batch or cfg[stage]["batch_size"])
        z = torch.randn(b, *latent, device=dev)
        t = torch.randint(0, int(cfg["ldm"]["num_train_timesteps"]), (b,), device=dev)
        if stage == "ldm":
            net = unet

            def loss_fn():
                eps = net(x=z, timesteps=t)
                if tuple(eps.shape) != tuple(z.shape):
                    raise AssertionError(f"U-Net output {tuple(eps.shape)} != latent {tuple(z.shape)}")
                return torch.nn.functional.mse_loss(eps.float(), torch.randn_like(z))
        else:
            freeze(unet)
            net = build_controlnet(cfg["ldm"], cfg["controlnet"], latent[0], down,
                                   num_class_embeds=2 if cfg["controlnet"]["class_conditional"] else None).to(dev)
            cond = _mask_batch(b, crop).to(dev)
            cls = torch.randint(0, 2, (b,), device=dev)

            def loss_fn():
                eps = controlled_unet_output(unet, net, z, t, cond, class_labels=cls)
                return torch.nn.functional.mse_loss(eps.float(), torch.randn_like(z))
        out["batch"] = b
        out["latent_shape"] = latent
    elif stage == "seg":
        s = cfg["seg"]
        patch = swin_compatible_patch(SEG_PATCH_ZYX, [[1, 1, 1]] + [[2, 2, 2]] * 4)
        net = build_network(s, patch, [[1, 1, 1]] + [[2, 2, 2]] * 4, [[3, 3, 3]] * 5, [32, 64, 128, 256, 320],
                            in_channels=1, out_channels=3).to(dev)
        b = int(batch or s["batch_size"])
        x = torch.randn(b, 1, *patch, device=dev)
        y = torch.randint(0, 3, (b, *patch), device=dev)

        def loss_fn():
            logits = net(x)
            if tuple(logits.shape) != (b, 3, *patch):
                raise AssertionError(f"SwinUNETR output {tuple(logits.shape)}")
            return torch.nn.functional.cross_entropy(logits.float(), y)
        out["batch"], out["patch_zyx"] = b, patch
    else:  # NeoCls: PattenNet on a frozen paper VAE, or a baseline
        ccfg = dict(cfg["cls"])
        vae = build_vae(cfg["vae"]) if stage == "pattennet" else None
        net = build_classifier(stage, ccfg, in_channels=2, vae_config=cfg["vae"], vae=vae).to(dev)
        b = int(batch or ccfg["batch_size"])
        x = torch.randn(b, 2, *crop, device=dev)
        y = torch.randint(0, 2, (b,), device=dev).float()

        def loss_fn():
            logit = net(x).reshape(-1)
            if logit.shape[0] != b:
                raise AssertionError(f"classifier output {tuple(logit.shape)} for batch {b}")
            return torch.nn.functional.binary_cross_entropy_with_logits(logit.float(), y)
        out["batch"] = b
        if vae is not None:
            frozen = [n for n, p in net.named_parameters() if not p.requires_grad]
            out["frozen_tensors"] = len(frozen)
            if not frozen:
                raise AssertionError("PattenNet's VAE encoder is not frozen")
    out["build_s"] = round(time.perf_counter() - t0, 2)
    out["trainable_params"] = int(sum(p.numel() for p in net.parameters() if p.requires_grad))
    t1 = time.perf_counter()
    out["loss"] = _step(net, loss_fn, dev)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        out["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated(dev) / 2 ** 20, 1)
    out["step_s"] = round(time.perf_counter() - t1, 2)
    _round_trip(net)
    out["peak_rss_mb"] = round(_peak_rss_mb(), 1)
    logger.info("%s: %s", stage, out)
    return out
