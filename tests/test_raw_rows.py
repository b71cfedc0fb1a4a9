"""A raw row of the Chicago data set, as published, is a valid request (issue 9.4)."""

from __future__ import annotations

import httpx
import pandas as pd
import pytest

INT_COLUMNS = ("pickup_census_tract", "dropoff_census_tract", "trip_seconds", "trip_start_timestamp",
               "pickup_community_area", "dropoff_community_area", "trip_start_hour",
               "trip_start_day", "trip_start_month")


def raw_rows(csv_path, n: int) -> list[dict]:
    """Rows as a client would send them: every published column, nulls as null, tips dropped."""
    rows = []
    raw = pd.read_csv(csv_path)
    tracts = raw["dropoff_census_tract"].notna()
    half = (n + 1) // 2  # half of them with a census tract (a third of the rows have none)
    picked = pd.concat([raw[tracts].sample(half, random_state=5),
                        raw[~tracts].sample(n - half, random_state=5)])
    for _, r in picked.iterrows():
        row = {k: (None if pd.isna(v) else v) for k, v in r.items()}
        for k in INT_COLUMNS:
            row[k] = None if row[k] is None else int(row[k])
        rows.append(row)
    return rows


def test_raw_rows_are_answered(stack):
    rows = raw_rows(stack.data_csv, 20)
    assert any(r["dropoff_census_tract"] is not None for r in rows)
    for row in rows:
        row.pop("tips")
        r = httpx.post(f"{stack.gateway_url}/predict", json=row, timeout=10)
        assert r.status_code == 200, (row, r.text)
        assert 0.0 <= r.json()["tip_probability"] <= 1.0


def test_time_parts_are_derived_from_the_timestamp(stack):
    row = raw_rows(stack.data_csv, 1)[0]
    row.pop("tips")
    full = httpx.post(f"{stack.gateway_url}/predict", json=row, timeout=10).json()
    short = {k: v for k, v in row.items()
             if k not in ("trip_start_hour", "trip_start_day", "trip_start_month")}
    derived = httpx.post(f"{stack.gateway_url}/predict", json=short, timeout=10)
    assert derived.status_code == 200, derived.text
    for name in ("trip_start_hour", "trip_start_day", "trip_start_month"):
        assert derived.json()["features_used"][name] == full["features_used"][name] == row[name]


@pytest.mark.parametrize("field,value", [("tips", 2.5), ("tip_amount", 1.0)])
def test_label_and_unknown_fields_are_refused_by_name(stack, field, value):
    row = raw_rows(stack.data_csv, 1)[0]
    row.pop("tips")
    r = httpx.post(f"{stack.gateway_url}/predict", json={**row, field: value}, timeout=10)
    assert r.status_code == 422, r.text
    fields = [e["field"] for e in r.json()["detail"]]
    assert fields == [field]
    if field == "tips":
        assert "label" in r.json()["detail"][0]["message"]


def test_the_trip_start_is_the_event_time_of_its_prediction_log(stack):
    import json
    import time
    import uuid
    from datetime import datetime, timezone

    from confluent_kafka import Consumer

    from taxi_mlops.streaming import topics

    row = raw_rows(stack.data_csv, 1)[0]
    row.pop("tips")
    r = httpx.post(f"{stack.gateway_url}/predict", json=row, timeout=10)
    assert r.status_code == 200, r.text
    request_id = r.json()["request_id"]
    consumer = Consumer({"bootstrap.servers": stack.kafka_bootstrap_servers,
                         "group.id": f"test-{uuid.uuid4().hex[:6]}", "auto.offset.reset": "earliest",
                         "broker.address.family": "v4", "enable.auto.commit": False})
    consumer.subscribe([topics.PREDICTIONS])
    found, deadline = None, time.monotonic() + 60
    try:
        while found is None and time.monotonic() < deadline:
            for msg in consumer.consume(500, 1.0):
                if not msg.error() and json.loads(msg.value())["request_id"] == request_id:
                    found = json.loads(msg.value())
    finally:
        consumer.close()
    assert found is not None, "prediction log never arrived"
    expected = datetime.fromtimestamp(row["trip_start_timestamp"], timezone.utc)
    assert datetime.fromisoformat(found["event_time"]) == expected
