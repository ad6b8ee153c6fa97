"""Damaged chains: every blob is checked before decoding; restore keeps the
last consistent prefix."""

from __future__ import annotations

import pytest
from ckpt_helpers import chain, copy_state, make_state, mutate, states_equal

import checkpoint._manager as manager_module
from checkpoint import CheckpointManager
from checkpoint._records import PartRef


@pytest.fixture
def history(manager: CheckpointManager, monkeypatch: pytest.MonkeyPatch):
    """A base and four deltas; returns the state after each seq and the decode spy."""
    writer = manager.open_attempt("job", "t").writer
    state = make_state(3)
    states = {}
    for step in range(1, 6):
        mutate(state, step)
        writer.save(writer.capture(state), progress_percent=float(step))
        states[step] = copy_state(state)
    decoded: list[bytes] = []
    real = manager_module.decode

    def seen(data):
        # parts after the index arrive as functions that fetch and check them
        if not callable(data):
            decoded.append(data)
            return data

        def fetch():
            out = data()
            decoded.append(out)
            return out
        return fetch

    def spy(parts, previous, **kwargs):
        return real([(seen(part[0]), *part[1:]) for part in parts], previous, **kwargs)

    monkeypatch.setattr(manager_module, "decode", spy)
    return states, decoded


def refs(manager: CheckpointManager, seq: int) -> list[PartRef]:
    [row] = [r for r in chain(manager, "t") if r.seq == seq]
    return [PartRef.from_json(p) for p in row.parts]


def rewrite(manager: CheckpointManager, ref: PartRef, data: bytes | None) -> None:
    store = manager.tiers.store_for(ref.tier)
    store.delete(ref.key)
    if data is not None:
        store.put(ref.key, data)


def read(manager: CheckpointManager, ref: PartRef) -> bytes:
    return manager.tiers.store_for(ref.tier).get(ref.key)


def check(manager: CheckpointManager, states, decoded, bad: set[bytes], seq: int) -> None:
    restored = manager.restore("job", "t")
    assert restored is not None
    assert (restored.seq, restored.truncated) == (seq, True)
    assert restored.chain == tuple(range(1, seq + 1))
    assert states_equal(restored.state, states[seq])
    assert not bad & set(decoded)  # damaged bytes never reached the decoder


def test_bit_flip(manager, history) -> None:
    states, decoded = history
    ref = refs(manager, 4)[0]
    data = bytearray(read(manager, ref))
    data[len(data) // 2] ^= 0x01
    rewrite(manager, ref, bytes(data))
    check(manager, states, decoded, {bytes(data)}, 3)


def test_truncation(manager, history) -> None:
    states, decoded = history
    ref = refs(manager, 3)[0]
    data = read(manager, ref)[:-1]
    rewrite(manager, ref, data)
    check(manager, states, decoded, {data}, 2)


def test_deleted_middle_delta(manager, history) -> None:
    states, decoded = history
    for ref in refs(manager, 3):
        rewrite(manager, ref, None)
    check(manager, states, decoded, set(), 2)
    assert len(decoded) == sum(len(refs(manager, s)) for s in (1, 2))


def test_swapped_blobs(manager, history) -> None:
    states, decoded = history
    a, b = refs(manager, 2)[0], refs(manager, 4)[0]
    da, db = read(manager, a), read(manager, b)
    rewrite(manager, a, db)
    rewrite(manager, b, da)
    check(manager, states, decoded, {da, db}, 1)


def test_corrupt_base_restores_nothing(manager, history) -> None:
    _states, decoded = history
    ref = refs(manager, 1)[0]
    data = bytearray(read(manager, ref))
    data[0] ^= 0xFF
    rewrite(manager, ref, bytes(data))
    assert manager.restore("job", "t") is None
    assert decoded == []


def test_after_truncated_restore_the_next_save_is_a_base(manager, history) -> None:
    states, _decoded = history
    for ref in refs(manager, 4):
        rewrite(manager, ref, None)
    attempt = manager.open_attempt("job", "t", attempt=2)
    restored, writer = attempt.restored, attempt.writer
    assert restored.seq == 3 and restored.truncated is True
    state = copy_state(restored.state)
    mutate(state, 42)
    info = writer.save(writer.capture(state))
    assert (info.kind, info.seq) == ("base", 6)
    assert [r.seq for r in chain(manager, "t")] == [6]
    final = manager.restore("job", "t")
    assert (final.seq, final.truncated) == (6, False) and states_equal(final.state, state)


def _large_chain(tmp_path, links: int):
    """A 48 MiB float32 state saved as a base and deltas: three parts a link, so the
    pool still decodes one link while the manager fetches and plans the next."""
    import numpy as np

    manager = CheckpointManager.from_urls(f"sqlite:///{tmp_path}/c.db", f"file://{tmp_path}/blobs")
    writer = manager.open_attempt("job", "t", max_age=None).writer
    writer._plan = lambda head: "base" if head is None else "delta"
    rng = np.random.default_rng(11)
    state = {"w": rng.standard_normal(12 << 20).astype(np.float32), "step": 0}
    states = {}
    for seq in range(1, links + 1):
        state["w"] += rng.standard_normal(state["w"].size).astype(np.float32) * 1e-3
        state["step"] = seq
        writer.save(writer.capture(state))
        states[seq] = {"w": state["w"].copy(), "step": seq}
    return manager, states


@pytest.mark.parametrize("where", ["index of the last link", "last part of a middle link"])
def test_a_bad_link_of_a_large_chain(tmp_path, where, caplog) -> None:
    """A chain of multi-part links whose link goes bad (its index, or its last part
    after the first two were XORed into the state in place) restores exactly the
    state of the last good link (the damaged state is decoded again from the base)."""
    import numpy as np

    manager, states = _large_chain(tmp_path, 5)
    bad = 5 if where.startswith("index") else 3
    ref = refs(manager, bad)[0 if where.startswith("index") else -1]
    data = bytearray(read(manager, ref))
    data[len(data) // 2] ^= 0x01
    rewrite(manager, ref, bytes(data))
    restored = manager.restore("job", "t", max_age=None)
    assert restored is not None and restored.seq == bad - 1 and restored.truncated
    assert restored.state["step"] == bad - 1
    assert np.array_equal(restored.state["w"], states[bad - 1]["w"])
    # a part of link 3 that fails after the first two were XORed in has damaged the state
    assert ("decoding seq 1 again up to seq 2" in caplog.text) == (bad == 3)
    manager.close()
