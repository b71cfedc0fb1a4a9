"""The monitoring services: Prometheus, Pushgateway, Alertmanager and our alert receiver.

Each factory returns a ``Service`` for the supervisor; configs are generated from
``Settings`` in ``prepare`` (so a changed port is picked up at the next start). Start order:
alert receiver, Alertmanager, Pushgateway, Prometheus (each only needs the ones before it to
deliver; none needs the rest of the stack), see ``monitoring_services``.
"""

from __future__ import annotations

import shutil
import sys

import httpx

from taxi_mlops import security
from taxi_mlops.observability import alertmanager, alerts, prometheus
from taxi_mlops.settings import Settings
from taxi_mlops.stack.process import PROBE_TIMEOUT_S, Service, http_ok



def _binary(name: str, debian_name: str) -> str:
    return shutil.which(name) or shutil.which(debian_name) or f"/usr/bin/{debian_name}"


def _listen(settings: Settings, port: int) -> str:
    return f"--web.listen-address={settings.host}:{port}"


def prometheus_service(settings: Settings) -> Service | None:
    if settings.prometheus_external_url:
        return None  # an external Prometheus scrapes us (give it prometheus.build_config's jobs)
    return Service(
        name="prometheus",
        command=[_binary("prometheus", "prometheus"),
                 f"--config.file={prometheus.config_path(settings)}",
                 f"--storage.tsdb.path={prometheus.data_dir(settings)}",
                 _listen(settings, settings.prometheus_port),
                 f"--web.external-url={settings.prometheus_url}",
                 "--log.format=json", "--web.enable-lifecycle"],
        healthy=lambda: http_ok(f"{settings.prometheus_url}/-/ready"),
        url=settings.prometheus_url,
        prepare=lambda: prometheus.write_config(settings),
        stop_timeout_s=30.0,
        details=lambda: _prometheus_details(settings),
    )


def pushgateway_service(settings: Settings) -> Service:
    data = settings.state_dir / "pushgateway"
    return Service(
        name="pushgateway",
        command=[_binary("pushgateway", "prometheus-pushgateway"),
                 _listen(settings, settings.pushgateway_port),
                 f"--persistence.file={data / 'metrics.store'}", "--persistence.interval=30s",
                 "--log.format=json"],
        healthy=lambda: http_ok(f"{settings.pushgateway_url}/-/ready"),
        url=settings.pushgateway_url,
        prepare=lambda: data.mkdir(parents=True, exist_ok=True),
        details=lambda: _pushgateway_details(settings),
    )


def alertmanager_service(settings: Settings) -> Service:
    return Service(
        name="alertmanager",
        command=[_binary("alertmanager", "prometheus-alertmanager"),
                 f"--config.file={alertmanager.config_path(settings)}",
                 f"--storage.path={alertmanager.data_dir(settings)}",
                 _listen(settings, settings.alertmanager_port),
                 f"--web.external-url={settings.alertmanager_url}",
                 "--cluster.listen-address=",  # a single instance: no gossip port
                 "--log.format=json"],
        healthy=lambda: http_ok(f"{settings.alertmanager_url}/-/ready"),
        url=settings.alertmanager_url,
        prepare=lambda: alertmanager.write_config(settings),
        details=lambda: _alertmanager_details(settings),
    )


def alert_receiver_service(settings: Settings, hooks: list[str] | None = None) -> Service:
    """``hooks``: more ``ALERTNAME=package.module:function`` specs (see observability.receiver)
    besides the closed loop's: every alert in ``settings.retrain_alerts`` starts a guarded
    retrain (``taxi_mlops.retrain``)."""
    retrain_hooks = [f"{name}=taxi_mlops.retrain.loop:on_alert" for name in settings.retrain_alert_names]
    command = [sys.executable, "-m", "taxi_mlops.observability.receiver"]
    for spec in retrain_hooks + list(hooks or []):
        command += ["--hook", spec]
    return Service(
        name="alert_receiver",
        command=command,
        healthy=lambda: http_ok(f"{settings.alert_receiver_url}/health"),
        url=settings.alert_receiver_url,
        env={**settings.as_env(), **security.mlflow_env(settings)},  # a retrain registers models
        details=lambda: _receiver_details(settings),
    )


def monitoring_services(settings: Settings) -> list[Service]:
    """In start order; ``None`` (an external Prometheus) left out."""
    services = [alert_receiver_service(settings), alertmanager_service(settings),
                pushgateway_service(settings), prometheus_service(settings)]
    return [s for s in services if s is not None]


# ---- status details ----------------------------------------------------------------------
def _prometheus_details(settings: Settings) -> dict:
    try:
        targets = prometheus.targets_health(settings, PROBE_TIMEOUT_S)
    except (httpx.HTTPError, ValueError, KeyError):
        return {}
    down = sorted(t["component"] or t["job"] for t in targets if t["health"] != "up")
    out = {"targets": f"{len(targets) - len(down)}/{len(targets)} up"}
    if down:
        out["down"] = ", ".join(down)
    return out


def _alertmanager_details(settings: Settings) -> dict:
    try:
        return {"firing": len(alerts.firing(settings, PROBE_TIMEOUT_S))}
    except (httpx.HTTPError, ValueError):
        return {}


def _pushgateway_details(settings: Settings) -> dict:
    try:
        groups = httpx.get(f"{settings.pushgateway_url}/api/v1/metrics", timeout=PROBE_TIMEOUT_S).json()["data"]
    except (httpx.HTTPError, ValueError, KeyError):
        return {}
    return {"groups": len(groups)}


def _receiver_details(settings: Settings) -> dict:
    try:
        body = httpx.get(f"{settings.alert_receiver_url}/health", timeout=PROBE_TIMEOUT_S).json()
    except (httpx.HTTPError, ValueError):
        return {}
    return {"alerts_stored": body.get("alerts_stored")}
