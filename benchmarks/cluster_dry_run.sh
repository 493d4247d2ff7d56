#!/usr/bin/env bash
# The `neonet_experiment --dry-run` of a PAPER-SIZE plan (README, "Run the experiment on a cluster"):
#
#   bash benchmarks/cluster_dry_run.sh [FOLDER]        # FOLDER default /tmp/neonet_paper_plan
#
# Into FOLDER, with its own nnUNet_raw / nnUNet_preprocessed / nnUNet_results / neonet_results (the caller's
# variables are not used and nothing outside FOLDER is written):
#
# 1. a phantom of the paper's cohort size and image size: 128 training patients (the paper's 44 PNI+ / 84 PNI-
#    cohort size), 160x144x64 voxels at 1.6x1.6x3.0 mm, 96x96x48 TLCR crop (`neonet_make_demo_dataset`);
# 2. its planning (`neonet_plan_and_preprocess`: stratified 5 folds, nnU-Net fingerprint, plans and
#    preprocessing, TLCR patches, neonet_plans.json with the per-step `resource_estimates`);
# 3. `neonet_experiment --dry-run` of the paper's 5-fold grid: the five paper classifiers (PattenNet, ResNet50,
#    DenseNet121, EfficientNet-B0, Swin) x the synthetic ratios 0 0.25 0.5 0.75 1.0, configuration gpu_full:
#    the job graph (job, fold, dependencies, estimated GPU memory and time) and the estimated wall time on
#    1, 2, 4, 8, 16 GPUs. The dry-run output is also written to FOLDER/dry_run.md;
# 4. the wall-time lines of the same grid without NeoSeg (`--no-seg`: with --crop-source gt no classifier job
#    waits for NeoSeg or its out-of-fold masks), to FOLDER/dry_run_no_seg.txt.
#
# Nothing is trained; the times are the planner's seconds per optimizer step on its reference GPU (an H200 with
# bf16 AMP, neonet_toolkit/training/resources.py) x each stage's steps under gpu_full.
#
# Variables: NTRAIN (128; fewer cases plan faster, but the class counts and so the estimates change),
# NP (planning worker processes, 2), D (dataset id, 990), NICE (the prefix of the heavy commands,
# "nice -n 19"). Steps that already ran (dataset written, plans present) are skipped, so the script can be
# run again after an interruption. CPU only; planning 128 cases takes ~10-20 minutes on 2 cores.
set -euo pipefail

ROOT=${1:-/tmp/neonet_paper_plan}
NTRAIN=${NTRAIN:-128}
NP=${NP:-2}
D=${D:-990}
NAME=PaperSize
NICE=${NICE:-nice -n 19}
mkdir -p "$ROOT"
ROOT=$(cd "$ROOT" && pwd)
export nnUNet_raw=$ROOT/nnUNet_raw nnUNet_preprocessed=$ROOT/nnUNet_preprocessed
export nnUNet_results=$ROOT/nnUNet_results neonet_results=$ROOT/neonet_results
export NEONET_JOBS=${NEONET_JOBS:-1} OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} PYTHONUNBUFFERED=1
mkdir -p "$nnUNet_raw" "$nnUNet_preprocessed" "$nnUNet_results" "$neonet_results"
DS=$(printf 'Dataset%03d_%s' "$D" "$NAME")

stamp() { echo "[$(date '+%F %T')] $*" >&2; }

# 1. the phantom (neonet_make_demo_dataset refuses to overwrite: skip when it is there)
if [ ! -f "$nnUNet_raw/$DS/dataset.json" ]; then
  stamp "writing $DS: $NTRAIN training cases, 160x144x64 @ 1.6x1.6x3.0 mm, crop 96x96x48"
  t0=$(date +%s)
  # --n_test 0 is accepted (no imagesTs): the dry run needs only the training cohort
  $NICE neonet_make_demo_dataset -d "$D" --name "$NAME" --n_train "$NTRAIN" --n_test 0 \
    --shape 160 144 64 --spacing 1.6 1.6 3.0 --crop_size 96 96 48
  stamp "dataset written in $(( $(date +%s) - t0 )) s"
else
  stamp "$DS exists: not rewritten"
fi

# 2. planning (skipped when neonet_plans.json is there)
if [ ! -f "$nnUNet_preprocessed/$DS/neonet_plans.json" ]; then
  stamp "planning $DS with -np $NP"
  t0=$(date +%s)
  $NICE neonet_plan_and_preprocess -d "$D" -np "$NP"
  stamp "planned in $(( $(date +%s) - t0 )) s"
else
  stamp "$DS already planned: not re-planned"
fi

# 3. the dry run of the paper's grid
stamp "dry run"
$NICE neonet_experiment "$D" --archs pattennet resnet50 densenet121 efficientnet_b0 swin \
  --ratios 0 0.25 0.5 0.75 1.0 --configuration gpu_full --dry-run --estimate-gpus 8 | tee "$ROOT/dry_run.md"

# 4. the same without NeoSeg: only the summary (the table is the one above less the seg/ and masks/ rows)
stamp "dry run --no-seg (wall-time lines only)"
$NICE neonet_experiment "$D" --archs pattennet resnet50 densenet121 efficientnet_b0 swin \
  --ratios 0 0.25 0.5 0.75 1.0 --configuration gpu_full --dry-run --estimate-gpus 8 --no-seg \
  | sed -n '/^configuration /,$p' | tee "$ROOT/dry_run_no_seg.txt"
