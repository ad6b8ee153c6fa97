"""The control channel between a worker and a task's child process.

One Unix socket pair per child; every message is a 4-byte big-endian length and a
pickled tuple ``(op, *args)``. Messages are small (a run request carries the
item's payload; a result the result's), never checkpoint bytes: the child
persists its checkpoints itself.

Parent → child: ``("init", InitSpec)``, ``("run", RunSpec)``, ``("stop",)``,
``("final",)``. Child → parent: ``("ready", pid)``, ``("beat", details)``,
``("observe", method, args)``, ``("final_done", ok)``, ``("fenced",)``,
``("done", result)`` (a serialized payload, or a base64 string for a first-format job), ``("error", TaskError)``.
"""

from __future__ import annotations

import pickle
import socket
import struct
import threading
from dataclasses import dataclass, field
from typing import Any

HEADER = struct.Struct(">I")


@dataclass(frozen=True)
class InitSpec:
    """What a fresh child needs before its first task."""

    sys_path: list[str]
    settings: dict[str, Any]   # a TaskRuntime as a dict
    memory_limit: int | None = None


@dataclass(frozen=True)
class RunSpec:
    """One attempt of one task, as the child runs it."""

    job_id: str
    task_id: str
    index: int
    attempt: int
    fn: str
    payload: str
    # The item's serialized ``Payload``; None for a first-format job (``payload``).
    item: bytes | None = None
    checkpoint_interval: float | None = None
    checkpoint_every_steps: int | None = None
    max_checkpoint_age: float | None = None
    hinted_seq: int | None = None
    hinted_catalog: str | None = None
    keep: str = "none"
    warm_start_from: str | None = None
    # Start over: delete the task's checkpoints rather than resume from them.
    fresh: bool = False


@dataclass(frozen=True)
class TaskError:
    """An exception of the user function (or of the child's task setup)."""

    type: str
    message: str
    traceback: str
    non_retryable: bool = False
    details: list[Any] = field(default_factory=list)


def encode(msg: tuple[Any, ...]) -> bytes:
    body = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(body)) + body


class BlockingChannel:
    """The child's end: blocking reads on one thread, sends from any thread."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._send_lock = threading.Lock()

    def send(self, *msg: Any) -> None:
        data = encode(msg)
        with self._send_lock:
            self._sock.sendall(data)

    def recv(self) -> tuple[Any, ...] | None:
        """The next message, or None at EOF (the worker is gone)."""
        header = self._read(HEADER.size)
        if header is None:
            return None
        body = self._read(HEADER.unpack(header)[0])
        return None if body is None else pickle.loads(body)  # noqa: S301 - our own parent

    def _read(self, n: int) -> bytes | None:
        buf = bytearray()
        while len(buf) < n:
            chunk = self._sock.recv(n - len(buf))
            if not chunk:
                return None
            buf += chunk
        return bytes(buf)
