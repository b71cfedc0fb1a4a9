"""Versioned event schemas: JSON on the wire, a pydantic model per event type and version.

Every event carries ``schema_version``. A consumer decodes with ``decode(topic, bytes)``,
which picks the model from the topic and the version and raises ``EventDecodeError`` (with a
reason) for anything else; the caller then routes the raw bytes to ``taxi.deadletter`` with
that reason, so a bad event is never dropped silently. Producers go through
``EventProducer.send``, which validates first and dead-letters what fails.

Evolving a schema: add ``TripEventV2`` with ``schema_version: Literal[2]`` to
``SCHEMAS[topic]``; consumers that know v2 accept both, older consumers dead-letter v2
events (visibly) instead of misreading them. Models forbid unknown fields for that reason.

``python -m taxi_mlops.streaming.events DIR`` exports every JSON Schema (for other languages).
"""

from __future__ import annotations

import base64
import json
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from taxi_mlops.settings import Settings
from taxi_mlops.streaming import clients, topics


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Event(BaseModel):
    """Base of every event: strict fields, JSON bytes on the wire."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    event_type: ClassVar[str] = "Event"

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def json_schema(cls) -> dict:
        schema = cls.model_json_schema()
        schema["$id"] = f"taxi-mlops/{cls.event_type}/v{cls.model_fields['schema_version'].default}"
        return schema


class TripEventV1(Event):
    """A trip as it starts; the fields the model and the stream processor read."""

    event_type: ClassVar[str] = "TripEvent"
    schema_version: Literal[1] = 1
    trip_id: str = Field(min_length=1)
    event_time: AwareDatetime = Field(description="Trip start (UTC).")
    pickup_community_area: int = Field(ge=-1, description="-1: unknown.")
    dropoff_community_area: int = Field(-1, ge=-1)
    company: str = "UNKNOWN"
    payment_type: str = "Unknown"
    fare: float = Field(ge=0)
    trip_miles: float = Field(0.0, ge=0)
    trip_seconds: float = Field(0.0, ge=0)
    trip_start_hour: int = Field(ge=0, le=23)
    trip_start_day: int = Field(ge=0, le=7)
    trip_start_month: int = Field(ge=0, le=12)
    pickup_latitude: float = 0.0
    pickup_longitude: float = 0.0
    dropoff_latitude: float = 0.0
    dropoff_longitude: float = 0.0


class LabelEventV1(Event):
    """The trip's outcome at its end; keyed like trips (by pickup area) to be co-partitioned."""

    event_type: ClassVar[str] = "LabelEvent"
    schema_version: Literal[1] = 1
    trip_id: str = Field(min_length=1)
    event_time: AwareDatetime = Field(description="Trip end (UTC).")
    pickup_community_area: int = Field(ge=-1)
    tips: float = Field(ge=0)
    fare: float = Field(ge=0)
    big_tipper: bool


class RealtimeFeaturesV1(Event):
    """One area's windowed features as of ``event_time`` (what was pushed to Feast)."""

    event_type: ClassVar[str] = "RealtimeFeatures"
    schema_version: Literal[1] = 1
    pickup_community_area: int
    event_time: AwareDatetime = Field(description="The area's latest event time (window end).")
    area_trips_15m: float = Field(ge=0)
    area_avg_fare_1h: float = Field(ge=0)
    area_tip_rate_1h: float = Field(ge=0, le=1)
    trips_1h: int = Field(ge=0)
    labels_1h: int = Field(ge=0)
    computed_at: AwareDatetime


class PredictionLogV1(Event):
    """One served prediction, logged by the gateway for monitoring and label joins."""

    event_type: ClassVar[str] = "PredictionLog"
    schema_version: Literal[1] = 1
    request_id: str = Field(min_length=1)
    trip_id: str | None = None
    features: dict[str, float | int | str] = Field(default_factory=dict)
    model_name: str
    model_version: str
    model_alias: str | None = None
    tip_probability: float = Field(ge=0, le=1)
    latency_ms: float = Field(ge=0)
    timestamp: AwareDatetime
    event_time: AwareDatetime | None = Field(
        None, description="The trip's start (trip_start_timestamp) when the request carried it.")


class PredictionLogV2(PredictionLogV1):
    """V1 plus how the request was routed (issue 7): which variant answered, under which
    experiment and policy, and whether the answer was a shadow (logged, never returned) or a
    fallback (the primary failed)."""

    event_type: ClassVar[str] = "PredictionLog"
    schema_version: Literal[2] = 2
    variant: str | None = Field(None, description="The routing variant that produced this answer.")
    experiment_id: str | None = None
    policy: str | None = Field(None, description="single | split | ensemble | fallback | shadow")
    shadow: bool = Field(False, description="A mirrored request: this answer was not returned.")
    fallback: bool = Field(False, description="The primary failed; a secondary answered.")


