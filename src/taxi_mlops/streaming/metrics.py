"""Prometheus metrics of the streaming workers, served over HTTP by each worker.

The names are the observability spec's ([stream_processor], [label_join]). The hot loops do
not call prometheus_client per event: they bump plain counters (dicts and ints, written by
the worker's main thread only) and a custom collector turns them into metric families when
Prometheus scrapes. Histograms are kept as bucket counts here for the same reason: a push
observes a whole batch of freshness values at once (``BucketHistogram.observe_many``).

Import this module before Feast: ``feast.metrics`` points prometheus_client at a temporary
multiprocess folder on import, which would change how every metric created afterwards stores
its value.
"""

from __future__ import annotations

import bisect
import logging
import math
import threading
from collections import defaultdict
from typing import Iterable

import prometheus_client  # noqa: F401  (before Feast, see above)
from prometheus_client.core import CollectorRegistry, CounterMetricFamily, GaugeMetricFamily, \
    HistogramMetricFamily
from prometheus_client.registry import Collector

from taxi_mlops.observability.metrics import FRESHNESS_BUCKETS, LATENCY_BUCKETS
from taxi_mlops.streaming import events, live_performance

PUSH_BUCKETS = (*LATENCY_BUCKETS, 2.5, 5.0)
MAX_REASON_LEN = 40

log = logging.getLogger("taxi_mlops.streaming.metrics")


# ---- pure pieces ---------------------------------------------------------------------------
class BucketHistogram:
    """A histogram as cumulative-ready bucket counts; ``observe_many`` takes a batch."""

    def __init__(self, bounds: Iterable[float]):
        self.bounds = tuple(sorted(bounds))
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.sum = 0.0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        self.observe_many((value,))

    def observe_many(self, values: Iterable[float]) -> int:
        bounds, n = self.bounds, 0
        local = [0] * len(self.counts)
        total = 0.0
        for v in values:
            local[bisect.bisect_left(bounds, v)] += 1  # le: a value equal to a bound counts in it
            total += v
            n += 1
        if n:
            with self._lock:
                for i, c in enumerate(local):
                    if c:
                        self.counts[i] += c
                self.sum += total
        return n

    @property
    def count(self) -> int:
        return sum(self.counts)

    def snapshot(self) -> tuple[list[tuple[str, int]], float]:
        with self._lock:
            counts, total = list(self.counts), self.sum
        buckets, running = [], 0
        for bound, c in zip((*self.bounds, math.inf), counts):
            running += c
            buckets.append(("+Inf" if bound == math.inf else repr(float(bound)), running))
        return buckets, total

    def family(self, name: str, documentation: str) -> HistogramMetricFamily:
        buckets, total = self.snapshot()
        return HistogramMetricFamily(name, documentation, buckets=buckets, sum_value=total)


class FreshnessTracker:
    """Kafka timestamps of the events folded into each dirty area since its last push.

    ``record`` per applied event (a list append); ``take`` the timestamps of the areas a
    successful push carried; ``keep_only`` drops those of revoked partitions. The ages at
    push time are the freshness of each event (message timestamp -> online push done).
    """

    def __init__(self) -> None:
        self.pending: dict[tuple[int, int], list[float]] = {}

    def record(self, key: tuple[int, int], timestamp_s: float | None) -> None:
        if timestamp_s is not None:
            self.pending.setdefault(key, []).append(timestamp_s)

    def take(self, keys: Iterable[tuple[int, int]]) -> list[float]:
        out: list[float] = []
        for key in keys:
            out.extend(self.pending.pop(key, ()))
        return out

    def keep_only(self, partitions: set[int]) -> None:
        self.pending = {k: v for k, v in self.pending.items() if k[0] in partitions}

    def __len__(self) -> int:
        return sum(len(v) for v in self.pending.values())


def message_timestamp_s(msg) -> float | None:
    """The Kafka record timestamp (producer create time, or log append time) in seconds."""
    try:
        kind, ms = msg.timestamp()
    except Exception:
        return None
    return ms / 1000.0 if kind and ms and ms > 0 else None


def dead_letter_reason(error: BaseException | str) -> str:
    """A short, bounded category for ``events_dead_lettered_total{reason}``.

    ``json`` (not JSON), ``empty`` (no value), ``not_object``, ``schema`` (fields invalid or
    missing), ``unknown_version``, ``unknown_topic``; any other exception by its class name.
    """
    if isinstance(error, events.EventDecodeError):
        if error.kind == "malformed":
            if error.reason.startswith("not JSON"):
                return "json"
            if error.reason.startswith("empty"):
                return "empty"
            return "not_object"
        return error.kind
    if isinstance(error, str):
        return "schema"
    return type(error).__name__.lower()[:MAX_REASON_LEN]


