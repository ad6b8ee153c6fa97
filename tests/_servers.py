"""Real services for the test suite: a moto S3 server and the PostgreSQL URL.

Nothing here is a mock of a service: moto runs in server mode on a loopback
port and the tests reach it over HTTP with boto3, exactly as they would reach
S3. PostgreSQL is a real server started by ``scripts/test.sh`` (or by hand).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

from temporalio.testing import WorkflowEnvironment

from worker_app.dev import local_environment

POSTGRES_URL_ENV = "CROWDCOMPUTE_TEST_POSTGRES_URL"
DEFAULT_POSTGRES_URL = "postgresql+psycopg://cc:cc@127.0.0.1:5432/cc_test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def can_bind(port: int) -> bool:
    """Whether ``port`` on loopback is free to bind right now."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def postgres_url() -> str:
    """The URL of the real PostgreSQL server the tests use."""
    return os.environ.get(POSTGRES_URL_ENV, DEFAULT_POSTGRES_URL)


@contextmanager
def moto_server(command: list[str] | None = None, port: int | None = None) -> Iterator[str]:
    """Run a moto server on a loopback port; yield its endpoint URL.

    ``command`` replaces ``python -m moto.server`` (it gets ``-H HOST -p PORT``).
    """
    port = port or free_port()
    # The server logs a line per request: into a file, never an unread pipe (a
    # full pipe buffer blocks the server's next log write, and so the request).
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            [*(command or [sys.executable, "-m", "moto.server"]), "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    urllib.request.urlopen(f"{url}/moto-api/", timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        log.seek(0)
                        err = log.read().decode(errors="replace")[-4000:]
                        raise RuntimeError(f"moto server did not start: {err}") from None
                    time.sleep(0.1)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def reset_moto(url: str) -> None:
    """Drop every bucket and object of a running moto server."""
    req = urllib.request.Request(f"{url}/moto-api/reset", method="POST")
    urllib.request.urlopen(req, timeout=10).close()


@asynccontextmanager
async def dev_server() -> AsyncIterator[WorkflowEnvironment]:
    """A real `temporal server start-dev`, for the duration of the ``async with``."""
    env = await local_environment()
    try:
        yield env
    finally:
        await env.shutdown()
