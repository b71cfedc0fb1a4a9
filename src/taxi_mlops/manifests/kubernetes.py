"""The Kubernetes base: every document as a dict, grouped by file (kustomize ``resources``).

Facts come from their owners: ports and names from ``Settings``, topics from
``streaming/topics.py``, alert rules from ``deploy/prometheus/rules``, dashboards from
``deploy/grafana/dashboards``. Secrets (Redis and PostgreSQL passwords, the admin token,
MLflow's users: ``SECRET_KEYS``) are read from the Secret ``taxi-secrets``, which is created
out of band and never committed. Containers bind on 0.0.0.0 and reach each peer by its Service
name (``peers``: Settings' ``*_host`` fields). ``redis_cluster_nodes`` renders a Redis Cluster.
"""

from __future__ import annotations

import json

import yaml

from taxi_mlops import security
from taxi_mlops.manifests import common
from taxi_mlops.settings import Settings
from taxi_mlops.streaming import topics as topic_defs

KAFKA_CLUSTER = "taxi-kafka"
KAFKA_VERSION = "4.1.0"
LABEL = "app.kubernetes.io/name"
JOB_LABEL = "taxi-mlops/job"  # the Prometheus job our rules select on (ServiceMonitor jobLabel)


def _secret(key: str) -> dict:
    return {"valueFrom": {"secretKeyRef": {"name": common.SECRET, "key": key}}}


# What the cluster must provide besides these manifests: the kube-prometheus-stack's operator
# makes these Services for its Prometheus and Alertmanager (ServiceMonitors: release=prometheus).
MONITORING_SERVICES = {"prometheus-operated": 9090, "alertmanager-operated": 9093}
PUSHGATEWAY_PORT = 9091
PREDICTOR_PORT = 8080  # the model server's container port in a KServe predictor
KNATIVE_PORT = 80  # where Knative serves a predictor (Serverless mode)
SERVED = "taxi-tips"  # the InferenceService the gateway calls (its canary split included)
# Keys of the Secret taxi-secrets (created out of band, never committed).
SECRET_KEYS = ("redis-password", "postgres-password", "admin-token", "feast-redis",
               "mlflow-admin-username", "mlflow-admin-password", "mlflow-reader-password")


def predictor_host(isvc: str) -> str:
    """A KServe predictor's cluster-local URL host (Knative's documented form,
    ``<name>.<namespace>.svc.cluster.local``; the ingress routes by it). The namespace is the
    overlay's: it comes in through the downward API (``POD_NAMESPACE``)."""
    return f"{isvc}-predictor.$(POD_NAMESPACE).svc.cluster.local"


