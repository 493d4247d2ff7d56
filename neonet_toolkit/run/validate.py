"""neonet_validate -m MODEL -i EXTERNAL_DATASET -o OUT [--recalibrate intercept|logistic]

External validation of a locked model (a model zip or an installed/extracted model package) on another site's
cohort: EXTERNAL_DATASET is a folder in the nnU-Net raw layout with imagesTs/ (or imagesTr/) and case_labels.csv
(case_id,<target>[,site][,scanner]); labelsTs/ or labelsTr/ are optional (NeoSeg Dice). Every case is predicted
with neonet_predict into OUT/predictions/ (resumable: a rerun completes only what is missing), then
OUT/validation_report.md, .json, validation_cases.csv and the figures are written. --recalibrate fits an update on
this cohort and writes a NEW model version, OUT/model_recalibrated_<method>.zip (its performance on these cases
is reported as apparent).
"""
from __future__ import annotations

import argparse
import sys

from neonet_toolkit.evaluation.external_validation import validate
from neonet_toolkit.evaluation.recalibration import RECALIBRATION_METHODS
from neonet_toolkit.run.common import add_common, cli_main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="neonet_validate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-m", "--model", required=True, help="model zip (neonet_export_model) or model package folder")
    p.add_argument("-i", "--input", required=True,
                   help="external dataset folder (nnU-Net raw layout + case_labels.csv)")
    p.add_argument("-o", "--output", required=True, help="output folder (predictions/, the report, figures)")
    p.add_argument("--recalibrate", choices=RECALIBRATION_METHODS, default=None,
                   help="fit an intercept or logistic (intercept + slope) update on this cohort and write a new model "
                        "version (performance on these cases is then apparent)")
    p.add_argument("--images", choices=("imagesTs", "imagesTr"), default=None,
                   help="which image folder holds the cohort when both exist")
    p.add_argument("-device", "--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--n-boot", dest="n_boot", type=int, default=2000, help="bootstrap replicates of the AUC CI")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--overwrite", action="store_true", help="replace a recalibrated model zip written before")
    add_common(p)
    return p


def _run(args) -> int:
    res = validate(args.model, args.input, args.output, recalibrate=args.recalibrate, device=args.device,
                   images=args.images, n_boot=args.n_boot, seed=args.seed, overwrite=args.overwrite)
    a = res["report"]["analysis"]
    d = a.get("discrimination") or {}
    print(f"AUC: {d.get('auc') if d.get('auc') is not None else d.get('reason', 'n/a')}")
    print(f"report: {res['output'] / 'validation_report.md'}")
    failed = res["report"]["meta"]["failed_cases"]
    if failed:
        print(f"error: neonet_predict failed on {len(failed)} case(s): {failed} (see {res['cases_folder']})",
              file=sys.stderr)
        return 1
    return 0


def main(argv=None) -> int:
    return cli_main(build_parser, _run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
