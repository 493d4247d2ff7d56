"""gpu_full at the paper's size (96×96×48 crop, SwinUNETR fs48): one optimizer step of every stage on CPU; and the
step checks themselves on tiny networks (the LDM / ControlNet objective, the gradient check failing)."""
import pytest
import torch

from neonet_toolkit.experiment_planning.plans import gpu_full_settings
from neonet_toolkit.networks.generative import controlled_unet_output
from neonet_toolkit.training.paper_size import (
    STAGES,
    STEPS_PAST_ZERO_INIT,
    step_stage,
    train_steps,
)
from neonet_toolkit.training.resources import StageBuild, build_stage

TINY_CROP = (8, 16, 16)  # latent 4×4×8×8 with one VAE downsampling


def tiny_conf() -> dict:
    """gpu_full with tiny channels: the same network classes, a fraction of a second per step on a CPU."""
    c = gpu_full_settings(n_vae_down=1, ldm_levels=2)
    c["vae"].update(channels=[8, 16], norm_num_groups=8, attention_levels=[False, False])
    c["ldm"].update(channels=[8, 16], num_res_blocks=1, norm_num_groups=8, attention_levels=[False, True],
                    num_head_channels=8, batch_size=2)
    c["controlnet"].update(conditioning_embedding_num_channels=[8, 16], batch_size=2)
    return c


def tiny_build(stage: str, objective: str = "eps") -> StageBuild:
    torch.manual_seed(0)
    return build_stage(stage, tiny_conf(), TINY_CROP, objective=objective)


def zero_target(build: StageBuild) -> StageBuild:
    """The old step: the output regressed onto zeros, with a fresh (zero output layer) U-Net under the ControlNet."""
    def loss(m, inp):
        zt, t = inp[0], inp[2]
        if build.stage == "ldm":
            out = m(x=zt, timesteps=t)
        else:
            out = controlled_unet_output(m.unet, m.controlnet, zt, t, inp[3], class_labels=inp[4])
        return torch.nn.functional.mse_loss(out.float(), torch.zeros_like(out.float()))
    if build.stage == "controlnet":
        with torch.no_grad():
            for mod in build.net.unet.out.modules():  # MONAI's output convolution, zero as in a fresh U-Net
                if isinstance(mod, torch.nn.Conv3d):
                    mod.weight.zero_()
                    mod.bias.zero_()
    return StageBuild(build.stage, build.net, build.make_batch, loss, build.batch_size, build.input_shape)


@pytest.mark.slow
@pytest.mark.parametrize("stage", STAGES)
def test_one_paper_size_step(stage):
    r = step_stage(stage, "cpu", batch=1 if stage == "seg" else None)  # NeoSeg batch 1: fits a 24 GiB machine
    assert r["step_s"] > 0 and r["trainable_params"] > 0
    assert r["loss"] > 0
    if stage in ("ldm", "controlnet"):
        assert r["latent_shape"] == [4, 12, 24, 24]
    if stage == "pattennet":
        assert r["frozen_tensors"] > 0


def test_paper_size_step_rejects_unknown_stage():
    with pytest.raises(ValueError, match="Unknown stage"):
        step_stage("vqgan")


@pytest.mark.parametrize("stage", ["ldm", "controlnet"])
@pytest.mark.parametrize("objective", ["eps", "rflow"])
def test_diffusion_steps_train_against_the_real_objective(stage, objective):
    r = step_stage(stage, conf=tiny_conf(), crop_zyx=TINY_CROP, objective=objective, steps=STEPS_PAST_ZERO_INIT)
    assert r["objective"] == objective and r["latent_shape"] == [4, 4, 8, 8]
    # ε and x0 - noise of unit-variance latents: E[target²] = 1 (ε) or 2 (velocity); a near-zero start predicts ~0
    expected = 1.0 if objective == "eps" else 2.0
    assert all(0.5 * expected < v < 1.6 * expected for v in r["losses"])
    assert r["losses"][-1] < r["losses"][0]  # the steps train: the loss goes down
    assert r["zero_grad_tensors"] == 0  # by step 3 every trainable tensor had a non-zero gradient


