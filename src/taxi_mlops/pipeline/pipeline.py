"""The training pipeline: TFX standard components plus our own, as one DAG.

ExampleGen (stamped with the DVC version) -> StatisticsGen -> SchemaGen -> ExampleValidator
-> Transform -> Trainer (model family ``dnn`` or ``linear``) -> Evaluator (absolute
thresholds; no regression against the current champion when there is one; metrics and
calibration per slice) -> SliceGate (AUC bar on every slice big enough to measure it)
-> Pusher -> FeastPusher and MlflowLogger.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import List, Optional

import tensorflow_model_analysis as tfma
# TFX's modules, not ``tfx.v1``: that public API also imports its Google Cloud extensions
# (google.cloud.aiplatform), 3 s of every run's start.
from tfx.components import Evaluator, ExampleValidator, Pusher, SchemaGen, StatisticsGen, Trainer, Transform
from tfx.dsl.components.common import importer
from tfx.orchestration import metadata
from tfx.orchestration import pipeline as tfx_pipeline
from tfx.proto import pusher_pb2, trainer_pb2
from tfx.types import standard_artifacts

from taxi_mlops.features import schema
from taxi_mlops.pipeline.components.dvc_example_gen.component import DvcCsvExampleGen
from taxi_mlops.pipeline.components.feast_pusher.component import FeastPusher
from taxi_mlops.pipeline import runners, slicing
from taxi_mlops.pipeline.components.mlflow_logger.component import MlflowLogger
from taxi_mlops.pipeline.components.slice_gate.component import SliceGate
from taxi_mlops.pipeline.quality import MAX_REGRESSION, MIN_ACCURACY, MIN_AUC

# The trainer module, imported by name (src is on the pipeline's PYTHONPATH) rather than as
# TFX's module_file, which builds a wheel per component and pip-installs it up to three
# times per run (~10 s); user_code_version keeps code changes in the cache key.
USER_MODULE = "taxi_mlops.pipeline.trainer_module.taxi_model"

AUC_THRESHOLDS = 1000

# TFMA's calibration plot buckets per slice; ECE regroups them into slicing.ECE_BINS bins.
CALIBRATION_BUCKETS = 100

PIPELINE_NAME = "chicago_taxi_tips"

# Model families the Trainer can build on the same Transform output, and their
# hyper-parameters (Trainer custom_config; the trainer module records them in history.json).
# linear: a logistic regression on the same transformed features, at a higher learning rate:
# with the dnn's 0.001 it is still far from converged after the same 1,500 steps (Keras on
# the eval split: accuracy 0.849, AUC 0.942, against 0.892 / 0.951 at 0.01), which would fail
# the champion gate.
FAMILIES = {
    "dnn": {"hidden_units": [64, 32], "learning_rate": 0.001},
    "linear": {"hidden_units": [], "learning_rate": 0.01},
}
DEFAULT_FAMILY = "dnn"


@dataclasses.dataclass
class PipelineConfig:
    pipeline_root: str
    metadata_path: str
    input_base: str  # folder with the training CSV and data_version.json
    data_path: str  # the DVC-tracked raw CSV (feature tables are computed from it)
    module_file: str
    serving_model_dir: str
    tracking_uri: str
    model_name: str
    platform_python: str
    baseline_model_uri: Optional[str] = None  # the champion's TFX model folder, if any
    baseline_version: Optional[str] = None
    train_steps: int = 1500
    eval_steps: int = 100
    epochs: int = 5
    family: str = DEFAULT_FAMILY  # a key of FAMILIES
    experiment_name: str = "chicago-taxi-training"
    # How the Beam steps run (runners.py); run.py turns them into beam_args.
    beam_runner: str = runners.IN_PROCESS
    beam_workers: int = 2
    beam_extra_args: List[str] = dataclasses.field(default_factory=list)
    beam_args: List[str] = dataclasses.field(default_factory=list)  # explicit: wins over the above
    beam_fallback: bool = True  # steps the runner cannot run go in-process (runners.DASK_UNSUPPORTED)
    pipeline_name: str = PIPELINE_NAME  # KFP v2 allows [a-z0-9-] only (kfp_compile.py)


def eval_config(with_baseline: bool) -> tfma.EvalConfig:
    def threshold(lower: float) -> list:
        """Gate on the overall slice only; the SliceGate applies the per-slice bar."""
        kwargs = {"value_threshold": tfma.GenericValueThreshold(lower_bound={"value": lower})}
        if with_baseline:
            kwargs["change_threshold"] = tfma.GenericChangeThreshold(
                direction=tfma.MetricDirection.HIGHER_IS_BETTER,
                absolute={"value": -MAX_REGRESSION},
            )
        return [tfma.PerSliceMetricThreshold(slicing_specs=[tfma.SlicingSpec()],
                                             threshold=tfma.MetricThreshold(**kwargs))]

    return tfma.EvalConfig(
        # tf_generic: the signature is all TFMA needs. Left unset, TFMA loads the model as Keras
        # once to detect its type and again per worker (half of a 26 s Evaluator), and adds
        # Keras' compiled loss and accuracy to every slice.
        model_specs=[tfma.ModelSpec(signature_name="serving_tf_example", label_key=schema.LABEL,
                                    model_type=tfma.TF_GENERIC, preprocessing_function_names=[])],
        slicing_specs=[tfma.SlicingSpec()] + [tfma.SlicingSpec(feature_keys=[feature])
                                              for feature in slicing.SLICE_FEATURES],
        metrics_specs=[tfma.MetricsSpec(metrics=[
            tfma.MetricConfig(class_name="ExampleCount"),
            tfma.MetricConfig(class_name="BinaryAccuracy",
                              per_slice_thresholds=threshold(MIN_ACCURACY)),
            # 1,000 thresholds, not TFMA's 10,000: rebinning 10,000 buckets per slice in Python
            # was 1.6 s of the Evaluator; every slice's AUC moved by at most 8e-5 (0.95094
            # overall either way) on this data's 4,964 eval trips (Keras' default is 200).
            tfma.MetricConfig(class_name="AUC", config=json.dumps({"num_thresholds": AUC_THRESHOLDS}),
                              per_slice_thresholds=threshold(MIN_AUC)),
            tfma.MetricConfig(class_name="Precision"),
            tfma.MetricConfig(class_name="Recall"),
            # Class counts (example_count * mean_label) and calibration.
            tfma.MetricConfig(class_name="MeanLabel"),
            tfma.MetricConfig(class_name="MeanPrediction"),
            tfma.MetricConfig(class_name="MeanSquaredError"),  # Brier score: 0/1 label, probability
            tfma.MetricConfig(class_name="CalibrationPlot",
                              config=json.dumps({"num_buckets": CALIBRATION_BUCKETS})),
        ])],
    )


def user_code_version(module_file: str) -> str:
    """Hash of the trainer module and the project modules it imports: TFX's cache key for
    Transform and Trainer (via custom_config), as TFX's module_file wheel would be."""
    digest = hashlib.sha256()
    for path in (module_file, schema.__file__, slicing.__file__):
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()[:16]


