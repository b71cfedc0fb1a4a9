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

import pytest
import yaml

from taxi_mlops import cli, paths
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
    assert {labelled[n] for n in ("gateway", "stream-processor", "label-join", "mlflow")} <= local_jobs
    (monitor,) = _of_kind("ServiceMonitor")
    assert monitor["spec"]["jobLabel"] == kubernetes.JOB_LABEL
    assert monitor["spec"]["selector"]["matchExpressions"] == [{"key": kubernetes.JOB_LABEL, "operator": "Exists"}]
    ports = {d["metadata"]["name"]: d["spec"]["ports"][0]["name"] for d in _of_kind("Service") if labelled[d["metadata"]["name"]]}
    assert set(ports.values()) == {monitor["spec"]["endpoints"][0]["port"]}


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
    expected = {"gateway": "/health", "ui": "/_stcore/health"}.get(name, "/metrics")
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
    assert set(jobs) == local - {"alert_receiver", "kafka"}
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
    assert bases[0].startswith(f"python:{python}.")
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
