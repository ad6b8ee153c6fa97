"""A child process that drives a real checkpoint manager and dies at a named point.

Run as ``python -m tests._crash SPEC_JSON`` from the repository root. The spec
names the catalog and the stores, a list of actions (``save``, ``reopen``,
``delete``, ``sweep``) and a crash point: the ``nth`` ``call`` / ``return`` of a function
(by qualified name, e.g. ``ChainStore.commit``) or the ``nth`` ``c_call`` of a
builtin (e.g. ``link`` for ``os.link``), optionally only while another function
(``within``) is on the stack, counted from the action ``arm_at`` on. A
``sys.setprofile`` hook watches the calls and ends the process with
``os._exit(17)`` there, so nothing of the code under test is edited.

Before each save the child appends ``{"step", "digest", "phase": "begin"}`` to
the report file and after it ``{"phase": "done", "seq", "kind"}``, each line
fsynced, so the parent knows the last committed state and the one in flight.
States are a pure function of the step (:func:`state_at`), and
:func:`state_digest` hashes what a restore returns.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import sys
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np

CRASH_EXIT = 17
JOB, TASK = "crashjob", "crashtask"
BIG = 1 << 17  # float64 elements: 1 MiB, a part of its own in the object tier


def state_at(step: int) -> dict[str, Any]:
    """The state after ``step`` steps: three 1 MiB arrays, one small one, Python values.

    Steps change one element of one big array (a small delta); every fourth
    step rewrites a whole array (a large one), so the chain sees both.
    """
    rng = np.random.default_rng(7)
    big = [rng.standard_normal(BIG) for _ in range(3)]
    small = np.arange(64, dtype=np.float32)
    for s in range(1, step + 1):
        if s % 4 == 0:
            big[s % 3] = np.random.default_rng(s).standard_normal(BIG)
        else:
            big[s % 3][s * 17 % BIG] += 1.0
        small[s % 64] = s
    return {"big": big, "small": small, "step": step, "history": list(range(step)),
            "name": f"run-{step % 3}"}


def state_digest(state: Any) -> str:
    """SHA-256 over the arrays' bytes, dtypes and shapes and the other values."""
    h = hashlib.sha256()
    for a in [*state["big"], state["small"]]:
        h.update(str((a.dtype.str, a.shape)).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    h.update(pickle.dumps((state["step"], state["history"], state["name"]), protocol=5))
    return h.hexdigest()


class Trap:
    """Ends the process at the ``nth`` matching event once armed (a profile hook)."""

    def __init__(self, target: str, event: str, nth: int, within: str | None) -> None:
        self.target, self.event, self.nth, self.within = target, event, nth, within
        self.hits = 0

    def arm(self) -> None:
        sys.setprofile(self._hook)

    def _hook(self, frame: FrameType, event: str, arg: Any) -> None:
        if event != self.event:
            return
        if event == "c_call":
            if getattr(arg, "__name__", None) != self.target:
                return
        elif frame.f_code.co_qualname != self.target:
            return
        if self.within is not None and not _on_stack(frame, self.within):
            return
        self.hits += 1
        if self.hits == self.nth:
            os._exit(CRASH_EXIT)


def _on_stack(frame: FrameType | None, qualname: str) -> bool:
    while frame is not None:
        if frame.f_code.co_qualname == qualname:
            return True
        frame = frame.f_back
    return False


def open_manager(spec: dict[str, Any]) -> Any:
    """A manager on the spec's catalog URL and object store (a directory or S3)."""
    from checkpoint import CheckpointManager, ManagerConfig
    from checkpoint.catalog import create_engine_for
    from checkpoint.stores import FsStore, SqlStore

    engine = create_engine_for(spec["catalog"])
    if "s3" in spec:
        from checkpoint.stores.s3 import S3Store

        s3 = spec["s3"]
        objects: Any = S3Store(s3["bucket"], s3["prefix"], endpoint_url=s3["endpoint"])
    else:
        objects = FsStore(spec["blobs"])
    config = ManagerConfig(db_size_limit=4096, max_deltas_per_base=3, orphan_grace_seconds=0)
    return CheckpointManager(engine, SqlStore(engine), objects, config)


def _report(path: Path, **line: Any) -> None:
    with open(path, "a") as fh:
        fh.write(json.dumps(line) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def main(spec: dict[str, Any]) -> int:
    manager = open_manager(spec)
    report = Path(spec["report"])
    trap = Trap(spec["target"], spec["event"], spec["nth"], spec.get("within"))
    writer = None
    attempt = 1
    step = spec.get("first_step", 1)
    for i, action in enumerate(spec["actions"]):
        if i == spec["arm_at"]:
            trap.arm()
        if action == "save":
            if writer is None:
                writer = manager.open_attempt(JOB, TASK, attempt).writer
            state = state_at(step)
            _report(report, phase="begin", step=step, digest=state_digest(state))
            info = writer.save(writer.capture(state), progress_percent=float(step))
            _report(report, phase="done", step=step, seq=info.seq, kind=info.kind)
            step += 1
        elif action == "reopen":  # the next save opens a new attempt (a new epoch)
            writer, attempt = None, attempt + 1
        elif action == "delete":
            manager.delete_task(TASK)
            _report(report, phase="deleted")
        elif action == "sweep":
            manager.sweep_orphans(grace_seconds=0)
            _report(report, phase="swept")
        else:
            raise ValueError(f"unknown action {action!r}")
    sys.setprofile(None)
    return 0


if __name__ == "__main__":
    sys.exit(main(json.loads(sys.argv[1])))
