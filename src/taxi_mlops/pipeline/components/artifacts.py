"""Artifact types our own components add to ML Metadata."""

from tfx.types.artifact import Artifact, Property, PropertyType


class FeatureTables(Artifact):
    """Feature tables published to Feast: offline Parquet files plus what reached Redis."""

    TYPE_NAME = "FeastFeatureTables"
    PROPERTIES = {
        "feature_service": Property(type=PropertyType.STRING),
        "materialized_until": Property(type=PropertyType.STRING),
    }


class RegisteredModel(Artifact):
    """A model version in the MLflow registry (URI: models:/name/version)."""

    TYPE_NAME = "MlflowModelVersion"
    PROPERTIES = {
        "model_name": Property(type=PropertyType.STRING),
        "version": Property(type=PropertyType.INT),
        "run_id": Property(type=PropertyType.STRING),
        "alias": Property(type=PropertyType.STRING),
    }
