"""Shared by the framework-integration tests: run a killed and an uninterrupted copy of
one training task in one job, on the test's worker, and compare them bit for bit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

import sdk

# Attempt 1 dies after batch 11, attempt 2 after batch 20 (of 24), each once a
# checkpoint of its own committed; attempt 3 finishes.
KILLS = [11, 20]
EVERY = 5   # checkpoint_every_steps: positions 5, 10, 15, 20 are all mid-epoch
BATCHES = 8   # per epoch, as in integration_tasks


async def killed_and_whole(fn: Any, cfgs: list[dict[str, Any]], tmp_path: Path
                           ) -> list[tuple[Any, Any, list[tuple[int, str, str]]]]:
    """Per config: (result of its killed copy, result of its uninterrupted copy, where the
    killed copy's attempts started). All copies run in one job."""
    killed = [{**c, "kills": KILLS, "log": str(tmp_path / f"killed-{i}.log")}
              for i, c in enumerate(cfgs)]
    whole = [{**c, "kills": [], "log": str(tmp_path / f"whole-{i}.log")}
             for i, c in enumerate(cfgs)]
    results = await sdk.map(fn, killed + whole, checkpoint_every_steps=EVERY, max_attempts=5,
                            heartbeat_timeout=10.0)
    out = []
    for i, cfg in enumerate(killed):
        lines = Path(cfg["log"]).read_text().splitlines()
        starts = [(int(a), e, s) for a, e, s in (line.split() for line in lines)]
        out.append((results[i], results[len(cfgs) + i], starts))
    return out


def assert_killed_twice_mid_epoch(starts: list[tuple[int, str, str]]) -> None:
    """Attempts 1 and 2 died mid-epoch (KILLS are not epoch ends); each retry resumed from a
    checkpoint of the attempt before it, at least one of them inside an epoch."""
    assert all(k % BATCHES for k in KILLS)
    assert [a for a, _, _ in starts] == [1, 2, 3]
    assert starts[0][1:] == ("-", "-")
    done = [int(epoch) * BATCHES + int(step) for _, epoch, step in starts[1:]]
    assert 0 < done[0] <= KILLS[0] and done[0] < done[1] <= KILLS[1], starts
    assert any(int(step) > 0 for _, _, step in starts[1:]), starts


def same_arrays(got: list[Any], want: list[Any]) -> bool:
    return len(got) == len(want) and all(
        np.asarray(a).dtype == np.asarray(b).dtype and np.asarray(a).tobytes() == np.asarray(b).tobytes()
        for a, b in zip(got, want))
