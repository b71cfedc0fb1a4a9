"""Live model quality: join ``taxi.labels`` with ``taxi.predictions`` by trip id.

A prediction is made at trip start, its label arrives at trip end; the first of the two to
arrive waits (up to ``window_s``) for the other. Each joined pair updates, per model name and
version, the accuracy (threshold 0.5), Brier score, mean predicted probability and positive
rate over the pairs joined in the last ``window_s`` seconds (by the label's Kafka timestamp);
the figures go to the compacted ``taxi.model.metrics`` (key ``name:version``), so the topic
always holds each version's latest figures.

Stateless across restarts by design: the worker reads both topics from ``window_s`` ago
(``offsets_for_times``) and rebuilds the window, so no offsets are committed and a restart
neither loses nor double-counts a pair. One instance reads every partition (labels are keyed
by area, predictions by trip id, so they cannot be co-partitioned); the load is one small
message per prediction.

Experiments (issue 7): a joined pair whose prediction was served under an experiment (not a
shadow) is handed to ``rollout.ExperimentTracker``, which stores it (once, idempotently: the
store, not this worker's window, is the experiment's memory) and runs the sequential test that
promotes or rolls back the challenger.

Before labels (issue 8): every prediction received in the window, joined or not, also feeds
a confidence-based accuracy estimate and a 10-bin score histogram per version, compared once
per publish interval with the eval split's scores (``live_performance``: the arithmetic and
the per-version reference cache).

Label shift (issue 8): once per publish interval, each version's joined labels (its
``positives`` over ``n``, the same pairs as ``taxi_live_positive_rate``) are tested against its
eval split's mean label from the same reference. Joined labels, not every label received:
they are the traffic that version scored (a split arm sees its share), they sit beside the
live accuracy they explain, and a label stream with no predictions (a replay without
``/predict``) is not this model's traffic.

Metrics ([label_join] in the observability spec: counts consumed and joined, unmatched by
kind, live accuracy/Brier/positive rate/joined per model name, version and alias, the
estimate, its error, the prediction drift and the label shift) are served
on ``settings.label_join_metrics_port``. A label or prediction that leaves the window without
a partner counts as unmatched; so does a prediction without a trip id, which can never join.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Callable

from taxi_mlops.streaming import metrics  # noqa: I001  (before anything imports Feast)
from taxi_mlops.observability import logs
from taxi_mlops.settings import Settings, get_settings
from taxi_mlops.streaming import clients, events, live_performance, status, topics

NAME = "label-join"
GROUP = "taxi-label-join"
THRESHOLD = 0.5

log = logging.getLogger("taxi_mlops.streaming.label_join")


@dataclass
class ModelWindow:
    """Running sums of one model version over the window: the joined pairs (``n``...) and,
    separately, every prediction received (``predicted``...), since predictions lead their
    labels by a trip: the label-free estimate and the score histogram need not wait."""

    alias: str | None = None
    n: int = 0
    correct: int = 0
    brier: float = 0.0
    prob: float = 0.0
    positives: int = 0
    total: int = 0
    changed: bool = True
    joined_confidence: float = 0.0  # sum of max(p, 1-p) over the joined pairs
    predicted: int = 0  # predictions received in the window (joined or not)
    confidence: float = 0.0  # sum of max(p, 1-p) over them
    bins: list = field(default_factory=lambda: [0] * live_performance.N_BINS)
    drift: float | None = None  # set once per publish interval, not per message
    label_shift: live_performance.LabelShift | None = None  # likewise
    label_reference: live_performance.LabelReference | None = None  # the eval split's labels
    _label_shift_key: tuple | None = field(default=None, repr=False)  # (positives, n, reference) tested

    def add(self, prob: float, label: int, sign: int = 1) -> None:
        self.n += sign
        self.correct += sign * int((prob >= THRESHOLD) == bool(label))
        self.brier += sign * (prob - label) ** 2
        self.prob += sign * prob
        self.positives += sign * label
        self.joined_confidence += sign * live_performance.confidence(prob)
        self.changed = True

    def add_predicted(self, prob: float, sign: int = 1) -> None:
        self.predicted += sign
        self.confidence += sign * live_performance.confidence(prob)
        self.bins[live_performance.bin_index(prob)] += sign
        self.changed = True

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.n if self.n else None

    @property
    def estimated_accuracy(self) -> float | None:
        """Expected accuracy of every prediction in the window, labelled or not."""
        return min(1.0, max(0.5, self.confidence / self.predicted)) if self.predicted else None

    @property
    def estimation_error(self) -> float | None:
        """Estimated minus realised accuracy over the same joined pairs."""
        if not self.n:
            return None
        return min(1.0, max(0.5, self.joined_confidence / self.n)) - self.correct / self.n

    def update_drift(self, reference: list[float] | None) -> float | None:
        """The JS distance of the window's scores to ``reference``; None below
        ``DRIFT_MIN_PREDICTIONS`` predictions or without a reference."""
        drift = None
        if reference is not None and self.predicted >= live_performance.DRIFT_MIN_PREDICTIONS:
            drift = live_performance.drift_score(self.bins, reference)
        if drift != self.drift:
            self.drift, self.changed = drift, True
        return drift

    def update_label_shift(self, reference: live_performance.LabelReference | None):
        """The window's labels against the eval split's (``live_performance.label_shift``); the
        exact test runs only when the counts or the reference changed."""
        if reference is not None:
            self.label_reference = reference
        key = (self.positives, self.n, reference)
        if key != self._label_shift_key:
            self._label_shift_key = key
            shift = live_performance.label_shift(self.positives, self.n, reference)
            if shift != self.label_shift:
                self.label_shift, self.changed = shift, True
        return self.label_shift

    def metrics(self, name: str, version: str, window_s: float) -> events.ModelMetrics:
        n = self.n
        return events.ModelMetrics(
            model_name=name, model_version=version, model_alias=self.alias, window_s=window_s, n=n,
            accuracy=self.correct / n if n else None,
            brier=min(1.0, max(0.0, self.brier / n)) if n else None,
            mean_probability=self.prob / n if n else None,
            positive_rate=self.positives / n if n else None,
            total_joined=self.total, timestamp=datetime.now(timezone.utc),
            predictions=max(0, self.predicted), estimated_accuracy=self.estimated_accuracy,
            estimation_error=self.estimation_error, prediction_drift=self.drift)


@dataclass
class JoinState:
    """Pending predictions and labels, and the joined pairs inside the window."""

    window_s: float
    # trip_id -> {(model_name, version): (probability, alias, ts, experiment)}; experiment is
    # (experiment_id, variant) for a non-shadow prediction served under an experiment.
    predictions: dict[str, dict[tuple[str, str], tuple]] = field(default_factory=dict)
    labels: dict[str, tuple[int, float]] = field(default_factory=dict)
    joined: deque = field(default_factory=deque)  # (ts, model_key, prob, label)
    joined_keys: set = field(default_factory=set)  # (trip_id, model_key)
    models: dict[tuple[str, str], ModelWindow] = field(default_factory=dict)
    unjoinable: int = 0
    # Pending entries that found a partner; whatever expires outside these is unmatched.
    matched_labels: set = field(default_factory=set)  # trip_id
    matched_predictions: set = field(default_factory=set)  # (trip_id, model_key)
    unmatched: dict[str, int] = field(default_factory=lambda: {"label": 0, "prediction": 0})
    # Called for each joined pair served under an experiment:
    # (trip_id, experiment_id, variant, model_version, probability, label, ts).
    on_experiment_pair: Callable | None = None
    # Every prediction received in the window, by its own timestamp (joined or not), for the
    # label-free estimate and the score histogram; keyed by trip id (request id without one)
    # and model so a redelivery counts once. Shadows count for their own version.
    predicted: deque = field(default_factory=deque)  # (ts, model_key, prob, dedup_id)
    predicted_keys: set = field(default_factory=set)  # (dedup_id, model_key)

    def add_prediction(self, p: events.PredictionLog, ts: float) -> int:
        self._add_predicted(p, ts)
        if not p.trip_id:
            self.unjoinable += 1
            self.unmatched["prediction"] += 1  # it can never meet its label
            return 0
        key = (p.model_name, p.model_version)
        experiment = None
        if getattr(p, "experiment_id", None) and not getattr(p, "shadow", False):
            experiment = (p.experiment_id, p.variant)
        self.predictions.setdefault(p.trip_id, {})[key] = (p.tip_probability, p.model_alias, ts, experiment)
        label = self.labels.get(p.trip_id)
        return self._join(p.trip_id, label[0], max(ts, label[1])) if label else 0

    def _add_predicted(self, p: events.PredictionLog, ts: float) -> None:
        key = (p.model_name, p.model_version)
        dedup = (p.trip_id or f"request:{p.request_id}", key)
        if dedup in self.predicted_keys:
            return
        self.predicted_keys.add(dedup)
        self.predicted.append((ts, key, p.tip_probability, dedup[0]))
        window = self.models.setdefault(key, ModelWindow())
        window.alias = p.model_alias or window.alias
        window.add_predicted(p.tip_probability)

    def add_label(self, lab: events.LabelEvent, ts: float) -> int:
        self.labels[lab.trip_id] = (int(lab.big_tipper), ts)
        return self._join(lab.trip_id, int(lab.big_tipper), ts)

    def _join(self, trip_id: str, label: int, ts: float) -> int:
        joined = 0
        for key, (prob, alias, _, experiment) in self.predictions.get(trip_id, {}).items():
            if (trip_id, key) in self.joined_keys:
                continue  # a redelivered prediction or label
            window = self.models.setdefault(key, ModelWindow())
            window.alias = alias or window.alias
            window.add(prob, label)
            window.total += 1
            self.joined.append((ts, key, prob, label, trip_id))
            self.joined_keys.add((trip_id, key))
            self.matched_labels.add(trip_id)
            self.matched_predictions.add((trip_id, key))
            joined += 1
            if experiment is not None and self.on_experiment_pair is not None:
                self.on_experiment_pair(trip_id, experiment[0], experiment[1], key[1], prob, label, ts)
        return joined

    def expire(self, now: float) -> None:
        cutoff = now - self.window_s
        while self.joined and self.joined[0][0] < cutoff:
            _, key, prob, label, trip_id = self.joined.popleft()
            self.models[key].add(prob, label, sign=-1)
            self.joined_keys.discard((trip_id, key))
        # Arrival order is nearly time order here too (a late straggler leaves a little late).
        while self.predicted and self.predicted[0][0] < cutoff:
            _, key, prob, dedup_id = self.predicted.popleft()
            self.models[key].add_predicted(prob, sign=-1)
            self.predicted_keys.discard((dedup_id, key))
        # Dicts keep arrival order, which is nearly time order: stop at the first recent entry
        # instead of scanning an hour of pending trips every second.
        for pending, first_ts in ((self.labels, lambda v: v[1]),
                                  (self.predictions, lambda v: min(entry[2] for entry in v.values()))):
            old = []
            for trip_id, value in pending.items():
                if first_ts(value) >= cutoff:
                    break
                old.append(trip_id)
            for trip_id in old:
                value = pending.pop(trip_id)
                if pending is self.labels:
                    if trip_id in self.matched_labels:
                        self.matched_labels.discard(trip_id)
                    else:
                        self.unmatched["label"] += 1
                else:
                    for key in value:
                        if (trip_id, key) in self.matched_predictions:
                            self.matched_predictions.discard((trip_id, key))
                        else:
                            self.unmatched["prediction"] += 1


class LabelJoin:
    def __init__(self, settings: Settings, window_s: float = 3600.0, publish_interval_s: float = 1.0):
        from confluent_kafka import Consumer

        self.settings = settings
        self.bootstrap = settings.kafka_bootstrap_servers
        self.window_s, self.publish_interval_s = window_s, publish_interval_s
        self.consumer = Consumer(clients.consumer_config(settings, NAME, GROUP, **clients.BULK_FETCH))
        self.producer = events.EventProducer(settings, NAME, **{"message.timeout.ms": 0})
        self.state = JoinState(window_s)
        self.tracker = None
        try:
            from taxi_mlops.rollout.tracker import ExperimentTracker

            self.tracker = ExperimentTracker(settings)
            self.state.on_experiment_pair = self._observe_experiment
        except Exception as exc:  # no store: joins and live metrics still run
            log.error("rollout store unavailable, experiments are not evaluated: %s", exc)
        self.references = live_performance.ReferenceCache(
            settings.state_dir / "drift",
            lambda name, version: live_performance.fetch_reference(settings.mlflow_tracking_uri, name, version),
            default_name=settings.model_name)
        self.stop_event = threading.Event()
        self.phase = "starting"
        self.stats = {"predictions": 0, "labels": 0, "joined": 0, "dead_lettered": 0, "published": 0}
        self.metrics_url: str | None = None

    def _assign_from_window(self) -> None:
        from confluent_kafka import TopicPartition

        since_ms = int((time.time() - self.window_s) * 1000)
        wanted = []
        for topic in (topics.PREDICTIONS, topics.LABELS):
            n = topics.partition_count(self.settings, topic)
            wanted += [TopicPartition(topic, p, since_ms) for p in range(n)]
        offsets = self.consumer.offsets_for_times(wanted, timeout=clients.ADMIN_TIMEOUT_S)
        # -1: nothing that recent in this partition: start at its end.
        self.consumer.assign([TopicPartition(tp.topic, tp.partition, tp.offset if tp.offset >= 0 else -1)
                              for tp in offsets])

    def run(self) -> None:
        self.metrics_url = metrics.serve(metrics.registry_with(metrics.LabelJoinMetrics(self)),
                                         self.settings.host, self.settings.label_join_metrics_port, NAME)
        topics.ensure_topics(self.settings)
        self._assign_from_window()
        self.phase = "running"
        log.info("joining %s with %s over %.0fs windows", topics.LABELS, topics.PREDICTIONS, self.window_s)
        last_publish = 0.0
        while not self.stop_event.is_set():
            for msg in self.consumer.consume(500, 0.2):
                if msg.error() is not None:
                    if msg.error().fatal():
                        raise RuntimeError(f"fatal Kafka error: {msg.error()}")
                    continue
                self._handle(msg)
            now = time.time()
            if now - last_publish >= self.publish_interval_s:
                self.state.expire(now)
                self.publish()
                last_publish = now
        self.publish()
        self.producer.flush(10)
        self.consumer.close()
        self.phase = "stopped"

    def _handle(self, msg) -> None:
        try:
            event = events.decode(msg.topic(), msg.value())
        except events.EventDecodeError as exc:
            self.producer.send_dead_letter(events.dead_letter(
                msg.topic(), msg.value(), exc, source=NAME, partition=msg.partition(),
                offset=msg.offset(), key=msg.key()))
            self.stats["dead_lettered"] += 1
            return
        _, ts_ms = msg.timestamp()
        ts = ts_ms / 1000 if ts_ms and ts_ms > 0 else time.time()
        if msg.topic() == topics.PREDICTIONS:
            self.stats["predictions"] += 1
            self.stats["joined"] += self.state.add_prediction(event, ts)
        else:
            self.stats["labels"] += 1
            self.stats["joined"] += self.state.add_label(event, ts)

    def _observe_experiment(self, trip_id, experiment_id, variant, version, prob, label, ts) -> None:
        try:
            self.tracker.observe(trip_id=trip_id, experiment_id=experiment_id, variant=variant,
                                 model_version=version, probability=prob, label=label, ts=ts)
        except Exception as exc:  # a locked store must not stop the join
            self.stats["experiment_errors"] = self.stats.get("experiment_errors", 0) + 1
            log.warning("experiment %s: observation not stored: %s", experiment_id, exc)

    def update_drift(self) -> None:
        """Each version's prediction drift and label shift, once per publish interval (10 bins
        and one 2x2 exact test: cheap); the reference is fetched in the background the first
        time a version needs one."""
        for (name, version), window in list(self.state.models.items()):
            enough = window.predicted >= live_performance.DRIFT_MIN_PREDICTIONS
            window.update_drift(self.references.get(name, version) if enough else None)
            window.update_label_shift(self.references.labels(name, version) if window.n else None)

    def publish(self) -> None:
        references = getattr(self, "references", None)
        if references is not None:
            self.update_drift()
        for (name, version), window in self.state.models.items():
            if not window.changed:
                continue
            metrics = window.metrics(name, version, self.window_s)
            self.producer.produce_raw(topics.MODEL_METRICS, metrics.to_bytes(), f"{name}:{version}".encode())
            window.changed = False
            self.stats["published"] += 1
        self.producer.poll(0)

    def snapshot(self) -> dict:
        return {"name": NAME, "phase": self.phase, **self.stats, "unjoinable": self.state.unjoinable,
                "unmatched": dict(self.state.unmatched), "metrics": self.metrics_url,
                "pending_predictions": len(self.state.predictions), "pending_labels": len(self.state.labels),
                "experiments": dict(self.tracker.counts) if self.tracker else None,
                "models": {f"{n}:{v}": {"n": w.n, "accuracy": (w.correct / w.n) if w.n else None,
                                        "predicted": w.predicted, "estimated_accuracy": w.estimated_accuracy,
                                        "drift": w.drift,
                                        "label_shift": asdict(w.label_shift) if w.label_shift else None}
                           for (n, v), w in list(self.state.models.items())}}

    def stop(self, *_args) -> None:
        self.stop_event.set()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m taxi_mlops.streaming.label_join",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--window", type=float, default=3600.0, help="seconds of joined pairs per figure")
    args = parser.parse_args(argv)
    settings = get_settings()
    logs.setup(NAME, settings.log_level)
    worker = LabelJoin(settings, window_s=args.window)
    return status.serve_worker(settings, NAME, worker, worker.snapshot, "label join",
                               summary=lambda s: f"joined={s['joined']} models={s['models']}")


if __name__ == "__main__":
    sys.exit(main())
