"""Authentication on the session stack: Redis refuses a client without its password or with a
wrong one; the secrets live in mode-0600 files of the state directory; and no log of any
component (nor the pipeline's) contains a secret. The gateway's bearer token is tested
route by route in tests/test_rollout_stack.py."""

from __future__ import annotations

import stat

import pytest
import redis

from taxi_mlops import security

pytestmark = pytest.mark.slow


def _client(settings, password):
    return redis.Redis(host=settings.host, port=settings.redis_port, password=password,
                       socket_timeout=5, socket_connect_timeout=5)


def test_redis_refuses_a_missing_or_wrong_password(stack):
    settings = stack
    with pytest.raises(redis.AuthenticationError):
        _client(settings, None).get("anything")
    with pytest.raises(redis.AuthenticationError):
        _client(settings, "not-the-password").ping()
    assert _client(settings, security.redis_password(settings)).ping()


def test_secrets_are_files_only_their_owner_reads(stack):
    settings = stack
    for path in (settings.admin_token_file, settings.state_dir / "redis_password",
                 settings.state_dir / "redis" / "redis.conf"):
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == 0o600, f"{path} has mode {oct(mode)}"
    for spec in settings.run_dir.glob("*.spec.json"):  # the keeper's specs carry environments
        assert stat.S_IMODE(spec.stat().st_mode) == 0o600, spec


def test_no_log_contains_a_secret(stack):
    settings = stack
    secrets = {"admin token": security.read_token(settings), "redis password": security.redis_password(settings)}
    assert all(secrets.values()) and all(len(v) >= 32 for v in secrets.values()), "weak or missing secrets"
    logs = [p for p in settings.state_dir.rglob("*.log") if p.is_file()]
    assert any(p.name == "gateway.log" for p in logs) and len(logs) >= 10, logs
    for path in logs:
        text = path.read_text(errors="replace")
        for what, value in secrets.items():
            assert value not in text, f"the {what} is written in {path}"
