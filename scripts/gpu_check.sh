#!/usr/bin/env bash
# One short pass over the GPU paths for a lent CUDA machine: fit benchmark (bf16 + compile),
# build benchmark (GPU mel), and a tiny end-to-end build → fit → test on CUDA.
# Usage: bash scripts/gpu_check.sh OUT_DIR   (logs land in OUT_DIR)
set -uo pipefail
OUT=${1:-/tmp/gpu_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD:${PYTHONPATH:-}"
PY=${PY:-python3}
nvidia-smi -L | tee "$OUT/device.txt"
# fused AdamW is the CUDA default; the second run shows what it buys on each side
timeout 150 $PY scripts/benchmark_fit.py --repeats 3 --warmup 30 --steps 300 > "$OUT/bench_fit.log" 2>&1
echo "benchmark_fit rc=$?" | tee -a "$OUT/device.txt"
timeout 120 $PY scripts/benchmark_fit.py --repeats 3 --warmup 30 --steps 300 --fused off \
  > "$OUT/bench_fit_foreach.log" 2>&1
echo "benchmark_fit --fused off rc=$?" | tee -a "$OUT/device.txt"
timeout 100 $PY scripts/benchmark_build.py --files 20000 --resampled-files 600 --unique 150 \
  --naive-files 200 --repeats 2 --workdir /tmp/bench > "$OUT/bench_build.log" 2>&1
echo "benchmark_build rc=$?" | tee -a "$OUT/device.txt"
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
grep -h "ratio\|segments/s\|fused\|files/s\|corpus\|TEST results\|file level\|precision\|compile\|Error\|error" \
  "$OUT"/*.log | grep -v "^\s*$" | tail -40
