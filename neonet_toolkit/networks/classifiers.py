"""NeoCls architectures by name: PattenNet (+ Table 5 ablations) and the MONAI 3D baselines of Table 2.

Names (``--arch``)::

    pattennet                      2 DABs, channel+spatial (the paper's model)
    pattennet_dab{0,1,2,3}         number of DABs (Table 5)
    pattennet_channel|_spatial     channel-only / spatial-only DABs (Table 5), combinable: pattennet_dab1_spatial
    pattennet_ms                   + multi-scale taps of the frozen encoder (×2, ×4 feature maps; fine-detail ablation)
    pattennet_fb                   + a small trainable branch at the crop's own resolution (fine-detail ablation)
    pattennet_ms_fb                both; combinable with the DAB tokens (pattennet_dab0_fb)
    pattennet_fine                 the recommended fine-detail variant (FINE_VARIANT; docs/neocls.md, "Resolution
                                   limit"): use it when the cue may be only a few voxels wide
    resnet{10,18,34,50,101,152,200}    monai.networks.nets.resnetXX, conv1_t_stride=2 (stride 1 is ~12x slower)
    densenet{121,169,201,264}          monai.networks.nets.DenseNetXXX
    efficientnet_b{0..7}               monai.networks.nets.EfficientNetBN(pretrained=False) -- MONAI's
                                       default pretrained=True silently leaves 3D nets random
    swin                               monai SwinTransformer encoder + LayerNorm/avg-pool/linear head

Every network maps a (B, 2, *crop) TLCR patch to one logit (B, 1).
"""
from __future__ import annotations

import re

import torch
import torch.nn as nn
import torch.nn.functional as F

from neonet_toolkit.networks.pattennet import FinePattenNet, FrozenVAEEncoder, PattenNet

RESNETS = (10, 18, 34, 50, 101, 152, 200)
DENSENETS = (121, 169, 201, 264)
EFFICIENTNETS = tuple(range(8))
TABLE2_ARCHS = ("resnet50", "resnet101", "resnet152", "resnet200", "densenet121", "densenet169", "densenet201",
                "densenet264", "efficientnet_b0", "efficientnet_b1", "efficientnet_b2", "efficientnet_b3", "swin",
                "pattennet")
FINE_ARCHS = ("pattennet_ms", "pattennet_fb", "pattennet_ms_fb", "pattennet_fine")
TABLE5_ARCHS = ("pattennet", "pattennet_channel", "pattennet_spatial", "pattennet_dab0", "pattennet_dab1",
                "pattennet_dab3") + FINE_ARCHS  # fine-detail rows: extended Table 5
# the fine-detail variant registered as ``pattennet_fine``: chosen on the tuning seeds of the thin-cue
# phantom only, then frozen (docs/neocls.md, "Resolution limit")
FINE_VARIANT = {"taps": False, "fine_branch": True}
PRETTY = {**{f"resnet{d}": f"ResNet-{d}" for d in RESNETS}, **{f"densenet{d}": f"DenseNet-{d}" for d in DENSENETS},
          **{f"efficientnet_b{i}": f"EfficientNet-B{i}" for i in EFFICIENTNETS}, "swin": "SwinTransformer",
          "pattennet": "PattenNet", "pattennet_channel": "PattenNet w/ channel attention only",
          "pattennet_spatial": "PattenNet w/ spatial attention only", "pattennet_dab0": "PattenNet 0 DABs (base encoder)",
          "pattennet_dab1": "PattenNet 1 DAB", "pattennet_dab2": "PattenNet 2 DABs", "pattennet_dab3": "PattenNet 3 DABs",
          "pattennet_ms": "PattenNet + multi-scale encoder taps", "pattennet_fb": "PattenNet + fine branch",
          "pattennet_ms_fb": "PattenNet + taps + fine branch", "pattennet_fine": "PattenNet-fine",
          "radiomics": "Radiomics + logistic regression",
          "fusion": "Late fusion (radiomics + PattenNet-fine scores)"}


PAPER_N_DAB, PAPER_DAB_MODE = 2, "channel_spatial"  # what the name 'pattennet' means


