"""The embedded stack as a user runs it: ``crowdcompute dev`` and ``crowdcompute demo``
as real processes (their own Temporal dev server, workers and REST API)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from _helpers import clean_env
from _servers import free_port

from worker_app.dev import port_in_use

pytestmark = pytest.mark.timeout(240)

EXE = str(Path(sys.executable).with_name("crowdcompute"))


def wait_until(pred, timeout: float = 90.0, output: list[str] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            seen = "".join(output) if output is not None else ""
            raise TimeoutError(f"condition not met in time; the stack printed:\n{seen}")
        time.sleep(0.3)


def healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


def _start_dev(tmp_path: Path, workers: int = 2
               ) -> tuple[subprocess.Popen[str], Path, tuple[int, int, int, int]]:
    """`crowdcompute dev` with ``workers`` workers on free ports; (process, state dir, ports)."""
    port, ui, api, codec = free_port(), free_port(), free_port(), free_port()
    state = tmp_path / "state"
    proc = subprocess.Popen(
        [EXE, "dev", "--state-dir", str(state), "--port", str(port), "--ui-port", str(ui),
         "--api-port", str(api), "--codec-port", str(codec), "--workers", str(workers)],
        env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return proc, state, (port, ui, api, codec)


def _decode(codec: int, payloads: list[dict[str, Any]]) -> dict[str, Any]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{codec}/decode", data=json.dumps({"payloads": payloads}).encode(),
        headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=10) as r:
        body: dict[str, Any] = json.loads(r.read())
    return body


def test_dev_runs_a_job_serves_the_api_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    proc, state, (port, ui, api, codec) = _start_dev(tmp_path)
    try:
        wait_until(lambda: port_in_use(port) and healthy(api) and port_in_use(codec))
        json_payload = {"metadata": {"encoding": "anNvbi9wbGFpbg=="}, "data": "WzEsMl0="}
        assert _decode(codec, [json_payload]) == {"payloads": [json_payload]}
        job = subprocess.run(
            [EXE, "submit", "tasks:square", "--items", str(_items(tmp_path, [1, 2, 3])),
             "--job-id", "dev-job", "--wait"],
            env=clean_env(CROWDCOMPUTE_TEMPORAL_ADDRESS=f"127.0.0.1:{port}",
                          CROWDCOMPUTE_STATE_DIR=str(state)),
            capture_output=True, text=True, timeout=120)
        assert job.returncode == 0, job.stderr
        assert json.loads(job.stdout.split("\n", 1)[1]) == [1, 4, 9]
        with urllib.request.urlopen(
                f"http://127.0.0.1:{api}/api/checkpoints/jobs/dev-job", timeout=10) as r:
            body = json.loads(r.read())
        assert (body["job_id"], body["job_status"]) == ("dev-job", "completed")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert f"Temporal UI:  http://localhost:{ui}" in out
    assert out.count("worker ready") == 2, out
    assert f"--ui-codec-endpoint http://localhost:{codec}" in out
    assert not port_in_use(port) and not port_in_use(api)
    assert (state / "temporal.db").exists()  # jobs survive a restart of the dev server


def test_dev_with_no_workers_runs_temporal_and_the_api_only(tmp_path: Path) -> None:
    proc, _, (port, _, api, _) = _start_dev(tmp_path, workers=0)
    try:
        wait_until(lambda: port_in_use(port) and healthy(api))
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "workers:      0 on task queue 'crowdcompute'" in out, out
    assert "worker ready" not in out, out  # what a started worker prints here


@pytest.mark.parametrize("workers", ["-1", "two"])
def test_dev_refuses_a_worker_count_that_is_not_a_whole_number(tmp_path: Path,
                                                                workers: str) -> None:
    out = subprocess.run([EXE, "dev", "--state-dir", str(tmp_path), "--workers", workers],
                         env=clean_env(), capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert f"--workers: expected a whole number >= 0, got {workers!r}" in out.stderr


def test_dev_reports_a_taken_port(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        taken = s.getsockname()[1]
        out = subprocess.run(
            [EXE, "dev", "--state-dir", str(tmp_path), "--port", str(taken),
             "--ui-port", str(free_port()), "--api-port", str(free_port()),
             "--codec-port", str(free_port())],
            env=clean_env(), capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert f"already in use: port {taken} (Temporal gRPC). Is another" in out.stderr
    assert "REST API" not in out.stderr and "--port" in out.stderr


def test_dev_names_every_taken_port(tmp_path: Path) -> None:
    with socket.socket() as grpc, socket.socket() as api:
        for s in (grpc, api):
            s.bind(("127.0.0.1", 0))
            s.listen()
        port, api_port = grpc.getsockname()[1], api.getsockname()[1]
        out = subprocess.run(
            [EXE, "dev", "--state-dir", str(tmp_path), "--port", str(port),
             "--ui-port", str(free_port()), "--api-port", str(api_port),
             "--codec-port", str(free_port())],
            env=clean_env(), capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert (f"already in use: port {port} (Temporal gRPC), port {api_port} (REST API)"
            in out.stderr)


def test_demo_kills_a_worker_and_resumes_from_checkpoints(tmp_path: Path) -> None:
    port = free_port()
    out = subprocess.run(
        [EXE, "demo"], env=clean_env(CROWDCOMPUTE_STATE_DIR=str(tmp_path / "state"),
                                     CROWDCOMPUTE_TEMPORAL_ADDRESS=f"127.0.0.1:{port}"),
        capture_output=True, text=True, timeout=200)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "killed worker pid" in out.stdout
    assert "resumed from its checkpoint at step" in out.stdout
    assert "steps (" in out.stdout and "from being recomputed" in out.stdout
    assert not port_in_use(port)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _items(tmp: Path, items: list[int]) -> Path:
    path = tmp / "items.json"
    path.write_text(json.dumps(items))
    return path


def test_dev_restarts_a_worker_that_died_and_the_job_completes(tmp_path: Path) -> None:
    import re
    import threading

    proc, state, (port, ui, api, _) = _start_dev(tmp_path)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()

    def worker_pids() -> list[int]:
        return [int(m.group(1)) for line in list(lines)
                if (m := re.search(r"worker ready: .*\(pid (\d+)\)", line))]

    try:
        # Two workers ready (one that died while starting and was replaced counts once
        # more: the victim is whichever is ready first and still alive).
        wait_until(lambda: len(worker_pids()) >= 2 and healthy(api), output=lines)
        ready = worker_pids()
        victim = next(p for p in ready if _alive(p))
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: len(worker_pids()) > len(ready), timeout=60,
                   output=lines)  # a replacement polls
        assert proc.poll() is None  # the stack stayed up
        assert any(f"(pid {victim}) exited with code -9; restarting" in x for x in lines)
        job = subprocess.run(
            [EXE, "submit", "tasks:square", "--items", str(_items(tmp_path, [4, 5])),
             "--job-id", "after-restart", "--wait"],
            env=clean_env(CROWDCOMPUTE_TEMPORAL_ADDRESS=f"127.0.0.1:{port}",
                          CROWDCOMPUTE_STATE_DIR=str(state)),
            capture_output=True, text=True, timeout=120)
        assert job.returncode == 0, job.stderr
        assert json.loads(job.stdout.split("\n", 1)[1]) == [16, 25]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    assert proc.returncode == 0, "".join(lines)
