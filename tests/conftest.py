"""One real stack per test session: Redis, MLflow, Feast, the TFX pipeline, KServe, gateway.

Everything is started by the platform's own code on 127.0.0.1, on free ports, with a fresh
state directory, so the suite runs beside a developer's `taxi-mlops up` stack.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from taxi_mlops import security
from taxi_mlops.features import store
from taxi_mlops.pipeline import launcher
from taxi_mlops.registry import models
from taxi_mlops.settings import Settings
from taxi_mlops.stack import monitoring, services
from taxi_mlops.stack import up as stack_up
from taxi_mlops.stack.process import Supervisor, free_port, free_port_block


def _pg_bin(name: str) -> str:
    import glob
    import shutil

    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))), None)
    assert found, f"{name} not found: `make install` installs Debian's postgresql"
    return found


@pytest.fixture(scope="session")
def postgres():
    """A throwaway PostgreSQL cluster on a free port (run as the 'postgres' user when root),
    started on first use; ``postgres(name)`` creates database ``name`` and returns its URI."""
    import shutil
    import subprocess
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="taxi-pg-"))
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_user:
        shutil.chown(root, "postgres")
        shutil.chown(sock, "postgres")
    port = free_port()
    subprocess.run([*as_user, _pg_bin("initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"],
                   check=True, capture_output=True, timeout=120)
    subprocess.run([*as_user, _pg_bin("pg_ctl"), "-D", str(data), "-w", "-t", "60", "-l", str(root / "pg.log"),
                    "-o", f"-p {port} -k {sock} -c listen_addresses=127.0.0.1", "start"],
                   check=True, capture_output=True, timeout=90)

    def database(name: str) -> str:
        subprocess.run([*as_user, _pg_bin("createdb"), "-h", "127.0.0.1", "-p", str(port), "-U",
                        "postgres", name], check=True, capture_output=True, timeout=30)
        return f"postgresql://postgres@127.0.0.1:{port}/{name}"

    try:
        yield database
    finally:
        subprocess.run([*as_user, _pg_bin("pg_ctl"), "-D", str(data), "-m", "fast", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def settings(tmp_path_factory) -> Settings:
    state = Path(os.environ.get("TAXI_TEST_STATE_DIR") or tmp_path_factory.mktemp("state"))
    return Settings(state_dir=state, redis_port=free_port(), mlflow_port=free_port(),
                    # Two model-server replicas (ports N, N+1): the gateway balances them.
                    model_server_port=free_port_block((0, 1)), model_server_replicas=2,
                    gateway_port=free_port(), ui_port=free_port(),
                    kafka_port=free_port(), kafka_controller_port=free_port(),
                    kafka_bootstrap_override=None, request_timeout_s=2.0,
                    prometheus_port=free_port(), prometheus_external_url=None,
                    pushgateway_port=free_port(), alertmanager_port=free_port(),
                    alert_receiver_port=free_port(), kafka_metrics_port=free_port(),
                    processor_metrics_port=free_port(), label_join_metrics_port=free_port(),
                    quality_metrics_port=free_port(), quality_window_s=5.0,
                    prediction_store_metrics_port=free_port(),
                    # Fast scrapes and alert grouping so alert tests wait seconds, not minutes.
                    scrape_interval_s=1.0, alert_group_wait_s=1.0,
                    # Fast registry polls and routing refreshes: rollout tests await swaps.
                    registry_poll_s=1.0, unload_grace_s=2.0, routing_refresh_s=0.5,
                    # The closed loop's hooks are off for the session: an alert fired by one
                    # test must not retrain in the background under the others.
                    # tests/test_retrain_stack.py turns them on for itself.
                    retrain_alerts="",
                    # The keeper restarts crashed services after 0.5 s (tests await the heal).
                    restart_backoff_s=0.5)


@pytest.fixture(scope="session")
def supervisor(settings) -> Supervisor:
    return Supervisor(settings)


@pytest.fixture(scope="session")
def base_stack(settings, supervisor):
    """Redis + Pushgateway + MLflow + applied Feast repo (no model yet)."""
    os.environ.update(settings.feast_env())
    security.use_mlflow_credentials(settings)  # the tests log in to MLflow as its admin
    supervisor.start(services.redis_service(settings))
    supervisor.start(monitoring.pushgateway_service(settings))  # the training run pushes to it
    supervisor.start(services.mlflow_service(settings))
    store.apply(settings)
    yield settings
    for service in reversed(services.all_services(settings)):
        supervisor.stop(service.name)


@pytest.fixture
def keeper_paused(stack, settings, supervisor):
    """The keeper stopped for a test that needs a killed service to stay down (what the
    gateway does without it, the alert on a dead target); started again afterwards."""
    from taxi_mlops.stack import keeper

    supervisor.stop(keeper.NAME)
    yield
    supervisor.start(services.keeper_service(settings))


def restore_pipeline_metrics(settings: Settings, trained: dict) -> None:
    """The Pushgateway keeps the last run's figures (one job, no family or trigger label), and
    tests read them as the session's champion run: a test that trains again puts those back."""
    import time

    from taxi_mlops.pipeline import metrics as run_metrics

    run = trained["result"]
    run_metrics.push(settings.pushgateway_url, run_metrics.build_registry(
        success=True, run_seconds=run.seconds, finished_at=time.time(),
        component_seconds=run.component_seconds, eval_metrics=run.eval_metrics))


