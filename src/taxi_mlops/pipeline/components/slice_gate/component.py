"""SliceGate: bless a model only if the Evaluator blessed it and no big slice is bad.

TFMA thresholds apply to every slice of a spec whatever its size, so they cannot say "AUC
>= 0.75 in every slice with at least 200 trips and 20 of each class". This component reads
the Evaluator's metrics and blessing and emits the blessing the Pusher and MlflowLogger use;
the rule itself is ``pipeline/slicing.gate``.
"""

from tfx import types
from tfx.dsl.components.base import base_component, executor_spec
from tfx.types import standard_artifacts
from tfx.types.component_spec import ChannelParameter, ComponentSpec, ExecutionParameter

from taxi_mlops.pipeline import quality
from taxi_mlops.pipeline.components.slice_gate import executor


class SliceGateSpec(ComponentSpec):
    PARAMETERS = {
        "min_auc": ExecutionParameter(type=float),
        "min_examples": ExecutionParameter(type=int),
        "min_class_examples": ExecutionParameter(type=int),
    }
    INPUTS = {
        "evaluation": ChannelParameter(type=standard_artifacts.ModelEvaluation),
        "evaluator_blessing": ChannelParameter(type=standard_artifacts.ModelBlessing),
    }
    OUTPUTS = {"blessing": ChannelParameter(type=standard_artifacts.ModelBlessing)}


class SliceGate(base_component.BaseComponent):
    SPEC_CLASS = SliceGateSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(executor.Executor)

    def __init__(self, evaluation: types.BaseChannel, evaluator_blessing: types.BaseChannel,
                 min_auc: float = quality.MIN_SLICE_AUC,
                 min_examples: int = quality.MIN_SLICE_EXAMPLES,
                 min_class_examples: int = quality.MIN_SLICE_CLASS_EXAMPLES):
        super().__init__(SliceGateSpec(
            evaluation=evaluation, evaluator_blessing=evaluator_blessing,
            min_auc=float(min_auc), min_examples=int(min_examples),
            min_class_examples=int(min_class_examples),
            blessing=types.Channel(type=standard_artifacts.ModelBlessing),
        ))
