"""A seeded, fault-injecting HTTP proxy on loopback, for the S3 fault tests.

It is a real TCP server between boto3 and the moto S3 server: every request is
read off the socket, forwarded to the upstream server over a fresh connection
and its response relayed back, unless the policy picks a fault for it:

========== =====================================================================
``error500`` answer ``500 InternalError`` without forwarding (S3 asks for a retry)
``error503`` answer ``503 SlowDown`` without forwarding (throttling)
``reset``    forward, then send half of the response (half of the body when it
             has one) and reset the connection (``SO_LINGER`` 0)
``drop``     forward (the upstream has acted), then close the connection
             without answering: the response is lost
``slow``     forward, then hold the response back for ``slow_seconds``
``denied``   answer ``403 AccessDenied`` without forwarding (not retried: for
             targeted tests, e.g. credentials that expire mid-upload)
========== =====================================================================

:class:`SeededFaults` picks faults from a hash of the seed and the request's
identity (method, path, the query's names and part number, and how often that
request was seen), so a run injects the same faults into the same requests
whatever the thread interleaving; :class:`FaultRules` faults chosen operations
for targeted tests. The proxy records every request as an
:class:`Event`; :func:`fault_endings` tells how each injected fault ended.
"""

from __future__ import annotations

import hashlib
import http.client
import socket
import socketserver
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

FAULT_KINDS = ("error500", "error503", "reset", "drop", "slow", "denied")
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "expect",
               "te", "trailer", "upgrade"}
_ERRORS = {"error500": (500, "Internal Server Error", "InternalError"),
           "error503": (503, "Service Unavailable", "SlowDown"),
           "denied": (403, "Forbidden", "AccessDenied")}


@dataclass(frozen=True)
class Request:
    """One HTTP request as the proxy read it."""

    method: str
    target: str  # path and query, as sent
    headers: tuple[tuple[str, str], ...]
    body: bytes

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    @property
    def query(self) -> dict[str, str]:
        return dict(parse_qsl(urlsplit(self.target).query, keep_blank_values=True))

    @property
    def operation(self) -> str:
        """The S3 operation this request is (path-style addressing)."""
        q, m = self.query, self.method
        if m == "PUT":
            return "UploadPart" if "partNumber" in q else "PutObject"
        if m == "POST":
            if "uploads" in q:
                return "CreateMultipartUpload"
            if "uploadId" in q:
                return "CompleteMultipartUpload"
            return "DeleteObjects" if "delete" in q else "Post"
        if m == "DELETE":
            return "AbortMultipartUpload" if "uploadId" in q else "DeleteObject"
        if m == "HEAD":
            return "HeadObject"
        if "uploads" in q:
            return "ListMultipartUploads"
        if "list-type" in q:
            return "ListObjectsV2"
        return "GetObject"

    @property
    def identity(self) -> str:
        """What stays the same when a client retries this request (not the upload id)."""
        q = self.query
        return f"{self.method} {self.path} {sorted(q)} {q.get('partNumber', '')}"


@dataclass(frozen=True)
class Event:
    """One request the proxy handled: its fault (or None) and the upstream's status."""

    n: int
    operation: str
    identity: str
    fault: str | None
    status: int | None  # None when the upstream was not asked


Policy = Callable[[Request, int], "str | None"]


class SeededFaults:
    """A policy that injects each fault kind into a share of the requests.

    Args:
        seed: any integer; the same seed faults the same requests.
        rates: fault kind -> probability (their sum at most 1).
        weights: S3 operation -> factor on every rate (default 1; 0 spares it),
            to aim the faults at the operations where they hurt.
    """

    def __init__(self, seed: int, rates: dict[str, float],
                 weights: dict[str, float] | None = None) -> None:
        self.seed, self.rates, self.weights = seed, rates, weights or {}
        unknown = set(rates) - set(FAULT_KINDS)
        if unknown or sum(rates.values()) * max([1.0, *self.weights.values()]) > 1:
            raise ValueError(f"bad fault rates {rates} (weights {weights})")

    def __call__(self, request: Request, seen: int) -> str | None:
        weight = self.weights.get(request.operation, 1.0)
        digest = hashlib.sha256(f"{self.seed}|{request.identity}|{seen}".encode()).digest()
        draw = int.from_bytes(digest[:8], "big") / 2 ** 64
        for kind in FAULT_KINDS:
            draw -= self.rates.get(kind, 0.0) * weight
            if draw < 0:
                return kind
        return None


