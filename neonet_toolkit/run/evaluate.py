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
from pathlib import Path

from neonet_toolkit.run.common import add_common, dispatch_main
from neonet_toolkit.utilities.identifiers import GEN_EVALUATION_DIR, ResultLayout

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


def _files(folder: Path) -> list[str]:
    return sorted(str(p) for p in Path(folder).rglob("*") if p.is_file())


def print_summary(what: str, args, result) -> None:
    """The main table on the terminal (as nnU-Net prints its summary), then where the files are."""
    if what == "seg":
        folder = Path(result["output_folder"])
        print((folder / "seg_dice.md").read_text(encoding="utf-8"))
    elif what == "gen":
        layout = ResultLayout.for_dataset(args.dataset)
        folder = layout.report_folder(GEN_EVALUATION_DIR)
        for fold in sorted(result.get("folds", {})):
            print(f"## fold {fold}\n")
            print((layout.report_folder(GEN_EVALUATION_DIR, fold) / "tables.md").read_text(encoding="utf-8"))
    else:
        folder = Path(result["output"])
        for f in sorted(folder.glob("table2*.md")):
            print(f"## {f.stem}\n")
            print(f.read_text(encoding="utf-8"))
        tests = result.get("paired_tests", [])
        if tests:
            print(f"Paired DeLong tests (Holm-corrected over {len(tests)}):")
            for t in tests:
                print(f"  {t['run_a']} vs {t['run_b']}: AUC {t['auc_a']:.3f} vs {t['auc_b']:.3f}, "
                      f"p = {t['p_value']:.4f} (Holm {t['p_holm']:.4f})")
    print("files:")
    for f in _files(folder):
        print(f"  {f}")


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    return dispatch_main(argv, TARGETS, build_parser, target_module, "evaluate_from_args", after=print_summary)


if __name__ == "__main__":
    raise SystemExit(main())
