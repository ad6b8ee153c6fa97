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
import os
import subprocess
import sys
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


_IN_SANDBOX = """
import asyncio, sys, tempfile
from pathlib import Path
sys.path[:0] = [{root!r}, {here!r}]
import test_replay as t
from temporalio import workflow
from workflows import WORKFLOWS
assert all(workflow._Definition.must_from_class(w).sandboxed for w in WORKFLOWS)

async def main():
    failures = []
    for path in t.HISTORIES:
        with tempfile.TemporaryDirectory() as tmp:
            replayer = t.Replayer(workflows=WORKFLOWS,
                                  data_converter=t.build_data_converter(t.Settings(state_dir=Path(tmp))))
            result = await replayer.replay_workflow(t._load(path), raise_on_replay_failure=False)
        if result.replay_failure is not None:
            failures.append(f"{{t._name(path)}}: {{result.replay_failure}}")
    print(len(t.HISTORIES), "histories;", len(failures), "failed")
    for f in failures:
        print(f)
    sys.exit(1 if failures else 0)

asyncio.run(main())
"""


def test_histories_replay_inside_the_sandbox() -> None:
    """The workflows run unsandboxed (``workflows.job.SANDBOXED``); Temporal's sandbox,
    switched back on, still accepts every recorded history, so nothing they do relies
    on running outside it (a clock, I/O, a non-deterministic import would fail here)."""
    root = str(Path(__file__).resolve().parents[2])
    code = _IN_SANDBOX.format(root=root, here=str(Path(__file__).resolve().parent))
    env = {**os.environ, "CROWDCOMPUTE_WORKFLOW_SANDBOX": "1"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{len(HISTORIES)} histories; 0 failed" in done.stdout


def test_workflows_run_outside_the_sandbox_by_default() -> None:
    from temporalio import workflow

    if os.environ.get("CROWDCOMPUTE_WORKFLOW_SANDBOX", "") not in ("", "0"):
        pytest.skip("CROWDCOMPUTE_WORKFLOW_SANDBOX is set for this run")
    assert not any(workflow._Definition.must_from_class(w).sandboxed for w in WORKFLOWS)
