"""What ``JobHandle.progress()`` reads from a running task's heartbeat details
(the shape ``activities.checkpointing.TaskCheckpointSession.heartbeat_details`` sends)."""

from __future__ import annotations

from sdk._heartbeats import _beat


def test_a_committed_checkpoint_gives_seq_and_progress():
    details = {"checkpoint": {"seq": 7, "progress_percent": 42.5, "kind": "delta"}, "catalog_id": "c"}
    assert _beat(details, 1.5) == (42.5, 7, 1.5, False)


def test_the_task_s_own_progress_wins_over_the_checkpoint_s():
    details = {"progress_percent": 60, "checkpoint": {"seq": 3, "progress_percent": 50.0}}
    assert _beat(details, None) == (60.0, 3, None, False)


def test_storage_full_is_reported_only_when_the_task_says_so():
    full = {"checkpoint": {"seq": 9, "progress_percent": 10.0}, "storage_full": True}
    assert _beat(full, 0.2)[3] is True
    assert _beat({**full, "storage_full": "yes"}, 0.2)[3] is False   # only the flag the session sets
    assert _beat({"checkpoint": {"seq": 9}}, 0.2)[3] is False


def test_details_of_another_shape_give_only_the_age():
    assert _beat(None, 3.0) == (None, None, 3.0, False)
    assert _beat(["not", "a", "dict"], None) == (None, None, None, False)
    assert _beat({"checkpoint": "seq 4", "progress_percent": "half"}, 1.0) == (None, None, 1.0, False)
