"""Prometheus metrics for checkpointing, plus the Temporal SDK runtime's own.

The checkpoint code reports through the small ``observe_*`` functions below;
they are cheap (a few counter increments) and never raise, so a metrics problem
can not break a task. ``start_metrics_server(port)`` serves everything on
``http://HOST:port/metrics``:

* our metrics (``crowdcompute_*``) and the process collector, and
* when ``temporal_port`` is given, the Temporal SDK runtime's metrics
  (``temporal_*``: polls, activity latencies, sticky cache, ...). Temporal's Rust
  core exports them with its own Prometheus server on ``temporal_port``
  (loopback); our endpoint appends that text, so one scrape target sees both.
  Pass the returned ``MetricsServer.runtime`` to ``Client.connect(runtime=...)``
  (it is also installed as the default runtime when none exists yet).
"""

from __future__ import annotations

import logging
import threading
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    generate_latest,
)

__all__ = [
    "REGISTRY",
    "SKIP_REASONS",
    "TIERS",
    "MetricsServer",
    "PrometheusObserver",
    "observe_capture_pause",
    "observe_checkpoint",
    "observe_fenced",
    "observe_restore",
    "observe_skipped",
    "render_metrics",
    "start_metrics_server",
]

log = logging.getLogger(__name__)

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)

TIERS = ("sql", "object")
"""Where a blob was written: the catalog's blob table or the object store (S3 / directory)."""

SKIP_REASONS = (
    "capture_error",  # e.g. an unpicklable leaf (spec edge case 1)
    "memory_budget",  # state larger than the capture budget (edge case 10)
    "out_of_memory",
    "storage_error",  # store or catalog unavailable; tried again next interval
    "storage_full",  # no space left in the store or the catalog; deltas go on while they fit
    "coalesced",  # due while the previous checkpoint was still persisting (edge case 9)
    "stale_capture",  # a tensor written past its version counter; captured again at the next call
    "error",
    "other",
)
"""Why a due checkpoint was not written; any other reason is counted as ``other``."""

RESTORE_OUTCOMES = ("restored", "truncated", "stale", "empty", "failed")

_SECONDS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

CHECKPOINT_DURATION = Histogram(
    "crowdcompute_checkpoint_duration_seconds",
    "Wall time of one checkpoint from capture start to committed row.",
    ["kind"],
    buckets=_SECONDS,
    registry=REGISTRY,
)
CAPTURE_PAUSE = Histogram(
    "crowdcompute_checkpoint_capture_pause_seconds",
    "Time the task was blocked while its state was copied (capture).",
    buckets=(0.0001, 0.0005, *_SECONDS),
    registry=REGISTRY,
)
BYTES_WRITTEN = Counter(
    "crowdcompute_checkpoint_bytes_written",
    "Compressed checkpoint bytes written, by storage tier.",
    ["tier"],
    registry=REGISTRY,
)
COMMIT_LAG = Histogram(
    "crowdcompute_checkpoint_commit_lag_seconds",
    "Time from the end of capture until the manifest row committed.",
    buckets=_SECONDS,
    registry=REGISTRY,
)
RESTORES = Counter(
    "crowdcompute_checkpoint_restores",
    "Restores attempted at task start, by outcome.",
    ["outcome"],
    registry=REGISTRY,
)
FENCED_WRITES = Counter(
    "crowdcompute_checkpoint_fenced_writes",
    "Commits rejected because a newer attempt owns the task (zombie writers).",
    registry=REGISTRY,
)
SKIPPED = Counter(
    "crowdcompute_checkpoints_skipped",
    "Due checkpoints that were not written, by reason.",
    ["reason"],
    registry=REGISTRY,
)
STORAGE_FULL_COMMITS = Counter(
    "crowdcompute_checkpoint_storage_full_commits",
    "Checkpoints committed as deltas while storage had no room for a new base "
    "(the chain grows past its compaction limits until space returns).",
    registry=REGISTRY,
)

# Pre-create the labelled children so every series is visible (as 0) from the
# first scrape; dashboards and alerts then never see a metric "appear".
for _tier in TIERS:
    BYTES_WRITTEN.labels(tier=_tier)
for _reason in SKIP_REASONS:
    SKIPPED.labels(reason=_reason)
for _outcome in RESTORE_OUTCOMES:
    RESTORES.labels(outcome=_outcome)
for _kind in ("base", "delta"):
    CHECKPOINT_DURATION.labels(kind=_kind)


def _safe(fn: Any) -> Any:
    """Metrics must never break a task: log and swallow any error."""

    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            fn(*args, **kwargs)
        except Exception:  # noqa: BLE001 - deliberately broad, see docstring
            log.debug("metrics: %s failed", fn.__name__, exc_info=True)

    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper


