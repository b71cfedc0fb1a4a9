"""MlflowLogger's work: one MLflow run per training, one registry version per blessed model.

A blessed model becomes ``champion`` when the registry has none, otherwise ``challenger``;
promotion is a separate, deliberate step. Registry stages are deprecated and not used.
"""

import json
import os
from typing import Any, Dict, List

from absl import logging
from tfx import types
from tfx.dsl.components.base import base_executor
from tfx.types import artifact_utils
from tfx.utils import path_utils

CHAMPION = "champion"
CHALLENGER = "challenger"


def _eval_metrics(evaluation_uri: str) -> Dict[str, float]:
    """Overall-slice metrics of the candidate model, from TFMA's output."""
    import tensorflow_model_analysis as tfma

    result = tfma.load_eval_result(evaluation_uri, model_name="candidate")
    if result is None or not result.slicing_metrics:
        result = tfma.load_eval_result(evaluation_uri)
    metrics = {}
    for slice_key, by_output in result.slicing_metrics:
        if slice_key != ():
            continue
        for values in by_output.values():
            for sub in values.values():
                for name, value in sub.items():
                    if "doubleValue" in value:
                        metrics[f"eval_{name}"] = float(value["doubleValue"])
    return metrics


class Executor(base_executor.BaseExecutor):
    def Do(self, input_dict: Dict[str, List[types.Artifact]],
           output_dict: Dict[str, List[types.Artifact]], exec_properties: Dict[str, Any]) -> None:
        import mlflow
        from mlflow import MlflowClient

        examples = artifact_utils.get_single_instance(input_dict["examples"])
        model = artifact_utils.get_single_instance(input_dict["model"])
        model_run = artifact_utils.get_single_instance(input_dict["model_run"])
        evaluation = artifact_utils.get_single_instance(input_dict["evaluation"])
        blessing = artifact_utils.get_single_instance(input_dict["blessing"])
        registered = artifact_utils.get_single_instance(output_dict["registered_model"])

        mlflow.set_tracking_uri(exec_properties["tracking_uri"])
        mlflow.set_experiment(exec_properties["experiment_name"])
        client = MlflowClient()
        name = exec_properties["model_name"]
        blessed = bool(blessing.get_int_custom_property("blessed"))
        data_version = examples.get_string_custom_property("dvc_data_version")
        serving_dir = path_utils.serving_model_path(model.uri)

        existing = [v for v in client.search_model_versions(f"name='{name}'")
                    if (v.tags or {}).get("tfx_model_uri") == model.uri]
        if existing:
            # The Trainer's output came from TFX's cache: this model is registered already.
            version = existing[0]
            registered.run_id = version.run_id or ""
            registered.model_name = name
            registered.version = int(version.version)
            registered.alias = ",".join(getattr(version, "aliases", []) or [])
            logging.info("MlflowLogger: model %s already registered as version %s; nothing logged",
                         model.uri, version.version)
            return

        with open(os.path.join(model_run.uri, "history.json")) as f:
            run_info = json.load(f)
        metrics = _eval_metrics(evaluation.uri)

        with mlflow.start_run(run_name=f"tfx-{model.id}") as run:
            mlflow.log_params(run_info["params"])
            for key, values in run_info["history"].items():
                for step, value in enumerate(values):
                    mlflow.log_metric(f"train_{key}", value, step=step)
            mlflow.log_metrics(metrics)
            mlflow.set_tags({
                "dvc_data_version": data_version,
                "tfx_model_uri": model.uri,
                "tfx_examples_uri": examples.uri,
                "blessed": str(blessed).lower(),
                "baseline_version": exec_properties.get("baseline_version") or "",
            })
            mlflow.log_artifacts(serving_dir, artifact_path="model")
            artifact_uri = f"{run.info.artifact_uri}/model"
            run_id = run.info.run_id
        logging.info("MlflowLogger: run %s logged, metrics %s", run_id, metrics)

        registered.set_string_custom_property("run_id", run_id)
        registered.run_id = run_id
        registered.model_name = name
        if not blessed:
            registered.version = 0
            registered.alias = ""
            logging.info("MlflowLogger: model not blessed, not registered")
            return
        try:
            client.get_registered_model(name)
        except mlflow.exceptions.MlflowException:
            client.create_registered_model(
                name, description="Chicago Taxi big-tipper classifier (TFX / Keras SavedModel)."
            )
        version = client.create_model_version(
            name, source=artifact_uri, run_id=run_id,
            tags={"dvc_data_version": data_version, "tfx_model_uri": model.uri,
                  **{k: str(v) for k, v in metrics.items()}},
        )
        try:
            client.get_model_version_by_alias(name, CHAMPION)
            alias = CHALLENGER
        except mlflow.exceptions.MlflowException:
            alias = CHAMPION
        client.set_registered_model_alias(name, alias, version.version)
        registered.version = int(version.version)
        registered.alias = alias
        logging.info("MlflowLogger: registered %s version %s as %s", name, version.version, alias)
