"""Feature drift (streaming/drift.py) without Kafka: a reference from a small synthetic TFDV
statistics proto, windows drawn from the same or a changed distribution."""

from __future__ import annotations

import numpy as np
import pytest
from tensorflow_metadata.proto.v0 import statistics_pb2

from taxi_mlops.streaming import drift

PAYMENTS = {"Cash": 0.6, "Credit Card": 0.35, "No Charge": 0.05}
N_TRAIN = 5000


def _fares(rng, n) -> np.ndarray:
    return np.round(rng.lognormal(2.2, 0.6, n), 2)


def _hours(rng, n) -> np.ndarray:
    return rng.integers(0, 24, n)


def _quantiles_histogram(values: np.ndarray, buckets: int = 10) -> statistics_pb2.Histogram:
    """A TFDV-style quantiles histogram: right-closed buckets (low, high], the first closed."""
    hist = statistics_pb2.Histogram(type=statistics_pb2.Histogram.QUANTILES)
    edges = np.quantile(values, np.linspace(0, 1, buckets + 1))
    for i, (low, high) in enumerate(zip(edges[:-1], edges[1:])):
        inside = (values <= high) & ((values > low) if i else (values >= low))
        hist.buckets.add(low_value=low, high_value=high, sample_count=float(inside.sum()))
    return hist


def _stats(rng) -> statistics_pb2.DatasetFeatureStatistics:
    ds = statistics_pb2.DatasetFeatureStatistics(name="train", num_examples=N_TRAIN)
    for name, values in (("fare", _fares(rng, N_TRAIN)), ("trip_start_hour", _hours(rng, N_TRAIN))):
        feat = ds.features.add()
        feat.path.step.append(name)
        feat.num_stats.common_stats.num_non_missing = N_TRAIN
        feat.num_stats.min, feat.num_stats.max = float(values.min()), float(values.max())
        feat.num_stats.histograms.append(_quantiles_histogram(values.astype(float)))
    feat = ds.features.add()
    feat.path.step.append("payment_type")
    feat.string_stats.common_stats.num_non_missing = N_TRAIN
    for label, share in PAYMENTS.items():
        feat.string_stats.rank_histogram.buckets.add(label=label, sample_count=share * N_TRAIN)
    return ds


def _events(rng, n, fare_scale=1.0, payments=PAYMENTS) -> list[dict]:
    fares, hours = _fares(rng, n) * fare_scale, _hours(rng, n)
    pays = rng.choice(list(payments), n, p=np.array(list(payments.values())) / sum(payments.values()))
    return [{"fare": float(f), "trip_start_hour": int(h), "payment_type": str(p)}
            for f, h, p in zip(fares, hours, pays)]


def _window(events, present=None) -> drift.DriftWindow:
    w = drift.DriftWindow(("fare", "trip_start_hour", "payment_type"))
    for e in events:
        w.add(e, present if present is not None else e.keys())
    return w


@pytest.fixture(scope="module")
def reference() -> drift.DriftReference:
    return drift.build_reference(_stats(np.random.default_rng(1)), "7", "/stats/7")


THRESHOLDS = drift.Thresholds()


def test_reference_from_stats_proto(reference):
    assert set(reference.features) == {"fare", "trip_start_hour", "payment_type"}
    fare = reference.features["fare"]
    assert fare.kind == drift.NUMERIC and len(fare.probs) == len(fare.edges) + 1
    assert sum(fare.probs) == pytest.approx(1.0) and fare.probs[0] == 0.0 and fare.probs[-1] == 0.0
    assert all(p == pytest.approx(0.1, abs=0.01) for p in fare.probs[1:-1])  # deciles
    pay = reference.features["payment_type"]
    assert pay.kind == drift.CATEGORICAL and pay.categories == list(PAYMENTS)
    assert pay.probs == pytest.approx([0.6, 0.35, 0.05, 0.0])  # + other
    assert pay.missing_rate == 0.0 and reference.model_version == "7"


