"""Pure logic of the streaming workers' observability and commit protocol: no broker needed."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from confluent_kafka import KafkaError, KafkaException
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from taxi_mlops.streaming import events, metrics, replay, topics
from taxi_mlops.streaming.checkpoint import CallbackSink, Checkpoint, Offset, OfflineSink, SinkError, low_from
from taxi_mlops.streaming.label_join import JoinState, LabelJoin

NOW = datetime(2024, 5, 1, 12, tzinfo=timezone.utc)


def _families(collector) -> dict:
    text = generate_latest(metrics.registry_with(collector)).decode()
    return {f.name: f for f in text_string_to_metric_families(text)}, text


# ---- freshness ----------------------------------------------------------------------------------
def test_freshness_is_observed_per_event_of_the_pushed_areas_only():
    tracker = metrics.FreshnessTracker()
    tracker.record((0, 8), 100.0)
    tracker.record((0, 8), 100.5)
    tracker.record((1, 32), 99.0)
    tracker.record((1, 32), None)  # no timestamp: nothing to measure
    assert len(tracker) == 3
    hist = metrics.BucketHistogram((0.5, 1.0, 2.0))
    # A push carrying only area 8, done at t=101: two events, 1.0 s and 0.5 s old.
    assert hist.observe_many(101.0 - ts for ts in tracker.take([(0, 8)])) == 2
    buckets, total = hist.snapshot()
    assert buckets == [("0.5", 1), ("1.0", 2), ("2.0", 2), ("+Inf", 2)] and total == pytest.approx(1.5)
    assert tracker.take([(0, 8)]) == []  # observed once only
    tracker.keep_only({0})  # partition 1 revoked: its pending events are not this owner's
    assert tracker.take([(1, 32)]) == [] and len(tracker) == 0


class _Msg:
    def __init__(self, kind, ms):
        self._ts = (kind, ms)

    def timestamp(self):
        return self._ts


def test_message_timestamp_uses_create_time_and_ignores_missing():
    assert metrics.message_timestamp_s(_Msg(1, 1_700_000_000_123)) == pytest.approx(1_700_000_000.123)
    assert metrics.message_timestamp_s(_Msg(0, -1)) is None


# ---- dead-letter reasons ------------------------------------------------------------------------
@pytest.mark.parametrize("topic, raw, reason", [
    (topics.TRIPS, b"not json", "json"),
    (topics.TRIPS, None, "empty"),
    (topics.TRIPS, b"[1, 2]", "not_object"),
    (topics.TRIPS, b'{"trip_id": "x"}', "schema"),
    (topics.TRIPS, b'{"schema_version": 1, "trip_id": "x"}', "schema"),
    (topics.LABELS, b'{"schema_version": 42}', "unknown_version"),
    ("taxi.nope", b"{}", "unknown_topic"),
])
def test_dead_letter_reason_is_a_short_category(topic, raw, reason):
    with pytest.raises(events.EventDecodeError) as err:
        events.decode(topic, raw)
    assert metrics.dead_letter_reason(err.value) == reason


def test_dead_letter_reason_of_other_errors_is_bounded():
    assert metrics.dead_letter_reason(ValueError("anything at all")) == "valueerror"
    assert metrics.dead_letter_reason("free text") == "schema"
    assert len(metrics.dead_letter_reason(type("X" * 100, (Exception,), {})())) <= metrics.MAX_REASON_LEN


# ---- processor metrics --------------------------------------------------------------------------
def test_processor_metrics_expose_the_spec_names():
    m = metrics.ProcessorMetrics((topics.TRIPS, topics.LABELS))
    m.add_consumed({topics.TRIPS: 3})
    m.add_consumed({topics.TRIPS: 2, topics.LABELS: 1})
    m.add_dead_letter(topics.TRIPS, "json")
    m.lag = {(topics.TRIPS, 0): 7}
    m.freshness.observe_many([0.02, 3.0])
    m.push_duration.observe(0.004)
    m.pushed_rows, m.commits = 12, 2
    fams, text = _families(m)
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in fams.values() for s in f.samples}
    assert samples[("taxi_stream_events_consumed_total", (("topic", topics.TRIPS),))] == 5
    assert samples[("taxi_stream_events_consumed_total", (("topic", topics.LABELS),))] == 1
    assert samples[("taxi_stream_events_dead_lettered_total", (("reason", "json"), ("topic", topics.TRIPS)))] == 1
    assert samples[("taxi_stream_consumer_lag", (("partition", "0"), ("topic", topics.TRIPS)))] == 7
    assert samples[("taxi_stream_freshness_seconds_count", ())] == 2
    assert samples[("taxi_stream_freshness_seconds_bucket", (("le", "0.025"),))] == 1
    assert samples[("taxi_stream_freshness_seconds_bucket", (("le", "10.0"),))] == 2
    assert samples[("taxi_stream_push_duration_seconds_bucket", (("le", "5.0"),))] == 1
    assert samples[("taxi_stream_pushed_rows_total", ())] == 12
    assert samples[("taxi_stream_commits_total", ())] == 2
    assert "process_cpu_seconds_total" in text and "feast" not in text


# ---- label join ---------------------------------------------------------------------------------
def _prediction(trip_id, version="1", prob=0.9):
    return events.PredictionLog(request_id=f"r-{trip_id}", trip_id=trip_id, model_name="tips",
                                model_version=version, model_alias="champion", tip_probability=prob,
                                latency_ms=1.0, timestamp=NOW)


def _label(trip_id, big=True):
    return events.LabelEvent(trip_id=trip_id, event_time=NOW, pickup_community_area=8, tips=3.0,
                             fare=10.0, big_tipper=big)


def test_label_join_counts_only_partnerless_expiries_as_unmatched():
    state = JoinState(window_s=60)
    assert state.add_prediction(_prediction("a"), 0.0) == 0
    assert state.add_label(_label("a"), 1.0) == 1           # joined: neither is unmatched
    state.add_prediction(_prediction("b"), 2.0)             # no label ever comes
    state.add_label(_label("c"), 3.0)                       # no prediction ever comes
    state.add_prediction(_prediction("d", version="1"), 4.0)
    state.add_prediction(_prediction("d", version="2"), 4.0)
    state.add_label(_label("d"), 5.0)                       # joins both versions
    state.add_prediction(events.PredictionLog(**{**_prediction("x").model_dump(), "trip_id": None}), 5.0)
    assert state.unmatched == {"label": 0, "prediction": 1}  # no trip id: can never join
    state.expire(now=30.0)
    assert state.unmatched == {"label": 0, "prediction": 1}  # nothing left the window yet
    state.expire(now=200.0)
    assert state.unmatched == {"label": 1, "prediction": 2}
    assert not state.labels and not state.predictions
    assert not state.matched_labels and not state.matched_predictions


def test_label_join_metrics_per_model_version_and_alias():
    worker = LabelJoin.__new__(LabelJoin)  # the metrics read only these two attributes
    worker.state = JoinState(window_s=600)
    worker.stats = {"predictions": 0, "labels": 0, "joined": 0}
    for i in range(10):
        worker.state.add_prediction(_prediction(f"t{i}", prob=0.9 if i < 8 else 0.1), float(i))
        worker.stats["predictions"] += 1
        worker.stats["joined"] += worker.state.add_label(_label(f"t{i}", big=i < 6), float(i))
        worker.stats["labels"] += 1
    worker.state.add_label(_label("lonely"), 20.0)
    worker.state.expire(now=10_000.0)  # everything leaves the window
    worker.state.add_prediction(_prediction("new", version="2"), 10_000.0)
    worker.state.add_label(_label("new", big=False), 10_000.0)
    fams, _ = _families(metrics.LabelJoinMetrics(worker))
    value = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in fams.values() for s in f.samples}
    v2 = (("alias", "champion"), ("model_name", "tips"), ("model_version", "2"))
    v1 = (("alias", "champion"), ("model_name", "tips"), ("model_version", "1"))
    assert value[("taxi_label_join_predictions_total", ())] == 10
    assert value[("taxi_label_join_labels_total", ())] == 10
    assert value[("taxi_label_join_joined_total", ())] == 10
    assert value[("taxi_label_join_unmatched_total", (("kind", "label"),))] == 1
    assert value[("taxi_label_join_unmatched_total", (("kind", "prediction"),))] == 0
    assert value[("taxi_live_joined", v1)] == 0 and ("taxi_live_accuracy", v1) not in value
    assert value[("taxi_live_joined", v2)] == 1
    assert value[("taxi_live_accuracy", v2)] == 0.0  # predicted 0.9, label 0
    assert value[("taxi_live_brier_score", v2)] == pytest.approx(0.81)
    assert value[("taxi_live_positive_rate", v2)] == 0.0


# ---- checkpoint ---------------------------------------------------------------------------------
class _Producer:
    def __init__(self, log, remaining=0, failed=0):
        self.log, self.remaining = log, remaining
        self.counts, self.errors = {"failed": failed}, ["boom"] if failed else []

    def flush(self, timeout_s):
        self.log.append("producer")
        return self.remaining


class _Consumer:
    def __init__(self, log, error=None):
        self.log, self.error, self.commits = log, error, []

    def commit(self, offsets, asynchronous):
        assert asynchronous is False
        if self.error:
            raise self.error
        self.log.append("commit")
        self.commits.append([(tp.topic, tp.partition, tp.offset, tp.metadata) for tp in offsets])


def _checkpoint(log, producer=None, consumer=None, offline_error=None):
    def write(rows):
        if offline_error:
            raise offline_error
        log.append(f"offline:{len(rows)}")
    offline = OfflineSink(write, "/data")
    offline.add([{"a": 1}, {"a": 2}])
    cp = Checkpoint([CallbackSink("online", lambda: log.append("online")), offline],
                    producer or _Producer(log), consumer or _Consumer(log))
    return cp, offline


def test_checkpoint_flushes_sinks_then_producer_then_commits_with_rebuild_points():
    log = []
    asked = []
    cp, offline = _checkpoint(log)
    done = cp.commit(lambda: asked.append(list(log)) or [Offset(topics.TRIPS, 0, 120, 95)])
    assert log == ["online", "offline:2", "producer", "commit"]
    assert asked == [["online", "offline:2", "producer"]]  # offsets are read after the flushes
    assert cp.consumer.commits == [[(topics.TRIPS, 0, 120, '{"low": 95}')]]
    assert done[0].metadata == '{"low": 95}' and low_from(done[0].metadata) == 95
    assert offline.pending == []
    log.clear()
    assert cp.commit(lambda: []) == [] and log == ["online", "producer"]  # nothing to commit


@pytest.mark.parametrize("case", ["offline", "unacknowledged", "failed", "commit"])
def test_checkpoint_commits_nothing_when_a_step_fails(case):
    log = []
    producer = _Producer(log, remaining=3 if case == "unacknowledged" else 0, failed=1 if case == "failed" else 0)
    consumer = _Consumer(log, KafkaException(KafkaError(KafkaError._TRANSPORT)) if case == "commit" else None)
    cp, offline = _checkpoint(log, producer, consumer, OSError("disk full") if case == "offline" else None)
    expected = RuntimeError if case == "failed" else SinkError
    with pytest.raises(expected) as err:
        cp.commit(lambda: [Offset(topics.TRIPS, 0, 10, 5)])
    assert type(err.value) is expected
    assert "commit" not in log and consumer.commits == []
    if case == "offline":
        assert "producer" not in log and len(offline.pending) == 2  # kept for the retry
    assert low_from(None) is None and low_from("not json") is None


# ---- replay -> gateway --------------------------------------------------------------------------
def test_gateway_trip_is_a_valid_gateway_body():
    from taxi_mlops.gateway.schemas import Trip

    row = {"trip_id": "trip-000001", "trip_miles": 2.5, "fare": 9.25, "trip_seconds": 600.0,
           "trip_start_hour": 7, "trip_start_day": 2, "trip_start_month": 3, "pickup_community_area": -1,
           "dropoff_community_area": 32, "pickup_latitude": 0.0, "pickup_longitude": 0.0,
           "dropoff_latitude": 41.88, "dropoff_longitude": -87.63, "payment_type": "Cash",
           "company": "Flash Cab"}
    body = replay.gateway_trip(row)
    trip = Trip(**body)
    assert trip.trip_id == "trip-000001" and trip.pickup_community_area is None
    assert trip.dropoff_community_area == 32 and trip.pickup_latitude is None
    assert trip.dropoff_latitude == 41.88 and trip.payment_type == "Cash" and trip.company == "Flash Cab"
    assert replay.predict_endpoint("http://h:1/") == "http://h:1/predict"
    assert replay.predict_endpoint("http://h:1/predict") == "http://h:1/predict"


def test_gateway_predictor_caps_concurrency_and_counts_outcomes():
    release = threading.Event()
    seen = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append(body["trip_id"])
            if body["trip_id"].startswith("slow"):
                release.wait(5)
            code = 422 if body["trip_id"] == "bad" else 200
            self.send_response(code)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        predictor = replay.GatewayPredictor(f"http://127.0.0.1:{server.server_port}", concurrency=2,
                                            timeout_s=5)
        assert predictor.submit({"trip_id": "slow-1"}) and predictor.submit({"trip_id": "slow-2"})
        assert predictor.submit({"trip_id": "skipped"}) is False  # both slots busy: not queued
        release.set()
        assert predictor.close() == {"sent": 2, "ok": 2, "failed": 0, "skipped": 1}
        predictor = replay.GatewayPredictor(f"http://127.0.0.1:{server.server_port}/predict", 4, 5)
        predictor.submit({"trip_id": "bad"})
        predictor.submit({"trip_id": "good"})
        assert predictor.close() == {"sent": 2, "ok": 1, "failed": 1, "skipped": 0}
        assert predictor.errors[0].startswith("422")
        assert "skipped" not in seen
    finally:
        server.shutdown()
        server.server_close()


# ---- layering -----------------------------------------------------------------------------------
def test_streaming_does_not_import_the_stack_package():
    code = ("import sys, importlib, pkgutil, taxi_mlops.streaming as s\n"
            "for m in pkgutil.iter_modules(s.__path__):\n"
            "    importlib.import_module('taxi_mlops.streaming.' + m.name)\n"
            "print(sorted(n for n in sys.modules if n.startswith('taxi_mlops.stack')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_an_assignment_starts_at_the_committed_offsets_or_the_beginning():
    """Explicit start offsets (librdkafka#5586: its own committed-offset fetch can stall)."""
    from confluent_kafka import OFFSET_BEGINNING, OFFSET_INVALID, TopicPartition

    from taxi_mlops.streaming import clients

    committed = [TopicPartition("taxi.trips.raw", 0, 42), TopicPartition("taxi.trips.raw", 1, OFFSET_INVALID),
                 TopicPartition("taxi.labels", 0, 0)]
    start = clients.start_offsets(committed)
    assert [(tp.topic, tp.partition, tp.offset) for tp in start] == [
        ("taxi.trips.raw", 0, 42), ("taxi.trips.raw", 1, OFFSET_BEGINNING), ("taxi.labels", 0, 0)]