def peers(settings: Settings) -> list[dict]:
    """Bind everywhere (TAXI_HOST), connect to each peer by its Service name: ``host`` is
    0.0.0.0 here, no address to connect to (Settings' ``*_host`` fields)."""
    s = settings
    pairs = [("TAXI_HOST", "0.0.0.0"), ("TAXI_STATE_DIR", common.STATE_IN_CONTAINER),
             ("TAXI_MLFLOW_EXTERNAL_URI", f"http://mlflow:{s.mlflow_port}"),
             ("KAFKA_BOOTSTRAP_SERVERS", f"{KAFKA_CLUSTER}-kafka-bootstrap:9092"),
             ("TAXI_PROMETHEUS_EXTERNAL_URL", f"http://prometheus-operated:{MONITORING_SERVICES['prometheus-operated']}"),
             ("TAXI_REDIS_HOST", "redis"), ("TAXI_REDIS_PORT", str(s.redis_port)),
             *([("TAXI_REDIS_CLUSTER_NODES", str(s.redis_cluster_nodes))] if s.redis_cluster_nodes else []),
             ("TAXI_MODEL_SERVER_HOST", predictor_host(SERVED)), ("TAXI_MODEL_SERVER_PORT", str(KNATIVE_PORT)),
             ("TAXI_GATEWAY_HOST", "gateway"), ("TAXI_GATEWAY_PORT", str(s.gateway_port)),
             ("TAXI_ALERTMANAGER_HOST", "alertmanager-operated"),
             ("TAXI_ALERTMANAGER_PORT", str(MONITORING_SERVICES["alertmanager-operated"])),
             ("TAXI_PUSHGATEWAY_HOST", "pushgateway"), ("TAXI_PUSHGATEWAY_PORT", str(PUSHGATEWAY_PORT)),
             ("TAXI_ALERT_RECEIVER_HOST", "alert-receiver"), ("TAXI_ALERT_RECEIVER_PORT", str(s.alert_receiver_port)),
             ("TAXI_MODEL_NAME", s.model_name)]
    return [{"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            *({"name": k, "value": v} for k, v in pairs)]


def mlflow_login(settings: Settings, role: str | None) -> list[dict]:
    """MLflow's login for a service, as ``stack/services.py`` gives it locally: writers the
    admin, readers the read-only user; the password from the Secret. Both as Settings
    (TAXI_MLFLOW_*: our raw REST calls) and as the mlflow library's variables."""
    if role is None:
        return []
    admin = role == security.MLFLOW_ADMIN
    name = settings.mlflow_admin_username if admin else settings.mlflow_reader_username
    key = "mlflow-admin-password" if admin else "mlflow-reader-password"
    field = "TAXI_MLFLOW_ADMIN" if admin else "TAXI_MLFLOW_READER"
    return [{"name": f"{field}_USERNAME", "value": name}, {"name": f"{field}_PASSWORD", **_secret(key)},
            {"name": "MLFLOW_TRACKING_USERNAME", "value": name}, {"name": "MLFLOW_TRACKING_PASSWORD", **_secret(key)}]


def platform_env(settings: Settings, mlflow_role: str | None = None) -> list[dict]:
    """Our Settings as seen inside the cluster: the peers, the Redis password, the admin
    token, and the MLflow login of ``mlflow_role`` (None: none)."""
    return [*peers(settings),
            {"name": "TAXI_REDIS_PASSWORD", **_secret("redis-password")},
            {"name": "TAXI_ADMIN_TOKEN", **_secret("admin-token")},
            *mlflow_login(settings, mlflow_role)]


def _resources(cpu: str, memory: str, cpu_limit: str, memory_limit: str) -> dict:
    return {"requests": {"cpu": cpu, "memory": memory}, "limits": {"cpu": cpu_limit, "memory": memory_limit}}


def _security() -> tuple[dict, dict]:
    """Pod and container security contexts: non-root, no privilege escalation, no capabilities."""
    pod = {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10001,
           "seccompProfile": {"type": "RuntimeDefault"}}
    container = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                 "capabilities": {"drop": ["ALL"]}}
    return pod, container


def _probe(path: str, port: int, period: int = 10) -> dict:
    return {"httpGet": {"path": path, "port": port}, "periodSeconds": period, "timeoutSeconds": 2,
            "failureThreshold": 3}


def _service(name: str, port: int, job: str | None = None, port_name: str = "http") -> dict:
    labels = {LABEL: name, **({JOB_LABEL: job} if job else {})}
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "labels": labels},
            "spec": {"selector": {LABEL: name}, "ports": [{"name": port_name, "port": port, "targetPort": port}]}}


def _deployment(settings: Settings, name: str, command: list[str], port: int, ready: str, live: str,
                resources: dict, replicas: int = 1, mlflow_role: str | None = None) -> dict:
    pod_sc, c_sc = _security()
    container = {
        "name": name, "image": common.PLATFORM_IMAGE, "command": command,
        "env": platform_env(settings, mlflow_role), "ports": [{"name": "http", "containerPort": port}],
        "readinessProbe": _probe(ready, port), "livenessProbe": {**_probe(live, port, 20), "initialDelaySeconds": 30},
        "resources": resources, "securityContext": c_sc,
        "volumeMounts": [{"name": "state", "mountPath": common.STATE_IN_CONTAINER},
                         {"name": "tmp", "mountPath": "/tmp"}],
    }
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "labels": {LABEL: name}},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {LABEL: name}},
                     "template": {"metadata": {"labels": {LABEL: name}},
                                  "spec": {"securityContext": pod_sc, "containers": [container],
                                           "volumes": [{"name": "state", "emptyDir": {}},
                                                       {"name": "tmp", "emptyDir": {}}]}}}}


