"""One typed settings object for the whole platform.

Every port, URI and path lives here; an environment variable ``TAXI_<FIELD>`` overrides
any field (``TAXI_GATEWAY_PORT=9000``). Components receive a ``Settings`` and never read
the environment themselves, so a test can start a whole stack on other ports by building
one object.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from taxi_mlops import __version__, paths

MODEL_NAME = "chicago-taxi-tips"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TAXI_", extra="ignore", populate_by_name=True)

    host: str = Field("127.0.0.1", description="Interface every server binds to.")
    state_dir: Path = Field(paths.PROJECT_ROOT / ".state", description="Logs, pids, stores.")
    # ---- connect hosts (issue 12, scale-out: manifests/compose.py, manifests/kubernetes.py) ----
    # `host` is the interface our servers bind to; in a container that is 0.0.0.0, which is no
    # address to connect to. These name the peer a client connects to (a compose service, a
    # Kubernetes Service); None: `host`, as on one machine. MLflow, Kafka and Prometheus are
    # named by mlflow_external_uri, KAFKA_BOOTSTRAP_SERVERS and prometheus_external_url.
    redis_host: str | None = Field(None, description="Where clients reach Redis; default: host.")
    model_server_host: str | None = Field(None, description=(
        "Where the gateway reaches the model server(s); default: host."))
    gateway_host: str | None = Field(None, description=(
        "Where the UI, the CLI and the retrain loop reach the gateway; default: host."))
    alertmanager_host: str | None = Field(None, description="Where clients reach Alertmanager; default: host.")
    pushgateway_host: str | None = Field(None, description="Where a pipeline run pushes its metrics; default: host.")
    alert_receiver_host: str | None = Field(None, description=(
        "Where Alertmanager and the CLI reach the alert receiver; default: host."))

    redis_port: int = 6390
    redis_password: str | None = Field(None, description=(
        "Redis's requirepass; default: generated into <state_dir>/redis_password (mode 0600)."))
    # ---- Redis Cluster (issue 12, part 2: stack/redis_cluster.py) ---------------------------
    redis_cluster_nodes: int = Field(0, ge=0, le=16, description=(
        "0: one Redis on redis_port. N >= 3: a Redis Cluster of N masters started by `up`, node i "
        "on redis_port + i (cluster bus: that port + 10000); Feast reads it as redis_cluster."))
    mlflow_port: int = 5050
    model_server_port: int = 8090
    gateway_port: int = 8000
    ui_port: int = Field(8501, description="The control room (Streamlit).")

    mlflow_backend_uri: str | None = Field(
        None, description="MLflow backend store; default sqlite in the state dir. postgresql:// works too."
    )
    # Not MLFLOW_TRACKING_URI: mlflow.set_tracking_uri() writes that variable in-process, which
    # would silently turn "start our server" into "use an external one".
    mlflow_external_uri: str | None = Field(
        None, description="Use an external MLflow server; none is started."
    )
    # ---- MLflow authentication (issue 11, part 5: security.py, stack/services.py) ----------
    mlflow_auth: bool = Field(True, description=(
        "Start MLflow with its basic-auth app: a request without a valid user is 401. Our "
        "services log in as the admin (writers) or the read-only user (readers)."))
    mlflow_admin_username: str = Field("admin", pattern=r"^[A-Za-z0-9._@-]+$", description=(
        "MLflow's admin user (created at the first start); for an external MLflow, its writer."))
    mlflow_admin_password: str | None = Field(None, description=(
        "Its password; default: generated into <state_dir>/mlflow_admin_password (mode 0600). "
        "For an external MLflow: none sent unless set."))
    mlflow_reader_username: str = Field("reader", pattern=r"^[A-Za-z0-9._@-]+$", description=(
        "The read-only MLflow user of the model servers, the UI and the stream workers."))
    mlflow_reader_password: str | None = Field(None, description=(
        "Its password; default: generated into <state_dir>/mlflow_reader_password (mode 0600). "
        "For an external MLflow: the admin's credentials are used unless set."))
    mlflow_auth_db_uri: str | None = Field(None, description=(
        "The basic-auth app's user store; default: the backend store when it is PostgreSQL "
        "(its tables are distinct), else sqlite in the state dir."))

    kafka_port: int = 9092
    kafka_controller_port: int = 9093
    kafka_bootstrap_override: str | None = Field(
        None, alias="KAFKA_BOOTSTRAP_SERVERS",
        description="Use an external Kafka cluster; no broker is started.",
    )
    # ---- local Kafka cluster (issue 12, part 1: streaming/broker.py) -------------------------
    kafka_nodes: int = Field(1, ge=1, le=9, description=(
        "KRaft nodes (each broker and controller) started by `up` on this machine; node N "
        "listens on kafka_port, kafka_controller_port and kafka_metrics_port + N * "
        "kafka_node_port_step. Fixed when the data is first formatted."))
    kafka_node_port_step: int = Field(100, ge=1, description=(
        "Port distance between Kafka nodes (the default ports 9092-9096 sit one apart)."))
    kafka_sasl: bool = Field(False, description=(
        "The local brokers' client and inter-broker listener is SASL_PLAINTEXT with SCRAM-SHA-512 "
        "(PLAINTEXT otherwise); our clients log in as kafka_sasl_username. Fixed when the data is "
        "first formatted (the credential is created then)."))
    kafka_sasl_username: str = Field("taxi-mlops", pattern=r"^[A-Za-z0-9._-]+$",
                                     description="The SCRAM user of the brokers and our clients.")
    kafka_password: str | None = Field(None, description=(
        "The SCRAM user's password; default: generated into <state_dir>/kafka_password (mode 0600)."))

    # ---- observability ------------------------------------------------------------------
    prometheus_port: int = 9090
    prometheus_external_url: str | None = Field(
        None, description="Use an external Prometheus (it must scrape our targets); none is started.")
    pushgateway_port: int = 9091
    alertmanager_port: int = 9094
    alert_receiver_port: int = 9095
    kafka_metrics_port: int = Field(9096, description="The broker's JMX exporter agent.")
    processor_metrics_port: int = Field(9097, description="Stream processor instance N uses this + N.")
    label_join_metrics_port: int = 9107
    quality_metrics_port: int = Field(9108, description="The data-quality worker's /metrics.")
    prediction_store_metrics_port: int = Field(9109, description="The prediction-store worker's /metrics.")
    prediction_retention_days: float = Field(
        30.0, ge=0, description="The prediction store deletes predictions older than this; 0 keeps everything.")
    prediction_prune_interval_s: float = Field(
        600.0, gt=0, description="How often the prediction-store worker prunes (and once at start).")
    quality_window_events: int = Field(1000, description="Data-quality summary every N events ...")
    quality_window_s: float = Field(60.0, description="... or every this many seconds, whichever first.")
    quality_reference_refresh_s: float = Field(
        60.0, description="How often the data-quality worker checks whether the champion changed.")
    # Feature drift (streaming/drift.py), scored at the data-quality windows. Measured on this
    # data set (bench/drift_bench.py, README "Drift"): shuffled clean 500-trip windows reach
    # JS 0.107 / L-inf 0.073, a time-ordered replay JS 0.21 (2013's zero-mile trips), fares x1.5
    # JS >= 0.336.
    drift_threshold_js: float = Field(
        0.25, description="Numeric feature drifts above this Jensen-Shannon distance (base 2) to training.")
    drift_threshold_shape_js: float = Field(
        0.18, description="A numeric feature with a heavy value (0 miles) drifts above this Jensen-Shannon "
                          "distance over the rest of its distribution (the shape off the point masses).")
    drift_threshold_linf: float = Field(
        0.15, description="Categorical feature drifts above this L-infinity distance of category shares.")
    drift_threshold_missing: float = Field(
        0.1, description="Any feature drifts when its missing rate differs from training by more than this.")
    drift_min_events: int = Field(
        500, description="Drift is scored once this many trips are collected (windows carry over until then).")
    drift_report_only_features: str = Field(
        "trip_start_hour,trip_start_day,trip_start_month",
        description="Comma-separated; scored and reported, never drift: a live window's clock sets them.")
    scrape_interval_s: float = Field(5.0, description="Prometheus scrape and rule evaluation interval.")
    alert_group_wait_s: float = Field(5.0, description="Alertmanager group_wait and group_interval.")
    metrics_enabled: bool = Field(True, description="Gateway and model-server metrics (off only to measure their cost).")
    gateway_workers: int = Field(1, description="Gateway worker processes (metrics stay correct across them).")
    feature_store_fallback: bool = Field(True, description=(
        "When the online store does not answer, /predict answers with the last prior row read "
        "(defaults before any read), marked degraded, instead of 503."))
    feature_store_retry_s: float = Field(2.0, gt=0, description=(
        "After a failed online read, requests skip the store this long; then one request tries it."))
    prediction_log_spool: bool = Field(True, description=(
        "Append each prediction log to <state_dir>/spool/predictions before producing it, so a "
        "killed gateway's unsent logs are sent by the next one to start."))
    prediction_log_linger_ms: int = Field(100, ge=0, le=5000, description=(
        "How long the gateway's Kafka producer gathers prediction logs into one request. No "
        "request waits for it (the log is asynchronous); 100 ms instead of 20 cut the broker's "
        "CPU per prediction by a third at 300 req/s (README, \"Serving performance\")."))
    rollout_db_uri: str | None = Field(None, description=(
        "postgresql://... for the rollout store (experiments, routing) when gateways do not "
        "share a disk; default: SQLite in <state_dir>/rollout. A secret: never logged."))
    predictions_db_uri: str | None = Field(None, description=(
        "postgresql://... for the prediction store (lineage) when the gateway and the "
        "prediction-store worker do not share a disk; default: SQLite in <state_dir>/predictions."))
    gateway_instances: int = Field(2, ge=1, le=16, description=(
        "Independent gateway processes sharing the port (SO_REUSEPORT), each supervised on its "
        "own: one that crashes leaves the others answering while the keeper restarts it."))
    gateway_standby: bool = Field(True, description=(
        "The first gateway instance to listen takes every connection and the others wait warm, "
        "taking over when it dies (gateway/reuseport.py); off: the kernel spreads connections "
        "over all of them (for machines with cores to spare)."))
    log_level: str = "INFO"

    model_name: str = MODEL_NAME
    serving_alias: str = "champion"

    # ---- serving throughput (issue 11 part 2: serving/batching.py) --------------------------
    model_batch_max_rows: int = Field(256, ge=1, description=(
        "Micro-batching: at most this many rows per model call (concurrent requests share one)."))
    model_batch_wait_ms: float = Field(0.0, ge=0, le=50, description=(
        "Micro-batching: under load, wait up to this long to gather more rows (0: only what "
        "queued during the previous call)."))
    model_batch_inline_rows: int = Field(16, ge=0, le=256, description=(
        "A lone request of at most this many rows is predicted on the event loop, without the "
        "hand-over to the model's thread (0: always the thread)."))

    gateway_coalesce_max: int = Field(32, ge=1, le=64, description=(
        "Concurrent /predicts share one online read and one model call per target, at most "
        "this many per call (no timer: a lone request goes at once); 1 turns sharing off."))
    gateway_coalesce_in_flight: int = Field(1, ge=1, le=16, description=(
        "Shared calls per target (and feature reads) running at once; below it a request is "
        "sent at once, at it requests queue for the next call."))

    # ---- serving and rollout (issue 7) ------------------------------------------------------
    model_server_replicas: int = Field(1, ge=1, le=16, description=(
        "Model-server processes; replica N listens on model_server_port + N. Each hosts every "
        "served version; the gateway balances them by least outstanding requests."))
    serving_versions: str = Field("", description=(
        "Versions served besides those holding an alias, comma-separated (pinned)."))
    registry_poll_s: float = Field(2.0, gt=0, description=(
        "How often the model server reads the registry's aliases (hot swap on a move)."))
    unload_grace_s: float = Field(30.0, ge=0, description=(
        "A version that lost its last alias stays loaded this long (in-flight routes drain)."))
    routing_refresh_s: float = Field(1.0, gt=0, description=(
        "How often a gateway worker rereads the routing policy and experiments."))
    admin_token: str | None = Field(None, description=(
        "Bearer token of every state-changing endpoint; default: the one generated into "
        "<state_dir>/admin_token at the first `up`."))
    data_csv: Path = paths.PROJECT_ROOT / "data" / "chicago_taxi" / "data.csv"

    # ---- closed-loop retraining (issue 8, taxi_mlops.retrain) -----------------------------
    retrain_alerts: str = Field(
        "TaxiFeatureDrift,TaxiLiveAccuracyBelowEval,TaxiPredictionDrift",
        description="Comma-separated alertnames whose firing starts a retrain (empty: none).")
    retrain_cooldown_s: float = Field(
        3600.0, ge=0, description="No retrain starts within this long of the last one's start.")
    retrain_max_per_day: int = Field(4, ge=0, description="At most this many retrains in any 24 hours.")
    retrain_interval_s: float | None = Field(
        None, gt=0, description="Scheduled retraining every this many seconds (`python -m taxi_mlops.retrain --every`).")

    # ---- self-healing (issue 11, stack/keeper.py) ----------------------------------------------
    self_heal: bool = Field(True, description="`up` starts the keeper, which restarts crashed services.")
    restart_backoff_s: float = Field(1.0, gt=0, description="Delay before restarting after a first crash; doubles per crash.")
    restart_backoff_max_s: float = Field(30.0, gt=0, description="The longest delay between restarts.")
    restart_max_crashes: int = Field(5, ge=1, description="This many crashes within restart_window_s: failed, not restarted.")
    restart_window_s: float = Field(300.0, gt=0, description="The window restart_max_crashes counts in.")

    pipeline_python: Path | None = Field(None, description="Python of the TFX virtual environment.")

    # ---- pipeline runners and KFP (issue 12, parts 3-4: pipeline/runners.py, pipeline/kfp.py) ----
    beam_runner: Literal["direct-in-process", "direct-multi-process", "dask", "portable"] = Field(
        "direct-in-process", description=(
            "Where the pipeline's Beam steps run: in the pipeline process, DirectRunner worker "
            "processes, a local Dask cluster, or a portable runner named in beam_extra_args."))
    beam_workers: int = Field(2, ge=1, le=64, description=(
        "direct-multi-process: --direct_num_workers; dask: worker processes of the local cluster."))
    beam_extra_args: str = Field("", description=(
        "Extra Beam pipeline args, shell-quoted (e.g. '--runner=FlinkRunner --flink_master=host:8081' "
        "with beam_runner=portable)."))
    kfp_image: str = Field(f"taxi-mlops-pipeline:{__version__}", description=(
        "Container image of every step in the compiled KFP pipeline (deploy/docker/pipeline.Dockerfile)."))
    kfp_pipeline_root: str = Field("/mnt/taxi/pipeline-root", description=(
        "KFP pipeline root (gs://bucket/path or a PVC mount); overridable when the run is submitted."))
    kfp_platform_python: str = Field("/opt/platform/bin/python", description=(
        "KFP: the platform environment's interpreter inside kfp_image, for FeastPusher and the "
        "calibration plot (deploy/docker/pipeline.Dockerfile builds it there)."))
    kfp_data_root: str = Field("/mnt/taxi/data", description=(
        "KFP: folder holding input/ (data.csv + data_version.json) and chicago_taxi/data.csv."))
    request_timeout_s: float = Field(2.0, description="Timeout of every gateway call to a dependency.")
    startup_timeout_s: float = 120.0

    # ---- derived locations -------------------------------------------------------------
    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def run_dir(self) -> Path:
        return self.state_dir / "run"

    @property
    def gateway_serving_dir(self) -> Path:
        """``<master pid>/<worker pid>`` markers of gateway workers past start-up."""
        return self.run_dir / "gateway-serving"

    @property
    def pipeline_root(self) -> Path:
        return self.state_dir / "pipeline"

    @property
    def mlmd_path(self) -> Path:
        return self.pipeline_root / "metadata.sqlite"

    @property
    def serving_model_dir(self) -> Path:
        """Where the Pusher copies blessed models (a TFX artifact, not the serving source)."""
        return self.pipeline_root / "serving_model"

    @property
    def feast_repo(self) -> Path:
        return paths.FEATURE_REPO

    @property
    def feast_data_dir(self) -> Path:
        return self.state_dir / "feast"

    @property
    def redis_url(self) -> str:
        return f"redis://{self.redis_host or self.host}:{self.redis_port}/0"

    @property
    def redis_connection_string(self) -> str:
        """Feast's Redis connection format (host:port,db=N,password=...): a secret, never logged.
        A cluster lists every node (any one bootstraps the client) and has no ``db``."""
        from taxi_mlops import security

        if self.redis_cluster_nodes:
            nodes = ",".join(f"{self.redis_host or self.host}:{port}" for port in self.redis_node_ports)
            return (f"{nodes},password={security.redis_password(self)},"
                    "socket_timeout=2,socket_connect_timeout=2")
        return (f"{self.redis_host or self.host}:{self.redis_port},db=0,password={security.redis_password(self)},"
                "socket_timeout=2,socket_connect_timeout=2")

    @property
    def redis_node_ports(self) -> list[int]:
        """The port of every Redis process ``up`` starts: one, or a cluster's masters in a row."""
        return [self.redis_port + i for i in range(max(1, self.redis_cluster_nodes))]

    @model_validator(mode="after")
    def _redis_cluster_shape(self) -> "Settings":
        """Too few masters or a node port on another service's port fails here, not at start."""
        if self.redis_cluster_nodes in (1, 2):
            raise ValueError(f"redis_cluster_nodes={self.redis_cluster_nodes}: a Redis Cluster needs at "
                             "least 3 masters; use 0 for one Redis or 3 or more")
        if self.redis_cluster_nodes:
            others = {getattr(self, n) for n in type(self).model_fields
                      if n.endswith("_port") and n != "redis_port"}
            clash = sorted(set(self.redis_node_ports[1:]) & others)
            if clash:
                raise ValueError(f"redis_cluster_nodes={self.redis_cluster_nodes}: Redis node ports {clash} "
                                 "collide with other ports; set TAXI_REDIS_PORT elsewhere")
        return self

    @property
    def mlflow_tracking_uri(self) -> str:
        return self.mlflow_external_uri or f"http://{self.host}:{self.mlflow_port}"

    @property
    def mlflow_backend_store_uri(self) -> str:
        return self.mlflow_backend_uri or f"sqlite:///{self.state_dir / 'mlflow' / 'mlflow.db'}"

    @property
    def mlflow_artifacts_dir(self) -> Path:
        return self.state_dir / "mlflow" / "artifacts"

    @property
    def mlflow_auth_database_uri(self) -> str:
        """Users beside the registry they guard: a PostgreSQL backend holds them too (one
        database to back up, shared by every server on it); else sqlite in the state dir."""
        if self.mlflow_auth_db_uri:
            return self.mlflow_auth_db_uri
        if self.mlflow_backend_uri and self.mlflow_backend_uri.startswith("postgresql"):
            return self.mlflow_backend_uri
        return f"sqlite:///{self.state_dir / 'mlflow' / 'basic_auth.db'}"

    @property
    def kafka_bootstrap_servers(self) -> str:
        """Every local node, so a client bootstraps while any one of them is up."""
        return self.kafka_bootstrap_override or ",".join(
            f"{self.host}:{self.kafka_node_ports(i)[0]}" for i in range(self.kafka_nodes))

    def kafka_node_ports(self, node: int) -> tuple[int, int, int]:
        """(broker, controller, JMX exporter) ports of local Kafka node ``node``; node 0's are
        the configured ones."""
        step = node * self.kafka_node_port_step
        return (self.kafka_port + step, self.kafka_controller_port + step, self.kafka_metrics_port + step)

    def kafka_node_data_dir(self, node: int) -> Path:
        """Node 0 keeps the single broker's folder, so a 1-node stack is what it always was."""
        return self.kafka_data_dir if node == 0 else self.state_dir / f"kafka-{node}"

    @model_validator(mode="after")
    def _kafka_node_ports_distinct(self) -> "Settings":
        """A node port landing on another port fails here, not as a broker that will not bind."""
        if self.kafka_nodes > 1 and not self.kafka_bootstrap_override:
            ports = [p for i in range(self.kafka_nodes) for p in self.kafka_node_ports(i)]
            others = {getattr(self, n) for n in type(self).model_fields
                      if n.endswith("_port") and not n.startswith("kafka_")}
            clash = sorted({p for p in ports if ports.count(p) > 1 or p in others})
            if clash:
                raise ValueError(f"kafka_nodes={self.kafka_nodes}: node ports {clash} collide with "
                                 "other ports; set TAXI_KAFKA_NODE_PORT_STEP to a larger step")
        return self

    @property
    def kafka_data_dir(self) -> Path:
        return self.state_dir / "kafka"

    @property
    def model_server_url(self) -> str:
        return f"http://{self.model_server_host or self.host}:{self.model_server_port}"

    @property
    def model_server_urls(self) -> list[str]:
        """One URL per model-server replica (``model_server_replicas``)."""
        return [f"http://{self.model_server_host or self.host}:{self.model_server_port + i}"
                for i in range(self.model_server_replicas)]

    @property
    def pinned_versions(self) -> list[str]:
        return [v.strip() for v in self.serving_versions.split(",") if v.strip()]

    @property
    def retrain_alert_names(self) -> list[str]:
        """``retrain_alerts`` parsed: the alertnames whose firing starts a retrain."""
        return [a.strip() for a in self.retrain_alerts.split(",") if a.strip()]

    @property
    def admin_token_file(self) -> Path:
        return self.state_dir / "admin_token"

    @property
    def predictions_db(self) -> Path:
        """Every logged prediction and label (SQLite, WAL: the prediction-store worker writes,
        gateway workers read; ``lineage/predictions.py``)."""
        return self.state_dir / "predictions" / "predictions.sqlite"

    @property
    def predictions_location(self) -> Path | str:
        """``predictions_db_uri`` (PostgreSQL, shared by pods), else the SQLite file."""
        return self.predictions_db_uri or self.predictions_db

    @property
    def predictions_store_name(self) -> str:
        """The store for messages: the URI carries a password, so it is never shown."""
        return "PostgreSQL (TAXI_PREDICTIONS_DB_URI)" if self.predictions_db_uri else str(self.predictions_db)

    @property
    def rollout_db(self) -> Path:
        """Experiments, their observations and the routing policy (SQLite: durable, shared
        by every gateway worker and the label join on this machine)."""
        return self.state_dir / "rollout" / "rollout.sqlite"

    @property
    def rollout_location(self) -> Path | str:
        """Where the rollout store lives: ``rollout_db_uri`` (PostgreSQL, shared by pods), else
        the SQLite file ``rollout_db``."""
        return self.rollout_db_uri or self.rollout_db

    @property
    def rollout_store_name(self) -> str:
        """The store for messages: the URI carries a password, so it is never shown."""
        return "PostgreSQL (TAXI_ROLLOUT_DB_URI)" if self.rollout_db_uri else str(self.rollout_db)

    @property
    def gateway_url(self) -> str:
        return f"http://{self.gateway_host or self.host}:{self.gateway_port}"

    @property
    def ui_url(self) -> str:
        return f"http://{self.host}:{self.ui_port}"

    @property
    def prediction_spool_dir(self) -> Path:
        """Prediction logs not yet acknowledged by Kafka, per gateway process (``streaming/spool.py``)."""
        return self.state_dir / "spool" / "predictions"

    @property
    def metrics_dir(self) -> Path:
        """Per-component folders for prometheus_client's multiprocess mode."""
        return self.state_dir / "metrics"

    @property
    def prometheus_url(self) -> str:
        return self.prometheus_external_url or f"http://{self.host}:{self.prometheus_port}"

    @property
    def alertmanager_url(self) -> str:
        return f"http://{self.alertmanager_host or self.host}:{self.alertmanager_port}"

    @property
    def pushgateway_url(self) -> str:
        return f"http://{self.pushgateway_host or self.host}:{self.pushgateway_port}"

    @property
    def alert_receiver_url(self) -> str:
        return f"http://{self.alert_receiver_host or self.host}:{self.alert_receiver_port}"

    def feast_env(self) -> dict[str, str]:
        """Variables that ``feature_store.yaml`` substitutes, for the SDK and the ``feast`` CLI."""
        return {
            "TAXI_FEAST_REGISTRY": str(self.feast_data_dir / "registry.db"),
            "TAXI_FEAST_REDIS": self.redis_connection_string,
            "TAXI_FEAST_REDIS_TYPE": "redis_cluster" if self.redis_cluster_nodes else "redis",
            "TAXI_FEAST_DATA": str(self.feast_data_dir),
        }

    def as_env(self) -> dict[str, str]:
        """These settings as the environment of a child process (which rebuilds ``Settings``)."""
        env = {}
        for name, info in type(self).model_fields.items():
            value = getattr(self, name)
            if value is None:
                continue
            key = info.alias if info.alias else f"TAXI_{name.upper()}"
            env[key] = str(value)
        return env

    def resolved_pipeline_python(self) -> Path:
        from taxi_mlops.pipeline_env import find_pipeline_python

        return self.pipeline_python or find_pipeline_python()


def get_settings(**overrides) -> Settings:
    return Settings(**overrides)
