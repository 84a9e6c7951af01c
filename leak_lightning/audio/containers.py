"""What an audio file's header declares, read by hand for the containers libsndfile trusts too much.

libsndfile quietly shrinks the frame count of a cut WAV, RF64, W64 or AIFF file to what is on
disk, so a recording cut off mid-transfer would pass as a short clip and be zero-padded. The
header still says how long the recording was: comparing the two tells a truncated file.
FLAC declares its length in STREAMINFO, which libsndfile reports as is; a cut FLAC stream shows
when decoding comes up short. Other containers (OGG, ...) declare nothing we can check here.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO


@dataclass(frozen=True)
class Header:
    container: str  # "WAV", "RF64", "W64", "AIFF", "FLAC"
    frames: int | None  # frames the header declares; None when it says "unknown" (streaming recorders)
    data_bytes: int  # sample bytes actually present after the data chunk header (0 when not known)


_UNKNOWN32 = 0xFFFFFFFF
# WAVE format tags whose data holds one block_align-sized frame per sample instant: PCM, IEEE float,
# A-law, µ-law, and WAVE_FORMAT_EXTENSIBLE (PCM or float in practice).
_PLAIN_TAGS = {1, 3, 6, 7, 0xFFFE}
# Block codecs that state their frames per block in the fmt extension: MS ADPCM, IMA ADPCM, GSM 6.10.
_BLOCK_TAGS = {2, 0x11, 0x31}


@dataclass(frozen=True)
class _Fmt:
    tag: int = 1
    block_align: int = 0
    frames_per_block: int = 0  # from the fmt extension of a block codec; 0 when it does not say


def _fmt(payload: bytes, order: str = "<") -> _Fmt:
    tag, _, _, _, block_align = struct.unpack(f"{order}HHIIH", payload[:14])
    per_block = struct.unpack(f"{order}H", payload[18:20])[0] if len(payload) >= 20 else 0
    return _Fmt(tag, block_align, per_block if tag in _BLOCK_TAGS else 0)


def _frames(data_size: int, fmt: _Fmt, fact: int | None = None) -> int | None:
    """Frames a data chunk of `data_size` bytes declares. For a compressed format block_align is the
    size of a block of many frames, not of one frame: counted as blocks it would declare a few hundred
    frames, and a cut ADPCM or GSM file would never show as cut."""
    if fmt.block_align <= 0:
        return None
    if fmt.tag in _PLAIN_TAGS:
        return data_size // fmt.block_align
    if fmt.frames_per_block:
        # libsndfile decodes a partial last block of IMA ADPCM and GSM 6.10, and drops MS ADPCM's (tag 2):
        # counted otherwise, a complete MS ADPCM file a recorder stopped mid-block would read as cut
        blocks = data_size // fmt.block_align if fmt.tag == 2 else -(-data_size // fmt.block_align)
        return blocks * fmt.frames_per_block
    return fact  # another codec (G.721, NMS ADPCM, ...): the fact chunk's count, or unknown


def _riff(f: BinaryIO, size: int, rf64: bool, order: str = "<") -> Header | None:
    """RIFF/WAVE and RF64/BW64: little-endian chunks; RF64 keeps the 64-bit data size in `ds64`.
    RIFX is the same layout big-endian (order ">")."""
    pos, fmt, ds64_data, fact = 12, _Fmt(), None, None
    while pos + 8 <= size:
        f.seek(pos)
        chunk_id, chunk_size = struct.unpack(f"{order}4sI", f.read(8))
        if chunk_id == b"ds64" and chunk_size >= 16:
            ds64_data = struct.unpack(f"{order}QQ", f.read(16))[1]
        elif chunk_id == b"fmt " and chunk_size >= 14:
            fmt = _fmt(f.read(min(chunk_size, 20)), order)
        elif chunk_id == b"fact" and chunk_size >= 4:
            fact = struct.unpack(f"{order}I", f.read(4))[0]
        elif chunk_id == b"data":
            present = size - pos - 8
            if rf64 and chunk_size == _UNKNOWN32 and ds64_data is not None:
                chunk_size = ds64_data
            elif chunk_size == _UNKNOWN32:  # "still recording" placeholder
                return Header("RF64" if rf64 else "WAV", None, present)
            return Header("RF64" if rf64 else "WAV", _frames(chunk_size, fmt, fact), present)
        pos += 8 + chunk_size + (chunk_size & 1)
    return None


def _w64(f: BinaryIO, size: int) -> Header | None:
    """Sony Wave64: 16-byte GUID chunk ids whose first four bytes spell the RIFF name, 64-bit
    sizes that include the 24-byte chunk header, chunks aligned to 8 bytes. Its fact chunk is not read:
    libsndfile writes nonsense there for MS ADPCM."""
    pos, fmt = 40, _Fmt()
    while pos + 24 <= size:
        f.seek(pos)
        guid, chunk_size = struct.unpack("<16sQ", f.read(24))
        if guid[:4] == b"fmt " and chunk_size >= 38:
            fmt = _fmt(f.read(min(chunk_size - 24, 20)))
        elif guid[:4] == b"data":
            return Header("W64", _frames(chunk_size - 24, fmt), size - pos - 24)
        if chunk_size < 24:
            return None
        pos += (chunk_size + 7) // 8 * 8
    return None


def _aiff(f: BinaryIO, size: int) -> Header | None:
    """AIFF/AIFC: big-endian chunks; COMM holds the frame count."""
    pos, frames = 12, None
    while pos + 8 <= size:
        f.seek(pos)
        chunk_id, chunk_size = struct.unpack(">4sI", f.read(8))
        if chunk_id == b"COMM" and chunk_size >= 8:
            comm = f.read(min(chunk_size, 22))
            frames = struct.unpack(">hI", comm[:6])[1]
            if comm[18:22] == b"ima4":  # Apple IMA ADPCM counts packets of 64 frames, not frames
                frames *= 64
        elif chunk_id == b"SSND":
            present = max(0, size - pos - 16)
            return Header("AIFF", frames, present) if frames is not None else None
        pos += 8 + chunk_size + (chunk_size & 1)
    return None


def _flac(f: BinaryIO) -> Header | None:
    f.seek(4)
    block = f.read(4 + 34)
    if len(block) < 38 or block[0] & 0x7F != 0:  # the first metadata block must be STREAMINFO
        return None
    total = int.from_bytes(block[4 + 13: 4 + 18], "big") & ((1 << 36) - 1)  # 36-bit sample count
    return Header("FLAC", total or None, 0)


def read_header(path: str | Path) -> Header | None:
    """The container's declared length, or None for containers (or damaged headers) not parsed here."""
    with open(path, "rb") as f:
        size = f.seek(0, 2)
        f.seek(0)
        head = f.read(16)
        try:
            if head[:4] in (b"RIFF", b"RF64", b"BW64") and head[8:12] == b"WAVE":
                return _riff(f, size, rf64=head[:4] != b"RIFF")
            if head[:4] == b"RIFX" and head[8:12] == b"WAVE":
                return _riff(f, size, rf64=False, order=">")
            if head[:4] == b"riff" and len(head) == 16:
                return _w64(f, size)
            if head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
                return _aiff(f, size)
            if head[:4] == b"fLaC":
                return _flac(f)
        except struct.error:  # a header cut inside a chunk header: libsndfile will say more
            return None
    return None
