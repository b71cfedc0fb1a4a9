"""The prediction-store worker: ``taxi.predictions`` and ``taxi.labels`` into the store.

Consumer group ``taxi-prediction-store``, offsets committed only after the batch they cover is
committed to SQLite (at least once), and every write an upsert keyed by request id or trip id
(idempotent): a crash or a restart replays at most one batch and changes nothing. Labels are
stored by trip id and joined when read, so a label that arrives before its prediction joins
just the same. An undecodable event goes to ``taxi.deadletter`` with the reason.

Progress: ``run/prediction-store.status.json`` (``status``), and Prometheus metrics on
``settings.prediction_store_metrics_port``.
"""

from __future__ import annotations

import argparse
import logging
import sqlite3
import sys
import threading
import time

from taxi_mlops.streaming import metrics  # noqa: I001  (before anything imports Feast)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from taxi_mlops.lineage.predictions import PredictionStore
from taxi_mlops.observability import logs
from taxi_mlops.settings import Settings, get_settings
from taxi_mlops.streaming import clients, events, status, topics

NAME = "prediction-store"
GROUP = "taxi-prediction-store"
BATCH = 2000
log = logging.getLogger("taxi_mlops.lineage.consumer")


class StoreMetrics(Collector):
    """``taxi_prediction_store_*``: events consumed and written, dead letters, commits, lag."""

    def __init__(self, worker: "PredictionStoreWorker"):
        self.worker = worker

    def collect(self):
        stats = self.worker.stats
        consumed = CounterMetricFamily("taxi_prediction_store_events_total",
                                       "Events written to the prediction store.", labels=["kind"])
        consumed.add_metric(["prediction"], stats["predictions"])
        consumed.add_metric(["label"], stats["labels"])
        yield consumed
        yield CounterMetricFamily("taxi_prediction_store_dead_lettered_total",
                                  "Undecodable events sent to the dead-letter topic.",
                                  value=stats["dead_lettered"])
        pruned = CounterMetricFamily("taxi_prediction_store_pruned_total",
                                     "Rows deleted by retention (settings.prediction_retention_days).",
                                     labels=["kind"])
        pruned.add_metric(["prediction"], stats["pruned_predictions"])
        pruned.add_metric(["label"], stats["pruned_labels"])
        yield pruned
        yield CounterMetricFamily("taxi_prediction_store_commits_total",
                                  "Batches committed to SQLite and then to Kafka.", value=stats["commits"])
        lag = GaugeMetricFamily("taxi_prediction_store_consumer_lag",
                                "Messages behind the partition's high watermark.", labels=["topic", "partition"])
        for (topic, partition), n in sorted(dict(self.worker.lag).items()):
            lag.add_metric([topic, str(partition)], n)
        yield lag


