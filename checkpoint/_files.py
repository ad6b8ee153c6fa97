"""File checkpoints: a directory's files as content-addressed chunks and a manifest.

A checkpoint may carry the files of one directory (``TaskWriter.capture_files``).
Each file is cut into fixed-size chunks (``ManagerConfig.file_chunk_size``,
default ``FILE_CHUNK`` = 4 MiB: above the 1 MiB SQL limit, so a large file's
chunks go to the object tier and only small files and tails to the catalog); a chunk is
identified by the SHA-256 of its raw bytes. The checkpoint row's ``files``
column holds the manifest::

    {"files": [{"path": "a/b.bin", "size": 123, "mode": 0o644, "chunks": [sha, ...]}],
     "chunks": {sha: PartRef JSON of the stored (compressed) blob}}

Every row's manifest is complete (it names every file and every chunk of its
directory), so restoring the files of a link needs only that link's row. A
chunk is stored once per task: a save stores only the chunks the head's
manifest does not already name, under a create-only key carrying the epoch and
the seq of the save that first stored it (``.../e<epoch>/s<seq>/c<sha>``), and
later rows name that key again. Deleting a row deletes only the chunks no
remaining row names (:func:`unreferenced_chunks`).

Why fixed-size chunks, not content-defined ones: the files checkpoints hold are
mostly framework outputs (weights, optimizer state, arrays) rewritten in place
at the same offsets, where both find the same unchanged chunks; a rolling hash
in Python would run at tens of MB/s in the task's pause, while fixed cuts cost
nothing and SHA-256 runs at the speed of the disk. Content-defined chunking
would only pay for files that grow or shift in the middle.

This module is pure apart from reading the directory (``scan``) and writing a
restored one (``write_tree``).
"""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from ._records import PartRef
from .errors import CaptureError, CorruptCheckpoint, MemoryBudgetExceeded

__all__ = ["FILE_CHUNK", "FileCapture", "FileEntry", "Manifest", "chunk_keys", "chunk_refs",
           "manifest", "scan", "unreferenced_chunks", "write_tree"]

FILE_CHUNK = 4 << 20

Manifest = dict[str, Any]
StatSig = tuple[int, int, int, int, int]     # size, mtime_ns, ctime_ns, inode, device


@dataclass(frozen=True)
class FileEntry:
    """One regular file of a captured directory."""

    path: str                  # relative, POSIX separators, never ``..``
    size: int
    mode: int
    chunks: tuple[str, ...]    # SHA-256 (hex) of each chunk's raw bytes

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "mode": self.mode,
                "chunks": list(self.chunks)}


@dataclass(frozen=True)
class FileCapture:
    """A directory as one checkpoint saw it.

    ``data`` holds the raw bytes of the chunks that were read (files whose
    ``stat`` changed since the last committed capture); the others are named
    by hash only and must already be stored. ``sigs`` are the files' stat
    signatures, remembered once the save committed.
    """

    root: str
    entries: tuple[FileEntry, ...]
    data: dict[str, bytes] = field(default_factory=dict)
    sigs: dict[str, StatSig] = field(default_factory=dict)

    @property
    def raw_nbytes(self) -> int:
        return sum(e.size for e in self.entries)


def _sig(st: os.stat_result) -> StatSig:
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev


# A file changed this shortly before a scan may change again with the same stat
# signature: file times come from a clock that ticks every 1-10 ms (kernels before
# 6.13), or in whole seconds on some filesystems (FAT keeps 2 s). Its signature is
# not kept, so the next scan reads it again (git's "racily clean" entries).
RACY_NS = 20_000_000
RACY_WHOLE_SECONDS_NS = 2_000_000_000
_RACY: StatSig = (-1, -1, -1, -1, -1)   # equals no file's signature


def _kept_sig(sig: StatSig, started_ns: int) -> StatSig:
    """The signature to compare the next scan with, or ``_RACY`` when it cannot be trusted."""
    changed = max(sig[1], sig[2])   # mtime, ctime
    window = RACY_WHOLE_SECONDS_NS if changed % 1_000_000_000 == 0 else RACY_NS
    return _RACY if changed > started_ns - window else sig


def _walk(root: str) -> Iterator[tuple[str, str]]:
    """(relative POSIX path, absolute path) of every regular file under ``root``, sorted."""
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            if os.path.islink(os.path.join(dirpath, name)):
                raise CaptureError(f"checkpoint_files: {os.path.join(dirpath, name)!r} is a "
                                   "symbolic link")
        dirnames.sort()
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            rel = PurePosixPath(*os.path.relpath(full, root).split(os.sep)).as_posix()
            yield rel, full


