"""Feature tables: point-in-time safe, and filled the same way in training and serving."""

import pandas as pd
import pytest

from taxi_mlops.features import schema, tables
from taxi_mlops.settings import Settings


@pytest.fixture(scope="module")
def trips():
    return tables.load_trips(Settings().data_csv)


def test_label_is_tip_above_20_percent_of_fare(trips):
    expected = (trips["tips"] > 0.2 * trips["fare"]).astype(int)
    assert (trips[schema.LABEL] == expected).all()
    assert 0.2 < trips[schema.LABEL].mean() < 0.5


def test_features_only_see_earlier_days(trips):
    joined = tables.training_frame(trips)
    area = 8
    rows = joined[joined[schema.AREA_KEY] == area].sort_values("event_timestamp")
    for _, row in rows.sample(25, random_state=3).iterrows():
        day = row["event_timestamp"].floor("D")
        earlier = trips[(trips[schema.AREA_KEY] == area) & (trips["event_timestamp"] < day)]
        assert row["area_trip_count"] == len(earlier)
        if len(earlier):
            assert row["area_tip_rate"] == pytest.approx(earlier[schema.LABEL].mean(), rel=1e-5)
            assert row["area_avg_fare"] == pytest.approx(earlier["fare"].mean(), rel=1e-5)


def test_first_trip_of_an_entity_has_default_features(trips):
    joined = tables.training_frame(trips)
    first = joined.sort_values("event_timestamp").groupby(schema.COMPANY_KEY).head(1)
    assert (first["company_trip_count"] == 0).all()
    assert len(joined) == len(trips)


@pytest.mark.parametrize("gap", ["company", "pickup_community_area", "dropoff_latitude"])
def test_serving_fills_gaps_exactly_like_training(trips, gap):
    raw = pd.read_csv(Settings().data_csv)
    index = raw[raw[gap].isna()].index[0]
    trip = {k: (None if pd.isna(v) else v) for k, v in raw.loc[index].to_dict().items()}
    served = schema.model_inputs(trip, {})
    trained = trips.loc[index]
    for name in schema.FLOAT_FEATURES:
        assert served[name] == pytest.approx(trained[name]), name
    for name in list(schema.INT_CATEGORICAL_FEATURES) + schema.VOCAB_FEATURES:
        assert served[name] == trained[name], name