# ---- the processor's metrics ---------------------------------------------------------------
class ProcessorMetrics(Collector):
    """[stream_processor]; written by the processor's main thread, read at scrape time."""

    def __init__(self, topics_consumed: Iterable[str] = ()):
        self.consumed: dict[str, int] = {t: 0 for t in topics_consumed}
        self.dead_lettered: dict[tuple[str, str], int] = defaultdict(int)
        self.lag: dict[tuple[str, int], int] = {}
        self.freshness = BucketHistogram(FRESHNESS_BUCKETS)
        self.push_duration = BucketHistogram(PUSH_BUCKETS)
        self.pushed_rows = 0
        self.commits = 0

    def add_consumed(self, counts: dict[str, int]) -> None:
        for topic, n in counts.items():
            self.consumed[topic] = self.consumed.get(topic, 0) + n

    def add_dead_letter(self, topic: str, reason: str) -> None:
        self.dead_lettered[(topic, reason)] += 1

    def collect(self):
        consumed = CounterMetricFamily("taxi_stream_events_consumed_total",
                                       "Events read from the input topics.", labels=["topic"])
        for topic, n in list(self.consumed.items()):
            consumed.add_metric([topic], n)
        yield consumed
        dead = CounterMetricFamily("taxi_stream_events_dead_lettered_total",
                                   "Input events sent to the dead-letter topic, by reason.",
                                   labels=["topic", "reason"])
        for (topic, reason), n in list(self.dead_lettered.items()):
            dead.add_metric([topic, reason], n)
        yield dead
        lag = GaugeMetricFamily("taxi_stream_consumer_lag",
                                "Messages behind the partition's high watermark.",
                                labels=["topic", "partition"])
        for (topic, partition), n in sorted(dict(self.lag).items()):
            lag.add_metric([topic, str(partition)], n)
        yield lag
        yield self.freshness.family("taxi_stream_freshness_seconds",
                                    "Kafka message timestamp to the online push that carries it.")
        yield self.push_duration.family("taxi_stream_push_duration_seconds",
                                        "Duration of one Feast online push.")
        yield CounterMetricFamily("taxi_stream_pushed_rows_total", "Feature rows pushed online.",
                                  value=self.pushed_rows)
        yield CounterMetricFamily("taxi_stream_commits_total", "Offset commits (checkpoints).",
                                  value=self.commits)


