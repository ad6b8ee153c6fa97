"""Where the API listens: ``crowdcompute api`` and ``crowdcompute dev`` bind
127.0.0.1 unless ``--host`` says otherwise.

A socket bound to 127.0.0.1 does not answer on 127.0.0.2 (another loopback
address), one bound to 0.0.0.0 does: that tells the two apart on any Linux host
without a second network interface.
"""

from __future__ import annotations

import http.client
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from _helpers import clean_env
from _servers import free_port

from worker_app.dev import DevStack
from worker_app.settings import Settings

OTHER_LOOPBACK = "127.0.0.2"
START_WITHIN = 60.0


def healthz(host: str, port: int) -> int:
    conn = http.client.HTTPConnection(host, port, timeout=5)
    try:
        conn.request("GET", "/healthz")
        return conn.getresponse().status
    finally:
        conn.close()


def wait_healthy(proc: subprocess.Popen[bytes], port: int) -> None:
    deadline = time.monotonic() + START_WITHIN
    while True:
        try:
            assert healthz("127.0.0.1", port) == 200
            return
        except ConnectionRefusedError:
            assert proc.poll() is None, "the API exited"
            assert time.monotonic() < deadline, "the API did not start"
            time.sleep(0.2)


def refused(host: str, port: int) -> bool:
    try:
        healthz(host, port)
    except ConnectionRefusedError:
        return True
    return False


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


@pytest.fixture
def api_process(tmp_path: Path) -> Iterator[object]:
    started: list[subprocess.Popen[bytes]] = []
    (tmp_path / "state").mkdir()
    exe = str(Path(sys.executable).with_name("crowdcompute"))

    def start(*args: str) -> int:
        port = free_port()
        env = clean_env(CROWDCOMPUTE_STATE_DIR=str(tmp_path / "state"))
        proc = subprocess.Popen([exe, "api", "--port", str(port), *args], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        started.append(proc)
        wait_healthy(proc, port)
        return port

    yield start
    for proc in started:
        stop(proc)


def test_api_binds_loopback_by_default(api_process) -> None:  # type: ignore[no-untyped-def]
    port = api_process()
    assert refused(OTHER_LOOPBACK, port)


def test_api_host_option_binds_all_interfaces(api_process) -> None:  # type: ignore[no-untyped-def]
    port = api_process("--host", "0.0.0.0")
    assert healthz(OTHER_LOOPBACK, port) == 200


def test_dev_stack_api_binds_loopback(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()  # start_server makes it; this test starts only the API
    stack = DevStack(Settings(state_dir=tmp_path / "state"), port=free_port(), ui_port=free_port())
    port = free_port()
    proc = stack.start_api(port)
    try:
        wait_healthy(proc, port)
        assert refused(OTHER_LOOPBACK, port)
    finally:
        stack.stop()
