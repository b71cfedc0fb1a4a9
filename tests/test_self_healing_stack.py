"""Self-healing on the session stack: kill -9 of a component is healed by the keeper, without
a human step; the restart is counted and shown by `status`, and the healed component works
(the gateway answers /predict, the broker takes records, MLflow answers the registry).

The crash loop that ends in the failed state is in tests/unit/test_keeper.py (real processes,
no stack): a real component cannot be made to crash on purpose without breaking the session.
"""

from __future__ import annotations

import time

import httpx
import pytest

from taxi_mlops import cli
from taxi_mlops.registry import models
from taxi_mlops.stack import keeper, services
from taxi_mlops.stack.process import _safe, wait_for
from tests.conftest import TRIP

pytestmark = pytest.mark.slow

HEAL_DEADLINE_S = 120.0
# The soak list (and the data-quality and prediction-store workers); Kafka last: the
# workers reconnect to it on their own.
COMPONENTS = ["gateway", "model_server-1", "redis", "stream-processor-0", "label-join", "data-quality",
              "prediction-store", "mlflow", "kafka"]


@pytest.fixture(scope="module")
def kept(stack, supervisor):
    """The session stack with its keeper running."""
    assert keeper.alive(stack), "the keeper is not running: `up` starts it last"
    return stack


def _service(settings, name):
    found = {s.name: s for s in services.all_services(settings)}
    if name not in found:
        pytest.fail(f"{name} is not a service of the stack: {sorted(found)}")
    return found[name]


@pytest.mark.parametrize("name", COMPONENTS)
def test_a_killed_component_is_restarted_by_the_keeper(kept, supervisor, name):
    settings = kept
    service = _service(settings, name)
    before = supervisor.pid(name)
    assert before is not None, f"{name} is not running"
    restarts = keeper.read_state(settings.run_dir, name).restarts
    killed = time.monotonic()
    supervisor.kill(name)

    def healed() -> bool:
        pid = supervisor.pid(name)
        return pid not in (None, before) and _safe(service.healthy) and \
            keeper.read_state(settings.run_dir, name).restarts == restarts + 1

    assert wait_for(healed, HEAL_DEADLINE_S, 0.25), (
        f"{name} not healed in {HEAL_DEADLINE_S:.0f}s: pid {supervisor.pid(name)}, "
        f"{keeper.read_state(settings.run_dir, name)}; see {supervisor.log_path(keeper.NAME)}")
    print(f"\n{name}: healthy again {time.monotonic() - killed:.1f}s after kill -9")
    entry = cli.stack_status(settings)["components"][name]
    assert entry["healthy"] and entry["restarts"] == restarts + 1 and entry["pid"] == supervisor.pid(name)
    assert "restart_state" not in entry, entry
    _works(settings, name)


def _works(settings, name: str) -> None:
    """The healed component does its job, not only its health probe."""
    if name in ("gateway", "model_server-1", "redis"):
        r = httpx.post(f"{settings.gateway_url}/predict", json={**TRIP, "trip_id": f"healed-{name}"}, timeout=15)
        assert r.status_code == 200, r.text
    elif name == "mlflow":
        assert models.by_alias(settings.mlflow_tracking_uri, settings.model_name, models.CHAMPION) is not None
    elif name == "kafka":
        from confluent_kafka import Producer

        from taxi_mlops.streaming import topics

        producer = Producer({"bootstrap.servers": settings.kafka_bootstrap_servers, "message.timeout.ms": 30000})
        producer.produce(topics.TRIPS, value=b"{not json: healed broker probe", key=b"1")
        assert producer.flush(30) == 0, "the restarted broker did not take a record"
