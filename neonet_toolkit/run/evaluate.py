"""neonet_evaluate DATASET WHAT [options]

WHAT: seg (Dice table, Table 1 shape), gen (reconstruction SSIM/PSNR, FID per view, montage;
Tables 3-4 shape), cls (per-fold and pooled AUC with CIs, paired DeLong, calibration, ROC;
Tables 2 and 5 shape). Each module exposes ``add_arguments(parser)`` and
``evaluate_from_args(args)``.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from neonet_toolkit.run.common import add_common, dispatch_main

TARGETS = {
    "seg": "neonet_toolkit.evaluation.seg",
    "gen": "neonet_toolkit.evaluation.gen",
    "cls": "neonet_toolkit.evaluation.cls",
}


def target_module(what: str):
    if what not in TARGETS:
        raise ValueError(f"Unknown evaluation {what!r}; choose one of {sorted(TARGETS)}.")
    return importlib.import_module(TARGETS[what])


def build_parser(what: str | None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="neonet_evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", help="dataset id or name, e.g. 501")
    p.add_argument("what", choices=sorted(TARGETS))
    add_common(p)
    if what is not None:
        mod = target_module(what)
        if hasattr(mod, "add_arguments"):
            mod.add_arguments(p)
    return p


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    return dispatch_main(argv, TARGETS, build_parser, target_module, "evaluate_from_args")


if __name__ == "__main__":
    raise SystemExit(main())