def trainer_config(cfg: PipelineConfig) -> dict:
    """The Trainer's custom_config: shared training settings plus the family's own. Only
    the Trainer's inputs differ between families, so Transform and everything upstream stay
    cached across them."""
    if cfg.family not in FAMILIES:
        raise ValueError(f"unknown model family {cfg.family!r}; one of {sorted(FAMILIES)}")
    return {"epochs": cfg.epochs, "batch_size": 64, "family": cfg.family, **FAMILIES[cfg.family]}


def create_pipeline(cfg: PipelineConfig) -> tfx_pipeline.Pipeline:
    example_gen = DvcCsvExampleGen(input_base=cfg.input_base)
    statistics_gen = StatisticsGen(examples=example_gen.outputs["examples"])
    schema_gen = SchemaGen(statistics=statistics_gen.outputs["statistics"], infer_feature_shape=True)
    example_validator = ExampleValidator(
        statistics=statistics_gen.outputs["statistics"], schema=schema_gen.outputs["schema"])
    code = {"user_code": user_code_version(cfg.module_file)}
    # No pre/post-transform statistics (TFDV over the data twice more; nothing reads them:
    # drift and data quality use StatisticsGen's) and no analyzer cache (each data version
    # is one new input folder, so a later run could never reuse it). A TF1 graph: tf.Transform
    # traces preprocessing_fn several times, and as tf.functions that took 15 s against 10 s.
    transform = Transform(
        examples=example_gen.outputs["examples"], schema=schema_gen.outputs["schema"],
        preprocessing_fn=f"{USER_MODULE}.preprocessing_fn", custom_config=code,
        disable_statistics=True, disable_analyzer_cache=True, force_tf_compat_v1=True)
    trainer = Trainer(
        run_fn=f"{USER_MODULE}.run_fn",
        examples=transform.outputs["transformed_examples"],
        transform_graph=transform.outputs["transform_graph"],
        schema=schema_gen.outputs["schema"],
        train_args=trainer_pb2.TrainArgs(num_steps=cfg.train_steps),
        eval_args=trainer_pb2.EvalArgs(num_steps=cfg.eval_steps),
        custom_config={**trainer_config(cfg), **code},
    )
    components = [example_gen, statistics_gen, schema_gen, example_validator, transform, trainer]

    evaluator_kwargs = {}
    if cfg.baseline_model_uri:
        baseline = importer.Importer(
            source_uri=cfg.baseline_model_uri, artifact_type=standard_artifacts.Model,
        ).with_id("ChampionModelImporter")
        components.append(baseline)
        evaluator_kwargs["baseline_model"] = baseline.outputs["result"]
    evaluator = Evaluator(
        examples=example_gen.outputs["examples"], model=trainer.outputs["model"],
        eval_config=eval_config(with_baseline=bool(cfg.baseline_model_uri)), **evaluator_kwargs)
    slice_gate = SliceGate(evaluation=evaluator.outputs["evaluation"],
                           evaluator_blessing=evaluator.outputs["blessing"])
    pusher = Pusher(
        model=trainer.outputs["model"], model_blessing=slice_gate.outputs["blessing"],
        push_destination=pusher_pb2.PushDestination(
            filesystem=pusher_pb2.PushDestination.Filesystem(base_directory=cfg.serving_model_dir)),
    )
    feast_pusher = FeastPusher(
        pushed_model=pusher.outputs["pushed_model"], data_path=cfg.data_path,
        platform_python=cfg.platform_python, feature_service=schema.FEATURE_SERVICE)
    mlflow_logger = MlflowLogger(
        examples=example_gen.outputs["examples"], model=trainer.outputs["model"],
        model_run=trainer.outputs["model_run"], evaluation=evaluator.outputs["evaluation"],
        blessing=slice_gate.outputs["blessing"], pushed_model=pusher.outputs["pushed_model"],
        tracking_uri=cfg.tracking_uri, experiment_name=cfg.experiment_name,
        model_name=cfg.model_name, baseline_version=cfg.baseline_version,
        platform_python=cfg.platform_python)
    components += [evaluator, slice_gate, pusher, feast_pusher, mlflow_logger]
    for component in components:  # steps the configured runner cannot run (runners.py)
        extra = runners.component_args(cfg.beam_runner, component.id, cfg.beam_fallback)
        if extra and hasattr(component, "with_beam_pipeline_args"):
            component.with_beam_pipeline_args(extra)
    return tfx_pipeline.Pipeline(
        pipeline_name=cfg.pipeline_name,
        pipeline_root=cfg.pipeline_root,
        components=components,
        enable_cache=True,
        metadata_connection_config=metadata.sqlite_metadata_connection_config(
            cfg.metadata_path),
        beam_pipeline_args=cfg.beam_args or runners.beam_args(
            cfg.beam_runner, cfg.beam_workers, cfg.beam_extra_args,
            dask_scheduler_file=str(runners.scheduler_file(cfg.pipeline_root))),
    )
