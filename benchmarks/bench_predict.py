"""neonet_predict vs nnUNetv2_predict alone: per-case time split and peak memory, same model, same cases.

    python benchmarks/bench_predict.py -d 501 -i nnUNet_raw/Dataset501_NeoNetPhantom/imagesTs \\
        [-m SEG_MODEL_FOLDER] [--cls-run cls_pattennet_1] [-f 0] [-device cpu]

Each side runs in its own fresh process (so peak RSS is its own) and is timed after its models
are loaded: nnU-Net's predictor
(``predict_from_files_sequential``, the same code path as ``nnUNetv2_predict``), then the full
NeoNet pipeline (segmentation + TLCR + classification + export). Prints seconds per case, the
NeoNet time split and the overhead of NeoNet over segmentation alone (target ≤ 15 %).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile

CHILD_NNUNET = r"""
import json, resource, sys, time, torch
from pathlib import Path
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from neonet_toolkit.training.seg import ensure_trainer_env
from neonet_toolkit.utilities.devices import get_device
a = json.loads(sys.argv[1]); ensure_trainer_env()
dev = get_device(a["device"])
p = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True,
                    perform_everything_on_device=dev.type == "cuda", device=dev, verbose=False,
                    verbose_preprocessing=False, allow_tqdm=False)
p.initialize_from_trained_model_folder(a["seg_model"], use_folds=tuple(a["folds"]), checkpoint_name="checkpoint_final.pth")
Path(a["out"]).mkdir(parents=True, exist_ok=True)
t0 = time.perf_counter()
p.predict_from_files_sequential(a["input"], a["out"], save_probabilities=False, overwrite=True)
dt = time.perf_counter() - t0
print("RESULT" + json.dumps({"seconds": dt, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

CHILD_NEONET = r"""
import json, resource, sys, time
from pathlib import Path
from neonet_toolkit.inference.inputs import discover_inputs
from neonet_toolkit.inference.predict import NeoNetPredictor
from neonet_toolkit.inference.writers import collect
a = json.loads(sys.argv[1])
t0 = time.perf_counter()
pr = NeoNetPredictor(a["dataset"], seg_model=a["seg_model"], cls_run=a["cls_run"], folds=a["folds"], device=a["device"])
init = time.perf_counter() - t0
out = Path(a["out"]); out.mkdir(parents=True, exist_ok=True)
cases = discover_inputs(a["input"], pr.file_ending, pr.n_channels)
t0 = time.perf_counter()
for c in cases:
    pr.predict_case(c, out)
collect(out, pr.provenance())
dt = time.perf_counter() - t0
print("RESULT" + json.dumps({"seconds": dt, "init_seconds": init, "timings": pr.timings, "n": len(cases),
                             "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _child(code: str, args: dict) -> dict:
    out = subprocess.run([sys.executable, "-c", code, json.dumps(args)], capture_output=True, encoding="utf-8", errors="replace")
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT")), None)
    if out.returncode != 0 or line is None:
        raise RuntimeError(f"benchmark child failed:\n{out.stderr[-3000:]}")
    return json.loads(line[len("RESULT"):])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-d", "--dataset", required=True)
    p.add_argument("-i", "--input", required=True)
    p.add_argument("-m", "--seg-model", dest="seg_model", default=None)
    p.add_argument("--cls-run", dest="cls_run", default=None)
    p.add_argument("-f", "--folds", nargs="+", type=int, default=[0])
    p.add_argument("-device", "--device", default="cpu")
    a = p.parse_args()
    from pathlib import Path

    from neonet_toolkit import paths
    from neonet_toolkit.training.seg.masks import default_model_folder

    paths.ensure_environment()
    seg_model = a.seg_model or str(default_model_folder(a.dataset))
    n_cases = len(list(Path(a.input).glob("*_0000.nii.gz")))
    with tempfile.TemporaryDirectory() as tmp:
        common = {"input": a.input, "seg_model": seg_model, "folds": a.folds, "device": a.device}
        nn = _child(CHILD_NNUNET, dict(common, out=f"{tmp}/nnunet"))
        neo = _child(CHILD_NEONET, dict(common, out=f"{tmp}/neonet", dataset=a.dataset, cls_run=a.cls_run))
    t = neo["timings"]
    seg_only = nn["seconds"] / n_cases
    neo_case = neo["seconds"] / n_cases
    print(f"cases: {n_cases}, folds: {a.folds}, device: {a.device}, seg model: {seg_model}")
    print(f"nnUNetv2_predict path : {seg_only:8.2f} s/case   peak RSS {nn['peak_rss_mb']:.0f} MB")
    print(f"neonet_predict        : {neo_case:8.2f} s/case   peak RSS {neo['peak_rss_mb']:.0f} MB "
          f"(model loading {neo['init_seconds']:.1f} s once, not counted on either side)")
    for k in ("read_preprocess", "segmentation", "export", "tlcr", "classification"):
        print(f"  {k:16s}: {t.get(k, 0.0) / n_cases:8.3f} s/case")
    non_seg = sum(v for k, v in t.items() if k not in ("read_preprocess", "segmentation", "export")) / n_cases
    print(f"NeoNet-only work (TLCR + classification): {non_seg:.3f} s/case = "
          f"{100 * non_seg / seg_only:.1f} % of the segmentation time")
    print(f"overhead of the whole pipeline over nnU-Net alone: {100 * (neo_case - seg_only) / seg_only:+.1f} %")


if __name__ == "__main__":
    main()
