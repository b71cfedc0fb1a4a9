"""Evaluation slices and the per-slice blessing rule, in pure Python.

Imported by the launcher (Python 3.11: it writes the slice-only columns into the pipeline's
CSV), by the pipeline and its components (Python 3.10) and by the tests, so a slice is
defined once. Nothing here imports TFX, TFMA or pandas.

Slice-only columns (``SLICE_COLUMNS``) are in the Examples for TFMA to slice on; they are not
model inputs: ``preprocessing_fn`` never reads them and both serving signatures leave them out.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

from taxi_mlops.pipeline import quality

COMPANY_KNOWN = "company_known"  # "known" / "unseen": the company had no trip before this one
HOUR_BUCKET = "hour_bucket"  # night / morning / afternoon / evening
SLICE_COLUMNS = [COMPANY_KNOWN, HOUR_BUCKET]
# Every slice family the Evaluator reports (one feature each), besides the overall slice.
SLICE_FEATURES = ["payment_type", COMPANY_KNOWN, HOUR_BUCKET, "pickup_community_area"]
OVERALL = "overall"

HOUR_BUCKETS = (("night", 0, 5), ("morning", 6, 11), ("afternoon", 12, 17), ("evening", 18, 23))
ECE_BINS = 10


def hour_bucket(hour) -> str:
    hour = int(hour) % 24
    return next(name for name, first, last in HOUR_BUCKETS if first <= hour <= last)


def company_known(company_trip_count) -> str:
    """``company_trip_count`` is the company's point-in-time count: 0 means no history."""
    return "known" if float(company_trip_count) > 0 else "unseen"


def slice_name(slice_key: Sequence) -> str:
    """TFMA slice key (``()`` or ``(("payment_type", "Cash"),)``) -> ``overall`` /
    ``payment_type=Cash``."""
    if not slice_key:
        return OVERALL
    parts = []
    for feature, value in slice_key:
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        parts.append(f"{feature}={value}")
    return ",".join(parts)


def metric_key(name: str, metric: str) -> str:
    """MLflow metric name of a slice's metric: ``slice_payment_type_Credit_Card_auc``."""
    if name == OVERALL:
        return f"eval_{metric}"
    return "slice_" + re.sub(r"[^A-Za-z0-9_.-]+", "_", name.replace("=", "_")) + f"_{metric}"


# -- the blessing rule --------------------------------------------------------------------

@dataclass(frozen=True)
class SliceBars:
    min_auc: float = quality.MIN_SLICE_AUC
    min_examples: int = quality.MIN_SLICE_EXAMPLES
    min_class_examples: int = quality.MIN_SLICE_CLASS_EXAMPLES


@dataclass
class Verdict:
    passed: bool
    checked: list[str] = field(default_factory=list)  # slices the rule applies to
    failed: list[str] = field(default_factory=list)  # of those, AUC below the bar (or unknown)

    def as_dict(self) -> dict:
        return {"passed": self.passed, "checked": self.checked, "failed": self.failed}


def class_counts(stats: Mapping[str, float]) -> tuple[int, int]:
    """(positives, negatives) of a slice, from its ``example_count`` and ``mean_label``."""
    n = float(stats.get("example_count", 0) or 0)
    positives = round(n * float(stats.get("mean_label", 0) or 0))
    return int(positives), int(round(n) - positives)


def counts(stats: Mapping[str, float], bars: SliceBars = SliceBars()) -> bool:
    """Does the per-slice AUC bar apply to this slice (big enough, both classes present)?"""
    positives, negatives = class_counts(stats)
    return (float(stats.get("example_count", 0) or 0) >= bars.min_examples
            and positives >= bars.min_class_examples and negatives >= bars.min_class_examples)


def gate(slices: Mapping[str, Mapping[str, float]], bars: SliceBars = SliceBars()) -> Verdict:
    """The rule: every slice the bar applies to (overall excluded: the Evaluator gates it)
    has AUC >= ``bars.min_auc``. A missing or NaN AUC on such a slice fails it."""
    verdict = Verdict(passed=True)
    for name in sorted(slices):
        stats = slices[name]
        if name == OVERALL or not counts(stats, bars):
            continue
        verdict.checked.append(name)
        auc = stats.get("auc")
        if auc is None or not math.isfinite(float(auc)) or float(auc) < bars.min_auc:
            verdict.failed.append(name)
    verdict.passed = not verdict.failed
    return verdict


# -- calibration ----------------------------------------------------------------------------

def calibration_bins(buckets: Iterable[Sequence[float]], n_bins: int = ECE_BINS) -> list[dict]:
    """TFMA calibration-plot buckets ``(lower, upper, examples, label_sum, prediction_sum)``
    regrouped into ``n_bins`` equal-width bins of the predicted probability over [0, 1].
    A bucket goes to the bin holding its midpoint (buckets below 0 or from 1 up go to the end
    bins), so the regrouping is exact when ``n_bins`` divides TFMA's bucket count."""
    bins = [{"lower": i / n_bins, "upper": (i + 1) / n_bins, "examples": 0.0, "label_sum": 0.0,
             "prediction_sum": 0.0} for i in range(n_bins)]
    for lower, upper, examples, label_sum, prediction_sum in buckets:
        if not examples:
            continue
        if not math.isfinite(lower):
            index = 0
        elif not math.isfinite(upper):
            index = n_bins - 1
        else:
            index = min(max(int((lower + upper) / 2 * n_bins), 0), n_bins - 1)
        bins[index]["examples"] += examples
        bins[index]["label_sum"] += label_sum
        bins[index]["prediction_sum"] += prediction_sum
    return bins


def expected_calibration_error(buckets: Iterable[Sequence[float]], n_bins: int = ECE_BINS) -> float:
    """ECE (Naeini et al. 2015; Guo et al. 2017) with ``n_bins`` equal-width bins:
    sum over bins of (bin examples / all examples) * |mean label - mean prediction|,
    i.e. sum |label_sum - prediction_sum| / N. NaN for an empty slice."""
    bins = calibration_bins(buckets, n_bins)
    total = sum(b["examples"] for b in bins)
    if not total:
        return float("nan")
    return sum(abs(b["label_sum"] - b["prediction_sum"]) for b in bins) / total
