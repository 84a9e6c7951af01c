#!/usr/bin/env bash
# One short pass over the GPU paths for a lent CUDA machine (fits one 10-minute device call):
#   fit benchmark with the CUDA defaults (bf16, compile, fused AdamW), then with the multi-tensor
#   AdamW and with CUDA graphs (compile mode reduce-overhead), each side by side with the plain
#   loop and with GPU busy time per step; a tiny end-to-end build → fit → test on CUDA; with
#   BUILD=1 also the build benchmark (GPU mel).
# Usage: bash scripts/gpu_check.sh OUT_DIR   (logs land in OUT_DIR)
set -uo pipefail
OUT=${1:-/tmp/gpu_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD:${PYTHONPATH:-}"
PY=${PY:-python3}
nvidia-smi -L | tee "$OUT/device.txt"
bench() {  # name timeout args...
  local name=$1 limit=$2; shift 2
  timeout "$limit" $PY scripts/benchmark_fit.py --warmup 30 --steps 300 "$@" > "$OUT/$name.log" 2>&1
  echo "$name rc=$?" | tee -a "$OUT/device.txt"
}
bench fit_defaults 150 --repeats 3
bench fit_foreach 100 --repeats 2 --fused off
bench fit_cudagraphs 130 --repeats 2 --compile-mode reduce-overhead
bench augment_cost 90 --repeats 3 --augment-cost
if [ "${BUILD:-0}" = 1 ]; then
  timeout 100 $PY scripts/benchmark_build.py --files 20000 --resampled-files 600 --unique 150 \
    --naive-files 200 --repeats 2 --workdir /tmp/bench > "$OUT/bench_build.log" 2>&1
  echo "benchmark_build rc=$?" | tee -a "$OUT/device.txt"
fi
W=/tmp/e2e
timeout 180 bash -c "$PY scripts/make_synthetic_dataset.py --output $W/wav --files-per-label 20 --sensors-per-label 6 \
  && $PY -m leak_lightning build --input $W/wav --output $W/data --overwrite true \
  && $PY -m leak_lightning fit --config configs/demo.yaml --trainer.default_root_dir $W/run --trainer.max_epochs 2 \
       --data.train_h5 $W/data/TRAINING_DATASET.H5 --data.val_h5 $W/data/VALIDATION_DATASET.H5 \
       --data.test_h5 $W/data/TESTING_DATASET.H5 \
  && $PY -m leak_lightning test --config configs/demo.yaml --trainer.default_root_dir $W/run --ckpt_path best \
       --data.test_h5 $W/data/TESTING_DATASET.H5 --data.train_h5 $W/data/TRAINING_DATASET.H5 \
       --data.val_h5 $W/data/VALIDATION_DATASET.H5" > "$OUT/e2e.log" 2>&1
echo "e2e rc=$?" | tee -a "$OUT/device.txt"
grep -H "ratio\|segments/s,\|fused AdamW\|files/s\|TEST results\|file_leak_f1 \|Error\|error" \
  "$OUT"/*.log | grep -v "^\s*$" | tail -40
