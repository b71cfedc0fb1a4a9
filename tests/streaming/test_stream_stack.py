"""The streaming path against a real Kafka broker, Redis and Feast: freshness, dead letters,
crash recovery of the processor, a broker restart under load, buffered prediction logs, and
the metrics of the processor, the label join and the broker (JMX exporter)."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import datetime, timedelta, timezone

import json

import pandas as pd
import pytest
from stream_helpers import (PROCESSOR_GROUP, batch_features, caught_up, decode_json, end_offsets, has,
                            online_features, read_topic, scrape, total, trip, wait_caught_up)

from taxi_mlops.stack.process import wait_for
from taxi_mlops.stack.streaming import kafka_service, label_join_service
from taxi_mlops.streaming import broker, events, prediction_log, processor, replay, topics
from taxi_mlops.features import realtime as rt

pytestmark = pytest.mark.slow  # a real broker, Redis and processor per session


def _online(feast_store, area: int) -> dict:
    return online_features(feast_store, [area]).iloc[0].to_dict()


def test_trip_event_becomes_visible_in_feast_online(kafka, feast_store, stream_processor, stream_settings):
    area = 9000 + uuid.uuid4().int % 900
    producer = events.EventProducer(kafka, "test-freshness")
    sent_at = datetime.now(timezone.utc)
    assert producer.send(topics.TRIPS, trip(f"fresh-{uuid.uuid4().hex[:8]}", area, sent_at, fare=12.5),
                         key=str(area))
    producer.flush_or_raise(10)
    assert wait_for(lambda: _online(feast_store, area)[rt.TRIPS_15M] == 1.0, 30, 0.01), \
        "the trip never reached the online store"
    freshness = (datetime.now(timezone.utc) - sent_at).total_seconds()
    print(f"\nfreshness (produce -> Feast online read): {freshness * 1000:.0f} ms")
    assert freshness < 10
    assert _online(feast_store, area)[rt.AVG_FARE_1H] == pytest.approx(12.5)

    # The label at trip end moves the tip rate.
    label = events.LabelEvent(trip_id="label-" + uuid.uuid4().hex[:6], event_time=sent_at + timedelta(seconds=1),
                              pickup_community_area=area, tips=5.0, fare=12.5, big_tipper=True)
    producer.send(topics.LABELS, label, key=str(area))
    producer.flush_or_raise(10)
    assert wait_for(lambda: _online(feast_store, area)[rt.TIP_RATE_1H] == 1.0, 30, 0.02)

    # The same rows reach taxi.features.realtime and, after the commit, the offline store,
    # where a point-in-time join finds them.
    published = [decode_json(m) for m in read_topic(kafka, topics.FEATURES)]
    assert any(p["pickup_community_area"] == area for p in published)
    entity = pd.DataFrame({rt.ENTITY_KEY: [area], "event_timestamp": [sent_at + timedelta(seconds=5)]})

    def offline_has_row() -> bool:
        frame = feast_store.get_historical_features(
            entity_df=entity, features=[f"{rt.REALTIME_VIEW}:{n}" for n in rt.REALTIME_FEATURES]).to_df()
        return len(frame) == 1 and frame[rt.TRIPS_15M].iloc[0] == 1.0
    assert wait_for(offline_has_row, 30, 0.5), "no offline row for point-in-time joins"


def test_malformed_and_invalid_events_are_dead_lettered(kafka, stream_processor):
    start = end_offsets(kafka, topics.DEADLETTER)
    producer = events.EventProducer(kafka, "test-deadletter")
    marker = uuid.uuid4().hex[:8]
    bad = {
        f"not json {marker}".encode(): "malformed",
        f'{{"schema_version": 1, "trip_id": "{marker}-missing"}}'.encode(): "schema",
        f'{{"schema_version": 42, "trip_id": "{marker}-future"}}'.encode(): "unknown_version",
    }
    for raw in bad:
        producer.produce_raw(topics.TRIPS, raw, key=b"1")
    label = (f'{{"schema_version": 1, "trip_id": "{marker}-neg", "event_time": "2024-01-01T00:00:00Z", '
             f'"pickup_community_area": 1, "tips": -3, "fare": 5, "big_tipper": false}}').encode()
    producer.produce_raw(topics.LABELS, label, key=b"1")
    bad[label] = "schema"
    # The validating producer refuses to send an invalid event and dead-letters it itself.
    assert producer.send(topics.TRIPS, {"schema_version": 1, "trip_id": f"{marker}-producer"}) is False
    producer.flush_or_raise(10)

    def letters() -> list[dict]:
        return [decode_json(m) for m in read_topic(kafka, topics.DEADLETTER, start)]
    assert wait_for(lambda: sum(marker in d["payload"] for d in letters()) >= len(bad) + 1, 30, 0.5)
    found = {d["payload"].encode(): d for d in letters() if marker in d["payload"]}
    for raw, kind in bad.items():
        letter = found[raw]
        assert letter["error_kind"] == kind and letter["reason"], letter
        assert letter["source"] == processor.service_name(0)
        assert letter["offset"] is not None and letter["original_topic"] in (topics.TRIPS, topics.LABELS)
    by_producer = [d for d in found.values() if d["source"] == "producer"]
    assert by_producer and "event_time" in by_producer[0]["reason"]
    assert "tips" in found[label]["reason"]


def _processor_metrics_url(settings) -> str:
    return f"http://{settings.host}:{settings.processor_metrics_port}/metrics"


def test_processor_metrics_move_with_a_replay(kafka, stream_processor, stream_settings):
    url = _processor_metrics_url(stream_settings)
    assert processor.read_status(stream_settings, 0)["metrics"] == url
    before = scrape(url)
    producer = events.EventProducer(kafka, "test-metrics")
    producer.produce_raw(topics.TRIPS, b"not json at all", key=b"3")
    producer.flush_or_raise(10)
    # Retimed to now: the areas' windows move on, so every trip changes its area's features
    # (the same trips at their CSV times are duplicates or too old for the window state).
    replay.replay(stream_settings, speed="max", retime=True, limit=500, progress=lambda _: None)

    seen = {}

    def moved() -> bool:
        now = scrape(url)
        seen.update(commits=total(now, "taxi_stream_commits_total") > total(before, "taxi_stream_commits_total"),
                    dead=total(now, "taxi_stream_events_dead_lettered_total", reason="json")
                    > total(before, "taxi_stream_events_dead_lettered_total", reason="json"),
                    caught_up=caught_up(kafka, PROCESSOR_GROUP))
        return all(seen.values())
    assert wait_for(moved, 90, 0.5), (f"the processor's metrics did not move after the replay: {seen}; "
                                      f"{processor.read_status(stream_settings, 0)}")
    after = scrape(url)
    for name, labels in (("taxi_stream_events_consumed_total", {"topic": topics.TRIPS}),
                         ("taxi_stream_events_consumed_total", {"topic": topics.LABELS}),
                         ("taxi_stream_events_dead_lettered_total", {"topic": topics.TRIPS, "reason": "json"}),
                         ("taxi_stream_freshness_seconds_count", {}),
                         ("taxi_stream_freshness_seconds_sum", {}),
                         ("taxi_stream_push_duration_seconds_count", {}),
                         ("taxi_stream_pushed_rows_total", {}),
                         ("taxi_stream_commits_total", {})):
        assert total(after, name, **labels) > total(before, name, **labels), (name, labels)
    consumed = total(after, "taxi_stream_events_consumed_total") - total(before, "taxi_stream_events_consumed_total")
    assert consumed >= 1001  # 500 trips, 500 labels, the bad one
    # Freshness: each event of a push, message timestamp -> push done; a local replay is fast.
    fresh_n = total(after, "taxi_stream_freshness_seconds_count") - total(before, "taxi_stream_freshness_seconds_count")
    assert fresh_n >= 500
    assert total(after, "taxi_stream_freshness_seconds_bucket", le="+Inf") == total(
        after, "taxi_stream_freshness_seconds_count")
    # Lag per topic and partition: every assigned partition has a series; caught up means 0.
    lags = {dict(lab)["partition"] for (n, lab), _ in after.items()
            if n == "taxi_stream_consumer_lag" and dict(lab)["topic"] == topics.TRIPS}
    assert lags == {str(p) for p in range(topics.partition_count(kafka, topics.TRIPS))}
    assert wait_for(lambda: total(scrape(url), "taxi_stream_consumer_lag") == 0, 30, 0.5)
    # The processor logs JSON lines (observability.logs).
    lines = (stream_settings.logs_dir / f"{stream_processor.name}.log").read_text().splitlines()
    records = [json.loads(line) for line in lines if line.startswith("{")]
    assert any(r["logger"].startswith("taxi_mlops.streaming") for r in records)
    assert all(r["component"] == stream_processor.name and r["ts"].endswith("Z") for r in records)


def test_broker_jmx_exporter_serves_the_kafka_families(kafka, stream_settings):
    url = broker.metrics_url(stream_settings)
    producer = events.EventProducer(kafka, "test-jmx")
    for i in range(20):
        producer.produce_raw(topics.DEADLETTER, b"{}", key=f"k{i}".encode())
    producer.flush_or_raise(10)
    read_topic(kafka, topics.DEADLETTER)  # a fetch: bytes out of the topic

    def ready() -> bool:
        samples = scrape(url)
        return (total(samples, "kafka_server_brokertopicmetrics_messagesin_total", topic=topics.DEADLETTER) >= 20
                and total(samples, "kafka_server_brokertopicmetrics_bytesout_total", topic=topics.DEADLETTER) > 0)
    assert wait_for(ready, 30, 0.5), "the JMX exporter does not show the produced messages"
    samples = scrape(url)
    assert total(samples, "kafka_server_brokertopicmetrics_bytesin_total", topic=topics.DEADLETTER) > 0
    assert has(samples, "kafka_server_replicamanager_underreplicatedpartitions")
    assert total(samples, "kafka_server_replicamanager_underreplicatedpartitions") == 0
    quantiles = {dict(lab)["quantile"] for (n, lab), _ in samples.items()
                 if n == "kafka_network_requestmetrics_totaltimems" and dict(lab)["request"] == "Produce"}
    assert quantiles == {"0.50", "0.99"}
    # The broker logs JSON lines (log4j2 JsonTemplateLayout).
    records = [json.loads(line) for line in (stream_settings.logs_dir / "kafka.log").read_text().splitlines()
               if line.startswith("{")]
    assert any(r["logger"].startswith("kafka.") for r in records)
    assert all(r["component"] == "kafka" for r in records)


def test_processor_killed_mid_replay_recovers_exact_features(kafka, feast_store, stream_processor,
                                                            stream_settings, stream_supervisor):
    """kill -9 the processor while trips stream in; after a restart the online features equal
    a batch recomputation over every event in the topics."""
    sent = []
    result = {}

    def run_replay():
        result.update(replay.replay(stream_settings, speed="max", retime=False, limit=6000,
                                    progress=sent.append, max_rate=3000))
    thread = threading.Thread(target=run_replay)
    thread.start()
    name = stream_processor.name
    # Kill once the processor has committed part of this replay (its state is in memory).
    before = processor.read_status(stream_settings, 0)["processed"]
    assert wait_for(lambda: processor.read_status(stream_settings, 0)["processed"] > before + 3000
                    and len(sent) >= 3, 60, 0.1)
    stream_supervisor.kill(name)
    assert thread.is_alive(), "replay ended before the kill: raise the event count"
    stream_supervisor.start(stream_processor)
    thread.join(timeout=120)
    assert result["delivered"] == result["sent"] == 12000

    wait_caught_up(kafka, PROCESSOR_GROUP, timeout_s=120)
    status = processor.read_status(stream_settings, 0)
    assert status["rebuilt"] > 0, "the restart should have rebuilt window state from the log"
    expected = batch_features(kafka)
    got = online_features(feast_store, expected[rt.ENTITY_KEY].tolist())
    merged = expected.merge(got, on=rt.ENTITY_KEY, suffixes=("_batch", "_online"))
    assert len(merged) == len(expected) > 50
    for name in rt.REALTIME_FEATURES:
        pd.testing.assert_series_equal(merged[f"{name}_online"].astype(float),
                                       merged[f"{name}_batch"].astype(float),
                                       check_names=False, rtol=1e-6, atol=1e-4)


def test_broker_restart_mid_replay_loses_no_acknowledged_event(kafka, stream_settings, stream_supervisor):
    start = {name: end_offsets(kafka, name) for name in (topics.TRIPS, topics.LABELS)}
    progress, result, errors = [], {}, []

    def run_replay():
        try:
            result.update(replay.replay(stream_settings, speed="max", limit=5000, progress=progress.append,
                                        max_rate=2000, flush_timeout_s=120))
        except Exception as exc:  # reported by the assertion below
            errors.append(exc)
    thread = threading.Thread(target=run_replay)
    thread.start()
    assert wait_for(lambda: len(progress) >= 3, 30, 0.05)  # about 2,000 events in
    stream_supervisor.kill("kafka")  # kill -9: no controlled shutdown
    stream_supervisor.start(kafka_service(stream_settings))
    thread.join(timeout=180)
    assert not errors, errors
    assert result["delivered"] == result["sent"] == 10_000 and result["failed"] == 0

    expected = set(f"trip-{i:06d}" for i in range(15002))  # ids are positional in the CSV
    for name in (topics.TRIPS, topics.LABELS):
        ids = [decode_json(m)["trip_id"] for m in read_topic(kafka, name, start[name])]
        assert len(ids) == 5000, f"{name}: {len(ids)} records for 5000 acknowledged (duplicates or loss)"
        assert len(set(ids)) == 5000 and set(ids) <= expected


def test_prediction_logs_buffered_while_broker_is_down_arrive_after(kafka, stream_settings, stream_supervisor):
    start = end_offsets(kafka, topics.PREDICTIONS)
    stream_supervisor.stop("kafka", timeout_s=30)
    try:
        logger = prediction_log.PredictionLogger(kafka, max_buffer=1000, message_timeout_s=300)
        small = prediction_log.PredictionLogger(kafka, max_buffer=5, message_timeout_s=300)
        ids = [f"req-{uuid.uuid4().hex[:10]}" for _ in range(200)]
        slowest = 0.0
        for i, rid in enumerate(ids):
            entry = events.PredictionLog(request_id=rid, trip_id=f"trip-{i:06d}", features={"fare": 1.0},
                                         model_name="m", model_version="1", model_alias="champion",
                                         tip_probability=0.3, latency_ms=2.0,
                                         timestamp=datetime.now(timezone.utc))
            t0 = time.perf_counter()
            assert logger.log(entry) is True
            slowest = max(slowest, time.perf_counter() - t0)
            small.log(entry)
        assert slowest < 0.05, f"log() blocked for {slowest * 1000:.1f} ms with the broker down"
        assert logger.log({"request_id": "broken"}) is False  # invalid: dead-lettered, not raised
        counts = logger.counters()
        assert counts["buffered"] == 200 and counts["sent"] == 0 and counts["invalid"] == 1
        assert small.counters()["dropped"] == 195 and small.counters()["buffered"] == 5
    finally:
        stream_supervisor.start(kafka_service(stream_settings))
    assert wait_for(lambda: logger.counters()["sent"] == 200, 90, 0.2), logger.counters()
    assert logger.close(10) == 0 and small.close(10) == 0
    assert logger.counters()["delivery_errors"] == 0
    got = {decode_json(m)["request_id"] for m in read_topic(kafka, topics.PREDICTIONS, start)}
    assert set(ids) <= got


SPOOLED = 50


def test_a_killed_loggers_spooled_logs_are_sent_by_the_next_one(kafka, tmp_path):
    """A logger killed with -9 while its logs wait for a broker (here: one that never
    answers) loses none: the next logger on the same spool folder sends them."""
    import signal
    import subprocess
    import sys

    from taxi_mlops.stack.process import free_port
    from taxi_mlops.streaming import spool

    root = tmp_path / "spool"
    ids = [f"spooled-{uuid.uuid4().hex[:10]}" for _ in range(SPOOLED)]
    code = f"""
