"""The streaming services: the Kafka broker (or the nodes of a local cluster), the stream
processor instances, the label join, the data-quality worker.

The stack package owns every service definition; ``taxi_mlops.streaming`` holds the workers
and the broker set-up and never imports the stack (it depends on nothing above it).
"""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor

from taxi_mlops import security
from taxi_mlops.settings import Settings
from taxi_mlops.stack.process import Service, Supervisor
from taxi_mlops.streaming import broker, clients, status, topics
from taxi_mlops.lineage.consumer import GROUP as PREDICTION_STORE_GROUP
from taxi_mlops.lineage.consumer import NAME as PREDICTION_STORE
from taxi_mlops.streaming.label_join import NAME as LABEL_JOIN
from taxi_mlops.streaming.processor import GROUP, service_name
from taxi_mlops.streaming.quality import GROUP as QUALITY_GROUP
from taxi_mlops.streaming.quality import NAME as DATA_QUALITY


def kafka_service(settings: Settings, node: int = 0) -> Service | None:
    """Kafka node ``node`` (broker and controller, with its JMX exporter agent), or ``None``
    when an external cluster is configured. Healthy: the node itself answers a metadata
    request (a KRaft broker answers only once it has caught up with the quorum)."""
    if settings.kafka_bootstrap_override:
        return None
    # The main class and the agent jar are only checked once the jars exist (prepare downloads them).
    command = broker.broker_command(settings, node)
    address = broker.node_address(settings, node)
    mode = ("KRaft (broker+controller)" if settings.kafka_nodes == 1
            else f"KRaft node {node + 1} of {settings.kafka_nodes} (broker+controller)")
    return Service(
        name=broker.node_name(node),
        command=command,
        healthy=lambda: clients.broker_reachable(settings, only=address),
        url=f"{'SASL_PLAINTEXT' if settings.kafka_sasl else 'PLAINTEXT'}://{address}",
        cwd=settings.kafka_node_data_dir(node),
        prepare=lambda: broker.prepare_broker(settings, command, node=node),
        stop_timeout_s=30.0,
        details=lambda: {"version": broker.KAFKA_VERSION, "mode": mode,
                         "data": str(settings.kafka_node_data_dir(node)), "jars": str(broker.libs_dir()),
                         "metrics": broker.metrics_url(settings, node)},
    )


def kafka_services(settings: Settings) -> list[Service]:
    """Every local Kafka node, node 0 ("kafka") first; none for an external cluster."""
    if settings.kafka_bootstrap_override:
        return []
    return [kafka_service(settings, i) for i in range(settings.kafka_nodes)]


def is_kafka_node(name: str) -> bool:
    return name == "kafka" or (name.startswith("kafka-") and name[len("kafka-"):].isdigit())


def start_kafka(supervisor: Supervisor, services: list[Service]) -> list[str]:
    """Start the Kafka nodes together; returns each one's state ('running' or 'started').

    Together, because a node of a multi-node quorum answers clients only once a majority of
    the controllers is up: started one at a time, the first would never become healthy. The
    jars are fetched first, once, so the nodes do not race to download them."""
    if len(services) <= 1:
        return [supervisor.start(s) for s in services]
    broker.ensure_jars()
    with ThreadPoolExecutor(max_workers=len(services)) as pool:
        return list(pool.map(supervisor.start, services))


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
        # The admin: an experiment's sequential test decided here promotes or rolls back
        # (``rollout.ExperimentTracker`` moves the aliases).
        env={**settings.as_env(), **security.mlflow_env(settings)},
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
        env={**settings.as_env(), **security.mlflow_env(settings, security.MLFLOW_READER)},
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
            f"{settings.predictions_store_name}",
        env=settings.as_env(),
        stop_timeout_s=30.0,
        details=lambda: status.details(settings, PREDICTION_STORE, ("phase", "predictions", "labels", "lag",
                                                                    "dead_lettered", "metrics")),
    )
