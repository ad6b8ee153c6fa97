"""The test bounds (tests/_watchdog.py): a hung coroutine test is cancelled
before pytest-timeout's signal and its fixtures still tear down; a teardown
that hangs after pytest-timeout fired ends the run, saying what hung where."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

HUNG_CALL = '''
import asyncio
from pathlib import Path
import pytest

@pytest.fixture
async def torn_down():
    yield
    Path("torn-down").write_text("yes")

@pytest.mark.timeout(4)
async def test_hangs(torn_down):
    await asyncio.sleep(3600)

def test_after():
    Path("after").write_text("yes")

@pytest.mark.timeout(30)
async def test_own_timeout():
    raise TimeoutError("condition not met in time")
'''

HUNG_TEARDOWN = '''
import asyncio
import time
import pytest

@pytest.fixture
async def stuck_teardown():
    yield
    async def never_done():
        await asyncio.sleep(3600)
    await asyncio.create_task(never_done(), name="the-stuck-task")

@pytest.mark.timeout(1)
def test_times_out_then_hangs_in_teardown(stuck_teardown):
    time.sleep(3600)

def test_after():
    pass
'''


def _pytest(tmp_path: Path, source: str) -> tuple[int, str, float]:
    (tmp_path / "conftest.py").write_text(
        "from _watchdog import pytest_runtest_call, pytest_runtest_protocol  # noqa: F401\n")
    (tmp_path / "test_hung.py").write_text(source)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent),
           "CROWDCOMPUTE_TEST_WATCHDOG_GRACE": "2"}
    start = time.monotonic()
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "asyncio_mode=auto",
         "-o", "asyncio_default_fixture_loop_scope=function", str(tmp_path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    return run.returncode, run.stdout + run.stderr, time.monotonic() - start


def test_a_hung_coroutine_test_is_cancelled_and_torn_down(tmp_path: Path) -> None:
    code, out, took = _pytest(tmp_path, HUNG_CALL)
    assert code == 1, out
    assert "2 failed, 1 passed" in out, out
    assert "the test's coroutine ran past 2 s" in out, out
    # a TimeoutError the test raises itself is reported as it was, not as the bound
    assert "FAILED test_hung.py::test_own_timeout - TimeoutError: condition not met" in out, out
    # asyncio's cancellation, not pytest-timeout's signal; the traceback shows the await
    assert "await asyncio.sleep(3600)" in out and "Timeout (>" not in out, out
    assert (tmp_path / "torn-down").exists() and (tmp_path / "after").exists()
    assert took < 30, took


def test_a_teardown_hang_after_the_timeout_ends_the_run_with_stacks(tmp_path: Path) -> None:
    code, out, took = _pytest(tmp_path, HUNG_TEARDOWN)
    assert code == 3, out
    assert took < 30, took
    assert "watchdog: test_hung.py::test_times_out_then_hangs_in_teardown" in out, out
    assert "the-stuck-task" in out and "in never_done" in out, out
    assert "ended the run" in out, out
