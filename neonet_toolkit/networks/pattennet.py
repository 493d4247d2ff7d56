"""PattenNet: frozen NeoGen VAE encoder -> Dual Attention Blocks -> global pooling -> MLP.

Dual Attention Block (paper, Eqs. 4-5; CBAM-style, applied sequentially)::

    F' = M_c(F) * F,   M_c(F) = sigmoid(MLP(AvgPool(F)) + MLP(MaxPool(F)))      (B, C, 1, 1, 1)
    F''= M_s(F') * F', M_s(F') = sigmoid(conv7x7x7([mean_c(F'); max_c(F')]))    (B, 1, D, H, W)

``mode`` selects ``channel_spatial`` (the DAB), ``channel`` or ``spatial`` only (Table 5 ablations);
``n_dab`` = 0..3 blocks (0 = "base LDM encoder": encoder, pooling and MLP only).

Two-channel TLCR input vs. a one-channel VAE (design choice; the paper does not say)
------------------------------------------------------------------------------------
The fold's VAE models channel 0 of the TLCR patch (organ∪tumour-masked image). Channel 1 is the
same image restricted to the tumour, i.e. an image of the same intensity scale and the same kind
(a masked image with zeros outside the mask). ``input_mode``:

* ``"shared"`` (default): both channels go through the *same* frozen encoder (shared weights),
  their latents (``latent_channels`` each, multiplied by the VAE's ``scale_factor`` as in the
  LDM) are concatenated -> ``2 * latent_channels`` feature channels. No untrained weights sit in
  the frozen path, the tumour-interior texture keeps its own feature channels, and the encoder
  is exactly the fold's.
* ``"mask"``: only channel 0 is encoded; the tumour mask (``channel 1 != 0``) is average-pooled
  onto the latent grid and appended as one extra channel (``latent_channels + 1``), i.e. the
  network is told *where* the tumour is but sees its texture only through channel 0.

A trainable 1x1x1 ``adapter`` (conv + GroupNorm + GELU, ``adapter_channels`` wide; 0 disables it)
lifts the few latent channels to a width where a channel-attention MLP has something to weigh.
It is part of every variant (including 0 DABs), so the ablations differ only in the DABs.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.nets.autoencoderkl import AEKLDownsample

from neonet_toolkit.networks.generative import build_vae, to_vae_input

DAB_MODES = ("channel_spatial", "channel", "spatial")
INPUT_MODES = ("shared", "mask")


class ChannelAttention3d(nn.Module):
    """M_c = sigmoid(MLP(avgpool(F)) + MLP(maxpool(F))); returns the (B, C, 1, 1, 1) map."""

    def __init__(self, channels: int, reduction: int = 4):
        super().__init__()
        hidden = max(1, channels // max(1, int(reduction)))
        self.mlp = nn.Sequential(nn.Conv3d(channels, hidden, 1), nn.ReLU(inplace=True), nn.Conv3d(hidden, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.mlp(F.adaptive_avg_pool3d(x, 1)) + self.mlp(F.adaptive_max_pool3d(x, 1)))


class SpatialAttention3d(nn.Module):
    """M_s = sigmoid(conv_k([mean_c(F); max_c(F)])); returns the (B, 1, D, H, W) map."""

    def __init__(self, kernel_size: int = 7):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"spatial attention kernel must be odd, got {kernel_size}.")
        self.conv = nn.Conv3d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.conv(pooled))


class DualAttentionBlock(nn.Module):
    """Channel then spatial attention (or one of them, for the ablation)."""

    def __init__(self, channels: int, mode: str = "channel_spatial", reduction: int = 4, spatial_kernel: int = 7):
        super().__init__()
        if mode not in DAB_MODES:
            raise ValueError(f"Unknown DAB mode {mode!r}; choose one of {DAB_MODES}.")
        self.mode = mode
        self.channel = ChannelAttention3d(channels, reduction) if mode in ("channel_spatial", "channel") else None
        self.spatial = SpatialAttention3d(spatial_kernel) if mode in ("channel_spatial", "spatial") else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channel is not None:
            x = x * self.channel(x)
        if self.spatial is not None:
            x = x * self.spatial(x)
        return x


class FrozenVAEEncoder(nn.Module):
    """The VAE's encoder + ``quant_conv_mu`` (the LDM's E(x) = z_mu * scale_factor), frozen.

    The input goes through the VAE's own intensity mapping first (``vae_config["input_intensity"]``,
    :func:`neonet_toolkit.networks.generative.to_vae_input`), as the VAE trainer applied it.

    ``train()`` never switches it out of eval mode and it runs without autograd.
    """

    def __init__(self, vae_config: dict, scale_factor: float = 1.0, vae: nn.Module | None = None):
        super().__init__()

        src = vae if vae is not None else build_vae(vae_config)
        self.encoder = copy.deepcopy(src.encoder)
        self.quant_conv_mu = copy.deepcopy(src.quant_conv_mu)
        self.vae_config = dict(vae_config)
        # the intensity mapping the VAE was trained with (networks.generative.to_vae_input); hand-made
        # VAEs without it take the raw channel
        self.input_intensity = dict(vae_config["input_intensity"]) if "input_intensity" in vae_config else None
        self.latent_channels = int(vae_config["latent_channels"])
        self.downsampling = 2 ** (len(vae_config["channels"]) - 1)
        self.register_buffer("scale_factor", torch.tensor(float(scale_factor)))
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True):  # noqa: D102 - frozen: always eval
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            if self.input_intensity is not None:

                x = to_vae_input(x, self.input_intensity)
            return self.quant_conv_mu(self.encoder(x)) * self.scale_factor

    def forward_taps(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The latent (as :meth:`forward`) and the encoder's feature maps right after each of its
        downsampling convolutions (×2, ×4, ...), before the latent projection; no autograd."""
        with torch.no_grad():
            if self.input_intensity is not None:
                x = to_vae_input(x, self.input_intensity)
            taps = []
            for block in self.encoder.blocks:
                x = block(x)
                if isinstance(block, AEKLDownsample):
                    taps.append(x)
            return self.quant_conv_mu(x) * self.scale_factor, taps