class PredictionStoreWorker:
    def __init__(self, settings: Settings, batch: int = BATCH, group: str = GROUP):
        from confluent_kafka import Consumer

        self.settings, self.batch = settings, batch
        self.bootstrap = settings.kafka_bootstrap_servers
        self.store = PredictionStore(settings.predictions_location)
        self.consumer = Consumer(clients.consumer_config(settings, NAME, group, **clients.BULK_FETCH))
        self.producer = events.EventProducer(settings, NAME)
        self.stop_event = threading.Event()
        self.phase = "starting"
        self.stats = {"predictions": 0, "labels": 0, "dead_lettered": 0, "commits": 0,
                      "pruned_predictions": 0, "pruned_labels": 0}
        self._next_prune = 0.0  # monotonic; 0: prune once at start
        self.lag: dict[tuple[str, int], int] = {}
        self.metrics_url: str | None = None

    def run(self) -> None:
        self.metrics_url = metrics.serve(metrics.registry_with(StoreMetrics(self)), self.settings.host,
                                         self.settings.prediction_store_metrics_port, NAME)
        topics.ensure_topics(self.settings)
        self.consumer.subscribe([topics.PREDICTIONS, topics.LABELS], on_assign=clients.assign_at_committed)
        self.phase = "running"
        log.info("storing %s and %s in %s", topics.PREDICTIONS, topics.LABELS, self.settings.predictions_store_name)
        while not self.stop_event.is_set():
            self.step(self.consumer.consume(self.batch, 0.5))
            self.prune_if_due()
        self.producer.flush(10)
        self.consumer.close()
        self.store.close()
        self.phase = "stopped"

    def step(self, messages) -> int:
        """Decode, write in one transaction, flush dead letters, then commit -> events written."""
        predictions, labels, offsets = [], [], {}
        for msg in messages:
            if msg.error() is not None:
                if msg.error().fatal():
                    raise RuntimeError(f"fatal Kafka error: {msg.error()}")
                continue
            key = (msg.topic(), msg.partition())
            offsets[key] = max(offsets.get(key, -1), msg.offset() + 1)
            try:
                event = events.decode(msg.topic(), msg.value())
            except events.EventDecodeError as exc:
                self.producer.send_dead_letter(events.dead_letter(
                    msg.topic(), msg.value(), exc, source=NAME, partition=msg.partition(),
                    offset=msg.offset(), key=msg.key()))
                self.stats["dead_lettered"] += 1
                continue
            (predictions if msg.topic() == topics.PREDICTIONS else labels).append(event.model_dump())
        if not offsets:
            return 0
        self._write(predictions, labels)
        if self.producer.flush(30):
            log.warning("dead letters not acknowledged within 30 s; offsets left uncommitted")
        else:
            self._commit(offsets)
        self.stats["predictions"] += len(predictions)
        self.stats["labels"] += len(labels)
        self.stats["commits"] += 1
        self._update_lag(offsets)
        return len(predictions) + len(labels)

    def prune_if_due(self, now: float | None = None) -> tuple[int, int]:
        """Retention, between batches: the worker is the store's only writer, so pruning here
        never contends with its own writes."""
        now = time.monotonic() if now is None else now
        days = self.settings.prediction_retention_days
        if days <= 0 or now < self._next_prune:
            return 0, 0
        self._next_prune = now + self.settings.prediction_prune_interval_s
        try:
            deleted = self.store.prune(time.time() - days * 86400.0)
        except sqlite3.OperationalError as exc:  # locked by a long reader: the next round prunes
            log.warning("pruning the prediction store failed (%s); retrying in %.0f s", exc,
                        self.settings.prediction_prune_interval_s)
            return 0, 0
        self.stats["pruned_predictions"] += deleted[0]
        self.stats["pruned_labels"] += deleted[1]
        if any(deleted):
            log.info("pruned %d predictions and %d labels older than %g days", *deleted, days)
        return deleted

    def _write(self, predictions: list[dict], labels: list[dict]) -> None:
        """The batch into SQLite; a locked or full database is retried (these messages are
        consumed already: skipping them would lose them until the next restart)."""
        while True:
            try:
                self.store.write(predictions, labels)
                return
            except sqlite3.OperationalError as exc:
                self.stats["write_retries"] = self.stats.get("write_retries", 0) + 1
                log.warning("prediction store write failed (%s); retrying", exc)
                if self.stop_event.wait(1.0):
                    raise

    def _commit(self, offsets: dict) -> None:
        """Synchronous; a failure (broker away) is logged: the next batch commits past it, and a
        restart before that replays it into idempotent upserts."""
        from confluent_kafka import KafkaException, TopicPartition

        try:
            self.consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()],
                                 asynchronous=False)
        except KafkaException as exc:
            log.warning("offset commit failed (%s); the batch is stored, a restart would replay it", exc)

    def _update_lag(self, offsets: dict) -> None:
        from confluent_kafka import TopicPartition

        for (topic, partition), position in offsets.items():
            try:
                _, high = self.consumer.get_watermark_offsets(TopicPartition(topic, partition),
                                                              timeout=1.0, cached=True)
                self.lag[(topic, partition)] = max(0, high - position)
            except Exception:  # a figure, not a reason to stop
                continue

    def snapshot(self) -> dict:
        return {"name": NAME, "phase": self.phase, **self.stats, "store": self.settings.predictions_store_name,
                "lag": sum(self.lag.values()), "metrics": self.metrics_url}

    def stop(self, *_args) -> None:
        self.stop_event.set()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m taxi_mlops.lineage",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=BATCH, help="messages per SQLite transaction at most")
    args = parser.parse_args(argv)
    settings = get_settings()
    logs.setup(NAME, settings.log_level)
    worker = PredictionStoreWorker(settings, batch=args.batch)
    return status.serve_worker(settings, NAME, worker, worker.snapshot, "prediction store",
                               summary=lambda s: f"predictions={s['predictions']} labels={s['labels']} "
                                                 f"lag={s['lag']}")


if __name__ == "__main__":
    sys.exit(main())
