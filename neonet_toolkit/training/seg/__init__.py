"""NeoSeg: liver/tumour segmentation as nnU-Net trainers (MONAI networks), masks for the next stages.

nnU-Net finds trainers outside its own package through ``nnUNet_extTrainer`` (an ``os.pathsep``
list of folders). :func:`ensure_trainer_env` adds this package's trainer folder;
``python -m neonet_toolkit.training.seg.trainer_path`` prints it for plain nnU-Net users.
"""
from __future__ import annotations

import logging
from pathlib import Path

from neonet_toolkit import paths

logger = logging.getLogger(__name__)

EXT_TRAINER_ENV = paths.EXT_TRAINER_ENV


def trainer_dir() -> Path:
    """The folder to put into ``nnUNet_extTrainer`` so nnU-Net finds the NeoSeg trainers."""
    return paths.nnunet_ext_trainer_dir()


def ensure_trainer_env() -> str:
    """The ``nnUNet_extTrainer`` value that lets nnU-Net find the NeoSeg trainers (the user's entries kept).

    It is only *set* for the duration of NeoNet's nnU-Net calls (:func:`neonet_toolkit.paths.nnunet_environment`)
    and by the console entry points for their own process; this function never writes ``os.environ``."""
    return paths.nnunet_environment_values()[EXT_TRAINER_ENV]
