"""The ``cls`` stage of ``neonet_train``: a NeoCls trainer, or the radiomics baseline for ``--arch radiomics``."""
from __future__ import annotations

from pathlib import Path

from neonet_toolkit.training import cls as cls_training
from neonet_toolkit.training.radiomics import run_radiomics_baseline

add_arguments = cls_training.add_arguments


def train_from_args(args) -> Path:
    if (args.arch or "").lower() == "radiomics":
        if args.synthetic_ratio:
            raise ValueError("The radiomics baseline trains on real cases only (--synthetic-ratio 0).")
        return run_radiomics_baseline(args.dataset, [args.fold], args.crop_source, overwrite=args.overwrite)
    return cls_training.train_from_args(args)
