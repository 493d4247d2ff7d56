#!/usr/bin/env bash
# The GPU checks of the paper-size configuration, in one run (README, "GPU figures"):
#
#   OUT=folder bash benchmarks/gpu_check.sh
#
# 1. every gpu_full stage at the paper's size for a few AMP steps, measured against the planner's estimate
#    (benchmarks/bench_paper_size.py --device cuda);
# 2. a phantom of realistic size (160x144x64 voxels at 1.6x1.6x3 mm, 96x96x48 TLCR crop) planned with the
#    memory estimates, then every trainer on CUDA under a short configuration that inherits gpu_full:
#    NeoSeg (SwinUNETR fs48) through nnU-Net's single-GPU path, the VAE and NeoCls under torchrun (NCCL),
#    the LDM and ControlNet, NeoGen sampling;
# 3. neonet_predict on the realistic cases, and its interleaved overhead over nnU-Net's predictor
#    (benchmarks/bench_predict.py).
#
# Each step has its own time limit and the run goes on after a failure; STEP lines in $OUT/summary.txt give
# rc and seconds. Variables: DEV (cuda), SHAPE ("160 144 64"), CROP ("96 96 48"), NTRAIN (20), BASE (gpu_full), SKIP_PAPER=1,
# PAIRS (5). The same script runs on a CPU with DEV=cpu BASE=cpu_small SHAPE="64 64 32" CROP="32 32 16"
# SKIP_PAPER=1 (a dry run).
set -u -o pipefail
OUT=${OUT:-/tmp/neonet_gpu_check}
mkdir -p "$OUT"
LOG=$OUT/log.txt
W=$(mktemp -d /tmp/neonet_gpu.XXXX)
export nnUNet_raw=$W/raw nnUNet_preprocessed=$W/pp nnUNet_results=$W/res neonet_results=$W/nres
export PYTHONUNBUFFERED=1
# nnU-Net compiles the network on CUDA by default; the check times eager steps (set nnUNet_compile=t to include it)
export nnUNet_compile=${nnUNet_compile:-f}
DEV=${DEV:-cuda}
BASE=${BASE:-gpu_full}
SHAPE=${SHAPE:-160 144 64}
CROP=${CROP:-96 96 48}
NTRAIN=${NTRAIN:-20}
PAIRS=${PAIRS:-5}
D=${D:-503}
PY=${PY:-python3}
NP=$(( $(nproc) > 8 ? 8 : $(nproc) ))

step() {
  local name=$1 limit=$2; shift 2
  local t0; t0=$(date +%s%N)
  echo "=== $name: $*" >> "$LOG"
  timeout "$limit" "$@" >> "$LOG" 2>&1
  local rc=$?
  echo "STEP $name rc=$rc seconds=$(( ($(date +%s%N) - t0) / 1000000 ))e-3" | tee -a "$LOG" "$OUT/summary.txt"
  return $rc
}

step env 120 $PY -c "import torch, monai, nnunetv2, os; print('torch', torch.__version__, 'monai', monai.__version__, \
'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '', \
'bf16', torch.cuda.is_available() and torch.cuda.is_bf16_supported(), 'cpus', os.cpu_count())"
[ "$DEV" = cuda ] && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >> "$LOG" 2>&1

if [ "${SKIP_PAPER:-0}" != 1 ]; then
  step paper_size 240 $PY benchmarks/bench_paper_size.py --device "$DEV" --steps 4 --json "$OUT/paper_size.json"
fi

step make_data 180 $PY -m neonet_toolkit.run.make_demo_dataset -d "$D" --n_train "$NTRAIN" --n_test 2 \
  --shape $SHAPE --spacing 1.6 1.6 3.0 --crop_size $CROP
step plan 300 $PY -m neonet_toolkit.run.plan_and_preprocess -d "$D" -np "$NP" --n_folds 5
PLANS=$(ls -d "$nnUNet_preprocessed"/Dataset"$D"_*)/neonet_plans.json
# a short configuration on top of $BASE: the paper's networks, a few epochs each
$PY - "$PLANS" "$BASE" <<'EOF' >> "$LOG" 2>&1
import json, sys
f, base = sys.argv[1], sys.argv[2]
p = json.load(open(f))
p["configurations"]["check"] = {
    "inherits_from": base,
    "seg": {"epochs": 2, "iterations_per_epoch": 20, "val_iterations_per_epoch": 4},
    "vae": {"epochs": 4, "val_every": 4, "lr": 1e-4}, "ldm": {"epochs": 4, "val_every": 4, "lr": 1e-4},
    "controlnet": {"epochs": 4, "val_every": 4, "lr": 1e-4}, "sampling": {"steps": 20},
    "cls": {"epochs": 6, "inner_folds": 2, "patience": 6}}
json.dump(p, open(f, "w"), indent=1)
print("estimates:", json.dumps(p.get("resource_estimates", {}).get("configurations", {}).get(base, {}))[:3000])
EOF
TR="$PY -m neonet_toolkit.run.train"
DDP="$PY -m torch.distributed.run --standalone --nproc_per_node=1 -m neonet_toolkit.run.train"
step seg 420 $TR "$D" seg 0 --configuration check -device "$DEV"
step vae_torchrun 240 $DDP "$D" vae 0 --configuration check -device "$DEV"
step ldm 240 $TR "$D" ldm 0 --configuration check -device "$DEV"
step controlnet 240 $TR "$D" controlnet 0 --configuration check -device "$DEV"
step generate 240 $PY -m neonet_toolkit.run.generate -d "$D" -f 0 --configuration check -device "$DEV"
step cls_torchrun 300 $DDP "$D" cls 0 --configuration check -device "$DEV"
RAW=$(ls -d "$nnUNet_raw"/Dataset"$D"_*)
RUN=$(ls "$neonet_results"/Dataset"$D"_*/ | grep '^cls_' | head -1)
RUN=${RUN%__*}
step predict 300 $PY -m neonet_toolkit.run.predict -i "$RAW/imagesTs" -o "$W/predictions" -d "$D" -f 0 \
  --cls-run "$RUN" -device "$DEV"
head -c 3000 "$W/predictions/predictions.csv" >> "$LOG" 2>/dev/null
step bench_predict 420 $PY benchmarks/bench_predict.py -d "$D" -i "$RAW/imagesTs" -f 0 --cls-run "$RUN" \
  -device "$DEV" --pairs "$PAIRS" --with-unshared --json "$OUT/predict.json"
grep -h "time_estimate\|epoch_time\|Epoch time" "$nnUNet_results"/Dataset"$D"_*/*/fold_0/training_log_*.txt \
  2>/dev/null | tail -4 >> "$LOG"
[ "$DEV" = cuda ] && nvidia-smi >> "$LOG" 2>&1
echo "work folder: $W" >> "$LOG"
