"""NeoGen stage 1b: the fold's latent diffusion U-Net (``neonet_train DATASET ldm FOLD``).

MONAI ``DiffusionModelUNet`` trained with ε prediction and an L2 loss (paper eq. 1) on the latents
``scale_factor · (z_mu + z_sigma · n)`` of the frozen fold VAE (channel 0 of the training cases'
TLCR patches). The VAE posterior is computed once; the reparameterisation noise, the diffusion
noise and the timesteps are drawn from explicit generators every step.
"""
from __future__ import annotations

import logging

import torch

from neonet_toolkit.networks.diffusion import make_noise_scheduler
from neonet_toolkit.networks.generative import (
    build_unet,
    check_latent_divisible,
    freeze,
    load_fold_vae,
    to_vae_input,
    vae_checkpoint_path,
)
from neonet_toolkit.training.gen_common import GenTrainer, add_gen_arguments, common_kwargs

logger = logging.getLogger(__name__)


@torch.no_grad()
def encode_posteriors(vae, x: torch.Tensor, device, batch: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    mus, sigmas = [], []
    for s in range(0, x.shape[0], batch):
        mu, sigma = vae.encode(x[s:s + batch].to(device))
        mus.append(mu.float().cpu())
        sigmas.append(sigma.float().cpu())
    return torch.cat(mus), torch.cat(sigmas)


class LatentDiffusionTrainer(GenTrainer):
    """Shared by the LDM and ControlNet trainers: frozen VAE latents of the fold's patches."""

    def load_vae_latents(self) -> None:
        vae_ckpt = vae_checkpoint_path(self.dataset_name, self.fold, self.plans["plans_name"])
        vae, self.scale_factor, self.vae_config = load_fold_vae(self.dataset_name, self.fold, self.device,
                                                                self.plans["plans_name"])
        self.vae_checkpoint = str(vae_ckpt)
        self.register_upstream(vae=vae_ckpt)
        freeze(vae)
        self.latent_channels = int(self.vae_config["latent_channels"])
        self.train_mu, self.train_sigma = encode_posteriors(
            vae, to_vae_input(self.train_images[:, :1], self.vae_config), self.device)
        self.val_mu, self.val_sigma = encode_posteriors(
            vae, to_vae_input(self.val_images[:, :1], self.vae_config), self.device)
        self.latent_shape = list(self.train_mu.shape[1:])
        del vae
        self.log("VAE latents: shape %s, scale_factor %.5g, scaled std %.4f", self.latent_shape, self.scale_factor,
                 float(self.train_mu.std() * self.scale_factor))

    def latents(self, idx, gen, train: bool) -> torch.Tensor:
        mu = (self.train_mu if train else self.val_mu)[idx]
        sigma = (self.train_sigma if train else self.val_sigma)[idx]
        n = torch.randn(mu.shape, generator=gen)
        return ((mu + sigma * n) * self.scale_factor).to(self.device)

    def noisy(self, z0, gen):
        noise = torch.randn(z0.shape, generator=gen).to(self.device)
        t = torch.randint(0, self.scheduler.num_train_timesteps, (z0.shape[0],), generator=gen).to(self.device)
        return self.scheduler.add_noise(original_samples=z0, noise=noise, timesteps=t), noise, t


class LDMTrainer(LatentDiffusionTrainer):
    stage = "ldm"

    def setup(self) -> None:
        self.load_vae_latents()
        check_latent_divisible(self.latent_shape[1:], len(self.config["channels"]))
        self.network = build_unet(self.config, self.latent_channels).to(self.device)
        self.scheduler = make_noise_scheduler(self.config)

    def compute_loss(self, idx, gen, train):
        z0 = self.latents(idx, gen, train)
        zt, noise, t = self.noisy(z0, gen)
        eps = self.run_model(x=zt, timesteps=t)
        return torch.nn.functional.mse_loss(eps.float(), noise), {}

    def extra_state(self) -> dict:
        return {"scale_factor": float(self.scale_factor), "latent_shape": list(self.latent_shape),
                "latent_channels": self.latent_channels, "vae_checkpoint": self.vae_checkpoint}

    def manifest_extra(self) -> dict:
        return {"vae_checkpoint": self.vae_checkpoint}


def add_arguments(parser) -> None:
    add_gen_arguments(parser)


def train_from_args(args):
    return LDMTrainer(**common_kwargs(args)).run()
