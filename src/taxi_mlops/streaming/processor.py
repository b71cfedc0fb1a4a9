"""The stream processor: trips and labels in, windowed area features out to Feast.

Reads ``taxi.trips.raw`` and ``taxi.labels`` (both keyed by pickup area, co-partitioned),
keeps per-area event-time windows (``windows.AreaWindow``) and writes each changed area's
features through the Feast PushSource ``area_realtime_push`` to the online store (Redis),
appends the same rows to the offline store (a Parquet part per checkpoint) and publishes
them to ``taxi.features.realtime``. Invalid events go to ``taxi.deadletter`` with a reason.

Why plain confluent-kafka and not quixstreams: the guarantees we need hinge on exactly when
offsets are committed (only after Feast, the offline part and the dead letters are durable)
and on rebuilding window state from the log on a rebalance; both are a few explicit calls
here, where Quix Streams would put its own state store (RocksDB on local disk, plus a
changelog topic per store) and checkpointing between us and those decisions, and add a
dependency tree to the platform lock for one consumer loop. confluent-kafka (librdkafka) is
already the platform's Kafka client and is the fastest Python client.

Guarantees
* At-least-once: offsets are committed synchronously only after the online push, the
  offline part and every produced record (features, dead letters) are acknowledged.
* Idempotent: window state is keyed by trip id, so replayed events change nothing, and
  the online row of an area is overwritten by its latest state (last write wins; see
  ``_feature_store``).
* Recoverable: each commit carries, as offset metadata, the lowest offset still held in
  the window state of that partition. A new owner (after a crash or a rebalance) re-reads
  the log from there to the committed offset, rebuilding the exact state without writing
  anything, then continues.
* Scales out: instances in one consumer group share the partitions (range assignment keeps
  partition N of both topics on one instance); state lives per partition.

The commit protocol is ``checkpoint.Checkpoint`` (sinks, producer, offsets: in that order).
Metrics ([stream_processor] in the observability spec) are served on
``settings.processor_metrics_port + instance``; see ``streaming/metrics.py``.

Run ``python -m taxi_mlops.streaming.processor --instance N`` (settings from ``TAXI_*``), or
start ``taxi_mlops.stack.streaming.processor_service(settings, N)`` with the supervisor.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone

from taxi_mlops.streaming import metrics  # noqa: I001  (before anything imports Feast)
from taxi_mlops import runtime
from taxi_mlops.observability import logs
from taxi_mlops.settings import Settings, get_settings
from taxi_mlops.streaming import clients, events, status, topics
from taxi_mlops.features import realtime as rt
from taxi_mlops.streaming.checkpoint import CallbackSink, Checkpoint, Offset, OfflineSink, SinkError, low_from
from taxi_mlops.streaming.windows import AreaWindow, from_us, to_us

GROUP = "taxi-stream-processor"
INPUTS = (topics.TRIPS, topics.LABELS)

log = logging.getLogger("taxi_mlops.streaming.processor")


@dataclass
class Options:
    instance: int = 0
    group: str = GROUP
    commit_interval_s: float = 2.0
    batch_size: int = 1000
    poll_timeout_s: float = 0.05
    rebuild_timeout_s: float = 300.0
    flush_timeout_s: float = 30.0
    # _tune_gc, OnlineWriter's cached views and the asynchronous periodic commit; off only to
    # measure against the code before them (bench/stream_bench.py runs both in one session)
    tail_tuning: bool = True


@dataclass
class PartitionState:
    partition: int
    areas: dict[int, AreaWindow] = field(default_factory=dict)

    def window(self, area: int) -> AreaWindow:
        w = self.areas.get(area)
        if w is None:
            w = self.areas[area] = AreaWindow()
        return w

    def low_offsets(self) -> dict[str, int | None]:
        trips = labels = None
        for w in self.areas.values():
            t, lab = w.min_offsets()
            if t is not None and (trips is None or t < trips):
                trips = t
            if lab is not None and (labels is None or lab < labels):
                labels = lab
        return {topics.TRIPS: trips, topics.LABELS: labels}


def apply_event(state: PartitionState, topic: str, event: events.Event, offset: int) -> int | None:
    """Fold one event into the state; returns the area when its features changed."""
    area = event.pickup_community_area
    w = state.window(area)
    if topic == topics.TRIPS:
        changed = w.add_trip(event.trip_id, to_us(event.event_time), event.fare, offset)
    else:
        changed = w.add_label(event.trip_id, to_us(event.event_time), event.big_tipper, offset)
    return area if changed else None


def feature_row(area: int, window: AreaWindow, created: datetime) -> dict:
    values = window.features()
    return {rt.ENTITY_KEY: area, rt.TIMESTAMP_FIELD: from_us(window.latest), rt.CREATED_FIELD: created,
            **values}


def _feature_store(settings: Settings):
    """Feast on the platform repo, writing last-write-wins to Redis.

    Feast's Redis writer skips a row whose event timestamp is not newer than the stored one.
    Our rows are stamped with the area's latest event time, which stays put when a late label
    or a replay after a crash changes the features; with the check the corrected value would
    be dropped. Every area is written by exactly one partition owner, in processing order, so
    the latest write is the most complete state.
    """
    from taxi_mlops.features import store

    fs = store.feature_store(settings)
    fs.config.online_store.skip_dedup = True
    return fs


class OnlineWriter:
    """``FeatureStore.push(PUSH_SOURCE, frame, to=ONLINE)`` without its per-call registry work.

    Each ``push`` rebuilds every feature view from its registry proto twice (to find the views
    of the push source, then to find the view by name) and lists the feature services, all
    type-checked by typeguard (off since, see ``features/feast_runtime.py``): about half the
    CPU of a 100-row push, on the freshness path (bench/stream_bench.py). Here the views of
    the push source are looked up once (again after ``REFRESH_S``, as the registry cache
    would, and after any failed write) and each is handed to the provider's ``ingest_df``:
    what ``push`` does for a plain feature view. When a view is on-demand or a feature
    service precomputes vectors on push, ``push`` is used.
    """

    REFRESH_S = 60.0

    def __init__(self, store, cached: bool = True):
        self.store, self.cached = store, cached
        self._views: list | None = None
        self._plain = False
        self._at = 0.0

    def forget(self) -> None:
        self._views = None

    def _resolve(self) -> None:
        from feast.data_source import PushSource
        from feast.feature_view import FeatureView

        views = [fv for fv in self.store.list_feature_views(allow_cache=True)
                 if isinstance(fv.stream_source, PushSource) and fv.stream_source.name == rt.PUSH_SOURCE]
        names = {fv.name for fv in views}
        precompute = any(getattr(svc, "precompute_online", False) and
                         any(p.name in names for p in svc.feature_view_projections)
                         for svc in self.store.list_feature_services())
        self._plain = bool(views) and not precompute and all(type(fv) is FeatureView for fv in views)
        self._views, self._at = views, time.monotonic()

    def write(self, frame) -> None:
        if self.cached and (self._views is None or time.monotonic() - self._at > self.REFRESH_S):
            self._resolve()
        if not (self.cached and self._plain):
            from feast.data_source import PushMode

            self.store.push(rt.PUSH_SOURCE, frame, to=PushMode.ONLINE)
            return
        provider = self.store.provider
        for fv in self._views:
            provider.ingest_df(fv, frame)


class StreamProcessor:
    def __init__(self, settings: Settings, options: Options):
        self.settings, self.options = settings, options
        self.name = service_name(options.instance)
        self.bootstrap = settings.kafka_bootstrap_servers
        self.consumer = self._new_consumer()
        # message.timeout.ms=0: a record waits for the broker however long it is away; the
        # commit waits for it in turn, so nothing is committed that is not durable.
        self.producer = events.EventProducer(self.settings, self.name, **{"message.timeout.ms": 0})
        self.store = self.writer = None
        self.partitions: dict[int, PartitionState] = {}
        self.retired: dict[int, tuple[PartitionState, dict]] = {}
        self.assigned: set[tuple[str, int]] = set()
        self.positions: dict[tuple[str, int], int] = {}
        self.committed: dict[tuple[str, int], tuple[int, str | None]] = {}  # offset, metadata
        self.dirty: set[tuple[int, int]] = set()
        self.offline = OfflineSink(self._write_offline, str(settings.feast_data_dir))
        self.checkpoint = Checkpoint([CallbackSink("online", self._push), self.offline], self.producer,
                                     self.consumer, options.flush_timeout_s)
        self.metrics = metrics.ProcessorMetrics(INPUTS)
        self.freshness = metrics.FreshnessTracker()
        self.metrics_url: str | None = None
        self._consumed: Counter = Counter()
        self.last_commit = time.monotonic()
        self.blocked: str | None = None
        self.paused = False
        self.stop_event = threading.Event()
        self.phase = "starting"
        self.stats = {"processed": 0, "rebuilt": 0, "dead_lettered": 0, "pushed_rows": 0, "pushes": 0,
                      "push_s": 0.0, "push_max_ms": 0.0, "checkpoint_max_ms": 0.0, "commits": 0,
                      "rebalances": 0, "first_message_at": None, "last_message_at": None,
                      "last_commit_at": None}
        self.lag: dict[str, int] = {}
        self._lag_at = 0.0

    def _new_consumer(self):
        from confluent_kafka import Consumer

        return Consumer(clients.consumer_config(
            self.settings, self.name, self.options.group,
            **{"partition.assignment.strategy": "range",
               # Static membership: a restarted instance gets its partitions back at once.
               "group.instance.id": f"{self.options.group}-{self.options.instance}",
               "fetch.wait.max.ms": 100,
               "on_commit": self._on_commit}))

    def _subscribe(self) -> None:
        self.consumer.subscribe(list(INPUTS), on_assign=self._on_assign, on_revoke=self._on_revoke,
                                on_lost=self._on_lost)

    def _replace_consumer(self, reason: str) -> None:
        """A consumer that hit a fatal error never fetches again (seen: "static consumer
        fenced" after a broker restart). Drop everything not committed (the new consumer's
        assignment rebuilds it from the committed offsets, as after a crash) and join anew."""
        log.error("consumer failed for good (%s); joining the group with a new consumer", reason)
        self._forget(set(self.assigned), keep=False)
        self.retired.clear()
        self.offline.pending = []  # rows of uncommitted events: the new consumer recomputes them
        try:
            self.consumer.close()
        except Exception as exc:  # a fenced consumer may refuse to leave cleanly
            log.warning("closing the failed consumer: %s", exc)
        self.consumer = self.checkpoint.consumer = self._new_consumer()
        self.paused = False
        self._subscribe()

    # ---- lifecycle ------------------------------------------------------------------------
    def run(self) -> None:
        topics.ensure_topics(self.settings)
        counts = {t: topics.partition_count(self.settings, t) for t in INPUTS}
        if len(set(counts.values())) != 1:
            raise RuntimeError(f"{counts}: trips and labels need equal partition counts (an area's "
                               "trips and labels must share a partition); fix streaming/topics.py")
        self.metrics_url = metrics.serve(metrics.registry_with(self.metrics), self.settings.host,
                                         self.settings.processor_metrics_port + self.options.instance,
                                         self.name)
        self.store = _feature_store(self.settings)
        rt.ensure_offline_dir(self.settings.feast_data_dir)
        self.writer = OnlineWriter(self.store, cached=self.options.tail_tuning)
        if self.options.tail_tuning:
            _tune_gc()
        self._subscribe()
        self.phase = "running"
        log.info("%s consuming %s as group %s from %s", self.name, ", ".join(INPUTS),
                 self.options.group, self.bootstrap)
        backoff = 0.5
        while not self.stop_event.is_set():
            messages = self.consumer.consume(self.options.batch_size, self.options.poll_timeout_s)
            try:
                for msg in messages:
                    self._handle(msg)
            except ConsumerFailed as exc:
                self._replace_consumer(str(exc))
                continue
            if self._consumed:
                self.metrics.add_consumed(self._consumed)
                self._consumed.clear()
            if time.monotonic() - self._lag_at > status.HEARTBEAT_S:
                self._update_lag()
            try:
                if self.dirty:
                    self._push()
                if time.monotonic() - self.last_commit >= self.options.commit_interval_s:
                    self._checkpoint(wait=not self.options.tail_tuning)
                if self.blocked:
                    log.info("writes succeed again; resuming")
                    self._set_paused(False)
                    self.blocked, backoff = None, 0.5
            except SinkError as exc:
                if self.blocked is None:
                    log.error("%s; pausing consumption and retrying", exc)
                self.blocked = str(exc)
                self._set_paused(True)
                self.stop_event.wait(backoff)
                backoff = min(backoff * 2, 5.0)
        self.phase = "stopping"
        try:
            self._checkpoint()
        except SinkError as exc:
            log.error("final checkpoint failed (%s); the next start reprocesses from the last commit", exc)
        self.consumer.close()
        self.phase = "stopped"

    def stop(self, *_args) -> None:
        self.stop_event.set()

    def _set_paused(self, paused: bool) -> None:
        if paused == self.paused and paused:
            return  # resuming is always sent: it is idempotent, and a lost resume stalls for good
        from confluent_kafka import TopicPartition

        tps = [TopicPartition(t, p) for t, p in self.assigned]
        if tps:
            (self.consumer.pause if paused else self.consumer.resume)(tps)
        self.paused = paused

    # ---- per message ----------------------------------------------------------------------
    def _handle(self, msg) -> None:
        err = msg.error()
        if err is not None:
            if err.fatal() or err.code() == _fatal_code():
                raise ConsumerFailed(str(err))
            log.warning("consumer: %s", err)
            return
        topic = msg.topic()
        key = (topic, msg.partition())
        state = self.partitions.get(msg.partition())
        if state is None or key not in self.assigned:
            return  # a message of a partition revoked in this very batch
        offset = msg.offset()
        self._consumed[topic] += 1
        try:
            event = events.decode(topic, msg.value())
        except events.EventDecodeError as exc:
            self.producer.send_dead_letter(events.dead_letter(
                topic, msg.value(), exc, source=self.name, partition=msg.partition(),
                offset=offset, key=msg.key()))
            self.stats["dead_lettered"] += 1
            self.metrics.add_dead_letter(topic, metrics.dead_letter_reason(exc))
        else:
            area = apply_event(state, topic, event, offset)
            if area is not None:
                dirty = (msg.partition(), area)
                self.dirty.add(dirty)
                self.freshness.record(dirty, metrics.message_timestamp_s(msg))
        self.positions[key] = offset + 1
        now = time.time()
        self.stats["processed"] += 1
        self.stats["first_message_at"] = self.stats["first_message_at"] or now
        self.stats["last_message_at"] = now

    # ---- writes ---------------------------------------------------------------------------
    def _push(self) -> None:
        """Changed areas to the online store and the features topic (offline at checkpoint)."""
        if not self.dirty:
            return
        import pandas as pd

        created = datetime.now(timezone.utc)
        carried = sorted(k for k in self.dirty if k[0] in self.partitions)
        rows = [feature_row(area, self.partitions[p].areas[area], created) for p, area in carried]
        if rows:
            frame = pd.DataFrame(rows)
            started = time.perf_counter()
            try:
                self.writer.write(frame[rt.OFFLINE_COLUMNS])
            except Exception as exc:  # Redis down, registry not applied yet, ...
                self.writer.forget()
                try:  # a `feast apply` made after our start is only seen after a refresh
                    self.store.refresh_registry()
                except Exception:
                    pass
                raise SinkError(f"cannot write to the Feast online store (Redis {self.settings.redis_url}): "
                                f"{type(exc).__name__}: {exc}; check `taxi-mlops status`") from exc
            took = time.perf_counter() - started
            done = time.time()
            self.metrics.freshness.observe_many(done - ts for ts in self.freshness.take(carried))
            self.metrics.push_duration.observe(took)
            self.metrics.pushed_rows += len(rows)
            self.stats["push_s"] += took
            self.stats["push_max_ms"] = max(self.stats["push_max_ms"], took * 1000)
            self.stats["pushes"] += 1
            self.stats["pushed_rows"] += len(rows)
            for row in rows:
                event = events.RealtimeFeatures(
                    pickup_community_area=row[rt.ENTITY_KEY], event_time=row[rt.TIMESTAMP_FIELD],
                    computed_at=created, **{k: row[k] for k in (*rt.REALTIME_FEATURES, "trips_1h", "labels_1h")})
                self.producer.produce_raw(topics.FEATURES, event.to_bytes(), str(row[rt.ENTITY_KEY]).encode())
            self.offline.add(rows)
        self.dirty.clear()

    def _write_offline(self, rows: list[dict]) -> None:
        import pandas as pd

        rt.write_offline_part(self.settings.feast_data_dir, pd.DataFrame(rows), self.name)

    def _checkpoint(self, only: set[tuple[str, int]] | None = None, wait: bool = True) -> None:
        """Make everything processed durable, then commit offsets (``checkpoint.Checkpoint``);
        ``wait=False`` (the periodic checkpoint) does not wait for the broker's answer."""
        started = time.perf_counter()
        committed = self.checkpoint.commit(lambda: self._offsets_to_commit(only), wait)
        if committed:
            for o in committed:
                self.committed[(o.topic, o.partition)] = (o.offset, o.metadata)
            self.stats["commits"] += 1
            self.metrics.commits += 1
            self.stats["last_commit_at"] = time.time()
        self.last_commit = time.monotonic()
        took_ms = (time.perf_counter() - started) * 1000
        self.stats["checkpoint_max_ms"] = max(self.stats["checkpoint_max_ms"], took_ms)

    def _offsets_to_commit(self, only: set[tuple[str, int]] | None) -> list[Offset]:
        """Positions of the assigned partitions that moved since their last commit."""
        offsets = []
        for (topic, p), position in self.positions.items():
            if (topic, p) not in self.assigned or (only is not None and (topic, p) not in only):
                continue
            low = self.partitions[p].low_offsets()[topic]
            offset = Offset(topic, p, position, low if low is not None else position)
            if self.committed.get((topic, p)) == (position, offset.metadata):
                continue
            offsets.append(offset)
        return offsets

    # ---- rebalances -----------------------------------------------------------------------
    def _on_assign(self, consumer, partitions) -> None:
        self.phase = "rebuilding"
        self.stats["rebalances"] += 1
        committed = consumer.committed(partitions, timeout=clients.COMMITTED_TIMEOUT_S)
        rebuild = []
        by_partition: dict[int, list] = {}
        for tp in committed:
            by_partition.setdefault(tp.partition, []).append(tp)
        for p, tps in by_partition.items():
            positions = {(tp.topic, p): tp.offset for tp in tps if tp.offset >= 0}
            retired = self.retired.pop(p, None)
            if retired and all(retired[1].get(k) == v for k, v in positions.items()) and \
                    len(positions) == len(retired[1]):
                self.partitions[p] = retired[0]  # nobody else processed it meanwhile: reuse
            else:
                self.partitions[p] = PartitionState(p)
                for tp in tps:
                    low = low_from(tp.metadata)
                    if tp.offset >= 0 and low is not None and low < tp.offset:
                        rebuild.append((tp.topic, p, low, tp.offset))
            for tp in tps:
                self.assigned.add((tp.topic, p))
                if tp.offset >= 0:
                    self.positions[(tp.topic, p)] = tp.offset
                    self.committed[(tp.topic, p)] = (tp.offset, tp.metadata)
        self.retired.clear()  # partitions not handed back belong to another instance now
        if rebuild:
            self._rebuild(rebuild)
        # Start at the offsets just fetched (clients.start_offsets: librdkafka's own fetch can
        # leave a partition never fetched after a broker restart), and resume explicitly:
        # librdkafka keeps a partition's pause across a rebalance that hands it back. A write
        # that still fails pauses it again.
        consumer.assign(clients.start_offsets(committed))
        consumer.resume(partitions)
        self.paused = False
        log.info("assigned %s (rebuilt %d partition logs)",
                 sorted(f"{t}[{p}]" for t, p in self.assigned), len(rebuild))
        self.phase = "running"

    def _rebuild(self, ranges: list[tuple[str, int, int, int]]) -> None:
        """Re-read [low, committed) of each partition into the window state; writes nothing."""
        from confluent_kafka import Consumer, TopicPartition

        reader = Consumer(clients.consumer_config(
            self.settings, f"{self.name}-rebuild", f"{self.options.group}-rebuild",
            **{"enable.partition.eof": True}))
        todo = {(t, p): (low, end) for t, p, low, end in ranges}
        reader.assign([TopicPartition(t, p, low) for t, p, low, _ in ranges])
        deadline = time.monotonic() + self.options.rebuild_timeout_s
        try:
            while todo:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"state rebuild did not reach the committed offsets within "
                                       f"{self.options.rebuild_timeout_s:.0f}s ({todo}); is the broker "
                                       "healthy? Restart the processor to retry")
                for msg in reader.consume(1000, 0.5):
                    key = (msg.topic(), msg.partition())
                    if key not in todo:
                        continue
                    if msg.error() is not None:
                        if msg.error().code() == _partition_eof():
                            todo.pop(key)  # the log ends before the commit point (retention)
                        continue
                    low, end = todo[key]
                    if msg.offset() < end:
                        try:
                            event = events.decode(msg.topic(), msg.value())
                        except events.EventDecodeError:
                            pass  # dead-lettered when it was first processed
                        else:
                            apply_event(self.partitions[msg.partition()], msg.topic(), event, msg.offset())
                            self.stats["rebuilt"] += 1
                    if msg.offset() >= end - 1:
                        todo.pop(key)
        finally:
            reader.close()

    def _on_revoke(self, consumer, partitions) -> None:
        revoked = {(tp.topic, tp.partition) for tp in partitions}
        try:
            self._checkpoint(only=revoked)
        except (SinkError, RuntimeError) as exc:
            log.error("could not checkpoint before the rebalance (%s); the next owner reprocesses "
                      "from the last commit", exc)
            self._forget(revoked, keep=False)
            return
        self._forget(revoked, keep=True)

    def _on_commit(self, err, partitions) -> None:
        """An asynchronous commit's answer (served inside ``consume``, on this thread): a
        partition whose commit failed is no longer taken as committed, so the next checkpoint
        sends it again even if it did not move."""
        failed = [tp for tp in partitions or [] if err is not None or tp.error is not None]
        if failed:
            log.warning("offset commit failed (%s); retried at the next checkpoint",
                        err or failed[0].error)
        for tp in failed:
            self.committed.pop((tp.topic, tp.partition), None)

    def _on_lost(self, consumer, partitions) -> None:
        self._forget({(tp.topic, tp.partition) for tp in partitions}, keep=False)

    def _forget(self, revoked: set[tuple[str, int]], keep: bool) -> None:
        for p in {p for _, p in revoked}:
            state = self.partitions.pop(p, None)
            if state is not None and keep:
                self.retired[p] = (state, {k: v for k, v in self.positions.items() if k[1] == p})
        self.assigned -= revoked
        for key in revoked:
            self.positions.pop(key, None)
            self.committed.pop(key, None)
        self.dirty = {(p, a) for p, a in self.dirty if p in self.partitions}
        self.freshness.keep_only(set(self.partitions))
        self.metrics.lag = {k: v for k, v in self.metrics.lag.items() if k in self.assigned}

    # ---- status ---------------------------------------------------------------------------
    def _update_lag(self) -> None:
        """Consumer lag per partition, from the last fetch (main thread: the client is not shared)."""
        from confluent_kafka import TopicPartition

        lag, by_partition = {}, {}
        for t, p in sorted(self.assigned):
            try:
                _, high = self.consumer.get_watermark_offsets(TopicPartition(t, p), cached=True)
            except Exception:
                continue
            if high is not None and high >= 0:
                lag[f"{t}[{p}]"] = by_partition[(t, p)] = max(0, high - self.positions.get((t, p), 0))
        self.lag = lag
        self.metrics.lag = by_partition
        self._lag_at = time.monotonic()

    def status(self) -> dict:
        """A snapshot for the status file; read-only, called from the heartbeat thread."""
        return {
            "name": self.name, "group": self.options.group, "phase": self.phase,
            "blocked": self.blocked, "assigned": sorted(f"{t}[{p}]" for t, p in list(self.assigned)),
            "areas": sum(len(p.areas) for p in list(self.partitions.values())), "lag": dict(self.lag),
            "metrics": self.metrics_url, **self.stats, "checkpoint_steps_max_ms": dict(self.checkpoint.max_ms),
        }


