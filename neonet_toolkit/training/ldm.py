"""NeoGen stage 1b: the fold's latent diffusion U-Net (``neonet_train DATASET ldm FOLD``).

MONAI ``DiffusionModelUNet`` trained with an L2 loss (paper eq. 1) on the latents
``scale_factor · (mean + σ · n)`` of the fold's frozen autoencoder (channel 0 of the training cases'
TLCR patches), where

* ``--autoencoder vae`` (default, the plans' ``ldm.autoencoder``): the VAE posterior (NeoGen);
  ``--autoencoder vqvae``: the VQ-VAE's quantised embeddings, σ = 0 (QNeoGen);
* ``--objective eps`` (default, the plans' ``ldm.objective``): ε prediction, sampled with DDIM;
  ``--objective rflow``: rectified-flow velocity ``x0 - noise`` (MONAI ``RFlowScheduler``), sampled with
  Euler steps (:mod:`neonet_toolkit.networks.diffusion`).

The run folder says which (:func:`neonet_toolkit.utilities.identifiers.gen_stage_dir`): ``ldm``,
``ldm_vqvae``, ``ldm_rflow``, ``ldm_vqvae_rflow``; the checkpoint's ``extra`` and the training manifest
record ``autoencoder``, ``objective`` and ``sampler`` too. The autoencoder posterior is computed once; the
reparameterisation noise, the diffusion noise and the timesteps are drawn from explicit generators every step.
"""
from __future__ import annotations

import logging

import torch

from neonet_toolkit.networks.diffusion import OBJECTIVES, DiffusionObjective
from neonet_toolkit.networks.generative import (
    build_unet,
    check_latent_divisible,
    load_fold_autoencoder,
    to_vae_input,
)
from neonet_toolkit.training.gen_common import GenTrainer, add_gen_arguments, common_kwargs
from neonet_toolkit.utilities.identifiers import AUTOENCODERS, GenRunId

logger = logging.getLogger(__name__)


@torch.no_grad()
def encode_posteriors(autoencoder, x: torch.Tensor, device, batch: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """(means, σs) of the latents of VAE-input-range images ``x`` under a :class:`FoldAutoencoder`."""
    mus, sigmas = [], []
    for s in range(0, x.shape[0], batch):
        mu, sigma = autoencoder.encode_posterior(x[s:s + batch].to(device))
        mus.append(mu.float().cpu())
        sigmas.append(sigma.float().cpu())
    return torch.cat(mus), torch.cat(sigmas)


class LatentDiffusionTrainer(GenTrainer):
    """Shared by the LDM and ControlNet trainers: frozen autoencoder latents of the fold's patches and the
    diffusion objective. ``autoencoder`` / ``objective`` default to the plans' ``ldm`` settings."""

    def __init__(self, *args, autoencoder: str | None = None, objective: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        ldm_cfg = self.plans.stage("ldm", self.configuration_name, self.device.type)
        self.autoencoder_kind = str(autoencoder or ldm_cfg["autoencoder"])
        self.objective_name = str(objective or ldm_cfg["objective"])
        self.run_id = self.make_run_id()
        self.output_folder = self.fold_output_folder(self.run_id.name)

    def make_run_id(self) -> GenRunId:
        return GenRunId(self.stage, autoencoder=self.autoencoder_kind, objective=self.objective_name)

    def load_vae_latents(self) -> None:
        ae = load_fold_autoencoder(self.layout, self.fold, self.autoencoder_kind, self.device,
                                   self.plans["plans_name"])
        self.scale_factor, self.vae_config = ae.scale_factor, ae.config
        self.vae_checkpoint = ae.checkpoint
        self.register_upstream(**{self.autoencoder_kind: ae.checkpoint})
        self.latent_channels = ae.latent_channels
        self.vae_downsampling = ae.downsampling
        self.train_mu, self.train_sigma = encode_posteriors(
            ae, to_vae_input(self.train_images[:, :1], self.vae_config), self.device)
        self.val_mu, self.val_sigma = encode_posteriors(
            ae, to_vae_input(self.val_images[:, :1], self.vae_config), self.device)
        self.latent_shape = list(self.train_mu.shape[1:])
        del ae
        self.log("%s latents: shape %s, scale_factor %.5g, scaled std %.4f", self.autoencoder_kind,
                 self.latent_shape, self.scale_factor, float(self.train_mu.std() * self.scale_factor))

    def latents(self, idx, gen, train: bool) -> torch.Tensor:
        mu = (self.train_mu if train else self.val_mu)[idx]
        sigma = (self.train_sigma if train else self.val_sigma)[idx]
        n = torch.randn(mu.shape, generator=gen)
        return ((mu + sigma * n) * self.scale_factor).to(self.device)

    def noisy(self, z0, gen):
        """(noisy latents, regression target, timesteps) under the stage's objective."""
        return self.diffusion.noisy(z0, gen)

    def provenance(self) -> dict:
        """What the run name encodes, stored in the checkpoint's extra and the training manifest."""
        return {"autoencoder": self.autoencoder_kind, "objective": self.objective_name,
                "sampler": self.diffusion.sampler, "run_name": self.run_id.name,
                "autoencoder_checkpoint": self.vae_checkpoint}


class LDMTrainer(LatentDiffusionTrainer):
    stage = "ldm"

    def setup(self) -> None:
        self.load_vae_latents()
        check_latent_divisible(self.latent_shape[1:], len(self.config["channels"]))
        self.network = build_unet(self.config, self.latent_channels).to(self.device)
        self.config["autoencoder"], self.config["objective"] = self.autoencoder_kind, self.objective_name
        self.diffusion = DiffusionObjective(self.config, self.objective_name)

    def compute_loss(self, idx, gen, train):
        z0 = self.latents(idx, gen, train)
        zt, target, t = self.noisy(z0, gen)
        pred = self.run_model(x=zt, timesteps=t)
        return torch.nn.functional.mse_loss(pred.float(), target), {}

    def extra_state(self) -> dict:
        return {"scale_factor": float(self.scale_factor), "latent_shape": list(self.latent_shape),
                "latent_channels": self.latent_channels, "vae_checkpoint": self.vae_checkpoint,
                **self.provenance()}

    def manifest_extra(self) -> dict:
        return {"vae_checkpoint": self.vae_checkpoint, **self.provenance()}


def add_latent_arguments(parser) -> None:
    parser.add_argument("--autoencoder", choices=AUTOENCODERS, default=None,
                        help="whose latents: vae (NeoGen) or vqvae (QNeoGen); default: the plans' ldm.autoencoder")
    parser.add_argument("--objective", choices=OBJECTIVES, default=None,
                        help="eps (ε prediction, DDIM) or rflow (rectified flow); default: the plans' ldm.objective")


def latent_kwargs(args) -> dict:
    return {**common_kwargs(args), "autoencoder": args.autoencoder, "objective": args.objective}


def add_arguments(parser) -> None:
    add_gen_arguments(parser)
    add_latent_arguments(parser)


def train_from_args(args):
    return LDMTrainer(**latent_kwargs(args)).run()
