"""One real streaming stack per session: Kafka (KRaft), Redis, the applied Feast repo, and
the stream processor, all started by the platform's own code on 127.0.0.1.

The ports are fixed (Kafka 19092/19093, Redis 16391; metrics: broker JMX exporter 19096,
processor 19097+N, label join 19107) and the state directory is fresh, so the suite runs
beside a developer's `taxi-mlops up` stack on the default ports.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from taxi_mlops.features import store  # noqa: E402
from taxi_mlops.settings import Settings  # noqa: E402
from taxi_mlops.stack.process import Supervisor  # noqa: E402
from taxi_mlops.stack.services import redis_service  # noqa: E402
from taxi_mlops.stack.streaming import kafka_service, processor_service  # noqa: E402
from taxi_mlops.streaming import topics  # noqa: E402
from stream_helpers import PROCESSOR_GROUP  # noqa: E402


@pytest.fixture(scope="session")
def stream_settings(tmp_path_factory) -> Settings:
    state = Path(os.environ.get("TAXI_TEST_STREAM_STATE_DIR") or tmp_path_factory.mktemp("stream-state"))
    return Settings(state_dir=state, kafka_port=19092, kafka_controller_port=19093, redis_port=16391,
                    kafka_metrics_port=19096, processor_metrics_port=19097, label_join_metrics_port=19107,
                    kafka_bootstrap_override=None, startup_timeout_s=120)


@pytest.fixture(scope="session")
def stream_supervisor(stream_settings) -> Supervisor:
    return Supervisor(stream_settings)


@pytest.fixture(scope="session")
def kafka(stream_settings, stream_supervisor):
    """The broker, with the platform's topics applied."""
    service = kafka_service(stream_settings)
    stream_supervisor.start(service)
    topics.ensure_topics(stream_settings.kafka_bootstrap_servers)
    yield stream_settings.kafka_bootstrap_servers
    stream_supervisor.stop(service.name, timeout_s=30)


@pytest.fixture(scope="session")
def feast_store(stream_settings, stream_supervisor):
    """Redis up and the Feast repo applied, realtime objects included."""
    os.environ.update(stream_settings.feast_env())
    stream_supervisor.start(redis_service(stream_settings))
    store.apply(stream_settings)
    fs = store.feature_store(stream_settings)
    fs.apply(store.realtime_objects(stream_settings))
    yield store.feature_store(stream_settings)
    stream_supervisor.stop("redis")


@pytest.fixture(scope="session")
def stream_processor(kafka, feast_store, stream_settings, stream_supervisor):
    """Instance 0 of the processor in its own consumer group, committing every second."""
    service = processor_service(stream_settings, 0, group=PROCESSOR_GROUP, commit_interval_s=1.0)
    stream_supervisor.start(service)
    yield service
    stream_supervisor.stop(service.name, timeout_s=30)
