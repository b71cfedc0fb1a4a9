"""The local stack's services, in start order, each built from ``Settings``.

Adding a component means adding a function here that returns a ``Service``; ``up``, ``down``
and ``status`` pick it up from ``all_services``.
"""

from __future__ import annotations

import os
import shutil
import sys

import httpx

from taxi_mlops import security
from taxi_mlops.registry import models
from taxi_mlops.serving import replica_name
from taxi_mlops.settings import Settings
from taxi_mlops.stack.process import PROBE_TIMEOUT_S, Service, http_ok



def _redis_ok(settings: Settings) -> bool:
    """One PING, no retries: redis-py 7 retries a refused connection for ~10 s by default, and
    the supervisor probes once before every start, so each start waited for nothing."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from taxi_mlops import security

    return bool(redis.Redis(host=settings.host, port=settings.redis_port,
                            password=security.redis_password(settings), retry=Retry(NoBackoff(), 0),
                            socket_timeout=PROBE_TIMEOUT_S, socket_connect_timeout=PROBE_TIMEOUT_S).ping())


def redis_service(settings: Settings, persistent: bool = True) -> Service:
    """Redis with a password (``requirepass``, from ``security.redis_password``), written to
    a config file of mode 0600 so it never shows on a command line or in a log.
    ``persistent``: snapshots plus an append-only file synced every second, so a kill -9
    (and the keeper's restart) loses at most a second of online features; benches that
    measure the stream turn it off."""
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    data = settings.state_dir / "redis"
    config = data / "redis.conf"
    durability = (["--save", "60", "1", "--appendonly", "yes", "--appendfsync", "everysec"] if persistent
                  else ["--save", "", "--appendonly", "no"])

    def prepare() -> None:
        from taxi_mlops import security

        data.mkdir(parents=True, exist_ok=True)
        fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"requirepass {security.redis_password(settings)}\n")

    return Service(
        name="redis",
        command=[binary, str(config), "--bind", settings.host, "--port", str(settings.redis_port),
                 "--dir", str(data), *durability, "--protected-mode", "yes", "--daemonize", "no"],
        healthy=lambda: _redis_ok(settings),
        url=settings.redis_url,
        prepare=prepare,
    )


def mlflow_service(settings: Settings) -> Service | None:
    """MLflow's tracking server and registry. With ``mlflow_auth`` (the default) it runs its
    basic-auth app: a request without a valid user is 401. The admin's password reaches it
    through an auth config file of mode 0600, never a command line; every user may read
    (``default_permission = READ``), only the admin writes; ``after_start`` makes the
    read-only user the model servers and the UI log in as."""
    if settings.mlflow_external_uri:
        return None  # an external tracking server: nothing to start
    settings.mlflow_artifacts_dir.mkdir(parents=True, exist_ok=True)
    metrics_dir = settings.metrics_dir / "mlflow"
    auth_config = mlflow_auth_config_path(settings)

    def prepare() -> None:  # stale files of a dead server would be summed into the new one's
        import shutil

        shutil.rmtree(metrics_dir, ignore_errors=True)
        metrics_dir.mkdir(parents=True, exist_ok=True)
        if settings.mlflow_auth:
            write_mlflow_auth_config(settings, auth_config)

    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    if settings.mlflow_auth:  # the key signs the auth app's CSRF tokens; MLflow reads it from here only
        env |= {"MLFLOW_AUTH_CONFIG_PATH": str(auth_config),
                "MLFLOW_FLASK_SERVER_SECRET_KEY": security.mlflow_flask_secret_key(settings)}
    return Service(
        name="mlflow",
        command=[sys.executable, "-m", "mlflow", "server", "--host", settings.host,
                 "--port", str(settings.mlflow_port),
                 *(["--app-name", "basic-auth"] if settings.mlflow_auth else []),
                 "--backend-store-uri", settings.mlflow_backend_store_uri,
                 "--artifacts-destination", str(settings.mlflow_artifacts_dir),
                 "--workers", "1", "--expose-prometheus", str(metrics_dir)],
        healthy=lambda: http_ok(f"{settings.mlflow_tracking_uri}/health"),
        url=settings.mlflow_tracking_uri,
        prepare=prepare,
        env=env,
    )


def mlflow_auth_config_path(settings: Settings):
    return settings.state_dir / "mlflow" / "basic_auth.ini"


def write_mlflow_auth_config(settings: Settings, path) -> None:
    """The basic-auth app's config (mode 0600: it holds the admin's password). MLflow reads it
    with interpolation, hence the doubled %; it creates the admin from it at its first start."""
    import configparser

    password = security.mlflow_admin_password(settings)
    if password != password.strip() or "\n" in password or len(password) < 12:
        raise ValueError("TAXI_MLFLOW_ADMIN_PASSWORD must be one line of at least 12 characters "
                         "without surrounding spaces (MLflow's rule); unset it to have one generated")
    config = configparser.RawConfigParser()
    config["mlflow"] = {k: v.replace("%", "%%") for k, v in {
        "default_permission": "READ",
        "database_uri": settings.mlflow_auth_database_uri,
        "admin_username": settings.mlflow_admin_username,
        "admin_password": password,
        "authorization_function": "mlflow.server.auth:authenticate_request_basic_auth",
        # A password check is a deliberately slow PBKDF2 hash (~0.5 s a request here); cached,
        # once a minute per user. One worker (--workers 1): a password change or deletion
        # through the API clears the entry at once, only direct SQL edits wait out the minute.
        "auth_cache_ttl_seconds": "60",
    }.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        config.write(f)


def ensure_mlflow_reader(settings: Settings) -> None:
    """The read-only user, made by the admin through MLflow's auth REST API, or its password
    set again to the configured one (idempotent). It reads every experiment and model,
    those registered later too (``default_permission = READ``), and may change none."""
    admin = security.mlflow_credentials(settings, security.MLFLOW_ADMIN)
    reader_name, reader_password = security.mlflow_credentials(settings, security.MLFLOW_READER)
    if reader_name == admin[0]:
        raise ValueError("TAXI_MLFLOW_READER_USERNAME must differ from TAXI_MLFLOW_ADMIN_USERNAME "
                         "(the read-only user would be the admin)")
    api = f"{settings.mlflow_tracking_uri}/api/2.0/mlflow/users"
    with httpx.Client(auth=httpx.BasicAuth(*admin), timeout=max(10.0, settings.request_timeout_s)) as c:
        found = c.get(f"{api}/get", params={"username": reader_name})
        if found.status_code == 401:
            raise ValueError(
                f"MLflow refuses the admin '{admin[0]}': its user store (TAXI_MLFLOW_AUTH_DB_URI) "
                "was made with another password. Set "
                "TAXI_MLFLOW_ADMIN_PASSWORD (or <state_dir>/mlflow_admin_password) back to it, or "
                "change it in MLflow (PATCH /api/2.0/mlflow/users/update-password)")
        if found.status_code == 404:
            r = c.post(f"{api}/create", json={"username": reader_name, "password": reader_password})
        elif found.status_code == 200:
            r = c.patch(f"{api}/update-password", json={"username": reader_name, "password": reader_password})
        else:
            r = found
        if r.status_code != 200:  # e.g. a reader password MLflow refuses (under 12 characters)
            raise ValueError(f"MLflow did not set up the read-only user '{reader_name}': "
                             f"{r.status_code} {r.text[:300]}")


def model_server_service(settings: Settings, replica: int = 0) -> Service:
    """One model-server process; replica N listens on ``model_server_port + N`` and hosts
    every served version, like the others."""
    url = f"http://{settings.host}:{settings.model_server_port + replica}"
    return Service(
        name=replica_name(replica),
        command=[sys.executable, "-m", "taxi_mlops.serving.model_server", "--replica", str(replica)],
        healthy=lambda: http_ok(f"{url}/v2/models/{settings.model_name}/ready"),
        url=url,
        env={**settings.as_env(), "TF_CPP_MIN_LOG_LEVEL": "2",
             **security.mlflow_env(settings, security.MLFLOW_READER)},  # it only reads the registry
        details=lambda: _serving_details(settings, url),
        prepare=None if settings.prometheus_external_url else lambda: _scrape_when_started(settings, replica),
    )


def _scrape_when_started(settings: Settings, replica: int) -> None:
    """Give the local Prometheus this replica's target now that it starts (observability/
    prometheus.py: no champion yet, no model server and no target, so no alert)."""
    from taxi_mlops.observability import prometheus

    prometheus.write_model_server_targets(settings, starting=replica_name(replica))


def model_server_services(settings: Settings) -> list[Service]:
    """Every replica (``settings.model_server_replicas``), replica 0 first."""
    return [model_server_service(settings, i) for i in range(settings.model_server_replicas)]


def gateway_name(instance: int) -> str:
    return "gateway" if instance == 0 else f"gateway-{instance}"


def gateway_instance_up(settings: Settings, instance: int | str) -> bool:
    """This instance answers ``/health/live`` on its own Unix socket (``gateway/reuseport.py``):
    a standby takes no connection on the shared port, so the port cannot tell. Its pid comes
    from the supervisor's pid file; no live pid, not up."""
    from taxi_mlops.gateway.reuseport import instance_socket
    from taxi_mlops.pids import live_pid, serving_children

    name = instance if isinstance(instance, str) else gateway_name(instance)
    pid = live_pid(settings.run_dir / f"{name}.pid")
    if pid is None:
        return False
    own = instance_socket(settings.run_dir, pid)
    if not own.exists():
        return False
    try:
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(own)), timeout=PROBE_TIMEOUT_S) as client:
            body = client.get("http://gateway/health/live").json()
    except (httpx.HTTPError, ValueError):
        return False
    if pid not in (body.get("pid"), body.get("parent_pid")):
        return False
    # several workers: up once each is past its warm-up, not when the first one is
    return settings.gateway_workers <= 1 or \
        serving_children(settings.gateway_serving_dir, pid) >= settings.gateway_workers


