"""Host buffers of captures and restores (checkpoint._memory)."""

from __future__ import annotations

import gc

import numpy as np
import pytest

from activities._child import resident_bytes
from checkpoint import _memory


@pytest.mark.parametrize("nbytes", [0, 1, _memory.MMAP_FROM - 1, _memory.MMAP_FROM, 5 * _memory.MMAP_FROM + 3])
def test_buffers_are_writable_flat_bytes_of_the_size_asked(nbytes):
    buf = _memory.empty(nbytes)
    assert buf.dtype == np.uint8 and buf.shape == (nbytes,) and buf.flags.writeable
    buf[:] = 7
    assert int(buf.sum()) == 7 * nbytes


def test_large_buffers_are_independent_and_outlive_the_first_array():
    a, b = _memory.empty(3 << 20), _memory.empty(3 << 20)
    assert not np.shares_memory(a, b)
    a[:] = 1
    b[:] = 2
    tail = a[-10:].view(np.uint16)
    del a
    gc.collect()
    assert tail.tolist() == [0x0101] * 5          # the mapping lives as long as a view of it
    assert int(b.sum()) == 2 * (3 << 20)


def _resident_kb() -> int:
    return resident_bytes() // 1024


@pytest.mark.skipif(not _memory._POPULATE, reason="populated mappings are made on Linux only")
def test_large_buffers_are_resident_as_soon_as_they_are_made():
    before = _resident_kb()
    buf = _memory.empty(64 << 20)
    grown = _resident_kb() - before
    assert grown >= (64 << 20) // 1024 * 9 // 10, f"only {grown} KiB of 64 MiB resident"
    buf[::4096] = 1   # writing them faults in nothing more
    assert int(buf.sum()) == (64 << 20) // 4096


@pytest.mark.skipif(not _memory._POPULATE, reason="populated mappings are made on Linux only")
def test_a_lazy_buffer_is_populated_slice_by_slice_by_its_writers():
    before = _resident_kb()
    buf = _memory.empty(64 << 20, populate=False)
    lazy = _memory._can_populate()   # else populated at once all the same
    grown = _resident_kb() - before
    assert grown < (8 << 20) // 1024 if lazy else grown >= (64 << 20) // 1024 * 9 // 10
    _memory.populate(buf[5:(16 << 20) + 5])   # not page-aligned: the pages under it
    grown = _resident_kb() - before
    if lazy:
        assert (16 << 20) // 1024 <= grown < (24 << 20) // 1024, grown
    buf[:] = 3
    assert int(buf[(16 << 20):].sum()) == 3 * (48 << 20)
