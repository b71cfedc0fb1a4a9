"""Alert rules and generated configs, checked by the real tools (promtool, amtool)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from taxi_mlops import paths
from taxi_mlops.observability import alertmanager, prometheus
from tests.observability.conftest import monitoring_settings

DEPLOY = paths.PROJECT_ROOT / "deploy" / "prometheus"
RULE_FILES = sorted((DEPLOY / "rules").glob("*.yml"))
TEST_FILES = sorted((DEPLOY / "tests").glob("*.yml"))


def _tool(name: str) -> str:
    path = shutil.which(name)
    if not path:
        pytest.fail(f"{name} not found (Debian: apt-get install prometheus prometheus-alertmanager)")
    return path


def _run(*cmd, cwd: Path | None = None) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=60)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def _rules() -> list[dict]:
    return [r for f in RULE_FILES for g in yaml.safe_load(f.read_text())["groups"] for r in g["rules"]]


def test_promtool_check_rules():
    assert RULE_FILES
    _run(_tool("promtool"), "check", "rules", *map(str, RULE_FILES))


def test_promtool_unit_tests_pass():
    out = _run(_tool("promtool"), "test", "rules", *(f.name for f in TEST_FILES), cwd=DEPLOY / "tests")
    assert "FAILED" not in out


def test_every_alert_is_documented_and_has_firing_and_quiet_tests():
    fired, quiet = set(), set()
    for f in TEST_FILES:
        for test in yaml.safe_load(f.read_text())["tests"]:
            for case in test.get("alert_rule_test", []):
                (fired if case.get("exp_alerts") else quiet).add(case["alertname"])
    names = [r["alert"] for r in _rules() if "alert" in r]
    assert len(names) == len(set(names)) >= 9
    for rule in _rules():
        name = rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
        assert "taxi-mlops" in rule["annotations"]["description"] or "dashboard" in rule["annotations"]["description"], \
            f"{name}: the description must say what to do next"
        assert name in fired, f"{name}: no promtool test where it fires"
        assert name in quiet, f"{name}: no promtool test where it stays quiet"


def test_generated_prometheus_config_is_valid(tmp_path):
    settings = monitoring_settings(tmp_path)
    path = prometheus.write_config(settings)
    _run(_tool("promtool"), "check", "config", str(path))
    cfg = yaml.safe_load(path.read_text())
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    assert list(jobs) == ["prometheus", "alertmanager", "pushgateway", "alert_receiver", "gateway",
                          "model_server", "mlflow", "kafka", "stream_processor", "label_join", "data_quality",
                          "prediction_store"]
    assert jobs["pushgateway"]["honor_labels"] is True
    assert jobs["stream_processor"]["static_configs"][0]["targets"] == [f"127.0.0.1:{settings.processor_metrics_port}"]
    assert all(sc["labels"]["component"] for j in jobs.values() for sc in j.get("static_configs", []))
    # the model servers: a file of targets, empty until the stack starts one (no champion yet)
    (sd,) = jobs["model_server"]["file_sd_configs"]
    assert json.loads(Path(sd["files"][0]).read_text()) == []
    prometheus.write_model_server_targets(settings, starting="model_server")
    assert json.loads(Path(sd["files"][0]).read_text()) == [
        {"targets": [f"127.0.0.1:{settings.model_server_port}"], "labels": {"component": "model_server"}}]
    _run(_tool("promtool"), "check", "config", str(path))  # the file's format too
    assert cfg["global"]["scrape_interval"] == cfg["global"]["evaluation_interval"] == "1s"
    assert cfg["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == [
        f"127.0.0.1:{settings.alertmanager_port}"]

    external = monitoring_settings(tmp_path / "ext", kafka_bootstrap_override="kafka.example:9092",
                                   mlflow_external_uri="http://mlflow.example")
    jobs = [j["job_name"] for j in prometheus.build_config(external)["scrape_configs"]]
    assert "kafka" not in jobs and "mlflow" not in jobs
    assert prometheus.duration(0.5) == "500ms" and prometheus.duration(5.0) == "5s"


def test_generated_alertmanager_config_is_valid(tmp_path):
    settings = monitoring_settings(tmp_path, alert_group_wait_s=5.0)
    path = alertmanager.write_config(settings)
    out = _run(_tool("amtool"), "check-config", str(path))
    assert "SUCCESS" in out
    cfg = yaml.safe_load(path.read_text())
    assert cfg["route"]["group_wait"] == cfg["route"]["group_interval"] == "5s"
    hook = cfg["receivers"][0]["webhook_configs"][0]
    assert hook["url"] == f"{settings.alert_receiver_url}/alerts" and hook["send_resolved"] is True


def test_external_prometheus_starts_no_server(tmp_path):
    from taxi_mlops.stack import monitoring

    settings = monitoring_settings(tmp_path, prometheus_external_url="http://prom.example:9090")
    assert monitoring.prometheus_service(settings) is None
    assert [s.name for s in monitoring.monitoring_services(settings)] == ["alert_receiver", "alertmanager",
                                                                          "pushgateway"]
