"""NeoGen's diffusion schedule and a DDIM sampler whose timestep sequence is explicit and tested.

Why not MONAI's ``DDIMScheduler``: in MONAI 1.6 ``set_timesteps(n)`` spaces the timesteps with
``linspace`` but ``step()`` still computes the previous timestep as ``t - T // n``, so a step can
target a timestep that is never called next; and ``clip_sample=True`` (the default) clamps the
predicted x0 to [-1, 1], which is wrong for latents. Here:

* :func:`ddim_timesteps` gives a strictly decreasing integer sequence ``T-1 = t_0 > … > t_{n-1} = 0``
  (n >= 2);
* step *i* predicts ε at ``t_i`` and moves the sample to ``t_{i+1}`` — exactly the timestep that
  is called next — and the last step (at t = 0) goes to the clean sample (ᾱ = 1);
* no clipping; every random draw (initial noise, η > 0 noise) comes from an explicit
  ``torch.Generator`` created on the CPU, so a seed gives the same latent on every device.

Training uses MONAI's ``DDPMScheduler`` only for its ᾱ table and ``add_noise`` (ε prediction, L2).
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

# The noise schedule of LDM checkpoints written before the schedule was recorded in neonet_plans.json
# (the values the presets still use). Only stored models that lack the keys fall back to it.
RECORDED_BEFORE_PLANS = {"schedule": "scaled_linear_beta", "beta_start": 0.0015, "beta_end": 0.0195}


def make_noise_scheduler(ldm_cfg: dict):
    """MONAI DDPMScheduler (ε prediction, no clipping) holding the training noise schedule."""
    from monai.networks.schedulers import DDPMScheduler

    cfg = {**RECORDED_BEFORE_PLANS, **ldm_cfg}
    return DDPMScheduler(
        num_train_timesteps=int(cfg["num_train_timesteps"]),
        schedule=str(cfg["schedule"]),
        beta_start=float(cfg["beta_start"]),
        beta_end=float(cfg["beta_end"]),
        clip_sample=False,
        prediction_type="epsilon",
    )


def ddim_timesteps(steps: int, num_train_timesteps: int) -> list[int]:
    """Strictly decreasing integer timesteps from ``T-1`` to ``0`` (``steps`` of them)."""
    steps, T = int(steps), int(num_train_timesteps)
    if not 2 <= steps <= T:
        raise ValueError(f"sampling steps must be in [2, {T}] (num_train_timesteps), got {steps}.")
    ts = np.round(np.linspace(T - 1, 0, steps)).astype(np.int64)
    # rounding cannot create duplicates while the spacing (T-1)/(steps-1) >= 1, which steps <= T guarantees
    assert np.all(np.diff(ts) < 0) and ts[-1] == 0
    return ts.tolist()


def ddim_plan(steps: int, num_train_timesteps: int) -> list[tuple[int, int]]:
    """(called timestep, target timestep) per step; target -1 means the clean sample."""
    ts = ddim_timesteps(steps, num_train_timesteps)
    return [(t, ts[i + 1] if i + 1 < len(ts) else -1) for i, t in enumerate(ts)]


def noise_like(shape, generator: torch.Generator, device: torch.device | str = "cpu",
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard normal noise drawn on the CPU from ``generator`` (device-independent), then moved."""
    return torch.randn(tuple(shape), generator=generator, dtype=torch.float32).to(device=device, dtype=dtype)


@torch.no_grad()
def ddim_sample(eps_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], shape, alphas_cumprod: torch.Tensor,
                steps: int, generator: torch.Generator, eta: float = 0.0, device: torch.device | str = "cpu",
                x_T: torch.Tensor | None = None, trace: list | None = None, progress: bool = False) -> torch.Tensor:
    """DDIM (Song et al. 2021) from pure noise to a clean sample.

    ``eps_fn(x_t, t)`` returns the ε prediction (``t`` is a (N,) long tensor). ``trace`` (a list)
    receives ``{"t": called, "target": target}`` for every step, for tests and logs.
    """
    ac = alphas_cumprod.detach().to(dtype=torch.float64, device="cpu")
    T = int(ac.shape[0])
    plan = ddim_plan(steps, T)
    x = noise_like(shape, generator, device) if x_T is None else x_T.to(device=device, dtype=torch.float32)
    n = x.shape[0]
    it = plan
    if progress:
        from tqdm import tqdm

        it = tqdm(plan, desc="DDIM", leave=False, disable=None)
    for t, target in it:
        a_t = float(ac[t])
        a_n = float(ac[target]) if target >= 0 else 1.0
        tt = torch.full((n,), t, dtype=torch.long, device=device)
        eps = eps_fn(x, tt).float()
        x0 = (x - math.sqrt(1.0 - a_t) * eps) / math.sqrt(a_t)
        sigma = 0.0
        if eta > 0 and target >= 0:
            sigma = eta * math.sqrt((1.0 - a_n) / (1.0 - a_t)) * math.sqrt(max(1.0 - a_t / a_n, 0.0))
        x = math.sqrt(a_n) * x0 + math.sqrt(max(1.0 - a_n - sigma ** 2, 0.0)) * eps
        if sigma > 0:
            x = x + sigma * noise_like(x.shape, generator, device)
        if trace is not None:
            trace.append({"t": int(t), "target": int(target)})
    return x
