"""The data-quality worker on the session stack: trips checked against the champion's
training schema (found through MLflow and ML Metadata), violations counted in /metrics and
published on taxi.data.quality, clean trips adding none."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from taxi_mlops.features import tables
from taxi_mlops.observability import prometheus
from taxi_mlops.stack.process import wait_for
from taxi_mlops.streaming import clients, events, replay, status, topics
from taxi_mlops.streaming.quality import NAME

pytestmark = pytest.mark.slow


def scrape(settings) -> dict[tuple[str, tuple], float]:
    text = httpx.get(f"http://{settings.host}:{settings.quality_metrics_port}/metrics", timeout=5).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def read_quality_records(settings, until, timeout_s: float = 60.0) -> list[dict]:
    """taxi.data.quality from the start until ``until(records)`` holds."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(clients.consumer_config(settings.kafka_bootstrap_servers, "test-dq",
                                                f"test-dq-{uuid.uuid4().hex[:8]}"))
    consumer.assign([TopicPartition(topics.DATA_QUALITY, p, 0)
                     for p in range(topics.partition_count(settings.kafka_bootstrap_servers, topics.DATA_QUALITY))])
    records: list[dict] = []

    def more() -> bool:
        for msg in consumer.consume(500, 0.5):
            if msg.error() is None:
                records.append(events.decode(topics.DATA_QUALITY, msg.value()).model_dump(mode="json"))
        return until(records)

    try:
        assert wait_for(more, timeout_s, 0.0), f"taxi.data.quality never had what was expected ({len(records)} read)"
    finally:
        consumer.close()
    return records


@pytest.fixture(scope="module")
def checked_stack(observed_stack):
    """The session's replayed trips all checked and its undecodable event dead-lettered (it
    may sit in another partition than the last trips), so later deltas are ours alone."""
    settings = observed_stack

    def caught_up() -> bool:
        samples = scrape(settings)
        return value(samples, "taxi_data_quality_events_checked_total") >= 400 and \
            value(samples, "taxi_data_quality_dead_lettered_total", reason="json") >= 1

    assert wait_for(caught_up, 90, 0.5), status.read(settings, NAME)
    return settings


def test_reference_is_the_champions_schemagen_schema_with_full_coverage(checked_stack, champion):
    settings = checked_stack
    samples = scrape(settings)
    assert value(samples, "taxi_data_quality_coverage_ratio") == 1.0
    assert value(samples, "taxi_data_quality_reference_info", model_version=champion.version) == 1.0
    ref = status.read(settings, NAME)["reference"]
    assert ref["model_version"] == champion.version and ref["tfx_model_uri"] == champion.tfx_model_uri
    assert "/SchemaGen/schema/" in ref["schema_uri"] and "/StatisticsGen/statistics/" in ref["statistics_uri"]
    assert ref["coverage"] == 1.0 and ref["unaccounted"] == []
    # The undecodable event observed_stack sends is dead-lettered here too.
    assert value(samples, "taxi_data_quality_dead_lettered_total", reason="json") >= 1
    # Prometheus scrapes the worker (job data_quality).
    assert wait_for(lambda: bool(prometheus.query(settings, 'taxi_data_quality_coverage_ratio{job="data_quality"} == 1')),
                    30, 1.0)


def test_schema_violations_are_counted_and_published_clean_trips_are_not(checked_stack):
    settings = checked_stack
    row = tables.load_trips(settings.data_csv).iloc[0].to_dict()
    now = datetime.now(timezone.utc)
    clean = replay.trip_event({**row, "trip_id": f"dq-clean-{uuid.uuid4().hex[:8]}"}, now)
    bad = json.loads(replay.trip_event({**row, "trip_id": f"dq-bad-{uuid.uuid4().hex[:8]}"}, now).to_bytes())
    bad.update(payment_type="Bitcoin", fare=5000.0)
    del bad["company"]  # required by the schema (presence 1.0); the event model would default it
    assert events.decode(topics.TRIPS, json.dumps(bad).encode())  # it decodes: not a dead letter

    expected = {("payment_type", "unseen_category"), ("company", "missing"), ("fare", "out_of_range")}
    before = scrape(settings)
    producer = events.EventProducer(settings.kafka_bootstrap_servers, "test-data-quality")
    key = str(clean.pickup_community_area).encode()  # one partition: the clean trip is checked first
    producer.produce_raw(topics.TRIPS, clean.to_bytes(), key)
    producer.produce_raw(topics.TRIPS, json.dumps(bad).encode(), key)
    producer.flush_or_raise(30)

    def counted() -> bool:
        now = scrape(settings)
        return all(value(now, "taxi_data_quality_violations_total", feature=f, check=c)
                   >= value(before, "taxi_data_quality_violations_total", feature=f, check=c) + 1
                   for f, c in expected)

    assert wait_for(counted, 60, 0.5), status.read(settings, NAME)
    after = scrape(settings)
    assert value(after, "taxi_data_quality_events_checked_total") >= \
        value(before, "taxi_data_quality_events_checked_total") + 2
    # The clean trip added no violation: exactly one more violating event, three more violations.
    assert value(after, "taxi_data_quality_events_violating_total") == \
        value(before, "taxi_data_quality_events_violating_total") + 1
    assert sum(v for (n, _), v in after.items() if n == "taxi_data_quality_violations_total") == \
        sum(v for (n, _), v in before.items() if n == "taxi_data_quality_violations_total") + 3

    records = read_quality_records(settings, lambda rs: {(r["feature"], r["check"]) for r in rs
                                                          if r["trip_id"] == bad["trip_id"]} >= expected)
    mine = [r for r in records if r["trip_id"] == bad["trip_id"]]
    assert {(r["feature"], r["check"]) for r in mine} == expected
    fare = next(r for r in mine if r["feature"] == "fare")
    assert fare["kind"] == "violation" and not fare["passed"] and fare["details"]["value"] == 5000.0
    assert "statistics" in fare["details"]["expected"] and fare["reference"]["schema_uri"]
    assert next(r for r in mine if r["feature"] == "payment_type")["details"]["value"] == "Bitcoin"
    assert not [r for r in records if r["trip_id"] == clean.trip_id]

    # The window holding the bad trip is summarised (quality_window_s=5 in the test settings).
    summaries = read_quality_records(settings, lambda rs: any(
        r["kind"] == "window_summary" and {"feature": "fare", "check": "out_of_range", "count": 1}
        in r["details"]["violations"] for r in rs))
    summary = next(r for r in summaries if r["kind"] == "window_summary" and not r["passed"])
    assert summary["check"] == "window_summary" and summary["details"]["coverage"] == 1.0


def test_worker_logs_json(checked_stack):
    lines = (checked_stack.logs_dir / f"{NAME}.log").read_text().splitlines()
    entries = [json.loads(line) for line in lines if line.startswith("{")]
    assert entries and all(e["component"] == NAME for e in entries if e.get("logger", "").startswith("taxi_mlops.streaming"))
    assert any("data-quality reference" in e["message"] for e in entries)
