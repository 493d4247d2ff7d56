"""NeoGen stage 2: the fold's ControlNet (``neonet_train DATASET controlnet FOLD``).

The diffusion U-Net of stage 1 is frozen. MONAI's ``ControlNet`` is initialised from it
(``copy_model_state``; the zero-initialised residual convolutions make the pair reproduce the
U-Net exactly at the start) and conditioned on the **full-resolution** 2-channel label patch
``[roi, tumour]`` through its strided conditioning embedding, whose stride equals the VAE
downsampling so its output lands exactly on the latent grid (MONAI's
``ControlNetLatentDiffusionInferer`` would nearest-resize the mask instead and erase small
tumours). ``--conditioning mask_class`` (NeoNet's default, the plans' ``class_conditional: true``): the
ControlNet also receives the case's PNI label through a class embedding, so synthetic positives and
negatives differ beyond the mask; ``--conditioning mask``: the anatomical mask only, as in the paper.
Loss: L2 between the controlled prediction and the target of the objective (ε or rectified-flow velocity).

``--autoencoder`` / ``--objective`` pick the LDM it is built on (the same latents and objective); the run
folder says which, e.g. ``controlnet``, ``controlnet_maskonly``, ``controlnet_vqvae_rflow``
(:func:`neonet_toolkit.utilities.identifiers.gen_stage_dir`), and so do the checkpoint and the manifest.
"""
from __future__ import annotations

import logging

import torch

from neonet_toolkit.networks.diffusion import DiffusionObjective
from neonet_toolkit.networks.generative import (
    build_controlnet,
    build_unet,
    controlled_unet_output,
    freeze,
    init_controlnet_from_unet,
    label_to_condition,
    stage_checkpoint_path,
)
from neonet_toolkit.training.gen_common import add_gen_arguments
from neonet_toolkit.training.ldm import LatentDiffusionTrainer, add_latent_arguments, latent_kwargs
from neonet_toolkit.utilities.checkpoints import check_upstream, load_checkpoint
from neonet_toolkit.utilities.identifiers import CONDITIONINGS, GenRunId

logger = logging.getLogger(__name__)


class ControlNetTrainer(LatentDiffusionTrainer):
    stage = "controlnet"

    def __init__(self, *args, conditioning: str | None = None, **kwargs):
        if conditioning is not None and conditioning not in CONDITIONINGS:
            raise ValueError(f"conditioning must be one of {CONDITIONINGS}, got {conditioning!r}.")
        self._conditioning_arg = conditioning
        super().__init__(*args, **kwargs)

    def make_run_id(self) -> GenRunId:
        self.conditioning = self._conditioning_arg or ("mask_class" if self.config["class_conditional"] else "mask")
        self.config["class_conditional"] = self.conditioning == "mask_class"
        return GenRunId("controlnet", autoencoder=self.autoencoder_kind, objective=self.objective_name,
                        conditioning=self.conditioning)

    def setup(self) -> None:
        self.load_vae_latents()
        ldm_dir = self.run_id.upstream("ldm").name
        ldm_path = stage_checkpoint_path(self.layout, ldm_dir, self.fold, self.plans["plans_name"])
        if not ldm_path.is_file():
            raise FileNotFoundError(
                f"{ldm_path} not found: the ControlNet ({self.run_id.name}) is built on the LDM of the same "
                f"autoencoder and objective. Train it first: `neonet_train {self.dataset_name} ldm {self.fold} "
                f"--autoencoder {self.autoencoder_kind} --objective {self.objective_name}`.")
        ldm = load_checkpoint(ldm_path, self.device)
        check_upstream(ldm.get("upstream"), {self.autoencoder_kind: self.vae_checkpoint},
                       f"LDM fold {self.fold} ({ldm_path})",
                       f"Retrain it: `neonet_train {self.dataset_name} ldm {self.fold} --autoencoder "
                       f"{self.autoencoder_kind} --objective {self.objective_name} --overwrite`.")
        self.register_upstream(ldm=ldm_path)
        self.ldm_config = dict(ldm["config"])
        self.ldm_checkpoint = str(ldm_path)
        self.unet = build_unet(self.ldm_config, self.latent_channels).to(self.device)
        self.unet.load_state_dict(ldm["network"])
        freeze(self.unet)
        self.class_conditional = self.conditioning == "mask_class"
        self.network = build_controlnet(self.ldm_config, self.config, self.latent_channels, self.vae_downsampling,
                                        num_class_embeds=2 if self.class_conditional else None).to(self.device)
        init_controlnet_from_unet(self.network, self.unet)  # a resumed checkpoint then overwrites it
        self.diffusion = DiffusionObjective(self.ldm_config, self.objective_name)
        self.train_cond = label_to_condition(self.train_labels)
        self.val_cond = label_to_condition(self.val_labels)

    def compute_loss(self, idx, gen, train):
        z0 = self.latents(idx, gen, train)
        zt, target, t = self.noisy(z0, gen)
        cond = (self.train_cond if train else self.val_cond)[idx].to(self.device)
        cls = (self.train_classes if train else self.val_classes)[idx].to(self.device) \
            if self.class_conditional else None
        ctrl = self.ddp_model if self.network.training else self.network
        pred = controlled_unet_output(self.unet, ctrl, zt, t, cond, class_labels=cls)
        return torch.nn.functional.mse_loss(pred.float(), target), {}

    def extra_state(self) -> dict:
        return {"scale_factor": float(self.scale_factor), "latent_shape": list(self.latent_shape),
                "latent_channels": self.latent_channels, "vae_checkpoint": self.vae_checkpoint,
                "ldm_checkpoint": self.ldm_checkpoint, "ldm_config": self.ldm_config,
                "class_conditional": self.class_conditional, "conditioning": self.conditioning,
                "vae_downsampling": int(self.vae_downsampling), **self.provenance()}

    def manifest_extra(self) -> dict:
        return {"vae_checkpoint": self.vae_checkpoint, "ldm_checkpoint": self.ldm_checkpoint,
                "conditioning": self.conditioning, **self.provenance()}


def add_arguments(parser) -> None:
    add_gen_arguments(parser)
    add_latent_arguments(parser)
    parser.add_argument("--conditioning", choices=CONDITIONINGS, default=None,
                        help="mask_class: anatomical mask + PNI label (NeoNet default); mask: the mask only (the "
                             "paper); default: the plans' controlnet.class_conditional")


def train_from_args(args):
    return ControlNetTrainer(**latent_kwargs(args), conditioning=args.conditioning).run()
