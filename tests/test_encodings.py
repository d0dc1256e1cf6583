"""The FLAC writer of the shard format: lossless for any length and rate, 4096-sample blocks, no padding."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from contracts.encodings import decode_flac, encode_flac


def metadata_blocks(data: bytes) -> list[tuple[int, bytes]]:
    """(type, body) of each metadata block of a FLAC file (0 STREAMINFO, 1 PADDING, 4 VORBIS_COMMENT)."""
    assert data[:4] == b"fLaC"
    blocks, i, last = [], 4, False
    while not last:
        head, size = data[i], int.from_bytes(data[i + 1 : i + 4], "big")
        blocks.append((head & 0x7F, data[i + 4 : i + 4 + size]))
        last, i = bool(head & 0x80), i + 4 + size
    return blocks


@pytest.mark.parametrize("rate", [8000, 16_000, 44_100])
@pytest.mark.parametrize("length", [1, 4095, 4096, 4097, 3 * 16_000 + 17])
def test_flac_round_trip_is_sample_exact(rate, length):
    rng = np.random.default_rng(length)
    t = np.arange(length) / rate
    samples = np.clip(8000 * np.sin(2 * np.pi * 330 * t) + rng.normal(0, 2000, length), -32768, 32767)
    samples = samples.astype(np.int16)
    samples[: min(length, 3)] = [-32768, 32767, 0][: min(length, 3)]  # the extremes survive too
    data = encode_flac(samples, rate)
    pcm, got_rate = decode_flac(data)
    assert got_rate == rate
    assert np.array_equal(np.round(pcm * 32768).astype(np.int16), samples)


def test_flac_blocks_of_4096_samples_and_no_padding():
    samples = (np.random.default_rng(0).normal(0, 3000, 10 * 16_000)).astype(np.int16)
    blocks = metadata_blocks(encode_flac(samples, 16_000))
    kinds = [k for k, _ in blocks]
    assert kinds[0] == 0 and 1 not in kinds, kinds
    min_block, max_block = struct.unpack(">HH", blocks[0][1][:4])
    assert (min_block, max_block) == (4096, 4096)
    total = int.from_bytes(blocks[0][1][13:18], "big") & ((1 << 36) - 1)  # samples in the stream
    assert total == len(samples)
