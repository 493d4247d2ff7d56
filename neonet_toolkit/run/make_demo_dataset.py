"""neonet_make_demo_dataset -d 501: write the synthetic phantom dataset into nnUNet_raw.

``--external-site NAME``: write an external-site cohort instead (phantom patients from other seeds with a
controlled acquisition shift; ``neonet_toolkit.demo.external_site``)."""
from __future__ import annotations

import argparse

from neonet_toolkit import paths
from neonet_toolkit.demo.external_site import DEFAULT_N_CASES, DEFAULT_PREVALENCE, SiteShift, make_external_site
from neonet_toolkit.demo.phantom import CUE_KINDS, make_phantom_dataset
from neonet_toolkit.run.common import add_common, cli_main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Write a seeded synthetic phantom dataset (NeoNet contract) to nnUNet_raw.")
    p.add_argument("-d", "--dataset_id", type=int, default=501)
    p.add_argument("--name", default="NeoNetPhantom")
    p.add_argument("--n_train", type=int, default=30)
    p.add_argument("--n_test", type=int, default=4)
    p.add_argument("--shape", type=int, nargs=3, default=(64, 64, 32), metavar=("X", "Y", "Z"))
    p.add_argument("--spacing", type=float, nargs=3, default=(1.5, 1.5, 3.0), metavar=("X", "Y", "Z"))
    p.add_argument("--crop_size", type=int, nargs=3, default=(32, 32, 16), metavar=("X", "Y", "Z"),
                   help="TLCR crop written into dataset.json (neonet.crop_size)")
    p.add_argument("--with_vessel", action="store_true", help="add a 'vessel' label")
    p.add_argument("--seed", type=int, default=0)
    g = p.add_argument_group("hard benchmarks (docs/neocls.md, 'Resolution limit')")
    g.add_argument("--cue-kind", dest="cue_kind", choices=CUE_KINDS, default="halo",
                   help="PNI cue: halo (peritumoral shell + 1-2 strands, default) or tube (1-2 thin tubes touching "
                        "the tumour, no shell)")
    g.add_argument("--cue-width", dest="cue_width", type=float, default=None, metavar="VOXELS",
                   help="cue thickness in in-plane voxels (shell thickness, strand/tube diameter); default: the "
                        "demo's shell of 0.8-1.2 tumour radii (3-7 voxels)")
    g.add_argument("--cue-strength", dest="cue_strength", type=float, default=0.2,
                   help="cue darkening as a fraction of liver intensity (default 0.2)")
    g.add_argument("--label-noise", dest="label_noise", type=float, default=0.0, metavar="P",
                   help="flip each recorded label with probability P (true labels kept in phantom.json)")
    p.add_argument("--dicom", action="store_true",
                   help="also write each test image as a DICOM MR series in DatasetXXX_Name/dicomTs/<case_id>/ "
                        "(input for neonet_predict -i .../dicomTs)")
    e = p.add_argument_group(
        "external-site cohort (instead of the training phantom)",
        "Phantom patients from seeds a training phantom never uses, written to <raw folder>/NAME with imagesTs/, "
        "labelsTs/, case_labels.csv (case_id, PNI, site, scanner) and external_site.json (shift and seeds). "
        "--seed, --shape, --spacing, --with_vessel, --cue-* and --dicom describe it as they do the phantom.")
    e.add_argument("--external-site", dest="external_site", default=None, metavar="NAME",
                   help="write an external-site cohort named NAME (folder and 'site' column)")
    e.add_argument("--scanner", default=None, help="the 'scanner' column (default NAME-MR1)")
    e.add_argument("--n-cases", dest="n_cases", type=int, default=None, metavar="N",
                   help=f"cases (default {DEFAULT_N_CASES})")
    e.add_argument("--shift-intensity", dest="shift_intensity", type=float, default=None, metavar="K",
                   help="multiply every image by K (default 1)")
    e.add_argument("--shift-bias", dest="shift_bias", type=float, default=None, metavar="B",
                   help="linear bias field rising by the fraction B across the organ, in [0, 1) (default 0)")
    e.add_argument("--shift-spacing", dest="shift_spacing", type=float, nargs=3, default=None,
                   metavar=("FX", "FY", "FZ"), help="voxel spacing times these factors, same field of view "
                                                    "(default 1 1 1)")
    e.add_argument("--shift-noise", dest="shift_noise", type=float, default=None, metavar="S",
                   help="extra Rician noise, S times the liver intensity (default 0; the phantom's own is 0.05)")
    e.add_argument("--prevalence", type=float, default=None, metavar="P",
                   help=f"fraction of PNI-positive cases, in (0, 1) (default {DEFAULT_PREVALENCE:.3f})")
    p.add_argument("-o", "--output", default=None, help="raw folder (default: $nnUNet_raw or ./nnUNet_raw)")
    add_common(p)
    return p


_EXTERNAL_ONLY = ("scanner", "n_cases", "shift_intensity", "shift_bias", "shift_spacing", "shift_noise", "prevalence")


def _external_site(args, out) -> None:
    if args.label_noise:
        raise ValueError("--label-noise applies to the training phantom only, not to --external-site.")
    shift = SiteShift(intensity_scale=1.0 if args.shift_intensity is None else args.shift_intensity,
                      bias_amplitude=0.0 if args.shift_bias is None else args.shift_bias,
                      spacing_factors=(1.0, 1.0, 1.0) if args.shift_spacing is None else tuple(args.shift_spacing),
                      noise=0.0 if args.shift_noise is None else args.shift_noise)
    folder = make_external_site(out, args.external_site,
                                n_cases=DEFAULT_N_CASES if args.n_cases is None else args.n_cases, shift=shift,
                                prevalence=DEFAULT_PREVALENCE if args.prevalence is None else args.prevalence,
                                seed=args.seed, scanner=args.scanner, shape_xyz=args.shape, spacing=args.spacing,
                                with_vessel=args.with_vessel, cue_strength=args.cue_strength,
                                cue_kind=args.cue_kind, cue_width=args.cue_width, dicom=args.dicom)
    print(folder)


def _run(args) -> None:

    out = args.output or paths.nnunet_raw()
    if args.external_site is not None:
        _external_site(args, out)
        return
    given = [f"--{k.replace('_', '-')}" for k in _EXTERNAL_ONLY if getattr(args, k) is not None]
    if given:
        raise ValueError(f"{', '.join(given)} need --external-site NAME (they describe an external-site cohort).")
    folder = make_phantom_dataset(out, args.dataset_id, args.name, n_train=args.n_train, n_test=args.n_test,
                                  shape_xyz=args.shape, spacing=args.spacing, with_vessel=args.with_vessel,
                                  seed=args.seed, neonet_options={"crop_size": list(args.crop_size)},
                                  cue_kind=args.cue_kind, cue_width=args.cue_width, cue_strength=args.cue_strength,
                                  label_noise=args.label_noise, dicom=args.dicom)
    print(folder)


def main(argv=None) -> int:
    return cli_main(build_parser, _run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
