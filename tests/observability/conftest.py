"""The monitoring processes alone (Prometheus, Pushgateway, Alertmanager, alert receiver) on
free ports in a temporary state directory, beside any dev stack. The rest of the stack is
not started: its scrape targets are down, which the alert-path test uses. The full stack
under traffic is the root conftest's ``observed_stack``."""

from __future__ import annotations

import pytest

from taxi_mlops.settings import Settings
from taxi_mlops.stack import monitoring
from taxi_mlops.stack.process import Supervisor, free_port


def monitoring_settings(state_dir, **overrides) -> Settings:
    ports = {name: free_port() for name in (
        "prometheus_port", "pushgateway_port", "alertmanager_port", "alert_receiver_port", "gateway_port",
        "model_server_port", "mlflow_port", "kafka_port", "kafka_controller_port", "kafka_metrics_port",
        "processor_metrics_port", "label_join_metrics_port", "quality_metrics_port",
        "prediction_store_metrics_port", "redis_port")}
    values = dict(state_dir=state_dir, scrape_interval_s=1.0, alert_group_wait_s=1.0,
                  startup_timeout_s=30.0, kafka_bootstrap_override=None, prometheus_external_url=None,
                  mlflow_external_uri=None)
    values.update(ports)
    values.update(overrides)
    return Settings(**values)


@pytest.fixture(scope="session")
def monitoring_stack(tmp_path_factory):
    settings = monitoring_settings(tmp_path_factory.mktemp("monitoring"))
    supervisor = Supervisor(settings)
    started = []
    try:
        for service in monitoring.monitoring_services(settings):
            supervisor.start(service)
            started.append(service.name)
        yield settings, supervisor
    finally:
        for name in reversed(started):
            supervisor.stop(name)
