"""NeoSeg: liver/tumour segmentation as nnU-Net trainers (MONAI networks), masks for the next stages.

nnU-Net finds trainers outside its own package through ``nnUNet_extTrainer`` (an ``os.pathsep``
list of folders). :func:`ensure_trainer_env` adds this package's trainer folder;
``python -m neonet_toolkit.training.seg.trainer_path`` prints it for plain nnU-Net users.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)

EXT_TRAINER_ENV = "nnUNet_extTrainer"


def trainer_dir() -> Path:
    """The folder to put into ``nnUNet_extTrainer`` so nnU-Net finds the NeoSeg trainers."""
    return Path(__file__).resolve().parent / "nnunet_ext"


def ensure_trainer_env() -> str:
    """Append :func:`trainer_dir` to ``nnUNet_extTrainer`` (keeping the user's entries). Returns the value."""
    d = str(trainer_dir())
    current = [p for p in os.environ.get(EXT_TRAINER_ENV, "").split(os.pathsep) if p.strip()]
    if not any(os.path.realpath(p) == os.path.realpath(d) for p in current):
        current.append(d)
        os.environ[EXT_TRAINER_ENV] = os.pathsep.join(current)
        logger.debug("%s=%s", EXT_TRAINER_ENV, os.environ[EXT_TRAINER_ENV])
    return os.environ[EXT_TRAINER_ENV]
