"""The platform's handle on Feast: write offline tables, apply, materialize, read.

Everything goes through the real Feast SDK pointed at ``features/repo``; this module only
supplies the repo's environment (paths, Redis address) from ``Settings``.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from taxi_mlops.features import realtime, schema, tables
from taxi_mlops.features.feast_runtime import skip_feast_type_checks
from taxi_mlops.settings import Settings, get_settings

skip_feast_type_checks()  # before any Feast import (see feast_runtime)


def feature_store(settings: Settings):
    """A ``feast.FeatureStore`` on the platform's repo (the same one the gateway reads)."""
    os.environ.update(settings.feast_env())
    from feast import FeatureStore

    return FeatureStore(repo_path=str(settings.feast_repo))


def _definitions(settings: Settings):
    os.environ.update(settings.feast_env())
    import importlib

    from taxi_mlops.features.repo import definitions

    return importlib.reload(definitions)  # re-read TAXI_FEAST_DATA if settings changed


def write_offline_tables(settings: Settings, csv_path: Path) -> dict:
    """Compute the batch feature tables from the CSV and write them as the offline store."""
    trips = tables.load_trips(csv_path)
    settings.feast_data_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for view, frame in ((schema.AREA_VIEW, tables.area_stats(trips)),
                        (schema.COMPANY_VIEW, tables.company_stats(trips))):
        path = settings.feast_data_dir / f"{view}.parquet"
        frame.to_parquet(path, index=False)
        written[view] = {"path": str(path), "rows": len(frame)}
    return written


def realtime_objects(settings: Settings) -> list:
    """The Feast objects of the realtime features (``repo/realtime.py``), for ``apply``."""
    import importlib

    os.environ.update(settings.feast_env())
    realtime.ensure_offline_dir(settings.feast_data_dir)
    from taxi_mlops.features.repo import realtime as repo_realtime

    repo_realtime = importlib.reload(repo_realtime)  # re-read TAXI_FEAST_DATA if settings changed
    return [repo_realtime.area_realtime_push, repo_realtime.area_realtime_stats]


def apply(settings: Settings) -> None:
    defs = _definitions(settings)
    store = feature_store(settings)
    store.apply([
        defs.pickup_area, defs.company, defs.area_trip_stats, defs.company_trip_stats,
        defs.taxi_tip_model_v1, *realtime_objects(settings),
    ])


def materialize(settings: Settings, end: datetime | None = None) -> dict:
    """Load the latest row of every entity into Redis."""
    store = feature_store(settings)
    end = end or datetime.now(timezone.utc)
    store.materialize(start_date=datetime(2000, 1, 1, tzinfo=timezone.utc), end_date=end,
                      feature_views=[schema.AREA_VIEW, schema.COMPANY_VIEW])
    return {"materialized_until": end.isoformat()}


def historical_features(settings: Settings, entity_df: pd.DataFrame) -> pd.DataFrame:
    """Feast's own point-in-time join over the offline store (slow on the file store)."""
    store = feature_store(settings)
    service = store.get_feature_service(schema.FEATURE_SERVICE)
    return store.get_historical_features(entity_df=entity_df, features=service).to_df()


def online_features(settings: Settings, areas: list[int], companies: list[str]) -> list[dict]:
    store = feature_store(settings)
    rows = [{schema.AREA_KEY: a, schema.COMPANY_KEY: c} for a, c in zip(areas, companies)]
    result = store.get_online_features(
        features=store.get_feature_service(schema.FEATURE_SERVICE), entity_rows=rows
    ).to_dict()
    return [{k: result[k][i] for k in result} for i in range(len(rows))]


def push_batch_features(settings: Settings, csv_path: Path) -> dict:
    """What the FeastPusher asks for: offline tables written, definitions applied, Redis loaded."""
    written = write_offline_tables(settings, csv_path)
    apply(settings)
    return {"tables": written, **materialize(settings)}


def main(argv: list[str]) -> int:
    """``python -m taxi_mlops.features.store push CSV``: called across virtual environments."""
    if len(argv) != 2 or argv[0] != "push":
        print("usage: python -m taxi_mlops.features.store push CSV", file=sys.stderr)
        return 2
    print(json.dumps(push_batch_features(get_settings(), Path(argv[1]))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
