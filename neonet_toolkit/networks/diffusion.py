"""NeoGen's diffusion objectives and samplers: ε prediction + DDIM, and rectified flow (MONAI ``RFlowScheduler``).

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

Rectified flow (``objective: rflow``; MAISI's sampler) with MONAI 1.6's ``RFlowScheduler``, whose
conventions were read from its source and are tested numerically here
(tests/networks/test_generative.py):

* ``add_noise(x0, n, t) = (1 - t/T)·x0 + (t/T)·n``: t = T is pure noise, t = 0 the clean sample;
* the network predicts the velocity ``v = x0 - n`` (MONAI's own example; L2 loss here, as for ε);
* ``set_timesteps(k)`` gives ``T, T(1 - 1/k), …, T/k`` (k calls); ``step(v, t, x, next_t)`` is the Euler
  step ``x + v·(t - next_t)/T`` toward ``next_t``, which must be passed explicitly (without it the step
  length is 1/k whatever the timesteps are); the last step goes to ``next_t = 0``, the clean sample;
* with ``use_discrete_timesteps`` the timesteps pass through ``float16``, exact only up to 2048, so
  ``num_train_timesteps`` above 2048 is refused;
* ``sample_timesteps`` draws from the global RNG; training here draws the same distributions from an
  explicit ``torch.Generator`` instead (uniform: ``floor(U·T)``; logit-normal: ``floor(sigmoid(N)·T)``).

:class:`DiffusionObjective` gives both objectives one training interface (``noisy`` → input, target,
timesteps); :func:`sample_latents` dispatches to the matching sampler.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from monai.networks.schedulers import DDPMScheduler, RFlowScheduler
from tqdm import tqdm

OBJECTIVES = ("eps", "rflow")
RFLOW_SAMPLE_METHODS = ("uniform", "logit-normal")
FLOAT16_EXACT_INT = 2048

# The noise schedule of LDM checkpoints written before the schedule was recorded in neonet_plans.json
# (the values the presets still use). Only stored models that lack the keys fall back to it.
RECORDED_BEFORE_PLANS = {"schedule": "scaled_linear_beta", "beta_start": 0.0015, "beta_end": 0.0195}


def make_noise_scheduler(ldm_cfg: dict):
    """MONAI DDPMScheduler (ε prediction, no clipping) holding the training noise schedule."""
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
    it = tqdm(plan, desc="DDIM", leave=False, disable=None) if progress else plan
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


# ----------------------------------------------------------------------------- rectified flow
def make_rflow_scheduler(ldm_cfg: dict) -> RFlowScheduler:
    """MONAI RFlowScheduler with discrete timesteps and no resolution-dependent timestep shift."""
    T = int(ldm_cfg["num_train_timesteps"])
    if T > FLOAT16_EXACT_INT:
        raise ValueError(f"ldm.num_train_timesteps={T}: MONAI's RFlowScheduler stores discrete timesteps as float16, "
                         f"exact only up to {FLOAT16_EXACT_INT}; use at most {FLOAT16_EXACT_INT} for objective rflow.")
    method = str(ldm_cfg.get("rflow_sample_method", "uniform"))
    if method not in RFLOW_SAMPLE_METHODS:
        raise ValueError(f"ldm.rflow_sample_method must be one of {RFLOW_SAMPLE_METHODS}, got {method!r}.")
    return RFlowScheduler(num_train_timesteps=T, use_discrete_timesteps=True, sample_method=method,
                          use_timestep_transform=False)


def rflow_timesteps(scheduler: RFlowScheduler, steps: int) -> list[tuple[int, int]]:
    """(called timestep, next timestep) per step from MONAI's ``set_timesteps``; the last next is 0."""
    steps = int(steps)
    if not 1 <= steps <= scheduler.num_train_timesteps:
        raise ValueError(f"rectified-flow sampling steps must be in [1, {scheduler.num_train_timesteps}], got {steps}.")
    scheduler.set_timesteps(steps, device="cpu")
    ts = [int(t) for t in scheduler.timesteps.tolist()]
    return list(zip(ts, ts[1:] + [0]))


