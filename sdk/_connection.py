"""``connect()``: the Temporal client that ``map`` / ``submit`` use by default."""

from __future__ import annotations

import atexit
import gc
from dataclasses import dataclass

from temporalio.client import Client

from sdk._settings import ClientSettings, load_settings_of
from sdk._temporal import connect_client


@dataclass
class Connection:
    """A connected client plus the settings (task queue, …) jobs are submitted with."""

    client: Client
    settings: ClientSettings


_default: Connection | None = None
_release_registered = False


def _release_temporal() -> None:
    """At interpreter exit, drop the Temporal client and runtime while Python is whole.

    The Temporal bridge runs native (Rust/tokio) threads that call back into
    Python when the objects they serve are dropped. Left to interpreter
    finalization, that drop can race the teardown of the thread states and
    abort a script that already finished ("Fatal Python error:
    PyGILState_Release", exit 134, sometimes a segfault; temporalio/sdk-python
    issue 300). atexit handlers run before that teardown: dropping the default
    connection and the default runtime here lets those threads finish first.
    Nothing else changes: the script keeps its exit status and its output.
    """
    global _default
    _default = None
    try:
        from temporalio import runtime

        runtime._runtime_ref._default_runtime = None
    except (ImportError, AttributeError):  # a future temporalio without the private ref
        pass
    gc.collect()


def _register_release() -> None:
    global _release_registered
    if not _release_registered:
        atexit.register(_release_temporal)
        _release_registered = True


async def connect(
    target: str | None = None,
    port: int | None = None,
    *,
    namespace: str | None = None,
    task_queue: str | None = None,
    settings: ClientSettings | None = None,
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
    base = settings or load_settings_of(ClientSettings)
    merged = load_settings_of(type(base), **{**base.model_dump(), **overrides}) if overrides else base
    conn = Connection(await connect_client(merged), merged)
    _register_release()
    _default = conn
    return conn


async def default_connection() -> Connection:
    """The last ``connect()`` result, connecting from the environment if none."""
    return _default or await connect()
