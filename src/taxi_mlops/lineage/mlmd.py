"""Pipeline lineage from ML Metadata: which data produced the model that is serving.

Reads the TFX pipeline's SQLite store with ml-metadata 1.17 (the platform environment),
which reads the 1.16 schema the pipeline writes without migration.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2

INPUT_EVENTS = (metadata_store_pb2.Event.INPUT, metadata_store_pb2.Event.DECLARED_INPUT)
OUTPUT_EVENTS = (metadata_store_pb2.Event.OUTPUT, metadata_store_pb2.Event.DECLARED_OUTPUT)


@dataclass
class ArtifactNode:
    id: int
    type: str
    uri: str
    properties: dict = field(default_factory=dict)
    produced_by: str = ""


def open_store(path: Path) -> metadata_store.MetadataStore:
    if not path.exists():
        raise FileNotFoundError(f"no ML Metadata store at {path}: run `taxi-mlops train` first")
    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = str(path)
    config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
    return metadata_store.MetadataStore(config)


def _props(artifact) -> dict:
    out = {}
    for source in (artifact.properties, artifact.custom_properties):
        for key, value in source.items():
            kind = value.WhichOneof("value")
            out[key] = getattr(value, kind) if kind in ("int_value", "double_value", "string_value") else str(value)
    return out


def latest(store, type_name: str):
    artifacts = store.get_artifacts_by_type(type_name)
    if not artifacts:
        raise LookupError(f"no {type_name} artifact in ML Metadata yet")
    return max(artifacts, key=lambda a: a.id)


def upstream(store, artifact_id: int) -> list[ArtifactNode]:
    """Every artifact the given one was derived from, breadth first, itself included."""
    types = {t.id: t.name for t in store.get_artifact_types()}
    exec_types = {t.id: t.name for t in store.get_execution_types()}
    seen, order, frontier = set(), [], [artifact_id]
    while frontier:
        current = frontier.pop(0)
        if current in seen:
            continue
        seen.add(current)
        [artifact] = store.get_artifacts_by_id([current])
        producers = [e.execution_id for e in store.get_events_by_artifact_ids([current])
                     if e.type in OUTPUT_EVENTS]
        executions = store.get_executions_by_id(producers) if producers else []
        order.append(ArtifactNode(id=artifact.id, type=types[artifact.type_id], uri=artifact.uri,
                                  properties=_props(artifact),
                                  produced_by=",".join(exec_types[x.type_id] for x in executions)))
        for event in store.get_events_by_execution_ids(producers):
            if event.type in INPUT_EVENTS:
                frontier.append(event.artifact_id)
    return order


def serving_lineage(path: Path) -> list[ArtifactNode]:
    """Lineage of the latest PushedModel, back to the Examples and their DVC version."""
    store = open_store(path)
    return upstream(store, latest(store, "PushedModel").id)


@dataclass
class TrainingData:
    """The SchemaGen schema and StatisticsGen statistics of the run that trained a model."""

    model: ArtifactNode
    schema: ArtifactNode
    statistics: ArtifactNode | None


def _norm(uri: str) -> str:
    return uri.rstrip("/")


def training_data(path: Path, model_uri: str) -> TrainingData:
    """Walk back from the Trainer's ``Model`` artifact at ``model_uri`` (an MLflow version's
    ``tfx_model_uri`` tag) to the ``Schema`` SchemaGen produced and the ``ExampleStatistics``
    StatisticsGen produced in the same run (the Trainer and Transform read that schema).

    A later run that imports the model as its baseline makes another ``Model`` artifact with
    the same URI but no upstream; the one with a SchemaGen schema upstream is the Trainer's.
    """
    store = open_store(path)
    candidates = [a for a in store.get_artifacts_by_uri(model_uri)] or \
        [a for a in store.get_artifacts_by_type("Model") if _norm(a.uri) == _norm(model_uri)]
    for artifact in sorted(candidates, key=lambda a: -a.id):
        nodes = upstream(store, artifact.id)
        schema = next((n for n in nodes if n.type == "Schema" and n.produced_by.endswith("SchemaGen")), None)
        if schema is None:
            continue
        stats = next((n for n in nodes if n.type == "ExampleStatistics"
                      and n.produced_by.endswith("StatisticsGen")), None)
        return TrainingData(model=nodes[0], schema=schema, statistics=stats)
    raise LookupError(f"no model artifact at {model_uri} with a SchemaGen schema upstream in ML Metadata "
                      f"({path}); was it trained by this platform's pipeline?")
