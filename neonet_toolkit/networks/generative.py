"""Builders for NeoGen's networks (MONAI core generative nets) and loading a fold's VAE.

The VAE is single-channel: it models channel 0 of the TLCR patch (the organ∪tumour-masked
image). Channel 1 (tumour-masked) is channel 0 times the tumour mask, so a generated patch is
``[x * roi_mask, x * tumor_mask]`` with the masks of its conditioning label patch.

VAE checkpoint contract (``neonet_results/<ds>/vae__<plans>/fold_N/checkpoint_final.pth``,
loadable with ``weights_only=True``):
``{"network": state_dict, "config": vae stage config, "extra": {"scale_factor": float,
"latent_shape": [c, d, h, w]}, ...}``.
"""
from __future__ import annotations

import torch
from monai.networks.nets import AutoencoderKL

VAE_IN_CHANNELS = 1


def build_vae(cfg: dict) -> AutoencoderKL:
    channels = tuple(int(c) for c in cfg["channels"])
    return AutoencoderKL(
        spatial_dims=3,
        in_channels=VAE_IN_CHANNELS,
        out_channels=VAE_IN_CHANNELS,
        channels=channels,
        latent_channels=int(cfg["latent_channels"]),
        num_res_blocks=int(cfg.get("num_res_blocks", 1)),
        norm_num_groups=int(cfg.get("norm_num_groups", 8)),
        attention_levels=tuple(bool(a) for a in cfg.get("attention_levels", [False] * len(channels))),
        with_encoder_nonlocal_attn=False,
        with_decoder_nonlocal_attn=False,
    )


def vae_checkpoint_path(dataset, fold: int, plans_name: str = "NeoNetPlans"):
    from neonet_toolkit.training.base import stage_fold_folder

    return stage_fold_folder(dataset, "vae", fold, plans_name) / "checkpoint_final.pth"


def load_fold_vae(dataset, fold: int, device: str | torch.device = "cpu", plans_name: str = "NeoNetPlans"
                  ) -> tuple[AutoencoderKL, float, dict]:
    """The fold's trained VAE (eval mode), its latent scale factor and its config."""
    from neonet_toolkit.training.base import load_checkpoint

    ckpt = load_checkpoint(vae_checkpoint_path(dataset, fold, plans_name), map_location=device)
    vae = build_vae(ckpt["config"])
    vae.load_state_dict(ckpt["network"])
    vae.to(device).eval()
    return vae, float(ckpt.get("extra", {}).get("scale_factor", 1.0)), dict(ckpt["config"])
