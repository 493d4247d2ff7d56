"""Builders for NeoGen's networks (MONAI core generative nets) and loading a fold's trained models.

The VAE is single-channel: it models channel 0 of the TLCR patch (the organ∪tumour-masked
image). Channel 1 (tumour-masked) is channel 0 times the tumour mask, so a generated patch is
``[x * roi_mask, x * tumor_mask]`` with the masks of its conditioning label patch.

Intensities: TLCR patches are nnU-Net z-scored and 0 outside the ROI. The VAE sees
``clip(x / scale, -clip, clip)`` where ``scale`` is the 99.5th percentile of ``|x|`` inside the
ROI of the fold's training patches (0 stays 0, so the masked background stays exact). The
mapping is stored in the checkpoint's ``config["input_intensity"] = {"scale": s, "clip": c}``
(also in ``extra``); use :func:`to_vae_input` / :func:`from_vae_output` with the config that
:func:`load_fold_vae` returns.

VAE checkpoint contract (``neonet_results/<ds>/vae__<plans>/fold_N/checkpoint_final.pth``,
loadable with ``weights_only=True``):
``{"network": state_dict, "config": vae stage config (+ "input_intensity"), "extra": {"scale_factor": float,
"latent_shape": [c, d, h, w], "input_intensity": {...}}, ...}``. ``scale_factor`` multiplies the
VAE posterior mean so that diffusion latents have unit standard deviation.

VQ-VAE (QNeoGen, Table 3): MONAI's ``VQVAE`` with one stride-2 level per VAE downsampling, so its
latents lie on the same grid; ``embedding_dim`` channels (the VAE's ``latent_channels`` in the presets).
Its latents for the diffusion model are the quantised embeddings (``encode_stage_2_inputs``) and a
diffusion sample is decoded with ``decode_stage_2_outputs`` (re-quantised to the nearest codes, then
decoded). Same intensity mapping and checkpoint contract as the VAE (``vqvae__<plans>/fold_N``), plus
``extra["codebook"]`` (perplexity, dead codes over the training patches). :class:`FoldAutoencoder`
gives both one interface (posterior mean/σ — σ = 0 for the VQ-VAE — and decode).

ControlNet conditioning: the full-resolution 2-channel label patch ``[roi, tumour]`` goes through
MONAI's strided conditioning embedding, which has ``len(conditioning_embedding_num_channels) - 1``
stride-2 convolutions; :func:`build_controlnet` requires ``2 ** that == vae_downsampling`` so the
embedding lands exactly on the latent grid (no nearest resize, which erases small tumours).
"""
from __future__ import annotations

import logging
from typing import Sequence

import torch
from dataclasses import dataclass

from monai.networks.nets import VQVAE, AutoencoderKL, ControlNet, DiffusionModelUNet
from monai.networks.utils import copy_model_state

from neonet_toolkit.utilities.checkpoints import load_checkpoint
from neonet_toolkit.utilities.identifiers import AUTOENCODERS, PLANS_NAME, stage_fold_folder

logger = logging.getLogger(__name__)

VAE_IN_CHANNELS = 1
CONDITIONING_CHANNELS = 2  # [organ∪tumour mask, tumour mask]


# ----------------------------------------------------------------------------- VAE
def build_vae(cfg: dict) -> AutoencoderKL:
    channels = tuple(int(c) for c in cfg["channels"])
    return AutoencoderKL(
        spatial_dims=3,
        in_channels=VAE_IN_CHANNELS,
        out_channels=VAE_IN_CHANNELS,
        channels=channels,
        latent_channels=int(cfg["latent_channels"]),
        num_res_blocks=int(cfg["num_res_blocks"]),
        norm_num_groups=int(cfg["norm_num_groups"]),
        attention_levels=tuple(bool(a) for a in cfg["attention_levels"]),
        with_encoder_nonlocal_attn=False,
        with_decoder_nonlocal_attn=False,
    )


def vae_downsampling_factor(cfg: dict) -> int:
    return 2 ** (len(cfg["channels"]) - 1)


