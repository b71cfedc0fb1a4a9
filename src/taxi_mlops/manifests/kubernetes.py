"""The Kubernetes base: every document as a dict, grouped by file (kustomize ``resources``).

Facts come from their owners: ports and names from ``Settings``, topics from
``streaming/topics.py``, alert rules from ``deploy/prometheus/rules``, dashboards from
``deploy/grafana/dashboards``. Secrets (Redis and PostgreSQL passwords, the admin token) are
read from the Secret ``taxi-secrets``, which is created out of band and never committed.
"""

from __future__ import annotations

import json

import yaml

from taxi_mlops.manifests import common
from taxi_mlops.settings import Settings
from taxi_mlops.streaming import topics as topic_defs

KAFKA_CLUSTER = "taxi-kafka"
KAFKA_VERSION = "4.1.0"
LABEL = "app.kubernetes.io/name"
JOB_LABEL = "taxi-mlops/job"  # the Prometheus job our rules select on (ServiceMonitor jobLabel)


def _secret(key: str) -> dict:
    return {"valueFrom": {"secretKeyRef": {"name": common.SECRET, "key": key}}}


def platform_env(settings: Settings) -> list[dict]:
    """Our Settings as seen inside the cluster: bind everywhere, the peers by Service name."""
    return [
        {"name": "TAXI_HOST", "value": "0.0.0.0"},
        {"name": "TAXI_STATE_DIR", "value": common.STATE_IN_CONTAINER},
        {"name": "TAXI_MLFLOW_EXTERNAL_URI", "value": f"http://mlflow:{settings.mlflow_port}"},
        {"name": "KAFKA_BOOTSTRAP_SERVERS", "value": f"{KAFKA_CLUSTER}-kafka-bootstrap:9092"},
        {"name": "TAXI_PROMETHEUS_EXTERNAL_URL", "value": "http://prometheus-operated:9090"},
        {"name": "TAXI_MODEL_NAME", "value": settings.model_name},
        {"name": "TAXI_REDIS_PASSWORD", **_secret("redis-password")},
        {"name": "TAXI_ADMIN_TOKEN", **_secret("admin-token")},
    ]


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
                resources: dict, replicas: int = 1) -> dict:
    pod_sc, c_sc = _security()
    container = {
        "name": name, "image": common.PLATFORM_IMAGE, "command": command,
        "env": platform_env(settings), "ports": [{"name": "http", "containerPort": port}],
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
    """Gateway, stream processor, label join and UI: Deployment + Service each."""
    py = ["python", "-m"]
    small = _resources("100m", "256Mi", "1", "1Gi")
    specs = [
        ("gateway", py + ["taxi_mlops.gateway"], settings.gateway_port, "/health", "/openapi.json",
         _resources("250m", "512Mi", "2", "2Gi"), "gateway"),
        ("stream-processor", py + ["taxi_mlops.streaming.processor", "--instance", "0"],
         settings.processor_metrics_port, "/metrics", "/metrics", small, "stream_processor"),
        ("label-join", py + ["taxi_mlops.streaming.label_join"], settings.label_join_metrics_port,
         "/metrics", "/metrics", small, "label_join"),
        ("ui", py + ["streamlit", "run", "/app/src/taxi_mlops/ui/app.py", "--server.headless", "true",
                     "--server.address", "0.0.0.0", "--server.port", str(settings.ui_port),
                     "--browser.gatherUsageStats", "false", "--client.showErrorDetails", "none"],
         settings.ui_port, "/_stcore/health", "/_stcore/health", small, None),
    ]
    docs = []
    for name, command, port, ready, live, res, job in specs:
        docs += [_deployment(settings, name, command, port, ready, live, res), _service(name, port, job)]
    return docs


def _predictor(settings: Settings, alias: str, canary: int | None) -> dict:
    """A custom predictor running our KServe model server on our image; it loads the version
    holding ``alias`` from the MLflow registry (the same code as the local stack)."""
    _, c_sc = _security()
    env = [e for e in platform_env(settings) if e["name"] != "TAXI_ADMIN_TOKEN"]
    env += [{"name": "TAXI_MODEL_SERVER_PORT", "value": "8080"}, {"name": "TAXI_SERVING_ALIAS", "value": alias}]
    predictor = {
        "minReplicas": 1, "maxReplicas": 3,
        "containers": [{
            "name": "kserve-container", "image": common.PLATFORM_IMAGE,
            "command": ["python", "-m", "taxi_mlops.serving.model_server"], "env": env,
            "ports": [{"containerPort": 8080, "protocol": "TCP"}],
            "readinessProbe": _probe(f"/v2/models/{settings.model_name}/ready", 8080),
            "livenessProbe": {**_probe("/v2/health/live", 8080, 20), "initialDelaySeconds": 30},
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
            for name, alias, canary in (("taxi-tips", "champion", 10), ("taxi-tips-challenger", "challenger", None))]
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


def redis(settings: Settings) -> list[dict]:
    """Redis with a password and an append-only file, as the local stack runs it."""
    probe = {"exec": {"command": ["sh", "-c", 'redis-cli -a "$REDIS_PASSWORD" --no-auth-warning ping']},
             "periodSeconds": 10, "timeoutSeconds": 2}
    return _stateful("redis", common.REDIS_IMAGE, settings.redis_port,
                     ["sh", "-c", f'exec redis-server --port {settings.redis_port} --requirepass "$REDIS_PASSWORD" '
                                  "--appendonly yes --appendfsync everysec --dir /data"],
                     [{"name": "REDIS_PASSWORD", **_secret("redis-password")}], "/data", probe,
                     _resources("100m", "256Mi", "1", "1Gi"), 999)


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
    server = _deployment(settings, "mlflow", ["sh", "-c",
        "exec python -m mlflow server --host 0.0.0.0 --port " + str(port) +
        ' --backend-store-uri "postgresql://mlflow:${POSTGRES_PASSWORD}@postgres:5432/mlflow"'
        f" --artifacts-destination {common.STATE_IN_CONTAINER}/mlflow-artifacts --workers 2"],
        port, "/health", "/health", _resources("250m", "512Mi", "2", "2Gi"))
    container = server["spec"]["template"]["spec"]["containers"][0]
    container["env"] = [{"name": "POSTGRES_PASSWORD", **_secret("postgres-password")},
                        {"name": "MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "value": "false"}]
    server["spec"]["template"]["spec"]["volumes"][0] = {"name": "state", "persistentVolumeClaim": {
        "claimName": "mlflow-artifacts"}}
    pvc = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "mlflow-artifacts"},
           "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "20Gi"}}}}
    return postgres + [pvc, server, _service("mlflow", port, "mlflow")]


def rule_groups() -> dict[str, list]:
    """``{file stem: groups}`` of every rule file, as Prometheus reads them."""
    return {p.stem: yaml.safe_load(p.read_text())["groups"] for p in sorted(common.RULES_DIR.glob("*.yml"))}


def monitoring(settings: Settings) -> list[dict]:
    """A ServiceMonitor for every Service with a job label, and one PrometheusRule per rule file.
    ``jobLabel`` keeps the job names our rules select on (``stream_processor``, not the
    Service's DNS name)."""
    monitor = {"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
               "metadata": {"name": "taxi-mlops", "labels": {"release": "prometheus"}},
               "spec": {"jobLabel": JOB_LABEL, "selector": {"matchExpressions": [
                   {"key": JOB_LABEL, "operator": "Exists"}]},
                   "endpoints": [{"port": "http", "path": "/metrics", "interval": f"{settings.scrape_interval_s:g}s",
                                  "relabelings": [{"sourceLabels": [f"__meta_kubernetes_service_label_{JOB_LABEL.replace('/', '_').replace('-', '_')}"],
                                                   "targetLabel": "component"}]}]}}
    rules = [{"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
              "metadata": {"name": f"taxi-{stem}", "labels": {"release": "prometheus"}},
              "spec": {"groups": groups}} for stem, groups in rule_groups().items()]
    return [monitor, *rules]


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
