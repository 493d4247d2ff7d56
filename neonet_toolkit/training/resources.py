"""What one optimizer step of each stage costs: the networks built as the trainers build them, measured
without running them.

``build_stage`` returns, for a stage of a resolved ``neonet_plans.json`` configuration, the network, a
batch maker and the loss of one training step (the same network constructors the trainers use). It
serves two callers:

* :func:`estimate_stage` runs the forward pass on PyTorch's ``meta`` device (shapes only: no memory, no
  arithmetic, well under a second even for the paper's networks). Every tensor autograd saves for the
  backward pass is counted (activation bytes), and ``torch.utils.flop_counter`` counts the forward
  FLOPs. Peak GPU memory is then estimated as nnU-Net does for its VRAM target, from quantities that
  scale with the batch and the patch:

      weights + gradients + AdamW moments (4 + 4 + 8 bytes per trainable parameter, 4 per frozen one)
      + max(saved activations, 3 × the largest single output) × batch × AMP_ACTIVATION_FACTOR
      + CUDA_CONTEXT_GB,

  and the time per step as 3 × forward FLOPs × batch / ``reference_tflops`` (forward + backward ≈ 3×
  forward) + forward operations × ``PER_OP_SECONDS`` (launch-bound small networks). Both are validated against measured figures in ``benchmarks/bench_paper_size.py``
  (CPU peak RSS in fp32, ``torch.cuda.max_memory_allocated`` with AMP), and the README records the ratio.
* ``neonet_toolkit.training.paper_size`` runs one real step of the same builds at the paper's size.

:func:`plan_resources` writes the estimates into ``neonet_plans.json`` (``resource_estimates``) and, for
GPU configurations, lowers a stage's batch size until the estimate fits ``gpu_memory_target_gb``
(default: an A100 40 GB), logging each change, never silently. The time constants were fitted on an H200
(docs/results/gpu_h200): treat the seconds as that GPU's, the memory as any GPU's.
"""
from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode

from neonet_toolkit.experiment_planning.planner import swin_compatible_patch
from neonet_toolkit.experiment_planning.plans import NEONET_PLANS_FILE, NeoNetPlans
from neonet_toolkit.networks.classifiers import build_classifier
from neonet_toolkit.networks.diffusion import DiffusionObjective
from neonet_toolkit.networks.generative import (
    build_controlnet,
    build_unet,
    build_vae,
    build_vqvae,
    check_latent_divisible,
    controlled_unet_output,
    freeze,
    init_controlnet_from_unet,
    kl_loss,
    vae_downsampling_factor,
)
from neonet_toolkit.training.seg.networks import build_network
from neonet_toolkit.utilities.identifiers import (
    NNUNET_PLANS_NAME,
    SEG_CONFIGURATION,
    dataset_folders,
)
from neonet_toolkit.utilities.io import load_json

logger = logging.getLogger(__name__)

# saved activations under bf16/fp16 autocast, relative to fp32: convolution and matmul inputs are kept in
# half precision, normalisation statistics and losses in fp32 (calibrated on an H200, see README "GPU")
AMP_ACTIVATION_FACTOR = 0.6
CUDA_CONTEXT_GB = 0.6  # CUDA context, cuDNN workspaces, allocator rounding
DEFAULT_GPU_MEMORY_TARGET_GB = 40.0  # an A100 40 GB, as nnU-Net plans for a VRAM target
# time per step = 3 x forward FLOPs / throughput + forward operations x per-operation cost (kernel launches of
# the forward, backward and optimizer): both fitted to the paper-size steps measured on one H200 with bf16 AMP
# (docs/results/gpu_h200; within 0.6-1.6x of every stage there). Other GPUs: pass your own figures.
DEFAULT_REFERENCE_TFLOPS = 100.0
PER_OP_SECONDS = 90e-6
SEG_DEFAULT_STRIDES = [[1, 1, 1]] + [[2, 2, 2]] * 4
STAGES = ("seg", "vae", "vqvae", "ldm", "controlnet", "cls")