@pytest.fixture(scope="session")
def trained(base_stack, settings):
    """The pipeline run once from an empty state directory."""
    events = []
    result = launcher.run_training(settings, progress=events.append)
    return {"result": result, "events": events}


@pytest.fixture(scope="session")
def stack(trained, settings, supervisor):
    """The whole stack serving the champion trained above, as `taxi-mlops up` starts it."""
    stack_up(settings, supervisor)
    return settings


@pytest.fixture(scope="session")
def champion(trained, settings) -> models.ModelRef:
    ref = models.by_alias(settings.mlflow_tracking_uri, settings.model_name, models.CHAMPION)
    assert ref is not None, "the first blessed model must become champion"
    return ref


TRIP = {
    "trip_id": "t-1", "trip_miles": 2.5, "fare": 9.75, "trip_seconds": 600,
    "trip_start_hour": 13, "trip_start_day": 4, "trip_start_month": 7,
    "pickup_community_area": 8, "dropoff_community_area": 32,
    "payment_type": "Credit Card", "company": "Taxi Affiliation Services",
}


@pytest.fixture
def trip() -> dict:
    return dict(TRIP)


@pytest.fixture(scope="session")
def observed_stack(stack, settings):
    """The whole stack under live traffic, scraped: what every dashboard panel and the
    observability tests read. Sends /predict calls (one with an unseen company, so features
    are defaulted), replays trips with predictions so the label join joins, and one
    undecodable event so the dead-letter path has data; then waits until Prometheus has the
    label join's live accuracy (the last figure to appear)."""
    import httpx
    from confluent_kafka import Producer

    from taxi_mlops.observability import prometheus
    from taxi_mlops.stack.process import wait_for
    from taxi_mlops.streaming import replay, topics

    with httpx.Client(timeout=10) as client:
        for i in range(20):
            r = client.post(f"{settings.gateway_url}/predict",
                            json={**TRIP, "trip_id": f"warm-{i}",
                                  "company": "Brand New Cab Co" if i == 0 else TRIP["company"]})
            assert r.status_code == 200, r.text
        assert client.get(f"{settings.gateway_url}/no-such-route").status_code == 404
    result = replay.replay(settings, speed="max", retime=True, limit=400, max_rate=300,
                           predict_url=settings.gateway_url, progress=lambda _msg: None)
    assert result["predict_ok"] > 100, result
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap_servers})
    producer.produce(topics.TRIPS, value=b"{not json", key=b"8")
    assert producer.flush(10) == 0

    def scraped() -> bool:
        try:
            return bool(prometheus.query(settings, "taxi_live_joined > 0")) and bool(
                prometheus.query(settings, "taxi_stream_events_dead_lettered_total"))
        except Exception:
            return False

    assert wait_for(scraped, 90, 1.0), "Prometheus never saw the label join's figures"
    return settings