def scan(root: str, known: Mapping[str, tuple[StatSig, tuple[str, ...]]], stored: Iterable[str],
         *, max_bytes: int | None = None, chunk_size: int = FILE_CHUNK) -> FileCapture:
    """Read the directory ``root``: its files' chunk hashes and the chunks not yet stored.

    A file whose stat signature equals the one in ``known`` (from the last
    committed capture) and whose chunks are all in ``stored`` is not read; the
    signature of a file changed within ``RACY_NS`` before the scan (2 s for
    whole-second file times) is not kept, so the next scan reads it again.
    Symbolic links and other non-regular files are refused (CaptureError): a
    link would point outside the checkpoint. Raises MemoryBudgetExceeded when
    the chunks read would exceed ``max_bytes``.
    """
    if not os.path.isdir(root):
        raise CaptureError(f"checkpoint_files: {root!r} is not a directory")
    have = set(stored)
    entries: list[FileEntry] = []
    data: dict[str, bytes] = {}
    sigs: dict[str, StatSig] = {}
    read = 0
    started = time.time_ns()
    for rel, full in _walk(root):
        st = os.lstat(full)
        if not stat.S_ISREG(st.st_mode):
            raise CaptureError(f"checkpoint_files: {full!r} is not a regular file")
        sig = _sig(st)
        prior = known.get(rel)
        if prior is not None and prior[0] == sig and all(h in have for h in prior[1]):
            chunks = prior[1]
        else:
            chunks, read = _read_chunks(full, chunk_size, data, read, max_bytes)
        sigs[rel] = _kept_sig(sig, started)
        entries.append(FileEntry(rel, st.st_size, stat.S_IMODE(st.st_mode), chunks))
    return FileCapture(os.path.abspath(root), tuple(entries), data, sigs)


def _read_chunks(path: str, chunk_size: int, data: dict[str, bytes], read: int,
                 max_bytes: int | None) -> tuple[tuple[str, ...], int]:
    chunks: list[str] = []
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            sha = hashlib.sha256(chunk).hexdigest()
            chunks.append(sha)
            if sha not in data:
                read += len(chunk)
                if max_bytes is not None and read > max_bytes:
                    raise MemoryBudgetExceeded(f"checkpoint_files: more than {max_bytes} bytes "
                                               "of changed files to copy")
                data[sha] = chunk
    return tuple(chunks), read


def manifest(entries: Sequence[FileEntry], chunks: Mapping[str, PartRef]) -> Manifest:
    """The ``files`` column of a row: every file and the stored blob of each chunk it names."""
    named = {h for e in entries for h in e.chunks}
    return {"files": [e.to_json() for e in entries],
            "chunks": {h: chunks[h].to_json() for h in sorted(named)}}


def chunk_refs(files: Manifest | None) -> dict[str, PartRef]:
    """The stored blob of each chunk a manifest names (empty for none)."""
    if not files:
        return {}
    return {h: PartRef.from_json(p) for h, p in files["chunks"].items()}


def chunk_keys(files: Manifest | None) -> set[str]:
    """The blob keys a manifest names."""
    return {str(p["key"]) for p in (files or {}).get("chunks", {}).values()}


def unreferenced_chunks(dropped: Iterable[Manifest | None],
                        kept: Iterable[Manifest | None]) -> list[PartRef]:
    """Chunks the dropped rows name and no kept row does: what deleting the rows frees."""
    keep = set().union(*(chunk_keys(m) for m in kept))
    out: dict[str, PartRef] = {}
    for m in dropped:
        for ref in chunk_refs(m).values():
            if ref.key not in keep:
                out[ref.key] = ref
    return list(out.values())


def _safe_path(root: str, rel: Any) -> str:
    """``root/rel`` for a stored relative path; CorruptCheckpoint if it could leave ``root``."""
    if not isinstance(rel, str) or not rel or "\x00" in rel or "\\" in rel:
        raise CorruptCheckpoint(f"file manifest names an unusable path {rel!r}")
    parts = PurePosixPath(rel).parts
    if PurePosixPath(rel).is_absolute() or any(p in ("..", ".", "") for p in parts):
        raise CorruptCheckpoint(f"file manifest path {rel!r} leaves its directory")
    return os.path.join(root, *parts)


def write_tree(root: str, files: Manifest, chunk: Any) -> None:
    """Write the manifest's files under ``root``; ``chunk(sha)`` returns verified raw bytes.

    Each file is written to a temporary name and renamed when complete, so a
    failure leaves no half-written file under its own name. Raises
    CorruptCheckpoint for a path that would leave ``root`` or a size mismatch.
    """
    for entry in files["files"]:
        path = _safe_path(root, entry["path"])
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".restore-")
        try:
            size = 0
            with os.fdopen(fd, "wb") as f:
                for sha in entry["chunks"]:
                    data = chunk(sha)
                    size += len(data)
                    f.write(data)
            if size != int(entry["size"]):
                raise CorruptCheckpoint(f"restored file {entry['path']!r} has {size} bytes, "
                                        f"the manifest says {entry['size']}")
            os.chmod(tmp, int(entry["mode"]) & 0o7777)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
