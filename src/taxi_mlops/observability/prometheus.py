"""Prometheus configuration generated from ``Settings``.

One scrape job per component, each static target labelled with ``component`` (the
supervisor's service name, so a metric and the log file ``logs/<component>.log`` name the
same thing). Rule files are the repository's ``deploy/prometheus/rules/*.yml``; alerts go
to our Alertmanager. The file is written to ``state_dir/prometheus/prometheus.yml``.

The local stack's model servers are the exception: their targets are a file
(``file_sd_configs``) that lists a replica once the stack has started it. Before the first
``train`` there is no champion and no model server on purpose; a static target would be
``up == 0`` and page ``TaxiComponentDown`` (critical) during every fresh ``make demo``.
"""

from __future__ import annotations

from pathlib import Path

import httpx
from taxi_mlops import paths
from taxi_mlops.observability.configfile import write_yaml
from taxi_mlops.settings import Settings

RULES_DIR = paths.PROJECT_ROOT / "deploy" / "prometheus" / "rules"
RULES_GLOB = str(RULES_DIR / "*.yml")


def duration(seconds: float) -> str:
    """Seconds as a Prometheus duration (``5s``, ``500ms``)."""
    ms = int(round(seconds * 1000))
    if ms <= 0:
        raise ValueError(f"duration must be positive, got {seconds}")
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


def config_dir(settings: Settings) -> Path:
    return settings.state_dir / "prometheus"


def config_path(settings: Settings) -> Path:
    return config_dir(settings) / "prometheus.yml"


def data_dir(settings: Settings) -> Path:
    return config_dir(settings) / "data"


def kafka_is_local(settings: Settings) -> bool:
    return not settings.kafka_bootstrap_override


def scrape_targets(settings: Settings) -> list[tuple[str, str, str]]:
    """(job, host:port, component) for every component Prometheus scrapes."""
    from taxi_mlops.lineage.consumer import NAME as PREDICTION_STORE
    from taxi_mlops.streaming.label_join import NAME as LABEL_JOIN
    from taxi_mlops.streaming.processor import service_name
    from taxi_mlops.streaming.quality import NAME as DATA_QUALITY

    h = settings.host
    targets = [
        ("prometheus", f"{h}:{settings.prometheus_port}", "prometheus"),
        ("alertmanager", f"{h}:{settings.alertmanager_port}", "alertmanager"),
        ("pushgateway", f"{h}:{settings.pushgateway_port}", "pushgateway"),
        ("alert_receiver", f"{h}:{settings.alert_receiver_port}", "alert_receiver"),
        ("gateway", f"{h}:{settings.gateway_port}", "gateway"),
    ]
    targets += model_server_targets(settings)
    if not settings.mlflow_external_uri:
        targets.append(("mlflow", f"{h}:{settings.mlflow_port}", "mlflow"))
    if kafka_is_local(settings):
        # one target per node, component = the node's service name (kafka, kafka-1, ...)
        targets += [("kafka", f"{h}:{settings.kafka_node_ports(i)[2]}", "kafka" if i == 0 else f"kafka-{i}")
                    for i in range(settings.kafka_nodes)]
    targets.append(("stream_processor", f"{h}:{settings.processor_metrics_port + 0}", service_name(0)))
    targets.append(("label_join", f"{h}:{settings.label_join_metrics_port}", LABEL_JOIN))
    targets.append(("data_quality", f"{h}:{settings.quality_metrics_port}", DATA_QUALITY))
    targets.append(("prediction_store", f"{h}:{settings.prediction_store_metrics_port}", PREDICTION_STORE))
    if settings.prometheus_external_url:  # an external server scrapes itself under its own job
        targets = [t for t in targets if t[0] != "prometheus"]
    return targets


def model_server_targets(settings: Settings) -> list[tuple[str, str, str]]:
    """One target per replica, component = the replica's service name."""
    from taxi_mlops.serving import replica_name

    return [("model_server", f"{settings.host}:{settings.model_server_port + i}", replica_name(i))
            for i in range(settings.model_server_replicas)]


def model_server_targets_path(settings: Settings) -> Path:
    return config_dir(settings) / "targets" / "model_server.json"


