#!/usr/bin/env bash
# The GPU figures in one device call (≤ 9 minutes on an H100/H200; logs land in OUT_DIR):
#   1. a user's fit (configs/default.yaml: progress bar, TensorBoard, validation every epoch, every
#      callback) on a 3.2M-segment split, blocks of 16 steps, CUDA graphs, against the CUDA-graph
#      plain loop, with start-up and compile times (the issue-11 ratio);
#   2. the stripped fit path against the plain loop: compile default, and CUDA graphs with blocks;
#   3. LeakCNN's 2d against its 1d layout (GPU busy ms/step), and what augmentation costs;
#   4. start-up: `--help`, `fit --help`, imports; a tiny build → fit → test → predict → export on CUDA,
#      run twice (the second reuses inductor's compile cache); the recording-level model's fit and predict.
# Usage: bash scripts/gpu_check.sh OUT_DIR
set -uo pipefail
OUT=${1:-/tmp/gpu_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD:${PYTHONPATH:-}" TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/inductor}
PY=${PY:-python3}
nvidia-smi -L | tee "$OUT/device.txt"
bench() {  # name timeout args...
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  timeout "$limit" $PY scripts/benchmark_fit.py "$@" > "$OUT/$name.log" 2>&1
  echo "$name rc=$? $((SECONDS - t0)) s" | tee -a "$OUT/device.txt"
}
bench user_fit 150 --user-fit --files 40000 --user-epochs 3 --steps-per-call 16 --compile-mode reduce-overhead \
  --warmup 30 --steps 300 --profile-steps 0
bench fit_default 80 --warmup 30 --steps 300 --repeats 2
bench fit_graphs_blocks 100 --warmup 32 --steps 320 --repeats 2 --compile-mode reduce-overhead --steps-per-call 16
bench layout 80 --layout-cost --repeats 2 --warmup 30 --steps 200
bench augment_cost 60 --augment-cost --repeats 2 --warmup 30 --steps 200
{ /usr/bin/time -f "--help %e s" $PY -m leak_lightning --help > /dev/null
  /usr/bin/time -f "fit --help %e s" $PY -m leak_lightning fit --help > /dev/null
  $PY -X importtime -c "import leak_lightning.cli.leak_cli" 2>&1 | sort -t'|' -k2 -n | tail -8; } > "$OUT/startup.log" 2>&1
W=/tmp/e2e
e2e() {  # a tiny corpus through every subcommand on CUDA; wall times of each
  local t0=$SECONDS
  $PY scripts/make_synthetic_dataset.py --output $W/wav --files-per-label 20 --sensors-per-label 6 \
  && $PY -m leak_lightning build --input $W/wav --output $W/data --overwrite true \
  && /usr/bin/time -f "fit wall %e s" $PY -m leak_lightning fit --config configs/demo_frame.yaml --trainer.default_root_dir $W/run \
       --trainer.max_epochs 2 --overwrite true --data.train_h5 $W/data/TRAINING_DATASET.H5 \
       --data.val_h5 $W/data/VALIDATION_DATASET.H5 --data.test_h5 $W/data/TESTING_DATASET.H5 \
  && /usr/bin/time -f "test wall %e s" $PY -m leak_lightning test --config configs/demo_frame.yaml --trainer.default_root_dir $W/run \
       --data.train_h5 $W/data/TRAINING_DATASET.H5 --data.val_h5 $W/data/VALIDATION_DATASET.H5 \
       --data.test_h5 $W/data/TESTING_DATASET.H5 \
  && /usr/bin/time -f "predict wall %e s" $PY -m leak_lightning predict --ckpt_path $W/run/checkpoints/best.ckpt \
       --data.predict_path $W/wav/TESTING \
  && $PY -m leak_lightning export --ckpt_path $W/run/checkpoints/best.ckpt --format torchscript --with_frontend true
  echo "e2e $1 rc=$? $((SECONDS - t0)) s" | tee -a "$OUT/device.txt"
}
e2e first > "$OUT/e2e_first.log" 2>&1
e2e second > "$OUT/e2e_second.log" 2>&1
# the recording-level model on CUDA: bf16-mixed, torch.compile, whole-recording batches; predict pools per recording
{ /usr/bin/time -f "recording fit wall %e s" $PY -m leak_lightning fit --config configs/demo.yaml \
    --trainer.default_root_dir $W/rec --trainer.max_epochs 2 \
    --overwrite true --data.train_h5 $W/data/TRAINING_DATASET.H5 --data.val_h5 $W/data/VALIDATION_DATASET.H5 \
    --data.test_h5 $W/data/TESTING_DATASET.H5 \
  && /usr/bin/time -f "recording predict wall %e s" $PY -m leak_lightning predict \
    --ckpt_path $W/rec/checkpoints/best.ckpt --data.predict_path $W/wav/TESTING --output $W/rec/p.csv
  echo "e2e recording rc=$?" | tee -a "$OUT/device.txt"; } > "$OUT/e2e_recording.log" 2>&1
grep -H "ratio\|segments/s\|first training\|layout\|augmentation costs\|wall\|--help\|Error\|error" \
  "$OUT"/*.log | grep -v "^\s*$" | tail -60
