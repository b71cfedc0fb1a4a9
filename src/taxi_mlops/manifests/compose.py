"""docker compose for the whole stack on one host: official images for the infrastructure,
``deploy/docker/platform.Dockerfile`` for our Python services, ``pipeline.Dockerfile`` for TFX.

Ports come from ``Settings`` and are published on 127.0.0.1 only. Passwords come from the
environment (an ``.env`` file next to the compose file), never from the file itself.
"""

from __future__ import annotations

from taxi_mlops.manifests import common
from taxi_mlops.settings import Settings

KAFKA_HOST = "kafka"


def _http_check(url: str) -> dict:
    """A healthcheck with the Python of our image (it has no curl)."""
    code = f"import urllib.request,sys; urllib.request.urlopen('{url}', timeout=2)"
    return {"test": ["CMD", "python", "-c", code], "interval": "10s", "timeout": "3s", "retries": 5,
            "start_period": "30s"}


def _env(settings: Settings) -> dict[str, str]:
    return {"TAXI_HOST": "0.0.0.0", "TAXI_STATE_DIR": common.STATE_IN_CONTAINER,
            "TAXI_MLFLOW_EXTERNAL_URI": f"http://mlflow:{settings.mlflow_port}",
            "KAFKA_BOOTSTRAP_SERVERS": f"{KAFKA_HOST}:{settings.kafka_port}",
            "TAXI_PROMETHEUS_EXTERNAL_URL": f"http://prometheus:{settings.prometheus_port}",
            "TAXI_REDIS_PASSWORD": "${TAXI_REDIS_PASSWORD:?set it in deploy/compose/.env}",
            "TAXI_ADMIN_TOKEN": "${TAXI_ADMIN_TOKEN:?set it in deploy/compose/.env}"}


def _ours(settings: Settings, module: list[str], port: int, health: str, after: list[str]) -> dict:
    return {"image": common.PLATFORM_IMAGE,
            "build": {"context": "../..", "dockerfile": "deploy/docker/platform.Dockerfile"},
            "command": ["python", "-m", *module], "environment": _env(settings),
            "ports": [f"127.0.0.1:{port}:{port}"], "healthcheck": _http_check(f"http://127.0.0.1:{port}{health}"),
            "depends_on": {d: {"condition": "service_healthy"} for d in after},
            "volumes": ["state:" + common.STATE_IN_CONTAINER], "restart": "unless-stopped",
            "read_only": True, "tmpfs": ["/tmp"], "user": "10001:10001"}


# job -> (compose service, port inside its container); jobs without a service here are not scraped
# (the alert receiver is not in compose; the official Kafka image has no JMX exporter).
def _in_compose(settings: Settings) -> dict[str, tuple[str, int]]:
    s = settings
    return {"prometheus": ("prometheus", 9090), "alertmanager": ("alertmanager", 9093),
            "pushgateway": ("pushgateway", 9091), "gateway": ("gateway", s.gateway_port),
            "model_server": ("model-server", s.model_server_port), "mlflow": ("mlflow", s.mlflow_port),
            "stream_processor": ("stream-processor", s.processor_metrics_port),
            "label_join": ("label-join", s.label_join_metrics_port),
            "data_quality": ("data-quality", s.quality_metrics_port),
            "prediction_store": ("prediction-store", s.prediction_store_metrics_port)}


def prometheus_config(settings: Settings) -> dict:
    """The local stack's Prometheus config (observability/prometheus.py) with compose's
    service names for addresses, so scrape jobs, labels and intervals stay the same."""
    from taxi_mlops.observability import prometheus

    config = prometheus.build_config(settings)
    where = _in_compose(settings)
    jobs = []
    for job in config["scrape_configs"]:
        if job["job_name"] not in where:
            continue
        service, port = where[job["job_name"]]
        job["static_configs"] = [{**sc, "targets": [f"{service}:{port}"]} for sc in job["static_configs"][:1]]
        jobs.append(job)
    config["scrape_configs"] = jobs
    config["rule_files"] = ["/etc/prometheus/rules/*.yml"]
    config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": ["alertmanager:9093"]}]}]}
    return config


