"""Frames decompressed into caller-owned buffers through the system's libzstd: exact, bounded, strict."""

from __future__ import annotations

import ctypes.util

import numpy as np
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from checkpoint import CheckpointManager, _libzstd, _memory, _plan
from checkpoint._compress import encode_planes, planes_into
from checkpoint.errors import CorruptCheckpoint


def _frame(data: bytes, **kw: bool) -> bytes:
    return zstandard.ZstdCompressor(level=3, write_checksum=True, **kw).compress(data)


def _room(n: int) -> tuple[np.ndarray, np.ndarray]:
    """A destination of ``n`` bytes inside a zeroed buffer with 64 guard bytes either side."""
    room = np.zeros(n + 128, dtype=np.uint8)
    return room, room[64:64 + n]


def test_libzstd_loads_where_the_system_has_it():
    try:
        ctypes.CDLL("libzstd.so.1")
    except OSError:
        if ctypes.util.find_library("zstd") is None:
            pytest.skip("no libzstd on this machine: python-zstandard decodes every plane")
    assert _libzstd.available() is True


needs_lib = pytest.mark.skipif(not _libzstd.available(), reason="no libzstd on this machine")


@needs_lib
@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=5000), st.integers(0, 2**32 - 1))
def test_decompress_into_matches_python_zstandard(small, seed):
    rng = np.random.default_rng(seed)
    data = small + rng.integers(0, 4, size=int(rng.integers(0, 300_000)), dtype=np.uint8).tobytes()
    room, out = _room(len(data))
    _libzstd.decompress_into(_frame(data), out)
    assert out.tobytes() == zstandard.ZstdDecompressor().decompress(_frame(data)) == data
    assert not room[:64].any() and not room[-64:].any()


@needs_lib
@pytest.mark.parametrize("case", ["trailing", "two frames", "cut", "larger", "smaller", "no size",
                                  "checksum", "garbage", "empty input"])
def test_decompress_into_refuses_anything_but_one_whole_frame_of_the_size(case):
    data = bytes(range(256)) * 400
    frame = _frame(data)
    size = len(data)
    if case == "trailing":
        frame += b"x"
    elif case == "two frames":
        frame += _frame(b"")
    elif case == "cut":
        frame = frame[:-7]
    elif case == "larger":
        size += 1
    elif case == "smaller":
        size -= 1
    elif case == "no size":
        frame = _frame(data, write_content_size=False)
    elif case == "checksum":
        frame = frame[:-1] + bytes([frame[-1] ^ 1])
    elif case == "garbage":
        frame = b"\x00" * 64
    elif case == "empty input":
        frame = b""
    room, out = _room(size)
    with pytest.raises(CorruptCheckpoint):
        _libzstd.decompress_into(frame, out)
    assert not room[:64].any() and not room[-64:].any()


@needs_lib
def test_a_verified_frame_is_not_checksummed_again():
    """``verified=True`` (the bytes matched the catalog's hash) skips only zstd's checksum:
    where libzstd can, a frame whose checksum is wrong then decodes; everything else is
    still refused."""
    data = bytes(range(256)) * 400
    frame = _frame(data)
    bad = frame[:-1] + bytes([frame[-1] ^ 1])
    out = np.zeros(len(data), dtype=np.uint8)
    with pytest.raises(CorruptCheckpoint):
        _libzstd.decompress_into(bad, out)
    version = _libzstd._library().ZSTD_versionNumber()
    if _libzstd._IGNORE_FROM <= version < _libzstd._IGNORE_BEFORE:
        _libzstd.decompress_into(bad, out, verified=True)
        assert out.tobytes() == data
    else:
        with pytest.raises(CorruptCheckpoint):
            _libzstd.decompress_into(bad, out, verified=True)
    for broken in (frame[:-7], frame + b"x", b"\x00" * 64):
        with pytest.raises(CorruptCheckpoint):
            _libzstd.decompress_into(broken, out, verified=True)
    _libzstd.decompress_into(frame, out)   # the checking context is still the default
    assert out.tobytes() == data


