"""Label shift (issue 8): the tip rate moves while the trips look the same. Pure: no broker,
no MLflow; the thresholds are the module's."""

from __future__ import annotations

import json
import threading
from datetime import datetime, timezone
from types import SimpleNamespace

import numpy as np
import pytest

from taxi_mlops.streaming import events, live_performance as lp, metrics
from taxi_mlops.streaming.label_join import JoinState, ModelWindow

NOW = datetime(2024, 5, 1, 12, tzinfo=timezone.utc)
# The eval split of the pipeline run the bench reads: 1,105 big tippers in 4,964 trips (0.2226).
REF = lp.LabelReference(positives=1105, examples=4964)
CALIBRATION = {"slices": {"overall": {"buckets": [  # [lower, upper, examples, label_sum, prediction_sum]
    [None, 0.0, 0.0, 0.0, 0.0], [0.0, 0.1, 3000.0, 105.0, 90.0], [0.1, 0.5, 964.0, 200.0, 250.0],
    [0.5, 1.0, 1000.0, 800.0, 780.0], [1.0, None, 0.0, 0.0, 0.0]]}}}


def _windows(rate: float, n: int, count: int, seed: int) -> list[int]:
    """Big-tipper counts of ``count`` windows of ``n`` labels drawn at ``rate``."""
    return list(np.random.default_rng(seed).binomial(n, rate, size=count))


def test_the_reference_is_the_eval_splits_label_sum_over_its_examples():
    ref = lp.label_reference(CALIBRATION)
    assert ref == REF and ref.rate == pytest.approx(0.2226, abs=1e-4)
    one_class = {"slices": {"overall": {"buckets": [[0.0, 1.0, 50.0, 0.0, 3.0]]}}}
    assert lp.label_reference(one_class) is None          # a test model: nothing to test against
    assert lp.label_reference({"slices": {"overall": {"bins": [{"examples": 3.0}] * 10}}}) is None
    assert lp.label_reference({}) is None


def test_no_alarm_on_stationary_windows():
    for n in (500, 1000, 5000):
        shifts = [lp.label_shift(int(k), n, REF) for k in _windows(REF.rate, n, 200, seed=n)]
        assert all(s is not None for s in shifts)
        assert not [s for s in shifts if s.shifted], n
        assert max(abs(s.effect) for s in shifts) < 0.3  # noise, well inside what 500 labels can show


def test_alarm_on_a_30_percent_drop_in_the_tip_rate():
    shifts = [lp.label_shift(int(k), 1000, REF) for k in _windows(REF.rate * 0.7, 1000, 200, seed=1)]
    detected = sum(s.shifted for s in shifts)
    assert detected >= 190, detected                    # power ~0.98 at 1,000 labels
    assert np.median([s.effect for s in shifts]) == pytest.approx(-0.3, abs=0.03)
    assert all(s.reference_rate == pytest.approx(REF.rate) for s in shifts)
    rise = lp.label_shift(int(REF.rate * 1.4 * 1000), 1000, REF)  # two-sided: a rise is a shift too
    assert rise.shifted and rise.effect == pytest.approx(0.4, abs=0.01)


def test_no_alarm_below_the_minimum_number_of_labels():
    n = lp.LABEL_SHIFT_MIN_LABELS - 1
    assert lp.label_shift(0, n, REF) is None             # not one tipper in 499: still no verdict
    at_min = lp.label_shift(0, lp.LABEL_SHIFT_MIN_LABELS, REF)
    assert at_min.shifted and at_min.effect == -1.0
    assert lp.label_shift(100, 1000, None) is None       # no reference yet (or a test model)


def test_a_significant_but_small_change_is_not_a_shift():
    n = 1_000_000
    big_eval = lp.LabelReference(positives=222_603, examples=n)
    small = lp.label_shift(int(big_eval.rate * 1.05 * n), n, big_eval)
    assert small.p_value < lp.LABEL_SHIFT_ALPHA and not small.shifted  # 5%: below the 10% that matters


def test_the_eval_splits_own_sampling_error_counts():
    # Two samples, not a fixed rate: against 4,964 eval trips a 5% change is noise however
    # many live labels there are (a binomial test against 0.2226 would call it p ~ 1e-155).
    n = 1_000_000
    assert lp.label_shift(int(REF.rate * 1.05 * n), n, REF).p_value > 0.01


def _prediction(trip_id, prob):
    return events.PredictionLog(request_id=f"r-{trip_id}", trip_id=trip_id, model_name="tips",
                                model_version="1", model_alias="champion", tip_probability=prob,
                                latency_ms=1.0, timestamp=NOW)


