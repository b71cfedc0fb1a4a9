"""MlflowLogger's work: one MLflow run per training, one registry version per blessed model.

A blessed model becomes ``champion`` when the registry has none, otherwise ``challenger``;
promotion is a separate, deliberate step. Every run also gets the metrics of each evaluation
slice (``slice_<feature>_<value>_<metric>``), ``evaluation/slice_metrics.json``, the
calibration data (``evaluation/calibration.json``) and its plot (``calibration_plot.png``,
drawn by the platform's Python), and the slice table in the model card. The run and the
registered version are tagged ``model_family`` (``dnn`` / ``linear``, from the Trainer's
run info) so families trained on the same data can be told apart in the registry. Registry
stages are deprecated and not used.
"""

import contextlib
import json
import math
import os
import subprocess
import tempfile
from typing import Any, Dict, Iterator, List, Optional

from absl import logging
from tfx import types
from tfx.dsl.components.base import base_executor
from tfx.types import artifact_utils
from tfx.utils import path_utils

from taxi_mlops import paths
from taxi_mlops.pipeline import slicing
from taxi_mlops.pipeline.components import eval_result
from taxi_mlops.pipeline.components.slice_gate import executor as slice_gate_executor
from taxi_mlops.registry import mlflow_model

CHAMPION = "champion"
CHALLENGER = "challenger"


# Per-slice metrics logged to MLflow (all of TFMA's are in the slice_metrics.json artifact).
SLICE_METRICS = ("example_count", "positives", "negatives", "auc", "binary_accuracy",
                 "brier_score", "expected_calibration_error")
# Overall-slice figures that are slice bookkeeping, not evaluation metrics.
NOT_EVAL = ("positives", "negatives")
PLOT_TIMEOUT_S = 120


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _eval_metrics(table: Dict[str, Dict[str, float]]) -> Dict[str, float]:
    """Overall-slice metrics of the candidate model (Brier score and ECE included)."""
    return {f"eval_{name}": value for name, value in table.get(slicing.OVERALL, {}).items()
            if name not in NOT_EVAL and _finite(value)}


def _slice_metrics(table: Dict[str, Dict[str, float]]) -> Dict[str, float]:
    """``slice_<feature>_<value>_<metric>`` for every slice but the overall one (NaN left out)."""
    return {slicing.metric_key(name, metric): row[metric]
            for name, row in table.items() if name != slicing.OVERALL
            for metric in SLICE_METRICS if _finite(row.get(metric))}


def _json_safe(value):
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _calibration_doc(table, buckets) -> dict:
    """What the calibration plot is drawn from: each slice's ECE bins and TFMA buckets."""
    return {"ece_bins": slicing.ECE_BINS,
            "slices": {name: {"examples": table.get(name, {}).get("example_count", 0.0),
                              "brier_score": table.get(name, {}).get("brier_score"),
                              "expected_calibration_error":
                                  table.get(name, {}).get("expected_calibration_error"),
                              "bins": slicing.calibration_bins(rows), "buckets": rows}
                       for name, rows in buckets.items()}}


