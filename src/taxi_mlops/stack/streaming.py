"""The streaming services: the Kafka broker, the stream processor instances, the label join,
the data-quality worker.

The stack package owns every service definition; ``taxi_mlops.streaming`` holds the workers
and the broker set-up and never imports the stack (it depends on nothing above it).
"""

from __future__ import annotations

import sys

from taxi_mlops.settings import Settings
from taxi_mlops.stack.process import Service
from taxi_mlops.streaming import broker, clients, status, topics
from taxi_mlops.lineage.consumer import GROUP as PREDICTION_STORE_GROUP
from taxi_mlops.lineage.consumer import NAME as PREDICTION_STORE
from taxi_mlops.streaming.label_join import NAME as LABEL_JOIN
from taxi_mlops.streaming.processor import GROUP, service_name
from taxi_mlops.streaming.quality import GROUP as QUALITY_GROUP
from taxi_mlops.streaming.quality import NAME as DATA_QUALITY


def kafka_service(settings: Settings) -> Service | None:
    """The broker (with its JMX exporter agent), or ``None`` when an external cluster is
    configured."""
    if settings.kafka_bootstrap_override:
        return None
    # The main class and the agent jar are only checked once the jars exist (prepare downloads them).
    command = broker.broker_command(settings)
    return Service(
        name="kafka",
        command=command,
        healthy=lambda: clients.broker_reachable(settings.kafka_bootstrap_servers),
        url=f"PLAINTEXT://{settings.kafka_bootstrap_servers}",
        cwd=settings.kafka_data_dir,
        prepare=lambda: broker.prepare_broker(settings, command),
        stop_timeout_s=30.0,
        details=lambda: {"version": broker.KAFKA_VERSION, "mode": "KRaft (broker+controller)",
                         "data": str(settings.kafka_data_dir), "jars": str(broker.libs_dir()),
                         "metrics": broker.metrics_url(settings)},
    )


def processor_service(settings: Settings, instance: int = 0, group: str = GROUP,
                      commit_interval_s: float = 2.0) -> Service:
    """Instance ``instance`` of the stream processor; start several for more throughput.
    Its metrics are on ``settings.processor_metrics_port + instance``."""
    name = service_name(instance)
    return Service(
        name=name,
        command=[sys.executable, "-m", "taxi_mlops.streaming.processor", "--instance", str(instance),
                 "--group", group, "--commit-interval", str(commit_interval_s)],
        healthy=lambda: status.healthy(settings, name),
        url=f"kafka group {group} @ {settings.kafka_bootstrap_servers}",
        env=settings.as_env(),
        stop_timeout_s=30.0,
        details=lambda: status.details(settings, name, ("phase", "blocked", "assigned", "processed", "lag",
                                                        "dead_lettered", "metrics")),
    )


def label_join_service(settings: Settings, window_s: float = 3600.0) -> Service:
    """The label join; its metrics are on ``settings.label_join_metrics_port``."""
    return Service(
        name=LABEL_JOIN,
        command=[sys.executable, "-m", "taxi_mlops.streaming.label_join", "--window", str(window_s)],
        healthy=lambda: status.healthy(settings, LABEL_JOIN),
        url=f"kafka {topics.LABELS} x {topics.PREDICTIONS} -> {topics.MODEL_METRICS}",
        env=settings.as_env(),
        details=lambda: status.details(settings, LABEL_JOIN, ("phase", "joined", "models", "metrics")),
    )


def data_quality_service(settings: Settings) -> Service:
    """Trips checked against the champion's training schema (``streaming/quality.py``); its
    metrics are on ``settings.quality_metrics_port``."""
    return Service(
        name=DATA_QUALITY,
        command=[sys.executable, "-m", "taxi_mlops.streaming.quality"],
        healthy=lambda: status.healthy(settings, DATA_QUALITY),
        url=f"kafka group {QUALITY_GROUP}: {topics.TRIPS} -> {topics.DATA_QUALITY}",
        env=settings.as_env(),
        stop_timeout_s=30.0,
        details=lambda: status.details(settings, DATA_QUALITY, ("phase", "checked", "violating", "dead_lettered",
                                                                "reference", "metrics")),
    )


def prediction_store_service(settings: Settings) -> Service:
    """Every prediction and label into the queryable store the gateway's
    ``GET /predictions/{request_id}`` reads (``lineage/consumer.py``); its metrics are on
    ``settings.prediction_store_metrics_port``."""
    return Service(
        name=PREDICTION_STORE,
        command=[sys.executable, "-m", "taxi_mlops.lineage"],
        healthy=lambda: status.healthy(settings, PREDICTION_STORE),
        url=f"kafka group {PREDICTION_STORE_GROUP}: {topics.PREDICTIONS} + {topics.LABELS} -> "
            f"{settings.predictions_db}",
        env=settings.as_env(),
        stop_timeout_s=30.0,
        details=lambda: status.details(settings, PREDICTION_STORE, ("phase", "predictions", "labels", "lag",
                                                                    "dead_lettered", "metrics")),
    )