@torch.no_grad()
def rflow_sample(v_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], shape, scheduler: RFlowScheduler,
                 steps: int, generator: torch.Generator, device: torch.device | str = "cpu",
                 x_T: torch.Tensor | None = None, trace: list | None = None, progress: bool = False) -> torch.Tensor:
    """Euler integration of the rectified-flow ODE from pure noise (t = T) to a clean sample (t = 0).

    ``v_fn(x_t, t)`` returns the velocity prediction ``x0 - noise`` (``t`` a (N,) long tensor); each step is
    MONAI's ``RFlowScheduler.step`` with the next timestep passed explicitly. ``steps`` = denoiser calls.
    """
    plan = rflow_timesteps(scheduler, steps)
    x = noise_like(shape, generator, device) if x_T is None else x_T.to(device=device, dtype=torch.float32)
    n = x.shape[0]
    it = tqdm(plan, desc="rectified flow", leave=False, disable=None) if progress else plan
    for t, nxt in it:
        tt = torch.full((n,), t, dtype=torch.long, device=device)
        x, _ = scheduler.step(v_fn(x, tt).float(), t, x, nxt)
        if trace is not None:
            trace.append({"t": int(t), "target": int(nxt)})
    return x


# ----------------------------------------------------------------------------- one interface for both objectives
class DiffusionObjective:
    """Training target and sampler of an LDM objective: ``eps`` (DDPM schedule, ε target, DDIM sampling) or
    ``rflow`` (rectified flow, velocity target ``x0 - noise``, Euler sampling)."""

    def __init__(self, ldm_cfg: dict, objective: str | None = None):
        self.objective = str(objective or ldm_cfg.get("objective", "eps"))
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}.")
        self.num_train_timesteps = int(ldm_cfg["num_train_timesteps"])
        if self.objective == "eps":
            self.scheduler = make_noise_scheduler(ldm_cfg)
        else:
            self.scheduler = make_rflow_scheduler(ldm_cfg)

    @property
    def sampler(self) -> str:
        return "ddim" if self.objective == "eps" else "rflow"

    def sample_timesteps(self, n: int, gen: torch.Generator) -> torch.Tensor:
        T = self.num_train_timesteps
        if self.objective == "rflow" and self.scheduler.sample_method == "logit-normal":
            return (torch.sigmoid(torch.randn((n,), generator=gen)) * T).long().clamp_(0, T - 1)
        if self.objective == "rflow":
            return (torch.rand((n,), generator=gen) * T).long().clamp_(0, T - 1)
        return torch.randint(0, T, (n,), generator=gen)

    def noisy(self, z0: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(noisy latents, regression target, timesteps) for clean latents ``z0``; noise and timesteps from ``gen``."""
        noise = torch.randn(z0.shape, generator=gen).to(z0.device)
        t = self.sample_timesteps(z0.shape[0], gen).to(z0.device)
        zt = self.scheduler.add_noise(original_samples=z0, noise=noise, timesteps=t)
        target = noise if self.objective == "eps" else z0 - noise
        return zt, target, t

    def sample(self, model_fn: Callable, shape, steps: int, generator: torch.Generator, eta: float = 0.0,
               device: torch.device | str = "cpu", progress: bool = False, trace: list | None = None) -> torch.Tensor:
        """Clean latents from noise with the objective's sampler (``steps`` denoiser calls)."""
        if self.objective == "eps":
            return ddim_sample(model_fn, shape, self.scheduler.alphas_cumprod, steps, generator, eta=eta,
                               device=device, trace=trace, progress=progress)
        if eta:
            raise ValueError("eta (stochastic DDIM) does not apply to the rectified-flow sampler; use eta 0.")
        return rflow_sample(model_fn, shape, self.scheduler, steps, generator, device=device, trace=trace,
                            progress=progress)
