"""The gateway's contract: 4xx naming the field for bad input, 503 when a dependency is down."""

import time

import httpx
import pytest

from taxi_mlops.stack import services
from taxi_mlops.stack.process import wait_for

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


def _requests_total(stack) -> float:
    text = httpx.get(f"{stack.gateway_url}/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("taxi_gateway_requests_total{"))


def test_the_standby_gateway_takes_over_the_port_when_the_active_one_dies(stack, supervisor, trip,
                                                                         keeper_paused):
    """Two gateway processes share the port: the first to listen takes every connection, the
    other waits warm (healthy on its own socket). kill -9 of the active one, and the standby
    answers every request on a new connection; /metrics keeps summing the dead one's counters;
    restarted, the old active one comes back as the standby."""
    instances = services.gateway_services(stack)
    assert len(instances) >= 2, "the stack runs one gateway instance: no redundancy"
    pids = {i.name: supervisor.pid(i.name) for i in instances}
    assert all(services.gateway_instance_up(stack, i.name) for i in instances)
    seen = {httpx.get(f"{stack.gateway_url}/health/live", timeout=5).json()["pid"] for _ in range(40)}
    assert len(seen) == 1 and seen <= set(pids.values()), f"connections not all steered to one: {seen}"
    victim = services.active_gateway_name(stack)
    survivor = next(name for name in pids if name != victim)
    before = _requests_total(stack)
    supervisor.kill(victim)
    try:
        answers = [post(stack, {**trip, "trip_id": f"one-instance-{i}"}) for i in range(40)]
        assert [r.status_code for r in answers] == [200] * 40, \
            [r.text for r in answers if r.status_code != 200]
        live = {httpx.get(f"{stack.gateway_url}/health/live", timeout=5).json()["pid"] for _ in range(10)}
        assert live == {pids[survivor]}, live
        assert _requests_total(stack) >= before + 40, "counters of the killed instance left the sum"
    finally:
        supervisor.start(next(i for i in instances if i.name == victim))
    assert supervisor.pid(victim) not in (None, pids[victim])
    assert services.gateway_instance_up(stack, victim) and services.gateway_instance_up(stack, survivor)
    assert services.active_gateway_name(stack) == survivor  # the restarted one waits as standby


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


def test_feature_store_down_answers_degraded_then_recovers(stack, supervisor, trip):
    """Redis down: /predict still answers, from the last prior row read, marked degraded (and
    /health says the store is down); once Redis is back, answers are normal again."""
    from taxi_mlops.gateway.features import DEFAULTS

    redis = services.redis_service(stack)
    supervisor.stop("redis")
    try:
        for i in range(6):  # every answer degraded, none a timeout
            started = time.monotonic()
            r = post(stack, {**trip, "trip_id": f"no-redis-{i}"})
            assert time.monotonic() - started < stack.request_timeout_s + 3  # never a hang
            assert r.status_code == 200, r.text
            assert r.json()["degraded"] == ["feature_store"], r.json()
            assert sorted(r.json()["defaulted_features"]) == sorted(DEFAULTS)
        health = httpx.get(f"{stack.gateway_url}/health", timeout=10)
        assert health.status_code == 503 and not health.json()["dependencies"]["feature_store"]["ok"]
    finally:
        supervisor.start(redis)

    def normal_again() -> bool:
        answers = [post(stack, trip).json() for _ in range(6)]
        return all(a.get("degraded") == [] for a in answers)

    assert wait_for(normal_again, 30, 0.5), "still degraded 30 s after Redis came back"
    r = post(stack, trip)
    assert r.status_code == 200 and r.json()["features_used"]["area_trip_count"] > 0  # Redis kept its data


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


def test_the_gateway_s_async_feature_read_equals_feast_s_own_on_the_live_store(stack):
    """``alookup_many`` reads each view from Feast's online store itself; it must answer as
    ``FeatureStore.get_online_features`` does: batch views, the realtime view (a row pushed
    here for an area no trip uses), unknown entities falling back to the prior row."""
    import asyncio
    from datetime import datetime, timezone

    import pandas as pd
    from feast.data_source import PushMode

    from taxi_mlops.features import realtime
    from taxi_mlops.gateway.features import FeatureLookup

    lookup = FeatureLookup(stack)
    now = datetime.now(timezone.utc)
    lookup._store.push(realtime.PUSH_SOURCE, pd.DataFrame({
        realtime.ENTITY_KEY: [4242], realtime.TIMESTAMP_FIELD: [now], realtime.CREATED_FIELD: [now],
        realtime.TRIPS_15M: [7.0], realtime.AVG_FARE_1H: [12.5], realtime.TIP_RATE_1H: [0.25]}),
        to=PushMode.ONLINE)
    keys = [(8, "Taxi Affiliation Services"), (4242, "Flash Cab"), (-1, "UNKNOWN"), (4242, "no such company"),
            (77, "Flash Cab")]

    async def read():
        return await lookup.alookup_many(keys)

    direct, facade = asyncio.run(read()), lookup.lookup_many(keys)
    assert direct == facade
    values, defaulted = direct[1]
    assert [values[name] for name in realtime.REALTIME_FEATURES] == [7.0, 12.5, 0.25]
    assert not set(defaulted) & set(realtime.REALTIME_FEATURES)
    assert "company_tip_rate" in direct[3][1]  # an unknown company: defaulted, to the prior row
    assert not direct[0][1] or set(direct[0][1]) <= set(realtime.REALTIME_FEATURES)  # a known pair
