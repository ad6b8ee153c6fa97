"""FsStore's direct writes: large blobs go past the page cache, on real filesystems.

A loop-mounted ext4 image (which takes ``O_DIRECT``), a ramfs (which refuses
it with EINVAL) and a full ext4 image; the kernel's ``mincore`` says which of
a blob's pages the page cache holds. Nothing is patched.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from checkpoint.errors import StorageFull
from checkpoint.stores import FsStore
from checkpoint.stores.fs import DIRECT_FROM

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("mount") is None or shutil.which("mkfs.ext4") is None,
    reason="needs root, mount and mkfs.ext4 to mount filesystem images")

MiB = 1 << 20
PAGE = mmap.PAGESIZE


def _mount(target: Path, *args: str) -> None:
    target.mkdir()
    subprocess.run(["mount", *args, str(target)], check=True, capture_output=True)


@pytest.fixture
def ext4(tmp_path: Path) -> Iterator[Path]:
    image = tmp_path / "disk.img"
    with open(image, "wb") as fh:
        fh.truncate(64 * MiB)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True, capture_output=True)
    _mount(tmp_path / "ext4", "-o", "loop", str(image))
    try:
        yield tmp_path / "ext4"
    finally:
        subprocess.run(["umount", "-l", str(tmp_path / "ext4")], check=False)


@pytest.fixture
def ramfs(tmp_path: Path) -> Iterator[Path]:
    _mount(tmp_path / "ramfs", "-t", "ramfs", "ramfs")
    try:
        yield tmp_path / "ramfs"
    finally:
        subprocess.run(["umount", "-l", str(tmp_path / "ramfs")], check=False)


def _resident_pages(path: Path) -> tuple[int, int]:
    """(pages of ``path`` in the page cache, pages of the file), from ``mincore``."""
    libc = ctypes.CDLL(None, use_errno=True)
    size = path.stat().st_size
    pages = -(-size // PAGE)
    with open(path, "rb") as fh:
        region = mmap.mmap(fh.fileno(), size, access=mmap.ACCESS_COPY)   # not touched: nothing faults in
    vec = (ctypes.c_ubyte * pages)()
    start = ctypes.c_char.from_buffer(region)   # holds an export of the mapping until deleted
    try:
        if libc.mincore(ctypes.c_void_p(ctypes.addressof(start)), ctypes.c_size_t(size), vec) != 0:
            raise OSError(ctypes.get_errno(), "mincore failed")
        return sum(v & 1 for v in vec), pages
    finally:
        del start
        region.close()


def _pieces() -> list[object]:
    """Pieces of odd sizes, of each buffer type a save hands over, crossing the staging buffer."""
    rng = np.random.default_rng(3)
    return [bytes([4, 0, 1, 1, 0]) + b"\x07" * 32,
            rng.integers(0, 256, 5 * MiB + 3, dtype=np.uint8),
            memoryview(rng.integers(0, 256, 3 * MiB + 1, dtype=np.uint8).tobytes()),
            b"!"]


def _joined(pieces: list[object]) -> bytes:
    return b"".join(bytes(memoryview(p)) for p in pieces)   # type: ignore[arg-type]


def test_a_large_blob_is_written_past_the_page_cache_and_reads_back_exactly(ext4: Path) -> None:
    pieces = _pieces()
    direct, buffered = FsStore(ext4 / "direct"), FsStore(ext4 / "buffered", direct=False)
    direct.put_pieces("t/e1/s1/p1", pieces)
    buffered.put_pieces("t/e1/s1/p1", pieces)
    assert direct.get("t/e1/s1/p1") == _joined(pieces) == buffered.get("t/e1/s1/p1")
    path = ext4 / "direct" / "t" / "e1" / "s1" / "p1"
    assert path.stat().st_size == len(_joined(pieces))
    direct.put_pieces("t/e1/s1/p2", pieces)     # not read back: what the write left cached
    resident, pages = _resident_pages(ext4 / "direct" / "t" / "e1" / "s1" / "p2")
    assert pages > 2000 and resident <= 2      # at most the cut last block was read back
    resident, pages = _resident_pages(ext4 / "buffered" / "t" / "e1" / "s1" / "p1")
    assert resident > 0.9 * pages              # the buffered write left its pages cached
    assert not [p for p in (ext4 / "direct").rglob("*") if p.name.startswith(".tmp-")]


def test_a_blob_below_the_threshold_and_an_empty_one_stay_buffered_and_exact(ext4: Path) -> None:
    store = FsStore(ext4 / "root")
    small = np.random.default_rng(4).integers(0, 256, DIRECT_FROM - 1, dtype=np.uint8).tobytes()
    store.put("a", small)
    store.put("b", b"")
    exact = bytes(range(256)) * (DIRECT_FROM // 256)     # exactly the threshold, block-aligned
    store.put_pieces("c", [exact[:7], exact[7:]])
    assert store.get("a") == small and store.get("b") == b"" and store.get("c") == exact
    assert _resident_pages(ext4 / "root" / "a")[0] > 0   # the buffered write is cached


def test_a_filesystem_that_refuses_o_direct_gets_the_blob_buffered(ramfs: Path) -> None:
    fd = None
    with pytest.raises(OSError):   # this filesystem really refuses it
        fd = os.open(ramfs / "probe", os.O_WRONLY | os.O_CREAT | os.O_DIRECT)
    assert fd is None
    (ramfs / "probe").unlink(missing_ok=True)
    store = FsStore(ramfs / "root")
    pieces = _pieces()
    store.put_pieces("t/e1/s1/p1", pieces)
    assert store.get("t/e1/s1/p1") == _joined(pieces)
    assert sorted(p.name for p in (ramfs / "root").rglob("*") if p.is_file()) == ["p1"]


def test_a_full_disk_fails_a_direct_put_as_storage_full_and_leaves_nothing(ext4: Path) -> None:
    store = FsStore(ext4 / "root")
    filler = ext4 / "filler"
    st = os.statvfs(ext4)
    with open(filler, "wb") as fh:   # leave about 4 MiB free
        fh.truncate(max(0, st.f_bavail * st.f_frsize - 4 * MiB))
        os.posix_fallocate(fh.fileno(), 0, max(0, st.f_bavail * st.f_frsize - 4 * MiB))
    big = np.random.default_rng(5).integers(0, 256, 8 * MiB + 5, dtype=np.uint8)
    with pytest.raises(StorageFull):
        store.put_pieces("t/e1/s1/p1", [b"head", big])
    assert not store.exists("t/e1/s1/p1")
    assert not [p for p in (ext4 / "root").rglob("*") if p.is_file()]
    filler.unlink()
    store.put_pieces("t/e1/s1/p1", [b"head", big])      # space is back: the same put succeeds
    assert store.get("t/e1/s1/p1") == b"head" + big.tobytes()
