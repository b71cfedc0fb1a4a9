"""FeastPusher: publish the feature tables a blessed model reads to Feast.

Runs after the Pusher. Only when the model was pushed (blessed) does it write the offline
Parquet tables, apply the feature repo and materialize into Redis, so the online store
always matches a model that is allowed to serve.
"""

from tfx import types
from tfx.dsl.components.base import base_component, executor_spec
from tfx.types import standard_artifacts
from tfx.types.component_spec import ChannelParameter, ComponentSpec, ExecutionParameter

from taxi_mlops.pipeline.components.artifacts import FeatureTables
from taxi_mlops.pipeline.components.feast_pusher import executor


class FeastPusherSpec(ComponentSpec):
    PARAMETERS = {
        "data_path": ExecutionParameter(type=str),  # the DVC-tracked CSV the tables come from
        "platform_python": ExecutionParameter(type=str),  # Feast lives in the platform env
        "feature_service": ExecutionParameter(type=str),
    }
    INPUTS = {"pushed_model": ChannelParameter(type=standard_artifacts.PushedModel)}
    OUTPUTS = {"feature_tables": ChannelParameter(type=FeatureTables)}


class FeastPusher(base_component.BaseComponent):
    SPEC_CLASS = FeastPusherSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(executor.Executor)

    def __init__(self, pushed_model: types.BaseChannel, data_path: str, platform_python: str,
                 feature_service: str):
        super().__init__(FeastPusherSpec(
            pushed_model=pushed_model,
            data_path=data_path,
            platform_python=platform_python,
            feature_service=feature_service,
            feature_tables=types.Channel(type=FeatureTables),
        ))