def gateway_active(settings: Settings) -> int | None:
    """The pid of the gateway process that takes the shared port's connections (the active
    instance; with ``gateway_standby`` off, whichever the kernel picked), None if none answers."""
    body = _port_liveness(settings)
    if not body:
        return None
    return body.get("parent_pid") if settings.gateway_workers > 1 else body.get("pid")


def _port_liveness(settings: Settings) -> dict | None:
    """The body of ``GET /health/live`` on the shared port ({} for an answer that is not a
    200 with JSON); None if nothing answers there."""
    try:
        response = httpx.get(f"{settings.gateway_url}/health/live", timeout=PROBE_TIMEOUT_S)
    except httpx.HTTPError:
        return None
    try:
        return response.json() if response.status_code == 200 else {}
    except ValueError:
        return {}


def _gateway_pids(settings: Settings, *extra: str) -> dict[str, int]:
    """Our gateway instances' live pids by name (``extra``: other instance names too)."""
    from taxi_mlops.pids import live_pid

    names = dict.fromkeys([*(gateway_name(i) for i in range(settings.gateway_instances)), *extra])
    return {n: pid for n in names if (pid := live_pid(settings.run_dir / f"{n}.pid")) is not None}


def _no_stranger_on_gateway_port(settings: Settings, name: str) -> None:
    """SO_REUSEPORT would let this instance share the port with another stack's gateway (same
    user) and split the traffic silently: refuse to start while anything but our own
    instances answers there."""
    from taxi_mlops.stack.process import ServiceStartError

    ours = set(_gateway_pids(settings, name).values())
    for _ in range(8):
        body = _port_liveness(settings)
        if body is None:
            return  # nothing answers: the port is ours to take
        if not ours & {body.get("pid"), body.get("parent_pid")}:
            raise ServiceStartError(name, f"something else already answers at "
                                    f"{settings.gateway_url} (stop it or choose another port in the "
                                    "settings)", settings.logs_dir / f"{name}.log")