def platform(settings: Settings) -> list[dict]:
    """Gateway, stream processor, label join, data quality, alert receiver and UI: Deployment +
    Service each, each with the MLflow login ``stack/services.py`` gives it locally."""
    py = ["python", "-m"]
    small = _resources("100m", "256Mi", "1", "1Gi")
    specs = [
        # Ready and live on /health/live (the process serves; it listens only once warm): with
        # Redis down /health is 503 but /predict still answers degraded, so readiness on it
        # would pull every gateway pod out of the Service at once.
        ("gateway", py + ["taxi_mlops.gateway"], settings.gateway_port, "/health/live", "/health/live",
         _resources("250m", "512Mi", "2", "2Gi"), "gateway", security.MLFLOW_ADMIN),  # promote, rollback
        ("stream-processor", py + ["taxi_mlops.streaming.processor", "--instance", "0"],
         settings.processor_metrics_port, "/metrics", "/metrics", small, "stream_processor", None),
        # The admin: an experiment's sequential test decided here promotes or rolls back.
        ("label-join", py + ["taxi_mlops.streaming.label_join"], settings.label_join_metrics_port,
         "/metrics", "/metrics", small, "label_join", security.MLFLOW_ADMIN),
        ("data-quality", py + ["taxi_mlops.streaming.quality"], settings.quality_metrics_port,
         "/metrics", "/metrics", small, "data_quality", security.MLFLOW_READER),
        # Predictions and labels into the store GET /predictions/{id} reads (PostgreSQL here).
        ("prediction-store", py + ["taxi_mlops.lineage"], settings.prediction_store_metrics_port,
         "/metrics", "/metrics", small, "prediction_store", None),
        # Alertmanager's webhook target; the admin: a retrain it starts registers a model.
        ("alert-receiver", py + ["taxi_mlops.observability.receiver"], settings.alert_receiver_port,
         "/health", "/health", small, "alert_receiver", security.MLFLOW_ADMIN),
        ("ui", py + ["streamlit", "run", "/app/src/taxi_mlops/ui/app.py", "--server.headless", "true",
                     "--server.address", "0.0.0.0", "--server.port", str(settings.ui_port),
                     "--browser.gatherUsageStats", "false", "--client.showErrorDetails", "none"],
         settings.ui_port, "/_stcore/health", "/_stcore/health", small, None, security.MLFLOW_READER),
    ]
    docs = []
    for name, command, port, ready, live, res, job, role in specs:
        deployment = _deployment(settings, name, command, port, ready, live, res, mlflow_role=role)
        env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        if name in ROLLOUT_STORE_USERS or name in PREDICTION_STORE_USERS:
            env += [{"name": "STORE_DB_PASSWORD", **_secret("postgres-password")}]
        if name in ROLLOUT_STORE_USERS:
            env += [{"name": "TAXI_ROLLOUT_DB_URI", "value": STORE_URI}]
        if name in PREDICTION_STORE_USERS:
            env += [{"name": "TAXI_PREDICTIONS_DB_URI", "value": STORE_URI}]
        docs += [deployment, _service(name, port, job)]
    return docs


# Pods share no disk: the rollout store (experiments, routing) and the prediction store
# (lineage) go to PostgreSQL, each in a schema of its own in MLflow's database
# (rollout/store.py, lineage/predictions.py), for every process that reads or writes them.
ROLLOUT_STORE_USERS = ("gateway", "label-join", "alert-receiver")
PREDICTION_STORE_USERS = ("gateway", "prediction-store")
# Built by the kubelet from the Secret's password ($(VAR) of an earlier entry), never written
# into the manifest.
STORE_URI = "postgresql://mlflow:$(STORE_DB_PASSWORD)@postgres:5432/mlflow"


def _predictor(settings: Settings, alias: str, canary: int | None) -> dict:
    """A custom predictor running our KServe model server on our image; it loads the version
    holding ``alias`` from the MLflow registry (the same code as the local stack)."""
    _, c_sc = _security()
    env = [e for e in platform_env(settings, security.MLFLOW_READER)  # it only reads the registry
           if e["name"] not in ("TAXI_ADMIN_TOKEN", "TAXI_MODEL_SERVER_PORT")]
    env += [{"name": "TAXI_MODEL_SERVER_PORT", "value": str(PREDICTOR_PORT)},
            {"name": "TAXI_SERVING_ALIAS", "value": alias}]
    predictor = {
        "minReplicas": 1, "maxReplicas": 3,
        "containers": [{
            "name": "kserve-container", "image": common.PLATFORM_IMAGE,
            "command": ["python", "-m", "taxi_mlops.serving.model_server"], "env": env,
            "ports": [{"containerPort": PREDICTOR_PORT, "protocol": "TCP"}],
            "readinessProbe": _probe(f"/v2/models/{settings.model_name}/ready", PREDICTOR_PORT),
            "livenessProbe": {**_probe("/v2/health/live", PREDICTOR_PORT, 20), "initialDelaySeconds": 30},
            "resources": _resources("500m", "1Gi", "2", "4Gi"), "securityContext": c_sc}],
    }
    if canary is not None:
        predictor = {"canaryTrafficPercent": canary, **predictor}
    return predictor


