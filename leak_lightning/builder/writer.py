"""Streaming HDF5 writer: rows are appended batch by batch, never assembled in RAM; a build's splits
are published together (renamed into place, then `dataset.json` written last) or not at all."""

from __future__ import annotations

import json
import os
import weakref
from datetime import datetime, timezone
from pathlib import Path

import h5py
import numpy as np

from ..audio.features import FeatureConfig
from ..data import schema
from ..runtime.fileio import check_output_name, fsync_dir, make_private, remove_private, write_atomic

UNCLOSED: list[Path] = []  # temporaries HDF5 could not close (see SplitWriter.discard)


class SplitWriter:
    """Appends rows to a temporary HDF5 file; `finish()` closes and fsyncs it, `publish` renames it.

    Segments and labels carry HDF5 fletcher32 checksums on every chunk: HDF5 verifies them on each
    read, so a flipped byte on disk or in a copy is an error, not a silent wrong feature or label.
    (Variable-length strings cannot take filters; paths and sensor ids are not checksummed.)

    The temporary file lives in a private folder beside the target (see fileio.private_folder): an
    output folder shared with other users cannot have a link planted at its name. The folder goes
    when the file is published or discarded, or when the writer is dropped without either (an
    interrupt before its caller held it).
    """

    def __init__(self, final_path: Path, cfg: FeatureConfig, labels: list[str],
                 extra_attrs: dict | None = None) -> None:
        self.final_path = Path(final_path)
        check_output_name(self.final_path)
        self.rows = 0
        self.label_counts = np.zeros(len(labels), dtype=np.int64)
        self._labels = labels
        self._h5: h5py.File | None = None
        folder, ident = make_private(self.final_path)
        self.tmp_path = folder / self.final_path.name
        self._remove_folder = weakref.finalize(self, remove_private, folder, ident)
        try:
            self._h5 = h5py.File(self.tmp_path, "w-")  # O_EXCL: never through a link, even in our folder
            self._create(cfg, labels, extra_attrs or {})
        except BaseException:  # an interrupt here must not leave the temporary file behind
            self.discard()
            raise

    def _create(self, cfg: FeatureConfig, labels: list[str], extra_attrs: dict) -> None:
        shape = cfg.segment_shape
        # One file per chunk: a reader takes a whole file's segments in one uncompressed read.
        self._seg = self._h5.create_dataset(schema.SEGMENTS, shape=(0, *shape), maxshape=(None, *shape),
                                            dtype=np.float16, chunks=(1, *shape), fletcher32=True)
        self._lab = self._h5.create_dataset(schema.LABELS, shape=(0,), maxshape=(None,),
                                            dtype=np.int16, chunks=(4096,), fletcher32=True)
        text = h5py.string_dtype("utf-8")
        self._paths = self._h5.create_dataset(schema.FILE_PATHS, shape=(0,), maxshape=(None,),
                                              dtype=text, chunks=(1024,))
        self._sensors = self._h5.create_dataset(schema.SENSOR_IDS, shape=(0,), maxshape=(None,),
                                                dtype=text, chunks=(1024,))
        self._digests = self._h5.create_dataset(schema.AUDIO_DIGESTS, shape=(0,), maxshape=(None,),
                                                dtype=np.uint64, chunks=(4096,), fletcher32=True)
        attrs = self._h5.attrs
        attrs[schema.ATTR_CONFIG] = cfg.to_json()
        attrs[schema.ATTR_LABELS] = json.dumps(labels)
        attrs[schema.ATTR_LABEL2ID] = json.dumps({name: i for i, name in enumerate(labels)})
        attrs[schema.ATTR_VERSION] = schema.FORMAT_VERSION
        attrs[schema.ATTR_CREATED] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        for key, value in extra_attrs.items():
            attrs[key] = value

    @property
    def _columns(self) -> tuple:
        seg = () if self._seg.is_virtual else (self._seg,)
        return *seg, self._lab, self._paths, self._sensors, self._digests

    def virtual_segments(self, parts: list[tuple[str, int, int, int]]) -> None:
        """Make /segments_mel an HDF5 virtual dataset over other files (a sharded build's join): `parts` are
        (file name relative to this file's folder, rows in that file, first row, end row), in order. The rows'
        other columns are then appended with `segments=None`. HDF5 reads a source's chunks through its own
        fletcher32 filter, so a virtual split is as checksummed as its sources."""
        shape = self._seg.shape[1:]
        layout = h5py.VirtualLayout(shape=(sum(hi - lo for _, _, lo, hi in parts), *shape), dtype=np.float16)
        at = 0
        for name, rows, lo, hi in parts:
            layout[at: at + hi - lo] = h5py.VirtualSource(name, schema.SEGMENTS, shape=(rows, *shape))[lo:hi]
            at += hi - lo
        del self._h5[schema.SEGMENTS]
        self._seg = self._h5.create_virtual_dataset(schema.SEGMENTS, layout, fillvalue=np.nan)

    def append(self, segments: np.ndarray | None, labels: np.ndarray, paths: list[str],
               sensors: list[str], digests: list[int] | None = None) -> None:
        """Append B rows: segments (B, L, S, n_mels, T) float16 (None when virtual), labels (B,), audio digests."""
        n = len(labels)
        if n == 0:
            return
        start, end = self.rows, self.rows + n
        for ds in self._columns:
            ds.resize(end, axis=0)
        if segments is not None:
            self._seg[start:end] = segments
        self._lab[start:end] = labels
        self._paths[start:end] = paths
        self._sensors[start:end] = sensors
        self._digests[start:end] = np.array(digests if digests is not None else [0] * n, dtype=np.uint64)
        self.label_counts += np.bincount(labels, minlength=len(self._labels))
        self.rows = end
        # HDF5 buffers megabytes: flushing per batch makes a full disk fail here, with one batch
        # of unwritten data, rather than at close with all of it (which cannot be discarded cleanly)
        self._h5.flush()

    def drop_rows(self, rows: set[int], block: int = 1024) -> None:
        """Remove rows already written (a recording found later to conflict): the rows after the first
        one dropped move up, block by block, and the datasets shrink."""
        if not rows:
            return
        dropped = np.asarray(self._lab[sorted(rows)], dtype=np.int64)  # before the rows move
        keep = np.array([r for r in range(min(rows), self.rows) if r not in rows], dtype=np.int64)
        dest = min(rows)
        for lo in range(0, len(keep), block):
            src = keep[lo: lo + block]
            for ds in self._columns:
                ds[dest: dest + len(src)] = ds[src[0]: src[-1] + 1][src - src[0]]
            dest += len(src)
        self.label_counts -= np.bincount(dropped, minlength=len(self._labels))
        for ds in self._columns:
            ds.resize(dest, axis=0)
        self.rows = dest

    def finish(self, build_id: str | None) -> None:
        """Record the build id and label counts, flush, close and fsync the temporary file."""
        if build_id is not None:
            self._h5.attrs[schema.ATTR_BUILD_ID] = build_id
        self._h5.attrs[schema.ATTR_LABEL_COUNTS] = json.dumps(self.counts())
        self._h5.flush()
        self._h5.close()
        fd = os.open(self.tmp_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def place(self) -> None:
        """Rename the finished file onto its target and remove the private folder."""
        os.replace(self.tmp_path, self.final_path)
        self._remove_folder()

    def commit(self) -> Path:
        """A standalone file (benchmarks, tests): finish it without a build id and move it into place."""
        self.finish(None)
        self.place()
        return self.final_path

    def counts(self) -> dict[str, int]:
        return {name: int(n) for name, n in zip(self._labels, self.label_counts)}

    def discard(self) -> None:
        """Close and delete the temporary file, whatever state it is in; never raises.

        After a failed write (a full disk) HDF5 still has to write its buffers on close; if that
        fails too, h5py later crashes the interpreter while freeing the half-closed file. Truncating
        the doomed file first gives its space back, so the close succeeds. A file that still cannot
        be closed is noted in `UNCLOSED`: the process must then leave with `os._exit`.
        """
        try:
            if self.tmp_path.exists():
                os.truncate(self.tmp_path, 0)
        except OSError:
            pass
        for _ in range(2):
            try:
                if self._h5 is not None:
                    self._h5.close()
                break
            except Exception:
                continue
        else:
            UNCLOSED.append(self.tmp_path)
        self.tmp_path.unlink(missing_ok=True)
        self._remove_folder()


def write_reports(folder: Path, skipped: list[dict], flagged: list[dict]) -> None:
    """`skipped_files.json` and `flagged_files.json` of a published build."""
    write_atomic(folder / schema.SKIP_REPORT, lambda f: json.dump(skipped, f, indent=2))
    write_atomic(folder / schema.FLAG_REPORT, lambda f: json.dump(flagged, f, indent=2))


def publish(writers: list[SplitWriter], folder: Path, manifest: dict) -> None:
    """Rename every finished split into place, then write `dataset.json` naming them, last.

    Renames cannot be atomic together; the manifest is the commit: a reader checks each split's
    build id and size against it (data/h5.py), so a crash between two renames leaves a set that is
    refused as mixed, never one that trains.
    """
    for writer in writers:
        writer.place()
    fsync_dir(folder)
    manifest["files"] = {w.final_path.name: {"bytes": w.final_path.stat().st_size, "rows": w.rows,
                                             "label_counts": w.counts()} for w in writers}
    write_atomic(folder / schema.MANIFEST, lambda f: json.dump(manifest, f, indent=2))
    fsync_dir(folder)
