"""Performance before labels and prediction drift (issue 8, part 3): pure, no broker, no MLflow."""

from __future__ import annotations

import json
import random
import threading
from datetime import datetime, timezone
from types import SimpleNamespace

import pytest

from taxi_mlops.streaming import events, live_performance as lp, metrics, topics
from taxi_mlops.streaming.label_join import JoinState, ModelWindow

NOW = datetime(2024, 5, 1, 12, tzinfo=timezone.utc)
TIPS = ("tips", "1")


def _prediction(trip_id, prob, version="1", shadow=False, alias="champion", request_id=None):
    return events.PredictionLog(request_id=request_id or f"r-{trip_id}-{version}", trip_id=trip_id,
                                model_name="tips", model_version=version, model_alias=alias,
                                tip_probability=prob, latency_ms=1.0, timestamp=NOW, shadow=shadow)


def _label(trip_id, big):
    return events.LabelEvent(trip_id=trip_id, event_time=NOW, pickup_community_area=8, tips=3.0,
                             fare=10.0, big_tipper=big)


# ---- the estimate before labels -------------------------------------------------------------------
def test_estimate_covers_every_prediction_in_the_window_and_expires_with_it():
    state = JoinState(window_s=60)
    state.add_prediction(_prediction("a", 0.9), 0.0)
    state.add_prediction(_prediction("b", 0.2), 0.0)
    state.add_prediction(_prediction("b", 0.2), 1.0)      # a redelivery counts once
    state.add_prediction(_prediction("c", 0.6), 50.0)
    state.add_prediction(_prediction(None, 0.7, request_id="no-trip"), 50.0)  # no trip id: still a prediction
    window = state.models[TIPS]
    assert window.predicted == 4 and window.n == 0       # nothing labelled yet, still an estimate
    assert window.estimated_accuracy == pytest.approx((0.9 + 0.8 + 0.6 + 0.7) / 4)
    assert window.estimation_error is None
    state.expire(now=70.0)                               # a and b leave the window
    assert window.predicted == 2
    assert window.estimated_accuracy == pytest.approx((0.6 + 0.7) / 2)
    state.expire(now=1_000.0)
    assert window.predicted == 0 and window.estimated_accuracy is None
    assert not state.predicted and not state.predicted_keys
    assert window.bins == [0] * lp.N_BINS


def test_shadow_predictions_count_for_their_own_version():
    state = JoinState(window_s=60)
    state.add_prediction(_prediction("a", 0.9), 0.0)
    state.add_prediction(_prediction("a", 0.3, version="2", shadow=True, alias="challenger"), 0.0)
    assert state.models[("tips", "1")].predicted == 1
    assert state.models[("tips", "2")].predicted == 1
    assert state.models[("tips", "2")].estimated_accuracy == pytest.approx(0.7)
    assert state.models[("tips", "2")].alias == "challenger"


def test_estimation_error_is_estimated_minus_realised_over_the_joined_pairs():
    state = JoinState(window_s=600)
    # joined: 0.9 & 1 (right), 0.8 & 0 (wrong), 0.3 & 0 (right), 0.4 & 1 (wrong); one unlabelled 0.5
    for i, (prob, big) in enumerate([(0.9, True), (0.8, False), (0.3, False), (0.4, True)]):
        state.add_prediction(_prediction(f"t{i}", prob), float(i))
        state.add_label(_label(f"t{i}", big), float(i) + 10)
    state.add_prediction(_prediction("pending", 0.5), 5.0)
    window = state.models[TIPS]
    assert window.n == 4 and window.accuracy == 0.5
    assert window.estimation_error == pytest.approx((0.9 + 0.8 + 0.7 + 0.6) / 4 - 0.5)
    # the all-predictions estimate includes the unlabelled one
    assert window.estimated_accuracy == pytest.approx((0.9 + 0.8 + 0.7 + 0.6 + 0.5) / 5)
    state.expire(now=612.5)  # the first three pairs (labels at 10..12) and predictions leave
    assert window.n == 1 and window.estimation_error == pytest.approx(0.6 - 0.0)


