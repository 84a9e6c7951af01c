"""WAV folders → TRAINING/VALIDATION/TESTING_DATASET.H5.

Decoder processes fill reusable shared-memory batch buffers several batches ahead; the
main thread computes log-mel on the device; a writer thread appends rows to HDF5. Peak
memory is a few batches, whatever the corpus size.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from ..audio.decode import ClipSpec
from ..audio.features import FeatureConfig, LogMelFrontend
from ..audio.scan import printable
from .discover import WavItem
from .workers import DecoderPool
from .writer import SplitWriter

log = logging.getLogger(__name__)


class DecoderDied(ValueError):
    """A decoder process ended abruptly (SIGKILL, the OOM killer): the build stops with one line."""


@dataclass
class SplitResult:
    files: int = 0
    skipped: list[dict] = field(default_factory=list)
    flagged: list[dict] = field(default_factory=list)  # kept, but clipped or out of range


@dataclass(frozen=True)
class _Written:
    split: str
    row: int
    path: str
    label: str


class ContentIndex:
    """The audio a build has written so far, by digest: a copy in the same split is skipped, the same
    audio under two labels is a conflict (both copies skipped), the same audio in two splits is a leak
    between them (`duplicates="error"`: listed, and the build stops; "first": kept in the first split)."""

    def __init__(self, duplicates: str = "error") -> None:
        self.duplicates = duplicates
        self.written: dict[int, _Written] = {}
        self.conflicted: dict[int, tuple[_Written, _Written]] = {}  # the first two copies that disagree
        self.leaks: list[tuple[_Written, str, str]] = []  # (first copy, split, path of the later copy)
        self.drop: dict[str, dict[int, dict]] = {}  # split → row → skip entry: earlier copies found in conflict

    def check(self, digest: int, split: str, path: str, label: str) -> str | None:
        """Why this recording is not to be written, or None: its audio is new."""
        if digest in self.conflicted:
            first, other = self.conflicted[digest]
            return (f"conflicting labels: the same audio as {first.path} ({first.label}) and {other.path} "
                    f"({other.label}); every copy is skipped: correct the labels")
        first = self.written.get(digest)
        if first is None:
            return None
        if first.label != label:
            self.conflicted[digest] = (first, _Written(split, -1, path, label))
            del self.written[digest]
            self.drop.setdefault(first.split, {})[first.row] = {
                "split": first.split, "path": first.path, "label": first.label,
                "reason": f"conflicting labels: the same audio as {path} ({label}); correct the label of one"}
            return (f"conflicting labels: the same audio as {first.path} ({first.label}); both are skipped: "
                    "correct the label of one")
        if first.split == split:
            return f"a copy of {first.path} (the same audio): skipped"
        if self.duplicates == "error":
            self.leaks.append((first, split, path))
        return f"the same audio as {first.path} in {first.split}: kept in {first.split} only"

    def add(self, digest: int, split: str, row: int, path: str, label: str) -> None:
        self.written[digest] = _Written(split, row, path, label)

    def leak_error(self) -> ValueError:
        pairs = "; ".join(f"{split} {path} = {first.split} {first.path}" for first, split, path in self.leaks[:5])
        more = f" and {len(self.leaks) - 5} more" if len(self.leaks) > 5 else ""
        return ValueError(f"{len(self.leaks)} recording(s) hold the same audio as a recording of an earlier split, "
                          f"a leak between splits (the model would be scored on recordings it trained on): {pairs}"
                          f"{more}; remove the copies, or pass --duplicates first to keep each only in its first "
                          "split (TRAINING, then VALIDATION, then TESTING)")


@dataclass
class _Batch:
    items: list[WavItem]
    buffer: int  # index of the shared buffer the workers fill
    futures: list[Future]


class _Writer(threading.Thread):
    """Owns the HDF5 writes so they overlap decoding and mel; errors resurface in `put`."""

    def __init__(self, writer: SplitWriter) -> None:
        super().__init__(daemon=True, name="h5-writer")
        self.writer, self.q, self.error = writer, queue.Queue(maxsize=2), None

    def run(self) -> None:
        while (job := self.q.get()) is not None:
            if self.error is None:
                try:
                    self.writer.append(*job)
                except BaseException as err:  # handed to the main thread
                    self.error = err

    def put(self, job) -> None:
        if self.error is not None:
            raise self.error
        self.q.put(job)

    def finish(self) -> None:
        self.q.put(None)
        self.join()
        if self.error is not None:
            raise self.error


class BatchBuilder:
    """Runs the decode → mel → write pipeline for one split at a time."""

    def __init__(self, cfg: FeatureConfig, label_ids: dict[str, int], device: torch.device,
                 batch_size: int, num_workers: int, prefetch: int = 3, duplicates: str = "error") -> None:
        self.cfg, self.label_ids, self.device = cfg, label_ids, device
        self.index = ContentIndex(duplicates)
        # a shard of a build records every recording it checked by content, stored or not: the join replays
        # them in the one-process order (builder/shards.py), so copies across shards are decided the same way
        self.events: list[tuple[str, int, str, str, bool]] = []
        self.batch_size, self.prefetch = batch_size, prefetch
        self.frontend = LogMelFrontend(cfg).to(device)
        self.decoders = DecoderPool(num_workers, batch_size, ClipSpec.of(cfg), prefetch)
        self.free = deque(range(prefetch))

    def close(self) -> None:
        self.decoders.close()

    def _submit(self, items: list[WavItem]) -> _Batch:
        buffer = self.free.popleft()
        return _Batch(items, buffer, self.decoders.submit(buffer, [str(it.path) for it in items]))

    def run(self, split: str, items: list[WavItem], writer: SplitWriter, bar: tqdm) -> SplitResult:
        result, out = SplitResult(), _Writer(writer)
        out.start()
        pending: deque[_Batch] = deque()
        try:
            for i in range(0, len(items), self.batch_size):
                pending.append(self._submit(items[i: i + self.batch_size]))
                if len(pending) == self.prefetch:
                    self._finish(pending.popleft(), split, result, out, bar)
            while pending:
                self._finish(pending.popleft(), split, result, out, bar)
        except BrokenProcessPool:  # submit or a result: the pool is unusable once one process is gone
            raise DecoderDied(f"a decoder process died while decoding split {split}: it was killed from outside "
                              "or ran out of memory. Nothing was replaced (an earlier dataset there is intact); "
                              "the temporary files and the decoders' shared memory were freed. Run the build "
                              "again (with a smaller --batch_size or --num_workers if memory is short)") from None
        finally:
            for batch in pending:  # after an error: drop what has not started
                for fut in batch.futures:
                    fut.cancel()
            out.finish()
        return result

    def _finish(self, batch: _Batch, split: str, result: SplitResult, out: _Writer, bar: tqdm) -> None:
        decoded = [r for fut in batch.futures for r in fut.result()]
        reasons = [reason for reason, _, _ in decoded]
        keep = [i for i, reason in enumerate(reasons) if reason is None]
        mel = None
        if keep:
            wave = torch.from_numpy(self.decoders.views[batch.buffer][: len(batch.items)])
            if len(keep) < len(batch.items):
                wave = wave[keep]
            mel = self.frontend(wave.to(self.device)).half()  # (B, L, S, n_mels, T), as stored
            # what fit refuses (data/h5.py) is not written: a file scaled far beyond ±1 gives features
            # no real recording can, and one such row would stop training on the whole split
            for k, reason in zip(list(keep), self._beyond_range(mel)):
                if reason is not None:
                    reasons[k] = reason
            row = result.files
            for k in keep:  # by content: copies, conflicting labels, leaks between splits
                item, digest = batch.items[k], decoded[k][2]
                if reasons[k] is None:
                    reasons[k] = self.index.check(digest, split, item.rel_path, item.label)
                    self.events.append((split, int(digest), item.rel_path, item.label, reasons[k] is None))
                    if reasons[k] is None:
                        self.index.add(digest, split, row, item.rel_path, item.label)
                        row += 1
            if len(stored := [k for k in keep if reasons[k] is None]) < len(keep):
                mel = mel[[keep.index(k) for k in stored]]
                keep = stored
        for item, reason, (_, flags, _) in zip(batch.items, reasons, decoded):
            entry = {"split": split, "path": item.rel_path, "label": item.label}
            if reason is not None:
                log.warning("skipped %s: %s", printable(item.path), reason)
                result.skipped.append({**entry, "reason": reason})
            elif flags:
                log.warning("%s: %s (kept; check the recording)", printable(item.path), ", ".join(flags))
                result.flagged.append({**entry, "flags": list(flags)})
        if keep:
            kept = [batch.items[i] for i in keep]
            out.put((mel.cpu().numpy(),
                     np.array([self.label_ids[it.label] for it in kept], dtype=np.int16),
                     [it.rel_path for it in kept], [it.sensor_id for it in kept], [decoded[i][2] for i in keep]))
            result.files += len(kept)
        self.free.append(batch.buffer)
        bar.update(len(batch.items))

    def _beyond_range(self, mel: torch.Tensor) -> list[str | None]:
        """Per row: why its features cannot be stored (non-finite, or outside the frontend's dB range), or None."""
        lo, hi = self.cfg.db_range()
        flat = mel.reshape(len(mel), -1).float()
        low, high = flat.amin(1).tolist(), flat.amax(1).tolist()  # NaN propagates into both
        return [None if lo <= a and b <= hi else
                f"beyond the frontend's range: its features reach {b:.0f} dB (at most {hi:.0f} dB for samples within "
                "±32768); the samples are scaled wrongly (floats far beyond ±1?): rescale the file to ±1"
                for a, b in zip(low, high)]