@_safe
def observe_checkpoint(
    *,
    duration_s: float,
    kind: str = "delta",
    bytes_by_tier: Mapping[str, int] | None = None,
    commit_lag_s: float | None = None,
    pause_s: float | None = None,
    storage_full: bool = False,
) -> None:
    """Record one committed checkpoint.

    Args:
        duration_s: capture start → commit, in seconds.
        kind: ``"base"`` or ``"delta"``.
        bytes_by_tier: compressed bytes written per tier (``"sql"``,
            ``"object"``, the manifest's names); other keys are ignored.
        commit_lag_s: end of capture → commit, in seconds.
        pause_s: capture pause, if not already reported by ``observe_capture_pause``.
        storage_full: it was committed while storage had no room for a new base.
    """
    CHECKPOINT_DURATION.labels(kind="base" if kind == "base" else "delta").observe(duration_s)
    for tier, nbytes in (bytes_by_tier or {}).items():
        if tier in TIERS and nbytes > 0:
            BYTES_WRITTEN.labels(tier=tier).inc(nbytes)
    if commit_lag_s is not None:
        COMMIT_LAG.observe(max(0.0, commit_lag_s))
    if pause_s is not None:
        CAPTURE_PAUSE.observe(pause_s)
    if storage_full:
        STORAGE_FULL_COMMITS.inc()


@_safe
def observe_capture_pause(seconds: float) -> None:
    """Record how long a capture blocked the task."""
    CAPTURE_PAUSE.observe(seconds)


@_safe
def observe_restore(outcome: str = "restored") -> None:
    """Count a restore: restored, truncated (prefix of a broken chain), stale, empty, failed."""
    RESTORES.labels(outcome=outcome if outcome in RESTORE_OUTCOMES else "failed").inc()


@_safe
def observe_fenced() -> None:
    """Count a commit rejected by the fencing epoch."""
    FENCED_WRITES.inc()


@_safe
def observe_skipped(reason: str) -> None:
    """Count a due checkpoint that was skipped (see ``SKIP_REASONS``)."""
    SKIPPED.labels(reason=reason if reason in SKIP_REASONS else "other").inc()


class PrometheusObserver:
    """The activities' ``CheckpointObserver``, recording into these metrics.

    Pass an instance to ``activities.checkpointing.CheckpointService(observer=...)``.
    """

    def captured(self, pause_seconds: float) -> None:
        observe_capture_pause(pause_seconds)

    def committed(self, info: Any, duration_seconds: float, lag_seconds: float) -> None:
        """``info`` is a ``checkpoint.CommitInfo``."""
        by_tier: dict[str, int] = {}
        for part in getattr(info, "parts", ()):
            by_tier[part.tier] = by_tier.get(part.tier, 0) + int(part.size)
        observe_checkpoint(duration_s=duration_seconds, kind=getattr(info, "kind", "delta"),
                           bytes_by_tier=by_tier, commit_lag_s=lag_seconds,
                           storage_full=bool(getattr(info, "storage_full", False)))

    def skipped(self, reason: str) -> None:
        observe_skipped(reason)

    def fenced(self) -> None:
        observe_fenced()

    def restored(self, truncated: bool) -> None:
        observe_restore("truncated" if truncated else "restored")


def render_metrics(temporal_url: str | None = None) -> bytes:
    """The exposition text: our registry, then the Temporal runtime's (if reachable)."""
    body = generate_latest(REGISTRY)
    if temporal_url:
        try:
            with urllib.request.urlopen(temporal_url, timeout=2) as resp:
                body += resp.read()
        except OSError as exc:
            log.debug("metrics: Temporal runtime metrics unavailable: %s", exc)
    return body


@dataclass
class MetricsServer:
    """A running metrics endpoint; ``close()`` stops it."""

    port: int
    temporal_port: int | None
    runtime: Any  # temporalio.runtime.Runtime | None
    _server: ThreadingHTTPServer

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/metrics"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _temporal_runtime(port: int) -> Any:
    from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

    runtime = Runtime(
        telemetry=TelemetryConfig(
            metrics=PrometheusConfig(bind_address=f"127.0.0.1:{port}", durations_as_seconds=True)
        )
    )
    try:
        Runtime.set_default(runtime, error_if_already_set=True)
    except RuntimeError:
        log.info("metrics: a Temporal runtime is already the default; "
                 "pass MetricsServer.runtime to Client.connect(runtime=...)")
    return runtime


def start_metrics_server(
    port: int, *, addr: str = "0.0.0.0", temporal_port: int | None = None
) -> MetricsServer:
    """Serve ``/metrics`` on ``addr:port`` from a daemon thread.

    Args:
        port: our endpoint (0 picks a free port; see ``MetricsServer.port``).
        addr: interface to bind.
        temporal_port: if given, start a Temporal runtime exporting Prometheus
            metrics on ``127.0.0.1:temporal_port`` and merge them into our
            endpoint. Call this before the worker's Temporal client connects.
    """
    runtime = _temporal_runtime(temporal_port) if temporal_port else None
    temporal_url = f"http://127.0.0.1:{temporal_port}/metrics" if temporal_port else None

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server API
            if self.path.split("?")[0] not in ("/metrics", "/"):
                self.send_error(404)
                return
            body = render_metrics(temporal_url)
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE_LATEST)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            return

    server = ThreadingHTTPServer((addr, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return MetricsServer(server.server_address[1], temporal_port, runtime, server)
