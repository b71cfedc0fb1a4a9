"""Stream processor throughput (one and two instances) and feature freshness under load.

Starts its own Kafka, Redis and Feast repo in a temporary state directory (ports 29192,
29193, 26491), so it runs beside a `taxi-mlops up` stack, and tears them down at the end.

* Throughput: the processor instances join their group first, then a burst of synthetic
  trips and labels is produced as fast as possible; events/s = events processed / time from
  the first to the last message processed (from the instances' status files).
* Freshness: at a fixed background rate (default 2,000 events/s of trips and labels), a probe
  trip for a never-seen area is sent every 100 ms; freshness is the time from its send to
  the first Feast online read that returns it (reads of outstanding probes every ~5 ms).

    .venv/bin/python bench/stream_bench.py [--events 400000] [--rate 2000] [--seconds 30]
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

from taxi_mlops.features import store
from taxi_mlops.settings import Settings
from taxi_mlops.stack import services
from taxi_mlops.stack.process import Service, Supervisor, wait_for
from taxi_mlops.stack.streaming import kafka_service, processor_service
from taxi_mlops.streaming import broker, events, processor, status, topics
from taxi_mlops.features import realtime as rt

AREAS = list(range(1, 78))


def redis_service(settings: Settings) -> Service:
    """The stack's Redis (with its password), without persistence: the bench measures the
    stream, not the disk."""
    return services.redis_service(settings, persistent=False)


def synthetic(n_trips: int, start: datetime, seed: int = 1):
    """Trips spread over 77 areas, 2,000 per simulated minute, each followed by its label."""
    rng = random.Random(seed)
    run = uuid.uuid4().hex[:6]
    out = []
    for i in range(n_trips):
        when = start + timedelta(milliseconds=30 * i)
        area = rng.choice(AREAS)
        trip_id = f"bench-{run}-{i}"
        fare = round(rng.uniform(3, 60), 2)
        out.append((topics.TRIPS, str(area), events.TripEvent(
            trip_id=trip_id, event_time=when, pickup_community_area=area, fare=fare, trip_seconds=600,
            trip_start_hour=when.hour, trip_start_day=when.isoweekday() % 7 + 1,
            trip_start_month=when.month).to_bytes()))
        tips = fare * rng.choice([0.0, 0.1, 0.25])
        out.append((topics.LABELS, str(area), events.LabelEvent(
            trip_id=trip_id, event_time=when + timedelta(seconds=rng.uniform(60, 900)),
            pickup_community_area=area, tips=tips, fare=fare, big_tipper=tips > 0.2 * fare).to_bytes()))
    return out


def produce_all(bootstrap: str, messages) -> float:
    producer = events.EventProducer(bootstrap, "bench-burst")
    t0 = time.perf_counter()
    for topic, key, value in messages:
        producer.produce_raw(topic, value, key.encode())
    producer.flush_or_raise(120)
    return time.perf_counter() - t0


def start_group_at_end(settings: Settings, group: str) -> None:
    """Commit the current end offsets for a new group, so it skips the earlier runs' events."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": settings.kafka_bootstrap_servers, "group.id": group,
                  "enable.auto.commit": False})
    try:
        ends = []
        for name in processor.INPUTS:
            for p in range(topics.partition_count(settings.kafka_bootstrap_servers, name)):
                ends.append(TopicPartition(name, p, c.get_watermark_offsets(TopicPartition(name, p), timeout=10)[1]))
        c.commit(offsets=ends, asynchronous=False)
    finally:
        c.close()


def start_instances(sup: Supervisor, settings: Settings, n: int, group: str,
                    baseline: bool = False) -> list[Service]:
    start_group_at_end(settings, group)
    services = [processor_service(settings, i, group=group, commit_interval_s=2.0) for i in range(n)]
    if baseline:  # the processor as it was before the tail work (same code, tuning off)
        for s in services:
            s.command.append("--no-tail-tuning")
    for s in services:
        sup.start(s)
    # All partitions (4 per topic) spread over the instances before any event is sent.
    def spread() -> bool:
        assigned = [len((status.read(settings, s.name) or {}).get("assigned", [])) for s in services]
        return sum(assigned) == 8 and all(assigned)
    assert wait_for(spread, 60, 0.2), "instances never shared all partitions"
    time.sleep(1.0)  # let a trailing rebalance settle
    return services


