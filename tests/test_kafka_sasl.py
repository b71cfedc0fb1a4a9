"""Kafka with ``kafka_sasl``: one broker, started by the stack's own code, whose only client
listener is SASL_PLAINTEXT/SCRAM-SHA-512. Our clients with the right login produce and
consume; a wrong password or no login is refused; the password shows on no command line and
in no log.

No session stack: just the broker, on free ports, with its own state dir.
"""

from __future__ import annotations

import json
import stat
import uuid

import pytest

from taxi_mlops.settings import Settings
from taxi_mlops.stack import streaming
from taxi_mlops.stack.process import Supervisor, free_port, wait_for
from taxi_mlops.streaming import broker, clients, topics

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sasl_kafka(tmp_path_factory):
    settings = Settings(state_dir=tmp_path_factory.mktemp("kafka-sasl"), kafka_sasl=True,
                        kafka_port=free_port(), kafka_controller_port=free_port(),
                        kafka_metrics_port=free_port(), kafka_bootstrap_override=None,
                        kafka_password=None, startup_timeout_s=120)
    sup = Supervisor(settings)
    services = streaming.kafka_services(settings)
    try:
        assert streaming.start_kafka(sup, services) == ["started"]
        topics.ensure_topics(settings)
        yield settings, sup
    finally:
        sup.stop("kafka", timeout_s=30)


def _produce(settings_or_servers, value: bytes, timeout_ms: int = 60_000) -> tuple[list, list]:
    """(delivery errors, client errors) of producing one event to the trips topic."""
    from confluent_kafka import Producer

    delivered, errors = [], []
    conf = clients.producer_config(settings_or_servers, "sasl-test", **{"message.timeout.ms": timeout_ms},
                                   error_cb=lambda err: errors.append(err))
    producer = Producer(conf)
    producer.produce(topics.TRIPS, key=b"1", value=value, on_delivery=lambda err, _m: delivered.append(err))
    producer.flush(timeout_ms / 1000 + 10)
    return delivered, errors


def test_the_right_login_produces_and_consumes(sasl_kafka):
    from confluent_kafka import Consumer

    settings, _ = sasl_kafka
    value = json.dumps({"id": str(uuid.uuid4())}).encode()
    delivered, _ = _produce(settings, value)
    assert delivered == [None]
    consumer = Consumer(clients.consumer_config(settings, "sasl-test", f"sasl-{uuid.uuid4()}"))
    consumer.subscribe([topics.TRIPS])
    got = []

    def received() -> bool:
        msg = consumer.poll(0.5)
        if msg is not None and msg.error() is None:
            got.append(msg.value())
        return value in got

    try:
        assert wait_for(received, 60, interval_s=0)
    finally:
        consumer.close()


def test_a_wrong_password_is_refused(sasl_kafka):
    from confluent_kafka import KafkaError

    settings, _ = sasl_kafka
    wrong = settings.model_copy(update={"kafka_password": "not-the-password"})
    delivered, errors = _produce(wrong, b"{}", timeout_ms=8_000)
    assert len(delivered) == 1 and delivered[0] is not None  # never acknowledged
    assert any(e.code() == KafkaError._AUTHENTICATION for e in errors), errors
    assert not clients.broker_reachable(wrong)


def test_no_login_is_refused(sasl_kafka):
    settings, _ = sasl_kafka
    delivered, _ = _produce(settings.kafka_bootstrap_servers, b"{}", timeout_ms=8_000)  # a plain string: no SASL
    assert len(delivered) == 1 and delivered[0] is not None
    assert not clients.broker_reachable(settings.kafka_bootstrap_servers)
    assert clients.broker_reachable(settings)


def test_the_password_is_on_no_command_line_and_in_no_log(sasl_kafka):
    settings, sup = sasl_kafka
    password = (settings.state_dir / "kafka_password").read_text().strip()
    assert len(password) >= 32
    for private in (settings.state_dir / "kafka_password", settings.kafka_data_dir / "server.properties"):
        assert stat.S_IMODE(private.stat().st_mode) == 0o600, private
    cmdline = open(f"/proc/{sup.pid('kafka')}/cmdline", "rb").read().decode()
    assert password not in cmdline and "server.properties" in cmdline
    for path in [*settings.logs_dir.iterdir(), *settings.run_dir.iterdir()]:
        assert password not in path.read_text(errors="replace"), path
    assert not list(settings.kafka_data_dir.glob(".format.args"))  # the @argfile is gone
    with pytest.raises(broker.BrokerSetupError, match="TAXI_KAFKA_SASL=true"):
        broker.check_cluster_size(settings.model_copy(update={"kafka_sasl": False}))
