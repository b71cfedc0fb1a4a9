"""MlflowLogger: log a training run to MLflow and register a blessed model.

Inputs are the Trainer's model and run, the Evaluator's metrics, the SliceGate's blessing,
the Pusher's result and the Examples (for the DVC data version). Output: the registered model version.
"""

from typing import Optional

from tfx import types
from tfx.dsl.components.base import base_component, executor_spec
from tfx.types import standard_artifacts
from tfx.types.component_spec import ChannelParameter, ComponentSpec, ExecutionParameter

from taxi_mlops.pipeline.components.artifacts import RegisteredModel
from taxi_mlops.pipeline.components.mlflow_logger import executor


class MlflowLoggerSpec(ComponentSpec):
    PARAMETERS = {
        "tracking_uri": ExecutionParameter(type=str),
        "experiment_name": ExecutionParameter(type=str),
        "model_name": ExecutionParameter(type=str),
        "baseline_version": ExecutionParameter(type=str, optional=True),
        # Draws the calibration plot (matplotlib is in the platform env only).
        "platform_python": ExecutionParameter(type=str, optional=True),
    }
    INPUTS = {
        "examples": ChannelParameter(type=standard_artifacts.Examples),
        "model": ChannelParameter(type=standard_artifacts.Model),
        "model_run": ChannelParameter(type=standard_artifacts.ModelRun),
        "evaluation": ChannelParameter(type=standard_artifacts.ModelEvaluation),
        "blessing": ChannelParameter(type=standard_artifacts.ModelBlessing),
        "pushed_model": ChannelParameter(type=standard_artifacts.PushedModel),
    }
    OUTPUTS = {"registered_model": ChannelParameter(type=RegisteredModel)}


class MlflowLogger(base_component.BaseComponent):
    SPEC_CLASS = MlflowLoggerSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(executor.Executor)

    def __init__(self, examples, model, model_run, evaluation, blessing, pushed_model,
                 tracking_uri: str, experiment_name: str, model_name: str,
                 baseline_version: Optional[str] = None, platform_python: Optional[str] = None):
        super().__init__(MlflowLoggerSpec(
            examples=examples, model=model, model_run=model_run, evaluation=evaluation,
            blessing=blessing, pushed_model=pushed_model, tracking_uri=tracking_uri,
            experiment_name=experiment_name, model_name=model_name,
            baseline_version=baseline_version, platform_python=platform_python,
            registered_model=types.Channel(type=RegisteredModel),
        ))