import os, signal
from datetime import datetime, timezone
from taxi_mlops.streaming import events, prediction_log
logger = prediction_log.PredictionLogger("127.0.0.1:{free_port()}", spool_dir={str(root)!r})
for i, rid in enumerate({ids!r}):
    assert logger.log(events.PredictionLog(request_id=rid, trip_id=f"spooled-trip-{{i}}", features={{"fare": 1.0}},
                      model_name="m", model_version="1", model_alias="champion", tip_probability=0.3,
                      latency_ms=2.0, timestamp=datetime.now(timezone.utc)))
assert logger.counters()["sent"] == 0
os.kill(os.getpid(), signal.SIGKILL)
"""
    killed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    [folder] = list(root.iterdir())
    assert len(spool.unacknowledged(folder)) == SPOOLED

    start = end_offsets(kafka, topics.PREDICTIONS)
    logger = prediction_log.PredictionLogger(kafka, spool_dir=root)
    try:
        assert wait_for(lambda: logger.counters()["recovered"] == SPOOLED, 60, 0.2), logger.counters()
    finally:
        logger.close(10)
    got = [decode_json(m)["request_id"] for m in read_topic(kafka, topics.PREDICTIONS, start)]
    assert sorted(r for r in got if r in set(ids)) == sorted(ids)  # each once
    assert not root.exists() or not list(root.iterdir()), list(root.iterdir())  # nothing left over


def test_label_join_publishes_live_accuracy_per_model_version(kafka, stream_settings, stream_supervisor):
    start = end_offsets(kafka, topics.MODEL_METRICS)
    version = f"v-{uuid.uuid4().hex[:6]}"
    service = label_join_service(stream_settings, window_s=600)
    stream_supervisor.start(service)
    try:
        producer = events.EventProducer(kafka, "test-label-join")
        now = datetime.now(timezone.utc)
        for i in range(10):
            trip_id = f"join-{version}-{i}"
            producer.send(topics.PREDICTIONS, events.PredictionLog(
                request_id=f"r{i}", trip_id=trip_id, model_name="tips", model_version=version,
                model_alias="champion", tip_probability=0.9 if i < 8 else 0.1, latency_ms=1,
                timestamp=now), key=trip_id)
            producer.send(topics.LABELS, events.LabelEvent(
                trip_id=trip_id, event_time=now, pickup_community_area=1, tips=3.0, fare=10.0,
                big_tipper=i < 6), key="1")
        producer.flush_or_raise(10)

        def latest() -> dict | None:
            found = [decode_json(m) for m in read_topic(kafka, topics.MODEL_METRICS, start)]
            found = [f for f in found if f["model_version"] == version]
            return found[-1] if found else None
        assert wait_for(lambda: (latest() or {}).get("n") == 10, 30, 0.3), latest()
        metrics = latest()
        # predictions: 8 x 0.9 then 2 x 0.1; labels: 6 positives then 4 negatives
        assert metrics["accuracy"] == pytest.approx(0.8)
        assert metrics["positive_rate"] == pytest.approx(0.6)
        assert metrics["brier"] == pytest.approx((6 * 0.01 + 2 * 0.81 + 2 * 0.01) / 10)
        assert metrics["model_alias"] == "champion"
        assert service.details()["joined"] >= 10

        # The same figures on the label join's /metrics, per model name, version and alias.
        url = f"http://{stream_settings.host}:{stream_settings.label_join_metrics_port}/metrics"
        series = {"model_name": "tips", "model_version": version, "alias": "champion"}
        assert wait_for(lambda: total(scrape(url), "taxi_live_joined", **series) == 10, 30, 0.3)
        samples = scrape(url)
        assert total(samples, "taxi_live_accuracy", **series) == pytest.approx(0.8)
        assert total(samples, "taxi_live_positive_rate", **series) == pytest.approx(0.6)
        assert total(samples, "taxi_live_brier_score", **series) == pytest.approx(metrics["brier"])
        for name in ("taxi_label_join_labels_total", "taxi_label_join_predictions_total",
                     "taxi_label_join_joined_total"):
            assert total(samples, name) >= 10, name
        assert has(samples, "taxi_label_join_unmatched_total")
        assert service.details()["metrics"] == url
    finally:
        stream_supervisor.stop(service.name)


def test_ensure_topics_is_idempotent_and_never_shrinks(kafka):
    name = f"taxi.test.{uuid.uuid4().hex[:6]}"
    first = topics.Topic(name, 1, 3_600_000)
    assert topics.ensure_topics(kafka, [first]) == {name: "created"}
    assert topics.ensure_topics(kafka, [first]) == {name: "ok"}
    grown = topics.Topic(name, 3, 7_200_000, extra={"max.message.bytes": 2_000_000})
    result = topics.ensure_topics(kafka, [grown])[name]
    assert "partitions 1 -> 3" in result and "retention.ms=7200000" in result
    assert topics.partition_count(kafka, name) == 3
    assert topics.ensure_topics(kafka, [grown]) == {name: "ok"}
    assert "never shrinks" in topics.ensure_topics(kafka, [first])[name]
    assert topics.partition_count(kafka, name) == 3


def test_processor_service_reports_progress(stream_settings, stream_processor, kafka):
    assert stream_processor.healthy()
    details = stream_processor.details()
    assert details["phase"] == "running" and details["processed"] > 0
    assert caught_up(kafka, PROCESSOR_GROUP) in (True, False)



def test_processor_still_consumes_after_the_broker_restarts(kafka, stream_processor, stream_settings):
    """Runs after the broker stop/restart tests above (file order): the processor must have
    resumed its partitions. It used to stay assigned and "running" but never fetch again,
    because librdkafka kept the pause of a partition handed back by the rebalance."""
    replay.replay(stream_settings, speed="max", retime=True, limit=300, progress=lambda _: None)
    assert wait_for(lambda: caught_up(kafka, PROCESSOR_GROUP), 90, 0.5), \
        processor.read_status(stream_settings, 0)
