"""NeoSeg networks: MONAI's SwinUNETR, U-Net, SegResNet and DynUNet, sized from nnU-Net's plans.

Nothing here re-implements a network: each builder maps nnU-Net's configuration (patch size,
per-stage strides and kernels, features per stage) and the NeoSeg settings of
``neonet_plans.json`` to the MONAI constructor. None of these networks is built with deep
supervision (see :mod:`neonet_toolkit.training.seg.trainers`).
"""
from __future__ import annotations

import logging
import math
from typing import Sequence

logger = logging.getLogger(__name__)

SWIN_DIVISOR = 32

# The settings live in neonet_plans.json (the "seg" stage; the paper's values are the gpu_full preset in
# experiment_planning/plans.py). The network keys are frozen into the trained model's plans.json ("neoseg"
# entry of the configuration) so inference rebuilds the same network.
NETWORK_KEYS = ("architecture", "feature_size", "window_size", "depths", "num_heads", "segresnet_init_filters",
                "unet_num_res_units")
ARCHITECTURES = ("swinunetr", "unet", "segresnet", "dynunet", "nnunet")


def check_architecture(name: str) -> str:
    key = str(name).lower()
    if key not in ARCHITECTURES:
        raise ValueError(f"Unknown NeoSeg architecture {name!r}; choose one of {list(ARCHITECTURES)} "
                         "(swinunetr is the paper's default, nnunet is nnU-Net's own U-Net).")
    return key


def check_swin_patch_size(patch_size: Sequence[int], where: str = "the plans") -> None:
    """Raise a clear ValueError when SwinUNETR cannot process ``patch_size``.

    SwinUNETR halves the input five times (patch embedding + four merges): every side must be a
    multiple of 32, and the 1/32 bottleneck must hold more than one voxel (instance norm in training).
    """
    patch = [int(p) for p in patch_size]
    bad = [p for p in patch if p % SWIN_DIVISOR or p <= 0]
    bottleneck = math.prod(p // SWIN_DIVISOR for p in patch) if not bad else 0
    if bad or bottleneck <= 1:
        suggestion = [max(SWIN_DIVISOR, int(round(p / SWIN_DIVISOR)) * SWIN_DIVISOR) for p in patch]
        if math.prod(s // SWIN_DIVISOR for s in suggestion) <= 1:
            suggestion[-1] *= 2
        why = (f"side(s) {bad} are not multiples of {SWIN_DIVISOR}" if bad
               else f"its 1/{SWIN_DIVISOR} bottleneck is a single voxel")
        raise ValueError(
            f"Patch size {patch} from {where} cannot be used by SwinUNETR: {why}. Plan the dataset with "
            f"`neonet_plan_and_preprocess` (NeoNetPlans rounds patches to multiples of {SWIN_DIVISOR}) or set "
            f"\"patch_size\": {suggestion} in the configuration of NeoNetPlans.json; or pick another --arch."
        )


def _per_axis(strides) -> list[list[int]]:
    out = []
    for s in strides:
        out.append([int(v) for v in s] if isinstance(s, (list, tuple)) else [int(s)] * 3)
    return out


def build_network(settings: dict, patch_size, strides, kernel_sizes, features_per_stage, in_channels: int,
                  out_channels: int):
    """A MONAI network for ``settings["architecture"]`` (not for "nnunet", which nnU-Net builds itself)."""
    arch = check_architecture(settings["architecture"])
    spatial_dims = len(patch_size)
    strides = _per_axis(strides)
    kernel_sizes = _per_axis(kernel_sizes)
    if arch == "swinunetr":
        from monai.networks.nets import SwinUNETR

        check_swin_patch_size(patch_size)
        fs = int(settings["feature_size"])
        if fs % 12:
            raise ValueError(f"SwinUNETR feature_size must be a multiple of 12, got {fs} (neonet_plans.json seg).")
        return SwinUNETR(in_channels=in_channels, out_channels=out_channels, feature_size=fs,
                         depths=tuple(int(d) for d in settings["depths"]),
                         num_heads=tuple(int(h) for h in settings["num_heads"]),
                         window_size=int(settings["window_size"]), spatial_dims=spatial_dims)
    if arch == "unet":
        from monai.networks.nets import UNet

        # nnU-Net's per-stage channels and (possibly anisotropic) strides; the patch is divisible by them.
        return UNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels,
                    channels=tuple(int(f) for f in features_per_stage),
                    strides=tuple(tuple(s) for s in strides[1:]),
                    num_res_units=int(settings["unet_num_res_units"]), norm="instance")
    if arch == "segresnet":
        from monai.networks.nets import SegResNet

        n_down = len(strides) - 1
        if any(p % 2 ** n_down for p in patch_size):
            raise ValueError(f"Patch size {list(patch_size)} is not divisible by {2 ** n_down} for SegResNet with "
                             f"{n_down} downsamplings.")
        blocks_down = tuple([1, 2, 2, 4, 4, 4, 4][: n_down + 1])
        return SegResNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels,
                         init_filters=int(settings["segresnet_init_filters"]), blocks_down=blocks_down,
                         blocks_up=tuple([1] * n_down), norm="instance")
    if arch == "dynunet":
        from monai.networks.nets import DynUNet

        return DynUNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels,
                       kernel_size=kernel_sizes, strides=strides, upsample_kernel_size=strides[1:],
                       filters=[int(f) for f in features_per_stage], norm_name=("INSTANCE", {"affine": True}),
                       deep_supervision=False)
    raise ValueError("architecture 'nnunet' is built by nnU-Net itself (get_network_from_plans).")
