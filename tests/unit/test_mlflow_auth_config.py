"""MLflow's basic-auth wiring without a server: who logs in as whom, what the auth config file
holds (read back by MLflow's own parser), and that an external MLflow gets nothing generated."""

from __future__ import annotations

import os
import stat

import pytest
from mlflow.server.auth.config import read_auth_config

from taxi_mlops import security
from taxi_mlops.settings import Settings
from taxi_mlops.stack import services
from taxi_mlops.stack.process import child_env


def _read_back(path, monkeypatch):
    """The config as the server reads it: MLflow's parser, through MLFLOW_AUTH_CONFIG_PATH."""
    monkeypatch.setenv("MLFLOW_AUTH_CONFIG_PATH", str(path))
    monkeypatch.delenv("MLFLOW_AUTH_ADMIN_PASSWORD", raising=False)
    monkeypatch.delenv("MLFLOW_AUTH_ADMIN_USERNAME", raising=False)
    return read_auth_config()


def test_the_auth_config_is_owner_only_and_mlflow_reads_the_password_back(tmp_path, monkeypatch):
    password = "50%-off the 100% %(secret)s"  # configparser interpolation must not bite
    settings = Settings(state_dir=tmp_path, mlflow_admin_password=password)
    path = services.mlflow_auth_config_path(settings)
    services.write_mlflow_auth_config(settings, path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    config = _read_back(path, monkeypatch)
    assert (config.admin_username, config.admin_password) == ("admin", password)
    assert config.default_permission == "READ"
    assert config.database_uri == f"sqlite:///{tmp_path / 'mlflow' / 'basic_auth.db'}"
    assert config.auth_cache_ttl_seconds > 0


def test_a_generated_admin_password_is_a_0600_file_and_stays_the_same(tmp_path, monkeypatch):
    settings = Settings(state_dir=tmp_path)
    first = security.mlflow_admin_password(settings)
    assert len(first) >= 32 and first == security.mlflow_admin_password(settings)
    assert stat.S_IMODE((tmp_path / "mlflow_admin_password").stat().st_mode) == 0o600
    path = services.mlflow_auth_config_path(settings)
    services.write_mlflow_auth_config(settings, path)
    assert _read_back(path, monkeypatch).admin_password == first


def test_the_users_live_in_a_postgresql_backend_when_there_is_one(tmp_path):
    pg = "postgresql://postgres@127.0.0.1:5432/mlflow"
    assert Settings(state_dir=tmp_path, mlflow_backend_uri=pg).mlflow_auth_database_uri == pg
    assert Settings(state_dir=tmp_path, mlflow_backend_uri=pg,
                    mlflow_auth_db_uri="sqlite:///x.db").mlflow_auth_database_uri == "sqlite:///x.db"


@pytest.mark.parametrize("bad", ["short", " padded-password-here ", "two\nlines-of-password"])
def test_an_admin_password_mlflow_would_refuse_is_named_before_start(tmp_path, bad):
    settings = Settings(state_dir=tmp_path, mlflow_admin_password=bad)
    with pytest.raises(ValueError, match="TAXI_MLFLOW_ADMIN_PASSWORD"):
        services.write_mlflow_auth_config(settings, services.mlflow_auth_config_path(settings))


def test_writers_log_in_as_the_admin_readers_as_the_read_only_user(tmp_path):
    settings = Settings(state_dir=tmp_path, mlflow_reader_username="ro")
    admin = security.mlflow_env(settings)
    reader = security.mlflow_env(settings, security.MLFLOW_READER)
    assert admin["MLFLOW_TRACKING_USERNAME"] == "admin"
    assert admin["MLFLOW_TRACKING_PASSWORD"] == security.mlflow_admin_password(settings)
    assert reader == {"MLFLOW_TRACKING_USERNAME": "ro",
                      "MLFLOW_TRACKING_PASSWORD": security.mlflow_reader_password(settings)}
    assert reader["MLFLOW_TRACKING_PASSWORD"] != admin["MLFLOW_TRACKING_PASSWORD"]
    by_name = {s.name: s.env for s in services.all_services(settings)}
    for name in ("model_server", "ui", "data-quality"):
        assert by_name[name]["MLFLOW_TRACKING_USERNAME"] == "ro", name
    for name in ("gateway", "gateway-1", "alert_receiver", "label-join"):  # label join: experiment decisions
        assert by_name[name]["MLFLOW_TRACKING_USERNAME"] == "admin", name
    assert "MLFLOW_TRACKING_PASSWORD" not in by_name["stream-processor-0"]
    mlflow_env = by_name["mlflow"]
    assert mlflow_env["MLFLOW_AUTH_CONFIG_PATH"].endswith("basic_auth.ini")
    assert mlflow_env["MLFLOW_FLASK_SERVER_SECRET_KEY"]


def test_a_child_inherits_no_login_and_a_cli_login_ends_with_the_command(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "session-user")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "session-password")
    assert "MLFLOW_TRACKING_PASSWORD" not in child_env()
    settings = Settings(state_dir=tmp_path)
    with security.mlflow_login(settings):
        assert os.environ["MLFLOW_TRACKING_USERNAME"] == "admin"
    assert os.environ["MLFLOW_TRACKING_USERNAME"] == "session-user"
    assert os.environ["MLFLOW_TRACKING_PASSWORD"] == "session-password"