def to_vae_input(x: torch.Tensor, config_or_intensity: dict) -> torch.Tensor:
    """Channel-0 TLCR intensities (z-scored, 0 outside the ROI) → the VAE's input range."""
    inten = config_or_intensity.get("input_intensity", config_or_intensity)
    scale, clip = float(inten["scale"]), float(inten["clip"])
    return torch.clamp(x / scale, -clip, clip)


def from_vae_output(y: torch.Tensor, config_or_intensity: dict) -> torch.Tensor:
    """Inverse of :func:`to_vae_input` (back to the z-scored intensity scale of the patches)."""
    inten = config_or_intensity.get("input_intensity", config_or_intensity)
    return y * float(inten["scale"])


class VAETrainStep(torch.nn.Module):
    """encode → reparameterise with caller-given noise → decode, as one forward (so DDP syncs it).

    ``AutoencoderKL.forward`` draws its noise from the global RNG; here the noise is an argument so
    training is reproducible with an explicit ``torch.Generator``.
    """

    def __init__(self, vae: AutoencoderKL):
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor, eps: torch.Tensor):
        z_mu, z_sigma = self.vae.encode(x)
        z = z_mu + z_sigma * eps
        return self.vae.decode(z), z_mu, z_sigma


def kl_loss(z_mu: torch.Tensor, z_sigma: torch.Tensor) -> torch.Tensor:
    kl = 0.5 * torch.sum(z_mu.pow(2) + z_sigma.pow(2) - torch.log(z_sigma.pow(2) + 1e-12) - 1,
                         dim=list(range(1, z_mu.ndim)))
    return kl.mean()


# ----------------------------------------------------------------------------- VQ-VAE
def build_vqvae(cfg: dict) -> VQVAE:
    channels = tuple(int(c) for c in cfg["channels"])
    res = tuple(int(c) for c in cfg["num_res_channels"])
    if len(res) != len(channels):
        raise ValueError(f"vqvae.num_res_channels {list(res)} must have one entry per level ({list(channels)}).")
    return VQVAE(
        spatial_dims=3,
        in_channels=VAE_IN_CHANNELS,
        out_channels=VAE_IN_CHANNELS,
        channels=channels,
        num_res_layers=int(cfg["num_res_layers"]),
        num_res_channels=res,
        # stride 2, kernel 4, padding 1: each level halves exactly (the transposed convolutions double back)
        downsample_parameters=tuple((2, 4, 1, 1) for _ in channels),
        upsample_parameters=tuple((2, 4, 1, 1, 0) for _ in channels),
        num_embeddings=int(cfg["num_embeddings"]),
        embedding_dim=int(cfg["embedding_dim"]),
        commitment_cost=float(cfg["commitment_cost"]),
        decay=float(cfg["ema_decay"]),
    )


def autoencoder_downsampling_factor(kind: str, cfg: dict) -> int:
    """Spatial downsampling of the ``vae`` (levels - 1 halvings) or ``vqvae`` (one halving per level)."""
    if kind == "vae":
        return vae_downsampling_factor(cfg)
    if kind == "vqvae":
        return 2 ** len(cfg["channels"])
    raise ValueError(f"Unknown autoencoder {kind!r}; choose one of {AUTOENCODERS}.")


def latent_channels_of(kind: str, cfg: dict) -> int:
    return int(cfg["latent_channels"] if kind == "vae" else cfg["embedding_dim"])


@torch.no_grad()
def codebook_usage(indices: torch.Tensor, num_embeddings: int) -> dict:
    """Codebook use of a set of VQ indices: perplexity (exp of the code entropy; ``num_embeddings`` at uniform
    use, 1 at collapse), the number of codes never used ("dead") and the used fraction."""
    counts = torch.bincount(indices.reshape(-1).long().cpu(), minlength=int(num_embeddings)).double()
    p = counts / counts.sum().clamp_min(1)
    perplexity = float(torch.exp(-(p[p > 0] * p[p > 0].log()).sum()))
    dead = int((counts == 0).sum())
    return {"perplexity": perplexity, "dead_codes": dead, "used_fraction": 1.0 - dead / int(num_embeddings),
            "num_embeddings": int(num_embeddings)}


