"""Kubernetes manifests and the compose file (issue 12): generated, committed, validated offline.

Core resources against the Kubernetes OpenAPI schemas (kubernetes-validate, strict), custom
resources against the JSON Schemas made from the upstream CRDs (deploy/schemas/, vendored from the workplace's shared/deploy-schemas),
compose against the Compose Specification. No cluster, no Docker engine, no stack.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from urllib.parse import urlsplit

import pytest
import yaml

from taxi_mlops import cli, paths, security
from taxi_mlops.manifests import common, compose, kubernetes, render, validate
from taxi_mlops.settings import Settings
from taxi_mlops.streaming import topics

DEFAULTS = Settings.model_construct()  # field defaults, whatever the environment says
BASE = kubernetes.base(DEFAULTS)
ALL_DOCS = [d for docs in BASE.values() for d in docs]


def _id(doc: dict) -> str:
    return f"{doc['kind']}/{doc['metadata']['name']}"


def _of_kind(kind: str, docs=ALL_DOCS) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def test_committed_files_are_what_the_generator_writes():
    """deploy/k8s and deploy/compose are committed; a stale copy fails here with the fix."""
    stale = [rel for rel, text in render.tree(DEFAULTS).items()
             if not (common.DEPLOY_DIR / rel).exists() or (common.DEPLOY_DIR / rel).read_text() != text]
    assert not stale, f"out of date: {stale}; run `taxi-mlops deploy render`"
    listed = yaml.safe_load((common.DEPLOY_DIR / "k8s/base/kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == sorted(p.name for p in (common.DEPLOY_DIR / "k8s/base").glob("*.yaml")
                                    if p.name != "kustomization.yaml")


@pytest.mark.parametrize("doc", ALL_DOCS, ids=_id)
def test_every_base_document_is_valid(doc):
    validate.validate_doc(doc)


@pytest.mark.parametrize("overlay", sorted(kubernetes.OVERLAYS))
def test_overlays_resolve_and_stay_valid(overlay):
    docs = render.resolve_overlay(DEFAULTS, overlay)
    assert len(docs) == len(ALL_DOCS)
    spec = kubernetes.OVERLAYS[overlay]
    for doc in docs:
        validate.validate_doc(doc)
        assert doc["metadata"]["namespace"] == spec["namespace"]
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "taxi-mlops"
    images = {c["image"] for d in docs for c in render._containers(d.get("spec", {}))}
    if overlay == "prod":
        assert common.PLATFORM_IMAGE not in images
        assert f"registry.example.com/taxi-mlops-platform:{common.PLATFORM_IMAGE.split(':')[1]}" in images
        gateway = next(d for d in docs if _id(d) == "Deployment/gateway")
        assert gateway["spec"]["replicas"] == 3
    else:
        assert common.PLATFORM_IMAGE in images


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="cross-check needs kubectl (kustomize built in)")
@pytest.mark.parametrize("overlay", sorted(kubernetes.OVERLAYS))
def test_our_overlay_resolver_agrees_with_kustomize(overlay):
    """The committed overlays built by kustomize itself equal ``render.resolve_overlay``."""
    out = subprocess.run(["kubectl", "kustomize", str(common.DEPLOY_DIR / "k8s" / "overlays" / overlay)],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    theirs = {_id(d): d for d in yaml.safe_load_all(out) if d}
    ours = {_id(d): d for d in render.resolve_overlay(DEFAULTS, overlay)}
    assert theirs == ours


def test_a_misspelt_field_fails_in_a_core_resource():
    doc = copy.deepcopy(_of_kind("Deployment")[0])
    container = doc["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(validate.InvalidManifest, match="readinesProbe"):
        validate.validate_doc(doc)


@pytest.mark.parametrize("kind,path,typo", [
    ("InferenceService", ("spec", "predictor"), ("canaryTrafficPercent", "canaryTraficPercent")),
    ("KafkaTopic", ("spec",), ("partitions", "partitons")),
    ("Kafka", ("spec",), ("entityOperator", "entityOperater")),
    ("FeatureStore", ("spec",), ("feastProject", "feastProjet")),
    ("InferenceGraph", ("spec", "nodes", "root"), ("routerType", "routertype")),
    ("PrometheusRule", ("spec",), ("groups", "group")),
])
def test_a_misspelt_field_fails_in_a_custom_resource(kind, path, typo):
    doc = copy.deepcopy(_of_kind(kind)[0])
    node = doc
    for key in path:
        node = node[key]
    right, wrong = typo
    node[wrong] = node.pop(right)
    with pytest.raises(validate.InvalidManifest, match=wrong):
        validate.validate_doc(doc)


def test_a_custom_resource_of_an_unknown_version_fails_instead_of_being_skipped():
    doc = copy.deepcopy(_of_kind("KafkaTopic")[0])
    doc["apiVersion"] = "kafka.strimzi.io/v2"
    with pytest.raises(validate.InvalidManifest, match="no schema"):
        validate.validate_doc(doc)


def test_kafka_topics_are_the_topic_declarations():
    generated = {d["spec"]["topicName"]: d["spec"] for d in _of_kind("KafkaTopic")}
    assert set(generated) == {t.name for t in topics.TOPICS}
    for t in topics.TOPICS:
        assert generated[t.name]["partitions"] == t.partitions
        assert generated[t.name]["config"] == t.configs()
    assert all(d["metadata"]["labels"]["strimzi.io/cluster"] == kubernetes.KAFKA_CLUSTER for d in _of_kind("KafkaTopic"))


def test_kafka_is_kraft_with_a_controller_and_broker_pool():
    (pool,) = _of_kind("KafkaNodePool")
    assert set(pool["spec"]["roles"]) == {"controller", "broker"}
    assert pool["metadata"]["labels"]["strimzi.io/cluster"] == _of_kind("Kafka")[0]["metadata"]["name"]


def test_prometheus_rules_are_the_rule_files():
    rules = {d["metadata"]["name"]: d["spec"]["groups"] for d in _of_kind("PrometheusRule")}
    files = sorted((paths.PROJECT_ROOT / "deploy" / "prometheus" / "rules").glob("*.yml"))
    assert files
    assert rules == {f"taxi-{p.stem}": yaml.safe_load(p.read_text())["groups"] for p in files}


def test_dashboard_config_maps_are_the_dashboard_json():
    maps = {d["metadata"]["name"]: d for d in _of_kind("ConfigMap") if d["metadata"]["name"].startswith("grafana-")}
    files = sorted((paths.PROJECT_ROOT / "deploy" / "grafana" / "dashboards").glob("*.json"))
    assert len(maps) == len(files) > 0
    for p in files:
        doc = maps[f"grafana-dashboard-{p.stem}"]
        assert doc["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert kubernetes.dashboard_json(doc) == json.loads(p.read_text())


def test_service_monitor_scrapes_our_services_under_their_local_job_names():
    """Rules aggregate by (job, component): in the cluster the jobs keep the local names
    (``stream_processor``, not the Service's DNS name ``stream-processor``)."""
    from taxi_mlops.observability import prometheus

    local_jobs = {job for job, _, _ in prometheus.scrape_targets(DEFAULTS)}
    labelled = {d["metadata"]["name"]: d["metadata"]["labels"].get(kubernetes.JOB_LABEL) for d in _of_kind("Service")}
    assert {labelled[n] for n in ("gateway", "stream-processor", "label-join", "mlflow", "data-quality",
                                  "alert-receiver", "pushgateway")} <= local_jobs
    monitors = {d["metadata"]["name"]: d for d in _of_kind("ServiceMonitor")}
    assert all(m["spec"]["jobLabel"] == kubernetes.JOB_LABEL for m in monitors.values())
    ours = monitors["taxi-mlops"]["spec"]["selector"]["matchExpressions"]
    assert {"key": kubernetes.JOB_LABEL, "operator": "Exists"} in ours
    # every labelled Service is scraped by exactly one monitor
    for name, job in labelled.items():
        if not job:
            continue
        chosen = [m for m in monitors.values() if _selects(m["spec"]["selector"], {kubernetes.LABEL: name, kubernetes.JOB_LABEL: job})]
        assert len(chosen) == 1, (name, [m["metadata"]["name"] for m in chosen])
    assert monitors["taxi-pushgateway"]["spec"]["endpoints"][0]["honorLabels"] is True
    ports = {d["metadata"]["name"]: d["spec"]["ports"][0]["name"] for d in _of_kind("Service") if labelled[d["metadata"]["name"]]}
    assert set(ports.values()) == {m["spec"]["endpoints"][0]["port"] for m in monitors.values()}


def _selects(selector: dict, labels: dict) -> bool:
    """A label selector's matchLabels/matchExpressions (Exists, In, NotIn) against labels."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for e in selector.get("matchExpressions", []):
        value = labels.get(e["key"])
        if e["operator"] == "Exists" and value is None or e["operator"] == "In" and value not in e["values"] \
                or e["operator"] == "NotIn" and value in e["values"]:
            return False
    return True


@pytest.mark.parametrize("name", ["gateway", "stream-processor", "label-join", "ui"])
def test_our_deployments_have_probes_resources_and_run_as_non_root(name):
    (dep,) = [d for d in _of_kind("Deployment") if d["metadata"]["name"] == name]
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] > 0
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["resources"]["requests"] and c["resources"]["limits"]
    port = c["ports"][0]["containerPort"]
    for probe in ("readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["port"] == port
    # The gateway: /health/live, not /health (503 while Redis is down, when /predict still
    # answers degraded: readiness on it would empty the Service).
    expected = {"gateway": "/health/live", "ui": "/_stcore/health"}.get(name, "/metrics")
    assert c["readinessProbe"]["httpGet"]["path"] == expected


def test_ports_and_names_follow_settings():
    custom = Settings.model_construct(gateway_port=9100, ui_port=9200, model_name="other-model")
    docs = [d for ds in kubernetes.base(custom).values() for d in ds]
    gateway = next(d for d in docs if _id(d) == "Service/gateway")
    assert gateway["spec"]["ports"][0]["port"] == 9100
    isvc = next(d for d in docs if _id(d) == "InferenceService/taxi-tips")
    ready = isvc["spec"]["predictor"]["containers"][0]["readinessProbe"]["httpGet"]["path"]
    assert ready == "/v2/models/other-model/ready"
    services = compose.compose(custom)["services"]
    assert services["ui"]["ports"] == ["127.0.0.1:9200:9200"]


def test_inference_service_has_a_canary_and_the_graph_splits_between_two_services():
    isvcs = {d["metadata"]["name"]: d for d in _of_kind("InferenceService")}
    assert isvcs["taxi-tips"]["spec"]["predictor"]["canaryTrafficPercent"] == 10
    (graph,) = _of_kind("InferenceGraph")
    root = graph["spec"]["nodes"]["root"]
    assert root["routerType"] == "Splitter"
    assert {s["serviceName"] for s in root["steps"]} == set(isvcs)
    assert sum(s["weight"] for s in root["steps"]) == 100


# ---- compose ----------------------------------------------------------------------------

COMPOSE = compose.compose(DEFAULTS)


def test_the_compose_file_is_valid():
    validate.validate_compose(COMPOSE)
    committed = yaml.safe_load((common.DEPLOY_DIR / "compose" / "compose.yaml").read_text())
    validate.validate_compose(committed)
    assert {"redis", "postgres", "mlflow", "kafka", "gateway", "model-server", "stream-processor",
            "label-join", "ui", "prometheus", "grafana", "pipeline"} <= set(committed["services"])


def test_compose_prometheus_scrapes_the_local_jobs_by_service_name():
    """promtool (installed with Prometheus by `make install`) accepts the generated config;
    the jobs are the local stack's, addressed by compose service names."""
    from taxi_mlops.observability import prometheus

    path = common.DEPLOY_DIR / "compose" / "prometheus.yml"
    out = subprocess.run(["promtool", "check", "config", "--syntax-only", str(path)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    config = yaml.safe_load(path.read_text())
    jobs = {j["job_name"]: j["static_configs"][0]["targets"][0] for j in config["scrape_configs"]}
    local = {job for job, _, _ in prometheus.scrape_targets(DEFAULTS)}
    assert set(jobs) == local - {"kafka"}
    assert all(target.split(":")[0] in COMPOSE["services"] for target in jobs.values())
    assert "./prometheus.yml:/etc/prometheus/prometheus.yml:ro" in COMPOSE["services"]["prometheus"]["volumes"]


def _broken(edit) -> dict:
    doc = copy.deepcopy(COMPOSE)
    edit(doc["services"])
    return doc


@pytest.mark.parametrize("edit,message", [
    (lambda s: s["gateway"].update(healthchek=s["gateway"].pop("healthcheck")), "healthchek"),
    (lambda s: s["redis"].update(image="redis"), "not pinned"),
    (lambda s: s["grafana"].update(image="grafana/grafana:latest"), "not pinned"),
    (lambda s: s["gateway"].update(ports=["8000:8000"]), "127.0.0.1"),
    (lambda s: s["gateway"]["depends_on"].update(kafak={"condition": "service_healthy"}), "kafak"),
    (lambda s: s["ui"].pop("healthcheck"), "no healthcheck"),
])
def test_a_broken_compose_file_fails(edit, message):
    with pytest.raises(validate.InvalidManifest, match=message):
        validate.validate_compose(_broken(edit))


@pytest.mark.parametrize("name,lock", [("platform", "platform.lock"), ("pipeline", "pipeline.lock")])
def test_dockerfiles_pin_their_base_image_and_install_from_the_lock(name, lock):
    text = (common.DEPLOY_DIR / "docker" / f"{name}.Dockerfile").read_text()
    bases = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert bases and all(re.fullmatch(r"[\w./-]+:\d+\.\d+\.\d+[\w.-]*", b) for b in bases), bases
    assert f"--no-deps -r requirements/{lock}" in text
    assert re.search(r"^USER 10001", text, re.M)
    python = "3.11" if name == "platform" else "3.10"
    assert bases[-1].startswith(f"python:{python}.")  # the image's own base: the last stage
    if name == "pipeline":  # the platform env beside TFX's, where the KFP steps look for it
        venv = Settings().kfp_platform_python.removesuffix("/bin/python")
        assert any(b.startswith("python:3.11.") for b in bases[:-1]), bases
        assert f"python3.11 -m venv {venv}" in text
        assert f"{venv}/bin/python -m pip install --no-deps -r requirements/platform.lock" in text
    built = [s for s in COMPOSE["services"].values() if s.get("build", {}).get("dockerfile", "").endswith(f"{name}.Dockerfile")]
    assert built


# ---- CLI --------------------------------------------------------------------------------

def test_deploy_render_writes_the_tree(tmp_path, capsys):
    assert cli.main(["deploy", "render", "--out", str(tmp_path)]) == 0
    expected = render.tree(cli.get_settings())
    assert {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()} == set(expected)
    assert (tmp_path / "k8s/base/kafka-topics.yaml").read_text() == expected["k8s/base/kafka-topics.yaml"]


def test_deploy_render_overlay_prints_resolved_documents(capsys):
    assert cli.main(["deploy", "render", "--overlay", "prod"]) == 0
    docs = [d for d in yaml.safe_load_all(capsys.readouterr().out) if d]
    assert docs and {d["metadata"]["namespace"] for d in docs} == {"taxi-prod"}


def test_deploy_options_without_render_name_the_fix(capsys):
    assert cli.main(["deploy", "--overlay", "dev"]) == 1
    assert "taxi-mlops deploy render" in capsys.readouterr().err


# ---- every client URL names a service of the same manifest set ------------------------------

NAMESPACE = "taxi-test"
_VARS = ("TAXI_", "KAFKA_BOOTSTRAP_SERVERS", "MLFLOW_")


def _settings_from(env: dict[str, str], monkeypatch) -> Settings:
    """The Settings a container builds from the environment its manifest gives it (and nothing
    of the test runner's own TAXI_* variables)."""
    import os

    for key in [k for k in os.environ if k.startswith(_VARS)]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return Settings()


def client_addresses(s: Settings) -> dict[str, tuple[str, int]]:
    """(host, port) of every peer these settings would connect to."""
    urls = {"rollout store": s.rollout_db_uri} if s.rollout_db_uri else {}
    urls |= {"prediction store": s.predictions_db_uri} if s.predictions_db_uri else {}
    urls |= {"mlflow": s.mlflow_tracking_uri, "prometheus": s.prometheus_url, "alertmanager": s.alertmanager_url,
            "pushgateway": s.pushgateway_url, "alert receiver": s.alert_receiver_url, "gateway": s.gateway_url,
            **{f"model server {i}": u for i, u in enumerate(s.model_server_urls)},
            **{f"kafka {i}": f"kafka://{b}" for i, b in enumerate(s.kafka_bootstrap_servers.split(","))}}
    redis = ([p for p in s.redis_connection_string.split(",") if "=" not in p] if s.redis_password
             else [s.redis_url.split("//")[1].split("/")[0]])
    urls |= {f"redis {i}": f"redis://{node}" for i, node in enumerate(redis)}
    return {what: (urlsplit(u).hostname, urlsplit(u).port) for what, u in urls.items()}


def _k8s_env(container: dict) -> dict[str, str]:
    """A container's environment as the kubelet makes it: Secret values stand in, the
    namespace from the downward API, $(VAR) expanded from the variables before it."""
    env = {}
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), e["value"])
        elif "secretKeyRef" in e["valueFrom"]:
            env[e["name"]] = f"from-secret-{e['valueFrom']['secretKeyRef']['key']}"
        else:
            assert e["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace", e
            env[e["name"]] = NAMESPACE
    return env


def _k8s_services(docs) -> dict[str, set[int]]:
    """Service name -> ports: the Services of the base, those the operators make for its custom
    resources (Strimzi's bootstrap, Knative's predictor), and the monitoring stack's."""
    services = {d["metadata"]["name"]: {p["port"] for p in d["spec"]["ports"]} for d in _of_kind("Service", docs)}
    for k in _of_kind("Kafka", docs):
        services[f"{k['metadata']['name']}-kafka-bootstrap"] = {
            listener["port"] for listener in k["spec"]["kafka"]["listeners"]}
    for isvc in _of_kind("InferenceService", docs):
        services[f"{isvc['metadata']['name']}-predictor.{NAMESPACE}.svc.cluster.local"] = {kubernetes.KNATIVE_PORT}
    services |= {name: {port} for name, port in kubernetes.MONITORING_SERVICES.items()}
    return services


def _k8s_containers(docs) -> list[tuple[str, dict]]:
    """Every container of our image: Deployments, Jobs, InferenceService predictors."""
    out = []
    for doc in docs:
        for c in render._containers(doc.get("spec", {})):
            if c["image"] == common.PLATFORM_IMAGE:
                out.append((f"{_id(doc)}/{c['name']}", c))
    return out


K8S_CONTAINERS = _k8s_containers(ALL_DOCS)


@pytest.mark.parametrize("name", ["gateway", "label-join", "alert-receiver"])
def test_who_reads_or_changes_rollouts_shares_one_postgres_store(name, monkeypatch):
    """Pods share no disk: a SQLite rollout store per pod would give each gateway replica its
    own experiments. Theirs is MLflow's PostgreSQL, the password from the Secret."""
    [container] = [c for n, c in K8S_CONTAINERS if n.split("/")[1] == name and n.startswith("Deployment")]
    settings = _check_k8s_addresses(name, container, ALL_DOCS, monkeypatch)
    assert settings.rollout_location == "postgresql://mlflow:from-secret-postgres-password@postgres:5432/mlflow"


@pytest.mark.parametrize("name", ["gateway", "prediction-store"])
def test_the_prediction_store_worker_and_the_gateway_share_one_postgres_store(name, monkeypatch):
    """GET /predictions/{id} reads what the worker pod wrote: one PostgreSQL, not a file per pod."""
    [container] = [c for n, c in K8S_CONTAINERS if n.split("/")[1] == name and n.startswith("Deployment")]
    settings = _check_k8s_addresses(name, container, ALL_DOCS, monkeypatch)
    assert settings.predictions_location == "postgresql://mlflow:from-secret-postgres-password@postgres:5432/mlflow"


def test_every_platform_container_is_checked():
    names = {name.split("/")[1] for name, _ in K8S_CONTAINERS}
    assert {"gateway", "stream-processor", "label-join", "data-quality", "alert-receiver", "ui", "mlflow",
            "prediction-store",
            "mlflow-users", "taxi-tips", "taxi-tips-challenger"} <= names


@pytest.mark.parametrize("name,container", K8S_CONTAINERS, ids=[n for n, _ in K8S_CONTAINERS])
def test_every_k8s_client_url_names_a_service_of_the_base(name, container, monkeypatch):
    """TAXI_HOST=0.0.0.0 binds everywhere; each peer is reached by a Service name and port
    that exist (never 0.0.0.0 or 127.0.0.1)."""
    _check_k8s_addresses(name, container, ALL_DOCS, monkeypatch)


def _check_k8s_addresses(name: str, container: dict, docs: list[dict], monkeypatch) -> Settings:
    settings = _settings_from(_k8s_env(container), monkeypatch)
    assert settings.host == "0.0.0.0"
    services = _k8s_services(docs)
    serves_models = "taxi_mlops.serving.model_server" in container["command"]
    for what, (host, port) in client_addresses(settings).items():
        if serves_models and what.startswith("model server"):
            continue  # a predictor's model-server port is the one it binds (8080 behind Knative's 80)
        assert host in services, f"{name}: {what} at {host}:{port} is no Service of the manifests"
        assert port in services[host], f"{name}: {what} at {host}:{port}; {host} serves {services[host]}"
    return settings


def _compose_env(service: dict) -> dict[str, str]:
    """${VAR:?...} from .env: a stand-in value."""
    return {k: re.sub(r"\$\{(\w+)[^}]*\}", lambda m: f"from-env-{m.group(1)}", str(v))
            for k, v in service.get("environment", {}).items()}


def _compose_ports(services: dict) -> dict[str, set[int]]:
    """Service name -> ports it listens on inside the compose network (published or exposed)."""
    return {name: {int(str(p).rsplit(":", 1)[1]) for p in svc.get("ports", [])} | {int(p) for p in svc.get("expose", [])}
            for name, svc in services.items()}


COMPOSE_OURS = sorted(n for n, s in compose.compose(DEFAULTS)["services"].items()
                      if s["image"] in (common.PLATFORM_IMAGE, common.PIPELINE_IMAGE))


@pytest.mark.parametrize("name", COMPOSE_OURS)
def test_every_compose_client_url_names_a_service_of_the_file(name, monkeypatch):
    services = COMPOSE["services"]
    settings = _settings_from(_compose_env(services[name]), monkeypatch)
    assert settings.host == "0.0.0.0"
    ports = _compose_ports(services)
    for what, (host, port) in client_addresses(settings).items():
        assert host in services, f"{name}: {what} at {host}:{port} is no compose service"
        assert port in ports[host], f"{name}: {what} at {host}:{port}; {host} listens on {ports[host]}"


def test_compose_alertmanager_sends_to_the_alert_receiver():
    config = yaml.safe_load((common.DEPLOY_DIR / "compose" / "alertmanager.yml").read_text())
    (hook,) = config["receivers"][0]["webhook_configs"]
    url = urlsplit(hook["url"])
    assert url.hostname == "alert-receiver" and url.port in _compose_ports(COMPOSE["services"])["alert-receiver"]
    assert "./alertmanager.yml:/etc/alertmanager/alertmanager.yml:ro" in COMPOSE["services"]["alertmanager"]["volumes"]


# ---- MLflow basic-auth -----------------------------------------------------------------

def _mlflow_commands() -> dict[str, list[str]]:
    (k8s,) = [c for n, c in K8S_CONTAINERS if n == "Deployment/mlflow/mlflow"]
    return {"k8s": k8s["command"], "compose": COMPOSE["services"]["mlflow"]["command"]}


@pytest.mark.parametrize("where", ["k8s", "compose"])
def test_mlflow_runs_its_basic_auth_app_through_our_entrypoint(where):
    """As `up` runs it: the auth app on, its config written at start by our code."""
    command = _mlflow_commands()[where]
    assert command[:4] == ["python", "-m", common.MLFLOW_ENTRY, "serve"]
    joined = " ".join(command)
    assert " ".join(common.MLFLOW_AUTH_APP) in joined
    assert "postgresql://" not in joined and "PASSWORD" not in joined  # no secret on its command line


def test_mlflow_without_the_auth_app_is_refused_at_start(monkeypatch):
    from taxi_mlops.manifests import mlflow_server

    with pytest.raises(SystemExit, match="basic-auth"):
        mlflow_server.serve(DEFAULTS, ["--host", "0.0.0.0", "--port", "5050"])


ROLES = {  # mirrors stack/services.py: writers log in as the admin, readers as the reader
    "gateway": security.MLFLOW_ADMIN, "label-join": security.MLFLOW_ADMIN, "alert-receiver": security.MLFLOW_ADMIN,
    "ui": security.MLFLOW_READER, "data-quality": security.MLFLOW_READER, "model-server": security.MLFLOW_READER,
    "taxi-tips": security.MLFLOW_READER, "taxi-tips-challenger": security.MLFLOW_READER,
    "stream-processor": None, "prediction-store": None, "topics": None, "pipeline": security.MLFLOW_ADMIN,
}


def _login(settings: Settings) -> tuple[str | None, str | None]:
    """The mlflow library's login in this (monkeypatched) environment, beside ``settings``."""
    import os

    return os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")


def _expected_login(role):
    if role is None:
        return None, None
    if role == security.MLFLOW_ADMIN:
        return "admin", "mlflow-admin-password"
    return "reader", "mlflow-reader-password"


@pytest.mark.parametrize("name", sorted(n for n in ROLES if n not in ("model-server", "prediction-store", "topics",
                                                                       "pipeline")))
def test_k8s_services_log_in_to_mlflow_as_their_local_role(name, monkeypatch):
    (container,) = [c for n, c in K8S_CONTAINERS if n.split("/")[1] == name]
    settings = _settings_from(_k8s_env(container), monkeypatch)
    user, key = _expected_login(ROLES[name])
    assert _login(settings) == (user, key and f"from-secret-{key}")
    pair = security.mlflow_credentials(settings, ROLES[name] or security.MLFLOW_READER)
    assert pair == ((user, f"from-secret-{key}") if user else None)
    # a reader holds no admin password
    assert (settings.mlflow_admin_password is not None) == (ROLES[name] == security.MLFLOW_ADMIN)


@pytest.mark.parametrize("name", sorted(n for n in ROLES if n not in ("taxi-tips", "taxi-tips-challenger")))
def test_compose_services_log_in_to_mlflow_as_their_local_role(name, monkeypatch):
    settings = _settings_from(_compose_env(COMPOSE["services"][name]), monkeypatch)
    user, _ = _expected_login(ROLES[name])
    login = _login(settings)
    assert login[0] == user
    var = {security.MLFLOW_ADMIN: "TAXI_MLFLOW_ADMIN_PASSWORD", security.MLFLOW_READER: "TAXI_MLFLOW_READER_PASSWORD"}
    assert login[1] == (f"from-env-{var[ROLES[name]]}" if user else None)
    assert (settings.mlflow_admin_password is not None) == (ROLES[name] == security.MLFLOW_ADMIN)


def test_readers_wait_for_the_read_only_user():
    services = COMPOSE["services"]
    for name, role in ROLES.items():
        if role == security.MLFLOW_READER and name in services:
            assert services[name]["depends_on"][compose.MLFLOW_USERS] == {"condition": "service_completed_successfully"}
    users = services[compose.MLFLOW_USERS]
    assert users["command"][-1] == "users" and "restart" not in users
    (job,) = [d for d in _of_kind("Job") if d["metadata"]["name"] == "mlflow-users"]
    assert job["spec"]["template"]["spec"]["containers"][0]["command"] == ["python", "-m", common.MLFLOW_ENTRY, "users"]


def test_prometheus_logs_in_to_mlflow_with_a_password_file_or_the_secret():
    config = yaml.safe_load((common.DEPLOY_DIR / "compose" / "prometheus.yml").read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "mlflow"]
    assert job["basic_auth"] == {"username": "admin", "password_file": f"/run/secrets/{compose.MLFLOW_SECRET}"}
    assert compose.MLFLOW_SECRET in COMPOSE["services"]["prometheus"]["secrets"]
    assert COMPOSE["secrets"][compose.MLFLOW_SECRET] == {"environment": "TAXI_MLFLOW_ADMIN_PASSWORD"}
    (monitor,) = [d for d in _of_kind("ServiceMonitor") if d["metadata"]["name"] == "taxi-mlflow"]
    auth = monitor["spec"]["endpoints"][0]["basicAuth"]
    assert auth["password"] == {"name": common.SECRET, "key": "mlflow-admin-password"}
    assert auth["username"]["name"] == common.SECRET


def test_no_password_reaches_a_manifest_in_plain_text():
    """Render with every secret set in the settings: none of them may appear in any generated
    file, and every secret-looking variable comes from the Secret / .env."""
    secrets = {"redis_password": "plain-redis-6f1c2", "mlflow_admin_password": "plain-admin-9d3e7a",
               "mlflow_reader_password": "plain-reader-4b8e1f", "admin_token": "plain-token-7a2c9",
               "kafka_password": "plain-kafka-3e5d1"}
    tree = render.tree(Settings.model_construct(**secrets))
    for rel, text in tree.items():
        for field, value in secrets.items():
            assert value not in text, f"{rel} holds {field} in plain text"
    secretish = re.compile(r"PASSWORD|TOKEN|SECRET")
    for name, container in K8S_CONTAINERS:
        for e in container.get("env", []):
            if secretish.search(e["name"]) and "value" in e:
                assert False, f"{name}: {e['name']} has a value, not a secretKeyRef"
    for name, svc in COMPOSE["services"].items():
        for key, value in svc.get("environment", {}).items():
            if secretish.search(key) and "ENABLE" not in key:
                assert re.fullmatch(r"\$\{\w+:\?[^}]*\}", str(value)), f"compose {name}: {key}={value!r}"


def test_the_mlflow_entrypoint_serves_an_authenticated_mlflow_and_makes_the_reader(tmp_path):
    """The containers' MLflow commands, run here on a real MLflow (sqlite, a free port): the
    admin from the environment only, the reader made by the `users` step (``up``'s code),
    anyone else 401, the reader refused what only the admin may do."""
    import os
    import signal
    import sys

    import httpx

    from taxi_mlops.manifests import mlflow_server
    from taxi_mlops.stack.process import free_port, wait_for

    port, admin, reader = free_port(), "admin-pass-0123456789", "reader-pass-0123456789"
    backend = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(_VARS)}
    env |= {"TAXI_STATE_DIR": str(tmp_path), "TAXI_MLFLOW_ADMIN_PASSWORD": admin, "TAXI_MLFLOW_BACKEND_URI": backend,
            "MLFLOW_BACKEND_STORE_URI": backend, "TMPDIR": str(tmp_path / "tmp")}
    (tmp_path / "tmp").mkdir()
    command = [sys.executable, "-m", common.MLFLOW_ENTRY, "serve", "--host", "127.0.0.1", "--port", str(port),
               *common.MLFLOW_AUTH_APP, "--artifacts-destination", str(tmp_path / "artifacts"), "--workers", "1",
               "--expose-prometheus", str(tmp_path / "metrics")]
    server = subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                              stderr=open(tmp_path / "server.log", "w"))
    url = f"http://127.0.0.1:{port}"
    try:
        settings = Settings(_env_file=None, state_dir=tmp_path / "client", mlflow_external_uri=url,
                            mlflow_admin_password=admin, mlflow_reader_password=reader, startup_timeout_s=90)
        assert mlflow_server.users(settings) == 0, (tmp_path / "server.log").read_text()[-2000:]
        assert mlflow_server.users(settings) == 0  # idempotent: a rerun of the Job
        assert oct((tmp_path / "tmp" / "mlflow-auth" / "basic_auth.ini").stat().st_mode & 0o777) == "0o600"
        search = f"{url}/api/2.0/mlflow/experiments/search?max_results=1"
        with httpx.Client(timeout=10) as c:
            assert c.get(search).status_code == 401
            assert c.get(search, auth=("reader", "wrong-password-123")).status_code == 401
            assert c.get(search, auth=("reader", reader)).status_code == 200
            assert c.get(search, auth=("admin", admin)).status_code == 200
            assert c.get(f"{url}/metrics", auth=("admin", admin)).status_code == 200  # Prometheus's login
            users = f"{url}/api/2.0/mlflow/users/create"
            assert c.post(users, json={"username": "x", "password": "x" * 16}, auth=("reader", reader)).status_code == 403
        assert admin not in " ".join(command)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        if not wait_for(lambda: server.poll() is not None, 20):
            os.killpg(server.pid, signal.SIGKILL)