def test_tfdv_point_masses_land_in_their_bin():
    """Real TFDV quantile buckets repeat a heavy value as [a, a] buckets (trip_miles 0)."""
    ds = statistics_pb2.DatasetFeatureStatistics(num_examples=10)
    feat = ds.features.add()
    feat.path.step.append("trip_miles")
    hist = feat.num_stats.histograms.add(type=statistics_pb2.Histogram.QUANTILES)
    for low, high, n in ((0, 0, 2), (0, 0, 2), (0, 1, 3), (1, 5, 3)):
        hist.buckets.add(low_value=low, high_value=high, sample_count=n)
    ref = drift.build_reference(ds, "1").features["trip_miles"]
    assert ref.probs == pytest.approx([0.4, 0.3, 0.3, 0.0]) and ref.point_masses == [0]
    assert list(ref.bin_counts([0, 0, 0, 0, 0.5, 0.5, 1, 3, 5, 5])) == [4, 3, 3, 0]
    assert drift.score(drift.DriftReference("1", "", "train", 10, {"trip_miles": ref}),
                       _one_feature("trip_miles", [0, 0, 0, 0, 0.5, 0.5, 1, 3, 5, 5]),
                       drift.Thresholds(min_events=1)).scores["trip_miles"][drift.JS] == pytest.approx(0.0, abs=1e-6)


def _one_feature(name, values) -> drift.DriftWindow:
    w = drift.DriftWindow((name,))
    for v in values:
        w.add({name: v})
    return w


def test_clean_window_from_the_same_distribution_does_not_drift(reference):
    rng = np.random.default_rng(2)
    for _ in range(5):
        result = drift.score(reference, _window(_events(rng, 1000)), THRESHOLDS)
        assert not result.is_drift, result.scores
        assert result.scores["fare"][drift.JS] < THRESHOLDS.js / 2
        assert set(result.scores["fare"]) == {drift.JS, drift.WASSERSTEIN, drift.MISSING}
        assert set(result.scores["payment_type"]) == {drift.LINF, drift.MISSING}


def test_tripled_fares_drift_on_fare_only(reference):
    result = drift.score(reference, _window(_events(np.random.default_rng(3), 1000, fare_scale=3.0)), THRESHOLDS)
    assert result.is_drift and list(result.drifted) == ["fare"] and result.drifted["fare"] == [drift.JS]
    assert result.scores["fare"][drift.JS] > 0.5 and result.scores["fare"][drift.WASSERSTEIN] > 0.2
    details = result.as_details()
    assert details["drifted_features"] == ["fare"] and details["thresholds"]["js"] == THRESHOLDS.js


def test_new_category_is_categorical_drift(reference):
    payments = {**PAYMENTS, "Bitcoin": 0.3}
    result = drift.score(reference, _window(_events(np.random.default_rng(4), 1000, payments=payments)), THRESHOLDS)
    assert result.drifted == {"payment_type": [drift.LINF]}
    assert result.scores["payment_type"][drift.LINF] == pytest.approx(0.23, abs=0.05)  # the other bucket


def test_null_storm_is_missing_rate_drift(reference):
    events = _events(np.random.default_rng(5), 1000)
    for e in events[:300]:
        e["payment_type"] = None  # sent as null
    for e in events[300:400]:
        del e["fare"]  # not sent at all
    result = drift.score(reference, _window(events, present=None), THRESHOLDS)
    assert result.drifted["payment_type"] == [drift.MISSING]
    assert result.scores["payment_type"][drift.MISSING] == pytest.approx(0.3)
    assert "fare" not in result.drifted and result.scores["fare"][drift.MISSING] == pytest.approx(0.1)
    # A field the producer left out counts as missing even when the model filled a default.
    w = _window(_events(np.random.default_rng(6), 600), present={"fare", "trip_start_hour"})
    assert drift.score(reference, w, THRESHOLDS).drifted == {"payment_type": [drift.MISSING]}


def test_small_windows_are_not_scored_and_calendar_features_only_reported(reference):
    rng = np.random.default_rng(7)
    assert drift.score(reference, _window(_events(rng, THRESHOLDS.min_events - 1)), THRESHOLDS) is None
    night = [{**e, "trip_start_hour": 3} for e in _events(rng, 1000)]
    result = drift.score(reference, _window(night), THRESHOLDS)
    assert result.scores["trip_start_hour"][drift.JS] > 0.5 and not result.is_drift  # report-only
    strict = drift.Thresholds(report_only=())
    assert drift.score(reference, _window(night), strict).drifted == {"trip_start_hour": [drift.JS]}