def _tune_gc() -> None:
    """``runtime.freeze_startup_heap``, once the libraries the first push and checkpoint
    use are imported (their objects are frozen too)."""
    import pandas  # noqa: F401
    import pyarrow.parquet  # noqa: F401  (the first checkpoint would import it)

    runtime.freeze_startup_heap()


class ConsumerFailed(RuntimeError):
    """librdkafka raised a fatal error: this consumer instance is done."""


def _fatal_code() -> int:
    from confluent_kafka import KafkaError

    return KafkaError._FATAL


def _partition_eof() -> int:
    from confluent_kafka import KafkaError

    return KafkaError._PARTITION_EOF


# ---- service ---------------------------------------------------------------------------------
def service_name(instance: int) -> str:
    return f"stream-processor-{instance}"


def read_status(settings: Settings, instance: int) -> dict | None:
    return status.read(settings, service_name(instance))
def _summary(s: dict) -> str:
    return (f"processed={s['processed']} rebuilt={s['rebuilt']} pushed_rows={s['pushed_rows']} "
            f"dead_lettered={s['dead_lettered']} lag={sum(s['lag'].values())}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m taxi_mlops.streaming.processor",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--instance", type=int, default=0)
    parser.add_argument("--group", default=GROUP)
    parser.add_argument("--commit-interval", type=float, default=2.0)
    parser.add_argument("--no-tail-tuning", action="store_true", help=argparse.SUPPRESS)  # bench baseline
    args = parser.parse_args(argv)
    settings = get_settings()
    logs.setup(service_name(args.instance), settings.log_level)
    logging.getLogger("feast").setLevel(logging.WARNING)
    processor = StreamProcessor(settings, Options(instance=args.instance, group=args.group,
                                                  commit_interval_s=args.commit_interval,
                                                  tail_tuning=not args.no_tail_tuning))
    return status.serve_worker(settings, processor.name, processor, processor.status,
                               "stream processor", summary=_summary)


if __name__ == "__main__":
    sys.exit(main())
