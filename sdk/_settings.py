"""Client configuration from ``CROWDCOMPUTE_*`` environment variables (pydantic-settings).

What a client needs to reach Temporal and the payload store; workers extend it
(``worker_app.settings.Settings``) with what only they use.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TypeVar

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["ENV_PREFIX", "ClientSettings", "SettingsError", "default_state_dir", "load_settings_of"]

ENV_PREFIX = "CROWDCOMPUTE_"

S = TypeVar("S", bound="ClientSettings")


class SettingsError(ValueError):
    """Invalid configuration; ``str()`` is one line naming the variable."""


def default_state_dir() -> Path:
    """``$XDG_DATA_HOME/crowdcompute``, else ``~/.local/share/crowdcompute``: never relative.

    Clients, workers and the dev stack of one machine started from different
    directories must find the same catalog and payloads.
    """
    data = os.environ.get("XDG_DATA_HOME")
    return (Path(data) if data else Path.home() / ".local" / "share") / "crowdcompute"


class ClientSettings(BaseSettings):
    """Temporal connection, task queue and payload store: what a client needs."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    temporal_address: str = "localhost:7233"
    namespace: str = "default"
    task_queue: str = "crowdcompute"
    state_dir: Path = Field(default_factory=lambda: default_state_dir())
    blob_url: str | None = None
    s3_endpoint_url: str | None = None
    temporal_api_key: str | None = None
    temporal_tls_cert: Path | None = None
    temporal_tls_key: Path | None = None

    @field_validator("temporal_address")
    @classmethod
    def _address(cls, v: str) -> str:
        host, sep, port = v.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("expected host:port, e.g. localhost:7233")
        return v

    @field_validator("namespace", "task_queue")
    @classmethod
    def _non_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        return v

    @field_validator("state_dir")
    @classmethod
    def _absolute(cls, v: Path) -> Path:
        # Client and workers on one machine share it; never depend on their cwd.
        return v.expanduser().resolve()

    @field_validator("blob_url")
    @classmethod
    def _blob_url(cls, v: str | None) -> str | None:
        if v is not None and not (v.startswith("file://") or v.startswith("s3://")):
            raise ValueError("expected file:///path or s3://bucket/prefix")
        if v is not None and v.startswith("s3://") and not v[5:].split("/")[0]:
            raise ValueError("s3:// URL needs a bucket name")
        return v

    @model_validator(mode="after")
    def _client_defaults(self: S) -> S:
        if self.blob_url is None:
            self.blob_url = (self.state_dir / "blobs").as_uri()
        if (self.temporal_tls_cert is None) != (self.temporal_tls_key is None):
            raise ValueError("set both CROWDCOMPUTE_TEMPORAL_TLS_CERT and _TLS_KEY, or neither")
        return self

    @property
    def payload_dir(self) -> Path:
        """Where large Temporal payloads live on the embedded stack."""
        return self.state_dir / "payloads"

    def child_env(self) -> dict[str, str]:
        """These settings as environment variables, for child processes."""
        env: dict[str, str] = {}
        for name, value in self.model_dump().items():
            if value is not None:
                env[ENV_PREFIX + name.upper()] = str(value)
        return env


def load_settings_of(cls: type[S], **overrides: object) -> S:
    """``cls`` from the environment and ``overrides``; :class:`SettingsError` on bad values."""
    try:
        return cls(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise SettingsError(_one_line(exc)) from None


def _one_line(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"])
        name = ENV_PREFIX + field.upper() if field else "settings"
        value = err.get("input")
        shown = f" (got {value!r})" if field and not isinstance(value, dict) else ""
        parts.append(f"{name}: {err['msg']}{shown}")
    return "invalid configuration: " + "; ".join(parts)
