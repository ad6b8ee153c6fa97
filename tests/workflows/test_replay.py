"""Today's workflow code replays every recorded history (the models are append-only).

Histories live in ``tests/workflows/histories/`` (``record.py`` there records new
ones). ``v1-*`` were recorded before items and results became Temporal-native
payloads; keep every file: a change that breaks one breaks running jobs.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from worker_app.payloads import build_data_converter
from worker_app.settings import Settings
from workflows import WORKFLOWS

HISTORIES = sorted((Path(__file__).resolve().parent / "histories").glob("*.json"))


def test_histories_of_every_shape_are_recorded() -> None:
    names = {p.stem for p in HISTORIES}
    for shape in ("plain", "checkpointed", "failed", "batched", "batched--batch-0", "cancelled"):
        assert f"v1-{shape}" in names


@pytest.mark.parametrize("path", HISTORIES, ids=[p.stem for p in HISTORIES])
async def test_history_replays(path: Path, tmp_path: Path) -> None:
    history = WorkflowHistory.from_json(path.stem, path.read_text())
    replayer = Replayer(workflows=WORKFLOWS,
                        data_converter=build_data_converter(Settings(state_dir=tmp_path)))
    result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is None, f"{path.stem}: {result.replay_failure}"
