"""Realtime area features, written by the stream processor through a Feast PushSource.

The push source's batch source is a folder of Parquet files in ``TAXI_FEAST_DATA``: the
processor appends every row it pushes online there too, so training can join these features
point-in-time like the batch ones.
"""

import os
from pathlib import Path

from feast import FeatureView, Field, FileSource, PushSource
from feast.types import Float32, Int64

from taxi_mlops.features.repo.definitions import pickup_area
from taxi_mlops.features import realtime as rt

# Read here, not imported from definitions: this module may be reloaded on its own.
DATA_DIR = Path(os.environ.get("TAXI_FEAST_DATA", Path(__file__).parent / "data"))

area_realtime_batch_source = FileSource(
    name="area_realtime_stats_offline",
    path=str(rt.offline_dir(DATA_DIR)),
    timestamp_field=rt.TIMESTAMP_FIELD,
    created_timestamp_column=rt.CREATED_FIELD,
)

area_realtime_push = PushSource(
    name=rt.PUSH_SOURCE,
    batch_source=area_realtime_batch_source,
    description="Windowed area features pushed by taxi_mlops.streaming.processor.",
)

area_realtime_stats = FeatureView(
    name=rt.REALTIME_VIEW,
    entities=[pickup_area],
    ttl=rt.VIEW_TTL,
    schema=[
        Field(name=rt.ENTITY_KEY, dtype=Int64),
        *[Field(name=name, dtype=Float32) for name in rt.REALTIME_FEATURES],
    ],
    source=area_realtime_push,
    online=True,
    description="Trips in the last 15 minutes, average fare and big-tipper rate in the last hour "
                "(event time, as of the area's latest event).",
)
