"""Bad input gets a clear, early error."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import tasks

import sdk
from worker_app.settings import Settings


async def test_unknown_function_fails_fast(worker: None) -> None:
    job = await sdk.submit("tasks:nope", [1], max_attempts=5)
    with pytest.raises(sdk.JobFailed, match="cannot load task function 'tasks:nope'") as info:
        await job.result()
    assert "FunctionNotFound" in str(info.value)
    task = (await job.progress()).tasks[0]
    assert (task.state, task.attempt) == ("failed", 1)  # not retried with back-off


async def test_failing_task_names_task_type_and_message(worker: None) -> None:
    with pytest.raises(sdk.JobFailed) as info:
        await sdk.map(tasks.fail_always, [3], job_id="failing-job", max_attempts=2)
    msg = str(info.value)
    assert "failing-job:0" in msg
    assert "ValueError" in msg
    assert "bad item 3" in msg


def test_lambda_rejected_before_anything_is_sent() -> None:
    with pytest.raises(ValueError, match="importable module") as info:
        sdk.run_map(lambda x: x, [1], address="127.0.0.1:1")
    assert "pass mytasks.square" in str(info.value)
    assert "mytasks.a function" not in str(info.value)


async def test_an_unpicklable_item_is_named_by_its_index() -> None:
    with pytest.raises(ValueError, match="item 2 cannot be sent to the workers: .*lambda"):
        await sdk.submit(tasks.square, [1, 2, lambda: 3])


def test_closure_rejected() -> None:
    def inner(x: int) -> int:
        return x

    with pytest.raises(ValueError, match="inside another function"):
        sdk.run_map(inner, [1], address="127.0.0.1:1")


def test_main_module_function_rejected(tmp_path: Path) -> None:
    script = tmp_path / "script.py"
    script.write_text(
        "import sdk\n"
        "def f(x):\n    return x\n"
        "try:\n    sdk.run_map(f, [1], address='127.0.0.1:1')\n"
        "except ValueError as e:\n    print('ERR', e)\n"
    )
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert "ERR" in out.stdout
    assert "__main__" in out.stdout


@pytest.mark.parametrize("job_id", ["", "-x", "a/b", "x" * 201, "a b", "job\n", "job\r\n"])
async def test_invalid_job_id(job_id: str) -> None:
    with pytest.raises(ValueError, match="invalid job id"):
        await sdk.submit(tasks.square, [1], job_id=job_id)


async def test_temporal_unreachable_is_clear_and_fast(settings: Settings) -> None:
    start = time.monotonic()
    with pytest.raises(sdk.TemporalUnreachable, match="cannot reach Temporal at 127.0.0.1:1"):
        await sdk.connect("127.0.0.1", 1, settings=settings)
    assert time.monotonic() - start < 10


def test_invalid_settings_one_line_error(tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("crowdcompute")
    env = {"CROWDCOMPUTE_DB_SIZE_LIMIT": "lots", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([str(exe), "worker"], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1
    assert "CROWDCOMPUTE_DB_SIZE_LIMIT" in out.stderr
    assert "Traceback" not in out.stderr