class FaultRules:
    """A policy for targeted tests: ``{operation: (kind, times)}``.

    The first ``times`` requests of each named S3 operation get ``kind``
    (``times=None``: every one of them); all other requests pass.
    """

    def __init__(self, rules: dict[str, tuple[str, int | None]]) -> None:
        self.rules = rules
        self.hits: Counter[str] = Counter()
        self._lock = threading.Lock()

    def __call__(self, request: Request, seen: int) -> str | None:
        rule = self.rules.get(request.operation)
        if rule is None:
            return None
        kind, times = rule
        with self._lock:
            if times is not None and self.hits[request.operation] >= times:
                return None
            self.hits[request.operation] += 1
        return kind


class FaultProxy:
    """The proxy server; use it as a context manager. ``url`` is its endpoint.

    ``policy(request, seen)`` names the fault for a request (``seen``: how many
    requests with its identity came before) or returns None; it may be
    replaced while the proxy runs (None: no faults).
    """

    def __init__(self, upstream_url: str, policy: Policy | None = None,
                 slow_seconds: float = 0.3) -> None:
        parts = urlsplit(upstream_url)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.policy = policy
        self.slow_seconds = slow_seconds
        self.events: list[Event] = []
        self._seen: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.proxy = self
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name="fault-proxy")

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
        # Kept-alive client connections still have handler threads waiting on
        # them: end those too, so nothing of the proxy outlives the test.
        self._server.close_connections()

    def injected(self) -> Counter[str]:
        """How many faults of each kind were injected so far."""
        with self._lock:
            return Counter(e.fault for e in self.events if e.fault is not None)

    @contextmanager
    def paused(self) -> Iterator[None]:
        """No faults inside the block (for setup and final checks)."""
        policy, self.policy = self.policy, None
        try:
            yield
        finally:
            self.policy = policy

    def _choose(self, request: Request) -> str | None:
        with self._lock:
            seen = self._seen[request.identity]
            self._seen[request.identity] += 1
        policy = self.policy
        return policy(request, seen) if policy is not None else None

    def _record(self, request: Request, fault: str | None, status: int | None) -> None:
        with self._lock:
            self.events.append(Event(len(self.events), request.operation, request.identity,
                                     fault, status))

    def _forward(self, request: Request) -> tuple[int, str, list[tuple[str, str]], bytes]:
        conn = http.client.HTTPConnection(*self.upstream, timeout=120)
        try:
            headers = {k: v for k, v in request.headers if k.lower() not in _HOP_BY_HOP}
            if request.body or request.method in ("PUT", "POST"):
                headers["Content-Length"] = str(len(request.body))
            conn.request(request.method, request.target, body=request.body, headers=headers)
            resp = conn.getresponse()
            body = resp.read()
            return resp.status, resp.reason, resp.getheaders(), body
        finally:
            conn.close()


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    block_on_close = False   # close_connections ends the handlers instead
    allow_reuse_address = True
    proxy: FaultProxy

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._open: dict[socket.socket, threading.Thread] = {}
        self._open_lock = threading.Lock()

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open[request] = threading.current_thread()
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._open_lock:
                self._open.pop(request, None)

    def close_connections(self) -> None:
        """Shut every open client connection down and wait for its handler to end."""
        with self._open_lock:
            open_now = list(self._open.items())
        for sock, _thread in open_now:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass   # already closed by its handler
        for _sock, thread in open_now:
            thread.join(timeout=10)


class _Handler(socketserver.BaseRequestHandler):
    request: socket.socket
    server: _Server

    def handle(self) -> None:
        proxy = self.server.proxy
        rfile = self.request.makefile("rb")
        try:
            while True:
                request = _read_request(rfile, self.request)
                if request is None:
                    return
                if not self._serve(proxy, request):
                    return
        except (ConnectionError, TimeoutError, OSError):
            return
        finally:
            rfile.close()

    def _serve(self, proxy: FaultProxy, request: Request) -> bool:
        """Answer one request; False when the connection must end."""
        fault = proxy._choose(request)
        if fault in _ERRORS:
            proxy._record(request, fault, None)
            self.request.sendall(_error_response(*_ERRORS[fault]))
            return True
        try:
            status, reason, headers, body = proxy._forward(request)
        except (OSError, http.client.HTTPException):
            proxy._record(request, fault, None)
            self.request.sendall(_error_response(502, "Bad Gateway", "BadGateway"))
            return True
        proxy._record(request, fault, status)
        head, body = _response(request.method, status, reason, headers, body)
        if fault == "drop":
            self.request.shutdown(socket.SHUT_RDWR)
            return False
        if fault == "reset":
            cut = len(head) + len(body) // 2 if body else len(head) // 2
            self.request.sendall((head + body)[:cut])
            time.sleep(0.02)  # let what was sent arrive before the reset
            self.request.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.request.close()
            return False
        if fault == "slow":
            time.sleep(proxy.slow_seconds)
        self.request.sendall(head + body)
        return True