def test_a_calibrated_model_has_an_estimate_close_to_its_realised_accuracy():
    rng = random.Random(7)
    window = ModelWindow()
    for _ in range(20_000):
        p = rng.random() ** 3  # skewed low, like the tip model
        window.add_predicted(p)
        window.add(p, int(rng.random() < p))  # labels drawn from p: calibrated by construction
    assert abs(window.estimation_error) < 0.01


# ---- prediction drift -------------------------------------------------------------------------------
CALIBRATION = {  # the shape `mlflow_logger._calibration_doc` writes (TFMA buckets, inf as null)
    "ece_bins": 10,
    "slices": {
        "payment_type=Cash": {"examples": 5.0, "buckets": [[0.0, 0.01, 5.0, 0.0, 0.01]]},
        "overall": {
            "examples": 1000.0,
            "bins": [{"lower": i / 10, "upper": (i + 1) / 10, "examples": 0.0} for i in range(10)],
            "buckets": [[None, 0.0, 0.0, 0.0, 0.0]]
            + [[i / 100, (i + 1) / 100, float(n), 0.0, 0.0]
               for i, n in enumerate([600] + [10] * 9 + [5] * 80 + [0] * 5 + [0] * 4 + [0])]
            + [[1.0, None, 0.0, 0.0, 0.0]],
        },
    },
}
# 600 + 9*10 in [0, 0.1); 5 per 0.01 bucket after: 50 per bin for bins 1..8, 0 for bin 9.
REFERENCE = [690.0] + [50.0] * 8 + [0.0]


def test_reference_is_the_eval_splits_buckets_coarsened_to_ten_bins():
    assert lp.reference_counts(CALIBRATION) == pytest.approx(REFERENCE)
    only_bins = {"slices": {"overall": {"bins": [{"examples": 3.0}] * 10}}}
    assert lp.reference_counts(only_bins) == [3.0] * 10
    assert lp.reference_counts({"slices": {}}) is None
    assert lp.reference_counts({"slices": {"overall": {"buckets": [[0.0, 0.01, 0.0, 0, 0]]}}}) is None


def test_bins_are_equal_width_and_one_goes_to_the_last():
    assert lp.histogram([0.0, 0.05, 0.1, 0.55, 0.99, 1.0]) == [2, 1, 0, 0, 0, 1, 0, 0, 0, 2]


def _sample(reference, n, rng, shift=0.0):
    """``n`` scores drawn from the reference's bins (uniform inside a bin), moved by ``shift``."""
    bins = rng.choices(range(10), weights=reference, k=n)
    return [min(1.0, max(0.0, (b + rng.random()) / 10 + shift)) for b in bins]


def test_drift_is_near_zero_for_the_same_distribution_and_large_for_a_shifted_one():
    rng = random.Random(3)
    same = lp.drift_score(lp.histogram(_sample(REFERENCE, 3000, rng)), REFERENCE)
    shifted = lp.drift_score(lp.histogram(_sample(REFERENCE, 3000, rng, shift=0.3)), REFERENCE)
    assert same < 0.05
    assert shifted > 0.5
    assert lp.drift_score([0] * 10, REFERENCE) is None
    assert lp.drift_score([1] * 10, [0] * 10) is None
    assert lp.drift_score([5] + [0] * 9, [0] * 9 + [5]) == pytest.approx(1.0)  # disjoint


def test_drift_needs_enough_predictions_and_a_reference():
    rng = random.Random(1)
    window = ModelWindow()
    for p in _sample(REFERENCE, lp.DRIFT_MIN_PREDICTIONS - 1, rng):
        window.add_predicted(p)
    assert window.update_drift(REFERENCE) is None
    window.add_predicted(0.05)
    assert window.update_drift(None) is None                 # a test model: no artifact, no score
    score = window.update_drift(REFERENCE)
    assert score is not None and 0 <= score < 0.2 and window.drift == score


# ---- the reference cache ----------------------------------------------------------------------------
def _wait(cache, key):
    for t in list(threading.enumerate()):
        if t.name.startswith("drift-reference-"):
            t.join(5)
    return cache.get(*key)


