"""Connecting to Temporal with our data converter, TLS / API key and a clear error."""

from __future__ import annotations

import asyncio

from temporalio.client import Client
from temporalio.service import TLSConfig

from sdk._payloads import build_data_converter
from sdk._settings import ClientSettings

CONNECT_TIMEOUT = 5.0


class TemporalUnreachable(ConnectionError):
    """No Temporal server answered at the configured address."""


def _tls(settings: ClientSettings) -> TLSConfig | bool:
    if settings.temporal_tls_cert and settings.temporal_tls_key:
        return TLSConfig(
            client_cert=settings.temporal_tls_cert.read_bytes(),
            client_private_key=settings.temporal_tls_key.read_bytes(),
        )
    return settings.temporal_api_key is not None


async def connect_client(settings: ClientSettings, timeout: float = CONNECT_TIMEOUT) -> Client:
    """A client for ``settings``; :class:`TemporalUnreachable` within ``timeout`` s."""
    try:
        return await asyncio.wait_for(
            Client.connect(
                settings.temporal_address,
                namespace=settings.namespace,
                data_converter=build_data_converter(settings),
                api_key=settings.temporal_api_key,
                tls=_tls(settings),
            ),
            timeout,
        )
    except (TimeoutError, RuntimeError, OSError) as exc:
        raise TemporalUnreachable(
            f"cannot reach Temporal at {settings.temporal_address} "
            f"(namespace {settings.namespace!r}): {exc or 'timed out'}. "
            "Start a local one with `crowdcompute dev`, or set CROWDCOMPUTE_TEMPORAL_ADDRESS."
        ) from None
