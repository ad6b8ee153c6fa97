"""A client is light: `import sdk`, connect and a map of JSON items load no NumPy,
zstandard, SQLAlchemy, checkpoint or worker code (checked in a fresh interpreter)."""

from __future__ import annotations

import asyncio
import subprocess
import sys

from _helpers import worker_env

from worker_app.settings import Settings

HEAVY = ("numpy", "zstandard", "sqlalchemy", "checkpoint", "activities", "worker_app", "torch",
         "tensorflow", "boto3")
FRAMEWORKS = ("keras", "lightning", "pytorch_lightning", "transformers", "accelerate")
SCRIPT = f"""
import sys
import sdk
before = sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r})
print("RESULT", sdk.run_map("tasks:square", [1, 2, 3]))  # by path: tasks.py imports numpy
after = sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r})
print("HEAVY", before, after)
"""


def test_import_sdk_is_light() -> None:
    code = f"import sys, sdk; print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


INTEGRATIONS = ("keras", "lightning", "transformers", "torch")


def test_integration_modules_load_no_framework_until_their_callback_is_used() -> None:
    imports = ", ".join(f"sdk.integrations.{name}" for name in INTEGRATIONS)
    code = (f"import sys, {imports}; "
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY + FRAMEWORKS!r}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


async def test_connect_and_map_of_json_items_stay_light(worker: None, settings: Settings) -> None:
    # an asyncio subprocess: the in-process worker shares this event loop
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SCRIPT, env=worker_env(settings),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=120)
    text = out.decode()
    assert proc.returncode == 0, text
    assert "RESULT [1, 4, 9]" in text
    assert "HEAVY [] []" in text
