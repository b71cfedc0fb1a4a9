"""Pipeline run metrics: built from the launcher's progress events, pushed when a run ends.

Pure functions on canned events (the format ``pipeline/run.py`` prints and the launcher
reads), plus the two network paths against a real Pushgateway binary when it is installed:
a failed run pushes ``last_run_success 0`` and still raises; a gateway that is down costs a
warning only.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from taxi_mlops.data.versioning import DataVersionError
from taxi_mlops.pipeline import launcher, metrics
from taxi_mlops.settings import Settings
from taxi_mlops.stack.process import free_port

# What the launcher sees during a run, with the (monotonic) time each event arrived.
EVENTS = [
    (100.0, {"step": "data", "state": "running"}),
    (102.5, {"step": "data", "state": "finished", "data_version": "abc"}),
    (103.0, {"components": ["DvcCsvExampleGen", "Transform", "Trainer", "Evaluator"]}),
    (103.0, {"component": "DvcCsvExampleGen", "state": "running"}),
    (107.0, {"component": "DvcCsvExampleGen", "state": "finished"}),
    (107.0, {"component": "Transform", "state": "running"}),
    (128.0, {"component": "Transform", "state": "finished"}),
    (128.0, {"component": "Trainer", "state": "running"}),
    (152.5, {"component": "Trainer", "state": "finished"}),
    (152.5, {"component": "Evaluator", "state": "running"}),  # never finishes: the run failed
    (160.0, {"done": True}),
]
RUN_METRICS = {"eval_binary_accuracy": 0.885, "eval_auc": 0.944, "eval_precision": 0.715,
               "eval_recall": 0.812, "train_loss": 0.3, "eval_": 1.0, "eval_bad": float("nan")}


def _samples(registry) -> dict[tuple[str, tuple], float]:
    from prometheus_client import generate_latest

    out = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_component_durations_from_progress_events():
    assert metrics.component_durations(EVENTS) == {
        "data": 2.5, "DvcCsvExampleGen": 4.0, "Transform": 21.0, "Trainer": 24.5}


def test_timer_ignores_unknown_and_unmatched_events():
    timer = metrics.RunTimer(clock=iter([0.0, 1.0, 5.0, 7.0]).__next__)
    timer.observe({"component": "Pusher", "state": "finished"})  # never started: ignored
    timer.observe({"components": ["Pusher"]})
    timer.observe({"component": "Pusher", "state": "running"})
    timer.observe({"component": "Pusher", "state": "finished"})
    assert timer.durations == {"Pusher": 4.0}
    timer.observe({"component": "MlflowLogger", "state": "running"}, at=6.0)
    assert timer.until_now() == {"Pusher": 4.0, "MlflowLogger": 1.0}


def test_eval_metrics_keep_finite_eval_values_without_prefix():
    assert metrics.eval_metrics(RUN_METRICS) == {
        "binary_accuracy": 0.885, "auc": 0.944, "precision": 0.715, "recall": 0.812}


def test_successful_run_families():
    registry = metrics.build_registry(
        success=True, run_seconds=60.0, finished_at=1_700_000_000.0,
        component_seconds=metrics.component_durations(EVENTS),
        eval_metrics=metrics.eval_metrics(RUN_METRICS))
    samples = _samples(registry)
    assert samples[("taxi_pipeline_last_run_success", ())] == 1
    assert samples[("taxi_pipeline_run_duration_seconds", ())] == 60.0
    assert samples[("taxi_pipeline_last_run_timestamp_seconds", ())] == 1_700_000_000.0
    assert samples[("taxi_pipeline_component_duration_seconds", (("component", "Transform"),))] == 21.0
    assert samples[("taxi_pipeline_eval_metric", (("metric", "binary_accuracy"),))] == 0.885
    assert samples[("taxi_pipeline_eval_metric", (("metric", "auc"),))] == 0.944
    assert {name for name, _ in samples} == {
        "taxi_pipeline_component_duration_seconds", "taxi_pipeline_run_duration_seconds",
        "taxi_pipeline_last_run_success", "taxi_pipeline_last_run_timestamp_seconds",
        "taxi_pipeline_eval_metric"}


def test_failed_run_reports_zero_and_no_eval_metrics():
    registry = metrics.build_registry(
        success=False, run_seconds=52.5, finished_at=1_700_000_000.0,
        component_seconds=metrics.component_durations(EVENTS[:6]),
        eval_metrics={"binary_accuracy": 0.9})
    samples = _samples(registry)
    assert samples[("taxi_pipeline_last_run_success", ())] == 0
    assert samples[("taxi_pipeline_run_duration_seconds", ())] == 52.5
    assert not any(name == "taxi_pipeline_eval_metric" for name, _ in samples)
    assert samples[("taxi_pipeline_component_duration_seconds", (("component", "DvcCsvExampleGen"),))] == 4.0


def test_push_to_a_gateway_that_is_down_warns_and_returns(caplog):
    registry = metrics.build_registry(success=True, run_seconds=1.0, finished_at=time.time(),
                                      component_seconds={})
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger=metrics.__name__):
        assert metrics.push(f"http://127.0.0.1:{free_port()}", registry, timeout=2.0) is False
    assert time.monotonic() - started < 3.0
    assert "Pushgateway" in caplog.text


@pytest.fixture
def pushgateway():
    binary = shutil.which("prometheus-pushgateway")
    if binary is None:
        pytest.skip("prometheus-pushgateway is not installed")
    port = free_port()
    proc = subprocess.Popen([binary, f"--web.listen-address=127.0.0.1:{port}", "--log.format=json"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                if httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
        yield port, url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _gateway_samples(url: str) -> dict[tuple[str, tuple], float]:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    return {(s.name, tuple(sorted((k, v) for k, v in s.labels.items() if k not in ("instance",)))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples
            if s.name.startswith("taxi_pipeline_")}


def test_failed_run_pushes_zero_and_still_raises(pushgateway, tmp_path):
    port, url = pushgateway
    # A previous successful run's group, as the Pushgateway holds it.
    metrics.push(url, metrics.build_registry(
        success=True, run_seconds=60.0, finished_at=1_700_000_000.0,
        component_seconds={"Trainer": 24.0}, eval_metrics={"binary_accuracy": 0.885}))
    settings = Settings(state_dir=tmp_path / "state", data_csv=tmp_path / "missing.csv",
                        pushgateway_port=port)
    with pytest.raises(DataVersionError):
        launcher.run_training(settings)
    samples = _gateway_samples(url)
    job = ("job", "taxi_pipeline")
    assert samples[("taxi_pipeline_last_run_success", (job,))] == 0
    assert samples[("taxi_pipeline_last_run_timestamp_seconds", (job,))] > 1_700_000_000.0
    assert samples[("taxi_pipeline_run_duration_seconds", (job,))] < 60.0
    # the failed run replaced the families it pushed and kept the last evaluation on display
    assert samples[("taxi_pipeline_eval_metric", (job, ("metric", "binary_accuracy")))] == 0.885
    durations = {labels: v for (name, labels), v in samples.items()
                 if name == "taxi_pipeline_component_duration_seconds"}
    assert list(durations) == [(("component", "data"), job)]  # the step that failed, not Trainer
