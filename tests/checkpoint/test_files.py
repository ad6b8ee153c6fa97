"""File checkpoints in the library: chunks stored once, files committed with their state,
every chunk verified on restore, chunks deleted when no committed row names them.

Runs on both real backends (SQLite + a directory, PostgreSQL + S3 on a moto server)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
from ckpt_helpers import all_blob_keys, build_manager, chain

from checkpoint import CaptureError, CheckpointManager, Fenced
from checkpoint._files import RACY_NS, chunk_keys, chunk_refs, scan
from checkpoint._records import PartRef

CHUNK = 16 << 10   # small chunks, so a few files make several of each tier


@pytest.fixture
def manager(backend) -> CheckpointManager:
    return build_manager(backend, db_size_limit=4096, max_deltas_per_base=3,
                         file_chunk_size=CHUNK)


def noise(seed: int, size: int) -> bytes:
    return np.random.default_rng(seed).bytes(size)


def write(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def save(manager: CheckpointManager, writer, root: Path, step: int):
    return writer.save(writer.capture({"step": step}), files=writer.capture_files(str(root)))


def file_blobs(manager: CheckpointManager, task_id: str = "t"):
    view = manager.storage_view(task_id)
    assert view is not None
    return [b for b in view.blobs if b.kind == "file"]


V1 = {"model/weights.bin": noise(1, 5 * CHUNK + 100), "config.json": b'{"layers": 2}',
      "model/optimizer.bin": noise(2, 3 * CHUNK)}


def test_unchanged_chunks_are_stored_once_and_files_restore_exactly(manager, tmp_path) -> None:
    root = tmp_path / "out"
    write(root, V1)
    writer = manager.open_attempt("job", "t").writer
    first = save(manager, writer, root, 1)
    stored_once = sum(b.stored_bytes for b in file_blobs(manager))
    assert first.file_bytes == stored_once
    assert len(file_blobs(manager)) == 6 + 1 + 3
    assert {b.tier for b in file_blobs(manager)} == {"sql", "object"}

    # Every file is rewritten (new mtime); only the last chunk of the weights and the config
    # change, and one file is added.
    v2 = dict(V1)
    weights = bytearray(V1["model/weights.bin"])
    weights[-50:] = b"x" * 50
    v2["model/weights.bin"] = bytes(weights)
    v2["config.json"] = b'{"layers": 3}'
    v2["notes.txt"] = b"epoch 2"
    write(root, v2)
    second = save(manager, writer, root, 2)
    blobs = file_blobs(manager)
    assert len(blobs) == 10 + 3  # the new tail chunk, the new config, the new file
    new = [b for b in blobs if b.seq == 2]
    assert second.file_bytes == sum(b.stored_bytes for b in new)
    assert len(new) == 3
    view, task = manager.storage_view("t"), manager.task_view("t")
    assert view is not None and task is not None
    # both views count each chunk once: the parts of both rows and 13 chunks
    assert task.stored_bytes == view.stored_bytes == (
        sum(b.stored_bytes for b in view.blobs if b.kind != "file")
        + sum(b.stored_bytes for b in blobs))
    assert [link.files for link in task.chain] == [3, 4]

    out = tmp_path / "restored"
    out.mkdir()
    restored = manager.restore("job", "t", files_dir=str(out))
    assert restored is not None and restored.seq == 2 and restored.files_dir == str(out)
    assert restored.state == {"step": 2}
    assert tree(out) == v2


def test_unchanged_files_are_not_read_again(manager, tmp_path) -> None:
    root = tmp_path / "out"
    write(root, V1)
    time.sleep(2 * RACY_NS / 1e9)   # older than the racy window: their signatures are kept
    writer = manager.open_attempt("job", "t").writer
    save(manager, writer, root, 1)
    (root / "config.json").write_bytes(b'{"layers": 9}')
    capture = writer.capture_files(str(root))
    # only the rewritten file's chunk was read; the others are named by hash
    assert list(capture.data.values()) == [b'{"layers": 9}']


def test_files_changed_just_before_a_scan_are_read_again(tmp_path) -> None:
    """A file changed within a tick of the file clock before a scan could change again
    with the same size and times: its signature is not trusted, so the next scan reads
    it again; once older than the window it is named by hash without being read."""
    root = tmp_path / "out"
    write(root, {"old.bin": b"a" * 100})
    time.sleep(2 * RACY_NS / 1e9)
    write(root, {"new.bin": b"b" * 100})
    first = scan(str(root), {}, [])
    known = {e.path: (first.sigs[e.path], e.chunks) for e in first.entries}
    stored = list(first.data)
    again = scan(str(root), known, stored)
    assert list(again.data.values()) == [b"b" * 100]   # only the racy file was read
    known = {e.path: (again.sigs[e.path], e.chunks) for e in again.entries}
    time.sleep(2 * RACY_NS / 1e9)
    settled = scan(str(root), known, stored)
    assert list(settled.data.values()) == [b"b" * 100]   # still racy: kept from the racy scan
    known = {e.path: (settled.sigs[e.path], e.chunks) for e in settled.entries}
    assert scan(str(root), known, stored).data == {}      # a trusted signature: nothing read


def test_corrupt_chunk_is_refused_with_its_state(manager, tmp_path) -> None:
    root = tmp_path / "out"
    write(root, V1)
    writer = manager.open_attempt("job", "t").writer
    save(manager, writer, root, 1)
    write(root, {"config.json": b'{"layers": 3}'})
    save(manager, writer, root, 2)
    rows = chain(manager, "t")
    only_in_2 = [ref for h, ref in chunk_refs(rows[1].files).items()
                 if h not in chunk_refs(rows[0].files)]
    assert len(only_in_2) == 1
    _rewrite(manager, only_in_2[0], b"tampered")

    out = tmp_path / "restored"
    out.mkdir()
    restored = manager.restore("job", "t", files_dir=str(out))
    # seq 2's files are damaged: the whole of seq 2 is refused, seq 1 (state and files) restored
    assert restored is not None
    assert (restored.seq, restored.truncated, restored.state) == (1, True, {"step": 1})
    assert tree(out) == V1

    # a chunk every checkpoint names: nothing is restorable, nothing is written
    shared = chunk_refs(rows[0].files)
    weights_first = next(r for r in shared.values() if r.tier == "object")
    data = _read(manager, weights_first)
    _rewrite(manager, weights_first, data[:-1] + bytes([data[-1] ^ 1]))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert manager.restore("job", "t", files_dir=str(empty)) is None
    assert list(empty.iterdir()) == []


def test_retired_rows_free_only_the_chunks_nothing_names(manager, tmp_path) -> None:
    root = tmp_path / "out"
    write(root, V1)
    writer = manager.open_attempt("job", "t").writer
    for step in range(1, 7):  # base 1, deltas 2-4, base 5 retires 1-4, delta 6
        write(root, {"config.json": f'{{"step": {step}}}'.encode()})
        save(manager, writer, root, step)
    rows = chain(manager, "t")
    assert [r.seq for r in rows] == [5, 6]
    named = set().union(*(chunk_keys(r.files) for r in rows))
    parts = {p["key"] for r in rows for p in r.parts}
    # chunks first stored by the retired seq 1 are still there (seq 5 and 6 name them);
    # the configs of seq 1-4 are gone
    assert set(all_blob_keys(manager)) == named | parts
    assert any("/s1/c" in k for k in named)
    assert manager.sweep_orphans(grace_seconds=0) == 0
    out = tmp_path / "restored"
    out.mkdir()
    restored = manager.restore("job", "t", files_dir=str(out))
    assert restored is not None and restored.seq == 6
    assert tree(out) == {**V1, "config.json": b'{"step": 6}'}
    manager.delete_task("t")
    assert all_blob_keys(manager) == []


def test_a_fenced_save_leaves_no_chunks(manager, tmp_path) -> None:
    root = tmp_path / "out"
    write(root, V1)
    zombie = manager.open_attempt("job", "t", 1).writer
    save(manager, zombie, root, 1)
    before = set(all_blob_keys(manager))
    live = manager.open_attempt("job", "t", 2)
    write(root, {"extra.bin": noise(5, 2 * CHUNK)})
    with pytest.raises(Fenced):
        save(manager, zombie, root, 2)
    assert set(all_blob_keys(manager)) == before
    # the new attempt continues from seq 1's files and stores only what changed
    info = save(manager, live.writer, root, 2)
    assert len([b for b in file_blobs(manager) if b.seq == info.seq]) == 2


def test_new_attempt_restores_files_and_dedups_against_them(manager, tmp_path) -> None:
    root = tmp_path / "out"
    write(root, V1)
    save(manager, manager.open_attempt("job", "t", 1).writer, root, 1)
    out = tmp_path / "restored"
    out.mkdir()
    attempt = manager.open_attempt("job", "t", 2, files_dir=str(out))
    assert attempt.restored is not None and tree(out) == V1
    # the task goes on writing into the restored directory: nothing unchanged is stored
    os.utime(out / "config.json")
    info = save(manager, attempt.writer, out, 2)
    assert info.file_bytes == 0


def test_refuses_paths_outside_the_directory(manager, tmp_path) -> None:
    root = tmp_path / "out"
    write(root, {"a.txt": b"a"})
    writer = manager.open_attempt("job", "t").writer
    save(manager, writer, root, 1)
    from sqlalchemy import update
    from sqlalchemy.orm import Session

    from checkpoint.catalog import CheckpointRow

    [row] = chain(manager, "t")
    files = dict(row.files)
    files["files"] = [{**files["files"][0], "path": "../escape.txt"}]
    with Session(manager.engine) as s, s.begin():
        s.execute(update(CheckpointRow).where(CheckpointRow.task_id == "t")
                  .values(files=files))
    out = tmp_path / "restored"
    out.mkdir()
    assert manager.restore("job", "t", files_dir=str(out)) is None
    assert not (tmp_path / "escape.txt").exists()


def _rewrite(manager: CheckpointManager, ref: PartRef, data: bytes) -> None:
    store = manager.tiers.store_for(ref.tier)
    store.delete(ref.key)
    store.put(ref.key, data)


def _read(manager: CheckpointManager, ref: PartRef) -> bytes:
    return manager.tiers.store_for(ref.tier).get(ref.key)


@pytest.mark.parametrize("link", ["file", "dir"])
def test_symbolic_links_are_refused(manager, tmp_path, link: str) -> None:
    root = tmp_path / "out"
    write(root, {"a.txt": b"a", "sub/b.txt": b"b"})
    target = root / ("a.txt" if link == "file" else "sub")
    (root / "link").symlink_to(target)
    writer = manager.open_attempt("job", "t").writer
    with pytest.raises(CaptureError, match="symbolic link|not a regular file"):
        writer.capture_files(str(root))
