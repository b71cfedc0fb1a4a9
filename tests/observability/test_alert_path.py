"""The alert path for real: Alertmanager -> webhook -> our receiver (SQLite) -> alerts.py,
and Prometheus rules -> Alertmanager -> receiver for a component that is down."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import httpx
import pytest
from rich.console import Console

from taxi_mlops.observability import alerts, prometheus, receiver
from taxi_mlops.stack import monitoring
from taxi_mlops.stack.process import wait_for


def _iso(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def _post_alert(settings, name: str, ends_in_s: float, **labels) -> None:
    now = datetime.now(timezone.utc)
    body = [{"labels": {"alertname": name, "severity": "info", "component": "test", **labels},
             "annotations": {"summary": f"{name} summary", "description": "what to do next"},
             "startsAt": _iso(now - timedelta(seconds=1)), "endsAt": _iso(now + timedelta(seconds=ends_in_s)),
             "generatorURL": "http://example.invalid/graph"}]
    r = httpx.post(f"{settings.alertmanager_url}/api/v2/alerts", json=body, timeout=5)
    assert r.status_code == 200, r.text


def _history(settings, name, status=None):
    return [a for a in alerts.history(settings, status=status, limit=500) if a["alertname"] == name]


def test_alert_reaches_receiver_and_cli_functions(monitoring_stack):
    settings, supervisor = monitoring_stack
    name = "TaxiPathTest"
    _post_alert(settings, name, ends_in_s=600)

    assert wait_for(lambda: _history(settings, name, "firing"), timeout_s=15), "alert never reached the receiver"
    rec = _history(settings, name, "firing")[0]
    assert rec["labels"]["component"] == "test" and rec["severity"] == "info"
    assert rec["annotations"]["summary"] == f"{name} summary"
    assert rec["fingerprint"] and rec["starts_at"].endswith("Z") and rec["ends_at"] is None

    now = alerts.firing(settings)
    assert [a["alertname"] for a in now if a["alertname"] == name] == [name]
    view = alerts.overview(settings, since="10m")
    assert not view["errors"]
    console = Console(record=True, width=200)
    console.print(alerts.render(view))
    text = console.export_text()
    assert name in text and "FIRING" in text

    # Resolve it: Alertmanager sends the resolved notification (send_resolved: true).
    _post_alert(settings, name, ends_in_s=-0.5)
    assert wait_for(lambda: _history(settings, name, "resolved"), timeout_s=15), "resolved never arrived"
    assert wait_for(lambda: name not in [a["alertname"] for a in alerts.firing(settings)], timeout_s=10)

    metrics = httpx.get(f"{settings.alert_receiver_url}/metrics", timeout=5).text
    assert f'taxi_alerts_received_total{{alertname="{name}",status="firing"}}' in metrics
    assert f'taxi_alerts_received_total{{alertname="{name}",status="resolved"}}' in metrics

    # The history is durable: a restarted receiver still serves it.
    supervisor.stop("alert_receiver")
    assert _history(settings, name, "firing")  # falls back to the SQLite file while it is down
    supervisor.start(monitoring.alert_receiver_service(settings))
    assert _history(settings, name, "resolved")


def test_receiver_rejects_bad_payloads_with_422(monitoring_stack):
    settings, _ = monitoring_stack
    url = f"{settings.alert_receiver_url}/alerts"
    good_alert = {"status": "firing", "labels": {"alertname": "X"}, "annotations": {},
                  "startsAt": "2026-01-01T00:00:00Z", "endsAt": "0001-01-01T00:00:00Z", "fingerprint": "abc"}
    cases = [
        ({"version": "4", "status": "firing"}, "alerts"),
        ({"version": "3", "status": "firing", "alerts": [good_alert]}, "version"),
        ({"version": "4", "status": "firing", "alerts": [{**good_alert, "status": "weird"}]}, "status"),
        ({"version": "4", "status": "firing", "alerts": [{**good_alert, "startsAt": "yesterday"}]}, "startsAt"),
        ({"version": "4", "status": "firing", "alerts": [{k: v for k, v in good_alert.items() if k != "fingerprint"}]},
         "fingerprint"),
        ([1, 2], "body"),
    ]
    for body, field in cases:
        r = httpx.post(url, json=body, timeout=5)
        assert r.status_code == 422, (body, r.status_code, r.text)
        assert field in r.text, (field, r.text)
    r = httpx.post(url, content=b"{not json", headers={"content-type": "application/json"}, timeout=5)
    assert r.status_code == 422
    r = httpx.get(url, params={"since": "yesterday-ish"}, timeout=5)
    assert r.status_code == 422 and "since" in r.text
    ok = httpx.post(url, json={"version": "4", "status": "firing", "alerts": [good_alert]}, timeout=5)
    assert ok.status_code == 200 and ok.json()["stored"] == 1


def test_hooks_run_per_alertname_and_failures_do_not_fail_the_webhook(tmp_path):
    from fastapi.testclient import TestClient

    from taxi_mlops.settings import Settings

    seen, hooks = [], {}
    receiver.register("TaxiLiveAccuracyBelowEval", seen.append, hooks)
    receiver.register("*", lambda rec: 1 / 0, hooks)
    client = TestClient(receiver.create_app(Settings(state_dir=tmp_path), hooks=hooks))
    alert = {"status": "firing", "labels": {"alertname": "TaxiLiveAccuracyBelowEval", "model_version": "3"},
             "startsAt": "2026-01-01T00:00:00Z", "fingerprint": "f1"}
    r = client.post("/alerts", json={"version": "4", "status": "firing", "alerts": [alert,
                                     {**alert, "labels": {"alertname": "Other"}, "fingerprint": "f2"}]})
    assert r.status_code == 200
    assert [s["labels"]["model_version"] for s in seen] == ["3"]
    assert 'taxi_alert_hook_failures_total{alertname="Other"} 1.0' in client.get("/metrics").text
    assert len(client.get("/alerts", params={"since": "1h"}).json()["alerts"]) == 2
    name, fn = receiver.load_hook("X=taxi_mlops.observability.logview:parse_duration")
    assert name == "X" and fn("2m") == 120


@pytest.mark.slow
def test_prometheus_rule_fires_through_alertmanager_to_receiver(monitoring_stack):
    """Nothing listens on the gateway's port: TaxiComponentDown (up == 0 for 30s) must travel
    Prometheus -> Alertmanager -> receiver."""
    settings, _ = monitoring_stack
    deadline = 90

    def fired():
        return [a for a in _history(settings, "TaxiComponentDown", "firing") if a["labels"].get("job") == "gateway"]

    assert wait_for(fired, timeout_s=deadline, interval_s=1.0), "TaxiComponentDown never reached the receiver"
    rec = fired()[0]
    assert rec["severity"] == "critical" and rec["labels"]["component"] == "gateway"
    assert "taxi-mlops status" in rec["annotations"]["description"]
    details = monitoring.prometheus_service(settings).details()
    # up: prometheus, alertmanager, pushgateway, alert_receiver; down: every target not started
    # here, except the model server: never started, it has no target (nothing to alert on)
    listed = len(prometheus.scrape_targets(settings)) - settings.model_server_replicas
    assert details["targets"] == f"4/{listed} up", details
    assert "model_server" not in details["down"]
    assert "gateway" in details["down"]
    assert monitoring.alertmanager_service(settings).details()["firing"] >= 1


def _push_pipeline(settings, success: int) -> None:
    """What the training pipeline pushes (job="taxi_pipeline"), through the real Pushgateway."""
    from prometheus_client import CollectorRegistry, Gauge, push_to_gateway

    reg = CollectorRegistry()
    Gauge("taxi_pipeline_last_run_success", "1 if the last run succeeded", registry=reg).set(success)
    Gauge("taxi_pipeline_last_run_timestamp_seconds", "end of the last run", registry=reg).set(time.time())
    Gauge("taxi_pipeline_run_duration_seconds", "last run", registry=reg).set(85.5)
    comp = Gauge("taxi_pipeline_component_duration_seconds", "per component", ["component"], registry=reg)
    for name, secs in (("Transform", 21.0), ("Trainer", 24.7), ("Evaluator", 13.5)):
        comp.labels(name).set(secs)
    metric = Gauge("taxi_pipeline_eval_metric", "eval metrics", ["metric"], registry=reg)
    for name, value in (("binary_accuracy", 0.885), ("auc", 0.944)):
        metric.labels(name).set(value)
    push_to_gateway(settings.pushgateway_url.split("://", 1)[1], job="taxi_pipeline", registry=reg)


def test_failed_pipeline_run_alerts_through_prometheus(monitoring_stack):
    """Pushgateway -> Prometheus (honor_labels) -> rule TaxiPipelineRunFailed (no `for`) ->
    Alertmanager -> receiver, then resolved when a run succeeds."""
    settings, _ = monitoring_stack
    _push_pipeline(settings, success=0)

    def fired():
        return _history(settings, "TaxiPipelineRunFailed", "firing")

    assert wait_for(fired, timeout_s=20, interval_s=0.5), "TaxiPipelineRunFailed never reached the receiver"
    rec = fired()[0]
    assert rec["labels"]["job"] == "taxi_pipeline" and rec["severity"] == "warning"
    _push_pipeline(settings, success=1)
    assert wait_for(lambda: _history(settings, "TaxiPipelineRunFailed", "resolved"), timeout_s=20, interval_s=0.5)


def test_parse_since():
    assert receiver.parse_since("10m", now=1000.0) == 400.0
    assert receiver.parse_since("1790000000") == 1790000000.0  # epoch seconds
    assert receiver.parse_since("2026-11-27T20:00:00Z") == datetime(2026, 11, 27, 20, tzinfo=timezone.utc).timestamp()
    assert receiver.parse_since(None) is None
    with pytest.raises(ValueError):
        receiver.parse_since("yesterday")