def test_without_auth_no_credentials_and_no_auth_app(tmp_path):
    settings = Settings(state_dir=tmp_path, mlflow_auth=False)
    assert security.mlflow_env(settings) == {} and security.mlflow_http_auth(settings) is None
    assert "--app-name" not in services.mlflow_service(settings).command
    assert "mlflow" not in services.after_start(settings)


def test_an_external_mlflow_gets_the_configured_credentials_and_nothing_generated(tmp_path):
    external = Settings(state_dir=tmp_path, mlflow_external_uri="http://mlflow.example:5000")
    assert security.mlflow_credentials(external) is None
    assert security.mlflow_credentials(external, security.MLFLOW_READER) is None
    with_admin = external.model_copy(update={"mlflow_admin_username": "ops", "mlflow_admin_password": "pw-from-env"})
    assert security.mlflow_credentials(with_admin) == ("ops", "pw-from-env")
    assert security.mlflow_credentials(with_admin, security.MLFLOW_READER) == ("ops", "pw-from-env")
    with_reader = with_admin.model_copy(update={"mlflow_reader_password": "ro-from-env"})
    assert security.mlflow_credentials(with_reader, security.MLFLOW_READER) == ("reader", "ro-from-env")
    assert services.mlflow_service(external) is None and "mlflow" not in services.after_start(external)
    assert not list(tmp_path.glob("mlflow_*"))


def test_prometheus_scrapes_mlflow_as_its_admin_from_a_0600_file(tmp_path):
    """MLflow's auth app is fail-closed: /metrics has no permission rule, so only an admin
    may scrape it (the stack test sees the target up)."""
    import shutil
    import subprocess

    import yaml

    from taxi_mlops.observability import prometheus

    settings = Settings(state_dir=tmp_path)
    path = prometheus.write_config(settings)
    jobs = {j["job_name"]: j for j in yaml.safe_load(path.read_text())["scrape_configs"]}
    login = jobs["mlflow"]["basic_auth"]
    assert login["username"] == settings.mlflow_admin_username and "password" not in login
    password_file = tmp_path / login["password_file"]
    assert password_file.read_text() == security.mlflow_admin_password(settings)
    assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
    assert security.mlflow_admin_password(settings) not in path.read_text()
    assert all("basic_auth" not in j for name, j in jobs.items() if name != "mlflow")
    promtool = shutil.which("promtool") or pytest.fail("promtool not found: `make install` installs Prometheus")
    out = subprocess.run([promtool, "check", "config", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
