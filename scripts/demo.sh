#!/usr/bin/env bash
# Fresh machine → synthetic WAV corpus → HDF5 dataset → fit → test (best checkpoint). Output in demo_out/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
OUT=${DEMO_OUT:-demo_out}
.venv/bin/python scripts/make_synthetic_dataset.py --output "$OUT/wav" --layout origin \
  --files-per-label 60 --sensors-per-label 12 --seed 0
.venv/bin/python -m leak_lightning build --input "$OUT/wav" --output "$OUT/data" --overwrite true
.venv/bin/python -m leak_lightning fit --config configs/demo.yaml --overwrite true  # the demo re-runs from scratch
.venv/bin/python -m leak_lightning test --config configs/demo.yaml --ckpt_path best
