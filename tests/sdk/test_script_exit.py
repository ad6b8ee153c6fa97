"""Client scripts exit with their own status (issue: native Temporal threads at finalization).

Before the fix about one run in seven of these scripts printed its results and
then aborted (exit 134, "PyGILState_Release") or segfaulted (139).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
from _helpers import worker_env

from worker_app.settings import Settings

RUN_MAP = "import sdk, tasks\nprint(sdk.run_map(tasks.square, range(3)))\n"
ASYNC_MAP = """
import asyncio, sys
import sdk, tasks

async def main():
    await sdk.connect()
    print(await sdk.map(tasks.square, range(3)))

asyncio.run(main())
sys.exit(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
"""
RUNS = 50
PARALLEL = 4


async def _run_many(script: Path, env: dict[str, str], runs: int, *args: str) -> list[tuple[int, str]]:
    gate = asyncio.Semaphore(PARALLEL)

    async def one() -> tuple[int, str]:
        async with gate:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, str(script), *args, env=env,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
            out, _ = await asyncio.wait_for(proc.communicate(), timeout=120)
            return proc.returncode or 0, out.decode(errors="replace")

    return list(await asyncio.gather(*(one() for _ in range(runs))))


@pytest.mark.parametrize("name,source", [("run_map", RUN_MAP), ("asyncio_map", ASYNC_MAP)],
                         ids=["run_map", "asyncio_map"])
async def test_fifty_script_runs_exit_zero(worker: None, settings: Settings, tmp_path: Path,
                                           name: str, source: str) -> None:
    script = tmp_path / f"{name}.py"
    script.write_text(source)
    results = await _run_many(script, worker_env(settings), RUNS)
    bad = [(rc, out[-400:]) for rc, out in results if rc != 0 or "[0, 1, 4]" not in out]
    assert bad == [], f"{len(bad)} of {RUNS} runs failed; first: {bad[:1]}"


async def test_a_script_keeps_its_own_exit_status(worker: None, settings: Settings,
                                                  tmp_path: Path) -> None:
    script = tmp_path / "status.py"
    script.write_text(ASYNC_MAP)
    results = await _run_many(script, worker_env(settings), 5, "3")
    assert [rc for rc, _ in results] == [3] * 5
    assert all("[0, 1, 4]" in out for _, out in results)