def parse_arch(arch: str, cfg: dict | None = None) -> dict:
    """Resolve an architecture name to {'family': ..., plus family options}. Raises ValueError on unknown names."""
    cfg = cfg or {}
    a = arch.lower().strip()
    if a == "pattennet_fine":
        return {"family": "pattennet", "n_dab": int(cfg.get("n_dab", PAPER_N_DAB)),
                "dab_mode": str(cfg.get("dab_mode", PAPER_DAB_MODE)), **FINE_VARIANT, "registered": "pattennet_fine"}
    if a.startswith("pattennet"):
        # without settings (naming, canonical_arch) the name means the paper's model: 2 DABs, channel+spatial
        n_dab, mode = int(cfg.get("n_dab", PAPER_N_DAB)), str(cfg.get("dab_mode", PAPER_DAB_MODE))
        taps = fine_branch = False
        for tok in [t for t in a[len("pattennet"):].split("_") if t]:
            m = re.fullmatch(r"dab(\d)", tok)
            if m:
                n_dab = int(m.group(1))
            elif tok in ("channel", "spatial"):
                mode = tok
            elif tok == "ms":
                taps = True
            elif tok == "fb":
                fine_branch = True
            else:
                raise ValueError(f"Unknown PattenNet variant {tok!r} in {arch!r}; use _dabN, _channel, _spatial, "
                                 "_ms (encoder taps), _fb (fine branch), or pattennet_fine.")
        out = {"family": "pattennet", "n_dab": n_dab, "dab_mode": mode}  # the paper's model: exactly these keys
        if taps or fine_branch:
            out.update(taps=taps, fine_branch=fine_branch)
        return out
    m = re.fullmatch(r"resnet(\d+)", a)
    if m and int(m.group(1)) in RESNETS:
        return {"family": "resnet", "depth": int(m.group(1))}
    m = re.fullmatch(r"densenet(\d+)", a)
    if m and int(m.group(1)) in DENSENETS:
        return {"family": "densenet", "depth": int(m.group(1))}
    m = re.fullmatch(r"efficientnet[-_]b(\d)", a)
    if m and int(m.group(1)) in EFFICIENTNETS:
        return {"family": "efficientnet", "variant": int(m.group(1))}
    if a in ("swin", "swintransformer", "swin_transformer"):
        return {"family": "swin"}
    raise ValueError(
        f"Unknown classifier architecture {arch!r}. Choose pattennet[_dabN][_channel|_spatial], "
        f"resnet{{{','.join(map(str, RESNETS))}}}, densenet{{{','.join(map(str, DENSENETS))}}}, "
        "efficientnet_b0..b7 or swin."
    )


# what the bare name ``pattennet`` stands for in run names (the paper's model); the built network's
# DAB settings come from the plans (cls.n_dab, cls.dab_mode)
NAMING_PATTENNET = {"n_dab": 2, "dab_mode": "channel_spatial"}


def canonical_arch(arch: str) -> str:
    """Folder-safe canonical name (e.g. 'EfficientNet-B0' -> 'efficientnet_b0', 'pattennet_dab2' -> 'pattennet')."""
    info = parse_arch(arch, NAMING_PATTENNET)
    fam = info["family"]
    if fam == "pattennet":
        if info.get("registered"):
            return info["registered"]
        name = "pattennet"
        if info["n_dab"] != 2:
            name += f"_dab{info['n_dab']}"
        if info["dab_mode"] != "channel_spatial":
            name += f"_{info['dab_mode']}"
        name += "_ms" if info.get("taps") else ""
        return name + ("_fb" if info.get("fine_branch") else "")
    if fam == "resnet":
        return f"resnet{info['depth']}"
    if fam == "densenet":
        return f"densenet{info['depth']}"
    if fam == "efficientnet":
        return f"efficientnet_b{info['variant']}"
    return "swin"


def needs_vae(arch: str) -> bool:
    return parse_arch(arch, NAMING_PATTENNET)["family"] == "pattennet"


