"""NeoGen stage 1a: the fold's VAE (``neonet_train DATASET vae FOLD``).

MONAI ``AutoencoderKL`` on channel 0 of the TLCR patches of the fold's training cases, loss
``L1(x̂, x) + kl_weight · KL`` (paper: kl_weight 1e-7). After the last epoch the latent
``scale_factor = 1 / std(z_mu)`` over the training patches is computed and stored in the
checkpoint's ``extra`` (see :mod:`neonet_toolkit.networks.generative` for the contract).
"""
from __future__ import annotations

import logging

import torch
from monai.metrics import PSNRMetric

from neonet_toolkit.networks.generative import VAETrainStep, build_vae, kl_loss, to_vae_input
from neonet_toolkit.training.gen_common import GenTrainer, add_gen_arguments, common_kwargs, compute_input_intensity

logger = logging.getLogger(__name__)


class VAETrainer(GenTrainer):
    stage = "vae"

    def setup(self) -> None:
        if "input_intensity" not in self.config:
            self.config["input_intensity"] = compute_input_intensity(self.train_images, self.train_labels)
        self.log("%s input intensity mapping: %s", self.stage, self.config["input_intensity"])
        self.build_network()
        self.x_train = to_vae_input(self.train_images[:, :1], self.config)
        self.x_val = to_vae_input(self.val_images[:, :1], self.config)
        self.scale_factor = None
        self.latent_shape = None

    def build_network(self) -> None:
        self.network = build_vae(self.config).to(self.device)
        self.step_module = VAETrainStep(self.network)

    def trainable(self) -> torch.nn.Module:
        return self.step_module

    def latent_mean(self, x: torch.Tensor) -> torch.Tensor:
        """The latent the diffusion stages see (before scaling): the posterior mean."""
        return self.network.encode(x)[0]

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.network.decode(self.latent_mean(x))

    def compute_loss(self, idx, gen, train):
        x = (self.x_train if train else self.x_val)[idx].to(self.device)
        lat = self._latent_shape_for(x)
        eps = torch.randn((x.shape[0], *lat), generator=gen).to(self.device)
        recon, z_mu, z_sigma = self.run_model(x, eps)
        l1 = torch.nn.functional.l1_loss(recon.float(), x)
        kl = kl_loss(z_mu.float(), z_sigma.float())
        loss = l1 + float(self.config["kl_weight"]) * kl
        return loss, {"l1": l1.detach(), "kl": kl.detach()}

    def _latent_shape_for(self, x: torch.Tensor) -> tuple:
        f = 2 ** (len(self.config["channels"]) - 1)
        return (int(self.config["latent_channels"]), *[s // f for s in x.shape[2:]])

    @torch.no_grad()
    def compute_scale_factor(self) -> float:
        self.network.eval()
        sq, n, mean_acc = 0.0, 0, 0.0
        for s in range(0, len(self.my_items), 4):
            idx = torch.tensor(self.my_items[s:s + 4], dtype=torch.long)
            z = self.latent_mean(self.x_train[idx].to(self.device)).float()
            sq += float((z ** 2).sum())
            mean_acc += float(z.sum())
            n += z.numel()
            self.latent_shape = list(z.shape[1:])
        ez2 = self.dist.mean(sq / n)
        ez = self.dist.mean(mean_acc / n)
        std = max((ez2 - ez ** 2), 1e-12) ** 0.5
        return float(1.0 / std)

    def after_epoch(self, epoch: int) -> None:
        if epoch == self.num_epochs - 1 or self.scale_factor is None:
            self.scale_factor = self.compute_scale_factor()

    def validate(self, epoch: int) -> dict:
        out = super().validate(epoch)
        if "val_loss" in out:
            out.update(self._val_psnr())
        out["scale_factor"] = float(self.scale_factor) if self.scale_factor else float("nan")
        return out

    @torch.no_grad()
    def _val_psnr(self) -> dict:

        self.network.eval()
        rec = []
        for s in range(0, len(self.val_ids), 4):
            rec.append(self.reconstruct(self.x_val[s:s + 4].to(self.device)).float().cpu())
        rec = torch.cat(rec)
        rng = float(self.x_val.max() - self.x_val.min())
        return {"val_psnr": float(PSNRMetric(max_val=float(rng), reduction="none")(rec.float(), self.x_val.float()).mean())}

    def extra_state(self) -> dict:
        return {"scale_factor": float(self.scale_factor) if self.scale_factor else 1.0,
                "latent_shape": self.latent_shape or [],
                "input_intensity": dict(self.config["input_intensity"])}

    def load_extra_state(self, state: dict) -> None:
        if state.get("scale_factor"):
            self.scale_factor = float(state["scale_factor"])
        if state.get("latent_shape"):
            self.latent_shape = list(state["latent_shape"])

    def manifest_extra(self) -> dict:
        return {"input_intensity": self.config["input_intensity"]}

    def finish(self) -> None:
        self.log("scale_factor=%.6g latent_shape=%s", self.scale_factor or 1.0, self.latent_shape)


def add_arguments(parser) -> None:
    add_gen_arguments(parser)


def train_from_args(args):
    return VAETrainer(**common_kwargs(args)).run()