def _read_request(rfile: object, sock: socket.socket) -> Request | None:
    readline = rfile.readline  # type: ignore[attr-defined]
    line = readline(65537)
    while line in (b"\r\n", b"\n"):
        line = readline(65537)
    if not line:
        return None
    method, target, _version = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
    headers: list[tuple[str, str]] = []
    while True:
        raw = readline(65537)
        if raw in (b"\r\n", b"\n", b""):
            break
        name, _, value = raw.decode("latin-1").partition(":")
        headers.append((name.strip(), value.strip()))
    lower = {k.lower(): v for k, v in headers}
    if lower.get("expect", "").lower() == "100-continue":
        sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
    if "chunked" in lower.get("transfer-encoding", "").lower():
        body = _read_chunked(rfile)
    else:
        body = rfile.read(int(lower.get("content-length", "0")))  # type: ignore[attr-defined]
    return Request(method, target, tuple(headers), body)


def _read_chunked(rfile: object) -> bytes:
    out = bytearray()
    while True:
        size = int(rfile.readline().split(b";")[0].strip(), 16)  # type: ignore[attr-defined]
        if size == 0:
            while rfile.readline() not in (b"\r\n", b"\n", b""):  # type: ignore[attr-defined]
                pass  # trailers
            return bytes(out)
        out += rfile.read(size)  # type: ignore[attr-defined]
        rfile.readline()  # type: ignore[attr-defined]


def _response(method: str, status: int, reason: str, headers: list[tuple[str, str]],
              body: bytes) -> tuple[bytes, bytes]:
    """The response re-framed with a Content-Length (the upstream's may be chunked)."""
    no_body = method == "HEAD" or status in (204, 304) or status < 200
    kept = [(k, v) for k, v in headers if k.lower() not in _HOP_BY_HOP
            and (no_body or k.lower() != "content-length")]
    if not no_body:
        kept.append(("Content-Length", str(len(body))))
    lines = [f"HTTP/1.1 {status} {reason}"] + [f"{k}: {v}" for k, v in kept]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"), b"" if no_body else body


def _error_response(status: int, reason: str, code: str) -> bytes:
    body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
            f"<Message>injected by the fault proxy</Message><RequestId>fault</RequestId>"
            f"</Error>").encode()
    head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/xml\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    return head + body


def fault_endings(events: list[Event], by_operation: bool = False) -> dict[str, Counter[str]]:
    """How each injected fault ended, per fault kind (or per ``"<operation> <kind>"``).

    A fault ends with the next request of the same identity: ``retried ok``
    (2xx), ``retried into 412`` (a create-only write whose first try had
    succeeded), ``retried into <status>``; ``no try got through`` when no
    later request of that identity passed unfaulted (the client gave up).
    A slow response that arrived is ``delivered late``.
    """
    endings: dict[str, Counter[str]] = {}
    pending: dict[str, list[str]] = {}

    def group(event: Event) -> str:
        return f"{event.operation} {event.fault}" if by_operation else str(event.fault)

    for event in events:
        if event.fault == "slow":
            endings.setdefault(group(event), Counter())["delivered late"] += 1
        elif event.fault is not None:
            pending.setdefault(event.identity, []).append(group(event))
            continue
        faults = pending.pop(event.identity, [])
        status = event.status or 0
        ending = ("retried ok" if 200 <= status < 300 else
                  "retried into 412" if status == 412 else f"retried into {status}")
        for name in faults:
            endings.setdefault(name, Counter())[ending] += 1
    for faults in pending.values():
        for name in faults:
            endings.setdefault(name, Counter())["no try got through"] += 1
    return endings
