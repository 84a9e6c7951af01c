"""The HDF5 contract shared by the builder (writer) and the data module (reader)."""

from __future__ import annotations

FORMAT_VERSION = 1

SEGMENTS = "segments_mel"  # float16 [F, L, S, n_mels, T], one file per chunk
LABELS = "labels"  # int16 [F]
TARGETS = "targets"  # optional uint8 [F, C] multi-hot; one-hot from LABELS when absent
FILE_PATHS = "file_paths"  # utf-8 [F], relative to the input root (absent in origin files)
SENSOR_IDS = "sensor_ids"  # utf-8 [F], "" when the name carries none
# uint64 [F]: 8 bytes of the sha256 of the row's decoded audio (the clip's mono float32 samples at the feature
# rate): a renamed, re-wrapped or losslessly re-encoded copy has the same digest (absent before 0.3)
AUDIO_DIGESTS = "audio_digests"

ATTR_CONFIG = "config_json"
ATTR_LABELS = "labels_json"
ATTR_LABEL2ID = "label2id_json"
ATTR_VERSION = "format_version"
ATTR_CREATED = "created_at_utc"
ATTR_BUILD_ID = "build_id"  # the same in every split of one build, and in its dataset.json
ATTR_LABEL_COUNTS = "label_counts_json"  # {label: files}, checked against /labels on load

SPLIT_FILES = {
    "TRAINING": "TRAINING_DATASET.H5",
    "VALIDATION": "VALIDATION_DATASET.H5",
    "TESTING": "TESTING_DATASET.H5",
}
MANIFEST = "dataset.json"  # written last by a build: its splits, build id, sizes and label counts
SKIP_REPORT = "skipped_files.json"  # files left out, with the reason
FLAG_REPORT = "flagged_files.json"  # files kept despite a quality flag (clipped, out of range)
