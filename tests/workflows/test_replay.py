"""Today's workflow code replays every recorded history (the models are append-only).

Histories live in ``tests/workflows/histories/``; keep every file: a change that
breaks one breaks running jobs.

- ``v1-*.json`` (``record.py`` there records new ones): one job of each shape —
  plain, checkpointed, failed, batched (and its batches), cancelled — recorded
  before items and results became Temporal-native payloads.
- ``v3-*.json`` / ``v3-windowed-*.json.gz``: the same shapes (and a job of a
  NumPy item) with items and results as Temporal-native payloads.
- ``old-*.json.gz`` were recorded before a stop cancelled tasks in waves
  (``CANCEL_IN_WAVES_PATCH``): a job cancelled while it ran its tasks itself, one
  whose task failed (the others were cancelled), one cancelled while it ran three
  batch children, and one terminated (its children were cancelled).
"""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from sdk._payloads import build_data_converter
from worker_app.settings import Settings
from workflows import WORKFLOWS

HERE = Path(__file__).resolve().parent / "histories"
HISTORIES = (sorted(HERE.glob("v1-*.json")) + sorted(HERE.glob("old-*.json.gz"))
             + sorted(HERE.glob("v2-*.json.gz")) + sorted(HERE.glob("v3-*.json*")))


def _name(path: Path) -> str:
    return path.name.removesuffix(".gz").removesuffix(".json")


def _load(path: Path) -> WorkflowHistory:
    data = path.read_bytes()
    text = gzip.decompress(data).decode() if path.suffix == ".gz" else data.decode()
    return WorkflowHistory.from_json(_name(path), text)


def test_histories_of_every_shape_are_recorded() -> None:
    names = {_name(p) for p in HISTORIES}
    for shape in ("plain", "checkpointed", "failed", "batched", "batched--batch-0", "cancelled"):
        assert f"v1-{shape}" in names
    assert len([n for n in names if n.startswith("old-")]) == 10
    for shape in ("windowed-run0", "windowed-run1", "windowed-run2", "windowed--batch-0"):
        assert f"v2-{shape}" in names
    for shape in ("plain", "checkpointed", "failed", "batched", "batched--batch-0", "cancelled",
                  "numpy", "numpy--batch-0", "windowed-run0", "windowed-run2",
                  "windowed--batch-0"):
        assert f"v3-{shape}" in names


@pytest.mark.parametrize("path", HISTORIES, ids=_name)
async def test_history_replays(path: Path, tmp_path: Path) -> None:
    replayer = Replayer(workflows=WORKFLOWS,
                        data_converter=build_data_converter(Settings(state_dir=tmp_path)))
    result = await replayer.replay_workflow(_load(path), raise_on_replay_failure=False)
    assert result.replay_failure is None, f"{_name(path)}: {result.replay_failure}"
