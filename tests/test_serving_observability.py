"""Observability of serving and training against the real stack.

The model server's /metrics carries KServe's own families and ours, labelled with the
version it loaded; its log file is JSON lines with the caller's request id; the session's
training run left its metrics in the Pushgateway.
"""

from __future__ import annotations

import json
import time
import uuid

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from taxi_mlops.features import schema
from taxi_mlops.serving.metrics import ModelServerMetrics


def _samples(text: str) -> dict[tuple[str, frozenset], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _scrape(settings) -> dict[tuple[str, frozenset], float]:
    r = httpx.get(f"{settings.model_server_url}/metrics", timeout=5)
    assert r.status_code == 200, r.text
    return _samples(r.text)


def _inputs(trip: dict) -> list[dict]:
    values = schema.model_inputs(trip, {"area_trip_count": 900.0, "area_avg_fare": 11.0,
                                        "area_tip_rate": 0.3})
    return [{"name": name, "datatype": dt, "shape": [1], "data": [values[name]]}
            for name, dt in schema.SERVING_DTYPES.items()]


def _infer(settings, body: dict, request_id: str) -> httpx.Response:
    return httpx.post(f"{settings.model_server_url}/v2/models/{settings.model_name}/infer",
                      json=body, headers={"X-Request-ID": request_id}, timeout=10)


def _labels(**labels) -> frozenset:
    return frozenset(labels.items())


# ---- model server --------------------------------------------------------------------------
@pytest.mark.slow
def test_model_server_metrics_carry_kserve_families_and_ours_by_version(stack, champion, trip):
    name, version = stack.model_name, champion.version
    ours = _labels(model_name=name, model_version=version)
    before = _scrape(stack)
    for i in range(3):
        r = _infer(stack, {"inputs": _inputs(trip)}, f"metrics-{i}-{uuid.uuid4().hex[:8]}")
        assert r.status_code == 200, r.text
    bad = _infer(stack, {"inputs": _inputs(trip)[1:]}, f"metrics-bad-{uuid.uuid4().hex[:8]}")
    assert bad.status_code == 400
    after = _scrape(stack)

    def moved(sample: str, labels: frozenset) -> float:
        return after[(sample, labels)] - before.get((sample, labels), 0.0)

    # KServe's own families (labelled by model name only, upstream)
    assert moved("request_predict_seconds_count", _labels(model_name=name)) >= 3
    assert moved("request_preprocess_seconds_count", _labels(model_name=name)) >= 4
    # ours, by version
    assert moved("taxi_model_server_inference_seconds_count", ours) >= 4
    assert moved("taxi_model_server_inference_seconds_sum", ours) > 0
    assert ("taxi_model_server_inference_seconds_bucket", ours | {("le", "0.001")}) in after
    assert moved("taxi_model_server_requests_total", ours | {("status", "ok")}) >= 3
    assert moved("taxi_model_server_requests_total", ours | {("status", "error")}) >= 1
    assert after[("taxi_model_info", ours | {("alias", "champion")})] == 1
    assert after[("taxi_model_eval_accuracy", ours)] == pytest.approx(
        float(champion.tags["eval_binary_accuracy"]))
    # Feast's feature-server families (imported through an MLflow plugin) are not ours to serve
    assert not any(sample.startswith("feast_") for sample, _ in after)


@pytest.mark.slow
def test_model_server_logs_json_lines_with_the_request_id_and_version(stack, champion, trip):
    request_id = f"obs-{uuid.uuid4().hex}"
    assert _infer(stack, {"inputs": _inputs(trip)}, request_id).status_code == 200
    log_path = stack.logs_dir / "model_server.log"
    deadline = time.monotonic() + 10
    while True:
        lines = log_path.read_text().splitlines()
        mine = [json.loads(line) for line in lines if request_id in line]
        if mine or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert len(mine) == 1, mine
    [entry] = mine
    assert entry["request_id"] == request_id and entry["model_version"] == champion.version
    assert entry["component"] == "model_server" and entry["status"] == "ok"
    assert entry["ts"].endswith("Z") and entry["duration_ms"] > 0
    # everything the process wrote is JSON, KServe's and uvicorn's records included
    records = [json.loads(line) for line in lines if line.strip()]
    loggers = {r.get("logger") for r in records}
    assert {"kserve", "uvicorn.error", "taxi_mlops.serving.model"} <= loggers


# ---- training -------------------------------------------------------------------------------
@pytest.mark.slow
def test_training_run_metrics_are_in_the_pushgateway(stack, trained, champion):
    r = httpx.get(f"{stack.pushgateway_url}/metrics", timeout=5)
    assert r.status_code == 200
    samples = {(name, labels - {("instance", "")}): v for (name, labels), v in _samples(r.text).items()
               if name.startswith("taxi_pipeline_")}
    job = _labels(job="taxi_pipeline")
    assert samples[("taxi_pipeline_last_run_success", job)] == 1
    run_seconds = samples[("taxi_pipeline_run_duration_seconds", job)]
    # The session's cold run, or a later (cached, so shorter) rerun by another test.
    assert 0 < run_seconds <= trained["result"].seconds * 1.01
    assert time.time() - samples[("taxi_pipeline_last_run_timestamp_seconds", job)] < 3600
    durations = {dict(labels)["component"]: v for (name, labels), v in samples.items()
                 if name == "taxi_pipeline_component_duration_seconds"}
    assert {"data", "Transform", "Trainer", "Evaluator", "MlflowLogger"} <= set(durations)
    assert 0 < sum(durations.values()) <= run_seconds
    evals = {dict(labels)["metric"]: v for (name, labels), v in samples.items()
             if name == "taxi_pipeline_eval_metric"}
    assert evals["binary_accuracy"] == pytest.approx(float(champion.tags["eval_binary_accuracy"]))
    assert {"auc", "precision", "recall"} <= set(evals)


# ---- the metric objects themselves (no stack) ----------------------------------------------
def test_model_server_metrics_follow_the_loaded_version():
    registry = CollectorRegistry()
    metrics = ModelServerMetrics(registry)
    recorder = metrics.loaded("m", "1", "champion", {"eval_binary_accuracy": "0.88"})
    recorder.record(0.004, ok=True)
    recorder.record(0.2, ok=False)
    metrics.loaded("m", "2", "champion", {})  # a reload replaces what is published
    samples = _samples(generate_latest(registry).decode())
    v1 = _labels(model_name="m", model_version="1")
    assert samples[("taxi_model_server_inference_seconds_count", v1)] == 2
    assert samples[("taxi_model_server_inference_seconds_bucket", v1 | {("le", "0.005")})] == 1
    assert samples[("taxi_model_server_requests_total", v1 | {("status", "ok")})] == 1
    assert samples[("taxi_model_server_requests_total", v1 | {("status", "error")})] == 1
    assert samples[("taxi_model_info", _labels(model_name="m", model_version="2", alias="champion"))] == 1
    assert ("taxi_model_info", v1 | {("alias", "champion")}) not in samples
    assert not any(name == "taxi_model_eval_accuracy" for name, _ in samples)