class ModelEventV1(Event):
    """A registry decision on ``taxi.model.events``: promote, rollback, retire, experiment
    start/stop. The audit trail of rollout, mirrored as MLflow model-version tags."""

    event_type: ClassVar[str] = "ModelEvent"
    schema_version: Literal[1] = 1
    event_id: str = Field(min_length=1)
    action: Literal["promote", "rollback", "retire", "experiment_started", "experiment_stopped",
                    "alias_moved"]
    model_name: str
    version: str | None = Field(None, description="The version the action is about.")
    previous_version: str | None = Field(None, description="The version that held the alias before.")
    alias: str | None = None
    experiment_id: str | None = None
    actor: str = Field(description="sequential-test | manual:<who> | cli")
    reason: str = ""
    details: dict[str, Any] = Field(default_factory=dict)
    timestamp: AwareDatetime


class ModelMetricsV1(Event):
    """Live metrics of one model version over the labels joined in the last ``window_s``."""

    event_type: ClassVar[str] = "ModelMetrics"
    schema_version: Literal[1] = 1
    model_name: str
    model_version: str
    model_alias: str | None = None
    window_s: float
    n: int = Field(ge=0)
    accuracy: float | None = Field(None, ge=0, le=1)
    brier: float | None = Field(None, ge=0, le=1)
    mean_probability: float | None = None
    positive_rate: float | None = None
    total_joined: int = Field(0, ge=0, description="Joined since this label-join instance started.")
    timestamp: AwareDatetime


class ModelMetricsV2(ModelMetricsV1):
    """V1 plus what is known before the labels (issue 8): the predictions received in the
    window, their confidence-based accuracy estimate, that estimate's error against the realised
    accuracy over the joined pairs, and the prediction drift against the eval split."""

    event_type: ClassVar[str] = "ModelMetrics"
    schema_version: Literal[2] = 2
    predictions: int = Field(0, ge=0, description="Predictions received in the window, joined or not.")
    estimated_accuracy: float | None = Field(
        None, ge=0, le=1, description="Mean max(p, 1-p) over those predictions (CBPE-style).")
    estimation_error: float | None = Field(
        None, ge=-1, le=1, description="Estimated minus realised accuracy over the joined pairs.")
    prediction_drift: float | None = Field(
        None, ge=0, le=1, description="Jensen-Shannon distance (base 2) of the window's scores to "
                                      "the eval split's, 10 bins; None below 200 predictions.")


class DataQualityV1(Event):
    """A data-quality finding on ``taxi.data.quality`` (producer: ``streaming/quality.py``).

    ``kind="violation"``: one failed check of one trip (``feature``, ``check``: missing,
    type, unseen_category, out_of_range; ``details`` has the value and what was expected).
    ``kind="window_summary"``: counts over a window of checked trips (``check`` is
    ``window_summary``, ``passed`` is true when no trip in it violated the schema).
    ``reference`` names the schema the trip was checked against (model version, MLMD URIs).
    """

    event_type: ClassVar[str] = "DataQuality"
    schema_version: Literal[1] = 1
    source: str
    check: str
    passed: bool
    details: dict[str, Any] = Field(default_factory=dict)
    timestamp: AwareDatetime
    kind: Literal["violation", "window_summary"] = "violation"
    feature: str | None = None
    trip_id: str | None = None
    event_time: AwareDatetime | None = Field(None, description="The trip's event time (violations).")
    reference: dict[str, str] = Field(default_factory=dict)


class DataQualityV2(DataQualityV1):
    """``DataQualityV1`` plus ``kind="drift"``: a window whose feature distributions moved away
    from the champion's training statistics (``streaming/drift.py``). ``check`` is ``drift``,
    ``passed`` false, ``feature`` the most drifted feature; ``details`` has every feature's
    scores per test, the features and tests over their thresholds, the thresholds, the window
    (events, start, end) and the reference's model version. Violations and window summaries
    stay V1, so consumers that only know V1 keep reading them; they dead-letter drift records.
    """

    event_type: ClassVar[str] = "DataQuality"
    schema_version: Literal[2] = 2
    kind: Literal["violation", "window_summary", "drift"] = "violation"