def serving(settings: Settings) -> list[dict]:
    """``taxi-tips``: the champion, with ``canaryTrafficPercent`` for the next revision (roll the
    challenger out by changing its alias to ``challenger``: the new revision gets 10%);
    ``taxi-tips-challenger`` and the InferenceGraph splitter for an A/B test of both."""
    mode = {"serving.kserve.io/deploymentMode": "Serverless"}  # canary traffic needs Knative revisions
    isvc = [{"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
             "metadata": {"name": name, "annotations": mode, "labels": {LABEL: name}},
             "spec": {"predictor": _predictor(settings, alias, canary)}}
            for name, alias, canary in ((SERVED, "champion", 10), (f"{SERVED}-challenger", "challenger", None))]
    graph = {"apiVersion": "serving.kserve.io/v1alpha1", "kind": "InferenceGraph",
             "metadata": {"name": "taxi-tips-ab"},
             "spec": {"nodes": {"root": {"routerType": "Splitter", "steps": [
                 {"serviceName": "taxi-tips", "name": "champion", "weight": 50},
                 {"serviceName": "taxi-tips-challenger", "name": "challenger", "weight": 50}]}}}}
    return isvc + [graph]


def kafka(settings: Settings) -> list[dict]:
    """Strimzi, KRaft: one node pool with the controller and broker roles."""
    cluster = {"strimzi.io/cluster": KAFKA_CLUSTER}
    return [
        {"apiVersion": "kafka.strimzi.io/v1", "kind": "KafkaNodePool",
         "metadata": {"name": "dual-role", "labels": cluster},
         "spec": {"replicas": 1, "roles": ["controller", "broker"],
                  "storage": {"type": "jbod", "volumes": [{"id": 0, "type": "persistent-claim", "size": "20Gi",
                                                           "deleteClaim": False, "kraftMetadata": "shared"}]},
                  "resources": _resources("500m", "1Gi", "2", "2Gi")}},
        {"apiVersion": "kafka.strimzi.io/v1", "kind": "Kafka", "metadata": {"name": KAFKA_CLUSTER},
         "spec": {"kafka": {"version": KAFKA_VERSION,
                            "listeners": [{"name": "plain", "port": 9092, "type": "internal", "tls": False}],
                            "config": {"auto.create.topics.enable": False,  # as locally: typos fail loudly
                                       "offsets.topic.replication.factor": 1,
                                       "transaction.state.log.replication.factor": 1,
                                       "transaction.state.log.min.isr": 1, "default.replication.factor": 1,
                                       "min.insync.replicas": 1}},
                  "entityOperator": {"topicOperator": {}}}},
    ]


def topic_name(name: str) -> str:
    """A Kubernetes name for a topic (dots are allowed, but keep DNS-1123 lowercase)."""
    return name.replace(".", "-").replace("_", "-").lower()


def kafka_topics(settings: Settings) -> list[dict]:
    """One KafkaTopic per declaration in ``streaming/topics.py`` (partitions, configs)."""
    return [{"apiVersion": "kafka.strimzi.io/v1", "kind": "KafkaTopic",
             "metadata": {"name": topic_name(t.name), "labels": {"strimzi.io/cluster": KAFKA_CLUSTER},
                          "annotations": {"taxi-mlops/description": t.description}},
             "spec": {"topicName": t.name, "partitions": t.partitions, "replicas": 1, "config": t.configs()}}
            for t in topic_defs.TOPICS]


def feast(settings: Settings) -> list[dict]:
    """The Feast operator's FeatureStore: an online feature server on our Redis (the store's
    parameters come from the Secret key ``redis``, as in feature_store.yaml), a file offline
    store and a registry server, each on a PVC the operator creates."""
    return [{"apiVersion": "feast.dev/v1", "kind": "FeatureStore", "metadata": {"name": "chicago-taxi"},
             "spec": {"feastProject": "chicago_taxi", "services": {
                 "onlineStore": {"server": {"resources": _resources("100m", "256Mi", "1", "1Gi")},
                                 "persistence": {"store": {"type": "redis", "secretRef": {"name": common.SECRET},
                                                           "secretKeyName": "feast-redis"}}},
                 "offlineStore": {"persistence": {"file": {"type": "file", "pvc": {
                     "create": {"resources": {"requests": {"storage": "5Gi"}}}, "mountPath": "/data/offline"}}}},
                 "registry": {"local": {"server": {}, "persistence": {"file": {
                     "path": "registry.db", "pvc": {"create": {}, "mountPath": "/data/registry"}}}}}}}}]