@dataclass
class StageBuild:
    """A stage's network and one training step: ``loss_fn(net, make_batch(b, device))``."""
    stage: str
    net: torch.nn.Module
    make_batch: Callable[[int, torch.device], tuple]
    loss_fn: Callable[[torch.nn.Module, tuple], torch.Tensor]
    batch_size: int
    input_shape: list[int]


def mask_batch(n: int, shape, device) -> torch.Tensor:
    """(n, 2, *shape) {0,1}: an organ ellipsoid and a tumour ball inside it (channel 0 = organ ∪ tumour)."""
    zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    organ = (zz ** 2 + yy ** 2 / 0.8 + xx ** 2 / 0.9) < 0.8
    tumour = (zz ** 2 + (yy - 0.1) ** 2 + xx ** 2) < 0.1
    m = np.stack([organ | tumour, tumour]).astype(np.float32)
    t = torch.from_numpy(np.repeat(m[None], n, axis=0))
    return torch.empty(t.shape, device=device) if torch.device(device).type == "meta" else t.to(device)


def _check(cond: bool, what: str) -> None:
    if not cond:
        raise AssertionError(what)


def stand_in_for_trained_unet(unet: torch.nn.Module) -> list[str]:
    """Give the zero-initialised layers of a fresh diffusion U-Net (MONAI's output convolution, the residual
    blocks' second convolution, the attention output projections) PyTorch's default initialisation, in place, so
    that the frozen U-Net of a ControlNet step responds to its input like a trained one. A fresh U-Net outputs
    exactly 0 whatever the ControlNet adds, so every ControlNet gradient would be 0. Returns the re-initialised
    modules' names; nothing on the meta device (no values there)."""
    if any(p.is_meta for p in unet.parameters()):
        return []
    names = []
    with torch.no_grad():
        for name, mod in unet.named_modules():
            own = list(mod.parameters(recurse=False))
            if own and hasattr(mod, "reset_parameters") and not any(bool(p.any()) for p in own):
                mod.reset_parameters()
                names.append(name)
    return names