class DeadLetterV1(Event):
    """An event that failed validation, with where it came from and why."""

    event_type: ClassVar[str] = "DeadLetter"
    schema_version: Literal[1] = 1
    original_topic: str
    partition: int | None = None
    offset: int | None = None
    key: str | None = None
    payload: str = Field(description="The raw bytes, as UTF-8 text or base64 (see payload_encoding).")
    payload_encoding: Literal["utf-8", "base64"] = "utf-8"
    reason: str
    error_kind: str = Field(description="malformed | schema | unknown_version | unknown_topic")
    expected_schema: str | None = None
    payload_schema_version: int | str | None = None
    source: str = Field(description="Component that rejected it.")
    timestamp: AwareDatetime


# The names the rest of the platform uses: the current version of each event type.
TripEvent = TripEventV1
LabelEvent = LabelEventV1
RealtimeFeatures = RealtimeFeaturesV1
PredictionLog = PredictionLogV2
ModelEvent = ModelEventV1
ModelMetrics = ModelMetricsV2
DataQuality = DataQualityV1
DeadLetter = DeadLetterV1

# topic -> {schema_version: model}: what a consumer of that topic accepts.
SCHEMAS: dict[str, dict[int, type[Event]]] = {
    topics.TRIPS: {1: TripEventV1},
    topics.LABELS: {1: LabelEventV1},
    topics.FEATURES: {1: RealtimeFeaturesV1},
    topics.PREDICTIONS: {1: PredictionLogV1, 2: PredictionLogV2},
    topics.MODEL_METRICS: {1: ModelMetricsV1, 2: ModelMetricsV2},
    topics.MODEL_EVENTS: {1: ModelEventV1},
    topics.DATA_QUALITY: {1: DataQualityV1, 2: DataQualityV2},
    topics.DEADLETTER: {1: DeadLetterV1},
}
ALL_MODELS = [m for versions in SCHEMAS.values() for m in versions.values()]


class EventDecodeError(ValueError):
    """An event that cannot be accepted; ``kind`` and ``reason`` go into the dead letter."""

    def __init__(self, topic: str, kind: str, reason: str, raw: bytes | None = None,
                 schema_version: int | str | None = None):
        super().__init__(f"{topic}: {kind}: {reason}")
        self.topic, self.kind, self.reason, self.raw = topic, kind, reason, raw
        self.schema_version = schema_version


def _expected(topic: str) -> str | None:
    versions = SCHEMAS.get(topic)
    return next(iter(versions.values())).event_type if versions else None


def _validation_reason(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err["loc"]) or "(event)"
        parts.append(f"{loc}: {err['msg']}")
    more = f" (+{exc.error_count() - 5} more)" if exc.error_count() > 5 else ""
    return "; ".join(parts) + more


def validate(topic: str, payload: dict | Event) -> Event:
    """``payload`` as the model ``topic`` expects, or ``EventDecodeError``."""
    versions = SCHEMAS.get(topic)
    if versions is None:
        raise EventDecodeError(topic, "unknown_topic", f"no schema is declared for topic {topic}")
    if isinstance(payload, Event):
        if type(payload) not in versions.values():
            raise EventDecodeError(topic, "schema", f"{type(payload).__name__} does not belong on {topic} "
                                   f"(expects {_expected(topic)})",
                                   schema_version=getattr(payload, "schema_version", None))
        return payload
    if not isinstance(payload, dict):
        raise EventDecodeError(topic, "malformed", f"expected a JSON object, got {type(payload).__name__}")
    version = payload.get("schema_version")
    if version is None:
        raise EventDecodeError(topic, "schema", "missing schema_version")
    model = versions.get(version) if isinstance(version, int) and not isinstance(version, bool) else None
    if model is None:
        raise EventDecodeError(topic, "unknown_version",
                               f"schema_version {version!r} is not one of {sorted(versions)} for "
                               f"{_expected(topic)}; upgrade this consumer", schema_version=version)
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        raise EventDecodeError(topic, "schema", _validation_reason(exc), schema_version=version) from None


def decode(topic: str, data: bytes | None) -> Event:
    """Bytes from ``topic`` as its event model; ``EventDecodeError`` says why not."""
    if data is None:
        raise EventDecodeError(topic, "malformed", "empty message (no value)", raw=data)
    try:
        payload = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EventDecodeError(topic, "malformed", f"not JSON: {exc}", raw=data) from None
    try:
        return validate(topic, payload)
    except EventDecodeError as exc:
        exc.raw = data
        raise


