"""nnU-Net experiment planner for NeoSeg: nnU-Net's default plans with a SwinUNETR-compatible patch.

SwinUNETR needs every patch dimension divisible by 32 (five 2x downsamplings); nnU-Net only
guarantees divisibility by 2^(number of poolings per axis). This planner keeps everything nnU-Net
decides (spacing, normalisation, resampling, topology of its own U-Net) and rounds the patch size
to the nearest multiple of ``lcm(32, prod(strides))`` per axis (at least one such multiple), so
both SwinUNETR and nnU-Net's reference U-Net accept it.

Plans are written as ``NeoNetPlans.json`` (data identifier ``NeoNetPlans_3d_fullres``), next to,
and never over, a user's own ``nnUNetPlans.json``. Train with plain nnU-Net via
``nnUNetv2_train 501 3d_fullres 0 -p NeoNetPlans -tr <trainer>``.
"""
from __future__ import annotations

import logging
import math

import numpy as np
from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner

from neonet_toolkit.utilities.identifiers import NNUNET_PLANS_NAME

logger = logging.getLogger(__name__)

NEONET_NNUNET_PLANS = NNUNET_PLANS_NAME
SWIN_DIVISOR = 32


def swin_compatible_patch(patch_size, strides, divisor: int = SWIN_DIVISOR) -> list[int]:
    """Round each patch dimension to the nearest multiple of lcm(divisor, prod(strides along axis))."""
    strides = np.asarray(strides, dtype=np.int64).reshape(-1, len(patch_size))
    per_axis = np.prod(strides, axis=0)
    out = []
    for p, s in zip(patch_size, per_axis):
        m = math.lcm(int(divisor), int(s))
        out.append(int(max(m, round(p / m) * m)))
    return out


class NeoNetExperimentPlanner(ExperimentPlanner):
    def __init__(self, dataset_name_or_id, gpu_memory_target_in_gb: float = 8,
                 preprocessor_name: str = "DefaultPreprocessor", plans_name: str = NEONET_NNUNET_PLANS,
                 overwrite_target_spacing=None, suppress_transpose: bool = False):
        super().__init__(dataset_name_or_id, gpu_memory_target_in_gb, preprocessor_name, plans_name,
                         overwrite_target_spacing, suppress_transpose)

    def get_plans_for_configuration(self, spacing, median_shape, data_identifier, approximate_n_voxels_dataset,
                                    _cache) -> dict:
        plan = super().get_plans_for_configuration(spacing, median_shape, data_identifier,
                                                   approximate_n_voxels_dataset, _cache)
        if len(plan["patch_size"]) == 3:
            old = list(plan["patch_size"])
            new = swin_compatible_patch(old, plan["architecture"]["arch_kwargs"]["strides"])
            if new != old:
                logger.info("NeoNet planner: patch size %s -> %s (divisible by %d for SwinUNETR)",
                            old, new, SWIN_DIVISOR)
            plan["patch_size"] = tuple(new)
        return plan