def _miles(rng, n, zeros=0.25, scale=1.0) -> np.ndarray:
    """Trip miles as on this data set: a quarter exactly 0, the rest log-normal."""
    return np.where(rng.random(n) < zeros, 0.0, np.round(rng.lognormal(0.8, 0.9, n), 2)) * scale


def _miles_reference() -> drift.DriftReference:
    """TFDV's shape for a heavy value: [0, 0] buckets for the zeros, deciles of the rest."""
    values = _miles(np.random.default_rng(11), N_TRAIN)
    positive = values[values > 0]
    ds = statistics_pb2.DatasetFeatureStatistics(num_examples=N_TRAIN)
    feat = ds.features.add()
    feat.path.step.append("trip_miles")
    feat.num_stats.common_stats.num_non_missing = N_TRAIN
    hist = feat.num_stats.histograms.add(type=statistics_pb2.Histogram.QUANTILES)
    for _ in range(2):
        hist.buckets.add(low_value=0, high_value=0, sample_count=(values == 0).sum() / 2)
    edges = np.quantile(positive, np.linspace(0, 1, 11))
    edges[0] = 0.0
    for low, high in zip(edges[:-1], edges[1:]):
        hist.buckets.add(low_value=low, high_value=high,
                         sample_count=float(((positive > low) & (positive <= high)).sum()))
    return drift.build_reference(ds, "3")


def test_a_unit_bug_under_a_point_mass_drifts_on_the_shape_and_more_zeros_do_not():
    """Miles sent as km move only the non-zero three quarters: the plain distance, diluted by
    the shared zeros, stays under its threshold; the shape off the point mass does not. A
    year that logs 44 % of its trips as 0 miles moves the point mass, not the shape."""
    reference = _miles_reference()
    assert reference.features["trip_miles"].point_masses == [0]
    rng = np.random.default_rng(12)

    def scored(values):
        return drift.score(reference, _one_feature("trip_miles", values.tolist()), THRESHOLDS)

    for _ in range(5):
        clean = scored(_miles(rng, 1000))
        assert not clean.is_drift and clean.scores["trip_miles"][drift.JS_SHAPE] < THRESHOLDS.shape_js / 2
    km = scored(_miles(rng, 1000, scale=1.609))
    assert km.drifted == {"trip_miles": [drift.JS_SHAPE]}
    assert km.scores["trip_miles"][drift.JS] < THRESHOLDS.js
    zeros = scored(_miles(rng, 1000, zeros=0.44))
    assert zeros.scores["trip_miles"][drift.JS_SHAPE] < THRESHOLDS.shape_js / 2 and not zeros.is_drift


def test_reference_cache_round_trip(tmp_path, monkeypatch):
    stats_dir = tmp_path / "StatisticsGen" / "statistics" / "5"
    (stats_dir / "Split-train").mkdir(parents=True)
    lst = statistics_pb2.DatasetFeatureStatisticsList()
    lst.datasets.append(_stats(np.random.default_rng(1)))
    (stats_dir / "Split-train" / "FeatureStats.pb").write_bytes(lst.SerializeToString())

    built = drift.cached_reference(tmp_path / "state", "7", str(stats_dir))
    path = tmp_path / "state" / "drift" / "reference-7.json"
    assert path.exists() and built.statistics_uri == str(stats_dir)

    def no_rebuild(*_a, **_k):
        raise AssertionError("the cached reference must be read, not rebuilt")

    monkeypatch.setattr(drift, "train_statistics", no_rebuild)
    cached = drift.cached_reference(tmp_path / "state", "7", str(stats_dir))
    assert cached.to_json() == built.to_json()
    events = _events(np.random.default_rng(8), 800, fare_scale=3.0)
    assert drift.score(cached, _window(events), THRESHOLDS).scores == drift.score(built, _window(events), THRESHOLDS).scores