def test_diffusion_batch_is_the_schedulers_noisy_latents():
    zt, target, t = tiny_build("ldm", "eps").make_batch(3, torch.device("cpu"))
    assert zt.shape == target.shape == (3, 4, 4, 8, 8) and t.dtype == torch.long and t.shape == (3,)
    assert 0 <= int(t.min()) and int(t.max()) < 1000
    assert not torch.equal(zt, target) and float(target.std()) > 0.5  # ε ~ N(0, 1), not zeros


def test_zero_target_step_is_refused():
    """The old objective: loss exactly 0.0, every gradient 0 — the check now fails on it."""
    for stage in ("ldm", "controlnet"):
        b = zero_target(tiny_build(stage))
        assert b.loss_fn(b.net, b.make_batch(2, torch.device("cpu"))).item() == 0.0  # what the H200 run recorded
        with pytest.raises(AssertionError, match="not > 0"):
            train_steps(b, torch.device("cpu"), steps=1)
        # the real objective on the same tiny networks is not identically 0
        real = tiny_build(stage)
        assert real.loss_fn(real.net, real.make_batch(2, torch.device("cpu"))).item() > 0.5


def test_controlnet_over_a_fresh_unet_trains_nothing():
    """Real target, loss > 0, but a fresh U-Net's zero output layer passes no gradient back: the check fails.
    (Why build_stage gives the frozen U-Net a trained-like output layer.)"""
    b = tiny_build("controlnet")
    with torch.no_grad():
        for mod in b.net.unet.out.modules():
            if isinstance(mod, torch.nn.Conv3d):
                mod.weight.zero_()
                mod.bias.zero_()
    with pytest.raises(AssertionError, match="every gradient is exactly zero"):
        train_steps(b, torch.device("cpu"), steps=1)


@pytest.mark.parametrize("stage", ["ldm", "controlnet"])
def test_gradient_check_fails_for_an_unused_parameter(stage):
    b = tiny_build(stage)
    target = b.net if stage == "ldm" else b.net.controlnet
    target.register_parameter("unused", torch.nn.Parameter(torch.ones(3)))
    with pytest.raises(AssertionError, match="no gradient for 1 trainable tensor"):
        train_steps(b, torch.device("cpu"), steps=1)


def test_gradient_check_fails_for_a_detached_parameter():
    b = tiny_build("ldm")
    conv = [m for m in b.net.out.modules() if isinstance(m, torch.nn.Conv3d)][-1]  # the U-Net's output convolution
    conv.forward = lambda x: torch.nn.functional.conv3d(x, conv.weight.detach(), conv.bias, conv.stride, conv.padding)
    with pytest.raises(AssertionError, match=r"no gradient for 1 trainable tensor.*out\..*weight"):
        train_steps(b, torch.device("cpu"), steps=1)


def test_gradient_check_fails_for_a_tensor_whose_gradient_stays_zero():
    b = tiny_build("ldm")
    extra = torch.nn.Parameter(torch.ones(3))
    b.net.register_parameter("dead", extra)
    loss_fn = b.loss_fn
    b.loss_fn = lambda m, inp: loss_fn(m, inp) + 0.0 * m.dead.sum()  # reached by autograd, gradient exactly 0
    r = train_steps(b, torch.device("cpu"), steps=STEPS_PAST_ZERO_INIT - 1)  # zero-init layers still warming up
    assert "dead" in r["zero_grad_tensors"]
    b2 = tiny_build("ldm")
    b2.net.register_parameter("dead", torch.nn.Parameter(torch.ones(3)))
    b2.loss_fn = lambda m, inp: loss_fn(m, inp) + 0.0 * m.dead.sum()
    with pytest.raises(AssertionError, match=r"1 trainable tensor\(s\) got only zero gradients.*dead"):
        train_steps(b2, torch.device("cpu"), steps=STEPS_PAST_ZERO_INIT)
