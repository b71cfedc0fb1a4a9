"""The platform's topics, declared once and applied idempotently.

``ensure_topics`` creates missing topics, aligns the configs of existing ones and adds
partitions when a declaration grows; it never deletes a topic or shrinks one (Kafka cannot,
and a silent re-create would lose data). The broker refuses to auto-create topics, so a
misspelt name fails loudly instead of creating a stray topic.

``taxi.trips.raw`` and ``taxi.labels`` must keep equal partition counts: both are keyed by
pickup area, and the stream processor relies on an area's trips and labels sharing a
partition number (co-partitioning). Growing them re-maps keys: do it with the processor
stopped and its state rebuilt (see ``processor``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from taxi_mlops.settings import Settings
from taxi_mlops.streaming import clients

DAY_MS = 24 * 3600 * 1000

TRIPS = "taxi.trips.raw"
LABELS = "taxi.labels"
FEATURES = "taxi.features.realtime"
PREDICTIONS = "taxi.predictions"
MODEL_METRICS = "taxi.model.metrics"
MODEL_EVENTS = "taxi.model.events"
DATA_QUALITY = "taxi.data.quality"
DEADLETTER = "taxi.deadletter"


@dataclass(frozen=True)
class Topic:
    name: str
    partitions: int
    retention_ms: int
    cleanup_policy: str = "delete"
    description: str = ""
    extra: dict = field(default_factory=dict)

    def configs(self) -> dict[str, str]:
        return {"retention.ms": str(self.retention_ms), "cleanup.policy": self.cleanup_policy,
                **{k: str(v) for k, v in self.extra.items()}}


TOPICS: list[Topic] = [
    Topic(TRIPS, 4, 7 * DAY_MS, description="Trip starts, keyed by pickup area."),
    Topic(LABELS, 4, 7 * DAY_MS, description="Tips at trip end, keyed by pickup area "
          "(co-partitioned with taxi.trips.raw)."),
    Topic(FEATURES, 4, 1 * DAY_MS, description="Realtime area features as pushed to Feast."),
    Topic(PREDICTIONS, 4, 7 * DAY_MS, description="Gateway prediction logs, keyed by trip id."),
    Topic(MODEL_METRICS, 1, 30 * DAY_MS, "compact",
          description="Latest live metrics per model version (compacted by key).",
          extra={"min.cleanable.dirty.ratio": "0.1", "segment.ms": str(DAY_MS)}),
    Topic(MODEL_EVENTS, 1, 365 * DAY_MS, description="Rollout audit trail: promotions, rollbacks, "
          "experiments (one partition: one order)."),
    Topic(DATA_QUALITY, 1, 7 * DAY_MS, description="Data quality reports."),
    Topic(DEADLETTER, 1, 30 * DAY_MS, description="Events that failed validation, with reason."),
]
BY_NAME = {t.name: t for t in TOPICS}

assert BY_NAME[TRIPS].partitions == BY_NAME[LABELS].partitions, "trips and labels must be co-partitioned"


def replication(nodes: int) -> tuple[int, int]:
    """(replication factor, min.insync.replicas) of every topic on a cluster of ``nodes``
    brokers: three copies at most, and an acknowledged write (acks=all) is on two of them once
    there are three, so losing any one broker loses no acknowledged event and blocks no writer.
    The local broker writes these as its defaults (``broker.write_config``), which
    ``ensure_topics`` creates topics with."""
    factor = min(3, max(1, nodes))
    return factor, max(1, factor - 1)


class TopicError(RuntimeError):
    pass


def ensure_topics(bootstrap_servers: Settings | str, topics: list[Topic] | None = None,
                  timeout_s: float = clients.ADMIN_TIMEOUT_S) -> dict[str, str]:
    """Create or align every declared topic; returns ``{topic: what was done}``.
    ``bootstrap_servers``: the Settings when the brokers may require a SASL login."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import (AlterConfigOpType, ConfigEntry, ConfigResource, NewPartitions,
                                       NewTopic)

    topics = topics or TOPICS
    admin = clients.admin(bootstrap_servers)
    hint = f"is the broker at {clients.bootstrap(bootstrap_servers)} up? (`taxi-mlops status`, then `taxi-mlops up`)"
    try:
        existing = admin.list_topics(timeout=timeout_s).topics
    except KafkaException as exc:
        raise TopicError(f"cannot list topics: {exc}; {hint}") from exc

    result: dict[str, str] = {}
    missing = [t for t in topics if t.name not in existing]
    if missing:
        futures = admin.create_topics(
            # -1: the broker's default.replication.factor (min.insync.replicas too), which
            # the local broker sets from ``replication``; an external cluster keeps its own.
            [NewTopic(t.name, num_partitions=t.partitions, replication_factor=-1, config=t.configs())
             for t in missing],
            operation_timeout=timeout_s, request_timeout=timeout_s)
        for name, future in futures.items():
            try:
                future.result(timeout=timeout_s)
                result[name] = "created"
            except KafkaException as exc:
                if exc.args and exc.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS:
                    result[name] = "exists"  # a concurrent ensure_topics won the race
                else:
                    raise TopicError(f"cannot create topic {name}: {exc}; {hint}") from exc

    present = [t for t in topics if t.name in existing]
    if not present:
        return result

    # Partitions: grow only.
    grow = {}
    for t in present:
        have = len(existing[t.name].partitions)
        if have < t.partitions:
            grow[t.name] = (have, t.partitions)
        elif have > t.partitions:
            result[t.name] = f"kept {have} partitions (declared {t.partitions}; never shrinks)"
    if grow:
        futures = admin.create_partitions([NewPartitions(n, want) for n, (_, want) in grow.items()],
                                          operation_timeout=timeout_s, request_timeout=timeout_s)
        for name, future in futures.items():
            try:
                future.result(timeout=timeout_s)
            except KafkaException as exc:
                raise TopicError(f"cannot add partitions to {name}: {exc}; {hint}") from exc
            result[name] = f"partitions {grow[name][0]} -> {grow[name][1]}"

    # Configs: compare the declared keys with the broker's values; alter only the differences.
    resources = [ConfigResource(ConfigResource.Type.TOPIC, t.name) for t in present]
    try:
        described = {res.name: fut.result(timeout=timeout_s) for res, fut in
                     admin.describe_configs(resources, request_timeout=timeout_s).items()}
    except KafkaException as exc:
        raise TopicError(f"cannot read topic configs: {exc}; {hint}") from exc
    changes = {}
    for t in present:
        current = described[t.name]
        diff = {k: v for k, v in t.configs().items() if k not in current or current[k].value != v}
        if diff:
            changes[t.name] = diff
    if changes:
        alters = [ConfigResource(ConfigResource.Type.TOPIC, name, incremental_configs=[
            ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET) for k, v in diff.items()])
            for name, diff in changes.items()]
        for res, fut in admin.incremental_alter_configs(alters, request_timeout=timeout_s).items():
            try:
                fut.result(timeout=timeout_s)
            except KafkaException as exc:
                raise TopicError(f"cannot update configs of {res.name}: {exc}; {hint}") from exc
            note = "configs " + ", ".join(f"{k}={v}" for k, v in changes[res.name].items())
            result[res.name] = f"{result[res.name]}; {note}" if res.name in result else note
    for t in present:
        result.setdefault(t.name, "ok")
    return result


def partition_count(bootstrap_servers: Settings | str, topic: str, timeout_s: float = clients.ADMIN_TIMEOUT_S) -> int:
    from confluent_kafka import KafkaException

    try:
        metadata = clients.admin(bootstrap_servers).list_topics(topic, timeout=timeout_s)
    except KafkaException as exc:
        raise TopicError(f"cannot read metadata of {topic}: {exc}; is the broker up?") from exc
    info = metadata.topics.get(topic)
    if info is None or info.error is not None:
        raise TopicError(f"topic {topic} does not exist; run `taxi-mlops up` (it applies "
                         "streaming/topics.py) and retry")
    return len(info.partitions)
