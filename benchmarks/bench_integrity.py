"""Cost of the full-read file integrity check (gzip CRC + length, header vs data size) in planning.

    python benchmarks/bench_integrity.py [--cases N] [--shape X Y Z] [--repeats R] [--planning P]

"before" is planning's dataset verification with the integrity check switched off (the verification that
reads every voxel with SimpleITK and nibabel stays: it existed before the check), "after" is the code as
shipped. The two are run interleaved (before, after, after, before, ...) in one process on the same
seeded phantom, so that machine load hits both alike; wall-clock and CPU (process) seconds are reported.
With ``--planning P`` the whole ``neonet_plan_and_preprocess`` (``--clean``, nnU-Net fingerprint, planning,
preprocessing, TLCR) is also timed P times per mode, interleaved, to put the check's cost per case next
to the planning time per case.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import neonet_toolkit.dataset.verification as verification
from neonet_toolkit.dataset.contract import NeoNetDataset
from neonet_toolkit.dataset.file_checks import file_problem
from neonet_toolkit.demo.phantom import make_phantom_dataset
from neonet_toolkit.training.planning import plan_and_preprocess


@contextmanager
def integrity_check(on: bool):
    verification.file_problem = file_problem if on else (lambda path, case_id: None)
    try:
        yield
    finally:
        verification.file_problem = file_problem


def _timed(fn) -> tuple[float, float]:
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def _order(repeats: int) -> list[bool]:
    return [m for r in range(repeats) for m in ((False, True) if r % 2 == 0 else (True, False))]


def _summary(label: str, times: dict[bool, list[tuple[float, float]]], n_cases: int) -> None:
    for on in (False, True):
        wall = statistics.median(t[0] for t in times[on]) / n_cases
        cpu = statistics.median(t[1] for t in times[on]) / n_cases
        print(f"{label:<34} {'after ' if on else 'before'}: {wall * 1000:9.1f} ms/case wall, "
              f"{cpu * 1000:9.1f} ms/case CPU (median of {len(times[on])})")
    dw = (statistics.median(t[0] for t in times[True]) - statistics.median(t[0] for t in times[False])) / n_cases
    dc = (statistics.median(t[1] for t in times[True]) - statistics.median(t[1] for t in times[False])) / n_cases
    print(f"{label:<34} added : {dw * 1000:9.1f} ms/case wall, {dc * 1000:9.1f} ms/case CPU")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", type=int, default=12)
    p.add_argument("--shape", type=int, nargs=3, default=(64, 64, 32), help="phantom size x y z")
    p.add_argument("--repeats", type=int, default=6, help="verification runs per mode")
    p.add_argument("--planning", type=int, default=0, help="whole-planning runs per mode (0: skip)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "neonet_results"):
            os.environ[k] = str(root / k)
            (root / k).mkdir()
        raw = make_phantom_dataset(root / "nnUNet_raw", 530, "Bench", n_train=args.cases, n_test=0,
                                   shape_xyz=tuple(args.shape), shape_jitter=0, seed=1)
        ds = NeoNetDataset.load(raw)
        print(f"{args.cases} phantom cases of {tuple(args.shape)} voxels (x y z), "
              f"{sum(f.stat().st_size for f in raw.rglob('*.nii.gz')) / args.cases / 1e6:.2f} MB/case on disk")
        verification.verify_dataset(ds)  # warm-up (page cache, imports)
        times: dict[bool, list] = {False: [], True: []}
        for on in _order(args.repeats):
            with integrity_check(on):
                times[on].append(_timed(lambda: verification.verify_dataset(ds)))
        _summary("dataset verification", times, args.cases)
        if args.planning:
            times = {False: [], True: []}
            for on in _order(args.planning):
                with integrity_check(on):
                    times[on].append(_timed(lambda: plan_and_preprocess(530, num_processes=1, clean=True,
                                                                        n_folds=2)))
            _summary("neonet_plan_and_preprocess --clean", times, args.cases)


if __name__ == "__main__":
    main()