def throughput(sup: Supervisor, settings: Settings, n_instances: int, n_trips: int) -> dict:
    group = f"bench-{n_instances}x-{uuid.uuid4().hex[:6]}"
    services = start_instances(sup, settings, n_instances, group)
    before = {s.name: (status.read(settings, s.name) or {}).get("processed", 0) for s in services}
    messages = synthetic(n_trips, datetime.now(timezone.utc) - timedelta(days=1))
    produce_s = produce_all(settings.kafka_bootstrap_servers, messages)

    def done() -> bool:
        return sum((status.read(settings, s.name) or {}).get("processed", 0) - before[s.name]
                   for s in services) >= len(messages)
    assert wait_for(done, 600, 0.2), "the processors did not consume the burst within 10 minutes"
    stats = [status.read(settings, s.name) for s in services]
    first = min(s["first_message_at"] for s in stats if s["first_message_at"])
    last = max(s["last_message_at"] for s in stats if s["last_message_at"])
    processed = sum(s["processed"] - before[s["name"]] for s in stats)
    pushes = sum(s["pushes"] for s in stats)
    push_s = sum(s["push_s"] for s in stats)
    for s in services:
        sup.stop(s.name, timeout_s=30)
    return {"instances": n_instances, "events": processed, "seconds": last - first,
            "events_per_s": processed / (last - first), "produce_events_per_s": len(messages) / produce_s,
            "pushes": pushes, "mean_push_ms": 1000 * push_s / max(pushes, 1)}