def _stateful(name: str, image: str, port: int, args: list[str], env: list[dict], data: str,
              probe: dict, resources: dict, user: int) -> list[dict]:
    pod_sc = {"runAsNonRoot": True, "runAsUser": user, "runAsGroup": user, "fsGroup": user,
              "seccompProfile": {"type": "RuntimeDefault"}}
    c_sc = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
    container = {"name": name, "image": image, "args": args, "env": env,
                 "ports": [{"name": "main", "containerPort": port}], "readinessProbe": probe,
                 "livenessProbe": {**probe, "initialDelaySeconds": 30}, "resources": resources,
                 "securityContext": c_sc, "volumeMounts": [{"name": "data", "mountPath": data}]}
    return [{"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": name, "labels": {LABEL: name}},
             "spec": {"serviceName": name, "replicas": 1, "selector": {"matchLabels": {LABEL: name}},
                      "template": {"metadata": {"labels": {LABEL: name}},
                                   "spec": {"securityContext": pod_sc, "containers": [container]}},
                      "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {
                          "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "5Gi"}}}}]}},
            _service(name, port, port_name="main")]


REDIS_CLUSTER = "redis-cluster"  # the StatefulSet and its headless Service (pod DNS names)


def redis(settings: Settings) -> list[dict]:
    """Redis with a password and an append-only file, as the local stack runs it; a Redis
    Cluster of ``redis_cluster_nodes`` masters when that is set."""
    if settings.redis_cluster_nodes:
        return redis_cluster(settings)
    probe = {"exec": {"command": ["sh", "-c", 'redis-cli -a "$REDIS_PASSWORD" --no-auth-warning ping']},
             "periodSeconds": 10, "timeoutSeconds": 2}
    return _stateful("redis", common.REDIS_IMAGE, settings.redis_port,
                     ["sh", "-c", f'exec redis-server --port {settings.redis_port} --requirepass "$REDIS_PASSWORD" '
                                  "--appendonly yes --appendfsync everysec --dir /data"],
                     [{"name": "REDIS_PASSWORD", **_secret("redis-password")}], "/data", probe,
                     _resources("100m", "256Mi", "1", "1Gi"), 999)


def redis_cluster(settings: Settings) -> list[dict]:
    """``redis_cluster_nodes`` masters (a StatefulSet, ``Parallel``: the create Job needs them
    all) and the Job that joins them, as ``up --redis-cluster N`` does: Redis's own
    ``redis-cli --cluster create`` (slots split evenly, no replicas), skipped when the cluster
    is already ``ok``. Each node keeps ``nodes.conf`` on its volume and announces its pod DNS
    name, so a restarted pod (a new IP) rejoins. The password reaches redis-server through a
    config file (mode 0600), redis-cli through ``REDISCLI_AUTH``; never an argument.

    Clients keep the local layout (``Settings.redis_node_ports``: node i on redis_port + i):
    the Service ``redis`` has one port per node, each forwarding to a node's ``redis_port``;
    any of them bootstraps a cluster client, which then follows the cluster's slot map (pod
    DNS names)."""
    n, port = settings.redis_cluster_nodes, settings.redis_port
    bus = port + 10000
    auth = [{"name": "REDIS_PASSWORD", **_secret("redis-password")},
            {"name": "REDISCLI_AUTH", **_secret("redis-password")}]
    start = ("umask 077; printf 'requirepass %s\\nmasterauth %s\\n' \"$REDIS_PASSWORD\" \"$REDIS_PASSWORD\" "
             "> /tmp/redis.conf; exec redis-server /tmp/redis.conf "
             f"--port {port} --cluster-enabled yes --cluster-config-file /data/nodes.conf "
             "--cluster-node-timeout 5000 --cluster-announce-hostname \"$(hostname)." + REDIS_CLUSTER + "\" "
             "--cluster-preferred-endpoint-type hostname --appendonly yes --appendfsync everysec --dir /data")
    probe = {"exec": {"command": ["redis-cli", "-p", str(port), "ping"]}, "periodSeconds": 10, "timeoutSeconds": 2}
    (sts, _) = _stateful(REDIS_CLUSTER, common.REDIS_IMAGE, port, ["sh", "-c", start], auth, "/data", probe,
                         _resources("100m", "256Mi", "1", "1Gi"), 999)
    sts["spec"] |= {"replicas": n, "podManagementPolicy": "Parallel"}
    pod = sts["spec"]["template"]["spec"]
    pod["containers"][0]["ports"].append({"name": "bus", "containerPort": bus})
    pod["containers"][0]["volumeMounts"].append({"name": "tmp", "mountPath": "/tmp"})
    pod["volumes"] = [{"name": "tmp", "emptyDir": {}}]
    selector = {LABEL: REDIS_CLUSTER}
    headless = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": REDIS_CLUSTER, "labels": {**selector}},
                "spec": {"clusterIP": "None", "publishNotReadyAddresses": True, "selector": {**selector},
                         "ports": [{"name": "main", "port": port, "targetPort": port},
                                   {"name": "bus", "port": bus, "targetPort": bus}]}}
    clients = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "redis", "labels": {LABEL: "redis"}},
               "spec": {"selector": {**selector}, "ports": [
                   {"name": "main" if i == 0 else f"main-{i}", "port": p, "targetPort": port}
                   for i, p in enumerate(settings.redis_node_ports)]}}
    return [sts, headless, clients, redis_cluster_job(settings)]


