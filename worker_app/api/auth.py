"""Admin authentication: a static bearer token (``CROWDCOMPUTE_API_TOKEN``).

No token configured → the admin endpoints are disabled (403, and the body says
so); a missing or wrong token → 401 with ``WWW-Authenticate: Bearer``. Tokens
are compared in constant time.
"""

from __future__ import annotations

import hmac
from typing import Any

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

__all__ = ["bearer", "configured_token", "require_admin"]

bearer = HTTPBearer(auto_error=False, description="The value of CROWDCOMPUTE_API_TOKEN.")


def configured_token(settings: Any) -> str | None:
    """The admin token from settings (plain ``str`` or pydantic ``SecretStr``), or None."""
    token = getattr(settings, "api_token", None)
    if token is not None and hasattr(token, "get_secret_value"):
        token = token.get_secret_value()
    return token or None


def require_admin(
    request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)
) -> None:
    expected = configured_token(request.app.state.settings)
    if expected is None:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            "admin endpoints are disabled: set CROWDCOMPUTE_API_TOKEN to enable them",
        )
    given = credentials.credentials if credentials is not None else ""
    if not given or not hmac.compare_digest(given.encode(), expected.encode()):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing or invalid bearer token",
            headers={"WWW-Authenticate": "Bearer"},
        )
