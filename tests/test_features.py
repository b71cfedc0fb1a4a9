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
        before = trips[trips["event_timestamp"] < day]
        if len(before):
            expected = schema.entity_features("area", len(earlier), earlier["fare"].sum(),
                                              earlier[schema.LABEL].sum(), before["fare"].mean(),
                                              before[schema.LABEL].mean())
            assert row["area_tip_rate"] == pytest.approx(expected["area_tip_rate"], rel=1e-5)
            assert row["area_avg_fare"] == pytest.approx(expected["area_avg_fare"], rel=1e-5)


def test_first_trip_of_an_entity_sees_the_prior_in_force(trips):
    """An entity's first day in training sees what an unseen entity sees at serving time:
    the global averages of all earlier trips, with a count of 0."""
    joined = tables.training_frame(trips)
    assert len(joined) == len(trips)
    first = joined.sort_values("event_timestamp").groupby(schema.COMPANY_KEY).head(1)
    assert (first["company_trip_count"] == 0).all()
    checked = 0
    for _, row in first.iterrows():
        before = trips[trips["event_timestamp"] < row["event_timestamp"].floor("D")]
        if before.empty:  # the data's first day: no prior yet, the zeros of STORE_DEFAULTS
            assert row["company_tip_rate"] == schema.STORE_DEFAULTS["company_tip_rate"]
            continue
        expected = schema.unseen_entity_features("company", before["fare"].mean(),
                                                 before[schema.LABEL].mean())
        for name, value in expected.items():
            assert row[name] == pytest.approx(value, rel=1e-5), name
        checked += 1
    assert checked >= 10
    assert (first["company_tip_rate"] > 0.1).sum() == checked  # a prior, not a zero


def test_smoothing_is_one_rule_that_tends_to_the_entity_own_rate():
    unseen = schema.unseen_entity_features("company", 12.0, 0.3)
    assert unseen == schema.entity_features("company", 0, 0.0, 0.0, 12.0, 0.3)
    assert unseen == {"company_trip_count": 0.0, "company_avg_fare": 12.0, "company_tip_rate": 0.3}
    few = schema.entity_features("company", 5, 50.0, 5, 12.0, 0.3)["company_tip_rate"]
    many = schema.entity_features("company", 5000, 50000.0, 5000, 12.0, 0.3)["company_tip_rate"]
    assert 0.3 < few < many < 1.0 and many == pytest.approx(1.0, abs=0.01)


def test_prior_rows_hold_the_global_averages_of_all_earlier_trips(trips):
    stats = tables.company_stats(trips)
    prior = stats[stats[schema.COMPANY_KEY] == schema.PRIOR_COMPANY].sort_values("event_timestamp")
    last = prior.iloc[-1]
    assert last["company_trip_count"] == 0
    assert last["company_tip_rate"] == pytest.approx(trips[schema.LABEL].mean(), rel=1e-5)
    assert last["company_avg_fare"] == pytest.approx(trips["fare"].mean(), rel=1e-5)


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
