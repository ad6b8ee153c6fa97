"""The Prometheus endpoint: our checkpoint metrics and the Temporal SDK's own."""

from __future__ import annotations

import urllib.request
from pathlib import Path

from _servers import free_port
from temporalio.client import Client

from worker_app import metrics

NAMES = [
    "crowdcompute_checkpoint_duration_seconds",
    "crowdcompute_checkpoint_capture_pause_seconds",
    "crowdcompute_checkpoint_bytes_written_total",
    "crowdcompute_checkpoint_commit_lag_seconds",
    "crowdcompute_checkpoint_restores_total",
    "crowdcompute_checkpoint_fenced_writes_total",
    "crowdcompute_checkpoints_skipped_total",
    "crowdcompute_checkpoint_storage_full_commits_total",
]


def value(name: str, **labels: str) -> float:
    v = metrics.REGISTRY.get_sample_value(name, labels)
    return 0.0 if v is None else v


SERIES = {  # key: (sample name, labels), expected increase
    "db": (("crowdcompute_checkpoint_bytes_written_total", {"tier": "sql"}), 100),
    "obj": (("crowdcompute_checkpoint_bytes_written_total", {"tier": "object"}), 5000),
    "n": (("crowdcompute_checkpoint_duration_seconds_count", {"kind": "base"}), 1),
    "lag": (("crowdcompute_checkpoint_commit_lag_seconds_count", {}), 1),
    "pause": (("crowdcompute_checkpoint_capture_pause_seconds_count", {}), 2),
    "fenced": (("crowdcompute_checkpoint_fenced_writes_total", {}), 1),
    "capture": (("crowdcompute_checkpoints_skipped_total", {"reason": "capture_error"}), 1),
    "other": (("crowdcompute_checkpoints_skipped_total", {"reason": "other"}), 1),
    "restored": (("crowdcompute_checkpoint_restores_total", {"outcome": "restored"}), 1),
    "full": (("crowdcompute_checkpoint_storage_full_commits_total", {}), 1),
}


def test_observe_functions_count() -> None:
    before = {k: value(name, **labels) for k, ((name, labels), _) in SERIES.items()}
    metrics.observe_checkpoint(duration_s=0.2, kind="base", commit_lag_s=0.1, pause_s=0.001,
                               bytes_by_tier={"sql": 100, "object": 5000, "bogus": 7})
    metrics.observe_capture_pause(0.002)
    metrics.observe_fenced()
    metrics.observe_skipped("capture_error")
    metrics.observe_skipped("a reason nobody planned for")
    metrics.observe_restore("restored")
    metrics.observe_checkpoint(duration_s=0.1, kind="delta", storage_full=True)
    after = {k: value(name, **labels) for k, ((name, labels), _) in SERIES.items()}
    assert {k: after[k] - before[k] for k in SERIES} == {k: inc for k, (_, inc) in SERIES.items()}


def test_observe_never_raises() -> None:
    metrics.observe_checkpoint(duration_s="not a number")  # type: ignore[arg-type]
    metrics.observe_restore(None)  # type: ignore[arg-type]


async def test_endpoint_serves_ours_and_temporals(temporal_address: str) -> None:
    server = metrics.start_metrics_server(0, addr="127.0.0.1", temporal_port=free_port())
    try:
        client = await Client.connect(temporal_address, runtime=server.runtime)
        await client.count_workflows()  # some RPC traffic for the SDK's own metrics
        with urllib.request.urlopen(server.url, timeout=10) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/plain")
            body = resp.read().decode()
    finally:
        server.close()
    for name in NAMES:
        assert f"# TYPE {name.removesuffix('_total')}" in body, name
    assert 'crowdcompute_checkpoints_skipped_total{reason="storage_error"}' in body
    assert 'crowdcompute_checkpoint_bytes_written_total{tier="object"}' in body
    temporal_lines = [ln for ln in body.splitlines() if ln.startswith("temporal_")]
    assert temporal_lines, "no Temporal SDK metrics in the scrape"


def test_observer_records_a_real_commit(tmp_path: Path) -> None:
    from checkpoint import CheckpointManager, ManagerConfig

    from .conftest import write_checkpoints

    m = CheckpointManager.from_urls(f"sqlite:///{tmp_path}/c.db", (tmp_path / "b").as_uri(),
                                    config=ManagerConfig(db_size_limit=4096))
    try:
        commits = write_checkpoints(m, "metrics-job", 0, [10.0, 20.0])
    finally:
        m.close()
    expected = {"sql": 0, "object": 0}
    for commit in commits:
        for part in commit.parts:
            expected[part.tier] += part.size
    assert expected["sql"] > 0 and expected["object"] > 0

    def written() -> dict[str, float]:
        return {t: value("crowdcompute_checkpoint_bytes_written_total", tier=t) for t in expected}

    before = written()
    base_before = value("crowdcompute_checkpoint_duration_seconds_count", kind="base")
    restores = value("crowdcompute_checkpoint_restores_total", outcome="truncated")
    observer = metrics.PrometheusObserver()
    for commit in commits:
        observer.committed(commit, duration_seconds=0.01, lag_seconds=0.02)
    observer.restored(truncated=True)
    after = written()
    assert {t: after[t] - before[t] for t in expected} == expected
    bases = sum(1 for c in commits if c.kind == "base")
    base_after = value("crowdcompute_checkpoint_duration_seconds_count", kind="base")
    assert base_after == base_before + bases
    assert value("crowdcompute_checkpoint_restores_total", outcome="truncated") == restores + 1