# ---- Redis Cluster option --------------------------------------------------------------

CLUSTER = Settings.model_construct(redis_cluster_nodes=3)
CLUSTER_DOCS = [d for docs in kubernetes.base(CLUSTER).values() for d in docs]


@pytest.mark.parametrize("doc", [d for d in CLUSTER_DOCS if "redis" in d["metadata"]["name"]], ids=_id)
def test_the_redis_cluster_documents_are_valid(doc):
    validate.validate_doc(doc)


def test_the_default_render_has_one_redis_and_no_cluster():
    assert [_id(d) for d in ALL_DOCS if "redis" in d["metadata"]["name"]] == ["StatefulSet/redis", "Service/redis"]
    assert all("TAXI_REDIS_CLUSTER_NODES" not in _k8s_env(c) for _, c in K8S_CONTAINERS)


def test_the_redis_cluster_is_n_masters_joined_by_a_job():
    (sts,) = [d for d in _of_kind("StatefulSet", CLUSTER_DOCS) if d["metadata"]["name"] == kubernetes.REDIS_CLUSTER]
    assert sts["spec"]["replicas"] == 3 and sts["spec"]["podManagementPolicy"] == "Parallel"
    start = " ".join(sts["spec"]["template"]["spec"]["containers"][0]["args"])
    assert "--cluster-enabled yes" in start and "--cluster-config-file /data/nodes.conf" in start
    assert "--requirepass" not in start  # the password goes through a 0600 config file
    (headless,) = [d for d in _of_kind("Service", CLUSTER_DOCS) if d["metadata"]["name"] == sts["spec"]["serviceName"]]
    assert headless["spec"]["clusterIP"] == "None"
    pods = [f"{sts['metadata']['name']}-{i}.{headless['metadata']['name']}" for i in range(3)]
    (job,) = [d for d in _of_kind("Job", CLUSTER_DOCS) if d["metadata"]["name"] == "redis-cluster-create"]
    script = job["spec"]["template"]["spec"]["containers"][0]["command"][-1]
    assert f"redis-cli --cluster create {' '.join(f'{p}:{CLUSTER.redis_port}' for p in pods)} --cluster-replicas 0" in script
    assert job["spec"]["template"]["spec"]["containers"][0]["env"] == [{"name": "REDISCLI_AUTH", **kubernetes._secret("redis-password")}]


CLUSTER_CONTAINERS = _k8s_containers(CLUSTER_DOCS)


@pytest.mark.parametrize("name,container", CLUSTER_CONTAINERS, ids=[n for n, _ in CLUSTER_CONTAINERS])
def test_with_a_redis_cluster_every_client_reaches_its_nodes_and_feast_uses_redis_cluster(name, container, monkeypatch):
    """Each client lists every node (redis:6390..6392, the Service's per-node ports) and
    Feast's feature_store.yaml gets redis_type redis_cluster."""
    settings = _check_k8s_addresses(name, container, CLUSTER_DOCS, monkeypatch)
    assert settings.redis_cluster_nodes == 3
    feast = settings.feast_env()
    assert feast["TAXI_FEAST_REDIS_TYPE"] == "redis_cluster"
    nodes = [p for p in feast["TAXI_FEAST_REDIS"].split(",") if "=" not in p]
    assert nodes == ["redis:6390", "redis:6391", "redis:6392"]
