"""Settings overrides, data versioning and the CLI's status and error messages."""

import json
import shutil
import subprocess
import sys

import pytest

from taxi_mlops.data import versioning
from taxi_mlops.settings import Settings


def test_environment_overrides_settings(monkeypatch, tmp_path):
    monkeypatch.setenv("TAXI_GATEWAY_PORT", "9123")
    monkeypatch.setenv("TAXI_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("TAXI_MLFLOW_EXTERNAL_URI", "http://mlflow.example:5000")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://set-by-mlflow-client:1")  # ignored
    s = Settings()
    assert s.gateway_port == 9123 and s.state_dir == tmp_path
    assert s.mlflow_tracking_uri == "http://mlflow.example:5000"
    assert s.mlmd_path == tmp_path / "pipeline" / "metadata.sqlite"
    rebuilt = Settings(**{})  # a child process rebuilds the same object from as_env()
    monkeypatch.delenv("TAXI_GATEWAY_PORT")
    for key, value in s.as_env().items():
        monkeypatch.setenv(key, value)
    assert Settings() == rebuilt


def test_bad_setting_is_a_clear_cli_error(monkeypatch):
    monkeypatch.setenv("TAXI_GATEWAY_PORT", "not-a-port")
    proc = subprocess.run([sys.executable, "-m", "taxi_mlops.cli", "status"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "gateway_port" in proc.stderr


def test_data_version_is_the_dvc_md5_and_refuses_a_changed_file(tmp_path):
    version = versioning.current(Settings().data_csv)
    assert len(version.md5) == 32 and version.path == "data/chicago_taxi/data.csv"
    copy = tmp_path / "data.csv"
    shutil.copy(Settings().data_csv, copy)
    shutil.copy(Settings().data_csv.with_name("data.csv.dvc"), tmp_path / "data.csv.dvc")
    assert versioning.current(copy).md5 == version.md5
    with copy.open("a") as f:
        f.write("1,2,3\n")
    with pytest.raises(versioning.DataVersionError, match="dvc add"):
        versioning.current(copy)


def test_status_json_reports_every_component(stack):
    env = {**stack.as_env()}
    proc = subprocess.run([sys.executable, "-m", "taxi_mlops.cli", "status", "--json"],
                          capture_output=True, text=True, timeout=60, env={**__import__("os").environ, **env})
    assert proc.returncode == 0, proc.stderr
    status = json.loads(proc.stdout)["components"]
    assert {"redis", "mlflow", "model_server", "gateway", "feast", "mlmd"} <= set(status)
    for name in ("redis", "mlflow", "model_server", "gateway", "feast", "mlmd"):
        assert status[name]["healthy"] is True, (name, status[name])
    assert status["mlflow"]["tracking_uri"] == stack.mlflow_tracking_uri
    assert status["gateway"]["url"] == stack.gateway_url
    assert status["mlmd"]["path"] == str(stack.mlmd_path)
    assert status["feast"]["path"] == str(stack.feast_repo)