def write_model_server_targets(settings: Settings, starting: str | None = None) -> Path:
    """The model-server job's file: the replicas whose process runs (their supervisor pid
    file names a live process), and ``starting``, the one the stack is about to start.
    Prometheus rereads the file when it changes."""
    import json

    from taxi_mlops.pids import live_pid

    groups = [{"targets": [target], "labels": {"component": component}}
              for _, target, component in model_server_targets(settings)
              if component == starting or live_pid(settings.run_dir / f"{component}.pid")]
    path = model_server_targets_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(groups, indent=1))
    tmp.replace(path)  # whole or not at all: Prometheus may read it at any moment
    return path


def build_config(settings: Settings, model_servers_from_file: bool = False) -> dict:
    """``model_servers_from_file``: the local stack's model-server job reads its targets from
    ``model_server_targets_path`` (see the module docstring); elsewhere (compose, an external
    Prometheus) every replica is a static target."""
    interval = duration(settings.scrape_interval_s)
    timeout = duration(min(settings.scrape_interval_s, 10.0))
    jobs: dict[str, dict] = {}
    for job, target, component in scrape_targets(settings):
        if job == "model_server" and model_servers_from_file:
            jobs[job] = {"job_name": job, "metrics_path": "/metrics", "file_sd_configs": [
                {"files": [str(model_server_targets_path(settings))], "refresh_interval": interval}]}
            continue
        cfg = jobs.setdefault(job, {"job_name": job, "metrics_path": "/metrics", "static_configs": []})
        if job == "pushgateway":
            cfg["honor_labels"] = True  # keep the pushed job="taxi_pipeline", not job="pushgateway"
        cfg["static_configs"].append({"targets": [target], "labels": {"component": component}})
    am = settings.alertmanager_url.split("://", 1)[-1].rstrip("/")
    return {
        "global": {"scrape_interval": interval, "scrape_timeout": timeout,
                   "evaluation_interval": interval,
                   "external_labels": {"platform": "taxi-mlops"}},
        "rule_files": [RULES_GLOB],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [am]}]}]},
        "scrape_configs": list(jobs.values()),
    }


def write_config(settings: Settings) -> Path:
    """Write ``prometheus.yml`` (and the data dir); returns the config path."""
    data_dir(settings).mkdir(parents=True, exist_ok=True)
    write_model_server_targets(settings)
    config = build_config(settings, model_servers_from_file=True)
    _mlflow_scrape_login(settings, config)
    return write_yaml(config_path(settings), config, __name__)


def _mlflow_scrape_login(settings: Settings, config: dict) -> None:
    """MLflow's /metrics is behind its basic-auth app, which is fail-closed: a route without a
    permission rule (this one) is for admins only, so Prometheus logs in as the admin, its
    password in a file of mode 0600 beside the config (not in the config itself)."""
    import os

    from taxi_mlops import security

    pair = None if settings.mlflow_external_uri else security.mlflow_credentials(settings)
    if pair is None:
        return
    password_file = config_path(settings).with_name("mlflow_password")
    password_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(pair[1])
    for job in config["scrape_configs"]:
        if job["job_name"] == "mlflow":
            job["basic_auth"] = {"username": pair[0], "password_file": str(password_file)}


def targets_health(settings: Settings, timeout_s: float = 2.0) -> list[dict]:
    """Active targets as {job, component, url, health, error} from /api/v1/targets."""
    r = httpx.get(f"{settings.prometheus_url}/api/v1/targets", params={"state": "active"}, timeout=timeout_s)
    r.raise_for_status()
    out = []
    for t in r.json()["data"]["activeTargets"]:
        labels = t.get("labels", {})
        out.append({"job": labels.get("job") or t.get("scrapePool"), "component": labels.get("component"),
                    "url": t.get("scrapeUrl"), "health": t.get("health"), "error": t.get("lastError") or None})
    return out


def query(settings: Settings, expr: str, timeout_s: float = 5.0) -> list[dict]:
    """An instant query; returns the result vector (``[]`` when empty). Raises on a bad query."""
    r = httpx.get(f"{settings.prometheus_url}/api/v1/query", params={"query": expr}, timeout=timeout_s)
    body = r.json()
    if body.get("status") != "success":
        raise ValueError(f"query {expr!r} failed: {body.get('errorType')}: {body.get('error')}")
    return body["data"]["result"]
