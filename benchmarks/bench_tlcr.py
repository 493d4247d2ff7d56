"""TLCR cost per case vs a bare array slice of the same crop (the unavoidable baseline).

    python benchmarks/bench_tlcr.py [--shape Z Y X] [--crop Z Y X] [--repeats N]

Prints milliseconds per case and the ratio TLCR / slice, measured in the same run.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from neonet_toolkit.preprocessing.tlcr import tlcr


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--shape", type=int, nargs=3, default=(100, 240, 240), help="volume (z y x), paper-sized default")
    p.add_argument("--crop", type=int, nargs=3, default=(48, 96, 96))
    p.add_argument("--repeats", type=int, default=20)
    args = p.parse_args()
    rng = np.random.default_rng(0)
    shape = tuple(args.shape)
    img = rng.normal(size=shape).astype(np.float32)
    zz, yy, xx = np.ogrid[:shape[0], :shape[1], :shape[2]]
    c = np.array(shape) // 2
    organ = ((zz - c[0]) / (0.4 * shape[0])) ** 2 + ((yy - c[1]) / (0.4 * shape[1])) ** 2 + \
        ((xx - c[2]) / (0.4 * shape[2])) ** 2 <= 1
    tumor = ((zz - c[0]) / 6) ** 2 + ((yy - c[1] - 20) / 15) ** 2 + ((xx - c[2]) / 15) ** 2 <= 1
    organ &= ~tumor
    crop = tuple(args.crop)

    def t_slice():
        s = c - np.array(crop) // 2
        sl = tuple(slice(a, a + b) for a, b in zip(s, crop))
        return np.stack([img[sl] * (organ | tumor)[sl], img[sl] * tumor[sl]])

    def t_tlcr():
        return tlcr(img, organ, tumor, crop)

    for name, fn in (("slice", t_slice), ("tlcr", t_tlcr)):
        fn()  # warm-up
    res = {}
    for name, fn in (("slice", t_slice), ("tlcr", t_tlcr)):
        t0 = time.perf_counter()
        for _ in range(args.repeats):
            fn()
        res[name] = (time.perf_counter() - t0) / args.repeats * 1000
    print(f"volume {shape}, crop {crop}, {args.repeats} repeats")
    print(f"bare slice + masking : {res['slice']:.2f} ms/case")
    print(f"TLCR (bbox + clamp)  : {res['tlcr']:.2f} ms/case")
    print(f"ratio TLCR / slice   : {res['tlcr'] / res['slice']:.2f}")


if __name__ == "__main__":
    main()
