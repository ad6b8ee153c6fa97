"""Bearer tokens of the API: admin (``CROWDCOMPUTE_API_TOKEN``) and read
(``CROWDCOMPUTE_API_READ_TOKEN``), with failed attempts rate-limited per client.

Admin: no token configured → the admin endpoints are disabled (403, and the body
says so); a missing or wrong token → 401 with ``WWW-Authenticate: Bearer``.

Read: no read token configured → the GET endpoints are open; otherwise they need
``Authorization: Bearer`` with the read token or the admin token (401 if not).

Rate limit: a client (its address as the server sees it) that presented
``MAX_FAILURES`` wrong tokens within ``FAILURE_WINDOW`` seconds gets 429 with
``Retry-After`` on every authenticated endpoint until the oldest of those
failures leaves the window; its token is not even compared meanwhile, so the
limit also caps guessing. A request without credentials is refused but is no
guess and not counted. Tokens are compared in constant time.
"""

from __future__ import annotations

import hmac
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

__all__ = [
    "FAILURE_WINDOW",
    "MAX_FAILURES",
    "FailureLimiter",
    "bearer",
    "configured_read_token",
    "configured_token",
    "require_admin",
    "require_read",
]

MAX_FAILURES = 10
FAILURE_WINDOW = 60.0
# Clients remembered at once; the least recently failing are forgotten first.
MAX_CLIENTS = 10_000

bearer = HTTPBearer(
    auto_error=False,
    description="CROWDCOMPUTE_API_TOKEN (admin, also reads) or CROWDCOMPUTE_API_READ_TOKEN.",
)


def _secret(settings: Any, name: str) -> str | None:
    token = getattr(settings, name, None)
    if token is not None and hasattr(token, "get_secret_value"):
        token = token.get_secret_value()
    return token or None


def configured_token(settings: Any) -> str | None:
    """The admin token from settings (plain ``str`` or pydantic ``SecretStr``), or None."""
    return _secret(settings, "api_token")


def configured_read_token(settings: Any) -> str | None:
    """The read token from settings, or None (the GET endpoints are then open)."""
    return _secret(settings, "api_read_token")


class FailureLimiter:
    """Counts failed token attempts per client in a sliding window."""

    def __init__(
        self,
        max_failures: int = MAX_FAILURES,
        window: float = FAILURE_WINDOW,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_failures = max_failures
        self.window = window
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def retry_after(self, client: str) -> int | None:
        """Whole seconds until ``client`` may try again, or None when it may now."""
        times = self._recent(client)
        if len(times) < self.max_failures:
            return None
        return max(1, math.ceil(times[0] + self.window - self._clock()))

    def record_failure(self, client: str) -> None:
        times = self._recent(client)
        times.append(self._clock())
        self._failures[client] = times
        self._failures.move_to_end(client)
        while len(self._failures) > MAX_CLIENTS:
            self._failures.popitem(last=False)

    def _recent(self, client: str) -> deque[float]:
        times = self._failures.get(client, deque())
        horizon = self._clock() - self.window
        while times and times[0] <= horizon:
            times.popleft()
        return times


def _client(request: Request) -> str:
    # uvicorn puts the peer here, or the forwarded client when the peer is a
    # trusted proxy (FORWARDED_ALLOW_IPS).
    return request.client.host if request.client is not None else "unknown"


def _unauthorized() -> HTTPException:
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED,
        "missing or invalid bearer token",
        headers={"WWW-Authenticate": "Bearer"},
    )


def _check(request: Request, credentials: HTTPAuthorizationCredentials | None,
           accepted: list[str]) -> None:
    """Pass if the bearer token is one of ``accepted``; 429 / 401 otherwise."""
    limiter: FailureLimiter = request.app.state.auth_limiter
    client = _client(request)
    wait = limiter.retry_after(client)
    if wait is not None:
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            f"too many failed token attempts: retry in {wait} s",
            headers={"Retry-After": str(wait)},
        )
    given = credentials.credentials if credentials is not None else ""
    # Compare with every accepted token, so the time taken names none of them.
    if any([hmac.compare_digest(given.encode(), token.encode()) for token in accepted]):
        return
    if given or request.headers.get("authorization"):
        limiter.record_failure(client)
    raise _unauthorized()


def require_admin(
    request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)
) -> None:
    """Dependency of the admin endpoints."""
    expected = configured_token(request.app.state.settings)
    if expected is None:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            "admin endpoints are disabled: set CROWDCOMPUTE_API_TOKEN to enable them",
        )
    _check(request, credentials, [expected])


def require_read(
    request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)
) -> None:
    """Dependency of the GET endpoints: open unless a read token is configured."""
    settings = request.app.state.settings
    read = configured_read_token(settings)
    if read is None:
        return
    admin = configured_token(settings)
    _check(request, credentials, [read] + ([admin] if admin is not None else []))
