"""Settings' connect-host fields (issue 12, scale-out): ``host`` is where our servers bind,
``*_host`` where clients find each peer; unset, every client URL uses ``host`` as before.
Also the MLflow container entrypoint's auth set-up (manifests/mlflow_server.py)."""

from __future__ import annotations

import os
import stat

from mlflow.server.auth.config import read_auth_config

from taxi_mlops.manifests import mlflow_server
from taxi_mlops.settings import Settings

HOSTS = {"redis_host": "redis", "model_server_host": "model-server", "gateway_host": "gateway",
         "alertmanager_host": "alertmanager", "pushgateway_host": "pushgateway",
         "alert_receiver_host": "alert-receiver"}


def _urls(s: Settings) -> dict[str, str]:
    return {"redis": s.redis_url, "feast redis": s.redis_connection_string.split(",")[0],
            "model server": s.model_server_url, "model servers": " ".join(s.model_server_urls),
            "gateway": s.gateway_url, "alertmanager": s.alertmanager_url, "pushgateway": s.pushgateway_url,
            "alert receiver": s.alert_receiver_url}


def test_unset_hosts_fall_back_to_the_bind_host(tmp_path):
    s = Settings(_env_file=None, host="10.1.2.3", state_dir=tmp_path, redis_password="x" * 16,
                 model_server_replicas=2)
    assert all(getattr(s, field) is None for field in HOSTS)
    for what, url in _urls(s).items():
        assert "10.1.2.3" in url, what
    assert s.model_server_urls == ["http://10.1.2.3:8090", "http://10.1.2.3:8091"]


def test_each_host_field_names_its_peer_and_leaves_the_bind_host(tmp_path):
    s = Settings(_env_file=None, host="0.0.0.0", state_dir=tmp_path, redis_password="x" * 16, **HOSTS)
    assert s.host == "0.0.0.0"
    urls = _urls(s)
    assert "0.0.0.0" not in " ".join(urls.values())
    assert urls["redis"] == "redis://redis:6390/0"
    assert urls["feast redis"] == "redis:6390"
    assert urls["model server"] == "http://model-server:8090"
    assert urls["gateway"] == "http://gateway:8000"
    assert urls["alertmanager"] == "http://alertmanager:9094"
    assert urls["pushgateway"] == "http://pushgateway:9091"
    assert urls["alert receiver"] == "http://alert-receiver:9095"


def test_a_redis_cluster_lists_its_nodes_at_the_redis_host(tmp_path):
    s = Settings(_env_file=None, state_dir=tmp_path, redis_password="x" * 16, redis_cluster_nodes=3,
                 redis_host="redis-cluster")
    nodes = [p for p in s.redis_connection_string.split(",") if "=" not in p]
    assert nodes == ["redis-cluster:6390", "redis-cluster:6391", "redis-cluster:6392"]


def test_the_host_fields_come_from_taxi_variables(monkeypatch, tmp_path):
    for field, value in HOSTS.items():
        monkeypatch.setenv(f"TAXI_{field.upper()}", value)
    s = Settings(state_dir=tmp_path)
    assert {field: getattr(s, field) for field in HOSTS} == HOSTS
    assert {f"TAXI_{f.upper()}": v for f, v in HOSTS.items()}.items() <= s.as_env().items()


def test_the_mlflow_entrypoint_writes_an_owner_only_auth_config(tmp_path, monkeypatch):
    """What a deployed MLflow starts with: the local stack's auth config, READ by default,
    the admin's password read back by MLflow's own parser."""
    settings = Settings(_env_file=None, state_dir=tmp_path, mlflow_admin_password="a-long-admin-pass",
                        mlflow_backend_uri="postgresql://mlflow:pg@postgres:5432/mlflow")
    path = tmp_path / "tmp" / "basic_auth.ini"
    env = mlflow_server.serve_env(settings, path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert env["MLFLOW_AUTH_CONFIG_PATH"] == str(path) and env["MLFLOW_FLASK_SERVER_SECRET_KEY"]
    monkeypatch.setenv("MLFLOW_AUTH_CONFIG_PATH", str(path))
    monkeypatch.delenv("MLFLOW_AUTH_ADMIN_PASSWORD", raising=False)
    monkeypatch.delenv("MLFLOW_AUTH_ADMIN_USERNAME", raising=False)
    config = read_auth_config()
    assert config.admin_password == "a-long-admin-pass" and config.default_permission == "READ"
    assert config.database_uri == "postgresql://mlflow:pg@postgres:5432/mlflow"  # users beside the registry


def test_the_mlflow_entrypoint_names_its_usage(capsys):
    assert mlflow_server.main([]) == 2
    assert "serve" in capsys.readouterr().err
