"""Kafka client configurations shared by every producer, consumer and admin call.

One place for the settings that make failures visible instead of silent: explicit timeouts,
Java-compatible key partitioning (so a Java or Go client keys records the same way) and
quiet logs while a broker is (re)starting, and the SASL/SCRAM login when the local brokers
require one (pass the ``Settings`` rather than a bootstrap string to get it).
"""

from __future__ import annotations

import logging

from taxi_mlops.settings import Settings

PROBE_TIMEOUT_S = 2.0
SASL_MECHANISM = "SCRAM-SHA-512"
ADMIN_TIMEOUT_S = 15.0

_quiet = logging.getLogger("taxi_mlops.streaming.librdkafka.quiet")
_quiet.addHandler(logging.NullHandler())
_quiet.propagate = False


class _OncePerInterval(logging.Filter):
    """librdkafka repeats "Connect to ... failed" several times a second while a broker is
    away; one line per kind of message every ``interval_s`` says the same."""

    def __init__(self, interval_s: float = 30.0):
        super().__init__()
        self.interval_s, self._last = interval_s, {}

    def filter(self, record: logging.LogRecord) -> bool:
        import time

        # confluent-kafka logs ("%s [%s] %s", facility, client name, text)
        kind = tuple(record.args[:2]) if isinstance(record.args, tuple) else record.getMessage()[:60]
        now = time.monotonic()
        if now - self._last.get(kind, -1e9) < self.interval_s:
            return False
        self._last[kind] = now
        return True


kafka_log = logging.getLogger("taxi_mlops.streaming.librdkafka")
kafka_log.addFilter(_OncePerInterval())


def bootstrap(settings_or_bootstrap: Settings | str) -> str:
    if isinstance(settings_or_bootstrap, str):
        return settings_or_bootstrap
    return settings_or_bootstrap.kafka_bootstrap_servers


def sasl(settings: Settings) -> dict:
    """The SCRAM login of our clients when the local brokers require it (``kafka_sasl``)."""
    if not settings.kafka_sasl:
        return {}
    from taxi_mlops import security

    return {"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": SASL_MECHANISM,
            "sasl.username": settings.kafka_sasl_username, "sasl.password": security.kafka_password(settings)}


def common(bootstrap_servers: Settings | str, client_id: str, quiet: bool = False,
           only: str | None = None) -> dict:
    """``bootstrap_servers``: a Settings (its servers, and its SASL login when ``kafka_sasl``)
    or a plain ``host:port,...`` string (no login). ``only``: talk to this one broker."""
    conf = {
        "bootstrap.servers": only or bootstrap(bootstrap_servers),
        "client.id": client_id,
        "socket.timeout.ms": 10_000,
        "socket.connection.setup.timeout.ms": 5_000,
        # librdkafka prefers IPv6 for "localhost"; the platform binds 127.0.0.1 only.
        "broker.address.family": "v4",
    }
    if isinstance(bootstrap_servers, Settings):
        conf.update(sasl(bootstrap_servers))
    if quiet:  # probes: a broker that is down is an answer, not an error to print
        conf["logger"] = _quiet
        conf["log_level"] = 0
    else:  # through Python logging, rate-limited (served by poll/consume/flush calls)
        conf["logger"] = kafka_log
    return conf


def producer_config(bootstrap_servers: Settings | str, client_id: str, **extra) -> dict:
    """An idempotent, acks=all producer: a retried send never duplicates or reorders a key."""
    conf = {
        **common(bootstrap_servers, client_id),
        "enable.idempotence": True,
        "acks": "all",
        "partitioner": "murmur2_random",  # the Java client's partitioner
        "compression.type": "lz4",
        "linger.ms": 5,
        "message.timeout.ms": 120_000,
    }
    conf.update(extra)
    return conf


# For consumers that want throughput, not latency (the prediction store, the label join): the
# broker answers a fetch once 256 KiB wait or 500 ms passed, instead of once per producer
# batch. At 200 predictions/s the broker spent 0.64-0.71 ms of CPU per prediction logged,
# mostly answering fetches of every reader of taxi.predictions (issue 11).
BULK_FETCH = {"fetch.min.bytes": 262_144, "fetch.wait.max.ms": 500}


def consumer_config(bootstrap_servers: Settings | str, client_id: str, group_id: str, **extra) -> dict:
    conf = {
        **common(bootstrap_servers, client_id),
        "group.id": group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "isolation.level": "read_committed",
        "session.timeout.ms": 10_000,
        "heartbeat.interval.ms": 2_000,
        "max.poll.interval.ms": 300_000,
    }
    conf.update(extra)
    return conf


COMMITTED_TIMEOUT_S = 30.0


def start_offsets(committed: list) -> list:
    """Where each partition of an assignment starts: its committed offset, or the beginning
    when it has none (``auto.offset.reset=earliest``, as ``consumer_config`` sets).

    Assigning explicit offsets skips librdkafka's own committed-offset fetch. That fetch,
    answered "not coordinator" as a whole (the coordinator moving, e.g. after a broker
    restart), is never retried: the partitions stay assigned and are never fetched, while
    the consumer looks healthy (librdkafka#5586, open; seen in our broker-restart test)."""
    from confluent_kafka import OFFSET_BEGINNING, TopicPartition

    return [TopicPartition(tp.topic, tp.partition, tp.offset if tp.offset >= 0 else OFFSET_BEGINNING)
            for tp in committed]


def assign_at_committed(consumer, partitions) -> None:
    """``on_assign`` for a subscribing consumer: start at the committed offsets, fetched here
    (``Consumer.committed`` retries until its timeout) instead of by librdkafka; see
    ``start_offsets``. If even that fails, librdkafka fetches them (the old way)."""
    from confluent_kafka import KafkaException

    try:
        committed = consumer.committed(partitions, timeout=COMMITTED_TIMEOUT_S)
    except KafkaException as exc:
        logging.getLogger(__name__).warning(
            "could not fetch the committed offsets (%s); librdkafka fetches them instead", exc)
        consumer.assign(partitions)
        return
    consumer.assign(start_offsets(committed))


def admin(bootstrap_servers: Settings | str, quiet: bool = False, only: str | None = None):
    from confluent_kafka.admin import AdminClient

    return AdminClient(common(bootstrap_servers, "taxi-mlops-admin", quiet=quiet, only=only))


def broker_reachable(bootstrap_servers: Settings | str, timeout_s: float = PROBE_TIMEOUT_S,
                     only: str | None = None) -> bool:
    """A metadata request answered by at least one broker (by ``only``, when given)."""
    from confluent_kafka import KafkaException

    try:
        metadata = admin(bootstrap_servers, quiet=True, only=only).list_topics(timeout=timeout_s)
    except KafkaException:
        return False
    return bool(metadata.brokers)