def freshness(sup: Supervisor, settings: Settings, rate: float, seconds: float, baseline: bool = False) -> dict:
    group = f"bench-fresh-{uuid.uuid4().hex[:6]}"
    services = start_instances(sup, settings, 1, group, baseline)
    fs = store.feature_store(settings)
    producer = events.EventProducer(settings.kafka_bootstrap_servers, "bench-fresh")
    outstanding: dict[int, float] = {}
    samples: list[float] = []
    lock = threading.Lock()
    stop = threading.Event()
    base_area = 100_000 + random.randrange(0, 10**6) * 1000

    def poll() -> None:
        while not stop.is_set() or outstanding:
            with lock:
                areas = list(outstanding)
            if not areas:
                time.sleep(0.002)
                continue
            got = fs.get_online_features(features=[f"{rt.REALTIME_VIEW}:{rt.TRIPS_15M}"],
                                         entity_rows=[{rt.ENTITY_KEY: a} for a in areas]).to_dict()
            now = time.perf_counter()
            with lock:
                for area, value in zip(areas, got[rt.TRIPS_15M]):
                    if value == 1.0 and area in outstanding:
                        samples.append(now - outstanding.pop(area))
            if stop.is_set() and time.perf_counter() > deadline_after_stop[0]:
                return
            time.sleep(0.005)

    deadline_after_stop = [float("inf")]
    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    rng = random.Random(2)
    t0 = time.perf_counter()
    sent = probes = 0
    next_probe = t0
    while time.perf_counter() - t0 < seconds:
        target = t0 + sent / rate
        if (delay := target - time.perf_counter()) > 0:
            producer.poll(min(delay, 0.01))
            continue
        now = datetime.now(timezone.utc)
        area = rng.choice(AREAS)
        trip_id = f"load-{group}-{sent}"
        if sent % 2 == 0:
            producer.produce_raw(topics.TRIPS, events.TripEvent(
                trip_id=trip_id, event_time=now, pickup_community_area=area, fare=10.0,
                trip_start_hour=now.hour, trip_start_day=now.isoweekday() % 7 + 1,
                trip_start_month=now.month).to_bytes(), str(area).encode())
        else:
            producer.produce_raw(topics.LABELS, events.LabelEvent(
                trip_id=trip_id, event_time=now, pickup_community_area=area, tips=1.0, fare=10.0,
                big_tipper=False).to_bytes(), str(area).encode())
        sent += 1
        if time.perf_counter() >= next_probe:
            probe_area = base_area + probes
            value = events.TripEvent(trip_id=f"probe-{group}-{probes}", event_time=now,
                                     pickup_community_area=probe_area, fare=10.0, trip_start_hour=now.hour,
                                     trip_start_day=1, trip_start_month=now.month).to_bytes()
            with lock:
                outstanding[probe_area] = time.perf_counter()
            producer.produce_raw(topics.TRIPS, value, str(probe_area).encode())
            probes += 1
            next_probe += 0.1
    producer.flush_or_raise(60)
    offered = sent / (time.perf_counter() - t0)
    deadline_after_stop[0] = time.perf_counter() + 30
    stop.set()
    poller.join(timeout=40)
    lost = len(outstanding)
    stats = status.read(settings, services[0].name) or {}
    for s in services:
        sup.stop(s.name, timeout_s=30)
    samples.sort()
    pct = lambda q: samples[min(len(samples) - 1, int(q * len(samples)))] * 1000  # noqa: E731
    return {"offered_events_per_s": offered, "probes": probes, "seen": len(samples), "not_seen": lost,
            "p50_ms": pct(0.50), "p90_ms": pct(0.90), "p99_ms": pct(0.99), "max_ms": samples[-1] * 1000,
            "mean_ms": statistics.mean(samples) * 1000,
            "processor": {k: stats.get(k) for k in ("pushes", "push_s", "push_max_ms", "checkpoint_max_ms",
                                                    "commits", "processed", "checkpoint_steps_max_ms")}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=400_000, help="burst size (half trips, half labels)")
    parser.add_argument("--rate", type=float, default=2000, help="background events/s for freshness")
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--keep", action="store_true", help="keep the state directory")
    parser.add_argument("--only", choices=("throughput", "freshness"), default=None)
    parser.add_argument("--rounds", type=int, default=1,
                        help="freshness rounds; each runs the baseline processor (tail tuning off) and "
                             "the current one back to back, so both see the same machine load")
    args = parser.parse_args()

    from taxi_mlops.stack.process import free_port

    state = Path(tempfile.mkdtemp(prefix="stream-bench-"))
    # The metrics endpoints on free ports too (their defaults are a dev stack's).
    settings = Settings(state_dir=state, kafka_port=29192, kafka_controller_port=29193, redis_port=26491,
                        kafka_bootstrap_override=None, kafka_metrics_port=free_port(),
                        processor_metrics_port=free_port())
    sup = Supervisor(settings)
    os.environ.update(settings.feast_env())
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"Kafka {broker.KAFKA_VERSION}; state in {state}")
    try:
        sup.start(kafka_service(settings))
        sup.start(redis_service(settings))
        topics.ensure_topics(settings.kafka_bootstrap_servers)
        store.apply(settings)
        store.feature_store(settings).apply(store.realtime_objects(settings))
        for n in ((1, 2) if args.only != "freshness" else ()):
            r = throughput(sup, settings, n, args.events // 2)
            print(f"throughput, {n} instance(s): {r['events_per_s']:,.0f} events/s "
                  f"({r['events']:,} events in {r['seconds']:.2f}s; {r['pushes']} Feast pushes, "
                  f"{r['mean_push_ms']:.1f} ms each; burst produced at {r['produce_events_per_s']:,.0f}/s)")
        if args.only == "throughput":
            return 0
        results = {"baseline": [], "current": []}
        for r in range(args.rounds):
            for label in ("baseline", "current"):
                f = freshness(sup, settings, args.rate, args.seconds, baseline=label == "baseline")
                results[label].append(f)
                pr = f["processor"]
                print(f"[{label}, round {r + 1}, load {os.getloadavg()[0]:.1f}] freshness at "
                      f"{f['offered_events_per_s']:,.0f} events/s offered, 1 instance: "
                      f"p50 {f['p50_ms']:.0f} ms, p90 {f['p90_ms']:.0f} ms, p99 {f['p99_ms']:.0f} ms, "
                      f"max {f['max_ms']:.0f} ms ({f['seen']}/{f['probes']} probes seen); "
                      f"{pr['pushes']} pushes, mean {1000 * pr['push_s'] / max(pr['pushes'] or 1, 1):.1f} ms, "
                      f"max {pr['push_max_ms']:.0f} ms; slowest checkpoint {pr['checkpoint_max_ms']:.0f} ms "
                      f"(slowest step, ms: {pr.get('checkpoint_steps_max_ms')})",
                      flush=True)
        if args.rounds > 1:
            for label, runs in results.items():
                print(f"{label}: median over {len(runs)} rounds of p50 "
                      f"{statistics.median(x['p50_ms'] for x in runs):.0f} ms, p99 "
                      f"{statistics.median(x['p99_ms'] for x in runs):.0f} ms; worst p99 "
                      f"{max(x['p99_ms'] for x in runs):.0f} ms")
    finally:
        for name in ("stream-processor-0", "stream-processor-1", "redis", "kafka"):
            sup.stop(name, timeout_s=30)
        if not args.keep:
            shutil.rmtree(state, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
