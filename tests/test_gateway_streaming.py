"""The gateway on the streaming path: realtime features in, prediction logs out."""

import json
import time
import uuid
from datetime import datetime, timezone

import httpx
import pytest
from confluent_kafka import Consumer, Producer

from taxi_mlops.stack import services
from taxi_mlops.stack.process import wait_for
from taxi_mlops.streaming import clients, events, topics

pytestmark = pytest.mark.slow


def _trip_event(area: int) -> events.TripEventV1:
    return events.TripEventV1(
        trip_id=f"gw-{uuid.uuid4().hex[:10]}", event_time=datetime.now(timezone.utc),
        pickup_community_area=area, company="Flash Cab", fare=11.0, trip_miles=2.0,
        trip_seconds=600, payment_type="Credit Card", trip_start_hour=10, trip_start_day=3,
        trip_start_month=5)


def _predict(stack, trip):
    return httpx.post(f"{stack.gateway_url}/predict", json=trip, timeout=10)


def test_fresh_trip_event_reaches_the_gateways_features(stack, trip):
    area = 41
    before = _predict(stack, {**trip, "pickup_community_area": area}).json()["features_used"]
    producer = Producer(clients.producer_config(stack.kafka_bootstrap_servers, "test-gw"))
    sent = time.monotonic()
    for _ in range(3):
        event = _trip_event(area)
        producer.produce(topics.TRIPS, key=str(area).encode(), value=event.to_bytes())
    assert producer.flush(10) == 0

    def seen():
        used = _predict(stack, {**trip, "pickup_community_area": area}).json()["features_used"]
        return used["area_trips_15m"] >= before["area_trips_15m"] + 3

    assert wait_for(seen, 60, 0.1), "realtime features never reached the gateway"
    print(f"produce -> visible in /predict: {time.monotonic() - sent:.2f}s")


def test_broker_down_predictions_still_served_and_logs_arrive_after(stack, supervisor, trip):
    kafka = next(s for s in services.all_services(stack) if s.name == "kafka")
    supervisor.stop("kafka", timeout_s=30)
    try:
        ids = []
        # One keep-alive connection: one gateway instance answers all of it, /health included
        # (each instance has its own producer buffer).
        with httpx.Client(base_url=stack.gateway_url, timeout=10) as client:
            for i in range(5):
                r = client.post("/predict", json={**trip, "trip_id": f"broker-down-{i}"})
                assert r.status_code == 200, r.text
                ids.append(r.json()["request_id"])
            health = client.get("/health").json()
        assert health["prediction_log"]["buffered"] >= 5
    finally:
        supervisor.start(kafka)

    consumer = Consumer({"bootstrap.servers": stack.kafka_bootstrap_servers,
                         "group.id": f"test-{uuid.uuid4().hex[:6]}", "auto.offset.reset": "earliest",
                         "broker.address.family": "v4", "enable.auto.commit": False})
    consumer.subscribe([topics.PREDICTIONS])
    found, deadline = {}, time.monotonic() + 120
    try:
        while len(found) < len(ids) and time.monotonic() < deadline:
            for msg in consumer.consume(500, 1.0):
                if msg.error():
                    continue
                log = json.loads(msg.value())
                if log["request_id"] in ids:
                    found[log["request_id"]] = log
    finally:
        consumer.close()
    assert sorted(found) == sorted(ids)
    sample = found[ids[0]]
    assert sample["model_name"] == stack.model_name and sample["model_version"]
    assert "area_trips_15m" in sample["features"] and sample["trip_id"] == "broker-down-0"


def test_prediction_logs_are_valid_events(stack, trip):
    """Every served prediction is logged, none dead-lettered by the gateway's own schema."""
    with httpx.Client(base_url=stack.gateway_url, timeout=10) as client:  # one instance
        r = client.post("/predict", json=trip)
        assert r.status_code == 200
        counters = client.get("/health").json()["prediction_log"]
    assert counters["logged"] >= 1 and counters["invalid"] == 0
