"""neonet_make_demo_dataset -d 501: write the synthetic phantom dataset into nnUNet_raw."""
from __future__ import annotations

import argparse

from neonet_toolkit import paths
from neonet_toolkit.demo.phantom import make_phantom_dataset
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
    p.add_argument("-o", "--output", default=None, help="raw folder (default: $nnUNet_raw or ./nnUNet_raw)")
    add_common(p)
    return p


def _run(args) -> None:

    out = args.output or paths.nnunet_raw()
    folder = make_phantom_dataset(out, args.dataset_id, args.name, n_train=args.n_train, n_test=args.n_test,
                                  shape_xyz=args.shape, spacing=args.spacing, with_vessel=args.with_vessel,
                                  seed=args.seed, neonet_options={"crop_size": list(args.crop_size)})
    print(folder)


def main(argv=None) -> int:
    return cli_main(build_parser, _run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