# ---- the label join's metrics --------------------------------------------------------------
class LabelJoinMetrics(Collector):
    """[label_join], read from the worker's counters and join state at scrape time."""

    def __init__(self, worker):
        self.worker = worker

    def collect(self):
        stats, state = self.worker.stats, self.worker.state
        for name, key, doc in (("taxi_label_join_labels_total", "labels", "Labels consumed."),
                               ("taxi_label_join_predictions_total", "predictions",
                                "Prediction logs consumed."),
                               ("taxi_label_join_joined_total", "joined",
                                "Prediction/label pairs joined.")):
            yield CounterMetricFamily(name, doc, value=stats[key])
        unmatched = CounterMetricFamily(
            "taxi_label_join_unmatched_total",
            "Labels or predictions that left the window without a partner.", labels=["kind"])
        for kind, n in dict(state.unmatched).items():
            unmatched.add_metric([kind], n)
        yield unmatched
        labels = ["model_name", "model_version", "alias"]
        families = {
            "accuracy": GaugeMetricFamily("taxi_live_accuracy",
                                          "Accuracy (threshold 0.5) over the joined pairs in the window.",
                                          labels=labels),
            "brier": GaugeMetricFamily("taxi_live_brier_score", "Brier score over the window.",
                                       labels=labels),
            "positive_rate": GaugeMetricFamily("taxi_live_positive_rate",
                                               "Share of labels = 1 over the window.", labels=labels),
            "joined": GaugeMetricFamily("taxi_live_joined", "Joined pairs in the window.", labels=labels),
            "predicted": GaugeMetricFamily("taxi_live_predictions",
                                           "Predictions received in the window, joined or not.",
                                           labels=labels),
            "estimated": GaugeMetricFamily(
                "taxi_live_estimated_accuracy",
                "Accuracy estimated before labels: mean max(p, 1-p) over the window's predictions.",
                labels=labels),
            "error": GaugeMetricFamily(
                "taxi_live_estimation_error",
                "Estimated minus realised accuracy, both over the window's joined pairs.",
                labels=labels),
        }
        drift = GaugeMetricFamily(
            "taxi_prediction_drift_score",
            "Jensen-Shannon distance (base 2) of the window's scores to the eval split's, 10 bins; "
            "only with >= 200 predictions and the version's evaluation/calibration.json.",
            labels=["model_name", "model_version"])
        shift = self._label_shift_families()
        for (name, version), window in list(state.models.items()):
            values = [name, version, window.alias or ""]
            n = window.n
            families["joined"].add_metric(values, n)
            if n:
                families["accuracy"].add_metric(values, window.correct / n)
                families["brier"].add_metric(values, min(1.0, max(0.0, window.brier / n)))
                families["positive_rate"].add_metric(values, window.positives / n)
            predicted = getattr(window, "predicted", 0)
            families["predicted"].add_metric(values, max(0, predicted))
            if predicted > 0:
                families["estimated"].add_metric(values, window.estimated_accuracy)
            if n and getattr(window, "estimation_error", None) is not None:
                families["error"].add_metric(values, window.estimation_error)
            if getattr(window, "drift", None) is not None:
                drift.add_metric([name, version], window.drift)
            self._add_label_shift(shift, values, window)
        yield from families.values()
        yield drift
        yield from shift.values()
        yield from self._experiments()

    @staticmethod
    def _label_shift_families() -> dict:
        labels = ["model_name", "model_version", "alias"]
        lp = live_performance
        only = f"only with >= {lp.LABEL_SHIFT_MIN_LABELS} joined labels"
        return {
            "reference": GaugeMetricFamily(
                "taxi_label_reference_rate", "Big-tipper rate of the version's eval split "
                "(evaluation/calibration.json): what taxi_live_positive_rate is tested against.",
                labels=["model_name", "model_version"]),
            "effect": GaugeMetricFamily(
                "taxi_label_shift_effect", "Window's big-tipper rate over the eval split's, minus 1 "
                f"(-0.3: 30% fewer big tippers); {only}.", labels=labels),
            "p_value": GaugeMetricFamily(
                "taxi_label_shift_p_value", "Two-sided Fisher exact test of the window's labels "
                f"against the eval split's; {only}.", labels=labels),
            "detected": GaugeMetricFamily(
                "taxi_label_shift_detected", f"1 when p < {lp.LABEL_SHIFT_ALPHA:g} and the rate moved "
                f"by >= {lp.LABEL_SHIFT_MIN_EFFECT:.0%} (the alert's input); {only}.", labels=labels),
        }

    @staticmethod
    def _add_label_shift(families: dict, values: list, window) -> None:
        reference = getattr(window, "label_reference", None)
        if reference is not None:
            families["reference"].add_metric(values[:2], reference.rate)
        shift = getattr(window, "label_shift", None)
        if shift is not None:
            families["effect"].add_metric(values, shift.effect)
            families["p_value"].add_metric(values, shift.p_value)
            families["detected"].add_metric(values, int(shift.shifted))

    def _experiments(self):
        """Per experiment arm: labels counted and the mean outcome; the test's effect and its
        anytime-valid interval (what decides promotion)."""
        arm = ["experiment", "variant", "model_version", "metric"]
        labels = GaugeMetricFamily("taxi_experiment_labels", "Labels counted per experiment arm.", labels=arm)
        mean = GaugeMetricFamily("taxi_experiment_outcome_mean", "Mean outcome per arm (accuracy, "
                                 "or minus the log loss).", labels=arm)
        effect = GaugeMetricFamily("taxi_experiment_effect", "Treatment minus control, with the "
                                   "anytime-valid interval bounds (bound=estimate|low|high).",
                                   labels=["experiment", "bound", "status"])
        tracker = getattr(self.worker, "tracker", None)
        for summary in tracker.summaries() if tracker is not None else []:
            eid, metric = summary["experiment_id"], summary["metric"]
            for variant, version in summary["versions"].items():
                values = [eid, variant, version, metric]
                labels.add_metric(values, summary["n"][variant])
                if summary["mean"][variant] is not None:
                    mean.add_metric(values, summary["mean"][variant])
            decision = summary["decision"]
            for bound, key in (("estimate", "effect"), ("low", "ci_low"), ("high", "ci_high")):
                if decision.get(key) is not None:
                    effect.add_metric([eid, bound, summary["status"]], decision[key])
        yield labels
        yield mean
        yield effect