def gateway_service(settings: Settings, instance: int = 0, name: str | None = None) -> Service:
    """One gateway process; ``gateway_instances`` of them share the port (SO_REUSEPORT).
    ``name``: another name than the instance's (a second gateway of a test or bench)."""
    name = name or gateway_name(instance)
    return Service(
        name=name,
        command=[sys.executable, "-m", "taxi_mlops.gateway"],
        healthy=lambda: gateway_instance_up(settings, name),
        prepare=lambda: _no_stranger_on_gateway_port(settings, name),
        url=settings.gateway_url,
        env={**settings.as_env(), **security.mlflow_env(settings)},  # promote, rollback: writes
        details=lambda: {"docs": f"{settings.gateway_url}/docs", "role": _gateway_role(settings, name)},
    )


def active_gateway_name(settings: Settings) -> str | None:
    """The name of the instance that takes the shared port's connections, None if none of
    ours answers there."""
    active = gateway_active(settings)
    if active is None:
        return None
    return next((name for name, pid in _gateway_pids(settings).items() if pid == active), None)


def _gateway_role(settings: Settings, name: str) -> str:
    """``active`` (takes the port's connections) or ``standby``, for ``status``; ``sharing``
    when the kernel spreads connections over every instance."""
    if not settings.gateway_standby:
        return "sharing"
    return "active" if active_gateway_name(settings) == name else "standby"


def gateway_services(settings: Settings) -> list[Service]:
    """Every gateway instance, instance 0 (``gateway``) first."""
    return [gateway_service(settings, i) for i in range(settings.gateway_instances)]


