"""docker compose for the whole stack on one host: official images for the infrastructure,
``deploy/docker/platform.Dockerfile`` for our Python services, ``pipeline.Dockerfile`` for TFX.

Ports come from ``Settings`` and are published on 127.0.0.1 only. Passwords come from the
environment (an ``.env`` file next to the compose file), never from the file itself. Services
bind on 0.0.0.0 and reach each peer by its service name (``peers``: Settings' ``*_host``
fields). MLflow runs its basic-auth app, as ``up`` does (``mlflow_server``, ``mlflow_users``).
A Redis Cluster is rendered for Kubernetes only (compose stays one Redis).
"""

from __future__ import annotations

from taxi_mlops import security
from taxi_mlops.manifests import common
from taxi_mlops.settings import Settings

KAFKA_HOST = "kafka"
MLFLOW_USERS = "mlflow-users"  # the one-shot service that makes MLflow's read-only user
MLFLOW_SECRET = "mlflow_admin_password"  # compose secret: the file Prometheus logs in to MLflow with


def _http_check(url: str) -> dict:
    """A healthcheck with the Python of our image (it has no curl)."""
    code = f"import urllib.request,sys; urllib.request.urlopen('{url}', timeout=2)"
    return {"test": ["CMD", "python", "-c", code], "interval": "10s", "timeout": "3s", "retries": 5,
            "start_period": "30s"}


def _env_var(name: str) -> str:
    """A value compose takes from ``.env``; a missing one stops ``docker compose up`` with the fix."""
    return f"${{{name}:?set it in deploy/compose/.env}}"


# Where our clients reach each peer: compose service names, the ports inside the containers.
ALERTMANAGER_PORT, PUSHGATEWAY_PORT, PROMETHEUS_PORT = 9093, 9091, 9090


def peers(settings: Settings) -> dict[str, str]:
    """Bind everywhere (TAXI_HOST), connect to each peer by its service name: ``host`` is
    0.0.0.0 here, no address to connect to (Settings' ``*_host`` fields)."""
    s = settings
    return {"TAXI_HOST": "0.0.0.0", "TAXI_STATE_DIR": common.STATE_IN_CONTAINER,
            "TAXI_MLFLOW_EXTERNAL_URI": f"http://mlflow:{s.mlflow_port}",
            "KAFKA_BOOTSTRAP_SERVERS": f"{KAFKA_HOST}:{s.kafka_port}",
            "TAXI_PROMETHEUS_EXTERNAL_URL": f"http://prometheus:{PROMETHEUS_PORT}",
            "TAXI_REDIS_HOST": "redis", "TAXI_REDIS_PORT": str(s.redis_port),
            "TAXI_MODEL_SERVER_HOST": "model-server", "TAXI_MODEL_SERVER_PORT": str(s.model_server_port),
            "TAXI_GATEWAY_HOST": "gateway", "TAXI_GATEWAY_PORT": str(s.gateway_port),
            "TAXI_ALERTMANAGER_HOST": "alertmanager", "TAXI_ALERTMANAGER_PORT": str(ALERTMANAGER_PORT),
            "TAXI_PUSHGATEWAY_HOST": "pushgateway", "TAXI_PUSHGATEWAY_PORT": str(PUSHGATEWAY_PORT),
            "TAXI_ALERT_RECEIVER_HOST": "alert-receiver",
            "TAXI_ALERT_RECEIVER_PORT": str(s.alert_receiver_port)}


def mlflow_login(settings: Settings, role: str | None) -> dict[str, str]:
    """MLflow's login for a service, as ``stack/services.py`` gives it locally: writers the
    admin, readers the read-only user. Both as Settings (TAXI_MLFLOW_*: our raw REST calls)
    and as the mlflow library's variables (it reads its login from the environment only)."""
    if role is None:
        return {}
    name = settings.mlflow_admin_username if role == security.MLFLOW_ADMIN else settings.mlflow_reader_username
    var = "TAXI_MLFLOW_ADMIN_PASSWORD" if role == security.MLFLOW_ADMIN else "TAXI_MLFLOW_READER_PASSWORD"
    field = "TAXI_MLFLOW_ADMIN_USERNAME" if role == security.MLFLOW_ADMIN else "TAXI_MLFLOW_READER_USERNAME"
    return {field: name, var: _env_var(var),
            "MLFLOW_TRACKING_USERNAME": name, "MLFLOW_TRACKING_PASSWORD": _env_var(var)}


def _env(settings: Settings, mlflow_role: str | None = None) -> dict[str, str]:
    return {**peers(settings),
            "TAXI_REDIS_PASSWORD": _env_var("TAXI_REDIS_PASSWORD"),
            "TAXI_ADMIN_TOKEN": _env_var("TAXI_ADMIN_TOKEN"),
            **mlflow_login(settings, mlflow_role)}


