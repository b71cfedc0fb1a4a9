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



def _daily_stats_view(view: str, entity: Entity, key: str, key_type, features: list[str],
                      about: str) -> FeatureView:
    """A view over one of the daily cumulative tables written by ``features.tables``."""
    source = FileSource(
        name=f"{view}_source",
        path=str(DATA_DIR / f"{view}.parquet"),
        timestamp_field="event_timestamp",
        created_timestamp_column="created",
    )
    return FeatureView(
        name=view,
        entities=[entity],
        ttl=HISTORY_TTL,
        schema=[Field(name=key, dtype=key_type), *[Field(name=n, dtype=Float32) for n in features]],
        source=source,
        online=True,
        description=f"Trips, average fare and big-tipper rate of all earlier trips {about}.",
    )


area_trip_stats = _daily_stats_view(schema.AREA_VIEW, pickup_area, schema.AREA_KEY, Int64,
                                    schema.AREA_FEATURES, "from the area")
company_trip_stats = _daily_stats_view(schema.COMPANY_VIEW, company, schema.COMPANY_KEY, String,
                                       schema.COMPANY_FEATURES, "of the company")
area_source = area_trip_stats.batch_source
company_source = company_trip_stats.batch_source

taxi_tip_model_v1 = FeatureService(
    name=schema.FEATURE_SERVICE,
    features=[area_trip_stats, company_trip_stats],
    description="Everything the tip model reads from the feature store.",
)