@needs_lib
def test_decompress_into_needs_a_writable_flat_destination():
    frame = _frame(b"abcd" * 100)
    frozen = np.zeros(400, dtype=np.uint8)
    frozen.flags.writeable = False
    with pytest.raises(ValueError):
        _libzstd.decompress_into(frame, frozen)
    with pytest.raises(ValueError):
        _libzstd.decompress_into(frame, np.zeros(800, dtype=np.uint8)[::2])
    out = np.zeros(0, dtype=np.uint8)
    _libzstd.decompress_into(_frame(b""), out)   # an empty frame into an empty buffer


def test_scratch_buffers_are_reused_then_released():
    _libzstd.release()
    first = _libzstd.take(3 << 20)
    address = first.__array_interface__["data"][0]
    _libzstd.give(first)
    _libzstd.give(first)                       # handed back twice: kept once
    again = _libzstd.take(2 << 20)             # smaller: a view of the same buffer
    assert again.nbytes == 2 << 20 and again.__array_interface__["data"][0] == address
    bigger = _libzstd.take(4 << 20)            # nothing kept is large enough: a new one
    assert bigger.__array_interface__["data"][0] != address
    _libzstd.give(again)
    _libzstd.give(bigger)
    assert _libzstd.SCRATCH.kept_count() == min(2, _libzstd._SCRATCH_KEPT)
    _libzstd.release()
    assert _libzstd.SCRATCH.kept_count() == 0


def test_a_large_request_gets_a_buffer_every_later_request_fits():
    """From ``_WHOLE_FROM`` on, a request is given a whole part's buffer (``_plan.CHUNK``),
    so the planes of one large leaf after another reuse one buffer per thread."""
    assert _libzstd._WHOLE == _plan.CHUNK
    _libzstd.release()
    first = _libzstd.take(_libzstd._WHOLE_FROM)
    assert first.nbytes == _libzstd._WHOLE_FROM and first.base.nbytes == _plan.CHUNK
    address = first.__array_interface__["data"][0]
    _libzstd.give(first)
    for size in (_plan.CHUNK, 3 << 20, _libzstd._WHOLE_FROM + 1):
        again = _libzstd.take(size)
        assert again.__array_interface__["data"][0] == address
        _libzstd.give(again)
    assert _libzstd.SCRATCH.kept_count() == 1
    _libzstd.release()


@needs_lib
def test_a_corrupt_packed_plane_is_refused_before_the_destination_is_written():
    rng = np.random.default_rng(5)
    values = (rng.standard_normal(1 << 18) * 100).astype(np.float32).view(np.uint8)
    blob = bytearray(encode_planes(values, 4))
    assert blob[1 + 3] == 1                    # the exponent plane is compressed
    blob[-3] ^= 0xFF                           # inside the last (exponent) plane's frame
    dst = np.full(values.size, 7, dtype=np.uint8)
    with pytest.raises(CorruptCheckpoint, match="plane 3"):
        planes_into(dst, bytes(blob))
    assert (dst == 7).all()


def test_a_restore_keeps_no_scratch_buffer(tmp_path):
    manager = CheckpointManager.from_urls(f"sqlite:///{tmp_path}/c.db", f"file://{tmp_path}/blobs")
    writer = manager.open_attempt("job", "task", max_age=None).writer
    rng = np.random.default_rng(1)
    state = {"w": (rng.standard_normal(1 << 20) * 10).astype(np.float32)}
    writer.save(writer.capture(state))
    state["w"] += 0.001
    writer.save(writer.capture(state))
    restored = manager.restore("job", "task", max_age=None)
    assert restored is not None and len(restored.chain) == 2
    assert np.array_equal(restored.state["w"], state["w"])
    assert _libzstd.SCRATCH.kept_count() == 0 and _memory.READS.kept_count() == 0
    manager.close()
