"""neonet_predict vs nnUNetv2_predict alone, interleaved: same process, same model, same cases.

    python benchmarks/bench_predict.py -d 501 -i nnUNet_raw/Dataset501_NeoNetPhantom/imagesTs \\
        [-m SEG_MODEL_FOLDER] [--cls-run cls_pattennet_1] [-f 0] [-device cpu] [--pairs 5] [--json out.json]

One child process loads both predictors once (model loading is not timed), then runs rounds
A B [C] A B [C] … over all cases:

* A: nnU-Net's predictor, ``predict_from_files_sequential`` (the code path of ``nnUNetv2_predict``:
  read, preprocess, sliding window, export);
* B: ``neonet_predict``'s per-case pipeline (segmentation + TLCR + classification + export + QC), as shipped:
  it reuses NeoSeg's preprocessing when the NeoSeg model and the NeoNet plans share it;
* C (``--with-unshared``): the same pipeline forced to preprocess image + mask a second time (the
  behaviour before the reuse), to show what the reuse saves.

Prints seconds per case, the per-round ratio B / A (median and range over ``--pairs`` rounds; the
interleaving cancels drift in machine load) and NeoNet's time split. Target: overhead ≤ 5 % at a
realistic size.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile

CHILD = r"""
import json, shutil, statistics, sys, time
from pathlib import Path
import torch
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from neonet_toolkit.inference.inputs import discover_inputs
from neonet_toolkit.inference.predict import NeoNetPredictor
from neonet_toolkit.models.seg import initialize_predictor
from neonet_toolkit.inference.writers import collect
from neonet_toolkit import paths
from neonet_toolkit.utilities.devices import get_device
a = json.loads(sys.argv[1]); paths.apply_defaults_to_process()  # this process is the benchmark's own
dev = get_device(a["device"])
nn = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=a["mirroring"],
                     perform_everything_on_device=dev.type == "cuda", device=dev, verbose=False,
                     verbose_preprocessing=False, allow_tqdm=False)
initialize_predictor(nn, a["seg_model"], a["folds"])  # nnU-Net's own loader, minus its trainer search (README)
neo = NeoNetPredictor(a["dataset"], seg_model=a["seg_model"], cls_run=a["cls_run"], folds=a["folds"], device=a["device"])
neo.seg.use_mirroring = a["mirroring"]
shared = neo.reuse_preprocessing
cases = discover_inputs(a["input"], neo.file_ending, neo.n_channels)
tmp = Path(a["out"])

def sync():
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)

def run_a():
    o = tmp / "a"; shutil.rmtree(o, ignore_errors=True); o.mkdir(parents=True)
    sync(); t = time.perf_counter()
    nn.predict_from_files_sequential(a["input"], str(o), save_probabilities=False, overwrite=True)
    sync(); return time.perf_counter() - t

def run_b(reuse):
    neo.reuse_preprocessing = reuse
    o = tmp / ("b" if reuse else "c"); shutil.rmtree(o, ignore_errors=True); o.mkdir(parents=True)
    neo.timings.clear()
    sync(); t = time.perf_counter()
    for c in cases:
        neo.predict_case(c, o)
    collect(o, neo.provenance())
    sync(); return time.perf_counter() - t, dict(neo.timings)

run_a(); run_b(shared)  # warm-up round (cuDNN autotuning, first-touch allocations): not counted
res = {"A": [], "B": [], "C": [], "split_B": []}
for _ in range(a["pairs"]):
    res["A"].append(run_a())
    tb, split = run_b(shared); res["B"].append(tb); res["split_B"].append(split)
    if a["unshared"] and shared:
        res["C"].append(run_b(False)[0])
res["n"] = len(cases); res["shared_preprocessing"] = shared
print("RESULT" + json.dumps(res))
"""


def _child(args: dict) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(args)], capture_output=True, encoding="utf-8",
                         errors="replace")
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT")), None)
    if out.returncode != 0 or line is None:
        raise RuntimeError(f"benchmark child failed:\n{out.stderr[-3000:]}")
    return json.loads(line[len("RESULT"):])


def _median(xs):
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else 0.5 * (xs[n // 2 - 1] + xs[n // 2])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-d", "--dataset", required=True)
    p.add_argument("-i", "--input", required=True)
    p.add_argument("-m", "--seg-model", dest="seg_model", default=None)
    p.add_argument("--cls-run", dest="cls_run", default=None)
    p.add_argument("-f", "--folds", nargs="+", type=int, default=[0])
    p.add_argument("-device", "--device", default="cpu")
    p.add_argument("--pairs", type=int, default=5, help="interleaved rounds (>= 5 for the median)")
    p.add_argument("--with-unshared", dest="unshared", action="store_true",
                   help="also time the pipeline without the shared preprocessing (C)")
    p.add_argument("--no-mirroring", dest="mirroring", action="store_false",
                   help="test-time mirroring off on both sides (8x less segmentation work: a conservative ratio)")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)

    from neonet_toolkit import paths
    from neonet_toolkit.models.seg import default_model_folder

    paths.ensure_environment()
    seg_model = a.seg_model or str(default_model_folder(a.dataset))
    with tempfile.TemporaryDirectory() as tmp:
        r = _child({"input": a.input, "seg_model": seg_model, "folds": a.folds, "device": a.device, "out": tmp,
                    "dataset": a.dataset, "cls_run": a.cls_run, "pairs": a.pairs, "unshared": a.unshared,
                    "mirroring": a.mirroring})
    n = r["n"]
    ratios = [b / x for b, x in zip(r["B"], r["A"])]
    print(f"cases: {n}, folds: {a.folds}, device: {a.device}, mirroring: {a.mirroring}, rounds: {a.pairs} "
          f"(interleaved A B"
          f"{' C' if r['C'] else ''}), seg model: {seg_model}")
    print(f"A nnUNetv2_predict path : {_median(r['A']) / n:8.3f} s/case (median of rounds)")
    print(f"B neonet_predict        : {_median(r['B']) / n:8.3f} s/case; shared preprocessing: "
          f"{r['shared_preprocessing']}")
    if r["C"]:
        print(f"C without the sharing   : {_median(r['C']) / n:8.3f} s/case")
    keys = sorted({k for s in r["split_B"] for k in s})
    for k in keys:
        print(f"  {k:16s}: {_median([s.get(k, 0.0) for s in r['split_B']]) / n:8.3f} s/case")
    print(f"overhead B/A - 1: median {100 * (_median(ratios) - 1):+.1f} % (rounds: "
          f"{', '.join(f'{100 * (x - 1):+.1f}' for x in ratios)} %)")
    if r["C"]:
        rc = [c / x for c, x in zip(r["C"], r["A"])]
        print(f"overhead C/A - 1: median {100 * (_median(rc) - 1):+.1f} %")
    if a.json:
        with open(a.json, "w", encoding="utf-8") as f:
            json.dump(dict(r, ratios_b_over_a=ratios, device=a.device, folds=a.folds), f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
