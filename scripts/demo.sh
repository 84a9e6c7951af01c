#!/usr/bin/env bash
# Fresh machine → synthetic WAV corpus → HDF5 dataset → fit → test (report, plots) → predict from the
# checkpoint alone → export with parity → the build and predict over two processes → the review page → a site
# adaptation.
# Everything lands in demo_out/ (DEMO_OUT to change it).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
OUT=${DEMO_OUT:-demo_out}
PY=.venv/bin/python
RUN=$OUT/runs
$PY scripts/make_synthetic_dataset.py --output "$OUT/wav" --layout origin \
  --files-per-label 60 --sensors-per-label 12 --seed 0
$PY -m leak_lightning build --input "$OUT/wav" --output "$OUT/data" --overwrite true
DATA=(--data.train_h5 "$OUT/data/TRAINING_DATASET.H5" --data.val_h5 "$OUT/data/VALIDATION_DATASET.H5"
      --data.test_h5 "$OUT/data/TESTING_DATASET.H5" --trainer.default_root_dir "$RUN")
$PY -m leak_lightning fit --config configs/demo.yaml "${DATA[@]}" --overwrite true  # the demo re-runs from scratch
$PY -m leak_lightning test --config configs/demo.yaml "${DATA[@]}" --ckpt_path best
# a user with only the checkpoint and recordings: no config, no HDF5
$PY -m leak_lightning predict --ckpt_path "$RUN/checkpoints/best.ckpt" --data.predict_path "$OUT/wav/TESTING" \
  --output "$OUT/predictions.csv"
$PY -m leak_lightning export --ckpt_path "$RUN/checkpoints/best.ckpt" --format onnx --with_frontend true \
  --output "$OUT/export"
# the same over two processes (across nodes on a cluster: see docs/design.md, Several processes and machines): two build workers
# (torchrun) make the same dataset, and predict on two ranks writes the same CSV
$PY -m torch.distributed.run --standalone --nproc_per_node 2 -m leak_lightning build --input "$OUT/wav" \
  --output "$OUT/data_2workers" --overwrite true --log_level WARNING
$PY -m leak_lightning predict --ckpt_path "$RUN/checkpoints/best.ckpt" --data.predict_path "$OUT/wav/TESTING" \
  --output "$OUT/predictions_2ranks.csv" --trainer.devices 2 --trainer.accelerator cpu --trainer.strategy ddp \
  --log_level WARNING
$PY - "$OUT" <<'CHECK'
import json, sys
out = sys.argv[1]
ids = [json.load(open(f"{out}/{d}/dataset.json"))["build_id"] for d in ("data", "data_2workers")]
same_csv = open(f"{out}/predictions.csv", "rb").read() == open(f"{out}/predictions_2ranks.csv", "rb").read()
print(f"two build workers: build {ids[1][:12]}, {'the same as' if ids[0] == ids[1] else 'NOT the same as'} one process")
print(f"predict on two ranks: {'the same CSV as' if same_csv else 'NOT the same CSV as'} one process")
sys.exit(0 if ids[0] == ids[1] and same_csv else 1)
CHECK
# the predictions as a page to open in a browser: sensors over nights, spectrograms, audio, the review queue
$PY -m leak_lightning review --predictions "$OUT/predictions.csv" --recordings "$OUT/wav/TESTING" --overwrite true
# a new district whose sensors sit further from the leaks (a third of the level against the street's
# noise); 30 labelled recordings of it re-fit the threshold and calibration (cross-validated before/after)
$PY scripts/make_synthetic_dataset.py --output "$OUT/site" --layout pool --files-per-label 10 \
  --sensors-per-label 5 --seed 11 --labels LEAK NORMAL BACKGROUND --leak-level 0.33
$PY -m leak_lightning adapt --ckpt_path "$RUN/checkpoints/best.ckpt" --input "$OUT/site" --site district-7 \
  --output "$OUT/sites/district-7.ckpt" --overwrite true
cat <<DONE

Demo finished. Where things are:
  dataset      $OUT/data/{TRAINING,VALIDATION,TESTING}_DATASET.H5, dataset.json, skipped/flagged_files.json
  checkpoints  $RUN/checkpoints/best.ckpt, last.ckpt   (log: $RUN/train.log)
  test report  $RUN/test_report.json, $RUN/test_predictions.csv
  plots        $RUN/test_pr_roc.png, test_f1_threshold.png, test_confusion.png, test_scores.png
  TensorBoard  tensorboard --logdir $RUN/lightning_logs
  predictions  $OUT/predictions.csv (and predictions_2ranks.csv: the same, from two ranks)
  review       $OUT/predictions_review/index.html (open it in a browser; labels.csv from it feeds adapt --labels)
  2 workers    $OUT/data_2workers/ (the dataset built by two workers: splits over shards/)
  export       $OUT/export/best_network.onnx, best_with_frontend.onnx, best.json
  site         $OUT/sites/district-7.ckpt (adapted), district-7_adapt_report.json (before/after)
DONE
