"""`labels.csv`: the labels a reviewer gave a site's recordings in the review page (`review`), read by
`adapt --labels`.

One row per labelled recording: its path as the predictions CSV names it (relative to the folder `predict` read,
which is `adapt --input`), its audio digest when the review was built, and the label. The digest is the one `adapt`
records for every site recording (sha256 of the file's bytes, first 16 hex digits): a recording changed or replaced
since it was reviewed is caught, not silently fitted with another recording's label.

labels.csv is someone else's file, so it is data only: every path must name a file under `--input` (no absolute
path, no `..`, no link leading out of it), and nothing is read before its row has passed those checks.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from ..runtime.fileio import file_digest

log = logging.getLogger(__name__)
COLUMNS = ("path", "audio_digest", "label")
LEAK, NOT_LEAK, UNSURE = "leak", "not leak", "unsure"
VALUES = (LEAK, NOT_LEAK, UNSURE)


def recording_digest(path: Path) -> str:
    """The audio digest of a recording as labels.csv and adapt's site record keep it."""
    return file_digest(path)[:16]


@dataclass(frozen=True)
class Labels:
    """A labels.csv read: `pairs` are (recording, label), the label the leak class's name for "leak" and NOT_LEAK
    for "not leak" (no class: the page does not say which of the other classes a recording is)."""

    path: Path
    sha256: str  # of the bytes parsed, so the report names exactly what was read
    rows: int  # data rows, blank lines not counted
    unsure: int
    pairs: list[tuple[Path, str]] = field(default_factory=list)

    def about(self) -> dict:
        return {"path": str(self.path), "sha256": self.sha256, "rows": self.rows, "unsure": self.unsure}


def read_labels(csv_path: str | Path, root: str | Path, leak_class_name: str) -> list[tuple[Path, str]]:
    """The (recording, label) pairs of a labels.csv whose paths are relative to `root` ("unsure" rows left out)."""
    return load_labels(csv_path, root, leak_class_name).pairs


def load_labels(csv_path: str | Path, root: str | Path, leak_class_name: str) -> Labels:
    """labels.csv checked row by row against the recordings under `root` (see `read_labels`)."""
    csv_path, root = Path(csv_path), Path(root)
    if not csv_path.is_file():
        raise FileNotFoundError(f"--labels {csv_path}: no such file; export labels.csv from the review page "
                                "(python -m leak_lightning review) and give its path")
    if not root.is_dir():
        raise FileNotFoundError(f"--input {root}: no such folder; with --labels give the folder the predictions "
                                "CSV's paths are relative to (the one predict read)")
    data = csv_path.read_bytes()
    rows = _rows(csv_path, data)
    pairs, first, unsure = [], {}, 0
    for line, fields in rows:
        text, digest, label = fields
        where = f"{csv_path} line {line}"
        key = os.path.normpath(text)
        if key in first and first[key][1] != label:
            raise ValueError(f"{csv_path} lines {first[key][0]} and {line}: {text!r} is labelled both "
                             f"{first[key][1]!r} and {label!r}; keep one row for it")
        if key in first:
            continue  # the same row again (two exports joined): counted once
        first[key] = (line, label)
        if label == UNSURE:
            unsure += 1
            continue
        path = _recording(root, text, where)
        _check_digest(path, text, digest, where)
        pairs.append((path, leak_class_name if label == LEAK else NOT_LEAK))
    if unsure:
        log.info("%d of %d rows of %s are labelled unsure: not used", unsure, len(rows), csv_path)
    return Labels(csv_path, hashlib.sha256(data).hexdigest(), len(rows), unsure, pairs)


def _rows(csv_path: Path, data: bytes) -> list[tuple[int, list[str]]]:
    """(line where the row starts, its three fields) of every data row, the header checked."""
    try:
        text = data.decode("utf-8-sig")  # a spreadsheet's save may add a byte-order mark
    except UnicodeDecodeError as err:
        raise ValueError(f"--labels {csv_path}: not UTF-8 text (byte {err.start}); export labels.csv from the review "
                         "page again") from None
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    rows, line = [], 1
    try:
        for fields in reader:
            rows.append((line, fields))
            line = reader.line_num + 1
    except csv.Error as err:
        raise ValueError(f"{csv_path} line {line}: {err}; quote a field holding a comma, quote or line break "
                         "(\"a,b.wav\"), with a quote inside doubled") from None
    header = rows[0][1] if rows else []
    if header != list(COLUMNS):
        raise ValueError(f"{csv_path} line 1: the header is {','.join(header)!r}, not {','.join(COLUMNS)!r}; give "
                         "the labels.csv the review page exported")
    rows = [(n, f) for n, f in rows[1:] if f]  # blank lines (a trailing one) are no rows
    for n, fields in rows:
        if len(fields) != len(COLUMNS):
            raise ValueError(f"{csv_path} line {n}: {len(fields)} fields, not 3 ({','.join(COLUMNS)}); quote a path "
                             "holding a comma (\"a,b.wav\")")
        if fields[2] not in VALUES:
            raise ValueError(f"{csv_path} line {n}: label {fields[2]!r} is not one of {', '.join(VALUES)}; correct "
                             "it or remove the row")
    return rows


def _recording(root: Path, text: str, where: str) -> Path:
    """The file `text` names under `root`, refused where it could name anything outside it."""
    rel = PurePosixPath(text)
    if not text or "\0" in text or rel.is_absolute() or Path(text).is_absolute():
        raise ValueError(f"{where}: {text!r} is not a path relative to --input {root}; labels.csv names recordings "
                         "as the predictions CSV does (relative to the folder predict read): correct or remove the row")
    if ".." in rel.parts or ".." in Path(text).parts:
        raise ValueError(f"{where}: {text!r} goes up out of --input {root} ('..'); labels.csv names only recordings "
                         "under --input: correct or remove the row")
    path = root / text
    target = path.resolve()
    if not target.is_relative_to(root.resolve()):
        raise ValueError(f"{where}: {text!r} is a link to {target}, outside --input {root}; labels.csv can only "
                         "name recordings under --input: copy the recording in, or remove the row")
    if not path.is_file():
        missing = "is not a file" if path.exists() else "was not found"
        raise ValueError(f"{where}: {text!r} {missing} under --input {root}; give as --input the folder the "
                         "predictions CSV's paths are relative to (the one predict read), or remove the row")
    return path


def _check_digest(path: Path, text: str, digest: str, where: str) -> None:
    got = recording_digest(path)
    if not digest:
        raise ValueError(f"{where}: {text!r} has no audio digest (the review could not read it); review it again "
                         "or remove the row")
    if digest.lower() != got:
        raise ValueError(f"{where}: {text!r}: its audio digest is {got}, labels.csv says {digest}: the recording "
                         "changed since it was reviewed; review it again or remove the row")
