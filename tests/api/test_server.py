"""The API behind a real uvicorn server (what ``crowdcompute api`` runs), with
raw request paths that no client library normalises first."""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest
from _servers import free_port
from fastapi import FastAPI
from temporalio.client import Client

from worker_app.api import build_server, create_app
from worker_app.api._limits import MAX_HEADER_BYTES
from worker_app.api.auth import MAX_FAILURES
from worker_app.settings import Settings

from .conftest import API_TOKEN, client_factory, make_settings, write_checkpoints

if TYPE_CHECKING:
    from pathlib import Path

    from checkpoint import CheckpointManager


@contextlib.contextmanager
def serving(settings: Settings, app: FastAPI) -> Iterator[int]:
    """``build_server`` (what ``crowdcompute api`` runs) on a free loopback port."""
    port = free_port()
    server = build_server(settings, port, host="127.0.0.1", app=app)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    try:
        while not server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
def served(api_settings: Settings, app: FastAPI) -> Iterator[int]:
    with serving(api_settings, app) as port:
        yield port


def get(port: int, raw_path: str) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest("GET", raw_path, skip_accept_encoding=True)
        conn.endheaders()
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"{}")
    finally:
        conn.close()


def test_real_server(served: int, manager: CheckpointManager) -> None:
    write_checkpoints(manager, "served-job", 4, [33.0])
    assert get(served, "/healthz") == (200, {"status": "ok"})
    status, body = get(served, "/api/checkpoints/tasks/served-job:4")
    assert status == 200 and body["progress_percent"] == 33.0
    for raw in ("/api/checkpoints/tasks/..%2F..%2Fetc%2Fpasswd:0",
                "/api/checkpoints/tasks/../../etc/passwd",
                "/api/checkpoints/storage-info/%2e%2e%2f%2e%2e%2fetc:1",
                "/api/checkpoints/jobs/job%00",
                "/api/checkpoints/jobs/%ff%fe",
                "/api/checkpoints/jobs/" + "x" * 10_000):
        status, body = get(served, raw)
        assert status in (404, 422), (raw[:60], status)
        assert "error" in body


def raw_request(port: int, head: bytes, timeout: float = 10) -> bytes:
    """Send ``head`` as one request on a fresh socket; read the whole answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def oversized(header_bytes: int) -> bytes:
    return (b"GET /healthz HTTP/1.1\r\nHost: api\r\nX-Big: " + b"a" * header_bytes
            + b"\r\nConnection: close\r\n\r\n")


@pytest.mark.parametrize("size", [MAX_HEADER_BYTES + 1024, 4 * MAX_HEADER_BYTES, 512 * 1024])
def test_oversized_headers_get_431_not_a_reset(served: int, size: int) -> None:
    # Small excesses may reach the application in one piece (the middleware
    # answers); larger ones overflow the parser's buffer (the protocol answers).
    answer = raw_request(served, oversized(size))
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[0] == b"HTTP/1.1 431 Request Header Fields Too Large"
    assert json.loads(body)["error"] == "request_header_fields_too_large"


def test_headers_within_the_limit_still_served(served: int) -> None:
    answer = raw_request(served, oversized(MAX_HEADER_BYTES - 1024))
    assert answer.split(b"\r\n")[0] == b"HTTP/1.1 200 OK"
    # and the server keeps serving after refusing one
    raw_request(served, oversized(512 * 1024))
    assert get(served, "/healthz") == (200, {"status": "ok"})


def test_build_server_binds_loopback_by_default(api_settings: Settings, app: FastAPI) -> None:
    server = build_server(api_settings, free_port(), app=app)
    assert server.config.host == "127.0.0.1"


PROXY = "127.0.0.2"   # another loopback address: the "load balancer" the requests come through


def forced(port: int, task: str, token: str, forwarded: str) -> int:
    """POST force-checkpoint from ``PROXY``, as a proxy that appended its client to the header."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10, source_address=(PROXY, 0))
    try:
        conn.request("POST", f"/api/checkpoints/tasks/{task}/force-checkpoint",
                     headers={"Authorization": f"Bearer {token}", "X-Forwarded-For": forwarded})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def test_failed_tokens_are_counted_per_client_behind_a_trusted_proxy(
        store_root: Path, temporal_address: str, manager: CheckpointManager,
        temporal_client: Client) -> None:
    """Behind the AWS load balancer every request comes from its addresses: with the
    proxy trusted, the failed-token limit counts each client it forwarded for."""
    settings = make_settings(store_root, temporal_address, api_trusted_proxies=PROXY)
    app = create_app(settings, manager=manager, temporal_client_factory=client_factory(temporal_client))
    write_checkpoints(manager, "proxied-job", 0, [10.0])
    task = "proxied-job:0"
    with serving(settings, app) as port:
        for n in range(MAX_FAILURES):
            assert forced(port, task, f"guess-{n}", "203.0.113.7") == 401
        assert forced(port, task, API_TOKEN, "203.0.113.7") == 429
        # what the client itself put in the header comes first; the proxy's entry counts
        assert forced(port, task, API_TOKEN, "198.51.100.1, 203.0.113.7") == 429
        # another client behind the same proxy is not locked out
        assert forced(port, task, API_TOKEN, "203.0.113.8") == 202
    assert manager.take_force(task) is True
