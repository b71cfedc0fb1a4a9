"""Reading topics and consumer-group progress for the streaming tests (real broker, no mocks)."""

from __future__ import annotations

import json
import time
import uuid
from datetime import datetime, timezone

import httpx
import pandas as pd
from confluent_kafka import Consumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from taxi_mlops.stack.process import wait_for
from taxi_mlops.streaming import events, topics
from taxi_mlops.features import realtime as rt

TIMEOUT_S = 10
PROCESSOR_GROUP = "test-stream-processor"  # the session processor's consumer group


def _consumer(bootstrap: str, group: str | None = None) -> Consumer:
    return Consumer({"bootstrap.servers": bootstrap, "group.id": group or f"test-{uuid.uuid4().hex[:8]}",
                     "enable.auto.commit": False, "broker.address.family": "v4",
                     "socket.timeout.ms": 10_000})


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    """Each partition's end; a broker that has just started may not lead its partitions for
    a moment ("not leader"): asked again until it does, within TIMEOUT_S."""
    from confluent_kafka import KafkaException

    deadline = time.monotonic() + TIMEOUT_S
    c = _consumer(bootstrap)
    try:
        while True:
            try:
                meta = c.list_topics(topic, timeout=TIMEOUT_S).topics[topic]
                return {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=TIMEOUT_S)[1]
                        for p in meta.partitions}
            except KafkaException as exc:
                if not exc.args[0].retriable() and "leader" not in str(exc).lower() or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    finally:
        c.close()


def read_topic(bootstrap: str, topic: str, start: dict[int, int] | None = None,
               timeout_s: float = 60) -> list:
    """Every message from ``start`` (default: the beginning) to the current end offsets."""
    ends = end_offsets(bootstrap, topic)
    start = start or {}
    c = _consumer(bootstrap)
    todo = {p for p, end in ends.items() if end > start.get(p, 0)}
    c.assign([TopicPartition(topic, p, start.get(p, 0)) for p in ends])
    out = []
    deadline = time.monotonic() + timeout_s
    try:
        while todo:
            assert time.monotonic() < deadline, f"reading {topic} timed out; left {todo}"
            for msg in c.consume(1000, 0.5):
                if msg.error() is not None or msg.partition() not in todo:
                    continue
                if msg.offset() < ends[msg.partition()]:
                    out.append(msg)
                if msg.offset() >= ends[msg.partition()] - 1:
                    todo.discard(msg.partition())
    finally:
        c.close()
    return out


def caught_up(bootstrap: str, group: str, names=(topics.TRIPS, topics.LABELS)) -> bool:
    """True when ``group`` committed the end offset of every partition of ``names``."""
    c = _consumer(bootstrap, group)
    try:
        wanted = []
        ends = {}
        for name in names:
            for p, end in end_offsets(bootstrap, name).items():
                wanted.append(TopicPartition(name, p))
                ends[(name, p)] = end
        committed = c.committed(wanted, timeout=TIMEOUT_S)
        return all(tp.offset >= ends[(tp.topic, tp.partition)] or
                   (ends[(tp.topic, tp.partition)] == 0) for tp in committed)
    finally:
        c.close()


def wait_caught_up(bootstrap: str, group: str, timeout_s: float = 90) -> None:
    assert wait_for(lambda: caught_up(bootstrap, group), timeout_s, 0.5), \
        f"group {group} did not catch up within {timeout_s}s"


def batch_features(bootstrap: str) -> pd.DataFrame:
    """The realtime features recomputed in pandas from every valid event in the two topics."""
    frames = {}
    for name in (topics.TRIPS, topics.LABELS):
        rows = []
        for msg in read_topic(bootstrap, name):
            try:
                rows.append(events.decode(name, msg.value()).model_dump())
            except events.EventDecodeError:
                continue
        frame = pd.DataFrame(rows).drop_duplicates("trip_id", keep="first")
        frame["t"] = pd.to_datetime(frame["event_time"], utc=True)
        frames[name] = frame
    trips, labels = frames[topics.TRIPS], frames[topics.LABELS]
    latest = pd.concat([trips[["pickup_community_area", "t"]], labels[["pickup_community_area", "t"]]]) \
        .groupby("pickup_community_area")["t"].max()
    out = []
    for area, t_max in latest.items():
        hour = trips[(trips.pickup_community_area == area) & (trips.t > t_max - rt.STATS_WINDOW)
                     & (trips.t <= t_max)]
        quarter = hour[hour.t > t_max - rt.COUNT_WINDOW]
        labs = labels[(labels.pickup_community_area == area) & (labels.t > t_max - rt.STATS_WINDOW)
                      & (labels.t <= t_max)]
        out.append({rt.ENTITY_KEY: int(area), rt.TRIPS_15M: float(len(quarter)),
                    rt.AVG_FARE_1H: float(hour.fare.mean()) if len(hour) else 0.0,
                    rt.TIP_RATE_1H: float(labs.big_tipper.mean()) if len(labs) else 0.0})
    return pd.DataFrame(out)


def online_features(store, areas: list[int]) -> pd.DataFrame:
    result = store.get_online_features(
        features=[f"{rt.REALTIME_VIEW}:{name}" for name in rt.REALTIME_FEATURES],
        entity_rows=[{rt.ENTITY_KEY: int(a)} for a in areas]).to_dict()
    return pd.DataFrame({rt.ENTITY_KEY: [int(a) for a in areas],
                         **{name: result[name] for name in rt.REALTIME_FEATURES}})


def trip(trip_id: str, area: int, when: datetime | None = None, fare: float = 10.0) -> events.TripEvent:
    when = when or datetime.now(timezone.utc)
    return events.TripEvent(trip_id=trip_id, event_time=when, pickup_community_area=area, fare=fare,
                            trip_seconds=600, trip_start_hour=when.hour,
                            trip_start_day=when.isoweekday() % 7 + 1, trip_start_month=when.month)


def decode_json(msg) -> dict:
    return json.loads(msg.value())


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """One Prometheus scrape as {(sample name, sorted labels): value}."""
    text = httpx.get(url, timeout=5).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def total(samples: dict, name: str, **labels) -> float:
    """The sum of ``name`` over the series whose labels include ``labels``."""
    return sum(v for (n, lab), v in samples.items()
               if n == name and all(dict(lab).get(k) == val for k, val in labels.items()))


def has(samples: dict, name: str) -> bool:
    return any(n == name for n, _ in samples)
