"""The gateway's contract: 4xx naming the field for bad input, 503 when a dependency is down."""

import time

import httpx
import pytest

from taxi_mlops.stack import services

pytestmark = pytest.mark.slow


def post(stack, body=None, **kwargs):
    return httpx.post(f"{stack.gateway_url}/predict", json=body, timeout=10, **kwargs)


@pytest.mark.parametrize("change,field", [
    ({"trip_miles": None}, "trip_miles"),            # missing (null for a required number)
    ({"fare": "twelve"}, "fare"),                    # wrong type
    ({"trip_miles": -1.0}, "trip_miles"),            # negative miles
    ({"trip_start_hour": 24}, "trip_start_hour"),    # hour 24
    ({"trip_start_day": 0}, "trip_start_day"),
    ({"pickup_community_area": 78}, "pickup_community_area"),
    ({"payment_type": ""}, "payment_type"),
    ({"tip": 3.0}, "tip"),                           # unknown field: the label is not an input
])
def test_invalid_field_is_422_naming_it(stack, trip, change, field):
    body = {**trip, **change}
    if change.get("trip_miles", 0) is None:
        del body["trip_miles"]
    r = post(stack, body)
    assert r.status_code == 422, r.text
    assert field in [e["field"] for e in r.json()["detail"]]


def test_not_json_is_422_naming_the_body(stack):
    r = httpx.post(f"{stack.gateway_url}/predict", content=b"{not json",
                   headers={"content-type": "application/json"}, timeout=10)
    assert r.status_code == 422
    assert r.json()["detail"][0] == {"field": "body", "message": "request body is not valid JSON"}


def test_one_megabyte_body_is_413(stack, trip):
    body = {**trip, "company": "x" * (1024 * 1024)}
    r = post(stack, body)
    assert r.status_code == 413
    assert r.json()["detail"][0]["field"] == "body"


def test_unseen_company_and_area_are_answered_as_out_of_vocabulary(stack, trip):
    r = post(stack, {**trip, "company": "Brand New Cab Co", "pickup_community_area": 77,
                     "dropoff_community_area": None})
    assert r.status_code == 200, r.text
    body = r.json()
    assert 0.0 <= body["tip_probability"] <= 1.0
    assert set(body["defaulted_features"]) >= {"company_trip_count", "company_avg_fare",
                                                "company_tip_rate"}
    assert body["features_used"]["company_trip_count"] == 0.0


def test_missing_optional_fields_are_filled_like_training(stack, trip):
    minimal = {k: trip[k] for k in ("trip_miles", "fare", "trip_start_hour", "trip_start_day",
                                    "trip_start_month", "payment_type")}
    r = post(stack, minimal)
    assert r.status_code == 200, r.text
    used = r.json()["features_used"]
    assert used["pickup_community_area"] == -1 and used["company"] == "UNKNOWN"


def test_health_reports_each_dependency(stack):
    r = httpx.get(f"{stack.gateway_url}/health", timeout=10)
    assert r.status_code == 200
    deps = r.json()["dependencies"]
    assert deps["model_server"]["ok"] and deps["feature_store"]["ok"]
    # ready only once warm: one feature read and one inference per replica were done
    assert deps["warm_up"]["ok"] and deps["warm_up"]["attempts"] >= 1 and "error" not in deps["warm_up"]


def test_model_server_down_gives_503_then_recovers(stack, supervisor, trip, keeper_paused):
    replicas = services.model_server_services(stack)
    for replica in replicas:  # every replica: with one left, the gateway would still answer
        supervisor.kill(replica.name)
    try:
        started = time.monotonic()
        r = post(stack, trip)
        elapsed = time.monotonic() - started
        assert r.status_code == 503
        assert r.json()["dependency"] == "model_server"
        assert "model server" in r.json()["detail"]
        assert elapsed < stack.request_timeout_s + 3
        health = httpx.get(f"{stack.gateway_url}/health", timeout=10)
        assert health.status_code == 503 and not health.json()["dependencies"]["model_server"]["ok"]
    finally:
        for replica in replicas:
            supervisor.start(replica)
    r = post(stack, trip)
    assert r.status_code == 200, r.text


def test_feature_store_down_gives_503_then_recovers(stack, supervisor, trip):
    redis = services.redis_service(stack)
    supervisor.stop("redis")
    try:
        started = time.monotonic()
        r = post(stack, trip)
        assert r.status_code == 503, r.text
        assert r.json()["dependency"] == "feature_store"
        assert time.monotonic() - started < stack.request_timeout_s + 3
    finally:
        supervisor.start(redis)
    r = post(stack, trip)
    assert r.status_code == 200, r.text
    assert r.json()["features_used"]["area_trip_count"] > 0  # Redis kept its data (RDB on stop)


def test_chunked_body_over_the_limit_is_413(stack, trip):
    def chunks():
        yield b'{"company": "'
        for _ in range(64):
            yield b"x" * 16384
        yield b'"}'

    r = httpx.post(f"{stack.gateway_url}/predict", content=chunks(),
                   headers={"content-type": "application/json"}, timeout=10)
    assert r.status_code == 413
    assert r.json()["detail"][0]["field"] == "body"
    assert post(stack, trip).status_code == 200  # the gateway is unharmed
