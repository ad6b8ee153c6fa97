"""The per-test watchdog (tests/_watchdog.py) ends a run whose teardown hangs
after pytest-timeout already fired, and says which task hung where."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

HUNG = '''
import asyncio
import pytest

@pytest.fixture
async def stuck_teardown():
    yield
    async def never_done():
        await asyncio.sleep(3600)
    await asyncio.create_task(never_done(), name="the-stuck-task")

@pytest.mark.timeout(1)
async def test_times_out_then_hangs_in_teardown(stuck_teardown):
    await asyncio.sleep(3600)

def test_after():
    pass
'''


def test_a_teardown_hang_after_the_timeout_ends_the_run_with_stacks(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text(
        "from _watchdog import pytest_runtest_protocol  # noqa: F401\n")
    (tmp_path / "test_hung.py").write_text(HUNG)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent),
           "CROWDCOMPUTE_TEST_WATCHDOG_GRACE": "2"}
    start = time.monotonic()
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "asyncio_mode=auto",
         str(tmp_path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    took = time.monotonic() - start
    out = run.stdout + run.stderr
    assert run.returncode == 3, out
    assert took < 60, took
    assert "watchdog: test_hung.py::test_times_out_then_hangs_in_teardown" in out, out
    assert "the-stuck-task" in out and "in never_done" in out, out
