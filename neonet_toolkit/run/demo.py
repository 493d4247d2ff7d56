"""neonet_demo: the whole pipeline on the synthetic phantom, one fold, CPU tiny preset (~15 min on 2 cores)."""
from __future__ import annotations

import argparse

from neonet_toolkit.demo.run_demo import run_demo
from neonet_toolkit.run.common import add_common, cli_main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="neonet_demo", description=__doc__)
    p.add_argument("-d", "--dataset_id", type=int, default=501)
    p.add_argument("-f", "--fold", type=int, default=0)
    p.add_argument("-device", "--device", default="cpu")
    p.add_argument("--seg-arch", dest="seg_arch", default="swinunetr")
    p.add_argument("--seg-epochs", dest="seg_epochs", type=int, default=12)
    p.add_argument("--seg-iterations", dest="seg_iterations", type=int, default=25)
    p.add_argument("--ratio", type=float, default=1.0, help="synthetic share of the class gap (1.0 = balanced)")
    p.add_argument("--configuration", default=None, help="neonet_plans.json configuration (default cpu_small)")
    add_common(p)
    return p


def _run(args) -> None:

    rep = run_demo(args.dataset_id, args.fold, args.device, args.seg_arch, args.seg_epochs, args.seg_iterations,
                   args.ratio, configuration=args.configuration)
    print(open(rep["report_file"], encoding="utf-8").read())
    print(f"report: {rep['report_file']}\npredictions: {rep['predictions_csv']}")


def main(argv=None) -> int:
    return cli_main(build_parser, _run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
