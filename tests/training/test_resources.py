"""Memory and time estimates of each stage (meta device) and the planner's batch-size fitting."""
import copy
import logging

import pytest
import torch

from neonet_toolkit.experiment_planning.plans import gpu_full_settings
from neonet_toolkit.networks.generative import build_unet
from neonet_toolkit.training.resources import (
    CUDA_CONTEXT_GB,
    StageBuild,
    _count,
    build_stage,
    estimate_stage,
    fit_batch,
    plan_resources,
    stand_in_for_trained_unet,
)

CROP = (48, 96, 96)


def test_counts_are_exact_on_a_known_layer():
    # y = W x + b for one sample: autograd keeps x (10 floats) for dW; the product costs 2 * 10 * 20 FLOPs
    with torch.device("meta"):
        lin = torch.nn.Linear(10, 20)
    b = StageBuild("lin", lin, lambda n, dev: (torch.randn(n, 10, device=dev),),
                   lambda m, inp: m(inp[0]).sum(), 1, [10])
    saved, largest, flops, ops = _count(b)
    assert saved == 10 * 4
    assert largest == 20 * 4  # the weight's transpose is a view: no allocation
    assert flops == 2 * 10 * 20
    assert ops == 4  # randn (the batch), t (view), addmm, sum


def test_estimate_scales_with_batch_and_crop():
    cfg = gpu_full_settings()
    e1, e2, e4 = (estimate_stage("vae", cfg, CROP, batch=b, amp=False) for b in (1, 2, 4))
    act1 = e1["peak_gb"] - e1["static_gb"]
    assert act1 == pytest.approx(e1["activation_gb_per_sample_fp32"], abs=0.01)
    assert e4["peak_gb"] - e2["peak_gb"] == pytest.approx(2 * (e2["peak_gb"] - e1["peak_gb"]), abs=0.03)  # 0.01 GB rounding
    half = estimate_stage("vae", cfg, (24, 96, 96), batch=1, amp=False)
    assert half["activation_gb_per_sample_fp32"] == pytest.approx(e1["activation_gb_per_sample_fp32"] / 2, rel=0.05)
    assert half["gflop_per_step"] == pytest.approx(e1["gflop_per_step"] / 2, rel=0.05)
    amp = estimate_stage("vae", cfg, CROP, batch=1, amp=True)
    assert amp["peak_gb"] < e1["peak_gb"] + CUDA_CONTEXT_GB  # half-precision activations


def test_frozen_encoder_counts_parameters_not_gradients():
    cfg = gpu_full_settings()
    e = estimate_stage("cls", cfg, CROP, amp=False)  # PattenNet: frozen VAE encoder + small trainable head
    assert e["frozen_params"] > 10 * e["trainable_params"] > 0
    assert e["static_gb"] == pytest.approx((16 * e["trainable_params"] + 4 * e["frozen_params"]) / 2 ** 30, abs=1e-3)


def test_fit_batch_halves_until_the_target_fits():
    cfg = gpu_full_settings()
    full = estimate_stage("controlnet", cfg, CROP)
    assert full["batch_size"] == 8
    target = (full["peak_gb"] + full["static_gb"]) / 2
    est, tried = fit_batch("controlnet", cfg, CROP, target)
    assert [t["batch_size"] for t in tried] == sorted({t["batch_size"] for t in tried}, reverse=True)
    assert est["batch_size"] < 8 and (est["peak_gb"] <= target or est["batch_size"] == 1)
    assert all(t["peak_gb"] > target for t in tried[:-1])


