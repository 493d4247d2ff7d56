"""neonet_make_demo_dataset -d 501: write the synthetic phantom dataset into nnUNet_raw."""
from __future__ import annotations

import argparse

from neonet_toolkit import paths
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
    p.add_argument("-o", "--output", default=None, help="raw folder (default: $nnUNet_raw or ./nnUNet_raw)")
    add_common(p)
    return p


def _run(args) -> None:

    out = args.output or paths.nnunet_raw()
    folder = make_phantom_dataset(out, args.dataset_id, args.name, n_train=args.n_train, n_test=args.n_test,
                                  shape_xyz=args.shape, spacing=args.spacing, with_vessel=args.with_vessel,
                                  seed=args.seed, neonet_options={"crop_size": list(args.crop_size)},
                                  cue_kind=args.cue_kind, cue_width=args.cue_width, cue_strength=args.cue_strength,
                                  label_noise=args.label_noise)
    print(folder)


def main(argv=None) -> int:
    return cli_main(build_parser, _run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