def latent_shape(conf: dict, crop_zyx) -> list[int]:
    down = vae_downsampling_factor(conf["vae"])
    return [int(conf["vae"]["latent_channels"])] + [int(s) // down for s in crop_zyx]


def build_stage(stage: str, conf: dict, crop_zyx, seg_plan: dict | None = None, arch: str | None = None,
                batch: int | None = None, seg_io: tuple[int, int] = (1, 3), objective: str | None = None) -> StageBuild:
    """Build ``stage`` of the resolved configuration ``conf`` (a dict of stage settings) for a TLCR crop
    ``crop_zyx``. ``seg_plan``: nnU-Net's configuration plan (``patch_size`` and ``architecture.arch_kwargs``)
    for the seg stage; ``arch``: the NeoCls architecture (default: the configuration's); ``seg_io``: the
    segmentation network's input channels and output classes; ``objective``: the LDM / ControlNet objective
    (``eps`` | ``rflow``; default: the configuration's ``ldm.objective``).

    The LDM and ControlNet steps train against the trainers' objective (:class:`DiffusionObjective`, as
    ``LatentDiffusionTrainer.noisy``): noise and timesteps drawn, noisy latents from the scheduler (DDPM
    ``add_noise`` for ε, ``RFlowScheduler`` for rectified flow), L2 against ε or the velocity ``x0 - noise``.
    The latents are standard-normal stand-ins for the scaled autoencoder latents. The ControlNet goes through
    ``controlled_unet_output`` (ControlNet residuals into the frozen U-Net), initialised from the U-Net as its
    trainer does; the frozen U-Net is a stand-in for a trained one (:func:`stand_in_for_trained_unet`),
    since a fresh MONAI U-Net's zero output layer would pass no gradient back to the ControlNet."""
    crop = [int(s) for s in crop_zyx]
    lat = latent_shape(conf, crop)
    if stage in ("vae", "vqvae"):
        net = build_vae(conf["vae"]) if stage == "vae" else build_vqvae(conf["vqvae"])
        b = int(batch or conf[stage]["batch_size"])

        def make(n, dev):
            return (torch.randn(n, 1, *crop, device=dev),)

        def loss(m, inp):
            x = inp[0]
            if stage == "vae":
                recon, mu, sigma = m(x)
                _check(list(mu.shape[1:]) == lat, f"VAE latent {tuple(mu.shape)} (expected {lat})")
                reg = float(conf["vae"]["kl_weight"]) * kl_loss(mu.float(), sigma.float())
            else:
                recon, q_loss = m(x)
                reg = q_loss.float().mean()
            _check(tuple(recon.shape) == tuple(x.shape), f"{stage} reconstruction {tuple(recon.shape)}")
            return (recon.float() - x).abs().mean() + reg
        return StageBuild(stage, net, make, loss, b, [1] + crop)
    if stage in ("ldm", "controlnet"):
        check_latent_divisible(lat[1:], len(conf["ldm"]["channels"]))
        unet = build_unet(conf["ldm"], lat[0])
        b = int(batch or conf[stage]["batch_size"])
        with torch.device("cpu"):  # the noise tables stay on the CPU even under estimate_stage's meta device
            diffusion = DiffusionObjective(conf["ldm"], objective)

        def noisy_latents(n, dev):
            """(noisy latents, target, timesteps) of the trainers' objective (LatentDiffusionTrainer.noisy) for
            n standard-normal stand-ins of the scaled autoencoder latents, drawn on the CPU, then moved."""
            gen = torch.Generator().manual_seed(int(torch.randint(0, 2 ** 31 - 1, (), device="cpu")))
            zt, target, t = diffusion.noisy(torch.randn(n, *lat, device="cpu"), gen)
            return zt.to(dev), target.to(dev), t.to(dev)

        if stage == "ldm":
            def loss(m, inp):  # LDMTrainer.compute_loss
                zt, target, t = inp
                pred = m(x=zt, timesteps=t)
                _check(tuple(pred.shape) == tuple(zt.shape), f"U-Net output {tuple(pred.shape)} != latent {tuple(zt.shape)}")
                return torch.nn.functional.mse_loss(pred.float(), target.float())
            return StageBuild(stage, unet, noisy_latents, loss, b, lat)
        stand_in_for_trained_unet(unet)
        freeze(unet)
        cc = conf["controlnet"]
        ctrl = build_controlnet(conf["ldm"], cc, lat[0], vae_downsampling_factor(conf["vae"]),
                                num_class_embeds=2 if cc["class_conditional"] else None)
        if not any(p.is_meta for p in ctrl.parameters()):
            init_controlnet_from_unet(ctrl, unet)  # as ControlNetTrainer.setup (values only: nothing to copy on meta)

        class _Pair(torch.nn.Module):  # the frozen U-Net travels with the ControlNet (memory, device)
            def __init__(self):
                super().__init__()
                self.controlnet, self.unet = ctrl, unet

        def make(n, dev):
            return (*noisy_latents(n, dev), mask_batch(n, crop, dev), torch.randint(0, 2, (n,), device=dev))

        def loss(m, inp):  # ControlNetTrainer.compute_loss
            zt, target, t, cond, cls = inp
            pred = controlled_unet_output(m.unet, m.controlnet, zt, t, cond,
                                          class_labels=cls if cc["class_conditional"] else None)
            _check(tuple(pred.shape) == tuple(zt.shape), f"ControlNet output {tuple(pred.shape)}")
            return torch.nn.functional.mse_loss(pred.float(), target.float())
        return StageBuild(stage, _Pair(), make, loss, b, [2] + crop)
    if stage == "seg":
        s = conf["seg"]
        if s["architecture"] == "nnunet":
            raise ValueError("The seg stage uses nnU-Net's own U-Net; nnU-Net plans its memory itself.")
        kw = (seg_plan or {}).get("architecture", {}).get("arch_kwargs", {})
        strides = kw.get("strides", SEG_DEFAULT_STRIDES)
        patch = [int(p) for p in (seg_plan or {}).get("patch_size", [64, 160, 160])]
        if s["architecture"] == "swinunetr":
            patch = swin_compatible_patch(patch, strides)
        kernels = kw.get("kernel_sizes", [[3, 3, 3]] * len(strides))
        feats = kw.get("features_per_stage", [32, 64, 128, 256, 320][: len(strides)])
        cin, cout = seg_io
        net = build_network(s, patch, strides, kernels, feats, in_channels=cin, out_channels=cout)
        b = int(batch or s["batch_size"])

        def make(n, dev):
            return (torch.randn(n, cin, *patch, device=dev), torch.randint(0, cout, (n, *patch), device=dev))

        def loss(m, inp):
            x, y = inp
            out = m(x)
            logits = out[0] if isinstance(out, (list, tuple)) else out
            _check(tuple(logits.shape) == (x.shape[0], cout, *patch), f"seg output {tuple(logits.shape)}")
            return torch.nn.functional.cross_entropy(logits.float(), y)
        return StageBuild(stage, net, make, loss, b, [cin] + patch)
    if stage == "cls" or stage not in STAGES:  # NeoCls: the configured architecture or the one named
        ccfg = dict(conf["cls"])
        a = arch or (ccfg["architecture"] if stage == "cls" else stage)
        net = build_classifier(a, ccfg, in_channels=2, vae_config=conf["vae"])
        b = int(batch or ccfg["batch_size"])

        def make(n, dev):
            return (torch.randn(n, 2, *crop, device=dev), torch.randint(0, 2, (n,), device=dev).float())

        def loss(m, inp):
            x, y = inp
            logit = m(x).reshape(-1)
            _check(logit.shape[0] == x.shape[0], f"classifier output {tuple(logit.shape)} for batch {x.shape[0]}")
            return torch.nn.functional.binary_cross_entropy_with_logits(logit.float(), y)
        return StageBuild(a, net, make, loss, b, [2] + crop)


class _LargestOutput(TorchDispatchMode):
    """Largest tensor any single operation produces (a frozen encoder's transient activations)."""

    def __init__(self):
        super().__init__()
        self.largest = 0
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.ops += 1
        if any(r.alias_info is not None for r in func._schema.returns):  # a view or in-place: allocates nothing
            return out
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel() * t.element_size())
        return out