class SwinClassifier(nn.Module):
    """MONAI's 3D Swin transformer encoder (as in SwinUNETR) + LayerNorm, global average pooling, linear."""

    def __init__(self, in_channels: int = 2, feature_size: int = 24, depths=(2, 2, 2, 2), num_heads=(3, 6, 12, 24),
                 window_size: int = 7, dropout: float = 0.0):
        super().__init__()
        from monai.networks.nets.swin_unetr import SwinTransformer

        self.encoder = SwinTransformer(in_chans=in_channels, embed_dim=feature_size, window_size=(window_size,) * 3,
                                       patch_size=(2, 2, 2), depths=tuple(depths), num_heads=tuple(num_heads),
                                       spatial_dims=3, drop_path_rate=0.0)
        out = feature_size * 2 ** len(depths)
        self.norm = nn.LayerNorm(out)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.encoder(x, normalize=True)[-1]
        f = F.adaptive_avg_pool3d(f, 1).flatten(1)
        return self.fc(self.drop(self.norm(f)))


class PadToMinimum(nn.Module):
    """Zero-pads (symmetrically) every spatial side below ``min_size`` before ``net``.

    TLCR patches are zero outside the ROI, so zero padding adds nothing the patch did not already
    have. DenseNet's and EfficientNet's 32x downsampling needs >= 32 voxels per side (the phantom's crop
    has 16 slices); at the paper's 96x96x48 this is a no-op.
    """

    def __init__(self, net: nn.Module, min_size: int):
        super().__init__()
        self.net, self.min_size = net, int(min_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = []
        for s in reversed(x.shape[2:]):
            extra = max(0, self.min_size - int(s))
            pad += [extra // 2, extra - extra // 2]
        if any(pad):
            x = F.pad(x, pad)
        return self.net(x)


def build_classifier(arch: str, cfg: dict | None = None, in_channels: int = 2, vae_config: dict | None = None,
                     scale_factor: float = 1.0, vae: nn.Module | None = None) -> nn.Module:
    """Instantiate ``arch``. PattenNet needs the fold's VAE (``vae`` + its config, or only the
    config when the weights will be loaded from a classifier checkpoint)."""
    cfg = dict(cfg or {})
    info = parse_arch(arch, cfg)
    fam = info["family"]
    if fam == "pattennet":

        if vae_config is None:
            raise ValueError("PattenNet needs the fold's VAE: train the VAE stage of this fold first.")
        enc = FrozenVAEEncoder(vae_config, scale_factor, vae=vae)
        if info.get("taps") or info.get("fine_branch"):
            return FinePattenNet(enc, taps=bool(info.get("taps")), fine_branch=bool(info.get("fine_branch")),
                                 fine_channels=int(cfg["fine_channels"]), n_dab=info["n_dab"],
                                 dab_mode=info["dab_mode"], input_mode=cfg["input_mode"],
                                 adapter_channels=int(cfg["adapter_channels"]), reduction=int(cfg["reduction"]),
                                 spatial_kernel=int(cfg["spatial_kernel"]), head_hidden=int(cfg["head_hidden"]),
                                 dropout=float(cfg["dropout"]), in_channels=in_channels)
        return PattenNet(enc, n_dab=info["n_dab"], dab_mode=info["dab_mode"], input_mode=cfg["input_mode"],
                         adapter_channels=int(cfg["adapter_channels"]), reduction=int(cfg["reduction"]),
                         spatial_kernel=int(cfg["spatial_kernel"]), head_hidden=int(cfg["head_hidden"]),
                         dropout=float(cfg["dropout"]), in_channels=in_channels)
    if fam == "resnet":
        from monai.networks import nets

        fn = getattr(nets, f"resnet{info['depth']}")
        return fn(spatial_dims=3, n_input_channels=in_channels, num_classes=1,
                  conv1_t_stride=int(cfg["resnet_conv1_stride"]))
    if fam == "densenet":
        from monai.networks import nets

        cls = getattr(nets, f"DenseNet{info['depth']}")
        return PadToMinimum(cls(spatial_dims=3, in_channels=in_channels, out_channels=1), 32)
    if fam == "efficientnet":
        from monai.networks.nets import EfficientNetBN

        return PadToMinimum(EfficientNetBN(f"efficientnet-b{info['variant']}", pretrained=False, spatial_dims=3,
                                           in_channels=in_channels, num_classes=1), 32)
    return SwinClassifier(in_channels, feature_size=int(cfg["swin_feature_size"]))
