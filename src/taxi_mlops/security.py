"""The platform's secrets: the admin bearer token of every state-changing endpoint
(experiments, promote, rollback, reload), in the gateway and the model server alike,
Redis's password, Kafka's SCRAM password and MLflow's users (an admin that writes, a reader).

The token comes from ``Settings.admin_token`` (``TAXI_ADMIN_TOKEN``) or else from
``<state_dir>/admin_token``, which the first ``up`` generates (mode 0600). Reads stay open.
A missing or malformed ``Authorization`` header is 401; a wrong token is 403. Tokens are
compared with ``hmac.compare_digest`` so the comparison time says nothing about the token.
"""

from __future__ import annotations

import contextlib
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


KAFKA_PASSWORD_FORBIDDEN = set(',=[]"\\ ')


def kafka_password(settings: Settings) -> str:
    """The SCRAM password of ``kafka_sasl_username`` (``kafka_sasl``): ``TAXI_KAFKA_PASSWORD``,
    else ``<state_dir>/kafka_password`` (generated on first use, mode 0600). It reaches the
    brokers through files of mode 0600 only (``streaming/broker.py``), never a command line."""
    password = settings.kafka_password or _secret_file(settings.state_dir / "kafka_password")
    bad = sorted(KAFKA_PASSWORD_FORBIDDEN & set(password))
    if bad:  # they would break kafka-storage's [name=..,password=..] and the JAAS quoting
        raise ValueError(f"TAXI_KAFKA_PASSWORD must not contain {' '.join(repr(c) for c in bad)}; "
                         "choose another (or unset it to have one generated)")
    return password


MLFLOW_ADMIN, MLFLOW_READER = "admin", "reader"
MLFLOW_CREDENTIAL_VARS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")


def mlflow_admin_password(settings: Settings) -> str:
    """The MLflow admin's password: ``TAXI_MLFLOW_ADMIN_PASSWORD``, else
    ``<state_dir>/mlflow_admin_password`` (generated on first use, mode 0600). The server reads
    it from its auth config file (mode 0600, ``stack/services.py``), never a command line."""
    return settings.mlflow_admin_password or _secret_file(settings.state_dir / "mlflow_admin_password")


def mlflow_reader_password(settings: Settings) -> str:
    """The read-only MLflow user's password: ``TAXI_MLFLOW_READER_PASSWORD``, else
    ``<state_dir>/mlflow_reader_password`` (generated on first use, mode 0600)."""
    return settings.mlflow_reader_password or _secret_file(settings.state_dir / "mlflow_reader_password")


def mlflow_flask_secret_key(settings: Settings) -> str:
    """The basic-auth app's CSRF signing key (its sign-up form); MLflow reads it from the
    server's environment only. Generated once into ``<state_dir>/mlflow_flask_secret_key``."""
    return _secret_file(settings.state_dir / "mlflow_flask_secret_key")


def shared_secrets(settings: Settings) -> dict:
    """The Redis and MLflow passwords ``settings`` resolves to, as settings fields: a copy of
    the settings with another state dir (a sandbox gateway, a scratch pipeline run) talks to
    the same services instead of generating passwords they reject."""
    return {"redis_password": redis_password(settings),
            "mlflow_admin_password": mlflow_admin_password(settings),
            "mlflow_reader_password": mlflow_reader_password(settings)}


def mlflow_credentials(settings: Settings, role: str = MLFLOW_ADMIN) -> tuple[str, str] | None:
    """(username, password) for ``role`` (``MLFLOW_ADMIN`` writes, ``MLFLOW_READER`` only
    reads), or None when MLflow wants none. An external MLflow gets what the settings name
    and nothing generated: the reader falls back to the admin's pair, and no password, no
    credentials."""
    if settings.mlflow_external_uri:
        if role == MLFLOW_READER and settings.mlflow_reader_password:
            return settings.mlflow_reader_username, settings.mlflow_reader_password
        if settings.mlflow_admin_password:
            return settings.mlflow_admin_username, settings.mlflow_admin_password
        return None
    if not settings.mlflow_auth:
        return None
    if role == MLFLOW_READER:
        return settings.mlflow_reader_username, mlflow_reader_password(settings)
    return settings.mlflow_admin_username, mlflow_admin_password(settings)


def mlflow_env(settings: Settings, role: str = MLFLOW_ADMIN) -> dict[str, str]:
    """The variables the mlflow library reads its login from, for a child process's
    environment (``Service.env``): empty when MLflow wants none."""
    pair = mlflow_credentials(settings, role)
    return dict(zip(MLFLOW_CREDENTIAL_VARS, pair)) if pair else {}


def use_mlflow_credentials(settings: Settings, role: str = MLFLOW_ADMIN) -> dict[str, str | None]:
    """Log this process's mlflow clients in as ``role`` and return the login it replaces.
    The mlflow library reads its credentials from the environment only, so in-process callers
    (the CLI, the test session) set them here; launched services get theirs through
    ``mlflow_env``."""
    before = {name: os.environ.pop(name, None) for name in MLFLOW_CREDENTIAL_VARS}
    os.environ.update(mlflow_env(settings, role))
    return before


@contextlib.contextmanager
def mlflow_login(settings: Settings, role: str = MLFLOW_ADMIN):
    """``use_mlflow_credentials`` for the duration of a block (one CLI command), then the
    previous login again: a caller's own process (a test session) keeps its own."""
    before = use_mlflow_credentials(settings, role)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def mlflow_http_auth(settings: Settings, role: str = MLFLOW_READER):
    """An ``httpx`` auth for raw calls to MLflow's REST API (they only read: the reader by
    default), or None when MLflow wants no credentials."""
    import httpx

    pair = mlflow_credentials(settings, role)
    return httpx.BasicAuth(*pair) if pair else None


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