def compose(settings: Settings) -> dict:
    s = settings
    kafka_up = ["kafka"]
    services = {
        "redis": {"image": common.REDIS_IMAGE,
                  "command": ["sh", "-c", f'exec redis-server --port {s.redis_port} --requirepass "$$REDIS_PASSWORD" '
                                          "--appendonly yes --appendfsync everysec --dir /data"],
                  "environment": {"REDIS_PASSWORD": "${TAXI_REDIS_PASSWORD:?set it in deploy/compose/.env}"},
                  "ports": [f"127.0.0.1:{s.redis_port}:{s.redis_port}"], "volumes": ["redis:/data"],
                  "healthcheck": {"test": ["CMD-SHELL", f'redis-cli -p {s.redis_port} -a "$$REDIS_PASSWORD" '
                                                        "--no-auth-warning ping | grep PONG"],
                                  "interval": "10s", "timeout": "3s", "retries": 5},
                  "restart": "unless-stopped"},
        "postgres": {"image": common.POSTGRES_IMAGE,
                     "environment": {"POSTGRES_USER": "mlflow", "POSTGRES_DB": "mlflow",
                                     "POSTGRES_PASSWORD": "${TAXI_POSTGRES_PASSWORD:?set it in deploy/compose/.env}"},
                     "volumes": ["postgres:/var/lib/postgresql/data"],
                     "healthcheck": {"test": ["CMD", "pg_isready", "-U", "mlflow", "-d", "mlflow"],
                                     "interval": "10s", "timeout": "3s", "retries": 5},
                     "restart": "unless-stopped"},
        "mlflow": {**_ours(s, ["mlflow", "server", "--host", "0.0.0.0", "--port", str(s.mlflow_port),
                               "--backend-store-uri",
                               "postgresql://mlflow:${TAXI_POSTGRES_PASSWORD}@postgres:5432/mlflow",
                               "--artifacts-destination", f"{common.STATE_IN_CONTAINER}/mlflow-artifacts"],
                           s.mlflow_port, "/health", ["postgres"]),
                   "environment": {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}},
        "kafka": {"image": common.KAFKA_IMAGE,
                  "environment": {"KAFKA_NODE_ID": "1", "KAFKA_PROCESS_ROLES": "broker,controller",
                                  "KAFKA_LISTENERS": f"PLAINTEXT://:{s.kafka_port},CONTROLLER://:{s.kafka_controller_port}",
                                  "KAFKA_ADVERTISED_LISTENERS": f"PLAINTEXT://{KAFKA_HOST}:{s.kafka_port}",
                                  "KAFKA_CONTROLLER_LISTENER_NAMES": "CONTROLLER",
                                  "KAFKA_CONTROLLER_QUORUM_VOTERS": f"1@{KAFKA_HOST}:{s.kafka_controller_port}",
                                  "KAFKA_AUTO_CREATE_TOPICS_ENABLE": "false",
                                  "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": "1"},
                  "volumes": ["kafka:/var/lib/kafka/data"],
                  "healthcheck": {"test": ["CMD-SHELL", "/opt/kafka/bin/kafka-broker-api-versions.sh "
                                                        f"--bootstrap-server localhost:{s.kafka_port} >/dev/null"],
                                  "interval": "10s", "timeout": "10s", "retries": 10, "start_period": "20s"},
                  "restart": "unless-stopped"},
        # Applies streaming/topics.py (idempotent), as `taxi-mlops up` does locally, then exits.
        "topics": {"image": common.PLATFORM_IMAGE,
                   "command": ["python", "-c", "from taxi_mlops.settings import Settings; "
                               "from taxi_mlops.streaming.topics import ensure_topics; "
                               "print(ensure_topics(Settings().kafka_bootstrap_servers))"],
                   "environment": _env(s), "depends_on": {"kafka": {"condition": "service_healthy"}},
                   "user": "10001:10001"},
        "model-server": {**_ours(s, ["taxi_mlops.serving.model_server"], s.model_server_port,
                                 "/v2/health/ready", ["mlflow", "redis"])},
        "gateway": _ours(s, ["taxi_mlops.gateway"], s.gateway_port, "/openapi.json",
                         ["model-server", "redis", *kafka_up]),
        "stream-processor": _ours(s, ["taxi_mlops.streaming.processor", "--instance", "0"],
                                  s.processor_metrics_port, "/metrics", ["redis", *kafka_up]),
        "label-join": _ours(s, ["taxi_mlops.streaming.label_join"], s.label_join_metrics_port, "/metrics",
                            kafka_up),
        "data-quality": _ours(s, ["taxi_mlops.streaming.quality"], s.quality_metrics_port, "/metrics",
                              ["mlflow", *kafka_up]),
        # Writes the SQLite store the gateway's /predictions reads: both mount the `state` volume.
        "prediction-store": _ours(s, ["taxi_mlops.lineage"], s.prediction_store_metrics_port, "/metrics",
                                  kafka_up),
        "ui": _ours(s, ["streamlit", "run", "/app/src/taxi_mlops/ui/app.py", "--server.headless", "true",
                        "--server.address", "0.0.0.0", "--server.port", str(s.ui_port),
                        "--browser.gatherUsageStats", "false"], s.ui_port, "/_stcore/health", ["gateway"]),
        "prometheus": {"image": common.PROMETHEUS_IMAGE,
                       "volumes": ["../prometheus/rules:/etc/prometheus/rules:ro",
                                   "./prometheus.yml:/etc/prometheus/prometheus.yml:ro", "prometheus:/prometheus"],
                       "ports": [f"127.0.0.1:{s.prometheus_port}:9090"],
                       "healthcheck": {"test": ["CMD", "wget", "-qO-", "http://127.0.0.1:9090/-/ready"],
                                       "interval": "10s", "timeout": "3s", "retries": 5},
                       "restart": "unless-stopped"},
        "alertmanager": {"image": common.ALERTMANAGER_IMAGE, "ports": [f"127.0.0.1:{s.alertmanager_port}:9093"],
                         "healthcheck": {"test": ["CMD", "wget", "-qO-", "http://127.0.0.1:9093/-/ready"],
                                         "interval": "10s", "timeout": "3s", "retries": 5},
                         "restart": "unless-stopped"},
        "pushgateway": {"image": common.PUSHGATEWAY_IMAGE, "ports": [f"127.0.0.1:{s.pushgateway_port}:9091"],
                        "healthcheck": {"test": ["CMD", "wget", "-qO-", "http://127.0.0.1:9091/-/ready"],
                                        "interval": "10s", "timeout": "3s", "retries": 5},
                        "restart": "unless-stopped"},
        "grafana": {"image": common.GRAFANA_IMAGE,
                    "volumes": ["../grafana/provisioning:/etc/grafana/provisioning:ro",
                                "../grafana/dashboards:/var/lib/grafana/dashboards:ro"],
                    "ports": ["127.0.0.1:3000:3000"],
                    "healthcheck": {"test": ["CMD", "wget", "-qO-", "http://127.0.0.1:3000/api/health"],
                                    "interval": "10s", "timeout": "3s", "retries": 5},
                    "depends_on": {"prometheus": {"condition": "service_healthy"}},
                    "restart": "unless-stopped"},
        # `docker compose run --rm pipeline /var/lib/taxi/<config>.json` runs the TFX pipeline once on
        # a PipelineConfig the launcher wrote (profile: `up` does not start it).
        "pipeline": {"image": common.PIPELINE_IMAGE, "profiles": ["train"],
                     "build": {"context": "../..", "dockerfile": "deploy/docker/pipeline.Dockerfile"},
                     "environment": _env(s), "volumes": ["state:" + common.STATE_IN_CONTAINER],
                     "depends_on": {"mlflow": {"condition": "service_healthy"},
                                    "redis": {"condition": "service_healthy"}},
                     "user": "10001:10001"},
    }
    services["mlflow"]["environment"] = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    return {"name": "taxi-mlops", "services": services,
            "volumes": {v: {} for v in ("state", "redis", "postgres", "kafka", "prometheus")}}
