"""Streaming HDF5 writer: rows are appended batch by batch, never assembled in RAM."""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

import h5py
import numpy as np

from ..data import schema
from ..features import FeatureConfig
from ..fileio import temp_sibling


class SplitWriter:
    """Appends rows to a temporary HDF5 file; `commit()` renames it to its final name."""

    def __init__(self, final_path: Path, cfg: FeatureConfig, labels: list[str],
                 extra_attrs: dict | None = None) -> None:
        self.final_path = Path(final_path)
        self.tmp_path = temp_sibling(self.final_path)
        self.rows = 0
        self._h5 = h5py.File(self.tmp_path, "w")
        try:
            self._create(cfg, labels, extra_attrs or {})
        except BaseException:  # an interrupt here must not leave the temporary file behind
            self.discard()
            raise

    def _create(self, cfg: FeatureConfig, labels: list[str], extra_attrs: dict) -> None:
        shape = cfg.segment_shape
        # One file per chunk: a reader takes a whole file's segments in one uncompressed read.
        self._seg = self._h5.create_dataset(schema.SEGMENTS, shape=(0, *shape), maxshape=(None, *shape),
                                            dtype=np.float16, chunks=(1, *shape))
        self._lab = self._h5.create_dataset(schema.LABELS, shape=(0,), maxshape=(None,),
                                            dtype=np.int16, chunks=(4096,))
        text = h5py.string_dtype("utf-8")
        self._paths = self._h5.create_dataset(schema.FILE_PATHS, shape=(0,), maxshape=(None,),
                                              dtype=text, chunks=(1024,))
        self._sensors = self._h5.create_dataset(schema.SENSOR_IDS, shape=(0,), maxshape=(None,),
                                                dtype=text, chunks=(1024,))
        attrs = self._h5.attrs
        attrs[schema.ATTR_CONFIG] = cfg.to_json()
        attrs[schema.ATTR_LABELS] = json.dumps(labels)
        attrs[schema.ATTR_LABEL2ID] = json.dumps({name: i for i, name in enumerate(labels)})
        attrs[schema.ATTR_VERSION] = schema.FORMAT_VERSION
        attrs[schema.ATTR_CREATED] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        for key, value in extra_attrs.items():
            attrs[key] = value

    def append(self, segments: np.ndarray, labels: np.ndarray, paths: list[str],
               sensors: list[str]) -> None:
        """Append B rows: segments (B, L, S, n_mels, T) float16, labels (B,)."""
        n = len(labels)
        if n == 0:
            return
        start, end = self.rows, self.rows + n
        for ds in (self._seg, self._lab, self._paths, self._sensors):
            ds.resize(end, axis=0)
        self._seg[start:end] = segments
        self._lab[start:end] = labels
        self._paths[start:end] = paths
        self._sensors[start:end] = sensors
        self.rows = end

    def commit(self) -> Path:
        """Close, fsync and atomically move the file to its final name."""
        self._h5.close()
        with open(self.tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(self.tmp_path, self.final_path)
        return self.final_path

    def discard(self) -> None:
        """Close and delete the temporary file (after an error or interrupt)."""
        try:
            self._h5.close()
        finally:
            self.tmp_path.unlink(missing_ok=True)