def redis_cluster_job(settings: Settings) -> dict:
    """``redis-cli --cluster create`` on every node once all answer; a no-op on a cluster
    that is already ``ok`` (a re-applied Job)."""
    n, port = settings.redis_cluster_nodes, settings.redis_port
    hosts = [f"{REDIS_CLUSTER}-{i}.{REDIS_CLUSTER}" for i in range(n)]
    script = "\n".join([
        "set -e",
        f"for h in {' '.join(hosts)}; do",
        f"  until redis-cli -h \"$h\" -p {port} ping 2>/dev/null | grep -q PONG; do sleep 2; done",
        "done",
        f"if redis-cli -h {hosts[0]} -p {port} cluster info | grep -q '^cluster_state:ok'; then",
        "  echo 'the Redis Cluster exists'; exit 0",
        "fi",
        f"exec redis-cli --cluster create {' '.join(f'{h}:{port}' for h in hosts)} "
        "--cluster-replicas 0 --cluster-yes",
    ])
    pod_sc = {"runAsNonRoot": True, "runAsUser": 999, "runAsGroup": 999, "seccompProfile": {"type": "RuntimeDefault"}}
    c_sc = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}}
    container = {"name": "create", "image": common.REDIS_IMAGE, "command": ["sh", "-c", script],
                 "env": [{"name": "REDISCLI_AUTH", **_secret("redis-password")}],
                 "resources": _resources("50m", "64Mi", "500m", "256Mi"), "securityContext": c_sc}
    name = f"{REDIS_CLUSTER}-create"
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "labels": {LABEL: name}},
            "spec": {"backoffLimit": 6, "activeDeadlineSeconds": 900,
                     "template": {"metadata": {"labels": {LABEL: name}},
                                  "spec": {"restartPolicy": "OnFailure", "securityContext": pod_sc,
                                           "containers": [container]}}}}


