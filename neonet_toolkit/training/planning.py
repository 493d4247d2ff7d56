"""The one planning path: ``plan_and_preprocess`` = the data steps + the resource fitting.

``neonet_plan_and_preprocess`` (the CLI), the demo, the benchmarks and the tests all call
:func:`plan_and_preprocess`, so a dataset planned from Python gets the same ``neonet_plans.json`` as one
planned from the shell: dataset checks, folds, nnU-Net fingerprint/planning/preprocessing, TLCR patches
(:func:`neonet_toolkit.preprocessing.plan_and_preprocess.plan_and_preprocess_data`), then the memory and
time estimates of every stage with GPU batch sizes fitted to ``gpu_memory_target_gb``
(:func:`neonet_toolkit.training.resources.write_resource_estimates`). It sits in ``training/`` because the
estimates build the trainers' networks (on PyTorch's ``meta`` device, a few seconds).
"""
from __future__ import annotations

import logging

from neonet_toolkit.preprocessing.plan_and_preprocess import plan_and_preprocess_data
from neonet_toolkit.training.resources import DEFAULT_GPU_MEMORY_TARGET_GB, write_resource_estimates

logger = logging.getLogger(__name__)


def plan_and_preprocess(dataset: int | str, num_processes: int = 2, verify_dataset_integrity: bool = False,
                        clean: bool = False, overwrite_splits: bool = False, n_folds: int = 5, seed: int = 12345,
                        crop_size_xyz=None, repeats: int | None = None, resource_estimates: bool = True,
                        gpu_memory_target_gb: float = DEFAULT_GPU_MEMORY_TARGET_GB) -> dict:
    """Plan and preprocess one dataset, then estimate every stage's GPU memory and step time and lower the
    GPU configurations' batch sizes that do not fit ``gpu_memory_target_gb`` (``resource_estimates=False``
    skips the estimates, as ``--no_resource_estimates`` does). Returns the report of
    :func:`~neonet_toolkit.preprocessing.plan_and_preprocess.plan_and_preprocess_data`, with the
    ``resource_estimates`` block (``None`` when skipped)."""
    report = plan_and_preprocess_data(dataset, num_processes=num_processes,
                                      verify_dataset_integrity=verify_dataset_integrity, clean=clean,
                                      overwrite_splits=overwrite_splits, n_folds=n_folds, seed=seed,
                                      crop_size_xyz=crop_size_xyz, repeats=repeats)
    report["resource_estimates"] = None
    if resource_estimates:
        report["resource_estimates"] = write_resource_estimates(dataset, gpu_memory_target_gb=gpu_memory_target_gb)
    else:
        logger.info("Resource estimates skipped: %s keeps the presets' batch sizes.", report["plans_file"])
    return report