def _label(trip_id, big):
    return events.LabelEvent(trip_id=trip_id, event_time=NOW, pickup_community_area=8, tips=3.0,
                             fare=10.0, big_tipper=big)


def _join(state: JoinState, labels: list[int], start: float = 0.0, prefix: str = "t") -> None:
    for i, big in enumerate(labels):
        state.add_prediction(_prediction(f"{prefix}{i}", 0.3), start + i * 0.001)
        state.add_label(_label(f"{prefix}{i}", bool(big)), start + i * 0.001)


def test_the_window_tests_its_joined_labels_and_forgets_expired_ones():
    state = JoinState(window_s=60)
    rng = np.random.default_rng(4)
    _join(state, list((rng.random(1000) < REF.rate * 0.6).astype(int)))   # a 40% drop
    window = state.models[("tips", "1")]
    shift = window.update_label_shift(REF)
    assert shift.shifted and shift.n == 1000 and shift.rate == pytest.approx(window.positives / 1000)
    window.changed = False
    assert window.update_label_shift(REF) is shift and not window.changed  # same counts: not re-tested
    state.expire(now=61.5)                               # every pair leaves the window
    assert window.n == 0 and window.update_label_shift(REF) is None and window.changed
    _join(state, list((rng.random(1000) < REF.rate).astype(int)), start=100.0, prefix="u")
    assert not window.update_label_shift(REF).shifted    # the rate came back


def test_metrics_expose_the_reference_effect_p_value_and_decision():
    state = JoinState(window_s=600)
    _join(state, [1] * 100 + [0] * 900)                  # 0.10 against 0.2226: -55%
    state.models[("tips", "1")].update_label_shift(REF)
    state.add_prediction(_prediction("lonely", 0.9), 1.0)
    small = state.models.setdefault(("tips", "2"), ModelWindow(alias="challenger"))
    small.add(0.2, 1)
    small.update_label_shift(REF)                         # 1 label: reference known, no verdict
    worker = SimpleNamespace(stats={"labels": 1000, "predictions": 1001, "joined": 1000}, state=state)
    families = {f.name: f for f in metrics.LabelJoinMetrics(worker).collect()}

    def value(family, **labels):
        found = [s.value for s in families[family].samples if labels.items() <= s.labels.items()]
        return found[0] if found else None

    v1 = {"model_name": "tips", "model_version": "1"}
    assert value("taxi_label_reference_rate", **v1) == pytest.approx(REF.rate)
    assert value("taxi_label_shift_effect", **v1, alias="champion") == pytest.approx(0.1 / REF.rate - 1)
    assert value("taxi_label_shift_p_value", **v1) < 1e-12
    assert value("taxi_label_shift_detected", **v1) == 1
    assert value("taxi_live_positive_rate", **v1) == pytest.approx(0.1)  # the rate being tested
    v2 = {"model_name": "tips", "model_version": "2"}
    assert value("taxi_label_reference_rate", **v2) == pytest.approx(REF.rate)
    assert value("taxi_label_shift_detected", **v2) is None


def _wait(cache, key):
    for t in list(threading.enumerate()):
        if t.name.startswith("drift-reference-"):
            t.join(5)
    return cache.labels(*key)


def test_the_label_reference_is_fetched_with_the_scores_and_cached_on_disk(tmp_path):
    calls = []
    release = threading.Event()  # holds the fetch until the first answer is checked

    def fetch(name, version):
        calls.append(version)
        assert release.wait(10), "the test never released the fetch"
        return {"run_id": "r1", "document": CALIBRATION}

    cache = lp.ReferenceCache(tmp_path, fetch, default_name="tips")
    assert cache.labels("tips", "3") is None             # never blocks: fetched in the background
    release.set()
    assert _wait(cache, ("tips", "3")) == REF and calls == ["3"]
    stored = json.loads((tmp_path / "scores-3.json").read_text())
    assert stored["labels"] == {"positives": 1105, "examples": 4964}

    restarted = lp.ReferenceCache(tmp_path, lambda *a: pytest.fail("refetched"), default_name="tips")
    assert restarted.labels("tips", "3") == REF
    # A cache file from before label shift has no labels: fetched once more to add them.
    del stored["labels"]
    (tmp_path / "scores-3.json").write_text(json.dumps(stored))
    release.clear()
    older = lp.ReferenceCache(tmp_path, fetch, default_name="tips")
    assert older.labels("tips", "3") is None
    release.set()
    assert _wait(older, ("tips", "3")) == REF and calls == ["3", "3"]
