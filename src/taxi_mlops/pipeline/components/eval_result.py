"""Reading the Evaluator's output (TFMA) into plain dicts, for the SliceGate and MlflowLogger.

``slice_table`` is one row per slice (``overall``, ``payment_type=Cash``, ...) with the
candidate model's metrics, its class counts, Brier score and ECE; ``calibration`` is each
slice's calibration buckets. Runs in the TFX environment.
"""

from typing import Dict, List

from taxi_mlops.pipeline import slicing

CANDIDATE = "candidate"  # TFMA's model name when a baseline is evaluated beside it
# TFMA metric name -> our name (the rest keep TFMA's name).
RENAMES = {"mean_squared_error": "brier_score"}  # MSE of a probability on 0/1 labels is Brier
PLOT_KEY = "calibrationHistogramBuckets"


def load(evaluation_uri: str):
    """The candidate model's EvalResult (named ``candidate`` only when there is a baseline)."""
    import tensorflow_model_analysis as tfma

    result = tfma.load_eval_result(evaluation_uri, model_name=CANDIDATE)
    if result is None or not result.slicing_metrics:
        result = tfma.load_eval_result(evaluation_uri)
    return result


def _doubles(by_output) -> Dict[str, float]:
    out = {}
    for values in (by_output or {}).values():
        for sub in values.values():
            for name, value in sub.items():
                if isinstance(value, dict) and "doubleValue" in value:
                    out[RENAMES.get(name, name)] = float(value["doubleValue"])  # "NaN" too
    return out


def _number(value) -> float:
    """A bucket field as TFMA's JSON view gives it: a number, ``"-Infinity"`` or ``{"value": x}``.
    Proto3 leaves zeros out, so a missing field is 0 (the [0, 0.01) bucket has no lower bound)."""
    if isinstance(value, dict):
        value = value.get("value", 0.0)
    return float(value or 0.0)


def _buckets(by_output) -> List[List[float]]:
    """``[lower, upper, examples, label_sum, prediction_sum]`` of each non-empty bucket."""
    rows = []
    for values in (by_output or {}).values():
        for sub in values.values():
            for bucket in (sub.get(PLOT_KEY) or {}).get("buckets", []):
                row = [_number(bucket.get(field)) for field in (
                    "lowerThresholdInclusive", "upperThresholdExclusive", "numWeightedExamples",
                    "totalWeightedLabel", "totalWeightedRefinedPrediction")]
                if row[2]:
                    rows.append(row)
    return rows


def calibration(result) -> Dict[str, List[List[float]]]:
    return {slicing.slice_name(key): _buckets(by_output) for key, by_output in (result.plots or [])
            if by_output}


def slice_table(result) -> Dict[str, Dict[str, float]]:
    """``{slice: {metric: value}}`` with ``positives``, ``negatives`` and
    ``expected_calibration_error`` added to TFMA's metrics."""
    buckets = calibration(result)
    table = {}
    for key, by_output in result.slicing_metrics:
        name = slicing.slice_name(key)
        row = _doubles(by_output)
        row["positives"], row["negatives"] = slicing.class_counts(row)
        if buckets.get(name):
            row["expected_calibration_error"] = slicing.expected_calibration_error(buckets[name])
        table[name] = row
    return table
