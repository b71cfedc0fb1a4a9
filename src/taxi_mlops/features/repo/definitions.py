"""Entities, feature views and the model's feature service.

The offline tables are Parquet files written by ``taxi_mlops.features.store`` into the
state directory (``TAXI_FEAST_DATA``); Redis holds the latest row per entity.
"""

import os
from datetime import timedelta
from pathlib import Path

from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
from feast.types import Float32, Int64, String

from taxi_mlops.features import schema

DATA_DIR = Path(os.environ.get("TAXI_FEAST_DATA", Path(__file__).parent / "data"))
# Statistics are cumulative since 2013: an old row is still the entity's latest knowledge.
HISTORY_TTL = timedelta(days=365 * 30)

pickup_area = Entity(
    name="pickup_area",
    join_keys=[schema.AREA_KEY],
    value_type=ValueType.INT64,
    description="Chicago community area where the trip started (-1: unknown).",
)
company = Entity(
    name="company",
    join_keys=[schema.COMPANY_KEY],
    value_type=ValueType.STRING,
    description="Taxi company ('UNKNOWN' when the trip has none).",
)

area_source = FileSource(
    name="area_trip_stats_source",
    path=str(DATA_DIR / f"{schema.AREA_VIEW}.parquet"),
    timestamp_field="event_timestamp",
    created_timestamp_column="created",
)
company_source = FileSource(
    name="company_trip_stats_source",
    path=str(DATA_DIR / f"{schema.COMPANY_VIEW}.parquet"),
    timestamp_field="event_timestamp",
    created_timestamp_column="created",
)

area_trip_stats = FeatureView(
    name=schema.AREA_VIEW,
    entities=[pickup_area],
    ttl=HISTORY_TTL,
    schema=[
        Field(name=schema.AREA_KEY, dtype=Int64),
        *[Field(name=name, dtype=Float32) for name in schema.AREA_FEATURES],
    ],
    source=area_source,
    online=True,
    description="Trips, average fare and big-tipper rate of all earlier trips from the area.",
)
company_trip_stats = FeatureView(
    name=schema.COMPANY_VIEW,
    entities=[company],
    ttl=HISTORY_TTL,
    schema=[
        Field(name=schema.COMPANY_KEY, dtype=String),
        *[Field(name=name, dtype=Float32) for name in schema.COMPANY_FEATURES],
    ],
    source=company_source,
    online=True,
    description="Trips, average fare and big-tipper rate of all earlier trips of the company.",
)

taxi_tip_model_v1 = FeatureService(
    name=schema.FEATURE_SERVICE,
    features=[area_trip_stats, company_trip_stats],
    description="Everything the tip model reads from the feature store.",
)