def _start_calibration_plot(platform_python: str, calibration_path: str,
                            png_path: str) -> Optional[subprocess.Popen]:
    """matplotlib lives in the platform environment: draw there, while this process logs the
    model (0.7 s of a fresh interpreter, overlapped). A plot that cannot be drawn costs a
    warning, never the run."""
    if not platform_python:
        logging.warning("MlflowLogger: no platform_python, no calibration plot")
        return None
    env = {**os.environ, "PYTHONPATH": str(paths.PROJECT_ROOT / "src")}
    try:
        return subprocess.Popen([platform_python, "-m", "taxi_mlops.pipeline.calibration_plot",
                                 calibration_path, png_path],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    except OSError as exc:
        logging.warning("MlflowLogger: calibration plot not drawn: %s", exc)
        return None


def _finish_calibration_plot(proc: Optional[subprocess.Popen]) -> bool:
    if proc is None:
        return False
    png_path = proc.args[-1]  # the output path _start_calibration_plot gave the drawing
    try:
        _, stderr = proc.communicate(timeout=PLOT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        logging.warning("MlflowLogger: calibration plot not drawn within %s s", PLOT_TIMEOUT_S)
        return False
    if proc.returncode != 0 or not os.path.exists(png_path):
        logging.warning("MlflowLogger: calibration plot failed (exit %s): %s",
                        proc.returncode, (stderr or "")[-2000:])
        return False
    return True


@contextlib.contextmanager
def _slices_written(folder: str, table, buckets, gate_report,
                    platform_python: str) -> Iterator[Optional[subprocess.Popen]]:
    """``slice_metrics.json`` and ``calibration.json`` into ``folder`` (the run's
    ``evaluation/`` artifacts), and the process drawing ``calibration_plot.png`` beside them
    (``_finish_calibration_plot`` waits for it); a run that fails first does not leave it
    behind."""
    calibration_path = os.path.join(folder, "calibration.json")
    with open(calibration_path, "w") as f:
        json.dump(_json_safe(_calibration_doc(table, buckets)), f)
    with open(os.path.join(folder, "slice_metrics.json"), "w") as f:
        json.dump(_json_safe({"slices": table, "slice_gate": gate_report}), f, indent=1)
    proc = _start_calibration_plot(platform_python, calibration_path,
                                   os.path.join(folder, "calibration_plot.png"))
    try:
        yield proc
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.communicate()


def _model_family(params: Dict[str, Any]) -> str:
    """The family the Trainer recorded; runs from before families existed were all dnn."""
    return str(params.get("family") or "dnn")


def _gate_report(blessing_uri: str) -> dict:
    path = os.path.join(blessing_uri, slice_gate_executor.REPORT)
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def _card_slices(table, gate_report) -> Dict[str, Dict[str, float]]:
    """The model card's slice table: one row per slice (overall first)."""
    checked, failed = set(gate_report.get("checked", [])), set(gate_report.get("failed", []))
    rows = {}
    for name in sorted(table, key=lambda n: (n != slicing.OVERALL, n)):
        row = table[name]
        rows[name] = {"examples": row.get("example_count"), "positives": row.get("positives"),
                      "auc": row.get("auc"), "accuracy": row.get("binary_accuracy"),
                      "brier": row.get("brier_score"), "ece": row.get("expected_calibration_error"),
                      "gate": ("fail" if name in failed else "pass") if name in checked else "-"}
    return rows


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
        result = eval_result.load(evaluation.uri)
        table, buckets = eval_result.slice_table(result), eval_result.calibration(result)
        metrics = _eval_metrics(table)
        family = _model_family(run_info["params"])
        gate_report = _gate_report(blessing.uri)

        with tempfile.TemporaryDirectory() as evaluation_dir, \
                _slices_written(evaluation_dir, table, buckets, gate_report,
                                exec_properties.get("platform_python") or "") as plot, \
                mlflow.start_run(run_name=f"tfx-{model.id}") as run:
            mlflow.log_params(run_info["params"])
            for key, values in run_info["history"].items():
                for step, value in enumerate(values):
                    mlflow.log_metric(f"train_{key}", value, step=step)
            mlflow.log_metrics(metrics)
            mlflow.set_tags({
                "dvc_data_version": data_version,
                "model_family": family,
                "tfx_model_uri": model.uri,
                "tfx_examples_uri": examples.uri,
                "blessed": str(blessed).lower(),
                "baseline_version": exec_properties.get("baseline_version") or "",
                "slice_gate_failed": ",".join(gate_report.get("failed", [])),
            })
            logged = mlflow_model.log(serving_dir)  # a real MLflow Model (pyfunc)
            mlflow.log_metrics(_slice_metrics(table))
            _finish_calibration_plot(plot)
            mlflow.log_artifacts(evaluation_dir, artifact_path="evaluation")
            mlflow.log_text(mlflow_model.model_card(name, data_version, metrics,
                                                    slices=_card_slices(table, gate_report),
                                                    family=family),
                            "model_card.md")
            run_id = run.info.run_id
        logging.info("MlflowLogger: run %s (%s) logged, metrics %s", run_id, family, metrics)

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
        version = mlflow.register_model(
            logged.model_uri, name,
            tags={"dvc_data_version": data_version, "tfx_model_uri": model.uri,
                  "model_family": family, **{k: str(v) for k, v in metrics.items()}},
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