def _ours(settings: Settings, module: list[str], port: int, health: str, after: list[str],
          mlflow_role: str | None = None) -> dict:
    """One of our services; ``after``: services it waits to be healthy (``mlflow-users``: to
    have completed, so the read-only user exists before a reader logs in)."""
    return {"image": common.PLATFORM_IMAGE,
            "build": {"context": "../..", "dockerfile": "deploy/docker/platform.Dockerfile"},
            "command": ["python", "-m", *module], "environment": _env(settings, mlflow_role),
            "ports": [f"127.0.0.1:{port}:{port}"], "healthcheck": _http_check(f"http://127.0.0.1:{port}{health}"),
            "depends_on": {d: {"condition": "service_completed_successfully" if d == MLFLOW_USERS
                               else "service_healthy"} for d in after},
            "volumes": ["state:" + common.STATE_IN_CONTAINER], "restart": "unless-stopped",
            "read_only": True, "tmpfs": ["/tmp"], "user": "10001:10001"}


# job -> (compose service, port inside its container); jobs without a service here are not scraped
# (the official Kafka image has no JMX exporter).
def _in_compose(settings: Settings) -> dict[str, tuple[str, int]]:
    s = settings
    return {"prometheus": ("prometheus", 9090), "alertmanager": ("alertmanager", 9093),
            "pushgateway": ("pushgateway", 9091), "gateway": ("gateway", s.gateway_port),
            "model_server": ("model-server", s.model_server_port), "mlflow": ("mlflow", s.mlflow_port),
            "stream_processor": ("stream-processor", s.processor_metrics_port),
            "label_join": ("label-join", s.label_join_metrics_port),
            "data_quality": ("data-quality", s.quality_metrics_port),
            "prediction_store": ("prediction-store", s.prediction_store_metrics_port),
            "alert_receiver": ("alert-receiver", s.alert_receiver_port)}


def prometheus_config(settings: Settings) -> dict:
    """The local stack's Prometheus config (observability/prometheus.py) with compose's
    service names for addresses, so scrape jobs, labels and intervals stay the same. MLflow's
    /metrics is admins-only behind its auth app: Prometheus logs in as the admin, the password
    in the compose secret's file (``password_file``), as the local stack does."""
    from taxi_mlops.observability import prometheus

    config = prometheus.build_config(settings)
    where = _in_compose(settings)
    jobs = []
    for job in config["scrape_configs"]:
        if job["job_name"] not in where:
            continue
        service, port = where[job["job_name"]]
        job["static_configs"] = [{**sc, "targets": [f"{service}:{port}"]} for sc in job["static_configs"][:1]]
        if job["job_name"] == "mlflow":
            job["basic_auth"] = {"username": settings.mlflow_admin_username,
                                 "password_file": f"/run/secrets/{MLFLOW_SECRET}"}
        jobs.append(job)
    config["scrape_configs"] = jobs
    config["rule_files"] = ["/etc/prometheus/rules/*.yml"]
    config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [f"alertmanager:{ALERTMANAGER_PORT}"]}]}]}
    return config


def alertmanager_config(settings: Settings) -> dict:
    """The local stack's Alertmanager config (observability/alertmanager.py): the webhook is
    the alert receiver, by its service name."""
    from taxi_mlops.observability import alertmanager

    return alertmanager.build_config(settings.model_copy(update={"alert_receiver_host": "alert-receiver"}))


