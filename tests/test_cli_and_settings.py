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


@pytest.mark.slow
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


def test_a_service_that_fails_to_start_says_which_why_and_where_its_log_is(tmp_path):
    from taxi_mlops.stack.process import Service, ServiceStartError, Supervisor

    sup = Supervisor(Settings(state_dir=tmp_path))
    broken = Service(name="broken", url="http://127.0.0.1:1",
                     command=[sys.executable, "-c", "import sys; print('port 1 in use'); sys.exit(3)"],
                     healthy=lambda: False)
    with pytest.raises(ServiceStartError) as info:
        sup.start(broken)
    message = str(info.value)
    assert "broken did not start: exited with code 3" in message
    assert str(tmp_path / "logs" / "broken.log") in message and "port 1 in use" in message
    assert sup.pid("broken") is None


def test_start_is_idempotent_and_stop_ends_the_process(tmp_path):
    from taxi_mlops.stack.process import Service, Supervisor, pid_alive

    marker = tmp_path / "started"
    sup = Supervisor(Settings(state_dir=tmp_path))
    service = Service(name="sleeper", url="-", healthy=lambda: marker.exists(),
                      command=[sys.executable, "-c",
                               f"import pathlib, time; pathlib.Path({str(marker)!r}).touch(); time.sleep(600)"])
    assert sup.start(service) == "started"
    pid = sup.pid("sleeper")
    assert sup.start(service) == "running" and sup.pid("sleeper") == pid
    assert sup.stop("sleeper") is True
    assert not pid_alive(pid) and sup.pid("sleeper") is None
