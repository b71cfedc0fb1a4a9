"""The stream processor's commit protocol, as one object (after Quix Streams' Checkpoint).

A checkpoint makes everything processed so far durable, in this order, and only then moves
the consumer group's offsets:

1. flush the sinks: the online push (Feast/Redis, which also queues the feature records to
   ``taxi.features.realtime``), then the offline Parquet part;
2. flush the producer: every queued record (features, dead letters) acknowledged by Kafka;
3. commit the offsets, each with its rebuild point as metadata
   (``{"low": <lowest offset still held in the partition's window state>}``): synchronously
   before a rebalance or a stop (the next owner starts from there), asynchronously for the
   periodic checkpoint (``wait=False``). Waiting for the broker's answer there paused the
   processor for up to 200 ms every commit interval on a loaded machine (the freshness tail
   of bench/stream_bench.py); nothing depends on it: the commit is only *sent* after steps 1
   and 2, and a commit that fails only leaves an older restart point (the processor hears it
   in its ``on_commit`` callback and commits those partitions again at the next checkpoint).

A failing step raises and leaves the offsets where they were: the next checkpoint retries
from step 1, and a crash reprocesses from the last commit (at-least-once; the window state
and the online rows are idempotent). ``SinkError`` means "retry later" (Redis, disk or the
broker away); any other exception means the processor cannot go on safely.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence


class SinkError(RuntimeError):
    """A write the commit depends on failed; the processor pauses and retries."""


class Sink(Protocol):
    def flush(self) -> None:
        """Make everything handed to this sink durable, or raise ``SinkError``."""


class Producer(Protocol):
    counts: dict
    errors: list

    def flush(self, timeout_s: float) -> int: ...


@dataclass(frozen=True)
class Offset:
    """The next offset to read in one partition, and where its state rebuild starts."""

    topic: str
    partition: int
    offset: int
    low: int

    @property
    def metadata(self) -> str:
        return json.dumps({"low": self.low})


def low_from(metadata: str | None) -> int | None:
    """The rebuild point a commit carried (None: no metadata or not ours)."""
    try:
        return int(json.loads(metadata)["low"]) if metadata else None
    except (ValueError, KeyError, TypeError):
        return None


class CallbackSink:
    """A sink whose flush is a function (the processor's online push)."""

    def __init__(self, name: str, flush: Callable[[], None]):
        self.name, self._flush = name, flush

    def flush(self) -> None:
        self._flush()


class OfflineSink:
    """Rows waiting for the next checkpoint's offline (Parquet) part."""

    name = "offline"

    def __init__(self, write: Callable[[list[dict]], None], where: str = ""):
        self._write, self.where = write, where
        self.pending: list[dict] = []

    def add(self, rows: list[dict]) -> None:
        self.pending.extend(rows)

    def flush(self) -> None:
        if not self.pending:
            return
        try:
            self._write(self.pending)
        except OSError as exc:
            raise SinkError(f"cannot append to the offline store in {self.where}: {exc}; "
                            "check disk space and permissions") from exc
        self.pending = []


class Checkpoint:
    """Steps 1-3 above. ``commit(offsets)`` returns what it committed."""

    def __init__(self, sinks: Sequence[Sink], producer: Producer, consumer, flush_timeout_s: float = 30.0):
        self.sinks, self.producer, self.consumer = list(sinks), producer, consumer
        self.flush_timeout_s = flush_timeout_s
        # The slowest time of each step so far (ms): where a checkpoint's pause comes from
        # (the processor's status file; bench/stream_bench.py prints them).
        self.max_ms: dict[str, float] = {}

    def _took(self, step: str, started: float) -> None:
        ms = (time.perf_counter() - started) * 1000
        if ms > self.max_ms.get(step, 0.0):
            self.max_ms[step] = round(ms, 1)

    def commit(self, offsets: Callable[[], list[Offset]], wait: bool = True) -> list[Offset]:
        # 1. sinks, in order: online (queues the feature records), then offline
        for sink in self.sinks:
            started = time.perf_counter()
            sink.flush()
            self._took(getattr(sink, "name", "sink"), started)
        # 2. producer: every record the sinks and the dead letters queued is acknowledged
        started = time.perf_counter()
        remaining = self.producer.flush(self.flush_timeout_s)
        self._took("producer", started)
        if remaining:
            raise SinkError(f"{remaining} records to Kafka not acknowledged within "
                            f"{self.flush_timeout_s:.0f}s; is the broker up? (`taxi-mlops status`)")
        if self.producer.counts["failed"]:
            raise RuntimeError(f"records failed delivery for good ({self.producer.errors[:3]}); "
                               "fix the cause and restart: processing resumes from the last commit")
        # 3. offsets, with their rebuild points, synchronously
        todo = offsets()
        if todo:
            started = time.perf_counter()
            self._commit_offsets(todo, wait)
            self._took("commit" if wait else "commit_async", started)
        return todo

    def _commit_offsets(self, todo: list[Offset], wait: bool = True) -> None:
        from confluent_kafka import KafkaException, TopicPartition

        try:
            self.consumer.commit(offsets=[TopicPartition(o.topic, o.partition, o.offset, metadata=o.metadata)
                                          for o in todo], asynchronous=not wait)
        except KafkaException as exc:
            raise SinkError(f"offset commit failed: {exc}; is the broker up?") from exc
