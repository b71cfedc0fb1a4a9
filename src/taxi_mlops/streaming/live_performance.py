"""Model performance before the labels arrive, and prediction drift (issue 8).

Predictions come at trip start, labels at trip end, so realised accuracy always lags. Two
label-free signals fill the gap, both per model name and version over the label join's window:

* **Estimated accuracy** (confidence-based, CBPE-style): for a calibrated probability ``p`` the
  0.5-threshold decision is right with probability ``max(p, 1 - p)``, so the mean of that over
  the window's predictions estimates the accuracy the labels will show. Over the joined pairs
  the same estimate minus the realised accuracy is the estimator's error (apples to apples:
  both over the same pairs); a large error means the model is no longer calibrated on live
  data, so the label-free estimate cannot be trusted either.
* **Prediction drift**: the Jensen-Shannon distance (base 2: 0 = same, 1 = disjoint) between
  the window's scores and the version's scores on its evaluation split, both in the same 10
  equal-width probability bins. The reference is the run's ``evaluation/calibration.json``
  (TFMA calibration buckets), fetched once per version in a background thread (a slow MLflow
  never stalls the join) and cached in memory and under ``<state_dir>/drift/``.
* **Label shift** (prior shift: the tip rate moves while the trips look the same, so neither
  feature drift nor prediction drift sees it): the big-tipper rate of the version's joined
  labels against its eval split's mean label (the same ``calibration.json``: its buckets'
  label sums over their examples), by Fisher's exact test on the 2x2 table (the eval split is
  itself a sample of ~5,000 trips, so a two-sample test, not a binomial one against a fixed
  rate), plus the relative change as the effect size. Shifted means p below
  ``LABEL_SHIFT_ALPHA`` *and* a change of at least ``LABEL_SHIFT_MIN_EFFECT``, and only from
  ``LABEL_SHIFT_MIN_LABELS`` labels on.

The arithmetic here is pure (lists of counts in, floats out); the window bookkeeping lives in
``label_join.ModelWindow``.
"""

from __future__ import annotations

import json
import logging
import math
import re
import tempfile
import threading
import time
from pathlib import Path
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

N_BINS = 10
# Below this many predictions in the window the score is mostly sampling noise: with this
# model's eval distribution (two thirds of the scores below 0.1) a sample of 200 drawn from
# the reference itself already scores 0.09 (median) to 0.15 (p99); fewer would be worse.
DRIFT_MIN_PREDICTIONS = 200
OVERALL = "overall"
# Label shift, chosen with bench/drift_bench.py (sliding 1,000-label windows of shuffled rows,
# tested every 50 labels, an alarm after 4 shifted tests in a row). Below 500 labels one burst
# of alike trips decides (50 cash fares, none tipping, are p ~ 1e-6 on their own); a 30% drop
# is p < 0.001 in 64% of 500-label windows and 97% of 1,000-label ones. Alpha 0.001: the join
# re-tests an overlapping window every second (many looks); it gave 2 alarms in 1.2M clean
# labels (0.17 per 100k) where 0.01 gave 3 in 200k. 10% relative so a long window does not
# alarm on a change nobody would act on.
LABEL_SHIFT_MIN_LABELS = 500
LABEL_SHIFT_ALPHA = 1e-3
LABEL_SHIFT_MIN_EFFECT = 0.10
ARTIFACT = "evaluation/calibration.json"
RETRY_MISSING_S = 600.0  # a version without the artifact: look again this rarely
RETRY_ERROR_S = 30.0  # MLflow did not answer

log = logging.getLogger("taxi_mlops.streaming.live_performance")


def confidence(prob: float) -> float:
    """The probability that the 0.5-threshold decision on a calibrated ``prob`` is right."""
    return max(prob, 1.0 - prob)


def bin_index(prob: float, n_bins: int = N_BINS) -> int:
    """Equal-width bin of a probability; 1.0 goes to the last bin (as TFMA's last bucket)."""
    return min(max(int(prob * n_bins), 0), n_bins - 1)


def histogram(probs: Iterable[float], n_bins: int = N_BINS) -> list[int]:
    counts = [0] * n_bins
    for p in probs:
        counts[bin_index(p, n_bins)] += 1
    return counts


