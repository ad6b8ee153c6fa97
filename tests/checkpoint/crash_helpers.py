"""Interrupted writes as a dying process leaves them (for the cleanup tests)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# The child lets the kernel kill it when a write passes its file size limit
# (Python ignores SIGXFSZ by default): it dies inside FsStore.put's write, after
# creating the temp file and before linking it into place.
_CHILD = """
import resource, signal, sys
from checkpoint.stores import FsStore
signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
FsStore(sys.argv[1]).put(sys.argv[2], b"x" * 65536)
"""


def crash_mid_put(root: Path, key: str) -> None:
    """Run ``FsStore(root).put(key, ...)`` in a process that dies mid-write."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)}
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(root), key], env=env,
                          capture_output=True, timeout=60)
    if proc.returncode != -signal.SIGXFSZ:
        raise RuntimeError(f"the put did not die mid-write (rc {proc.returncode}): "
                           f"{proc.stderr.decode(errors='replace')[-2000:]}")
