"""neonet_train DATASET STAGE FOLD [options]

Stages: seg (NeoSeg, an nnU-Net trainer), vae, vqvae, ldm, controlnet (NeoGen; vqvae = QNeoGen's
autoencoder, ldm/controlnet take --autoencoder vae|vqvae and --objective eps|rflow), cls (NeoCls).
Every stage module exposes ``add_arguments(parser)`` for its own options and
``train_from_args(args)``; this entry point only parses and dispatches, strictly (a typo in an
option is an error, never silently ignored).
"""
from __future__ import annotations

import argparse
import importlib
import sys

from neonet_toolkit.run.common import add_common, dispatch_main

STAGES = {
    "seg": "neonet_toolkit.training.seg.api",
    "vae": "neonet_toolkit.training.vae",
    "vqvae": "neonet_toolkit.training.vqvae",
    "ldm": "neonet_toolkit.training.ldm",
    "controlnet": "neonet_toolkit.training.controlnet",
    "cls": "neonet_toolkit.run.train_cls",
}


def stage_module(stage: str):
    if stage not in STAGES:
        raise ValueError(f"Unknown stage {stage!r}; choose one of {sorted(STAGES)}.")
    return importlib.import_module(STAGES[stage])


def add_common_training_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dataset", help="dataset id or name, e.g. 501")
    p.add_argument("stage", choices=sorted(STAGES))
    p.add_argument("fold", type=int, help="fold index from splits_final.json")
    p.add_argument("-device", "--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("--epochs", type=int, default=None, help="override the plans' epoch count")
    p.add_argument("--c", dest="continue_training", action="store_true", help="continue from the latest checkpoint")
    p.add_argument("--overwrite", action="store_true", help="retrain a fold that already has results")
    p.add_argument("--configuration", default=None,
                   help="neonet_plans.json configuration (default: cpu_small on CPU, gpu_full on CUDA)")
    add_common(p)


def build_parser(stage: str | None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="neonet_train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_training_arguments(p)
    if stage is not None:
        mod = stage_module(stage)
        if hasattr(mod, "add_arguments"):
            mod.add_arguments(p)
    return p


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    return dispatch_main(argv, STAGES, build_parser, stage_module, "train_from_args")


if __name__ == "__main__":
    raise SystemExit(main())
