"""Authentication on the session stack: Redis and MLflow refuse a client without its password or
with a wrong one; MLflow's read-only user reads but writes nothing; the secrets live in mode-0600
files of the state directory; and no log of any component (nor the pipeline's) contains a secret. The gateway's bearer token is tested
route by route in tests/test_rollout_stack.py."""

from __future__ import annotations

import stat
from pathlib import Path

import httpx
import pytest
import redis

from taxi_mlops import security
from taxi_mlops.registry import models
from taxi_mlops.stack import services

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


def _mlflow(settings, method: str, path: str, auth, **kwargs) -> httpx.Response:
    return httpx.request(method, f"{settings.mlflow_tracking_uri}/api/2.0/mlflow/{path}", auth=auth,
                         timeout=30, **kwargs)


def test_mlflow_refuses_a_missing_or_wrong_login(stack, champion):
    settings = stack
    model = {"name": settings.model_name}
    admin_name, admin_password = security.mlflow_credentials(settings)
    reader_name, _ = security.mlflow_credentials(settings, security.MLFLOW_READER)
    assert _mlflow(settings, "GET", "registered-models/get", None, params=model).status_code == 401
    for wrong in ((admin_name, "not-the-password"), (reader_name, admin_password), ("nobody", admin_password)):
        assert _mlflow(settings, "GET", "registered-models/get", wrong, params=model).status_code == 401, wrong[0]
    r = _mlflow(settings, "GET", "registered-models/get", (admin_name, admin_password), params=model)
    assert r.status_code == 200, r.text
    assert {a["alias"]: a["version"] for a in r.json()["registered_model"]["aliases"]}[models.CHAMPION] == champion.version


def test_the_read_only_user_reads_but_cannot_write(stack, champion):
    settings = stack
    reader = security.mlflow_credentials(settings, security.MLFLOW_READER)
    r = _mlflow(settings, "GET", "model-versions/get", reader,
                params={"name": settings.model_name, "version": champion.version})
    assert r.status_code == 200 and r.json()["model_version"]["run_id"] == champion.run_id, r.text
    run = _mlflow(settings, "GET", "runs/get", reader, params={"run_id": champion.run_id})
    assert run.status_code == 200, run.text
    experiment_id = run.json()["run"]["info"]["experiment_id"]
    alias = {"name": settings.model_name, "alias": "reader-was-here", "version": champion.version}
    assert _mlflow(settings, "POST", "registered-models/alias", reader, json=alias).status_code == 403
    assert _mlflow(settings, "POST", "runs/create", reader, json={"experiment_id": experiment_id}).status_code == 403
    assert _mlflow(settings, "POST", "runs/log-metric", reader,
                   json={"run_id": champion.run_id, "key": "eval_auc", "value": 0.0, "timestamp": 0}).status_code == 403
    assert models.by_alias(settings.mlflow_tracking_uri, settings.model_name, "reader-was-here") is None


def test_setting_up_the_reader_names_a_changed_admin_password_or_a_clash(stack):
    """The admin's password counts only when MLflow first makes the admin: a changed one later
    is a message with the fix, not a traceback; and the reader may not be the admin."""
    settings = stack
    with pytest.raises(ValueError, match="TAXI_MLFLOW_ADMIN_PASSWORD"):
        services.ensure_mlflow_reader(settings.model_copy(update={"mlflow_admin_password": "a-changed-password"}))
    with pytest.raises(ValueError, match="must differ"):
        services.ensure_mlflow_reader(settings.model_copy(update={"mlflow_reader_username": "admin"}))
    reader = security.mlflow_credentials(settings, security.MLFLOW_READER)
    assert _mlflow(settings, "GET", "registered-models/get", reader,
                   params={"name": settings.model_name}).status_code == 200


def test_each_service_logs_in_to_mlflow_as_what_it_needs(stack, supervisor):
    """Readers (model servers, the UI, the data-quality worker) as the read-only user; the
    gateway's promote/rollback, the label join's experiment decisions and the alert
    receiver's retrain as the admin."""
    settings = stack
    expected = {"model_server": security.MLFLOW_READER, "model_server-1": security.MLFLOW_READER,
                "ui": security.MLFLOW_READER, "data-quality": security.MLFLOW_READER,
                "label-join": security.MLFLOW_ADMIN,
                "gateway": security.MLFLOW_ADMIN, "alert_receiver": security.MLFLOW_ADMIN}
    for name, role in expected.items():
        raw = Path(f"/proc/{supervisor.pid(name)}/environ").read_bytes().split(b"\0")
        env = dict(item.decode().partition("=")[::2] for item in raw if b"=" in item)
        want = security.mlflow_credentials(settings, role)
        assert (env.get("MLFLOW_TRACKING_USERNAME"), env.get("MLFLOW_TRACKING_PASSWORD")) == want, name


def test_prometheus_scrapes_mlflow_through_its_login(stack):
    from taxi_mlops.observability import prometheus
    from taxi_mlops.stack.process import wait_for

    def mlflow_up() -> bool:
        try:
            return any(t["job"] == "mlflow" and t["health"] == "up" for t in prometheus.targets_health(stack))
        except httpx.HTTPError:
            return False

    assert wait_for(mlflow_up, 60, 1.0), prometheus.targets_health(stack)


def test_secrets_are_files_only_their_owner_reads(stack):
    settings = stack
    for path in (settings.admin_token_file, settings.state_dir / "redis_password",
                 settings.state_dir / "redis" / "redis.conf", settings.state_dir / "mlflow_admin_password",
                 settings.state_dir / "mlflow_reader_password", settings.state_dir / "mlflow_flask_secret_key",
                 settings.state_dir / "mlflow" / "basic_auth.ini"):
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == 0o600, f"{path} has mode {oct(mode)}"
    for spec in settings.run_dir.glob("*.spec.json"):  # the keeper's specs carry environments
        assert stat.S_IMODE(spec.stat().st_mode) == 0o600, spec


def test_no_log_contains_a_secret(stack):
    settings = stack
    secrets = {"admin token": security.read_token(settings), "redis password": security.redis_password(settings),
               "MLflow admin password": security.mlflow_admin_password(settings),
               "MLflow reader password": security.mlflow_reader_password(settings),
               "MLflow's Flask secret key": security.mlflow_flask_secret_key(settings)}
    assert all(secrets.values()) and all(len(v) >= 32 for v in secrets.values()), "weak or missing secrets"
    logs = [p for p in settings.state_dir.rglob("*.log") if p.is_file()]
    assert any(p.name == "gateway.log" for p in logs) and len(logs) >= 10, logs
    for path in logs:
        text = path.read_text(errors="replace")
        for what, value in secrets.items():
            assert value not in text, f"the {what} is written in {path}"
