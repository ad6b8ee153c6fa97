"""``connect()``: the Temporal client that ``map`` / ``submit`` use by default."""

from __future__ import annotations

from dataclasses import dataclass

from temporalio.client import Client

from worker_app.settings import Settings, load_settings
from worker_app.temporal import connect_client


@dataclass
class Connection:
    """A connected client plus the settings (task queue, …) jobs are submitted with."""

    client: Client
    settings: Settings


_default: Connection | None = None


async def connect(
    target: str | None = None,
    port: int | None = None,
    *,
    namespace: str | None = None,
    task_queue: str | None = None,
    settings: Settings | None = None,
) -> Connection:
    """Connect to Temporal and make it the default for ``map`` / ``submit``.

    Args:
        target: ``"host:port"`` or a host name (then give ``port``); defaults to
            ``CROWDCOMPUTE_TEMPORAL_ADDRESS``.
        port: port when ``target`` is a bare host.
        namespace: Temporal namespace (default ``CROWDCOMPUTE_NAMESPACE``).
        task_queue: task queue the workers poll (default ``CROWDCOMPUTE_TASK_QUEUE``).
        settings: base settings; the environment when omitted.

    Raises:
        TemporalUnreachable: nothing answered within a few seconds.
    """
    global _default
    overrides: dict[str, object] = {}
    if target is not None:
        overrides["temporal_address"] = f"{target}:{port}" if port is not None else target
    elif port is not None:
        overrides["temporal_address"] = f"localhost:{port}"
    if namespace is not None:
        overrides["namespace"] = namespace
    if task_queue is not None:
        overrides["task_queue"] = task_queue
    base = settings or load_settings()
    merged = load_settings(**{**base.model_dump(), **overrides}) if overrides else base
    conn = Connection(await connect_client(merged), merged)
    _default = conn
    return conn


async def default_connection() -> Connection:
    """The last ``connect()`` result, connecting from the environment if none."""
    return _default or await connect()
