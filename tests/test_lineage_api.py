"""Prediction lineage on the session stack: /predict -> taxi.predictions -> the prediction
store -> GET /predictions/{request_id}, each link checked against MLflow, ML Metadata and DVC."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import uuid
from datetime import datetime, timedelta, timezone

import httpx
import pytest
import yaml
from mlflow import MlflowClient

from taxi_mlops.lineage import mlmd
from taxi_mlops.lineage.consumer import NAME as STORE_SERVICE
from taxi_mlops.stack import services
from taxi_mlops.stack.process import wait_for
from taxi_mlops.streaming import events, topics

pytestmark = pytest.mark.slow


def _predict(settings, trip: dict, request_id: str) -> dict:
    r = httpx.post(f"{settings.gateway_url}/predict", json=trip, headers={"X-Request-ID": request_id},
                   timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["request_id"] == request_id
    return r.json()


def _chain(settings, request_id: str, wait_s: float = 60.0, until=lambda body: True) -> dict:
    """The chain once it is stored (and ``until`` holds)."""
    got = {}

    def ready() -> bool:
        r = httpx.get(f"{settings.gateway_url}/predictions/{request_id}", timeout=10)
        if r.status_code == 200 and until(r.json()):
            got["body"] = r.json()
            return True
        assert r.status_code in (200, 404), r.text
        return False

    assert wait_for(ready, wait_s, 0.2), f"{request_id} never stored (or never complete)"
    return got["body"]


def _send_label(settings, trip_id: str, big_tipper: bool) -> None:
    producer = events.EventProducer(settings.kafka_bootstrap_servers, "test-lineage")
    assert producer.send(topics.LABELS, events.LabelEventV1(
        trip_id=trip_id, event_time=datetime.now(timezone.utc), pickup_community_area=8,
        tips=4.0 if big_tipper else 0.0, fare=9.75, big_tipper=big_tipper), key="8")
    producer.flush_or_raise(10)


@pytest.fixture(scope="module")
def logged(stack, champion):
    """One prediction through the gateway, stored."""
    from tests.conftest import TRIP

    rid = f"lin-{uuid.uuid4().hex[:12]}"
    trip = {**TRIP, "trip_id": f"lin-trip-{uuid.uuid4().hex[:8]}"}
    answer = _predict(stack, trip, rid)
    return {"request_id": rid, "trip": trip, "answer": answer, "chain": _chain(stack, rid)}


def test_chain_links_prediction_model_run_pipeline_and_data(stack, champion, logged):
    body = logged["chain"]
    assert set(body) == {"request_id", "prediction", "model", "mlflow_run", "pipeline", "data", "label", "errors"}
    assert body["errors"] == [], body["errors"]
    answer, p = logged["answer"], body["prediction"]
    # the logged request, features and probability
    assert p["request_id"] == logged["request_id"] and p["trip_id"] == logged["trip"]["trip_id"]
    assert p["tip_probability"] == pytest.approx(answer["tip_probability"])
    assert p["features"]["fare"] == logged["trip"]["fare"] and p["variant"] == answer["model"]["variant"]
    # the model version, as the registry knows it now
    client = MlflowClient(stack.mlflow_tracking_uri)
    mv = client.get_model_version(stack.model_name, answer["model"]["version"])
    assert body["model"] == {"name": stack.model_name, "version": mv.version,
                             "aliases": sorted(mv.aliases), "family": mv.tags["model_family"]}
    # the MLflow run and its metrics
    run = client.get_run(mv.run_id)
    assert body["mlflow_run"]["run_id"] == mv.run_id
    assert body["mlflow_run"]["metrics"] == pytest.approx(run.data.metrics)
    assert body["mlflow_run"]["params"] == run.data.params
    assert mv.run_id in body["mlflow_run"]["url"]
    # the TFX pipeline run and its artifacts, as ML Metadata has them
    store = mlmd.open_store(stack.mlmd_path)
    run_ctx = store.get_contexts_by_type("pipeline_run")
    assert body["pipeline"]["run_id"] in {c.name for c in run_ctx}
    artifacts = body["pipeline"]["artifacts"]
    types = [a["type"] for a in artifacts]
    assert {"Examples", "Schema", "TransformGraph", "Model", "ModelEvaluation"} <= set(types), types
    for a in artifacts:
        [stored] = store.get_artifacts_by_id([a["id"]])
        assert stored.uri == a["uri"]
    model_artifact = next(a for a in artifacts if a["type"] == "Model" and a["produced_by"].endswith("Trainer"))
    assert model_artifact["uri"] == mv.tags["tfx_model_uri"]
    assert types.index("Examples") < types.index("Model")  # from the data to the model
    # the DVC data version, and a command that restores exactly that file
    examples = next(a for a in artifacts if a["type"] == "Examples" and "dvc_data_version" in a["properties"])
    md5 = yaml.safe_load(stack.data_csv.with_name("data.csv.dvc").read_text())["outs"][0]["md5"]
    assert body["data"]["dvc_data_version"] == md5 == mv.tags["dvc_data_version"] == \
        examples["properties"]["dvc_data_version"]
    assert body["data"]["path"] == examples["properties"]["dvc_data_path"]
    assert body["label"] is None


def test_restore_command_restores_the_data_version(stack, logged, tmp_path):
    data = logged["chain"]["data"]
    proc = subprocess.run(data["restore_command"], shell=True, cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    [restored] = list(tmp_path.iterdir())
    assert hashlib.md5(restored.read_bytes()).hexdigest() == data["dvc_data_version"]


def test_label_arrives_and_says_whether_the_prediction_was_right(stack, logged):
    p = logged["chain"]["prediction"]["tip_probability"]
    _send_label(stack, logged["trip"]["trip_id"], big_tipper=True)
    body = _chain(stack, logged["request_id"], until=lambda b: b["label"] is not None)
    assert body["label"]["big_tipper"] is True and body["label"]["tips"] == 4.0
    assert body["label"]["correct"] is (p >= 0.5)


def test_label_before_its_prediction_joins(stack, champion):
    from tests.conftest import TRIP

    trip_id, rid = f"early-{uuid.uuid4().hex[:8]}", f"early-{uuid.uuid4().hex[:8]}"
    _send_label(stack, trip_id, big_tipper=False)
    answer = _predict(stack, {**TRIP, "trip_id": trip_id}, rid)
    body = _chain(stack, rid, until=lambda b: b["label"] is not None)
    assert body["label"]["big_tipper"] is False
    assert body["label"]["correct"] is (answer["tip_probability"] < 0.5)


def test_unknown_is_404_and_malformed_is_422(stack, logged):
    r = httpx.get(f"{stack.gateway_url}/predictions/never-logged-{uuid.uuid4().hex}", timeout=10)
    assert r.status_code == 404 and "never-logged" in r.json()["detail"]
    for bad in ("bad%20id", "x" * 80, "semi%3Bcolon", "%C3%BC"):
        r = httpx.get(f"{stack.gateway_url}/predictions/{bad}", timeout=10)
        assert r.status_code == 422, (bad, r.text)
        assert r.json()["detail"][0]["field"] == "request_id"


def test_list_with_filters(stack, champion, logged):
    from tests.conftest import TRIP

    since = (datetime.now(timezone.utc) - timedelta(seconds=1)).isoformat()
    rids = [f"list-{i}-{uuid.uuid4().hex[:6]}" for i in range(3)]
    for rid in rids:
        _predict(stack, {**TRIP, "trip_id": rid}, rid)
    for rid in rids:
        _chain(stack, rid)
    version = logged["answer"]["model"]["version"]
    r = httpx.get(f"{stack.gateway_url}/predictions",
                  params={"model_version": version, "since": since, "limit": 2}, timeout=10)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["count"] == 2 and [p["request_id"] for p in body["predictions"]] == rids[:0:-1]
    assert all(p["model_version"] == version for p in body["predictions"])
    assert set(body["predictions"][0]) == {"request_id", "trip_id", "model_version", "variant", "tip_probability",
                                           "timestamp", "shadow", "label_big_tipper", "correct"}
    none = httpx.get(f"{stack.gateway_url}/predictions", params={"model_version": "99999"}, timeout=10).json()
    assert none == {"predictions": [], "count": 0}
    for params, field in (({"since": "last tuesday"}, "since"), ({"limit": 0}, "limit"),
                          ({"limit": "many"}, "limit")):
        r = httpx.get(f"{stack.gateway_url}/predictions", params=params, timeout=10)
        assert r.status_code == 422, r.text
        assert field in r.json()["detail"][0]["field"]


def test_cli_prints_the_chain_and_says_what_to_do_for_an_unknown_id(stack, logged):
    env = {**os.environ, **stack.as_env(), "COLUMNS": "400"}
    proc = subprocess.run([sys.executable, "-m", "taxi_mlops.cli", "lineage", "--request-id", logged["request_id"]],
                          capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    data = logged["chain"]["data"]
    assert data["dvc_data_version"] in proc.stdout and "get-url" in proc.stdout
    assert logged["chain"]["mlflow_run"]["run_id"] in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "taxi_mlops.cli", "lineage", "--request-id", "no-such-id"],
                          capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 1 and "no-such-id" in proc.stderr and "/predictions?limit=5" in proc.stderr


def test_store_worker_restart_loses_nothing(stack, supervisor, champion):
    """Predictions logged while the worker is down are stored once it is back (committed
    offsets), and nothing stored before is lost or duplicated."""
    from tests.conftest import TRIP

    service = next(s for s in services.all_services(stack) if s.name == STORE_SERVICE)
    supervisor.stop(STORE_SERVICE, timeout_s=30)
    try:
        rids = [f"down-{i}-{uuid.uuid4().hex[:6]}" for i in range(3)]
        for rid in rids:
            _predict(stack, {**TRIP, "trip_id": rid}, rid)
    finally:
        supervisor.start(service)
    for rid in rids:
        assert _chain(stack, rid, wait_s=90)["request_id"] == rid
