"""The platform's secrets: the admin bearer token of every state-changing endpoint
(experiments, promote, rollback, reload), in the gateway and the model server alike, and
Redis's password.

The token comes from ``Settings.admin_token`` (``TAXI_ADMIN_TOKEN``) or else from
``<state_dir>/admin_token``, which the first ``up`` generates (mode 0600). Reads stay open.
A missing or malformed ``Authorization`` header is 401; a wrong token is 403. Tokens are
compared with ``hmac.compare_digest`` so the comparison time says nothing about the token.
"""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path

from taxi_mlops.settings import Settings


class AuthError(Exception):
    """``status`` is 401 (no credentials) or 403 (wrong credentials)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def _secret_file(path: Path) -> str:
    """The secret in ``path``, generated (mode 0600) when the file does not exist yet; two
    processes generating at once agree (O_EXCL: the loser reads the winner's)."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(32) + "\n")
    return path.read_text().strip()


def ensure_token(settings: Settings) -> str:
    """The token, generating ``admin_token_file`` if neither it nor the setting exists."""
    if settings.admin_token:
        return settings.admin_token
    _secret_file(settings.admin_token_file)
    return read_token(settings)


def redis_password(settings: Settings) -> str:
    """Redis's ``requirepass``: ``TAXI_REDIS_PASSWORD``, else ``<state_dir>/redis_password``
    (generated on first use, mode 0600). Every client gets it through
    ``Settings.redis_connection_string``."""
    return settings.redis_password or _secret_file(settings.state_dir / "redis_password")


def read_token(settings: Settings) -> str | None:
    """The configured token, or None when there is none yet (then every admin call is 403)."""
    if settings.admin_token:
        return settings.admin_token
    try:
        token = Path(settings.admin_token_file).read_text().strip()
    except OSError:
        return None
    return token or None


def check_authorization(header: str | None, expected: str | None) -> None:
    """Raise ``AuthError`` unless ``header`` is ``Bearer <expected>``."""
    if not header:
        raise AuthError(401, "this endpoint changes state: send 'Authorization: Bearer <token>' "
                             "(the token is in <state_dir>/admin_token or TAXI_ADMIN_TOKEN)")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError(401, "the Authorization header must be 'Bearer <token>'")
    if expected is None or not hmac.compare_digest(token.strip().encode(), expected.encode()):
        raise AuthError(403, "the bearer token is not valid")
