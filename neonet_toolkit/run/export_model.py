"""neonet_export_model -d 501 -o neonet_model.zip [-m SEG_MODEL] [--cls-run RUN] [-f FOLDS]

Lock a trained NeoNet model into one zip: the NeoSeg folds (nnU-Net result layout, plans, dataset.json), the
classifier run (--cls-run, else the one neonet_predict would use: neonet_find_best_configuration's choice, else the
default rule), the VAE folds it was built on, calibration and threshold per fold, neonet_plans.json, the dataset
fingerprint, the label roles, a manifest.json with a sha256 for every file and the software versions, and a
generated MODEL_CARD.md. Install it elsewhere with neonet_install_model, or predict from it directly with
neonet_predict --model-package.
"""
from __future__ import annotations

import argparse

from neonet_toolkit.inference.postprocessing import default_cls_run
from neonet_toolkit.models.cls_results import load_best_configuration
from neonet_toolkit.models.package import export_model
from neonet_toolkit.run.common import add_common, cli_main
from neonet_toolkit.utilities.identifiers import ResultLayout


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="neonet_export_model", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-d", "--dataset", required=True, help="dataset whose trained models to export, e.g. 501")
    p.add_argument("-o", "--output", required=True, help="the zip to write (refused if it exists)")
    p.add_argument("-m", "--seg-model", dest="seg_model", default=None,
                   help="NeoSeg / nnU-Net model folder (default: the dataset's registered or NeoSeg model)")
    p.add_argument("--cls-run", dest="cls_run", default=None,
                   help="NeoCls run name (default: the run neonet_predict would use)")
    p.add_argument("-f", "--folds", nargs="+", type=int, default=None,
                   help="export only these folds of both models (default: every finished fold)")
    add_common(p)
    return p


def choose_cls_run(dataset, cls_run: str | None) -> str | None:
    """The run neonet_predict would use without --cls-run (neonet_find_best_configuration's choice, else the rule)."""
    if cls_run is not None:
        return cls_run
    layout = ResultLayout.for_dataset(dataset)
    runs = layout.cls_runs()
    best = load_best_configuration(layout)
    if best and best.get("predict_default") in runs:
        return best["predict_default"]
    return default_cls_run(runs)


def _run(args) -> int:
    out = export_model(args.dataset, args.output, cls_run=choose_cls_run(args.dataset, args.cls_run),
                       seg_model=args.seg_model, folds=args.folds)
    print(f"model package: {out}")
    return 0


def main(argv=None) -> int:
    return cli_main(build_parser, _run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
