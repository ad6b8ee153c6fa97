"""Settings: names, defaults, validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker_app.settings import Settings, SettingsError, load_settings


def test_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CROWDCOMPUTE_STATE_DIR", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    s = Settings()
    state = tmp_path / "data" / "crowdcompute"
    assert s.temporal_address == "localhost:7233"
    assert s.task_queue == "crowdcompute"
    assert s.state_dir == state
    assert s.database_url == f"sqlite:///{state / 'crowdcompute.db'}"
    assert s.blob_url == (state / "blobs").as_uri()
    assert s.db_size_limit == 1048576
    assert s.max_deltas_per_base == 50
    assert s.shutdown_grace_seconds == 25.0
    assert s.heartbeat_interval == 2.0


def test_encode_threads_leave_the_task_a_core(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from worker_app.worker import open_manager

    monkeypatch.setattr("os.cpu_count", lambda: 4)
    assert Settings().checkpoint_encode_threads == 3
    monkeypatch.setattr("os.cpu_count", lambda: 1)
    assert Settings().checkpoint_encode_threads == 1
    monkeypatch.setenv("CROWDCOMPUTE_ENCODE_THREADS", "2")
    settings = load_settings(state_dir=tmp_path)
    assert settings.checkpoint_encode_threads == 2
    manager = open_manager(settings)
    try:
        assert manager.config.encode_threads == 2
    finally:
        manager.close()


def test_env_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CROWDCOMPUTE_BLOB_URL", "s3://bucket/prefix")
    monkeypatch.setenv("CROWDCOMPUTE_METRICS_PORT", "9100")
    s = load_settings()
    assert s.blob_url == "s3://bucket/prefix"
    assert s.metrics_port == 9100


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("CROWDCOMPUTE_TEMPORAL_ADDRESS", "nohostport"),
        ("CROWDCOMPUTE_BLOB_URL", "ftp://x"),
        ("CROWDCOMPUTE_DB_SIZE_LIMIT", "-1"),
        ("CROWDCOMPUTE_HEARTBEAT_INTERVAL", "0"),
        ("CROWDCOMPUTE_ENCODE_THREADS", "0"),
    ],
)
def test_invalid_value_one_line(monkeypatch: pytest.MonkeyPatch, var: str, value: str) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert var in str(info.value)
    assert "\n" not in str(info.value)