# ---- the data-quality worker's metrics ------------------------------------------------------
class DataQualityMetrics(Collector):
    """[data_quality]: events checked, violations by feature and check (both bounded: the
    schema's features and ``quality_checks.CHECKS``), the reference's coverage; feature drift
    of the last scored window (features: the trip event's, tests: ``drift.TESTS``)."""

    def __init__(self) -> None:
        self.checked = 0
        self.violating = 0
        self.violations: dict[tuple[str, str], int] = defaultdict(int)
        self.dead_lettered: dict[str, int] = defaultdict(int)
        self.coverage: float | None = None
        self.model_version: str | None = None
        self.drift_scores: dict[tuple[str, str], float] = {}
        self.drift_detected: dict[str, int] = {}
        self.drift_consecutive: dict[str, int] = {}
        self.drift_windows: dict[str, int] = {"true": 0, "false": 0}

    def record_drift(self, scores: dict[str, dict[str, float]], drifted: Iterable[str]) -> None:
        """One scored window: replaces the last window's gauges (a new dict: scrapes read whole
        windows), and counts consecutive drifted windows per feature (what the alert waits for)."""
        drifted = set(drifted)
        self.drift_scores = {(f, t): v for f, tests in scores.items() for t, v in tests.items()}
        self.drift_detected = {f: int(f in drifted) for f in scores}
        self.drift_consecutive = {f: self.drift_consecutive.get(f, 0) + 1 if f in drifted else 0 for f in scores}
        self.drift_windows["true" if drifted else "false"] += 1

    def reset_drift(self) -> None:
        """A new reference: the last window's scores were against another model's statistics."""
        self.drift_scores, self.drift_detected, self.drift_consecutive = {}, {}, {}

    def collect(self):
        yield CounterMetricFamily("taxi_data_quality_events_checked_total",
                                  "Decodable trips checked against the champion's training schema.",
                                  value=self.checked)
        yield CounterMetricFamily("taxi_data_quality_events_violating_total",
                                  "Checked trips with at least one violation.", value=self.violating)
        violations = CounterMetricFamily("taxi_data_quality_violations_total",
                                         "Failed checks, by schema feature and check.",
                                         labels=["feature", "check"])
        for (feature, check), n in sorted(dict(self.violations).items()):
            violations.add_metric([feature, check], n)
        yield violations
        dead = CounterMetricFamily("taxi_data_quality_dead_lettered_total",
                                   "Undecodable trips sent to the dead-letter topic, by reason.",
                                   labels=["reason"])
        for reason, n in sorted(dict(self.dead_lettered).items()):
            dead.add_metric([reason], n)
        yield dead
        if self.coverage is not None:
            yield GaugeMetricFamily("taxi_data_quality_coverage_ratio",
                                    "Share of the schema's features checked or declared out of scope.",
                                    value=self.coverage)
        if self.model_version is not None:
            info = GaugeMetricFamily("taxi_data_quality_reference_info",
                                     "The model version whose training schema the trips are checked against.",
                                     labels=["model_version"])
            info.add_metric([self.model_version], 1)
            yield info
        score = GaugeMetricFamily("taxi_drift_score", "Drift of the last scored window against the "
                                  "champion's training statistics, by feature and test (jensen_shannon, "
                                  "wasserstein, linf, missing_rate).", labels=["feature", "test"])
        for (feature, test), v in sorted(self.drift_scores.items()):
            score.add_metric([feature, test], v)
        yield score
        detected = GaugeMetricFamily("taxi_drift_detected", "1 when the feature drifted in the last "
                                     "scored window.", labels=["feature"])
        consecutive = GaugeMetricFamily("taxi_drift_consecutive_windows", "Scored windows in a row "
                                        "in which the feature drifted (0 after a clean one).", labels=["feature"])
        for feature, v in sorted(self.drift_detected.items()):
            detected.add_metric([feature], v)
            consecutive.add_metric([feature], self.drift_consecutive.get(feature, 0))
        yield detected
        yield consecutive
        windows = CounterMetricFamily("taxi_drift_windows_total", "Windows scored for drift.",
                                      labels=["drifted"])
        for drifted, n in sorted(self.drift_windows.items()):
            windows.add_metric([drifted], n)
        yield windows


# ---- serving ---------------------------------------------------------------------------------
def registry_with(collector: Collector) -> CollectorRegistry:
    """A registry of our families plus the process's (CPU, memory), without Feast's."""
    from prometheus_client import PlatformCollector, ProcessCollector

    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


def serve(registry: CollectorRegistry, host: str, port: int, what: str) -> str | None:
    """``/metrics`` on ``host:port`` in a daemon thread; the URL, or None (logged) when the
    port is taken: the stream matters more than its metrics, Prometheus shows the target down."""
    try:
        prometheus_client.start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        log.error("%s metrics not served on %s:%d (%s); set another port in the settings",
                  what, host, port, exc)
        return None
    url = f"http://{host}:{port}/metrics"
    log.info("%s metrics on %s", what, url)
    return url
