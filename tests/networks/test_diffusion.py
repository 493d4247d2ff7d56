"""Rectified flow (MONAI RFlowScheduler) and the shared diffusion objective: conventions checked numerically."""
from __future__ import annotations

import pytest
import torch

from neonet_toolkit.networks.diffusion import (
    DiffusionObjective,
    make_rflow_scheduler,
    noise_like,
    rflow_sample,
    rflow_timesteps,
)

LDM = {"num_train_timesteps": 1000, "rflow_sample_method": "uniform", "schedule": "scaled_linear_beta",
       "beta_start": 0.0015, "beta_end": 0.0195}


def _exact_point_velocity(x0: torch.Tensor, calls: list):
    """Velocity E[x0 - n | x_t] of a point-mass target x0 under x_t = (1 - s) x0 + s n, s = t / T."""
    def v(x, t):
        calls.append(int(t[0]))
        s = (t.double() / 1000).view(-1, *[1] * (x.ndim - 1))
        noise = (x.double() - (1 - s) * x0.double()) / s
        return (x0.double() - noise).float()
    return v


def test_rflow_timesteps_from_monai_go_from_T_to_zero_with_explicit_next():
    sched = make_rflow_scheduler(LDM)
    assert rflow_timesteps(sched, 4) == [(1000, 750), (750, 500), (500, 250), (250, 0)]
    assert rflow_timesteps(sched, 1) == [(1000, 0)]
    plan = rflow_timesteps(sched, 1000)
    assert len(plan) == 1000 and plan[-1] == (1, 0) and all(a > b for a, b in plan)
    for bad in (0, 1001):
        with pytest.raises(ValueError):
            rflow_timesteps(sched, bad)
    with pytest.raises(ValueError, match="float16"):
        make_rflow_scheduler({**LDM, "num_train_timesteps": 4000})


@pytest.mark.parametrize("steps", [1, 2, 7, 30])
def test_rflow_with_exact_velocity_reproduces_the_target(steps):
    """Straight-line paths: Euler steps with the exact velocity land on the target whatever the step count."""
    sched = make_rflow_scheduler(LDM)
    x0 = torch.randn(3, 4, 2, 4, 4, generator=torch.Generator().manual_seed(1)) * 3 + 2
    calls, trace = [], []
    out = rflow_sample(_exact_point_velocity(x0, calls), x0.shape, sched, steps, torch.Generator().manual_seed(0),
                       trace=trace)
    assert torch.allclose(out, x0, atol=1e-5), float((out - x0).abs().max())
    assert len(calls) == steps  # one denoiser call per step
    assert [tr["t"] for tr in trace] == calls and [tr["target"] for tr in trace] == calls[1:] + [0]


def test_rflow_with_exact_gaussian_velocity_converges_to_the_transport_map():
    """Data N(m, s²): the exact flow maps the initial noise z to m + s z; Euler's error shrinks as 1/steps."""
    sched = make_rflow_scheduler(LDM)
    m, sd = 1.5, 0.3

    def v(x, t):
        s = (t.double() / 1000).view(-1, 1, 1, 1, 1)
        var = (1 - s) ** 2 * sd ** 2 + s ** 2
        d = x.double() - (1 - s) * m
        return (m + ((1 - s) * sd ** 2 - s) / var * d).float()  # E[x0 | x] - E[n | x]

    z = noise_like((2000, 1, 1, 1, 2), torch.Generator().manual_seed(0))
    errs = [float((rflow_sample(v, z.shape, sched, k, None, x_T=z) - (m + sd * z)).abs().max()) for k in (10, 100, 1000)]
    # measured: 0.218, 0.0235, 0.0024
    assert errs[0] > errs[1] > errs[2] and errs[1] < 0.03 and errs[2] < 0.003, errs


def test_objective_targets_match_monai_add_noise():
    g = torch.Generator().manual_seed(0)
    z0 = torch.randn(8, 4, 2, 4, 4, generator=g)
    rf = DiffusionObjective(LDM, "rflow")
    zt, target, t = rf.noisy(z0, torch.Generator().manual_seed(5))
    g2 = torch.Generator().manual_seed(5)
    noise = torch.randn(z0.shape, generator=g2)
    assert torch.equal(target, z0 - noise)  # velocity x0 - noise
    s = (t.float() / 1000).view(-1, 1, 1, 1, 1)
    assert torch.allclose(zt, (1 - s) * z0 + s * noise, atol=1e-6)
    assert t.dtype == torch.long and int(t.min()) >= 0 and int(t.max()) < 1000
    # moving along the target velocity from t to 0 recovers the clean latents
    assert torch.allclose(zt + target * s, z0, atol=1e-5)
    eps = DiffusionObjective(LDM, "eps")
    zt, target, t = eps.noisy(z0, torch.Generator().manual_seed(5))
    ac = eps.scheduler.alphas_cumprod[t].view(-1, 1, 1, 1, 1)
    noise = torch.randn(z0.shape, generator=torch.Generator().manual_seed(5))
    assert torch.equal(target, noise) and torch.allclose(zt, ac.sqrt() * z0 + (1 - ac).sqrt() * noise, atol=1e-6)
    assert (eps.sampler, rf.sampler) == ("ddim", "rflow")
    with pytest.raises(ValueError, match="objective"):
        DiffusionObjective(LDM, "v")
    with pytest.raises(ValueError, match="eta"):
        rf.sample(lambda x, t: x, (1, 1, 1, 1, 1), 2, torch.Generator(), eta=0.5)
    ln = DiffusionObjective({**LDM, "rflow_sample_method": "logit-normal"}, "rflow")
    t = ln.sample_timesteps(4000, torch.Generator().manual_seed(0)).float()
    assert abs(float(t.mean()) - 500) < 15 and float(((t > 250) & (t < 750)).float().mean()) > 0.6