def mlflow(settings: Settings) -> list[dict]:
    """MLflow on PostgreSQL. The server runs from our platform image: it holds the same MLflow
    as every client (requirements/platform.lock) and psycopg, which the official image lacks."""
    pg_probe = {"exec": {"command": ["pg_isready", "-U", "mlflow", "-d", "mlflow"]}, "periodSeconds": 10,
                "timeoutSeconds": 2}
    postgres = _stateful("postgres", common.POSTGRES_IMAGE, 5432, [],
                         [{"name": "POSTGRES_USER", "value": "mlflow"}, {"name": "POSTGRES_DB", "value": "mlflow"},
                          {"name": "POSTGRES_PASSWORD", **_secret("postgres-password")},
                          {"name": "PGDATA", "value": "/var/lib/postgresql/data/pgdata"}],
                         "/var/lib/postgresql/data", pg_probe, _resources("100m", "256Mi", "1", "1Gi"), 999)
    postgres[0]["spec"]["template"]["spec"]["containers"][0].pop("args")
    port = settings.mlflow_port
    backend = "postgresql://mlflow:$(POSTGRES_PASSWORD)@postgres:5432/mlflow"  # expanded by the kubelet
    server = _deployment(settings, "mlflow", [
        "python", "-m", common.MLFLOW_ENTRY, "serve", "--host", "0.0.0.0", "--port", str(port),
        *common.MLFLOW_AUTH_APP, "--artifacts-destination", f"{common.STATE_IN_CONTAINER}/mlflow-artifacts",
        "--workers", "2", "--expose-prometheus", "/tmp/mlflow-metrics"],
        port, "/health", "/health", _resources("250m", "512Mi", "2", "2Gi"))
    container = server["spec"]["template"]["spec"]["containers"][0]
    # The backend URI holds PostgreSQL's password: a variable, not an argument. The admin's
    # password reaches MLflow through the auth config mlflow_server.py writes (mode 0600).
    container["env"] = [*peers(settings), {"name": "POSTGRES_PASSWORD", **_secret("postgres-password")},
                        {"name": "MLFLOW_BACKEND_STORE_URI", "value": backend},
                        {"name": "TAXI_MLFLOW_BACKEND_URI", "value": backend},
                        {"name": "TAXI_MLFLOW_ADMIN_USERNAME", "value": settings.mlflow_admin_username},
                        {"name": "TAXI_MLFLOW_ADMIN_PASSWORD", **_secret("mlflow-admin-password")},
                        {"name": "MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "value": "false"}]
    server["spec"]["template"]["spec"]["volumes"][0] = {"name": "state", "persistentVolumeClaim": {
        "claimName": "mlflow-artifacts"}}
    pvc = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "mlflow-artifacts"},
           "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "20Gi"}}}}
    return postgres + [pvc, server, _service("mlflow", port, "mlflow"), mlflow_users_job(settings)]


def mlflow_users_job(settings: Settings) -> dict:
    """The read-only user, made by the admin through MLflow's API as ``up`` does
    (``ensure_mlflow_reader``, idempotent); the Job retries until MLflow answers. After a
    password change in the Secret: delete the Job and apply again."""
    pod_sc, c_sc = _security()
    env = [*peers(settings), *mlflow_login(settings, security.MLFLOW_ADMIN),
           {"name": "TAXI_MLFLOW_READER_USERNAME", "value": settings.mlflow_reader_username},
           {"name": "TAXI_MLFLOW_READER_PASSWORD", **_secret("mlflow-reader-password")}]
    container = {"name": "mlflow-users", "image": common.PLATFORM_IMAGE,
                 "command": ["python", "-m", common.MLFLOW_ENTRY, "users"], "env": env,
                 "resources": _resources("50m", "128Mi", "500m", "512Mi"), "securityContext": c_sc,
                 "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}]}
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "mlflow-users", "labels": {LABEL: "mlflow-users"}},
            "spec": {"backoffLimit": 10, "template": {"metadata": {"labels": {LABEL: "mlflow-users"}},
                     "spec": {"restartPolicy": "OnFailure", "securityContext": pod_sc, "containers": [container],
                              "volumes": [{"name": "tmp", "emptyDir": {}}]}}}}


def rule_groups() -> dict[str, list]:
    """``{file stem: groups}`` of every rule file, as Prometheus reads them."""
    return {p.stem: yaml.safe_load(p.read_text())["groups"] for p in sorted(common.RULES_DIR.glob("*.yml"))}


def _endpoint(settings: Settings, **extra) -> dict:
    return {"port": "http", "path": "/metrics", "interval": f"{settings.scrape_interval_s:g}s", **extra,
            "relabelings": [{"sourceLabels": [f"__meta_kubernetes_service_label_{JOB_LABEL.replace('/', '_').replace('-', '_')}"],
                             "targetLabel": "component"}]}


def _monitor(name: str, selector: dict, endpoint: dict) -> dict:
    return {"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
            "metadata": {"name": name, "labels": {"release": "prometheus"}},
            "spec": {"jobLabel": JOB_LABEL, "selector": selector, "endpoints": [endpoint]}}


def pushgateway(settings: Settings) -> list[dict]:
    """The Pushgateway a pipeline run pushes its metrics to (kube-prometheus-stack has none)."""
    pod_sc, c_sc = _security()
    pod_sc = {**pod_sc, "runAsUser": 65534, "runAsGroup": 65534, "fsGroup": 65534}  # the image's nobody
    container = {"name": "pushgateway", "image": common.PUSHGATEWAY_IMAGE,
                 "ports": [{"name": "http", "containerPort": PUSHGATEWAY_PORT}],
                 "readinessProbe": _probe("/-/ready", PUSHGATEWAY_PORT),
                 "livenessProbe": {**_probe("/-/healthy", PUSHGATEWAY_PORT, 20), "initialDelaySeconds": 10},
                 "resources": _resources("50m", "64Mi", "500m", "256Mi"), "securityContext": c_sc}
    labels = {LABEL: "pushgateway"}
    return [{"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "pushgateway", "labels": {**labels}},
             "spec": {"replicas": 1, "selector": {"matchLabels": {**labels}},
                      "template": {"metadata": {"labels": {**labels}},
                                   "spec": {"securityContext": pod_sc, "containers": [container]}}}},
            _service("pushgateway", PUSHGATEWAY_PORT, "pushgateway")]