def ui_service(settings: Settings) -> Service:
    """The control room (Streamlit, headless): it reads the platform through its APIs only.
    Error details stay off screen (``showErrorDetails none``); the pages name the backend."""
    from pathlib import Path

    from taxi_mlops import ui  # the package only: importing ui.app would run the app

    return Service(
        name="ui",
        command=[sys.executable, "-m", "taxi_mlops.ui.serve", str(Path(ui.__file__).with_name("app.py")),
                 "--server.headless", "true", "--server.address", settings.host,
                 "--server.port", str(settings.ui_port), "--server.fileWatcherType", "none",
                 "--browser.gatherUsageStats", "false", "--client.showErrorDetails", "none",
                 "--client.toolbarMode", "minimal", "--global.developmentMode", "false"],
        healthy=lambda: http_ok(f"{settings.ui_url}/_stcore/health"),
        url=settings.ui_url,
        env={**settings.as_env(), **security.mlflow_env(settings, security.MLFLOW_READER)},
    )


def keeper_service(settings: Settings) -> Service | None:
    """The self-healing loop (``stack/keeper.py``); last to start, first to stop."""
    if not settings.self_heal:
        return None
    from taxi_mlops.stack import keeper

    return Service(
        name=keeper.NAME,
        command=[sys.executable, "-m", "taxi_mlops.stack.keeper"],
        healthy=lambda: keeper.alive(settings),
        url=f"watching {settings.run_dir}",
        env=settings.as_env(),
    )


def _serving_details(settings: Settings, url: str | None = None) -> dict:
    """Model name, serving alias and the alias map the replica serves (its /versions)."""
    url = url or settings.model_server_url
    try:
        meta = httpx.get(f"{url}/v2/models/{settings.model_name}", timeout=PROBE_TIMEOUT_S).json()
        out = {"model": meta.get("name"), "alias": settings.serving_alias}
        listing = httpx.get(f"{url}/v2/models/{settings.model_name}/versions", timeout=PROBE_TIMEOUT_S)
        if listing.status_code == 200:
            out["aliases"] = listing.json().get("aliases", {})
        return out
    except (httpx.HTTPError, ValueError):
        return {}


def champion_exists(settings: Settings) -> bool:
    return models.by_alias(settings.mlflow_tracking_uri, settings.model_name,
                           settings.serving_alias) is not None


def all_services(settings: Settings) -> list[Service]:
    """Every service the local stack runs, in start order (stop in reverse).

    Monitoring first (alert receiver, Alertmanager, Pushgateway, Prometheus: a training run
    pushes its metrics, and every later start is watched); Kafka (unless
    ``KAFKA_BOOTSTRAP_SERVERS`` names an external cluster) before the stream processor, the
    label join and the data-quality worker; the gateway last, once what it calls is up.
    """
    from taxi_mlops.stack.monitoring import monitoring_services
    from taxi_mlops.stack.redis_cluster import redis_services
    from taxi_mlops.stack.streaming import (data_quality_service, kafka_services, label_join_service,
                                            prediction_store_service, processor_service)

    services = [*redis_services(settings), *monitoring_services(settings), *kafka_services(settings),
                mlflow_service(settings),
                processor_service(settings, instance=0), label_join_service(settings),
                prediction_store_service(settings),
                data_quality_service(settings),
                *model_server_services(settings), *gateway_services(settings),
                ui_service(settings), keeper_service(settings)]
    return [s for s in services if s is not None]


def after_start(settings: Settings) -> dict[str, callable]:
    """Idempotent set-up run once a service answers: declared topics, the applied Feast repo
    (after the last Redis process: a Redis Cluster is joined first, ``stack/redis_cluster.py``)."""
    from taxi_mlops.features import store
    from taxi_mlops.stack import redis_cluster
    from taxi_mlops.streaming import topics

    def redis_ready():
        redis_cluster.set_up(settings)
        store.apply(settings)

    redis_step = redis_cluster.node_name(max(0, settings.redis_cluster_nodes - 1))
    hooks = {redis_step: redis_ready}
    kafka_step = redis_step if settings.kafka_bootstrap_override else "kafka"
    previous = hooks.get(kafka_step)

    def ensure_topics():
        if previous:
            previous()
        topics.ensure_topics(settings)  # the settings: their SASL login when kafka_sasl

    hooks[kafka_step] = ensure_topics
    if settings.mlflow_auth and not settings.mlflow_external_uri:
        hooks["mlflow"] = lambda: ensure_mlflow_reader(settings)
    return hooks