def test_reference_is_fetched_once_then_read_from_disk_after_a_restart(tmp_path):
    calls = []
    release = threading.Event()  # holds the fetch until the first answer is checked

    def fetch(name, version):
        calls.append((name, version))
        assert release.wait(10), "the test never released the fetch"
        return {"run_id": "r1", "document": CALIBRATION} if version == "3" else None

    cache = lp.ReferenceCache(tmp_path / "drift", fetch, default_name="tips")
    assert cache.get("tips", "3") is None                    # never blocks: fetched in the background
    release.set()
    assert _wait(cache, ("tips", "3")) == pytest.approx(REFERENCE)
    assert cache.get("tips", "3") == pytest.approx(REFERENCE) and calls == [("tips", "3")]
    stored = json.loads((tmp_path / "drift" / "scores-3.json").read_text())
    assert stored["model_name"] == "tips" and stored["run_id"] == "r1"

    restarted = lp.ReferenceCache(tmp_path / "drift", lambda *a: pytest.fail("refetched"), default_name="tips")
    assert restarted.get("tips", "3") == pytest.approx(REFERENCE)
    # another model's version 3 is not that file
    assert restarted.path("other", "3").name == "scores-other-3.json"

    assert cache.get("tips", "test-model") is None
    assert _wait(cache, ("tips", "test-model")) is None       # no artifact: no score, no retry storm
    assert calls.count(("tips", "test-model")) == 1


def test_mlflow_errors_are_retried_later_not_raised(tmp_path):
    now = [0.0]

    def fetch(name, version):
        raise TimeoutError("mlflow is slow")

    cache = lp.ReferenceCache(tmp_path, fetch, clock=lambda: now[0])
    assert cache.get("tips", "1") is None and _wait(cache, ("tips", "1")) is None
    assert cache.retry_at[("tips", "1")] == lp.RETRY_ERROR_S


# ---- exposure ---------------------------------------------------------------------------------------
def test_metrics_expose_the_estimate_its_error_and_the_drift():
    state = JoinState(window_s=600)
    rng = random.Random(5)
    for i, p in enumerate(_sample(REFERENCE, 250, rng)):
        state.add_prediction(_prediction(f"t{i}", p), float(i))
        if i < 100:
            state.add_label(_label(f"t{i}", p >= 0.5), float(i))
    state.models[TIPS].update_drift(REFERENCE)
    state.add_prediction(_prediction("s", 0.8, version="9", alias="challenger"), 1.0)
    worker = SimpleNamespace(stats={"labels": 100, "predictions": 251, "joined": 100}, state=state)
    families = {f.name: f for f in metrics.LabelJoinMetrics(worker).collect()}

    def value(family, **labels):
        found = [s.value for s in families[family].samples if labels.items() <= s.labels.items()]
        return found[0] if found else None

    v1 = {"model_name": "tips", "model_version": "1", "alias": "champion"}
    window = state.models[TIPS]
    assert value("taxi_live_predictions", **v1) == 250
    assert value("taxi_live_estimated_accuracy", **v1) == pytest.approx(window.estimated_accuracy)
    assert value("taxi_live_estimation_error", **v1) == pytest.approx(window.estimation_error)
    assert value("taxi_prediction_drift_score", model_name="tips", model_version="1") == window.drift
    v9 = {"model_name": "tips", "model_version": "9", "alias": "challenger"}
    assert value("taxi_live_estimated_accuracy", **v9) == pytest.approx(0.8)
    assert value("taxi_live_estimation_error", **v9) is None        # nothing joined yet
    assert value("taxi_prediction_drift_score", model_name="tips", model_version="9") is None


def test_model_metrics_v2_carries_the_estimate_and_v1_still_decodes():
    window = ModelWindow(alias="champion")
    for p, label in [(0.9, 1), (0.2, 0)]:
        window.add_predicted(p)
        window.add(p, label)
    record = window.metrics("tips", "1", 600.0)
    decoded = events.decode(topics.MODEL_METRICS, record.to_bytes())
    assert isinstance(decoded, events.ModelMetricsV2) and decoded.schema_version == 2
    assert decoded.predictions == 2 and decoded.estimated_accuracy == pytest.approx(0.85)
    assert decoded.estimation_error == pytest.approx(-0.15) and decoded.prediction_drift is None
    v1 = events.ModelMetricsV1(model_name="tips", model_version="1", window_s=600.0, n=0, timestamp=NOW)
    assert isinstance(events.decode(topics.MODEL_METRICS, v1.to_bytes()), events.ModelMetricsV1)