class PattenNet(nn.Module):
    """Frozen VAE encoder -> adapter -> ``n_dab`` DABs -> [avg; max] global pooling -> MLP -> 1 logit."""

    def __init__(self, encoder: FrozenVAEEncoder, n_dab: int = 2, dab_mode: str = "channel_spatial",
                 input_mode: str = "shared", adapter_channels: int = 32, reduction: int = 4,
                 spatial_kernel: int = 7, head_hidden: int = 64, dropout: float = 0.2, in_channels: int = 2):
        super().__init__()
        if input_mode not in INPUT_MODES:
            raise ValueError(f"Unknown PattenNet input_mode {input_mode!r}; choose one of {INPUT_MODES}.")
        if not 0 <= int(n_dab) <= 8:
            raise ValueError(f"n_dab must be in 0..8, got {n_dab}.")
        if in_channels != 2:
            raise ValueError("PattenNet takes the 2-channel TLCR patch (in_channels=2).")
        self.encoder = encoder
        self.input_mode = input_mode
        lc = encoder.latent_channels
        feat = 2 * lc if input_mode == "shared" else lc + 1
        if adapter_channels:
            groups = next(g for g in (8, 4, 2, 1) if adapter_channels % g == 0)
            self.adapter = nn.Sequential(nn.Conv3d(feat, adapter_channels, 1), nn.GroupNorm(groups, adapter_channels),
                                         nn.GELU())
            feat = adapter_channels
        else:
            self.adapter = nn.Identity()
        self.dabs = nn.ModuleList(DualAttentionBlock(feat, dab_mode, reduction, spatial_kernel) for _ in range(n_dab))
        self.head = nn.Sequential(nn.Linear(2 * feat, head_hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
                                  nn.Linear(head_hidden, 1))
        self.n_dab, self.dab_mode = int(n_dab), dab_mode

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Frozen part: (B, 2, D, H, W) TLCR patch -> latent features fed to the adapter (no autograd).

        Deterministic and parameter-free w.r.t. training, so a trainer may cache it
        (:meth:`forward_latents` continues from here)."""
        if x.shape[1] != 2:
            raise ValueError(f"PattenNet expects (B, 2, D, H, W) TLCR patches, got {tuple(x.shape)}.")
        if self.input_mode == "shared":
            b = x.shape[0]
            z = self.encoder(torch.cat([x[:, :1], x[:, 1:2]], dim=0))  # one batched pass, shared weights
            return torch.cat([z[:b], z[b:]], dim=1)
        z = self.encoder(x[:, :1])
        mask = (x[:, 1:2] != 0).to(z.dtype)
        return torch.cat([z, F.adaptive_avg_pool3d(mask, z.shape[2:])], dim=1)

    def features_from_latents(self, z: torch.Tensor) -> torch.Tensor:
        f = self.adapter(z)
        for dab in self.dabs:
            f = dab(f)
        return f

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features_from_latents(self.encode(x))

    def forward_latents(self, z: torch.Tensor) -> torch.Tensor:
        """Trainable part: latents from :meth:`encode` -> 1 logit; ``forward(x) == forward_latents(encode(x))``."""
        f = self.features_from_latents(z)
        pooled = torch.cat([F.adaptive_avg_pool3d(f, 1).flatten(1), F.adaptive_max_pool3d(f, 1).flatten(1)], dim=1)
        return self.head(pooled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_latents(self.encode(x))

    def trainable_parameters(self):
        return [p for p in self.parameters() if p.requires_grad]


def _norm_act(channels: int) -> list[nn.Module]:
    groups = next(g for g in (8, 4, 2, 1) if channels % g == 0)
    return [nn.GroupNorm(groups, channels), nn.GELU()]


class FineBranch(nn.Module):
    """Trainable convolutions at the crop's own resolution (no downsampling) on the 2-channel TLCR patch,
    then [ROI-masked mean; global max] pooling: a thin cue that the ×4 latent grid averages away stays
    a few voxels wide here. Output: ``2 * channels`` features."""

    def __init__(self, channels: int = 8, in_channels: int = 2, depth: int = 3):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_channels
        for _ in range(int(depth)):
            layers += [nn.Conv3d(c_in, channels, 3, padding=1), *_norm_act(channels)]
            c_in = channels
        self.convs = nn.Sequential(*layers)
        self.out_features = 2 * channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.convs(x)
        roi = (x[:, :1] != 0).to(f.dtype)  # organ ∪ tumour: TLCR is zero outside
        mean = (f * roi).sum(dim=(2, 3, 4)) / roi.sum(dim=(2, 3, 4)).clamp_min(1.0)
        return torch.cat([mean, f.amax(dim=(2, 3, 4))], dim=1)


class FinePattenNet(nn.Module):
    """PattenNet with a fine-detail path (issue "a classifier that sees what radiomics sees").

    The paper's latent path (frozen encoder -> adapter -> DABs -> [avg; max] pooling) is kept as is
    and concatenated, before a new head, with

    * ``taps``: the frozen encoder's own feature maps at ×2 and ×4 (before the latent projection),
      each through a trainable 1×1 adapter (``fine_channels``) and [avg; max] pooling;
    * ``fine_branch``: a small trainable :class:`FineBranch` at the crop's resolution.

    The encoder stays frozen (eval mode, no autograd). Not latent-cacheable (no ``encode`` /
    ``forward_latents``): the trainer feeds images, which the trainable image branch needs anyway.
    """

    def __init__(self, encoder: FrozenVAEEncoder, taps: bool = False, fine_branch: bool = True,
                 fine_channels: int = 16, n_dab: int = 2, dab_mode: str = "channel_spatial",
                 input_mode: str = "shared", adapter_channels: int = 32, reduction: int = 4,
                 spatial_kernel: int = 7, head_hidden: int = 64, dropout: float = 0.2, in_channels: int = 2):
        super().__init__()
        if not (taps or fine_branch):
            raise ValueError("FinePattenNet needs taps and/or fine_branch; the plain model is PattenNet.")
        self.latent_path = PattenNet(encoder, n_dab, dab_mode, input_mode, adapter_channels, reduction,
                                     spatial_kernel, head_hidden, dropout, in_channels)
        n_feat = self.latent_path.head[0].in_features
        self.latent_path.head = nn.Identity()  # the latent path ends at its pooled features
        self.taps = bool(taps)
        self.tap_adapters = nn.ModuleList()
        if taps:
            widths = list(encoder.vae_config["channels"])[:-1]  # feature width after each downsampling
            mult = 2 if input_mode == "shared" else 1
            for w in widths:
                self.tap_adapters.append(nn.Sequential(nn.Conv3d(mult * int(w), fine_channels, 1),
                                                       *_norm_act(fine_channels)))
                n_feat += 2 * fine_channels
        self.fine = FineBranch(fine_channels, in_channels) if fine_branch else None
        if self.fine is not None:
            n_feat += self.fine.out_features
        self.head = nn.Sequential(nn.Linear(n_feat, head_hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
                                  nn.Linear(head_hidden, 1))

    @property
    def frozen_encoder(self) -> FrozenVAEEncoder:
        return self.latent_path.encoder

    def _latent_and_taps(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if not self.taps:
            return self.latent_path.encode(x), []
        if x.shape[1] != 2:
            raise ValueError(f"PattenNet expects (B, 2, D, H, W) TLCR patches, got {tuple(x.shape)}.")
        enc = self.frozen_encoder
        if self.latent_path.input_mode == "shared":
            b = x.shape[0]
            z, taps = enc.forward_taps(torch.cat([x[:, :1], x[:, 1:2]], dim=0))
            return torch.cat([z[:b], z[b:]], dim=1), [torch.cat([t[:b], t[b:]], dim=1) for t in taps]
        z, taps = enc.forward_taps(x[:, :1])
        mask = (x[:, 1:2] != 0).to(z.dtype)
        return torch.cat([z, F.adaptive_avg_pool3d(mask, z.shape[2:])], dim=1), taps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z, taps = self._latent_and_taps(x)
        parts = [self.latent_path.forward_latents(z)]
        for t, adapter in zip(taps, self.tap_adapters):
            f = adapter(t)
            parts += [F.adaptive_avg_pool3d(f, 1).flatten(1), F.adaptive_max_pool3d(f, 1).flatten(1)]
        if self.fine is not None:
            parts.append(self.fine(x))
        return self.head(torch.cat(parts, dim=1))

    def trainable_parameters(self):
        return [p for p in self.parameters() if p.requires_grad]
