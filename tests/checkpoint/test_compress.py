"""Blob compression: every mode round-trips, auto skips what does not pay."""

from __future__ import annotations

import gzip
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from checkpoint._compress import (
    MODES,
    choose_codec,
    compress,
    decompress,
    decompress_planes,
    shuffle,
    unshuffle,
    unshuffle_into,
)
from checkpoint.errors import CorruptCheckpoint


@settings(max_examples=40, deadline=None)
@given(st.binary(max_size=4096), st.sampled_from([1, 2, 4, 8]), st.sampled_from(MODES))
def test_every_mode_round_trips(data, itemsize, mode):
    data = data[: len(data) - len(data) % itemsize]
    packed, codec = compress(data, mode, itemsize=itemsize)
    assert bytes(decompress(packed, codec, raw_size=len(data))) == data


@settings(max_examples=30, deadline=None)
@given(st.binary(max_size=512), st.sampled_from([1, 2, 3, 4, 8, 16]))
def test_shuffle_is_inverted(data, itemsize):
    data = data[: len(data) - len(data) % itemsize]
    assert bytes(unshuffle(shuffle(data, itemsize), itemsize)) == data


def test_shuffle_groups_byte_k_of_every_element():
    values = np.array([0x01020304, 0x05060708], dtype="<u4")
    assert bytes(shuffle(values.tobytes(), 4)) == bytes([4, 8, 3, 7, 2, 6, 1, 5])


def test_codec_strings():
    floats = np.linspace(0, 1, 1 << 16, dtype=np.float32)
    assert compress(floats, "auto", itemsize=4)[1] == "shuffle+zstd"
    assert compress(floats, "zstd", itemsize=4)[1] == "zstd"
    assert compress(floats, "gzip", itemsize=4)[1] == "gzip"
    assert compress(floats, "none", itemsize=4)[1] == "none"
    assert compress(b"abc" * 1000, "auto", array=False)[1] == "zstd"


def test_gzip_is_level_6_and_readable_by_gzip():
    data = np.arange(50_000, dtype=np.int32).tobytes()
    packed, codec = compress(data, "gzip", itemsize=4)
    assert codec == "gzip"
    assert gzip.decompress(packed) == data
    assert packed == gzip.compress(data, compresslevel=6, mtime=0)


def test_auto_skips_incompressible_data():
    noise = os.urandom(1 << 20)
    assert choose_codec("auto", noise, itemsize=4) == "none"
    packed, codec = compress(noise, "auto", itemsize=4)
    assert codec == "none"
    assert packed == noise


def test_unknown_mode_is_a_value_error():
    with pytest.raises(ValueError):
        compress(b"x", "lz4")


@pytest.mark.parametrize("mode", ["auto", "zstd", "gzip"])
def test_truncated_or_flipped_blob_is_corrupt(mode):
    data = np.linspace(0, 1, 20_000, dtype=np.float32).tobytes()
    packed, codec = compress(data, mode, itemsize=4)
    with pytest.raises(CorruptCheckpoint):
        decompress(packed[: len(packed) // 2], codec, raw_size=len(data))
    flipped = bytearray(packed)
    flipped[len(flipped) // 2] ^= 0x10
    with pytest.raises(CorruptCheckpoint):
        decompress(bytes(flipped), codec, raw_size=len(data))


def test_wrong_size_and_unknown_codec_are_corrupt():
    with pytest.raises(CorruptCheckpoint):
        decompress(b"abcd", "none", raw_size=5)
    with pytest.raises(CorruptCheckpoint):
        decompress(b"abcd", "brotli")


@settings(deadline=None)  # timing never gates CI: a loaded 2-core machine took 271 ms once
@given(st.binary(max_size=300), st.sampled_from([1, 2, 3, 4, 8]), st.booleans())
def test_unshuffle_into_matches_unshuffle_and_xor(data, itemsize, xor):
    data = data[: len(data) // itemsize * itemsize]
    raw = np.frombuffer(data, dtype=np.uint8)
    other = np.frombuffer(bytes(reversed(data)), dtype=np.uint8)
    packed = shuffle(raw, itemsize)
    out = other.copy() if xor else np.empty(raw.size, dtype=np.uint8)
    unshuffle_into(out, packed, itemsize, xor_with=out if xor else None)
    expected = raw ^ other if xor else raw
    assert out.tobytes() == expected.tobytes()


@pytest.mark.parametrize("mode", ["auto", "zstd", "gzip", "none"])
def test_decompress_planes_leaves_the_shuffle_to_the_caller(mode):
    raw = np.arange(100_000, dtype=np.float32).view(np.uint8)
    blob, codec = compress(raw, mode, itemsize=4)
    planes, itemsize = decompress_planes(blob, codec, raw_size=raw.nbytes)
    assert itemsize == (4 if codec == "shuffle+zstd" else 1)
    out = np.empty(raw.size, dtype=np.uint8)
    unshuffle_into(out, planes, itemsize)
    assert out.tobytes() == raw.tobytes()
    with pytest.raises(CorruptCheckpoint):
        decompress_planes(blob[:-3], codec, raw_size=raw.nbytes)


def test_elements_wider_than_255_bytes_are_compressed_unshuffled():
    rows = np.array([bytes(range(256)) + b"x" * 44] * 2000, dtype="S300")
    packed, codec = compress(rows.view(np.uint8), "auto", itemsize=300)
    assert codec == "zstd"
    assert bytes(decompress(packed, codec, raw_size=rows.nbytes)) == rows.tobytes()
