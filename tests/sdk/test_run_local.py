"""sdk.run_local: a task function in this process with a real context and catalog."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import tasks

import sdk

CFG = {"seed": 3, "steps": 20}


def test_without_checkpoints_current_task_works() -> None:
    out = sdk.run_local(tasks.context_info, 5, job_id="unit", index=2)
    assert (out["job_id"], out["task_id"], out["index"], out["attempt"]) == ("unit", "unit:2", 2, 1)
    assert out["restore"] is None and out["checkpoint"] is False and out["due"] is False


def test_checkpoint_due_answers_as_in_a_worker() -> None:
    # Interval 0: every call is due, and checkpoint_due() says so before the call.
    out = sdk.run_local(tasks.context_info, 5, checkpoint_interval=0)
    assert (out["due"], out["checkpoint"]) == (True, True)


def test_an_interrupted_run_resumes_exactly() -> None:
    whole = sdk.run_local(tasks.noisy_sum, CFG, checkpoint_interval=0)
    assert whole["attempt"] == 1 and whole["resumed_at"] is None
    resumed = sdk.run_local(tasks.noisy_sum, CFG, checkpoint_interval=0,
                            interrupt_after_checkpoints=7)
    assert resumed["attempt"] == 2 and resumed["resumed_at"] == 7
    assert resumed["walk"] == whole["walk"]          # bit-identical floats


def test_state_dir_keeps_the_catalog(tmp_path: Path) -> None:
    sdk.run_local(tasks.noisy_sum, CFG, checkpoint_interval=0, state_dir=tmp_path / "s")
    con = sqlite3.connect(tmp_path / "s" / "crowdcompute.db")
    try:
        assert con.execute("SELECT COUNT(*) FROM checkpoints").fetchone()[0] > 0
    finally:
        con.close()


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="needs a checkpoint_interval"):
        sdk.run_local(tasks.noisy_sum, CFG, interrupt_after_checkpoints=1)
    with pytest.raises(ValueError, match=">= 1"):
        sdk.run_local(tasks.noisy_sum, CFG, checkpoint_interval=0, interrupt_after_checkpoints=0)
    with pytest.raises(RuntimeError, match="finished before 50 checkpoint"):
        sdk.run_local(tasks.noisy_sum, CFG, checkpoint_interval=0, interrupt_after_checkpoints=50)
