"""The FastAPI application: ``create_app(settings)`` and ``serve(settings, port)``.

Every error is JSON: ``{"error": ..., "detail": ...}`` (422 adds ``errors``);
OpenAPI at ``/openapi.json``, interactive docs at ``/docs``, liveness at
``/healthz`` (these three are always open; see ``auth`` for the tokens of the
rest). Request validation never echoes the offending input back; oversized
request headers get 431 (``_limits``). The server binds 127.0.0.1 unless told
otherwise.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from temporalio.client import Client

from checkpoint.errors import CheckpointError

from ._limits import MAX_HEADER_BYTES, HeaderLimitMiddleware, HeaderLimitProtocol
from ._temporal import ClientFactory, JobStatusSource
from .auth import FailureLimiter
from .routes import router
from .schemas import Health

__all__ = ["DEFAULT_HOST", "build_server", "create_app", "serve"]

DEFAULT_HOST = "127.0.0.1"

log = logging.getLogger(__name__)


def _error_name(code: int) -> str:
    try:
        return HTTPStatus(code).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        return "error"


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    body: dict[str, Any] = {"error": _error_name(exc.status_code), "detail": str(exc.detail)}
    if exc.status_code == 422:
        body = {"error": "invalid_request", "detail": str(exc.detail), "errors": []}
    return JSONResponse(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = [
        {
            "loc": [str(p) for p in e.get("loc", ())],
            "msg": str(e.get("msg", "")),
            "type": str(e.get("type", "")),
        }
        for e in exc.errors()
    ]
    where = ", ".join(".".join(e["loc"]) for e in errors) or "request"
    body = {"error": "invalid_request", "detail": f"invalid {where}", "errors": errors}
    return JSONResponse(body, status_code=422)


async def _backend_error(request: Request, exc: Exception) -> JSONResponse:
    # the catalog or blob store failed: not the caller's fault, and not a crash
    log.warning("monitoring API: %s %s failed: %s", request.method, request.url.path[:200], exc)
    body = {"error": "service_unavailable", "detail": "the checkpoint catalog is unavailable"}
    return JSONResponse(body, status_code=503)


def _default_manager(settings: Any) -> Any:
    from worker_app.worker import open_manager

    return open_manager(settings)


def _default_client_factory(settings: Any) -> ClientFactory:
    async def connect() -> Client:
        from sdk._temporal import connect_client  # TLS, API key, our data converter

        return await connect_client(settings)

    return connect


def create_app(
    settings: Any,
    *,
    manager: Any = None,
    temporal_client_factory: ClientFactory | None = None,
) -> FastAPI:
    """Build the monitoring API.

    Args:
        settings: ``worker_app.settings.Settings`` (reads ``api_token``,
            ``api_read_token``, ``database_url``, ``blob_url``, ``s3_endpoint_url``,
            ``temporal_address``, ``namespace`` and the Temporal TLS / API key).
        manager: a ``checkpoint.CheckpointManager``; built from settings if None.
        temporal_client_factory: ``async () -> temporalio.client.Client``;
            defaults to connecting to ``settings.temporal_address`` on first use.
    """
    from ._queries import CatalogReader

    manager = manager if manager is not None else _default_manager(settings)
    app = FastAPI(
        title="CrowdCompute checkpoint monitoring",
        version="1",
        description="Checkpoint progress, details and storage of CrowdCompute jobs and tasks.",
    )
    app.state.settings = settings
    app.state.manager = manager
    app.state.reader = CatalogReader(manager)
    app.state.job_status = JobStatusSource(
        temporal_client_factory or _default_client_factory(settings)
    )
    app.state.object_store = getattr(settings, "blob_url", None)
    app.state.auth_limiter = FailureLimiter()
    app.add_middleware(HeaderLimitMiddleware)
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(CheckpointError, _backend_error)
    app.include_router(router)

    @app.get("/healthz", response_model=Health, tags=["health"], summary="Liveness")
    async def healthz() -> Health:
        return Health()

    return app


def build_server(
    settings: Any, port: int = 8000, *, host: str = DEFAULT_HOST, app: FastAPI | None = None
) -> Any:
    """A ``uvicorn.Server`` for the API: ``.run()`` blocks, ``await .serve()`` runs in a
    loop (``crowdcompute dev``), ``.should_exit = True`` stops it.

    Behind a proxy (the AWS load balancer) ``settings.api_trusted_proxies`` names it,
    so that a request's client (which the failed-token limit counts by) is the
    address the proxy appended to ``X-Forwarded-For``, not the proxy's own.
    """
    import uvicorn

    config = uvicorn.Config(
        app or create_app(settings),
        host=host,
        port=port,
        log_level="info",
        http=HeaderLimitProtocol,
        h11_max_incomplete_event_size=MAX_HEADER_BYTES,
        forwarded_allow_ips=getattr(settings, "api_trusted_proxies", None),
    )
    return uvicorn.Server(config)


def serve(settings: Any, port: int = 8000, *, host: str = DEFAULT_HOST) -> None:
    """Run the API until interrupted (``crowdcompute api --host --port``)."""
    build_server(settings, port, host=host).run()
