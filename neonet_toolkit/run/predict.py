"""neonet_predict -i INPUT -o OUTPUT -d 501 [options]

Raw MRI (nnU-Net naming CASE_0000.nii.gz, or DICOM series folders) → NeoSeg masks → TLCR →
NeoCls fold ensemble → calibrated PNI probability with QC flags. Reruns complete only what is
missing; --overwrite redoes everything. --num-parts/--part-id split the cases across machines.
"""
from __future__ import annotations

import argparse
import json
import sys

from neonet_toolkit.inference.predict import predict
from neonet_toolkit.inference.writers import collect
from neonet_toolkit.run.common import add_common, cli_main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="neonet_predict", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-i", "--input", required=True, help="folder of images (CASE_0000.nii.gz) or DICOM series")
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument("-d", "--dataset", default=None,
                   help="dataset whose trained models to use, e.g. 501 (required unless --model-package is given)")
    p.add_argument("--model-package", dest="model_package", default=None, metavar="DIR_OR_ZIP",
                   help="predict from a model package (neonet_export_model: the zip or its extracted folder), "
                        "verified first; no training folders are needed")
    p.add_argument("-m", "--seg-model", dest="seg_model", default=None,
                   help="NeoSeg / nnU-Net model folder (default: the dataset's registered or NeoSeg model)")
    p.add_argument("--cls-run", dest="cls_run", default=None,
                   help="NeoCls run name, e.g. cls_pattennet_1_esnested (default: the only trained run, else "
                        "cls_pattennet_1_esnested, else cls_pattennet_1)")
    p.add_argument("-f", "--folds", nargs="+", type=int, default=None, help="folds to ensemble (default: all)")
    p.add_argument("-device", "--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--save-crops", dest="save_crops", action="store_true", help="write TLCR crops (NIfTI + PNG)")
    p.add_argument("--saliency", action="store_true", help="write a saliency map per case (NIfTI + PNG overlay)")
    p.add_argument("--num-parts", dest="num_parts", type=int, default=1)
    p.add_argument("--part-id", dest="part_id", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="redo cases that are already complete")
    p.add_argument("--trust-checkpoints", dest="trust_checkpoints", action="store_true",
                   help="skip the safety check of the NeoSeg (nnU-Net) checkpoints, which nnU-Net loads with "
                        "weights_only=False (any code in the file runs): only for files you trust; recorded in "
                        "provenance")
    p.add_argument("--dicom-out", dest="dicom_out", action="store_true",
                   help="also write a DICOM SEG and a Comprehensive 3D SR per case into OUT/dicom/ (research use "
                        "only), referencing the case's source series: DICOM input, or --dicom-reference for NIfTI")
    p.add_argument("--dicom-reference", dest="dicom_reference", default=None,
                   help="with --dicom-out and NIfTI input: FOLDER/<case_id>/ holds the DICOM series each NIfTI "
                        "was converted from (its geometry must be the NIfTI's)")
    p.add_argument("--collect-only", dest="collect_only", action="store_true",
                   help="only rebuild predictions.csv/json from out/cases (e.g. after sharded runs)")
    add_common(p)
    return p


def _run(args) -> int:

    if args.collect_only:
        recs = collect(args.output)
        print(f"{len(recs)} case(s) in {args.output}/predictions.csv")
        return 0
    if args.dataset is None and args.model_package is None:
        print("error: give the dataset (-d 501) or a model package (--model-package DIR_OR_ZIP)", file=sys.stderr)
        return 2
    res = predict(args.input, args.output, args.dataset, seg_model=args.seg_model, cls_run=args.cls_run,
                  folds=args.folds, device=args.device, save_crops=args.save_crops, saliency=args.saliency,
                  num_parts=args.num_parts, part_id=args.part_id, overwrite=args.overwrite,
                  trust_checkpoints=args.trust_checkpoints, dicom_out=args.dicom_out,
                  dicom_reference=args.dicom_reference, model_package=args.model_package)
    print(json.dumps({"predicted": res["predicted"], "failed": res["failed"], "skipped": res["skipped"],
                      "timings_s": {k: round(v, 3) for k, v in res["timings_s"].items()}}, indent=2))
    print(f"predictions: {args.output}/predictions.csv")
    if res["failed"]:
        print(f"error: {len(res['failed'])} case(s) failed (status 'failed' and the reason in predictions.csv): "
              f"{res['failed']}", file=sys.stderr)
        return 1
    return 0


def main(argv=None) -> int:
    return cli_main(build_parser, _run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
