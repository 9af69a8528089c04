"""Synthetic call audio: 8 kHz, 16-bit, mono PCM WAV, the format S-Series PBXs record.

Content is a pure function of (seed, seconds), so a recording regenerated from the
same call is byte-identical, and tests can compare against it.
"""

from __future__ import annotations

import array
import hashlib
import math
import random
import struct
import sys
from collections.abc import Iterator

SAMPLE_RATE = 8000
BITS_PER_SAMPLE = 16
CHANNELS = 1
BYTES_PER_SECOND = SAMPLE_RATE * CHANNELS * BITS_PER_SAMPLE // 8
HEADER_SIZE = 44

# Whole files are assembled from a small palette of one-second blocks: building each
# second sample by sample would take seconds for a long call.
_PALETTE_SIZE = 8


def wav_size(seconds: int) -> int:
    return HEADER_SIZE + seconds * BYTES_PER_SECOND


def wav_header(data_bytes: int) -> bytes:
    """The 44-byte canonical header; the RIFF size field is the file length - 8."""
    block_align = CHANNELS * BITS_PER_SAMPLE // 8
    return struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF",
        36 + data_bytes,
        b"WAVE",
        b"fmt ",
        16,
        1,  # PCM
        CHANNELS,
        SAMPLE_RATE,
        SAMPLE_RATE * block_align,
        block_align,
        BITS_PER_SAMPLE,
        b"data",
        data_bytes,
    )


def _rng(seed: str) -> random.Random:
    # random.Random(str) hashes with a per-process salt only for str in some
    # versions; a digest makes the seed stable everywhere.
    return random.Random(int.from_bytes(hashlib.sha256(seed.encode()).digest()[:8], "big"))


def _second_of_audio(rng: random.Random) -> bytes:
    """One second: two voice-band tones with a slow envelope, plus a little noise."""
    f1 = rng.uniform(180.0, 420.0)
    f2 = rng.uniform(600.0, 1800.0)
    amp = rng.uniform(3000.0, 9000.0)
    w1 = 2 * math.pi * f1 / SAMPLE_RATE
    w2 = 2 * math.pi * f2 / SAMPLE_RATE
    we = 2 * math.pi * rng.uniform(1.0, 4.0) / SAMPLE_RATE
    noise = rng.random
    samples = array.array(
        "h",
        (
            int(
                amp * (0.6 + 0.4 * math.sin(we * n)) * (0.7 * math.sin(w1 * n) + 0.3 * math.sin(w2 * n))
                + (noise() - 0.5) * 400.0
            )
            for n in range(SAMPLE_RATE)
        ),
    )
    if sys.byteorder != "little":
        samples.byteswap()
    return samples.tobytes()


def wav_chunks(seed: str, seconds: int) -> Iterator[bytes]:
    """The file as a header followed by one-second blocks (references, not copies)."""
    seconds = max(0, int(seconds))
    rng = _rng(seed)
    palette = [_second_of_audio(rng) for _ in range(min(_PALETTE_SIZE, max(seconds, 1)))]
    yield wav_header(seconds * BYTES_PER_SECOND)
    for _ in range(seconds):
        yield palette[rng.randrange(len(palette))]


def make_wav(seed: str, seconds: int) -> bytes:
    return b"".join(wav_chunks(seed, seconds))


def write_wav(path: str, seed: str, seconds: int) -> int:
    """Write the WAV to *path*; returns its size."""
    size = 0
    with open(path, "wb") as out:
        for chunk in wav_chunks(seed, seconds):
            out.write(chunk)
            size += len(chunk)
    return size