def reference_counts(doc: dict, slice_name: str = OVERALL, n_bins: int = N_BINS) -> list[float] | None:
    """The eval split's prediction counts per bin from a ``calibration.json`` document.

    The TFMA buckets (``[lower, upper, examples, label_sum, prediction_sum]``, infinite bounds
    written as null) are coarsened with ``slicing.calibration_bins``, the same regrouping the
    ECE uses; a document with only the pre-binned ``bins`` is used as is when they match.
    None when the slice is missing or empty."""
    from taxi_mlops.pipeline import slicing

    section = (doc.get("slices") or {}).get(slice_name) or {}
    buckets = section.get("buckets")
    if buckets:
        rows = [(-math.inf if lo is None else lo, math.inf if hi is None else hi, n or 0.0, 0.0, 0.0)
                for lo, hi, n, *_ in buckets]
        counts = [b["examples"] for b in slicing.calibration_bins(rows, n_bins)]
    elif len(section.get("bins") or ()) == n_bins:
        counts = [float(b.get("examples") or 0.0) for b in section["bins"]]
    else:
        return None
    return counts if sum(counts) > 0 else None


def drift_score(live: Sequence[float], reference: Sequence[float]) -> float | None:
    """Jensen-Shannon distance (base 2, in [0, 1]) between two binned distributions given as
    counts (normalised here); None when either is empty."""
    from scipy.spatial.distance import jensenshannon

    if len(live) != len(reference) or sum(live) <= 0 or sum(reference) <= 0:
        return None
    score = float(jensenshannon(list(map(float, live)), list(map(float, reference)), base=2))
    return min(1.0, max(0.0, score)) if math.isfinite(score) else None


# ---- label shift -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LabelReference:
    """The eval split's labels: how many of its examples were big tippers."""

    positives: int
    examples: int

    @property
    def rate(self) -> float:
        return self.positives / self.examples


@dataclass(frozen=True)
class LabelShift:
    n: int
    rate: float  # the window's big-tipper rate
    reference_rate: float
    effect: float  # relative change: rate / reference_rate - 1 (-0.3: 30% fewer big tippers)
    p_value: float  # two-sided Fisher exact, window vs eval split
    shifted: bool


def label_reference(doc: dict, slice_name: str = OVERALL) -> LabelReference | None:
    """The eval split's big-tipper count from a ``calibration.json`` document: the TFMA
    buckets' ``label_sum`` over their ``examples``. None without buckets, or when the split
    holds only one class (a test model): no rate to test against."""
    buckets = ((doc.get("slices") or {}).get(slice_name) or {}).get("buckets") or []
    examples = round(sum(b[2] or 0.0 for b in buckets if len(b) >= 4))
    positives = round(sum(b[3] or 0.0 for b in buckets if len(b) >= 4))
    return LabelReference(positives, examples) if 0 < positives < examples else None


def label_shift(positives: int, n: int, reference: LabelReference | None,
                alpha: float = LABEL_SHIFT_ALPHA, min_labels: int = LABEL_SHIFT_MIN_LABELS,
                min_effect: float = LABEL_SHIFT_MIN_EFFECT) -> LabelShift | None:
    """The window's positive-label rate against the reference's; None below ``min_labels``
    labels (sampling noise alone moves a small window's rate a lot) or without a reference."""
    from scipy.stats import fisher_exact

    if reference is None or n < max(1, min_labels) or not 0 <= positives <= n:
        return None
    table = [[positives, n - positives], [reference.positives, reference.examples - reference.positives]]
    p_value = float(fisher_exact(table, alternative="two-sided").pvalue)
    rate = positives / n
    effect = rate / reference.rate - 1.0
    return LabelShift(n=n, rate=rate, reference_rate=reference.rate, effect=effect, p_value=p_value,
                      shifted=p_value < alpha and abs(effect) >= min_effect)


# ---- the reference of each version --------------------------------------------------------------
def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)[:80]


def fetch_reference(tracking_uri: str, name: str, version: str) -> dict | None:
    """The version's run's ``calibration.json``, or None when the version or the artifact does
    not exist (a test model). Raises when MLflow does not answer (retried later)."""
    from mlflow.exceptions import MlflowException

    from taxi_mlops.registry import models

    client = models.client(tracking_uri)  # with the registry's HTTP timeouts
    try:
        run_id = client.get_model_version(name, version).run_id
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise
    if not run_id:
        return None
    # Listed first: a missing artifact is then an answer (no score), any download error a retry.
    if ARTIFACT not in {f.path for f in client.list_artifacts(run_id, ARTIFACT.rsplit("/", 1)[0])}:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path = client.download_artifacts(run_id, ARTIFACT, tmp)
        return {"run_id": run_id, "document": json.loads(Path(path).read_text())}