def _count(build: StageBuild) -> tuple[int, int, float, int]:
    """Per sample: bytes autograd saves for backward, the largest single operation output, forward
    FLOPs, and the number of forward operations (meta device: nothing runs)."""
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t

    def run(n):
        total[0] = 0
        fc, big = FlopCounterMode(display=False), _LargestOutput()
        with fc, big, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            build.loss_fn(build.net, build.make_batch(n, torch.device("meta")))
        return total[0] / n, big.largest / n, float(fc.get_total_flops()) / n, big.ops

    try:
        return run(1)
    except ValueError as e:  # batch norm over a 1x1x1 map wants two samples (a small crop): count two, halve
        if "more than 1 value per channel" not in str(e):
            raise
        return run(2)


def estimate_stage(stage: str, conf: dict, crop_zyx, seg_plan: dict | None = None, arch: str | None = None,
                   batch: int | None = None, amp: bool = True, reference_tflops: float = DEFAULT_REFERENCE_TFLOPS,
                   seg_io: tuple[int, int] = (1, 3), objective: str | None = None) -> dict:
    """Estimated peak GPU memory (GB) and seconds per optimizer step of ``stage`` (module docstring)."""
    try:
        with torch.device("meta"):
            build = build_stage(stage, conf, crop_zyx, seg_plan=seg_plan, arch=arch, batch=batch, seg_io=seg_io,
                                objective=objective)
    except RuntimeError:  # a constructor that reads values (e.g. MONAI's Swin drop-path schedule): build, then move
        build = build_stage(stage, conf, crop_zyx, seg_plan=seg_plan, arch=arch, batch=batch, seg_io=seg_io,
                            objective=objective)
        build.net.to("meta")
    trainable = sum(p.numel() for p in build.net.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in build.net.parameters() if not p.requires_grad)
    saved, largest, flops, ops = _count(build)
    act = max(saved, 3 * largest)  # a frozen path keeps nothing, but one layer's input + output + workspace
    b = build.batch_size
    static = 16 * trainable + 4 * frozen
    act_b = act * b * (AMP_ACTIVATION_FACTOR if amp else 1.0)
    return {"stage": build.stage, "batch_size": b, "input": build.input_shape,
            "trainable_params": int(trainable), "frozen_params": int(frozen),
            "activation_gb_per_sample_fp32": round(act / 2 ** 30, 3),
            "static_gb": round(static / 2 ** 30, 3),
            "peak_gb": round((static + act_b) / 2 ** 30 + (CUDA_CONTEXT_GB if amp else 0.0), 2),
            "gflop_per_step": round(3 * flops * b / 1e9, 1), "forward_ops": int(ops),
            "seconds_per_step": round(3 * flops * b / (reference_tflops * 1e12) + ops * PER_OP_SECONDS, 4),
            "assumptions": {"amp": amp, "reference_tflops": reference_tflops}}