def monitoring(settings: Settings) -> list[dict]:
    """ServiceMonitors for every Service with a job label, and one PrometheusRule per rule file.
    ``jobLabel`` keeps the job names our rules select on (``stream_processor``, not the
    Service's DNS name). Two need their own: MLflow's /metrics is admins-only behind its auth
    app (Prometheus logs in as the admin, from the Secret, as the local stack does), and the
    Pushgateway's pushed job labels are kept (``honorLabels``, as locally)."""
    special = ["mlflow", "pushgateway"]
    ours = _monitor("taxi-mlops", {"matchExpressions": [
        {"key": JOB_LABEL, "operator": "Exists"}, {"key": LABEL, "operator": "NotIn", "values": special}]},
        _endpoint(settings))
    login = {"username": {"name": common.SECRET, "key": "mlflow-admin-username"},
             "password": {"name": common.SECRET, "key": "mlflow-admin-password"}}
    mlflow_monitor = _monitor("taxi-mlflow", {"matchLabels": {LABEL: "mlflow"}}, _endpoint(settings, basicAuth=login))
    push_monitor = _monitor("taxi-pushgateway", {"matchLabels": {LABEL: "pushgateway"}},
                            _endpoint(settings, honorLabels=True))
    rules = [{"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
              "metadata": {"name": f"taxi-{stem}", "labels": {"release": "prometheus"}},
              "spec": {"groups": groups}} for stem, groups in rule_groups().items()]
    return [*pushgateway(settings), ours, mlflow_monitor, push_monitor, *rules]


def dashboards(settings: Settings) -> list[dict]:
    """One ConfigMap per dashboard, labelled for the Grafana sidecar; the JSON is the file's text."""
    return [{"apiVersion": "v1", "kind": "ConfigMap",
             "metadata": {"name": f"grafana-dashboard-{p.stem}", "labels": {"grafana_dashboard": "1"}},
             "data": {p.name: p.read_text()}} for p in sorted(common.DASHBOARDS_DIR.glob("*.json"))]


FILES = {"platform.yaml": platform, "serving.yaml": serving, "kafka.yaml": kafka,
         "kafka-topics.yaml": kafka_topics, "feast.yaml": feast, "redis.yaml": redis, "mlflow.yaml": mlflow,
         "monitoring.yaml": monitoring, "dashboards.yaml": dashboards}


def base(settings: Settings) -> dict[str, list[dict]]:
    """``{file name: documents}`` of the kustomize base (without its kustomization.yaml)."""
    return {name: build(settings) for name, build in FILES.items()}


# Overlays use a small kustomize subset (namespace, images, replicas; no patches) so that
# render.resolve_overlay can build them without kustomize.
OVERLAYS = {
    "dev": {"namespace": "taxi-dev", "images": [], "replicas": []},
    "prod": {"namespace": "taxi-prod",
             "images": [{"name": common.PLATFORM_IMAGE.split(":")[0],
                         "newName": "registry.example.com/taxi-mlops-platform",
                         "newTag": common.PLATFORM_IMAGE.split(":")[1]}],
             "replicas": [{"name": "gateway", "count": 3}, {"name": "ui", "count": 2}]},
}


def kustomization_base() -> dict:
    return {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
            "labels": [{"pairs": {"app.kubernetes.io/part-of": "taxi-mlops"}}],
            "resources": list(FILES)}


def kustomization_overlay(name: str) -> dict:
    spec = OVERLAYS[name]
    out = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
           "namespace": spec["namespace"], "resources": ["../../base"]}
    if spec["images"]:
        out["images"] = spec["images"]
    if spec["replicas"]:
        out["replicas"] = spec["replicas"]
    return out


def dashboard_json(doc: dict) -> dict:
    """The dashboard a ConfigMap carries, parsed (for tests and readers)."""
    (text,) = doc["data"].values()
    return json.loads(text)