class ReferenceCache:
    """Each version's reference counts (and its eval labels, ``labels``): memory, then
    ``<state_dir>/drift/scores-<version>.json``, then MLflow in a background thread (at most one
    per version at a time). ``get`` never blocks: it answers what is known (None meanwhile) and
    schedules the fetch, so the join loop keeps its pace; a missing artifact is asked again
    after ``RETRY_MISSING_S``, an MLflow error after ``RETRY_ERROR_S``."""

    def __init__(self, directory: Path | None, fetch: Callable[[str, str], dict | None],
                 default_name: str | None = None, clock: Callable[[], float] = time.monotonic):
        self.directory, self.fetch, self.default_name, self.clock = directory, fetch, default_name, clock
        self.counts: dict[tuple[str, str], list[float]] = {}
        self.label_refs: dict[tuple[str, str], LabelReference | None] = {}
        self.retry_at: dict[tuple[str, str], float] = {}  # known-missing or failed: not before
        self._pending: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def path(self, name: str, version: str) -> Path | None:
        """``scores-<version>.json`` for the served model; other names (tests) get their own."""
        if self.directory is None:
            return None
        stem = _safe(version) if name == self.default_name else f"{_safe(name)}-{_safe(version)}"
        return self.directory / f"scores-{stem}.json"

    def get(self, name: str, version: str) -> list[float] | None:
        key = (name, version)
        with self._lock:
            if key in self.counts:
                return self.counts[key]
            if key in self._pending or self.clock() < self.retry_at.get(key, -math.inf):
                return None
        cached = self._read_disk(name, version)
        if cached is not None:
            with self._lock:
                self.counts[key] = cached
            return cached
        with self._lock:
            self._pending.add(key)
        threading.Thread(target=self._load, args=(name, version), daemon=True,
                         name=f"drift-reference-{version}").start()
        return None

    def labels(self, name: str, version: str) -> LabelReference | None:
        """The version's eval labels, loaded with its counts (so never blocks either)."""
        self.get(name, version)
        with self._lock:
            return self.label_refs.get((name, version))

    def _read_disk(self, name: str, version: str) -> list[float] | None:
        path = self.path(name, version)
        try:
            doc = json.loads(path.read_text()) if path is not None and path.exists() else None
        except (OSError, ValueError):
            return None
        # A file without "labels" predates label shift: fetched again, once, to add them.
        if not doc or doc.get("model_name") != name or len(doc.get("counts") or ()) != N_BINS \
                or "labels" not in doc:
            return None
        try:
            labels = LabelReference(int(doc["labels"]["positives"]), int(doc["labels"]["examples"])) \
                if doc["labels"] else None
        except (KeyError, TypeError, ValueError):
            return None
        with self._lock:
            self.label_refs[(name, version)] = labels
        return [float(c) for c in doc["counts"]]

    def _load(self, name: str, version: str) -> None:
        key = (name, version)
        counts, labels = None, None
        try:
            found = self.fetch(name, version) or {}
            doc = found.get("document")
            counts = reference_counts(doc) if doc else None
            labels = label_reference(doc) if doc and counts is not None else None
            if counts is None:
                log.info("%s v%s: no %s, no prediction drift score", name, version, ARTIFACT)
                retry = RETRY_MISSING_S
            else:
                self._write_disk(name, version, found.get("run_id"), counts, labels)
        except Exception as exc:  # MLflow down or slow: try again later
            log.warning("%s v%s: drift reference not loaded: %s", name, version, exc)
            retry = RETRY_ERROR_S
        with self._lock:
            self._pending.discard(key)
            if counts is not None:
                self.counts[key], self.label_refs[key] = counts, labels
            else:
                self.retry_at[key] = self.clock() + retry

    def _write_disk(self, name: str, version: str, run_id: str | None, counts: list[float],
                    labels: LabelReference | None = None) -> None:
        path = self.path(name, version)
        if path is None:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"model_name": name, "model_version": version, "run_id": run_id,
                                       "artifact": ARTIFACT, "slice": OVERALL, "counts": counts,
                                       "labels": labels and {"positives": labels.positives,
                                                             "examples": labels.examples}}))
            tmp.replace(path)
        except OSError as exc:  # the memory cache still holds it
            log.warning("drift reference of v%s not cached on disk: %s", version, exc)
