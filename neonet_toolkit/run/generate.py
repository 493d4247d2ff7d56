"""neonet_generate -d DATASET -f FOLD [--ratio R] [--n-majority N] [--steps S] [--seed K] [--sampler ddim|rflow]

Generate NeoGen synthetic TLCR patches for one fold (after `neonet_train DATASET vae|ldm|controlnet FOLD`).
--ratio is the share of the class gap of the fold's training set that synthetic minority-class patches
fill (0.25, 0.5, 0.75, 1.0 = balanced 1:1, Table 2). --n-majority adds synthetic majority-class patches
too (-1: as many as the minority ones), so that "synthetic" does not stand for "positive".
Synthetic patches are conditioned on training cases only and written to
neonet_results/<ds>/synthetic__<plans>/fold_N/ (patches/*.npz + manifest.json).

Generator variants (Table 4 ablations; each writes its own set, e.g. synthetic_dm_vqvae_rflow__<plans>,
which neonet_evaluate DATASET gen reports and NeoCls does not read): --generator dm (the latent diffusion
model without ControlNet), --autoencoder vqvae (QNeoGen latents), --objective rflow or --sampler rflow
(rectified flow; the sampler follows the objective the models were trained with), --conditioning mask
(mask-only ControlNet, as in the paper). Defaults come from neonet_plans.json (NeoGen: vae, eps/ddim,
mask + class).
"""
from __future__ import annotations

import argparse
import sys

from neonet_toolkit.generation.generate import generate_synthetic_set
from neonet_toolkit.run.common import add_common, run_cli, setup_logging
from neonet_toolkit.utilities.identifiers import ResultLayout


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="neonet_generate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-d", "--dataset", required=True, help="dataset id or name, e.g. 501")
    p.add_argument("-f", "--fold", type=int, nargs="+", required=True, help="fold(s)")
    p.add_argument("--ratio", type=float, default=1.0, help="share of the class gap to fill (default 1.0 = 1:1)")
    p.add_argument("--n-majority", type=int, default=0,
                   help="synthetic majority-class patches to add as well (-1: as many as minority ones)")
    p.add_argument("--steps", type=int, default=None,
                   help="sampling steps = denoiser calls (default: plans' sampling.steps)")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM eta (0 = deterministic given the seed)")
    p.add_argument("--sampler", choices=["ddim", "rflow"], default=None,
                   help="ddim (eps-trained models) or rflow (rectified-flow-trained models); default: the objective's")
    p.add_argument("--objective", choices=["eps", "rflow"], default=None,
                   help="which trained models: eps or rflow (default: from --sampler, else the plans' sampling.sampler)")
    p.add_argument("--generator", choices=["controlnet", "dm"], default="controlnet",
                   help="controlnet (NeoGen, mask-conditioned) or dm (latent diffusion alone, Table 4 'DM' rows)")
    p.add_argument("--autoencoder", choices=["vae", "vqvae"], default=None,
                   help="vae (NeoGen) or vqvae (QNeoGen) latents (default: the plans' ldm.autoencoder)")
    p.add_argument("--conditioning", choices=["mask_class", "mask"], default=None,
                   help="ControlNet conditioning: mask + PNI label, or mask only (default: the plans')")
    p.add_argument("--seed", type=int, default=0, help="base seed; entry k uses seed + k")
    p.add_argument("-device", "--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--configuration", default=None, help="neonet_plans.json configuration for sampling settings")
    p.add_argument("--crop-source", choices=("gt", "pred"), default="gt",
                   help="masks that condition the patches: gt, or pred = out-of-fold NeoSeg masks (end-to-end "
                        "protocol; read by classifiers trained with --crop-source pred)")
    p.add_argument("--overwrite", action="store_true", help="replace a set generated with other settings")
    add_common(p)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    setup_logging(args.verbose)

    def _run(a):
        layout = ResultLayout.for_dataset(a.dataset)  # resolved once for every fold
        for fold in a.fold:
            out = generate_synthetic_set(layout, fold, ratio=a.ratio, n_majority=a.n_majority, steps=a.steps,
                                         seed=a.seed, eta=a.eta, device=a.device, overwrite=a.overwrite,
                                         configuration=a.configuration, generator=a.generator,
                                         autoencoder=a.autoencoder, objective=a.objective,
                                         conditioning=a.conditioning, sampler=a.sampler, crop_source=a.crop_source)
            print(f"fold {fold}: synthetic set in {out}")

    return run_cli(_run, args)


if __name__ == "__main__":
    raise SystemExit(main())
