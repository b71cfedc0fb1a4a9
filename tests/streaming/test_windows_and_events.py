"""Window state and event schemas on their own: no broker needed."""

from __future__ import annotations

import json
import random
from datetime import datetime, timedelta, timezone

import pytest

from taxi_mlops.streaming import events, topics
from taxi_mlops.features import realtime as rt
from taxi_mlops.streaming.windows import AreaWindow, to_us

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)


def _batch(trips, labels):
    latest = max([t for _, t, _ in trips] + [t for _, t, _ in labels])
    hour = [(f, t) for _, t, f in trips if latest - rt.STATS_WINDOW < t <= latest]
    quarter = [t for _, t in hour if t > latest - rt.COUNT_WINDOW]
    labs = [b for _, t, b in labels if latest - rt.STATS_WINDOW < t <= latest]
    return {rt.TRIPS_15M: float(len(quarter)),
            rt.AVG_FARE_1H: sum(f for f, _ in hour) / len(hour) if hour else 0.0,
            rt.TIP_RATE_1H: sum(labs) / len(labs) if labs else 0.0}


def test_window_is_exact_in_any_order_and_with_duplicates():
    rng = random.Random(7)
    trips = [(f"t{i}", T0 + timedelta(minutes=rng.uniform(0, 180)), round(rng.uniform(3, 60), 2))
             for i in range(300)]
    labels = [(tid, t + timedelta(minutes=rng.uniform(1, 40)), rng.random() < 0.4) for tid, t, _ in trips]
    expected = _batch(trips, labels)
    stream = [("trip", e) for e in trips] + [("label", e) for e in labels]
    for _ in range(5):
        order = stream + rng.sample(stream, 50)  # redeliveries
        rng.shuffle(order)
        w = AreaWindow()
        for offset, (kind, (tid, t, value)) in enumerate(order):
            if kind == "trip":
                w.add_trip(tid, to_us(t), value, offset)
            else:
                w.add_label(tid, to_us(t), value, offset)
        got = w.features()
        assert got[rt.TRIPS_15M] == expected[rt.TRIPS_15M]
        assert got[rt.AVG_FARE_1H] == pytest.approx(expected[rt.AVG_FARE_1H], abs=1e-9)
        assert got[rt.TIP_RATE_1H] == pytest.approx(expected[rt.TIP_RATE_1H], abs=1e-12)


def test_window_reports_its_lowest_held_offsets():
    w = AreaWindow()
    w.add_trip("a", to_us(T0), 10.0, offset=5)
    w.add_trip("b", to_us(T0 + timedelta(minutes=30)), 10.0, offset=9)
    assert w.min_offsets() == (5, None)
    w.add_trip("c", to_us(T0 + timedelta(minutes=61)), 10.0, offset=12)  # evicts "a"
    assert w.min_offsets() == (9, None)


def test_events_round_trip_and_export_json_schema(tmp_path):
    trip = events.TripEvent(trip_id="x", event_time=T0, pickup_community_area=8, fare=9.5,
                            trip_start_hour=12, trip_start_day=4, trip_start_month=5)
    assert events.decode(topics.TRIPS, trip.to_bytes()) == trip
    assert json.loads(trip.to_bytes())["schema_version"] == 1
    written = events.export_json_schemas(tmp_path)
    assert {p.name for p in written} >= {"TripEvent.v1.schema.json", "PredictionLog.v1.schema.json",
                                         "DeadLetter.v1.schema.json"}
    schema = json.loads((tmp_path / "TripEvent.v1.schema.json").read_text())
    assert "fare" in schema["required"] and schema["$id"].endswith("/v1")


@pytest.mark.parametrize("raw,kind,fragment", [
    (b"\xff\xfe not json", "malformed", "not JSON"),
    (b"[1, 2]", "malformed", "JSON object"),
    (b'{"trip_id": "x"}', "schema", "schema_version"),
    (b'{"schema_version": 7, "trip_id": "x"}', "unknown_version", "schema_version 7"),
    (b'{"schema_version": 1, "trip_id": "x", "event_time": "2024-01-01T00:00:00Z", '
     b'"pickup_community_area": 3, "fare": -1, "trip_start_hour": 1, "trip_start_day": 1, '
     b'"trip_start_month": 1}', "schema", "fare"),
    (b'{"schema_version": 1, "trip_id": "x", "event_time": "2024-01-01T00:00:00", '
     b'"pickup_community_area": 3, "fare": 1, "trip_start_hour": 1, "trip_start_day": 1, '
     b'"trip_start_month": 1}', "schema", "timezone"),
])
def test_decode_raises_a_typed_error_with_the_reason(raw, kind, fragment):
    with pytest.raises(events.EventDecodeError) as info:
        events.decode(topics.TRIPS, raw)
    assert info.value.kind == kind
    assert fragment in info.value.reason
    letter = events.dead_letter(topics.TRIPS, raw, info.value, source="test", partition=1, offset=2)
    assert letter.reason == info.value.reason and letter.original_topic == topics.TRIPS
    assert letter.expected_schema == "TripEvent"