def fit_batch(stage: str, conf: dict, crop_zyx, target_gb: float, **kw) -> tuple[dict, list[dict]]:
    """Halve the stage's batch size until its estimate fits ``target_gb`` (at least 1). Returns the final
    estimate and every estimate tried."""
    est = estimate_stage(stage, conf, crop_zyx, **kw)
    tried = [est]
    while est["peak_gb"] > target_gb and est["batch_size"] > 1:
        est = estimate_stage(stage, conf, crop_zyx, batch=max(1, est["batch_size"] // 2), **kw)
        tried.append(est)
    return est, tried


def plan_resources(plans: dict, resolve: Callable[[str], dict], crop_zyx, seg_plan: dict | None,
                   seg_io: tuple[int, int], gpu_memory_target_gb: float = DEFAULT_GPU_MEMORY_TARGET_GB,
                   reference_tflops: float = DEFAULT_REFERENCE_TFLOPS) -> dict:
    """Estimate every stage of every configuration of ``plans`` (a ``neonet_plans.json`` dict) and return
    the updated plans. ``resolve(name)`` gives a configuration's resolved stage settings.

    GPU configurations (every configuration whose name does not start with ``cpu``) get their batch sizes
    lowered, stage by stage, until the estimate fits ``gpu_memory_target_gb``; each change is logged and
    recorded under ``resource_estimates[conf][stage]["changed"]``. Nothing is changed for CPU presets (their
    memory is host RAM; the estimate is still written). A stage whose network these settings cannot build (e.g.
    SwinUNETR on a 32-voxel patch) gets ``{"error": <the builder's message>}`` and a warning; planning goes on."""
    plans = copy.deepcopy(plans)
    out: dict = {"gpu_memory_target_gb": gpu_memory_target_gb, "reference_tflops": reference_tflops,
                 "per_op_seconds": PER_OP_SECONDS,
                 "amp_activation_factor": AMP_ACTIVATION_FACTOR, "cuda_context_gb": CUDA_CONTEXT_GB,
                 "configurations": {}}
    for name in plans.get("configurations", {}):
        conf = resolve(name)
        gpu = not name.startswith("cpu")
        rows = {}
        for stage in STAGES:
            if stage not in conf or (stage == "seg" and conf["seg"]["architecture"] == "nnunet"):
                continue
            kw = {"seg_plan": seg_plan, "seg_io": seg_io, "reference_tflops": reference_tflops, "amp": gpu}
            try:
                if gpu:
                    est, tried = fit_batch(stage, conf, crop_zyx, gpu_memory_target_gb, **kw)
                else:
                    est = estimate_stage(stage, conf, crop_zyx, **kw)
                    tried = [est]
            except ValueError as e:  # a network these settings cannot build: its trainer refuses with the same message
                logger.warning("%s %s: no resource estimate: %s", name, stage, e)
                rows[stage] = {"error": str(e)}
                continue
            first = tried[0]
            if est["batch_size"] != first["batch_size"]:
                plans["configurations"][name].setdefault(stage, {})["batch_size"] = est["batch_size"]
                est["changed"] = (f"batch_size {first['batch_size']} -> {est['batch_size']}: estimated "
                                  f"{first['peak_gb']} GB > target {gpu_memory_target_gb} GB")
                logger.warning("%s %s: %s (now %.1f GB). Set --gpu_memory_target_gb to your GPU's memory.",
                               name, stage, est["changed"], est["peak_gb"])
            if gpu and est["peak_gb"] > gpu_memory_target_gb:
                est["fits"] = False
                logger.warning("%s %s: estimated %.1f GB at batch 1 still exceeds the %.0f GB target; %s.",
                               name, stage, est["peak_gb"], gpu_memory_target_gb,
                               "nnU-Net plans a smaller patch with a lower -gpu_memory_target" if stage == "seg"
                               else "use a smaller crop (neonet.crop_size) or a smaller network")
            rows[stage] = est
        out["configurations"][name] = rows
    plans["resource_estimates"] = out
    return plans


def estimate_classifiers(dataset: int | str, configuration: str, archs) -> dict:
    """Per-architecture NeoCls estimates (``{arch: estimate_stage row}``) under ``configuration`` of a planned
    dataset, with the planner's throughput and AMP choice. The plans hold one ``cls`` row, the configured
    architecture's; a SwinTransformer or DenseNet-264 step costs several PattenNet steps, so the experiment's graph
    asks here for the classifiers it will run. Meta-device builds: well under a second per architecture. An
    architecture these settings cannot build gets ``{"error": ...}``."""
    name, pp, _ = dataset_folders(dataset)
    plans = NeoNetPlans(pp / NEONET_PLANS_FILE)
    conf = plans.configuration(configuration)
    ref = (plans.plans.get("resource_estimates") or {}).get("reference_tflops", DEFAULT_REFERENCE_TFLOPS)
    out = {}
    for arch in dict.fromkeys(archs):
        try:
            out[arch] = estimate_stage("cls", conf, plans.crop_size, arch=arch, amp=not configuration.startswith("cpu"),
                                       reference_tflops=ref)
        except ValueError as e:
            logger.warning("%s %s %s: no resource estimate: %s", name, configuration, arch, e)
            out[arch] = {"error": str(e)}
    return out


def write_resource_estimates(dataset: int | str, gpu_memory_target_gb: float = DEFAULT_GPU_MEMORY_TARGET_GB,
                             reference_tflops: float = DEFAULT_REFERENCE_TFLOPS) -> dict:
    """Estimate every stage of every configuration of a planned dataset and write the estimates (and any
    batch size lowered to fit ``gpu_memory_target_gb``) into its ``neonet_plans.json``. Returns the
    ``resource_estimates`` block."""
    name, pp, _ = dataset_folders(dataset)
    plans_file = pp / NEONET_PLANS_FILE
    plans = NeoNetPlans(plans_file)
    nn_plans = load_json(pp / f"{plans.plans.get('nnunet_plans', NNUNET_PLANS_NAME)}.json")
    seg_plan = nn_plans["configurations"].get(plans.plans.get("seg_configuration", SEG_CONFIGURATION))
    dataset_json = load_json(pp / "dataset.json")
    seg_io = (len(dataset_json["channel_names"]), len(dataset_json["labels"]))
    crop_zyx = plans.crop_size
    updated = plan_resources(plans.plans, plans.configuration, crop_zyx, seg_plan, seg_io,
                             gpu_memory_target_gb=gpu_memory_target_gb, reference_tflops=reference_tflops)
    NeoNetPlans(updated).save(plans_file)
    est = updated["resource_estimates"]
    for conf, rows in est["configurations"].items():
        logger.info("%s %s: estimated peak GPU memory (GB) %s", name, conf,
                    {k: v.get("peak_gb", "no estimate") for k, v in rows.items()})
    return est
