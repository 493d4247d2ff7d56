"""NeoGen stage 2: the fold's ControlNet (``neonet_train DATASET controlnet FOLD``).

The diffusion U-Net of stage 1 is frozen. MONAI's ``ControlNet`` is initialised from it
(``copy_model_state``; the zero-initialised residual convolutions make the pair reproduce the
U-Net exactly at the start) and conditioned on the **full-resolution** 2-channel label patch
``[roi, tumour]`` through its strided conditioning embedding, whose stride equals the VAE
downsampling so its output lands exactly on the latent grid (MONAI's
``ControlNetLatentDiffusionInferer`` would nearest-resize the mask instead and erase small
tumours). Optionally (``class_conditional``, on by default) the ControlNet also receives the case's
PNI label through a class embedding, so synthetic positives and negatives differ beyond the mask.
Loss: L2 between the controlled ε prediction and the noise.
"""
from __future__ import annotations

import logging

import torch

from neonet_toolkit.networks.diffusion import make_noise_scheduler
from neonet_toolkit.networks.generative import (
    build_controlnet,
    build_unet,
    controlled_unet_output,
    freeze,
    init_controlnet_from_unet,
    label_to_condition,
    stage_checkpoint_path,
)
from neonet_toolkit.training.gen_common import add_gen_arguments, common_kwargs
from neonet_toolkit.training.ldm import LatentDiffusionTrainer
from neonet_toolkit.utilities.checkpoints import check_upstream, load_checkpoint

logger = logging.getLogger(__name__)


class ControlNetTrainer(LatentDiffusionTrainer):
    stage = "controlnet"

    def setup(self) -> None:
        self.load_vae_latents()
        ldm_path = stage_checkpoint_path(self.dataset_name, "ldm", self.fold, self.plans["plans_name"])
        ldm = load_checkpoint(ldm_path, self.device)
        check_upstream(ldm.get("upstream"), {"vae": self.vae_checkpoint}, f"LDM fold {self.fold} ({ldm_path})",
                       f"Retrain it: `neonet_train {self.dataset_name} ldm {self.fold} --overwrite`.")
        self.register_upstream(ldm=ldm_path)
        self.ldm_config = dict(ldm["config"])
        self.ldm_checkpoint = str(ldm_path)
        self.unet = build_unet(self.ldm_config, self.latent_channels).to(self.device)
        self.unet.load_state_dict(ldm["network"])
        freeze(self.unet)
        vae_down = int(self.plans["latent"]["vae_downsampling"])
        self.class_conditional = bool(self.config["class_conditional"])
        self.network = build_controlnet(self.ldm_config, self.config, self.latent_channels, vae_down,
                                        num_class_embeds=2 if self.class_conditional else None).to(self.device)
        init_controlnet_from_unet(self.network, self.unet)  # a resumed checkpoint then overwrites it
        self.scheduler = make_noise_scheduler(self.ldm_config)
        self.train_cond = label_to_condition(self.train_labels)
        self.val_cond = label_to_condition(self.val_labels)

    def compute_loss(self, idx, gen, train):
        z0 = self.latents(idx, gen, train)
        zt, noise, t = self.noisy(z0, gen)
        cond = (self.train_cond if train else self.val_cond)[idx].to(self.device)
        cls = (self.train_classes if train else self.val_classes)[idx].to(self.device) \
            if self.class_conditional else None
        ctrl = self.ddp_model if self.network.training else self.network
        eps = controlled_unet_output(self.unet, ctrl, zt, t, cond, class_labels=cls)
        return torch.nn.functional.mse_loss(eps.float(), noise), {}

    def extra_state(self) -> dict:
        return {"scale_factor": float(self.scale_factor), "latent_shape": list(self.latent_shape),
                "latent_channels": self.latent_channels, "vae_checkpoint": self.vae_checkpoint,
                "ldm_checkpoint": self.ldm_checkpoint, "ldm_config": self.ldm_config,
                "class_conditional": self.class_conditional,
                "vae_downsampling": int(self.plans["latent"]["vae_downsampling"])}

    def manifest_extra(self) -> dict:
        return {"vae_checkpoint": self.vae_checkpoint, "ldm_checkpoint": self.ldm_checkpoint}


def add_arguments(parser) -> None:
    add_gen_arguments(parser)


def train_from_args(args):
    return ControlNetTrainer(**common_kwargs(args)).run()
