"""The whole pipeline with its Beam steps on the multi-process DirectRunner (issue 12, part 3).

Uses the session's Redis, MLflow and Feast (``base_stack``) but its own state directory
(pipeline root, ML Metadata), a scratch model name and experiment, and no Pushgateway: the
stack's model, aliases, runs and pushed figures stay as they were. The scratch model and
experiment are deleted afterwards. Timings: ``bench/pipeline_runners.py``.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from taxi_mlops import security
from taxi_mlops.features import store
from taxi_mlops.pipeline import launcher, runners
from taxi_mlops.registry import models
from taxi_mlops.stack.process import free_port

pytestmark = pytest.mark.slow

SCRATCH_MODEL = "runners-test-chicago-taxi-tips"
SCRATCH_EXPERIMENT = "runners-test-training"
# ML Metadata's execution states (metadata_store_pb2.Execution.State), without importing it.
COMPLETE, CACHED = 3, 5


def _aliases(settings) -> dict:
    client = models.client(settings.mlflow_tracking_uri)
    return {v.version: sorted(getattr(v, "aliases", []) or [])
            for v in client.search_model_versions(f"name='{settings.model_name}'")}


@pytest.fixture
def multi_process_settings(base_stack, settings, tmp_path):
    closed = free_port()  # nothing listens there: the run pushes no figures
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", closed)) != 0
    scratch = settings.model_copy(update={
        "state_dir": tmp_path / "state", "model_name": SCRATCH_MODEL,
        **security.shared_secrets(settings),  # its own state dir would generate others
        "mlflow_external_uri": settings.mlflow_tracking_uri, "pushgateway_port": closed,
        "beam_runner": runners.MULTI_PROCESS, "beam_workers": 2})
    store.apply(scratch)
    yield scratch
    client = models.client(settings.mlflow_tracking_uri)
    if client.search_registered_models(f"name='{SCRATCH_MODEL}'"):
        client.delete_registered_model(SCRATCH_MODEL)
    experiment = client.get_experiment_by_name(SCRATCH_EXPERIMENT)
    if experiment is not None:
        client.delete_experiment(experiment.experiment_id)


def test_whole_pipeline_on_the_multi_process_direct_runner(multi_process_settings, settings):
    before = _aliases(settings)
    events: list[dict] = []
    result = launcher.run_training(multi_process_settings, progress=events.append,
                                   experiment_name=SCRATCH_EXPERIMENT)

    # The Beam steps ran on the DirectRunner in 2 worker processes, as configured.
    log = Path(result.log_path).read_text()
    assert "--direct_running_mode=multi_processing" in log and "--direct_num_workers=2" in log
    assert "SubprocessSdkWorker" in log or "sdk_worker_main" in log, "no SDK worker process started"
    [header] = [e for e in events if "components" in e]
    assert header["beam_runner"] == runners.MULTI_PROCESS

    # Every component executed and left its artifacts in ML Metadata.
    from taxi_mlops.lineage import mlmd

    mstore = mlmd.open_store(multi_process_settings.mlmd_path)
    by_node = {c.name.split(".")[-1]: c for c in mstore.get_contexts_by_type("node")}
    assert set(result.components) <= set(by_node), (result.components, sorted(by_node))
    for component in result.components:
        executions = mstore.get_executions_by_context(by_node[component].id)
        assert executions and executions[-1].last_known_state in (COMPLETE, CACHED), component
        outputs = [e for e in mstore.get_events_by_execution_ids([executions[-1].id])
                   if e.type == e.OUTPUT]
        assert outputs, f"{component} recorded no output artifact"
    examples = mlmd.latest(mstore, "Examples")
    assert {p.name for p in Path(examples.uri).iterdir()} >= {"Split-train", "Split-eval"}

    # Blessed, pushed and registered under the scratch name; the stack's aliases unchanged.
    assert result.model_version >= 1
    scratch = models.by_alias(settings.mlflow_tracking_uri, SCRATCH_MODEL, models.CHAMPION)
    assert scratch is not None and int(scratch.version) == result.model_version
    assert result.eval_metrics["auc"] > 0.85, result.eval_metrics
    pushed = mlmd.latest(mstore, "PushedModel")
    assert pushed.custom_properties["pushed"].int_value == 1
    assert _aliases(settings) == before
