"""Configuration of workers, the API and the CLI from ``CROWDCOMPUTE_*`` variables.

``Settings`` extends the SDK's client settings (Temporal, task queue, payload
store) with what only the server side uses: the catalog, checkpoint tuning, the
API's tokens, task processes.
"""

from __future__ import annotations

import os

from pydantic import field_validator, model_validator

from sdk._settings import (
    ENV_PREFIX,
    ClientSettings,
    SettingsError,
    default_state_dir,
    load_settings_of,
)

__all__ = ["ENV_PREFIX", "Settings", "SettingsError", "default_state_dir", "load_settings"]


class Settings(ClientSettings):
    """Every setting of workers, the API, the CLI and the SDK's defaults."""

    database_url: str | None = None
    db_size_limit: int = 1048576
    max_deltas_per_base: int = 50
    api_token: str | None = None
    api_read_token: str | None = None
    #: proxies (addresses or networks, comma-separated) whose X-Forwarded-For names the
    #: API's client; None: uvicorn's FORWARDED_ALLOW_IPS, else loopback only
    api_trusted_proxies: str | None = None
    shutdown_grace_seconds: float = 25.0
    metrics_port: int | None = None
    checkpoint_memory_budget: int | None = None
    heartbeat_interval: float = 2.0
    encode_threads: int | None = None
    max_concurrent_tasks: int | None = None
    task_stop_grace_seconds: float = 3.0
    task_memory_limit: int | None = None

    @field_validator(
        "db_size_limit", "max_deltas_per_base", "heartbeat_interval", "shutdown_grace_seconds",
        "task_stop_grace_seconds",
    )
    @classmethod
    def _positive(cls, v: float) -> float:
        if v <= 0:
            raise ValueError("must be > 0")
        return v

    @field_validator("encode_threads")
    @classmethod
    def _threads(cls, v: int | None) -> int | None:
        if v is not None and v < 1:
            raise ValueError("must be >= 1")
        return v

    @field_validator("max_concurrent_tasks", "task_memory_limit")
    @classmethod
    def _at_least_one(cls, v: int | None) -> int | None:
        if v is not None and v < 1:
            raise ValueError("must be >= 1")
        return v

    @property
    def max_tasks(self) -> int:
        """Tasks a worker runs at once (one process each): the setting, else the cores."""
        return self.max_concurrent_tasks or os.cpu_count() or 1

    @property
    def checkpoint_encode_threads(self) -> int:
        """Encoder threads of one checkpoint save: the setting, else all cores but one."""
        return self.encode_threads or max(1, (os.cpu_count() or 1) - 1)

    @field_validator("metrics_port")
    @classmethod
    def _port(cls, v: int | None) -> int | None:
        if v is not None and not 0 < v < 65536:
            raise ValueError("must be a TCP port (1-65535)")
        return v

    @model_validator(mode="after")
    def _catalog_in_state_dir(self) -> Settings:
        if self.database_url is None:
            self.database_url = f"sqlite:///{self.state_dir / 'crowdcompute.db'}"
        return self


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment; raise :class:`SettingsError` on bad values."""
    return load_settings_of(Settings, **overrides)

