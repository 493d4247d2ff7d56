"""neonet_install_model neonet_model.zip [--overwrite]

Install a model package (from neonet_export_model; a zip or the folder it was extracted into) into the result
folders (nnUNet_preprocessed, nnUNet_results, neonet_results), like nnU-Net's
nnUNetv2_install_pretrained_model_from_zip but hostile-input-safe: every path stays inside the target folders,
every sha256 of the manifest is checked and every checkpoint goes through the allow-listed weights-only loader before
anything is installed. Replacing an existing model needs --overwrite; the install is all-or-nothing.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from neonet_toolkit import paths
from neonet_toolkit.models.package import install_model
from neonet_toolkit.run.common import add_common, cli_main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="neonet_install_model", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("package", help="the model zip (or its extracted folder)")
    p.add_argument("--overwrite", action="store_true", help="replace an installed model of the same dataset")
    add_common(p)
    return p


def _run(args) -> int:
    manifest = install_model(args.package, overwrite=args.overwrite)
    print(f"installed {manifest['dataset_name']}: NeoSeg {manifest['seg_model']} folds {manifest['seg_folds']}, "
          f"NeoCls {manifest['cls_run']} folds {manifest['cls_folds']}")
    model = paths.nnunet_results() / Path(manifest["seg_model"]).relative_to("nnUNet_results")
    print(f"predict with: neonet_predict -i INPUT -o OUTPUT -d {manifest['dataset_name']} -m {model} "
          f"--cls-run {manifest['cls_run']}")
    return 0


def main(argv=None) -> int:
    return cli_main(build_parser, _run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
