"""Data quality on the stream: every trip checked against the champion's training schema.

Reads ``taxi.trips.raw`` in its own consumer group (``taxi-data-quality``, beside the stream
processor's) and checks every decodable trip against the TFDV schema of the pipeline run that
trained the model holding ``settings.serving_alias`` (the champion). The schema is found, not
copied: the champion's MLflow version carries the tag ``tfx_model_uri``, ML Metadata leads
from that Trainer ``Model`` artifact back to SchemaGen's ``Schema`` and StatisticsGen's
``ExampleStatistics`` of the same run (``lineage.mlmd.training_data``), whose value ranges
stand in where the schema has none. The checks themselves are ``quality_checks`` (pure).

Outputs
* ``taxi.data.quality``: a ``DataQualityV1`` record (``kind="violation"``) per failed check
  of a trip, naming the feature and the check, keyed by trip id; and a ``window_summary``
  every ``quality_window_events`` trips or ``quality_window_s`` seconds.
* Undecodable trips go to ``taxi.deadletter`` with the reason, as the processor does.
* Metrics ([data_quality]) on ``settings.quality_metrics_port``: events checked,
  events with violations, violations by feature and check, the reference's coverage.
* Feature drift (``drift.py``): the trips of each window are also compared with the
  champion's StatisticsGen train-split histograms (cached per model version in
  ``<state_dir>/drift/reference-<version>.json``). A window is scored once it holds
  ``drift_min_events`` trips (smaller ones carry over); scores go to ``taxi_drift_*``, and a
  drifted window to ``taxi.data.quality`` (a ``DataQualityV2``, ``kind="drift"``) and to
  ``<state_dir>/drift/reports/<timestamp>-<version>.json``.

Until a champion exists the worker runs without consuming (its offsets wait in Kafka); it
re-reads the alias every ``quality_reference_refresh_s`` and switches schema when the
champion changes. At-least-once: offsets are committed only after every record produced
for the events before them is acknowledged; a restart re-checks at most the last interval.

Run ``python -m taxi_mlops.streaming.quality`` (settings from ``TAXI_*``), or start
``taxi_mlops.stack.streaming.data_quality_service(settings)`` with the supervisor.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone

from taxi_mlops.streaming import metrics  # noqa: I001  (before anything imports Feast)
from taxi_mlops.observability import logs
from taxi_mlops.settings import Settings, get_settings
from taxi_mlops.streaming import clients, drift, events, status, topics
from taxi_mlops.streaming import quality_checks as qc

NAME = "data-quality"
GROUP = "taxi-data-quality"
SUMMARY = "window_summary"

log = logging.getLogger("taxi_mlops.streaming.quality")


@dataclass
class Reference:
    """The schema (and statistics) trips are checked against, and where they came from."""

    model_version: str
    model_uri: str
    schema_uri: str
    statistics_uri: str | None
    validator: qc.Validator
    drift: drift.DriftReference | None = None
    drift_error: str | None = None

    def labels(self) -> dict[str, str]:
        out = {"model_version": self.model_version, "tfx_model_uri": self.model_uri, "schema_uri": self.schema_uri}
        if self.statistics_uri:
            out["statistics_uri"] = self.statistics_uri
        return out


def load_reference(settings: Settings) -> Reference | None:
    """The champion's training schema via MLflow (the version's ``tfx_model_uri``) and ML
    Metadata; None while no version holds the alias."""
    from taxi_mlops.lineage import mlmd
    from taxi_mlops.registry import models

    ref = models.by_alias(settings.mlflow_tracking_uri, settings.model_name, settings.serving_alias)
    if ref is None:
        return None
    if not ref.tfx_model_uri:
        raise LookupError(f"{settings.model_name} v{ref.version} (@{settings.serving_alias}) has no "
                          "tfx_model_uri tag: it was not registered by the pipeline's MlflowLogger")
    data = mlmd.training_data(settings.mlmd_path, ref.tfx_model_uri)
    statistics = qc.load_statistics(data.statistics.uri) if data.statistics else None
    validator = qc.Validator(qc.load_schema(data.schema.uri), statistics)
    drift_ref, drift_error = None, "the run has no StatisticsGen statistics"
    if data.statistics:
        try:  # drift is an addition: a broken histogram must not stop the schema checks
            drift_ref, drift_error = drift.cached_reference(settings.state_dir, ref.version, data.statistics.uri), None
        except Exception as exc:
            drift_error = f"{type(exc).__name__}: {exc}"
    return Reference(model_version=ref.version, model_uri=ref.tfx_model_uri, schema_uri=data.schema.uri,
                     statistics_uri=data.statistics.uri if data.statistics else None, validator=validator,
                     drift=drift_ref, drift_error=drift_error)


class DataQualityWorker:
    def __init__(self, settings: Settings, commit_interval_s: float = 2.0, batch_size: int = 500):
        from confluent_kafka import Consumer

        self.settings = settings
        self.bootstrap = settings.kafka_bootstrap_servers
        self.commit_interval_s, self.batch_size = commit_interval_s, batch_size
        self.consumer = Consumer(clients.consumer_config(settings, NAME, GROUP))
        self.producer = events.EventProducer(settings, NAME, **{"message.timeout.ms": 0})
        self.metrics = metrics.DataQualityMetrics()
        self.window = qc.QualityWindow(settings.quality_window_events, settings.quality_window_s)
        self.drift_thresholds = drift.Thresholds.from_settings(settings)
        self.drift_window = drift.DriftWindow(drift.DEFAULT_FEATURES)
        self.last_drift: dict | None = None
        self.reference: Reference | None = None
        self.reference_error: str | None = None
        self.positions: dict[tuple[str, int], int] = {}
        self.committed: dict[tuple[str, int], int] = {}
        self.subscribed = False
        self.stop_event = threading.Event()
        self.phase = "starting"
        self.metrics_url: str | None = None
        self.stats = {"checked": 0, "violating": 0, "violations": 0, "dead_lettered": 0, "windows": 0,
                      "drift_windows": 0, "drifted_windows": 0, "commits": 0, "last_message_at": None}
        self._logged_violations = 0
        self._waiting_logged = False

    # ---- lifecycle ------------------------------------------------------------------------
    def run(self) -> None:
        self.metrics_url = metrics.serve(metrics.registry_with(self.metrics), self.settings.host,
                                         self.settings.quality_metrics_port, NAME)
        topics.ensure_topics(self.settings)
        self.phase = "running"
        last_refresh, last_commit = -1e9, time.monotonic()
        while not self.stop_event.is_set():
            now = time.monotonic()
            if now - last_refresh >= (self.settings.quality_reference_refresh_s if self.reference else 5.0):
                self.refresh_reference()
                last_refresh = now
            if self.reference is None:
                self.stop_event.wait(1.0)
                continue
            if not self.subscribed:
                self.consumer.subscribe([topics.TRIPS], on_assign=clients.assign_at_committed,
                                        on_revoke=self._on_revoke, on_lost=self._on_lost)
                self.subscribed = True
                log.info("checking %s as group %s against %s", topics.TRIPS, GROUP, self.reference.schema_uri)
            for msg in self.consumer.consume(self.batch_size, 0.2):
                self._handle(msg)
            if self.window.due(time.time()):
                self._publish_window()
            if time.monotonic() - last_commit >= self.commit_interval_s:
                self._commit()
                last_commit = time.monotonic()
        self.phase = "stopping"
        if self.window.events:
            self._publish_window()
        if self.subscribed:
            self._commit()
        self.consumer.close()
        self.phase = "stopped"

    def stop(self, *_args) -> None:
        self.stop_event.set()

    def refresh_reference(self) -> None:
        """(Re)load the reference when the champion changed; keep the old one on errors."""
        try:
            from taxi_mlops.registry import models

            if self.reference is not None:
                ref = models.by_alias(self.settings.mlflow_tracking_uri, self.settings.model_name,
                                      self.settings.serving_alias)
                if ref is None or ref.version == self.reference.model_version:
                    return
            reference = load_reference(self.settings)
        except Exception as exc:  # MLflow down, MLMD being written, ...: retry later
            message = f"{type(exc).__name__}: {exc}"
            if message != self.reference_error:
                log.warning("cannot load the data-quality reference (%s); retrying", message)
            self.reference_error = message
            return
        self.reference_error = None
        if reference is None:
            if not self._waiting_logged:
                self._waiting_logged = True
                log.info("no %s model yet: waiting for one before checking trips", self.settings.serving_alias)
            return
        if self.window.events:  # a window belongs to one reference
            self._publish_window()
        self.reference = reference
        self.drift_window.clear()  # a drift window too belongs to one reference
        self.metrics.reset_drift()
        if reference.drift is None:
            log.error("no drift reference for v%s (%s): drift is not scored", reference.model_version,
                      reference.drift_error)
        else:
            log.info("drift reference: v%s, %d features from %s", reference.model_version,
                     len(reference.drift.features), reference.drift.statistics_uri)
        v = reference.validator
        self.metrics.coverage, self.metrics.model_version = v.coverage, reference.model_version
        log.info("data-quality reference: %s v%s, schema %s (%d features: %d checked, %d out of scope), "
                 "coverage %.2f", self.settings.model_name, reference.model_version, reference.schema_uri,
                 len(v.specs), len(v.checked), len(v.skipped), v.coverage)
        if v.unaccounted:
            log.error("schema features neither checked nor declared out of scope: %s; map them in "
                      "streaming/quality_checks.py (FEATURE_SOURCES or OUT_OF_SCOPE)", v.unaccounted)

    # ---- per message ----------------------------------------------------------------------
    def _handle(self, msg) -> None:
        err = msg.error()
        if err is not None:
            if err.fatal():
                raise RuntimeError(f"fatal Kafka error: {err}")
            log.warning("consumer: %s", err)
            return
        topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
        self.positions[(topic, partition)] = offset + 1
        self.stats["last_message_at"] = time.time()
        try:
            event = events.decode(topic, msg.value())
        except events.EventDecodeError as exc:
            self.producer.send_dead_letter(events.dead_letter(
                topic, msg.value(), exc, source=NAME, partition=partition, offset=offset, key=msg.key()))
            self.stats["dead_lettered"] += 1
            self.metrics.dead_lettered[metrics.dead_letter_reason(exc)] += 1
            if self.stats["dead_lettered"] <= 20:  # the first few; then the metric counts them
                log.warning("undecodable trip at %s[%d]@%d dead-lettered: %s", topic, partition, offset, exc.reason)
            return
        fields, now_s = event.model_dump(), time.time()
        violations = self.reference.validator.check(fields, event.model_fields_set)
        self.window.add(violations, now_s)
        self.drift_window.add(fields, event.model_fields_set, now_s)
        self.stats["checked"] += 1
        self.metrics.checked += 1
        if not violations:
            return
        self.stats["violating"] += 1
        self.stats["violations"] += len(violations)
        self.metrics.violating += 1
        now = datetime.now(timezone.utc)
        reference = self.reference.labels()
        for v in violations:
            self.metrics.violations[(v.feature, v.check)] += 1
            record = events.DataQuality(
                source=NAME, kind="violation", check=v.check, passed=False, feature=v.feature,
                trip_id=event.trip_id, event_time=event.event_time, reference=reference, timestamp=now,
                details={**v.as_dict(), "topic": topic, "partition": partition, "offset": offset})
            self.producer.produce_raw(topics.DATA_QUALITY, record.to_bytes(), event.trip_id.encode())
        if self._logged_violations < 20:  # the first few in full; then the window summaries
            self._logged_violations += 1
            log.info("trip %s violates the schema: %s", event.trip_id,
                     "; ".join(f"{v.feature} {v.check} ({v.value!r})" for v in violations),
                     extra={"trip_id": event.trip_id})

    def _publish_window(self) -> None:
        summary = self.window.close(time.time())
        drift_info = self._score_drift(summary["window_end"])
        record = events.DataQuality(
            source=NAME, kind="window_summary", check=SUMMARY, passed=summary["violating_events"] == 0,
            details={**summary, "coverage": self.metrics.coverage, "drift": drift_info},
            reference=self.reference.labels() if self.reference else {},
            timestamp=datetime.now(timezone.utc))
        self.producer.produce_raw(topics.DATA_QUALITY, record.to_bytes(), SUMMARY.encode())
        self.stats["windows"] += 1
        level = logging.WARNING if summary["violating_events"] else logging.INFO
        log.log(level, "window: %d trips checked, %d with violations %s", summary["events"],
                summary["violating_events"],
                {f"{v['feature']}/{v['check']}": v["count"] for v in summary["violations"]})

    def _score_drift(self, now: float) -> dict:
        """Score the drift window at a summary window's close (once it has ``min_events``
        trips: fewer would be noise, so they carry over); publish and report a drifted one."""
        reference = self.reference.drift if self.reference else None
        window = self.drift_window
        if reference is None:
            window.clear()
            return {"scored": False, "reason": "no drift reference"}
        result = drift.score(reference, window, self.drift_thresholds)
        if result is None:
            return {"scored": False, "pending_events": window.events,
                    "min_events": self.drift_thresholds.min_events}
        started = window.started
        window.clear()
        self.metrics.record_drift(result.scores, result.drifted)
        self.stats["drift_windows"] += 1
        info = {"scored": True, "events": result.events, "drifted_features": sorted(result.drifted)}
        self.last_drift = {**info, "window_end": now}
        limits = result.thresholds.limits()
        if not result.is_drift:
            top = {t: max(((sc[t], f) for f, sc in result.scores.items() if t in sc), default=(0.0, "-"))
                   for t in limits}
            log.info("no drift in %d trips against v%s (highest: %s)", result.events, reference.model_version,
                     ", ".join(f"{t} {v:.3f} {f}" for t, (v, f) in top.items()))
            return info
        self.stats["drifted_windows"] += 1
        worst = max(result.drifted, key=lambda f: max(result.scores[f][t] / limits[t] for t in result.drifted[f]))
        stamp = datetime.now(timezone.utc)
        details = {**result.as_details(), "window_start": started, "window_end": now,
                   "reference_statistics_uri": reference.statistics_uri, "reference_split": reference.split}
        record = events.DataQualityV2(source=NAME, kind="drift", check="drift", passed=False, feature=worst,
                                      details=details, reference=self.reference.labels(), timestamp=stamp)
        self.producer.produce_raw(topics.DATA_QUALITY, record.to_bytes(), b"drift")
        try:
            reports = self.settings.state_dir / "drift" / "reports"
            reports.mkdir(parents=True, exist_ok=True)
            path = reports / f"{stamp.strftime('%Y%m%dT%H%M%S%fZ')}-{reference.model_version}.json"
            path.write_text(json.dumps(record.model_dump(mode="json"), indent=1))
            info["report"] = str(path)
        except OSError as exc:  # the record is out; a full disk must not stop the checks
            log.error("drift report not written: %s", exc)
        log.warning("drift in %d trips against v%s: %s", result.events, reference.model_version,
                    {f: {t: result.scores[f][t] for t in tests} for f, tests in result.drifted.items()})
        return info

    # ---- offsets --------------------------------------------------------------------------
    def _commit(self, only: set[tuple[str, int]] | None = None) -> None:
        """Offsets of the checked events, once every record produced for them is durable."""
        from confluent_kafka import KafkaException, TopicPartition

        todo = [TopicPartition(t, p, o) for (t, p), o in self.positions.items()
                if self.committed.get((t, p)) != o and (only is None or (t, p) in only)]
        if not todo:
            self.producer.poll(0)
            return
        try:
            self.producer.flush_or_raise(30.0)
            self.consumer.commit(offsets=todo, asynchronous=False)
        except (events.ProduceError, KafkaException) as exc:
            log.error("offsets not committed (%s); a restart re-checks from the last commit", exc)
            return
        for tp in todo:
            self.committed[(tp.topic, tp.partition)] = tp.offset
        self.stats["commits"] += 1

    def _on_revoke(self, consumer, partitions) -> None:
        revoked = {(tp.topic, tp.partition) for tp in partitions}
        self._commit(only=revoked)
        self._forget(revoked)

    def _on_lost(self, consumer, partitions) -> None:
        self._forget({(tp.topic, tp.partition) for tp in partitions})

    def _forget(self, keys: set[tuple[str, int]]) -> None:
        for key in keys:
            self.positions.pop(key, None)
            self.committed.pop(key, None)

    # ---- status ---------------------------------------------------------------------------
    def snapshot(self) -> dict:
        ref = self.reference
        return {"name": NAME, "group": GROUP, "phase": self.phase, "metrics": self.metrics_url, **self.stats,
                "reference": ({**ref.labels(), "coverage": ref.validator.coverage,
                               "unaccounted": ref.validator.unaccounted} if ref else None),
                "reference_error": self.reference_error,
                "drift": {"pending_events": self.drift_window.events, "last": self.last_drift,
                          "reference": ref.drift.model_version if ref and ref.drift else None,
                          "error": ref.drift_error if ref else None}}


def _summary(s: dict) -> str:
    ref = s.get("reference") or {}
    return (f"checked={s['checked']} violating={s['violating']} dead_lettered={s['dead_lettered']} "
            f"reference=v{ref.get('model_version', '-')} coverage={ref.get('coverage', '-')}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m taxi_mlops.streaming.quality",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--commit-interval", type=float, default=2.0)
    args = parser.parse_args(argv)
    settings = get_settings()
    logs.setup(NAME, settings.log_level)
    worker = DataQualityWorker(settings, commit_interval_s=args.commit_interval)
    return status.serve_worker(settings, NAME, worker, worker.snapshot, "data quality",
                               summary=_summary)


if __name__ == "__main__":
    sys.exit(main())
