"""The slice definitions, the per-slice blessing rule and ECE (pure Python, no stack)."""

import math

import pandas as pd
import pytest

from taxi_mlops.features import schema
from taxi_mlops.pipeline import launcher, quality, slicing


def _slice(n, positives, auc):
    return {"example_count": float(n), "mean_label": positives / n, "auc": auc}


def test_hour_buckets_cover_the_day():
    assert [slicing.hour_bucket(h) for h in (0, 5, 6, 11, 12, 17, 18, 23)] == [
        "night", "night", "morning", "morning", "afternoon", "afternoon", "evening", "evening"]


def test_slice_columns_are_not_model_inputs():
    assert not set(slicing.SLICE_COLUMNS) & set(schema.SERVING_DTYPES)
    assert launcher.input_columns()[:len(schema.MODEL_INPUTS)] == schema.MODEL_INPUTS
    frame = launcher.with_slice_columns(pd.DataFrame(
        {"company_trip_count": [0.0, 3.0], "trip_start_hour": [2, 19]}))
    assert frame["company_known"].tolist() == ["unseen", "known"]
    assert frame["hour_bucket"].tolist() == ["night", "evening"]


def test_metric_names_are_sanitized():
    assert slicing.metric_key("payment_type=Cash", "auc") == "slice_payment_type_Cash_auc"
    assert slicing.metric_key("payment_type=Credit Card", "auc") == "slice_payment_type_Credit_Card_auc"
    assert slicing.metric_key("pickup_community_area=-1", "auc") == "slice_pickup_community_area_-1_auc"
    assert slicing.metric_key("overall", "auc") == "eval_auc"
    assert slicing.slice_name((("payment_type", b"Cash"),)) == "payment_type=Cash"
    assert slicing.slice_name(()) == "overall"


@pytest.mark.parametrize("n, positives, counted", [
    (200, 20, True), (199, 50, False), (1000, 19, False), (1000, 981, False), (1000, 980, True)])
def test_which_slices_the_bar_applies_to(n, positives, counted):
    assert slicing.counts(_slice(n, positives, 0.5)) is counted


def test_gate_passes_and_fails_on_the_bar():
    bar = quality.MIN_SLICE_AUC
    assert slicing.gate({"a=1": _slice(500, 100, bar)}).passed
    verdict = slicing.gate({"a=1": _slice(500, 100, bar - 1e-6), "a=2": _slice(100, 10, 0.1),
                            "overall": _slice(5000, 1000, 0.1)})
    assert not verdict.passed and verdict.checked == ["a=1"] and verdict.failed == ["a=1"]
    assert not slicing.gate({"a=1": _slice(500, 100, float("nan"))}).passed


def test_expected_calibration_error():
    # 100 TFMA-style buckets of width 0.01: predictions 0.15 with 10% positives, 0.85 with 90%.
    buckets = [[-math.inf, 0.0, 0, 0, 0]]
    buckets += [[i / 100, (i + 1) / 100, 0, 0, 0] for i in range(100)]
    buckets[16] = [0.15, 0.16, 100, 10, 15.0]  # |10 - 15| = 5
    buckets[86] = [0.85, 0.86, 100, 90, 85.0]  # |90 - 85| = 5
    buckets.append([1.0, math.inf, 0, 0, 0])
    assert slicing.expected_calibration_error(buckets) == pytest.approx(10 / 200)
    bins = slicing.calibration_bins(buckets)
    assert [b["examples"] for b in bins] == [0, 100, 0, 0, 0, 0, 0, 0, 100, 0]
    # Perfect calibration inside each bin: ECE 0; buckets off [0, 1) land in the end bins.
    assert slicing.expected_calibration_error([[0.3, 0.31, 10, 3, 3.0], [1.0, math.inf, 5, 5, 5.0]]) == 0
    assert slicing.calibration_bins([[1.0, math.inf, 5, 5, 5.0]])[-1]["examples"] == 5
    assert math.isnan(slicing.expected_calibration_error([]))