class VQVAETrainStep(torch.nn.Module):
    """encode → quantise (EMA codebook update in train mode) → decode, as one forward (so DDP syncs it);
    also returns the code indices for the usage statistics."""

    def __init__(self, vqvae: VQVAE):
        super().__init__()
        self.vqvae = vqvae

    def forward(self, x: torch.Tensor):
        z = self.vqvae.encode(x)
        quantized, q_loss = self.vqvae.quantize(z)
        return self.vqvae.decode(quantized), q_loss


@dataclass
class FoldAutoencoder:
    """A fold's frozen VAE or VQ-VAE behind one interface for the latent stages and generation."""

    kind: str                 # "vae" | "vqvae"
    network: torch.nn.Module
    scale_factor: float       # multiplies the latents so that diffusion sees unit standard deviation
    config: dict              # the stage config, with "input_intensity"
    checkpoint: str

    @property
    def latent_channels(self) -> int:
        return latent_channels_of(self.kind, self.config)

    @property
    def downsampling(self) -> int:
        return autoencoder_downsampling_factor(self.kind, self.config)

    @torch.no_grad()
    def encode_posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, σ) of the latent of VAE-input-range images; the VQ-VAE's latent is its quantised
        embedding, with σ = 0."""
        if self.kind == "vae":
            return self.network.encode(x)
        e = self.network.encode_stage_2_inputs(x)
        return e, torch.zeros_like(e)

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Unscaled latents → images in the VAE input range (the VQ-VAE re-quantises first)."""
        if self.kind == "vae":
            return self.network.decode(z)
        return self.network.decode_stage_2_outputs(z)


# ----------------------------------------------------------------------------- diffusion U-Net, ControlNet
def _unet_kwargs(ldm_cfg: dict, latent_channels: int) -> dict:
    channels = tuple(int(c) for c in ldm_cfg["channels"])
    return dict(
        spatial_dims=3,
        in_channels=int(latent_channels),
        num_res_blocks=int(ldm_cfg["num_res_blocks"]),
        channels=channels,
        attention_levels=tuple(bool(a) for a in ldm_cfg["attention_levels"]),
        norm_num_groups=int(ldm_cfg["norm_num_groups"]),
        num_head_channels=int(ldm_cfg["num_head_channels"]),
    )


def build_unet(ldm_cfg: dict, latent_channels: int) -> DiffusionModelUNet:
    kw = _unet_kwargs(ldm_cfg, latent_channels)
    return DiffusionModelUNet(out_channels=int(latent_channels), **kw)


def build_controlnet(ldm_cfg: dict, cn_cfg: dict, latent_channels: int, vae_downsampling: int,
                     num_class_embeds: int | None = None) -> ControlNet:
    """A ControlNet matching the diffusion U-Net, with a conditioning embedding of stride ``vae_downsampling``.

    ``num_class_embeds=2`` adds a (PNI) class embedding to the ControlNet's time embedding; it only acts
    through the zero-initialised residual convolutions, so the pair still starts as the plain U-Net.
    """
    emb = [int(c) for c in cn_cfg["conditioning_embedding_num_channels"]]
    stride = 2 ** (len(emb) - 1)
    if stride != int(vae_downsampling):
        raise ValueError(
            f"controlnet.conditioning_embedding_num_channels={emb} gives a {stride}x strided conditioning embedding, "
            f"but the VAE downsamples by {vae_downsampling}: the full-resolution mask would not land on the latent "
            f"grid. Use {int(torch.log2(torch.tensor(float(vae_downsampling))).item()) + 1} entries.")
    kw = _unet_kwargs(ldm_cfg, latent_channels)
    return ControlNet(conditioning_embedding_in_channels=CONDITIONING_CHANNELS,
                      conditioning_embedding_num_channels=tuple(emb), num_class_embeds=num_class_embeds, **kw)


def init_controlnet_from_unet(controlnet: ControlNet, unet: DiffusionModelUNet) -> list[str]:
    """Copy every matching weight of the (frozen) U-Net into the ControlNet (zero convs stay zero)."""
    _, updated, _ = copy_model_state(controlnet, unet.state_dict(), inplace=True)
    logger.debug("ControlNet: %d tensors copied from the diffusion U-Net", len(updated))
    return list(updated)