def dead_letter(topic: str, raw: bytes | None, error: EventDecodeError | str, source: str,
                partition: int | None = None, offset: int | None = None,
                key: bytes | None = None) -> DeadLetter:
    """The dead-letter event for ``raw`` rejected from ``topic``."""
    raw = raw or b""
    try:
        payload, encoding = raw.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        payload, encoding = base64.b64encode(raw).decode(), "base64"
    if isinstance(error, EventDecodeError):
        reason, kind, version = error.reason, error.kind, error.schema_version
    else:
        reason, kind, version = str(error), "schema", None
    return DeadLetter(
        original_topic=topic, partition=partition, offset=offset,
        key=key.decode("utf-8", "replace") if key is not None else None,
        payload=payload, payload_encoding=encoding, reason=reason, error_kind=kind,
        expected_schema=_expected(topic), payload_schema_version=version, source=source,
        timestamp=utcnow(),
    )


class ProduceError(RuntimeError):
    pass


class EventProducer:
    """A validating, idempotent producer: invalid events go to the dead-letter topic."""

    def __init__(self, bootstrap_servers: Settings | str, client_id: str = "taxi-mlops-producer", **config):
        from confluent_kafka import Producer

        self._producer = Producer(clients.producer_config(bootstrap_servers, client_id, **config))
        self._lock = threading.Lock()
        self.counts = {"sent": 0, "delivered": 0, "failed": 0, "dead_lettered": 0}
        self.errors: list[str] = []

    def _on_delivery(self, err, msg) -> None:
        with self._lock:
            if err is None:
                self.counts["delivered"] += 1
            else:
                self.counts["failed"] += 1
                if len(self.errors) < 20:
                    self.errors.append(f"{msg.topic()}: {err}")

    def produce_raw(self, topic: str, value: bytes, key: bytes | None = None,
                    timeout_s: float = 30.0) -> None:
        """Send bytes as they are (waits while the local queue is full, up to ``timeout_s``)."""
        from confluent_kafka import KafkaException

        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self._producer.produce(topic, value=value, key=key, on_delivery=self._on_delivery)
                self.counts["sent"] += 1
                break
            except BufferError:
                if time.monotonic() > deadline:
                    raise ProduceError(f"the producer queue stayed full for {timeout_s:.0f}s; "
                                       "is the broker reachable? (`taxi-mlops status`)") from None
                self._producer.poll(0.1)
            except KafkaException as exc:
                raise ProduceError(f"cannot produce to {topic}: {exc}") from exc
        self._producer.poll(0)

    def send(self, topic: str, event: Event | dict, key: str | bytes | None = None) -> bool:
        """Validate and send; an invalid event is dead-lettered with its reason (returns False)."""
        try:
            event = validate(topic, event)
        except EventDecodeError as exc:
            raw = json.dumps(event, default=str).encode() if isinstance(event, dict) else \
                event.model_dump_json().encode()
            self.send_dead_letter(dead_letter(topic, raw, exc, source="producer",
                                              key=key.encode() if isinstance(key, str) else key))
            return False
        self.produce_raw(topic, event.to_bytes(), key.encode() if isinstance(key, str) else key)
        return True

    def send_dead_letter(self, letter: DeadLetter) -> None:
        self.produce_raw(topics.DEADLETTER, letter.to_bytes(),
                         (letter.key or letter.original_topic).encode())
        self.counts["dead_lettered"] += 1

    def poll(self, timeout_s: float = 0) -> None:
        self._producer.poll(timeout_s)

    def flush(self, timeout_s: float = 30.0) -> int:
        """Wait for every delivery report; returns how many are still unacknowledged."""
        return self._producer.flush(timeout_s)

    def flush_or_raise(self, timeout_s: float = 30.0) -> None:
        remaining = self.flush(timeout_s)
        if remaining:
            raise ProduceError(f"{remaining} events not acknowledged within {timeout_s:.0f}s; "
                               "is the broker up? (`taxi-mlops status`)")
        if self.counts["failed"]:
            raise ProduceError(f"{self.counts['failed']} events failed delivery: {self.errors[:3]}")

    def __len__(self) -> int:
        return len(self._producer)


def export_json_schemas(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for model in ALL_MODELS:
        version = model.model_fields["schema_version"].default
        path = directory / f"{model.event_type}.v{version}.schema.json"
        path.write_text(json.dumps(model.json_schema(), indent=2) + "\n")
        written.append(path)
    return written


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: python -m taxi_mlops.streaming.events OUTPUT_DIR", file=sys.stderr)
        sys.exit(2)
    for p in export_json_schemas(Path(sys.argv[1])):
        print(p)
