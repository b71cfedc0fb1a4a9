"""Names and windows of the realtime (streaming) features, and their offline table.

Kept apart from ``features/schema.py``: the batch model's inputs are pinned there, and these
features are not model inputs until a model is trained on them (the offline rows written
here make that possible, point-in-time). The stream processor computes them
(``streaming/``); their Feast objects are in ``repo/realtime.py``.

The offline table is a folder of Parquet files, one per commit of a processor instance:
several instances append at once without rewriting a shared file (Feast's own
``write_to_offline_store`` rewrites the whole file on every call, racing between writers).
"""

from __future__ import annotations

import os
import uuid
from datetime import timedelta
from pathlib import Path

from taxi_mlops.features import schema

REALTIME_VIEW = "area_realtime_stats"
PUSH_SOURCE = "area_realtime_push"
ENTITY_KEY = schema.AREA_KEY

TRIPS_15M = "area_trips_15m"
AVG_FARE_1H = "area_avg_fare_1h"
TIP_RATE_1H = "area_tip_rate_1h"
REALTIME_FEATURES = [TRIPS_15M, AVG_FARE_1H, TIP_RATE_1H]
REALTIME_DEFAULTS = {name: 0.0 for name in REALTIME_FEATURES}

COUNT_WINDOW = timedelta(minutes=15)
STATS_WINDOW = timedelta(hours=1)
# A feature row older than its widest window describes no current trip.
VIEW_TTL = STATS_WINDOW

TIMESTAMP_FIELD = "event_timestamp"
CREATED_FIELD = "created"
OFFLINE_COLUMNS = [ENTITY_KEY, TIMESTAMP_FIELD, CREATED_FIELD, *REALTIME_FEATURES]


def offline_dir(feast_data_dir: Path) -> Path:
    return Path(feast_data_dir) / REALTIME_VIEW


def _arrow_schema():
    import pyarrow as pa

    return pa.schema([
        (ENTITY_KEY, pa.int64()),
        (TIMESTAMP_FIELD, pa.timestamp("us", tz="UTC")),
        (CREATED_FIELD, pa.timestamp("us", tz="UTC")),
        *[(name, pa.float32()) for name in REALTIME_FEATURES],
    ])


def ensure_offline_dir(feast_data_dir: Path) -> Path:
    """The folder with at least one (empty) part, so Feast can read its schema before any push."""
    import pyarrow.parquet as pq

    folder = offline_dir(feast_data_dir)
    folder.mkdir(parents=True, exist_ok=True)
    seed = folder / "part-00000-seed.parquet"
    if not seed.exists():
        tmp = folder / f".{seed.name}.{uuid.uuid4().hex}.tmp"
        pq.write_table(_arrow_schema().empty_table(), tmp)
        os.replace(tmp, seed)
    return folder


def write_offline_part(feast_data_dir: Path, frame, writer: str) -> Path:
    """Append ``frame`` (``OFFLINE_COLUMNS``) as a new part; atomic, so readers never see half a file."""
    import time

    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = ensure_offline_dir(feast_data_dir)
    table = pa.Table.from_pandas(frame[OFFLINE_COLUMNS], schema=_arrow_schema(), preserve_index=False)
    name = f"part-{time.time_ns()}-{writer}-{uuid.uuid4().hex[:8]}.parquet"
    tmp = folder / f".{name}.tmp"  # dot-files are skipped by pyarrow and dask readers
    pq.write_table(table, tmp)
    os.replace(tmp, folder / name)
    return folder / name