def test_plan_resources_lowers_gpu_batches_loudly_and_leaves_cpu_presets(caplog):
    gpu = gpu_full_settings()
    plans = {"configurations": {"gpu_full": copy.deepcopy(gpu),
                                "cpu_small": {"inherits_from": "gpu_full", "controlnet": {"batch_size": 8}}}}

    def resolve(name):
        conf = copy.deepcopy(gpu)
        for stage, v in plans["configurations"][name].items():
            if isinstance(v, dict):
                conf[stage].update(v)
        return conf

    ctrl = estimate_stage("controlnet", gpu, CROP)["peak_gb"]
    target = ctrl * 0.6
    with caplog.at_level(logging.WARNING):
        out = plan_resources(plans, resolve, CROP, {"patch_size": [64, 160, 160]}, (1, 3), gpu_memory_target_gb=target)
    est = out["resource_estimates"]["configurations"]
    assert out["configurations"]["gpu_full"]["controlnet"]["batch_size"] < 8
    assert "batch_size 8 ->" in est["gpu_full"]["controlnet"]["changed"]
    assert any("controlnet" in r.message and "batch_size 8 ->" in r.message for r in caplog.records)
    assert out["configurations"]["cpu_small"]["controlnet"]["batch_size"] == 8  # CPU preset: estimate only
    assert "changed" not in est["cpu_small"]["controlnet"]
    assert plans["configurations"]["gpu_full"]["controlnet"]["batch_size"] == 8  # the input is not mutated
    assert set(est["gpu_full"]) == {"seg", "vae", "vqvae", "ldm", "controlnet", "cls"}
    assert est["gpu_full"]["seg"]["input"] == [1, 64, 160, 160]


def test_plan_resources_records_a_stage_it_cannot_build_and_goes_on(caplog):
    """SwinUNETR on nnU-Net's 32-voxel patch of a small dataset: the seg estimate is an error entry with the
    builder's message (the trainer refuses with the same one), the other stages are still estimated."""
    gpu = gpu_full_settings()
    plans = {"configurations": {"gpu_full": copy.deepcopy(gpu)}}
    with caplog.at_level(logging.WARNING):
        out = plan_resources(plans, lambda name: copy.deepcopy(gpu), CROP, {"patch_size": [32, 32, 32]}, (1, 3))
    est = out["resource_estimates"]["configurations"]["gpu_full"]
    assert "SwinUNETR" in est["seg"]["error"] and "peak_gb" not in est["seg"]
    assert all("peak_gb" in est[s] for s in ("vae", "vqvae", "ldm", "controlnet", "cls"))
    assert any("gpu_full seg: no resource estimate" in r.message for r in caplog.records)


def test_controlnet_build_stands_in_for_a_trained_unet_and_copies_it():
    tiny = gpu_full_settings(n_vae_down=1, ldm_levels=2)
    tiny["ldm"].update(channels=[8, 16], num_res_blocks=1, norm_num_groups=8, attention_levels=[False, True],
                            num_head_channels=8)
    tiny["controlnet"].update(conditioning_embedding_num_channels=[8, 16])
    fresh = build_unet(tiny["ldm"], 4)
    out_conv = [m for m in fresh.out.modules() if isinstance(m, torch.nn.Conv3d)][-1]
    assert not out_conv.weight.any()  # MONAI's zero-initialised output layer
    names = stand_in_for_trained_unet(fresh)
    assert out_conv.weight.any() and len(names) >= 3  # output conv, residual conv2s, attention projection
    assert all(any(p.any() for p in m.parameters(recurse=False)) for n, m in fresh.named_modules()
               if list(m.parameters(recurse=False)) and hasattr(m, "reset_parameters"))
    b = build_stage("controlnet", tiny, (8, 16, 16))
    ctrl, unet = b.net.controlnet, b.net.unet
    assert not any(p.requires_grad for p in unet.parameters())
    assert torch.equal(ctrl.conv_in.conv.weight, unet.conv_in.conv.weight)  # init_controlnet_from_unet, as the trainer
    assert not any(p.any() for p in ctrl.controlnet_mid_block.parameters())  # the ControlNet's own zero convolutions stay zero


def test_estimate_accepts_either_objective():
    cfg = gpu_full_settings()
    eps, rflow = (estimate_stage("ldm", cfg, CROP, objective=o) for o in ("eps", "rflow"))
    assert eps["peak_gb"] == rflow["peak_gb"] > 1.0
    with pytest.raises(ValueError, match="objective must be one of"):
        estimate_stage("ldm", cfg, CROP, objective="v")
