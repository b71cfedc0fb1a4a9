"""`taxi-mlops pipeline compile --target kfp`: the same pipeline as a Kubeflow Pipelines v2 job.

The CLI compiles ``create_pipeline`` with TFX's KubeflowV2DagRunner; the spec is parsed back
strictly with the KFP protos in the TFX environment (unknown fields fail). No cluster here:
what is checked is the spec, not a run. About 15 s.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
from pathlib import Path

import pytest

from taxi_mlops import paths
from taxi_mlops.pipeline import kfp
from taxi_mlops.settings import Settings

CLI = str(paths.PROJECT_ROOT / ".venv" / "bin" / "taxi-mlops")
# Every component of the pipeline (no champion in a cluster: no importer) and its executor.
EXECUTORS = {
    "DvcCsvExampleGen": "taxi_mlops.pipeline.components.dvc_example_gen.executor.Executor",
    "StatisticsGen": "tfx.components.statistics_gen.executor.Executor",
    "SchemaGen": "tfx.components.schema_gen.executor.Executor",
    "ExampleValidator": "tfx.components.example_validator.executor.Executor",
    "Transform": "tfx.components.transform.executor.Executor",
    "Trainer": "tfx.components.trainer.executor.GenericExecutor",
    "Evaluator": "tfx.components.evaluator.executor.Executor",
    "SliceGate": "taxi_mlops.pipeline.components.slice_gate.executor.Executor",
    "Pusher": "tfx.components.pusher.executor.Executor",
    "FeastPusher": "taxi_mlops.pipeline.components.feast_pusher.executor.Executor",
    "MlflowLogger": "taxi_mlops.pipeline.components.mlflow_logger.executor.Executor",
}
IMAGE = "registry.example.com/taxi-mlops-pipeline:0.1.0"


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("kfp")
    out = tmp / "job.json"
    env = {**os.environ, "TAXI_STATE_DIR": str(tmp / "state"), "TAXI_KFP_IMAGE": IMAGE,
           "TAXI_BEAM_RUNNER": "direct-multi-process"}
    proc = subprocess.run([CLI, "pipeline", "compile", "--target", "kfp", "--output", str(out),
                           "--pipeline-root", "gs://taxi-bucket/root",
                           "--data-root", "/mnt/pvc/data"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert str(out) in proc.stdout.replace("\n", "")
    return {"path": out, "doc": json.loads(out.read_text()), "stdout": proc.stdout,
            "summary": kfp.check_spec(Settings(), out)}


def test_every_component_is_a_task_with_its_executor_in_our_image(compiled):
    tasks = compiled["summary"]["tasks"]
    assert set(tasks) == set(EXECUTORS)
    for name, executor_class in EXECUTORS.items():
        task = tasks[name]
        assert task["kind"] == "container", name
        assert task["image"] == IMAGE, name
        assert task["executor_class"] == executor_class, name
        assert task["command"][-1] == "tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor"
        assert name in compiled["stdout"]
    # the DAG is the local one
    assert tasks["Trainer"]["depends_on"] == ["SchemaGen", "Transform"]
    assert tasks["FeastPusher"]["depends_on"] == ["Pusher"]
    # FeastPusher and the MlflowLogger run the platform's code with the image's platform env
    for name in ("FeastPusher", "MlflowLogger"):
        params = compiled["doc"]["pipelineSpec"]["root"]["dag"]["tasks"][name]["inputs"]["parameters"]
        assert Settings().kfp_platform_python in json.dumps(params["platform_python"]), params.get("platform_python")
    # Beam steps carry the configured runner (here TAXI_BEAM_RUNNER=direct-multi-process)
    assert "--direct_running_mode=multi_processing" in tasks["Transform"]["args"]


def test_paths_are_parameters_with_defaults_and_the_root_is_overridable(compiled):
    summary, doc = compiled["summary"], compiled["doc"]
    assert summary["schema_version"] == "2.1.0"
    assert summary["pipeline_root"] == "gs://taxi-bucket/root"
    assert summary["parameters"] == {"input_base": "STRING", "data_path": "STRING"}
    assert summary["parameter_defaults"] == {"input_base": "/mnt/pvc/data/input",
                                             "data_path": "/mnt/pvc/data/chicago_taxi/data.csv"}
    example_gen = doc["pipelineSpec"]["root"]["dag"]["tasks"]["DvcCsvExampleGen"]
    assert example_gen["inputs"]["parameters"]["input_base"] == {"componentInputParameter": "input_base"}
    # our custom artifact types are titled by an importable path, with their properties
    feast = doc["pipelineSpec"]["components"]["FeastPusher"]["outputDefinitions"]
    schema = feast["artifacts"]["feature_tables"]["artifactType"]["instanceSchema"]
    assert schema.startswith("title: taxi_kfp_types.FeastFeatureTables") and "feature_service" in schema


@pytest.mark.parametrize("where", ["job", "spec", "deployment"])
def test_a_misspelt_field_fails_the_strict_parser(compiled, tmp_path, where):
    doc = copy.deepcopy(compiled["doc"])
    if where == "job":
        doc["runtimeConfig"]["gcsOutputDirectroy"] = doc["runtimeConfig"].pop("gcsOutputDirectory")
    elif where == "spec":
        task = doc["pipelineSpec"]["root"]["dag"]["tasks"]["Trainer"]
        task["componentRefs"] = task.pop("componentRef")
    else:
        container = doc["pipelineSpec"]["deploymentSpec"]["executors"]["Trainer_executor"]["container"]
        container["imagee"] = container.pop("image")
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(doc))
    misspelt = {"job": "gcsOutputDirectroy", "spec": "componentRefs", "deployment": "imagee"}[where]
    with pytest.raises(kfp.CompileError, match=misspelt):
        kfp.check_spec(Settings(), broken)


def test_a_dask_runner_is_refused_for_kfp_with_the_fix(tmp_path):
    env = {**os.environ, "TAXI_STATE_DIR": str(tmp_path), "TAXI_BEAM_RUNNER": "dask"}
    proc = subprocess.run([CLI, "pipeline", "compile", "--target", "kfp",
                           "--output", str(tmp_path / "x.json")],
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 1
    assert "direct-multi-process" in proc.stdout + proc.stderr
    assert not Path(tmp_path / "x.json").exists()
