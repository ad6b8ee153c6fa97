"""A worker process with ``CROWDCOMPUTE_METRICS_PORT`` serves checkpoint metrics and
the Temporal SDK's own metrics on one Prometheus endpoint."""

from __future__ import annotations

import re
import urllib.request
from pathlib import Path

import ckpt_tasks
from _helpers import wait_for
from _servers import can_bind, free_port

import sdk
from worker_app.settings import Settings


def metric(text: str, name: str) -> float:
    values = [float(m.group(1)) for m in re.finditer(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M)]
    return sum(values)


def two_free_ports() -> int:
    """A free port whose successor is free too (ours and the Temporal runtime's)."""
    while (port := free_port()) >= 65535 or not can_bind(port + 1):
        pass
    return port


async def test_worker_exports_checkpoint_and_temporal_metrics(
        settings: Settings, conn: sdk.Connection, worker_process, tmp_path: Path) -> None:
    port = two_free_ports()
    worker_process(CROWDCOMPUTE_METRICS_PORT=str(port))
    cfg = {"seed": 5, "steps": 30, "step_seconds": 0.05, "log": str(tmp_path / "steps.log")}
    await sdk.map(ckpt_tasks.train_numpy, [cfg], checkpoint_interval=0.3)

    def scrape() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            return r.read().decode()

    await wait_for(lambda: metric(scrape(), "crowdcompute_checkpoint_duration_seconds_count") > 0)
    text = scrape()
    assert metric(text, "crowdcompute_checkpoint_bytes_written_total") > 0
    assert metric(text, "crowdcompute_checkpoint_capture_pause_seconds_count") > 0
    assert re.search(r"^temporal_\w+", text, re.M)  # the SDK runtime's own metrics