def mlflow_server(settings: Settings) -> dict:
    """MLflow with its basic-auth app, as ``up`` runs it: ``manifests/mlflow_server.py`` writes
    the auth config (admin from ``.env``, default READ, users in PostgreSQL) at start, then
    execs ``mlflow server``. The backend URI (it holds PostgreSQL's password) is a variable,
    not an argument."""
    s = settings
    backend = "postgresql://mlflow:${TAXI_POSTGRES_PASSWORD:?set it in deploy/compose/.env}@postgres:5432/mlflow"
    service = _ours(s, [common.MLFLOW_ENTRY, "serve", "--host", "0.0.0.0",
                        "--port", str(s.mlflow_port), *common.MLFLOW_AUTH_APP,
                        "--artifacts-destination", f"{common.STATE_IN_CONTAINER}/mlflow-artifacts",
                        "--workers", "1", "--expose-prometheus", "/tmp/mlflow-metrics"],
                    s.mlflow_port, "/health", ["postgres"])
    service["environment"] = {**peers(s), "MLFLOW_BACKEND_STORE_URI": backend, "TAXI_MLFLOW_BACKEND_URI": backend,
                              "TAXI_MLFLOW_ADMIN_USERNAME": s.mlflow_admin_username,
                              "TAXI_MLFLOW_ADMIN_PASSWORD": _env_var("TAXI_MLFLOW_ADMIN_PASSWORD"),
                              "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    return service


def mlflow_users(settings: Settings) -> dict:
    """One-shot: the read-only user, made by the admin as ``up`` does (idempotent)."""
    return {"image": common.PLATFORM_IMAGE,
            "command": ["python", "-m", common.MLFLOW_ENTRY, "users"],
            "environment": {**peers(settings), **mlflow_login(settings, security.MLFLOW_ADMIN),
                            "TAXI_MLFLOW_READER_USERNAME": settings.mlflow_reader_username,
                            "TAXI_MLFLOW_READER_PASSWORD": _env_var("TAXI_MLFLOW_READER_PASSWORD")},
            "depends_on": {"mlflow": {"condition": "service_healthy"}}, "read_only": True,
            "tmpfs": ["/tmp"], "user": "10001:10001"}


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
        "mlflow": mlflow_server(s),
        MLFLOW_USERS: mlflow_users(s),
        "kafka": {"image": common.KAFKA_IMAGE,
                  "environment": {"KAFKA_NODE_ID": "1", "KAFKA_PROCESS_ROLES": "broker,controller",
                                  "KAFKA_LISTENERS": f"PLAINTEXT://:{s.kafka_port},CONTROLLER://:{s.kafka_controller_port}",
                                  "KAFKA_ADVERTISED_LISTENERS": f"PLAINTEXT://{KAFKA_HOST}:{s.kafka_port}",
                                  "KAFKA_CONTROLLER_LISTENER_NAMES": "CONTROLLER",
                                  "KAFKA_CONTROLLER_QUORUM_VOTERS": f"1@{KAFKA_HOST}:{s.kafka_controller_port}",
                                  "KAFKA_AUTO_CREATE_TOPICS_ENABLE": "false",
                                  "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": "1"},
                  "expose": [str(s.kafka_port)], "volumes": ["kafka:/var/lib/kafka/data"],
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
        "model-server": _ours(s, ["taxi_mlops.serving.model_server"], s.model_server_port,
                              "/v2/health/ready", [MLFLOW_USERS, "redis"], security.MLFLOW_READER),
        # The admin: promote and rollback move aliases.
        "gateway": _ours(s, ["taxi_mlops.gateway"], s.gateway_port, "/health/live",
                         ["model-server", "redis", *kafka_up], security.MLFLOW_ADMIN),
        "stream-processor": _ours(s, ["taxi_mlops.streaming.processor", "--instance", "0"],
                                  s.processor_metrics_port, "/metrics", ["redis", *kafka_up]),
        # The admin: an experiment's sequential test decided here promotes or rolls back.
        "label-join": _ours(s, ["taxi_mlops.streaming.label_join"], s.label_join_metrics_port, "/metrics",
                            ["mlflow", *kafka_up], security.MLFLOW_ADMIN),
        "data-quality": _ours(s, ["taxi_mlops.streaming.quality"], s.quality_metrics_port, "/metrics",
                              [MLFLOW_USERS, *kafka_up], security.MLFLOW_READER),
        # Alertmanager's webhook; the admin: a retrain it starts registers a model.
        "alert-receiver": _ours(s, ["taxi_mlops.observability.receiver"], s.alert_receiver_port, "/health",
                                ["mlflow"], security.MLFLOW_ADMIN),
        # Writes the SQLite store the gateway's /predictions reads: both mount the `state` volume.
        "prediction-store": _ours(s, ["taxi_mlops.lineage"], s.prediction_store_metrics_port, "/metrics",
                                  kafka_up),
        "ui": _ours(s, ["streamlit", "run", "/app/src/taxi_mlops/ui/app.py", "--server.headless", "true",
                        "--server.address", "0.0.0.0", "--server.port", str(s.ui_port),
                        "--browser.gatherUsageStats", "false"], s.ui_port, "/_stcore/health",
                    ["gateway", MLFLOW_USERS], security.MLFLOW_READER),
        "prometheus": {"image": common.PROMETHEUS_IMAGE,
                       "volumes": ["../prometheus/rules:/etc/prometheus/rules:ro",
                                   "./prometheus.yml:/etc/prometheus/prometheus.yml:ro", "prometheus:/prometheus"],
                       "secrets": [MLFLOW_SECRET],
                       "ports": [f"127.0.0.1:{s.prometheus_port}:9090"],
                       "healthcheck": {"test": ["CMD", "wget", "-qO-", "http://127.0.0.1:9090/-/ready"],
                                       "interval": "10s", "timeout": "3s", "retries": 5},
                       "restart": "unless-stopped"},
        "alertmanager": {"image": common.ALERTMANAGER_IMAGE, "ports": [f"127.0.0.1:{s.alertmanager_port}:9093"],
                         "volumes": ["./alertmanager.yml:/etc/alertmanager/alertmanager.yml:ro"],
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
                     "environment": _env(s, security.MLFLOW_ADMIN),  # the pipeline registers the model
                     "volumes": ["state:" + common.STATE_IN_CONTAINER],
                     "depends_on": {"mlflow": {"condition": "service_healthy"},
                                    "redis": {"condition": "service_healthy"}},
                     "user": "10001:10001"},
    }
    return {"name": "taxi-mlops", "services": services,
            "volumes": {v: {} for v in ("state", "redis", "postgres", "kafka", "prometheus")},
            "secrets": {MLFLOW_SECRET: {"environment": "TAXI_MLFLOW_ADMIN_PASSWORD"}}}
