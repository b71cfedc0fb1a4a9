"""Bearer-token guard of the gateway's state-changing endpoints (a FastAPI dependency).

The check itself (constant-time comparison, 401 vs 403) is ``taxi_mlops.security``, shared
with the model server; ``errors.py`` maps ``AuthError`` to the response.
"""

from __future__ import annotations

from fastapi import Request

from taxi_mlops import security


async def require_admin(request: Request) -> str:
    """The caller's identity for the audit trail (``manual:<client host>``), or AuthError."""
    settings = request.app.state.settings
    security.check_authorization(request.headers.get("authorization"), security.read_token(settings))
    client = request.client.host if request.client else "unknown"
    return f"manual:{client}"
