"""The pipeline compiled for Kubeflow Pipelines v2 (runs in the TFX environment).

    python -m taxi_mlops.pipeline.kfp_compile compile REQUEST.json   # write and check the spec
    python -m taxi_mlops.pipeline.kfp_compile check SPEC.json        # check a spec only

The same ``create_pipeline`` as a local run, compiled by TFX's ``KubeflowV2DagRunner`` into a
``PipelineJob`` JSON: every step a container of one image (``Settings.kfp_image``) running
TFX's v2 executor entry point with the step's executor class. The input folder and the raw
CSV are pipeline parameters (``input_base``, ``data_path``; defaults under
``Settings.kfp_data_root``), the pipeline root is the job's ``gcsOutputDirectory``, which
KFP lets the submitter override. The request (written by ``pipeline/kfp.py``) holds the
``PipelineConfig`` fields, the image, the parameter defaults and the output path.

``check`` parses the job strictly with the KFP protos (``PipelineJob``, then its
``pipelineSpec`` as ``PipelineSpec`` and ``deploymentSpec`` as ``PipelineDeploymentConfig``,
which the job holds as free-form structs): an unknown or misspelt field fails. It prints
each task's executor as JSON.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# pipeline.PIPELINE_NAME in the characters KFP v2 allows ([a-z0-9-]).
KFP_PIPELINE_NAME = "chicago-taxi-tips"


class SpecError(ValueError):
    pass


def build(request: dict) -> dict:
    """Compile the pipeline of ``request`` and write the PipelineJob JSON to its output."""
    from tfx.orchestration import data_types
    from tfx.orchestration.kubeflow.v2 import kubeflow_v2_dag_runner as v2

    from taxi_mlops.pipeline.pipeline import PipelineConfig, create_pipeline

    _kfp_artifact_titles()
    cfg = PipelineConfig(**request["pipeline"])
    params = {name: data_types.RuntimeParameter(name=name, ptype=str, default=default)
              for name, default in request["parameters"].items()}
    with tempfile.TemporaryDirectory() as scratch:
        # KFP brings its own ML Metadata; TFX's sqlite config would create the folder of the
        # path it is given (a gs:// or cluster path here), so it gets a local scratch one.
        pipeline = create_pipeline(dataclasses.replace(
            cfg, pipeline_name=KFP_PIPELINE_NAME, metadata_path=f"{scratch}/unused.sqlite",
            **params))
    # Schema 2.1 (parameterType, parameterValues): what the KFP 2 backend and SDK speak.
    runner = v2.KubeflowV2DagRunner(v2.KubeflowV2DagRunnerConfig(
        default_image=request["image"], use_pipeline_spec_2_1=True,
        display_name=request.get("display_name")))
    job = runner.run(pipeline, parameter_values=request["parameters"], write_out=False)
    # The defaults in the spec as well, so a run submitted from the spec alone has them.
    root = job["pipelineSpec"]["root"]["inputDefinitions"]["parameters"]
    for name, default in request["parameters"].items():
        root[name]["defaultValue"] = default
    output = Path(request["output"])
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(job, indent=2, sort_keys=True))
    return job


def _kfp_artifact_titles() -> None:
    """Give our artifact types (which declare properties) an instance schema KFP v2 can carry.

    TFX 1.16's v2 compiler gives a custom type the generic ``Artifact`` schema, with no
    properties, and so refuses a type that declares any. Ours get the shape of TFX's own
    first-party schemas (``artifact_types/*.yaml``): a title and their typed properties. The
    title is the import path the step's container rebuilds the artifact from
    (``taxi_kfp_types.<name>``, the only form with one dot our classes have). Only in this
    compiling process: local runs are untouched.
    """
    import yaml
    from tfx.orchestration.kubeflow.v2 import compiler_utils
    from tfx.types.artifact import PropertyType

    import taxi_kfp_types

    yaml_type = {PropertyType.INT: "integer", PropertyType.FLOAT: "number",
                 PropertyType.STRING: "string"}
    ours = {getattr(taxi_kfp_types, name): f"{taxi_kfp_types.__name__}.{name}"
            for name in ("FeastFeatureTables", "MlflowModelVersion")}
    generic = compiler_utils.get_artifact_schema

    def schema(artifact_type):
        if artifact_type not in ours:
            return generic(artifact_type)
        return yaml.safe_dump({
            "title": ours[artifact_type], "type": "object",
            "properties": {name: {"type": yaml_type[prop.type]}
                           for name, prop in artifact_type.PROPERTIES.items()},
        }, sort_keys=False)

    compiler_utils.get_artifact_schema = schema


def parse(doc: dict):
    """The job, its spec and its deployment config, each parsed strictly."""
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2 as pb

    try:
        job = json_format.ParseDict(doc, pb.PipelineJob())
        spec = json_format.ParseDict(doc["pipelineSpec"], pb.PipelineSpec())
        deployment = json_format.ParseDict(doc["pipelineSpec"]["deploymentSpec"],
                                           pb.PipelineDeploymentConfig())
    except (json_format.ParseError, KeyError, TypeError) as exc:
        raise SpecError(f"not a valid KFP PipelineJob: {exc}") from exc
    return job, spec, deployment


def executors(doc: dict) -> dict:
    """Each task of the root DAG -> its component, executor kind, image and executor class."""
    job, spec, deployment = parse(doc)
    out = {}
    for name, task in spec.root.dag.tasks.items():
        component = spec.components.get(task.component_ref.name)
        if component is None:
            raise SpecError(f"task {name} refers to a missing component {task.component_ref.name}")
        executor = deployment.executors.get(component.executor_label)
        if executor is None:
            raise SpecError(f"task {name}: no executor {component.executor_label!r} in deploymentSpec")
        entry = {"component": task.component_ref.name, "executor": component.executor_label,
                 "depends_on": sorted(task.dependent_tasks)}
        if executor.HasField("importer"):
            entry["kind"] = "importer"
        else:
            container = executor.container
            entry.update(kind="container", image=container.image,
                         command=list(container.command), args=list(container.args),
                         executor_class=_executor_class(list(container.args)))
        out[name] = entry
    return {"pipeline_root": job.runtime_config.gcs_output_directory,
            "parameters": {k: pb_type_name(v)
                           for k, v in spec.root.input_definitions.parameters.items()},
            "parameter_defaults": {k: v.default_value.string_value
                                   for k, v in spec.root.input_definitions.parameters.items()},
            "parameter_values": {k: v.string_value
                                 for k, v in job.runtime_config.parameter_values.items()},
            "schema_version": spec.schema_version, "sdk_version": spec.sdk_version,
            "tasks": out}


def pb_type_name(parameter) -> str:
    from kfp.pipeline_spec import pipeline_spec_pb2 as pb

    return pb.ParameterType.ParameterTypeEnum.Name(parameter.parameter_type)


def _executor_class(args: list[str]) -> str:
    """The executor class a TFX v2 container runs: ``--executor_class_path`` or, for a
    Beam or Python executor, inside ``--json_serialized_executable_spec``."""
    for flag, value in zip(args, args[1:]):
        if flag == "--executor_class_path":
            return value
        if flag == "--json_serialized_executable_spec":
            spec = json.loads(value)
            python_spec = spec.get("pythonExecutorSpec") or spec.get("python_executor_spec") or spec
            return python_spec.get("classPath") or python_spec.get("class_path", "")
    return ""


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[1] not in ("compile", "check"):
        print(__doc__, file=sys.stderr)
        return 2
    if argv[1] == "compile":
        request = json.loads(Path(argv[2]).read_text())
        build(request)
        path = Path(request["output"])
    else:
        path = Path(argv[2])
    try:
        summary = executors(json.loads(path.read_text()))
    except (SpecError, ValueError) as exc:
        print(f"error: {path}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