def controlled_unet_output(unet: DiffusionModelUNet, controlnet: torch.nn.Module, x: torch.Tensor,
                           timesteps: torch.Tensor, cond: torch.Tensor, conditioning_scale: float = 1.0,
                           class_labels: torch.Tensor | None = None) -> torch.Tensor:
    """ε prediction of the frozen U-Net with ControlNet residuals from the full-resolution mask ``cond``."""
    down, mid = controlnet(x=x, timesteps=timesteps, controlnet_cond=cond, conditioning_scale=conditioning_scale,
                           class_labels=class_labels)
    return unet(x=x, timesteps=timesteps, down_block_additional_residuals=down, mid_block_additional_residual=mid)


def label_to_condition(label: torch.Tensor) -> torch.Tensor:
    """uint8 TLCR label patch(es) (…, 2, D, H, W) → float conditioning in {0, 1}."""
    return (label > 0).to(torch.float32)


# ----------------------------------------------------------------------------- fold checkpoints
def vae_checkpoint_path(dataset, fold: int, plans_name: str = PLANS_NAME):

    return stage_fold_folder(dataset, "vae", fold, plans_name) / "checkpoint_final.pth"


def stage_checkpoint_path(dataset, stage: str, fold: int, plans_name: str = PLANS_NAME):

    return stage_fold_folder(dataset, stage, fold, plans_name) / "checkpoint_final.pth"


def load_fold_vae(dataset, fold: int, device: str | torch.device = "cpu", plans_name: str = PLANS_NAME
                  ) -> tuple[AutoencoderKL, float, dict]:
    """The fold's trained VAE (eval mode), its latent scale factor and its config.

    ``config["input_intensity"]`` holds the intensity mapping (see :func:`to_vae_input`).
    """

    ckpt = load_checkpoint(vae_checkpoint_path(dataset, fold, plans_name), map_location=device)
    vae = build_vae(ckpt["config"])
    vae.load_state_dict(ckpt["network"])
    vae.to(device).eval()
    config = dict(ckpt["config"])
    extra = ckpt.get("extra", {})
    if "input_intensity" not in config and "input_intensity" in extra:
        config["input_intensity"] = dict(extra["input_intensity"])
    return vae, float(extra.get("scale_factor", 1.0)), config


def load_fold_autoencoder(dataset, fold: int, kind: str = "vae", device: str | torch.device = "cpu",
                          plans_name: str = PLANS_NAME) -> FoldAutoencoder:
    """The fold's trained ``vae`` or ``vqvae`` (frozen, eval mode) with its scale factor and config."""
    if kind == "vae":
        vae, sf, cfg = load_fold_vae(dataset, fold, device, plans_name)
        return FoldAutoencoder("vae", freeze(vae), sf, cfg, str(vae_checkpoint_path(dataset, fold, plans_name)))
    if kind != "vqvae":
        raise ValueError(f"Unknown autoencoder {kind!r}; choose one of {AUTOENCODERS}.")
    path = stage_checkpoint_path(dataset, "vqvae", fold, plans_name)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: train the fold's VQ-VAE first (`neonet_train {dataset} vqvae "
                                f"{fold}`).")
    ckpt = load_checkpoint(path, map_location=device)
    net = build_vqvae(ckpt["config"])
    net.load_state_dict(ckpt["network"])
    extra = ckpt.get("extra", {})
    config = dict(ckpt["config"])
    config.setdefault("input_intensity", dict(extra["input_intensity"]))
    return FoldAutoencoder("vqvae", freeze(net.to(device)), float(extra["scale_factor"]), config, str(path))


def freeze(module: torch.nn.Module) -> torch.nn.Module:
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def count_parameters(module: torch.nn.Module) -> int:
    return int(sum(p.numel() for p in module.parameters()))


def check_latent_divisible(latent_shape: Sequence[int], levels: int) -> None:
    m = 2 ** (int(levels) - 1)
    if any(int(s) % m for s in latent_shape):
        raise ValueError(f"Latent shape {list(latent_shape)} is not divisible by 2^(levels-1)={m} for a {levels}-level "
                         "diffusion U-Net; use fewer ldm channels entries or a larger crop.")
