"""Pin the public surface of the monitoring modules."""

from __future__ import annotations

import worker_app.api
import worker_app.metrics
import worker_app.status_view


def test_api_exports() -> None:
    assert worker_app.api.__all__ == ["build_server", "create_app", "serve"]


def test_status_view_exports() -> None:
    assert set(worker_app.status_view.__all__) == {
        "fetch_status", "format_age", "format_bytes", "render_status", "show_status",
        "status_renderable", "watch_status",
    }


def test_metrics_exports() -> None:
    assert set(worker_app.metrics.__all__) == {
        "REGISTRY", "SKIP_REASONS", "TIERS", "MetricsServer", "PrometheusObserver",
        "observe_capture_pause",
        "observe_checkpoint", "observe_fenced", "observe_restore", "observe_skipped",
        "render_metrics", "start_metrics_server",
    }
