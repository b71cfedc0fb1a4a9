"""CsvExampleGen that stamps the DVC data version onto the Examples artifact it emits."""

from tfx.components.example_gen.component import FileBasedExampleGen
from tfx.dsl.components.base import executor_spec
from tfx.proto import example_gen_pb2

from taxi_mlops.pipeline.components.dvc_example_gen import executor

DATA_FILE_PATTERN = "*.csv"


def DvcCsvExampleGen(input_base: str) -> FileBasedExampleGen:  # noqa: N802 - reads like a class
    """``input_base`` holds the CSV and ``data_version.json`` (written by the data step)."""
    return FileBasedExampleGen(
        input_base=input_base,
        input_config=example_gen_pb2.Input(
            splits=[example_gen_pb2.Input.Split(name="single_split", pattern=DATA_FILE_PATTERN)]
        ),
        custom_executor_spec=executor_spec.BeamExecutorSpec(executor.Executor),
    ).with_id("DvcCsvExampleGen")
