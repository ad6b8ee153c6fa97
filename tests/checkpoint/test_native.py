"""The native interleave, split and copy kernels against numpy: bit-exact for every size, width and alignment."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from checkpoint import CheckpointManager, _memory, _native, _plan
from checkpoint._compress import encode_planes, planes_into, shuffle, unshuffle_into
from checkpoint.errors import BlobNotFound
from checkpoint.stores import FsStore

WIDTHS = [1, 2, 3, 4, 5, 8, 16]


def _reference(planes: list[np.ndarray], base: np.ndarray | None) -> np.ndarray:
    out = np.stack(planes, axis=1).reshape(-1) if planes[0].size else np.empty(0, np.uint8)
    return out if base is None else out ^ base


def _at(data: bytes, offset: int) -> np.ndarray:
    """``data`` as a writable flat uint8 array starting ``offset`` bytes into a fresh buffer."""
    raw = np.zeros(len(data) + 16, dtype=np.uint8)
    view = raw[offset:offset + len(data)]
    view[:] = np.frombuffer(data, dtype=np.uint8)
    return view


def test_the_kernel_builds_where_a_compiler_exists():
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler on this machine: the numpy path is the one in use")
    assert _native.available() is True


@settings(max_examples=120, deadline=None)
@given(st.sampled_from(WIDTHS), st.integers(0, 300), st.booleans(), st.booleans(), st.integers(0, 15),
       st.randoms(use_true_random=False))
def test_interleave_is_bit_exact(width, count, xor, in_place, offset, rnd):
    planes = [_at(rnd.randbytes(count), (offset + k) % 16) for k in range(width)]
    base = _at(rnd.randbytes(count * width), offset) if xor else None
    expected = _reference(planes, base)
    dst = base if in_place and base is not None else _at(bytes(count * width), (offset + 3) % 16)
    assert _native.interleave(dst, planes, base) is _native.available()
    if _native.available():
        assert dst.tobytes() == expected.tobytes()


@settings(max_examples=120, deadline=None)
@given(st.sampled_from(WIDTHS), st.integers(0, 300), st.booleans(), st.integers(0, 15),
       st.randoms(use_true_random=False))
def test_split_is_bit_exact(width, count, xor, offset, rnd):
    src = _at(rnd.randbytes(count * width), offset)
    base = _at(rnd.randbytes(count * width), (offset + 5) % 16) if xor else None
    expected = src if base is None else src ^ base
    planes = [_at(bytes(count), (offset + 2 * k) % 16) for k in range(width)]
    assert _native.split(planes, src, base) is _native.available()
    if _native.available():
        assert [p.tobytes() for p in planes] == [expected[k::width].tobytes() for k in range(width)]


def test_split_refuses_what_it_cannot_write():
    src = np.arange(32, dtype=np.uint8)
    frozen = np.zeros(8, dtype=np.uint8)
    frozen.flags.writeable = False
    good = [np.zeros(8, np.uint8) for _ in range(4)]
    assert _native.split([*good[:3], frozen], src) is False
    assert _native.split([*good[:3], np.zeros(16, np.uint8)[::2]], src) is False   # strided plane
    assert _native.split([*good[:3], np.zeros(7, np.uint8)], src) is False        # wrong size
    assert _native.split(good, src, np.zeros(31, np.uint8)) is False               # base of another size
    assert _native.split(good[:3], np.arange(31, dtype=np.uint8)) is False         # not count * width
    assert not any(p.any() for p in good) and not frozen.any()


def test_interleave_refuses_what_it_cannot_write():
    planes = [np.arange(8, dtype=np.uint8)] * 4
    strided = np.zeros(64, dtype=np.uint8)[::2]
    frozen = np.zeros(32, dtype=np.uint8)
    frozen.flags.writeable = False
    assert _native.interleave(strided, planes) is False
    assert _native.interleave(frozen, planes) is False
    assert _native.interleave(np.zeros(31, np.uint8), planes) is False          # not count * width
    assert _native.interleave(np.zeros(32, np.uint8), planes, np.zeros(8, np.uint8)) is False
    assert not frozen.any() and not strided.any()


@settings(max_examples=40, deadline=None)
@given(st.integers(-70, 200), st.integers(0, 15), st.integers(0, 15), st.integers(0, 2**32 - 1))
def test_copy_is_bit_exact_around_the_streaming_size(extra, dst_offset, src_offset, seed):
    """Sizes just below (np.copyto) and above (streaming stores) ``STREAM_FROM``, any alignment:
    every byte arrives, and nothing past the destination is written."""
    n = _native.STREAM_FROM + extra
    src = _at(np.random.default_rng(seed).bytes(n), src_offset)
    room = np.zeros(n + 32, dtype=np.uint8)
    dst = room[dst_offset:dst_offset + n]
    _native.copy(dst, src)
    assert dst.tobytes() == src.tobytes()
    assert not room[:dst_offset].any() and not room[dst_offset + n:].any()


def test_copy_of_what_the_kernel_cannot_take_is_numpy_s():
    n = _native.STREAM_FROM * 2
    src = np.arange(n, dtype=np.uint64).view(np.uint8)[:n]
    strided = np.zeros(2 * n, dtype=np.uint8)[::2]
    _native.copy(strided, src)                  # not contiguous: np.copyto's strided copy
    assert strided.tobytes() == src.tobytes()
    frozen = np.zeros(n, dtype=np.uint8)
    frozen.flags.writeable = False
    with pytest.raises(ValueError):
        _native.copy(frozen, src)
    with pytest.raises(ValueError):
        _native.copy(np.zeros(n - 1, np.uint8), src)
    assert not frozen.any()


@settings(max_examples=40, deadline=None)
@given(st.sampled_from([1, 2, 4, 8]), st.integers(0, 2000), st.booleans(), st.randoms(use_true_random=False))
def test_unshuffle_into_matches_numpy(itemsize, count, xor, rnd):
    data = np.frombuffer(rnd.randbytes(count * itemsize), dtype=np.uint8)
    base = np.frombuffer(rnd.randbytes(count * itemsize), dtype=np.uint8).copy() if xor else None
    dst = np.empty(data.size, dtype=np.uint8)
    unshuffle_into(dst, shuffle(data, itemsize), itemsize, xor_with=base)
    assert dst.tobytes() == (data if base is None else data ^ base).tobytes()


@pytest.mark.parametrize("dtype", ["<f2", "<f4", "<f8", "<i4", "<u2"])
def test_a_chain_of_planes_deltas_applies_in_place(dtype):
    rng = np.random.default_rng(7)
    values = [(rng.standard_normal(50_003) * 100).astype(dtype) for _ in range(5)]
    itemsize = values[0].itemsize
    flat = [v.view(np.uint8) for v in values]
    state = np.empty(flat[0].size, dtype=np.uint8)
    assert planes_into(state, encode_planes(flat[0], itemsize)) == itemsize
    for before, now in zip(flat, flat[1:]):
        planes_into(state, encode_planes(now, itemsize, base=before), xor_with=state)
    assert state.tobytes() == flat[-1].tobytes()


_DECODE = """
import hashlib, json, sys
import numpy as np
from checkpoint import _libzstd, _native
from checkpoint._compress import encode_planes, planes_into
rng = np.random.default_rng(3)
out = {"native": _native.available(), "libzstd": _libzstd.available()}
for itemsize in (2, 4, 8):
    now = rng.standard_normal(40_001 * 8 // itemsize).astype(np.float64).view(np.uint8)
    before = rng.standard_normal(now.size // 8).astype(np.float64).view(np.uint8)
    dst = before.copy()
    blob = encode_planes(now, itemsize, base=before)
    planes_into(dst, blob, xor_with=dst)
    out[str(itemsize)] = hashlib.sha256(dst.tobytes()).hexdigest()
    out[f"blob{itemsize}"] = hashlib.sha256(blob).hexdigest()
    out[f"base{itemsize}"] = hashlib.sha256(encode_planes(now, itemsize)).hexdigest()
print(json.dumps(out))
"""


def test_numpy_fallback_encodes_and_decodes_the_same_bytes():
    """With the kernel and libzstd switched off (as where no compiler or libzstd exists) the numpy
    and python-zstandard paths give the same bytes."""
    runs = {}
    for native in ("1", "0"):
        env = {**os.environ, "CROWDCOMPUTE_NATIVE": native}
        done = subprocess.run([sys.executable, "-c", _DECODE], env=env, capture_output=True, text=True,
                              timeout=120, check=True)
        runs[native] = json.loads(done.stdout)
    assert runs["0"]["native"] is False and runs["0"]["libzstd"] is False
    assert runs["1"]["native"] is _native.available()
    switches = ("native", "libzstd")
    assert {k: v for k, v in runs["1"].items() if k not in switches} == \
        {k: v for k, v in runs["0"].items() if k not in switches}
    assert len({runs["0"][k] for k in ("2", "4", "8")}) == 3   # three different results, not one


def test_fs_get_buffer_reads_large_blobs_into_reused_buffers(tmp_path):
    store = FsStore(tmp_path)
    big, other = os.urandom(3 << 20) + b"tail", os.urandom(2 << 20)
    store.put("a/b", big)
    store.put("a/c", other)
    store.put("a/small", b"x" * 1000)
    store.put("a/empty", b"")
    _memory.READS.release()
    assert _memory.READS.whole > _plan.CHUNK   # a whole part and its header fit one buffer
    first = store.get_buffer("a/b")
    assert isinstance(first, np.ndarray) and first.tobytes() == big
    assert hashlib.sha256(first).digest() == hashlib.sha256(big).digest()
    held = store.get_buffer("a/c")               # not given back: never reused under its holder
    assert held.tobytes() == other and not np.shares_memory(held, first)
    address = first.__array_interface__["data"][0]
    _memory.READS.give(first)
    again = store.get_buffer("a/c")              # the buffer given back holds the next read
    assert again.__array_interface__["data"][0] == address and again.tobytes() == other
    assert held.tobytes() == other
    assert type(store.get_buffer("a/small")) is bytes   # below READ_FROM: plain bytes
    assert bytes(store.get_buffer("a/empty")) == b""
    with pytest.raises(BlobNotFound):
        store.get_buffer("a/missing")
    _memory.READS.release()
    assert _memory.READS.kept_count() == 0


def test_scratch_takes_back_only_its_own_buffers():
    scratch = _memory.Scratch(kept=2, whole_from=1 << 20, whole=4 << 20)
    foreign = np.zeros(8 << 20, dtype=np.uint8)
    scratch.give(foreign)                        # a caller's own array is never handed out
    scratch.give(foreign[:100])
    scratch.give(b"bytes")
    assert scratch.kept_count() == 0
    taken = scratch.take(1 << 20)
    assert taken.nbytes == 1 << 20 and taken.base.nbytes == 4 << 20   # a whole buffer
    small = scratch.take(1000)
    assert small.base is None or small.base.nbytes == 1000
    scratch.give(taken[10:20])                   # any view of it brings the whole buffer back
    scratch.give(taken)                          # twice: kept once
    assert scratch.kept_count() == 1
    assert scratch.take(3 << 20).base is taken.base
    assert scratch.made == 2


def test_a_restore_reuses_its_read_buffers(tmp_path):
    """Each numeric part read from the directory goes back to ``READS`` once decoded,
    so a chain of many parts is read through a few buffers, all dropped at the end."""
    manager = CheckpointManager.from_urls(f"sqlite:///{tmp_path}/c.db", f"file://{tmp_path}/blobs")
    writer = manager.open_attempt("job", "task", max_age=None).writer
    writer._plan = lambda head: "base" if head is None else "delta"
    rng = np.random.default_rng(3)
    state = {"w": rng.standard_normal(12 << 20).astype(np.float32)}   # 48 MiB: 3 parts a link
    for _ in range(4):
        writer.save(writer.capture(state))
        state["w"] += rng.standard_normal(state["w"].size).astype(np.float32) * 1e-3
    writer.save(writer.capture(state))
    manager.close()
    manager = CheckpointManager.from_urls(f"sqlite:///{tmp_path}/c.db", f"file://{tmp_path}/blobs")
    made = _memory.READS.made
    restored = manager.restore("job", "task", max_age=None)
    assert restored is not None and len(restored.chain) == 5
    assert np.array_equal(restored.state["w"], state["w"])
    assert 1 <= _memory.READS.made - made < 5 * 3   # 15 parts read; fewer buffers made
    assert _memory.READS.kept_count() == 0
    manager.close()
