"""Histories written by earlier releases still replay with today's workflows.

``histories/old-*.json.gz`` were recorded before a stop cancelled tasks in waves
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

from workflows import WORKFLOWS

HISTORIES = sorted((Path(__file__).parent / "histories").glob("old-*.json.gz"))


def _load(path: Path) -> WorkflowHistory:
    workflow_id = path.name.removesuffix(".json.gz")
    return WorkflowHistory.from_json(workflow_id, gzip.decompress(path.read_bytes()).decode())


def test_recorded_histories_are_present() -> None:
    assert len(HISTORIES) == 10


@pytest.mark.parametrize("path", HISTORIES, ids=lambda p: p.name.removesuffix(".json.gz"))
async def test_old_history_replays(path: Path) -> None:
    result = await Replayer(workflows=WORKFLOWS).replay_workflow(_load(path))
    assert result.replay_failure is None
