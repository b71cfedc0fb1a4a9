"""Observability on the whole stack (issue 6): every target scraped, a real crash alerted
end to end, `status`, `alerts` and `logs` on real data."""

from __future__ import annotations

import time

import httpx
import pytest

from taxi_mlops import cli
from taxi_mlops.observability import alerts, logview, prometheus
from taxi_mlops.stack import services
from taxi_mlops.stack.process import wait_for

JOBS = {"prometheus", "alertmanager", "pushgateway", "alert_receiver", "gateway", "model_server",
        "mlflow", "kafka", "stream_processor", "label_join", "data_quality"}


def test_prometheus_scrapes_every_component_and_all_are_up(observed_stack):
    def all_up():
        targets = prometheus.targets_health(observed_stack)
        return {t["job"] for t in targets} >= JOBS and all(t["health"] == "up" for t in targets)

    assert wait_for(all_up, 30, 1.0), prometheus.targets_health(observed_stack)


def test_status_shows_prometheus_and_alertmanager(observed_stack):
    status = cli.stack_status(observed_stack)["components"]
    assert status["prometheus"]["url"] == observed_stack.prometheus_url and status["prometheus"]["healthy"]
    assert status["prometheus"]["targets"].endswith("up")
    assert status["alertmanager"]["url"] == observed_stack.alertmanager_url
    assert status["pushgateway"]["healthy"] and status["alert_receiver"]["healthy"]


def test_one_request_is_followed_across_components_in_the_logs(observed_stack, trip):
    r = httpx.post(f"{observed_stack.gateway_url}/predict", json=trip, timeout=10,
                   headers={"X-Request-ID": "trace-me-0042"})
    assert r.status_code == 200 and r.headers["x-request-id"] == "trace-me-0042"

    def traced():  # the replica that answered logs as model_server or model_server-<i>
        return {rec["component"].split("-")[0]
                for rec in logview.merge(observed_stack, request_id="trace-me-0042")}

    assert wait_for(lambda: {"gateway", "model_server"} <= traced(), 10, 0.2), traced()
    records = list(logview.merge(observed_stack, request_id="trace-me-0042"))
    times = [rec["t"] for rec in records]
    assert times == sorted(times)
    assert all(rec.get("model_version") == r.json()["model"]["version"] for rec in records
               if rec["component"].startswith("model_server"))


@pytest.mark.slow
def test_a_killed_model_server_fires_component_down_through_alertmanager_to_our_receiver(
        observed_stack, supervisor, keeper_paused):
    """kill -9 -> `up == 0` for 30 s -> Alertmanager -> webhook -> receiver -> `alerts`."""
    settings = observed_stack
    killed_at = time.time()  # an earlier test's kill may have fired (and resolved) one already
    supervisor.kill("model_server")
    try:
        def received() -> list[dict]:
            body = httpx.get(f"{settings.alert_receiver_url}/alerts", timeout=5,
                             params={"status": "firing", "alertname": "TaxiComponentDown",
                                     "since": str(killed_at)}).json()
            return [a for a in body["alerts"] if a["labels"].get("job") == "model_server"]

        assert wait_for(lambda: bool(received()), 120, 1.0), "no TaxiComponentDown for model_server"
        alert = received()[0]
        assert alert["severity"] == "critical" and "model_server" in alert["summary"]
        firing = alerts.firing(settings)
        assert any(a["labels"]["alertname"] == "TaxiComponentDown"
                   and a["labels"].get("job") == "model_server" for a in firing), firing
    finally:
        supervisor.start(services.model_server_service(settings))
    r = httpx.post(f"{settings.gateway_url}/predict", json={"trip_miles": 1, "fare": 5,
                   "trip_start_hour": 3, "trip_start_day": 2, "trip_start_month": 4,
                   "payment_type": "Cash"}, timeout=10)
    assert r.status_code == 200, r.text
