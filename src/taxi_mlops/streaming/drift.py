"""Feature drift of the live trips against the champion's training statistics: pure logic.

Why here and not in TFDV: the data-quality worker already sees every trip, and TFDV's
``validate_statistics`` needs TensorFlow and a full statistics pass per window. The
reference is what StatisticsGen already computed for the run that trained the champion
(its train split), so the training CSV is never read again.

* ``build_reference`` turns the train split's ``DatasetFeatureStatistics`` into one
  ``FeatureReference`` per trip feature: numeric features keep TFDV's *quantiles* histogram
  (bucket edges + probabilities; equal-width buckets put 99% of the fares in one bucket,
  so a x1.5 fare would not move them), string features the rank histogram's category
  frequencies plus an ``other`` bucket; both with the training missing rate.
* ``DriftWindow`` collects one window's values (cheap per event: list appends).
* ``score`` compares the window with the reference per feature and test: numeric
  ``jensen_shannon`` distance (base 2, in [0, 1]) over the reference buckets;
  ``jensen_shannon_shape``, the same over the bins that hold no point mass, for features
  that have one (a quarter of the trips are 0 miles: that shared mass hides a unit bug,
  miles sent as km, from the plain distance, while 2013's surplus of 0-mile trips moves
  only the point mass and not the shape); and
  ``wasserstein`` between the bucket-index distributions divided by the bucket count
  (how far mass moved, in shares of the reference's quantiles; reported, not decided on);
  categorical ``linf`` (max |frequency difference|, TFDV's comparator); every feature
  ``missing_rate`` (absolute difference: a null storm). A feature drifts when a decided
  test exceeds its threshold; windows under ``min_events`` are not scored. Calendar fields
  (``CALENDAR_FEATURES``) are scored but only their missing rate is decided on.

TFDV's quantile buckets are right-closed, ``(low, high]``; a bucket with low == high is a
point mass (TFDV splits a heavy value over several such buckets). Values are compared as
float32, as the statistics were computed from float32 ``tf.Example`` features.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
from scipy.spatial.distance import jensenshannon
from scipy.stats import wasserstein_distance
from tensorflow_metadata.proto.v0 import statistics_pb2

NUMERIC, CATEGORICAL = "numeric", "categorical"
JS, JS_SHAPE, WASSERSTEIN = "jensen_shannon", "jensen_shannon_shape", "wasserstein"
LINF, MISSING = "linf", "missing_rate"
TESTS = (JS, JS_SHAPE, WASSERSTEIN, LINF, MISSING)
OTHER = "__other__"
REFERENCE_FORMAT = 2
TRAIN_SPLIT = "train"

# The trip event's fields that are training features (``quality_checks.TRIP_FIELDS``).
DEFAULT_FEATURES = ("company", "payment_type", "fare", "trip_miles", "trip_seconds", "trip_start_hour",
                    "trip_start_day", "trip_start_month", "pickup_community_area", "dropoff_community_area",
                    "pickup_latitude", "pickup_longitude", "dropoff_latitude", "dropoff_longitude")


# The clock sets these in a live window (a minute holds one hour, one weekday, one month), so
# their distribution against four years of training is scored and reported, not decided on.
CALENDAR_FEATURES = ("trip_start_hour", "trip_start_day", "trip_start_month")


@dataclass(frozen=True)
class Thresholds:
    """Decision thresholds (``Settings.drift_*``); see README "Drift" for how they were measured."""

    js: float = 0.25
    shape_js: float = 0.18
    linf: float = 0.15
    missing: float = 0.1
    min_events: int = 500
    report_only: tuple[str, ...] = CALENDAR_FEATURES

    @classmethod
    def from_settings(cls, settings) -> "Thresholds":
        return cls(js=settings.drift_threshold_js, shape_js=settings.drift_threshold_shape_js,
                   linf=settings.drift_threshold_linf,
                   missing=settings.drift_threshold_missing, min_events=settings.drift_min_events,
                   report_only=tuple(f.strip() for f in settings.drift_report_only_features.split(",") if f.strip()))

    def limits(self) -> dict[str, float]:
        """The decided tests and their thresholds (a report-only feature is decided on MISSING alone)."""
        return {JS: self.js, JS_SHAPE: self.shape_js, LINF: self.linf, MISSING: self.missing}


@dataclass
class FeatureReference:
    name: str
    kind: str  # numeric | categorical
    probs: list[float]  # numeric: len(edges) + 1 bins; categorical: categories + other
    missing_rate: float
    edges: list[float] = field(default_factory=list)
    categories: list[str] = field(default_factory=list)
    point_masses: list[int] = field(default_factory=list)  # numeric: bins holding a TFDV [a, a] bucket

    def __post_init__(self) -> None:
        self._edges32 = np.asarray(self.edges, dtype=np.float32)
        self._index = {c: i for i, c in enumerate(self.categories)}

    def bin_counts(self, values: list) -> np.ndarray:
        """The window's non-missing values counted in the reference's bins."""
        if self.kind == NUMERIC:
            idx = np.searchsorted(self._edges32, np.asarray(values, dtype=np.float32), side="left")
            return np.bincount(idx, minlength=len(self.probs)).astype(float)
        counts = np.zeros(len(self.probs))
        other = len(self.categories)
        for value, n in Counter(values).items():
            counts[self._index.get(value, other)] += n
        return counts

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if not k.startswith("_")}


@dataclass
class DriftReference:
    model_version: str
    statistics_uri: str
    split: str
    num_examples: int
    features: dict[str, FeatureReference]
    format: int = REFERENCE_FORMAT

    def to_json(self) -> str:
        return json.dumps({"format": self.format, "model_version": self.model_version,
                           "statistics_uri": self.statistics_uri, "split": self.split,
                           "num_examples": self.num_examples,
                           "features": {n: f.to_dict() for n, f in self.features.items()}}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> "DriftReference":
        data = json.loads(text)
        if data.get("format") != REFERENCE_FORMAT:
            raise ValueError(f"drift reference format {data.get('format')!r}, expected {REFERENCE_FORMAT}")
        feats = {n: FeatureReference(**f) for n, f in data.pop("features").items()}
        return cls(features=feats, **data)


# ---- building the reference ----------------------------------------------------------------------
def train_statistics(uri: str | Path) -> statistics_pb2.DatasetFeatureStatistics:
    """The train split of an ExampleStatistics artifact (``Split-train/FeatureStats.pb``)."""
    path = Path(uri) / f"Split-{TRAIN_SPLIT}" / "FeatureStats.pb"
    stats = statistics_pb2.DatasetFeatureStatisticsList()
    stats.ParseFromString(path.read_bytes())
    if not stats.datasets:
        raise ValueError(f"{path} holds no dataset")
    return stats.datasets[0]


def _feature_name(feat) -> str:
    return feat.path.step[-1] if feat.path.step else feat.name


def _missing_rate(common) -> float:
    total = common.num_missing + common.num_non_missing
    return float(common.num_missing / total) if total else 0.0


def _numeric(name: str, num) -> FeatureReference:
    hist = next((h for h in num.histograms if h.type == statistics_pb2.Histogram.QUANTILES), None)
    if hist is None or not hist.buckets:
        hist = next((h for h in num.histograms if h.buckets), None)
    if hist is None:
        raise ValueError(f"{name}: no histogram in the statistics")
    edges = sorted({float(np.float32(v)) for b in hist.buckets for v in (b.low_value, b.high_value)})
    first = hist.buckets[0]
    if first.low_value < first.high_value:  # the lowest bucket is closed on the left: min is in it
        edges[0] = float(np.nextafter(np.float32(edges[0]), np.float32(-np.inf)))
    edges32 = np.asarray(edges, dtype=np.float32)
    probs, point_masses = np.zeros(len(edges) + 1), set()
    for b in hist.buckets:  # a bucket (low, high] is the bin ending at high; a point mass too
        index = int(np.searchsorted(edges32, np.float32(b.high_value), side="left"))
        probs[index] += b.sample_count
        if b.low_value == b.high_value:
            point_masses.add(index)
    total = probs.sum()
    if total <= 0:
        raise ValueError(f"{name}: empty histogram")
    return FeatureReference(name, NUMERIC, (probs / total).tolist(), _missing_rate(num.common_stats),
                            edges=[float(e) for e in edges32], point_masses=sorted(point_masses))


def _categorical(name: str, string) -> FeatureReference:
    buckets = [(b.label, b.sample_count) for b in string.rank_histogram.buckets] or \
        [(v.value, v.frequency) for v in string.top_values]
    total = float(string.common_stats.num_non_missing) or sum(c for _, c in buckets)
    if total <= 0:
        raise ValueError(f"{name}: no values in the statistics")
    counts = [c for _, c in buckets]
    other = max(0.0, total - sum(counts))
    probs = [c / total for c in counts] + [other / total]
    return FeatureReference(name, CATEGORICAL, probs, _missing_rate(string.common_stats),
                            categories=[label for label, _ in buckets])


def build_reference(dataset: statistics_pb2.DatasetFeatureStatistics, model_version: str,
                    statistics_uri: str = "", features: Iterable[str] = DEFAULT_FEATURES) -> DriftReference:
    """One ``FeatureReference`` per wanted feature the statistics hold (others are skipped)."""
    wanted, out = set(features), {}
    for feat in dataset.features:
        name = _feature_name(feat)
        if name not in wanted:
            continue
        which = feat.WhichOneof("stats")
        if which == "num_stats":
            out[name] = _numeric(name, feat.num_stats)
        elif which == "string_stats":
            out[name] = _categorical(name, feat.string_stats)
    return DriftReference(model_version=str(model_version), statistics_uri=str(statistics_uri),
                          split=dataset.name or TRAIN_SPLIT, num_examples=int(dataset.num_examples),
                          features=dict(sorted(out.items())))


def reference_path(state_dir: Path, model_version: str) -> Path:
    return Path(state_dir) / "drift" / f"reference-{model_version}.json"


def cached_reference(state_dir: Path, model_version: str, statistics_uri: str,
                     features: Iterable[str] = DEFAULT_FEATURES) -> DriftReference:
    """The reference of a model version from ``<state_dir>/drift``, built from the statistics
    (and written there, atomically) the first time: a restart does not parse the protos again."""
    path = reference_path(state_dir, model_version)
    if path.exists():
        try:
            ref = DriftReference.from_json(path.read_text())
            if ref.statistics_uri == str(statistics_uri):
                return ref
        except (ValueError, KeyError, TypeError):
            pass  # an older format or a torn file: rebuild
    ref = build_reference(train_statistics(statistics_uri), model_version, statistics_uri, features)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(ref.to_json())
    tmp.replace(path)
    return ref


# ---- windows and scores ---------------------------------------------------------------------------
def _is_missing(value: Any) -> bool:
    return value is None or value == "" or (isinstance(value, float) and math.isnan(value))


class DriftWindow:
    """The values of one window, per feature (missing ones counted apart)."""

    def __init__(self, features: Iterable[str]):
        self.features = tuple(features)
        self.clear()

    def clear(self) -> None:
        self.events = 0
        self.started: float | None = None
        self.values: dict[str, list] = {f: [] for f in self.features}
        self.missing: dict[str, int] = {f: 0 for f in self.features}

    def add(self, fields: Mapping[str, Any], present: Iterable[str] | None = None, now: float | None = None) -> None:
        """One event; ``present`` names the fields the producer sent (a defaulted one is missing)."""
        sent = fields.keys() if present is None else present
        if self.events == 0:
            self.started = now
        self.events += 1
        for name in self.features:
            value = fields.get(name)
            if name not in sent or _is_missing(value):
                self.missing[name] += 1
            else:
                self.values[name].append(value)


@dataclass
class DriftResult:
    model_version: str
    events: int
    scores: dict[str, dict[str, float]]  # feature -> test -> score
    drifted: dict[str, list[str]]  # feature -> the tests over their threshold
    thresholds: Thresholds

    @property
    def is_drift(self) -> bool:
        return bool(self.drifted)

    def as_details(self) -> dict:
        return {"model_version": self.model_version, "events": self.events, "drift": self.is_drift,
                "drifted_features": sorted(self.drifted), "drifted_tests": self.drifted,
                "scores": self.scores, "thresholds": asdict(self.thresholds)}


def _js(p: np.ndarray, q: np.ndarray) -> float:
    d = float(jensenshannon(p, q, base=2))
    return 0.0 if math.isnan(d) else d


def _shape_js(ref: FeatureReference, p: np.ndarray, counts: np.ndarray) -> float | None:
    """The distance between the parts of both distributions off the point masses, each
    renormalised; None without a point mass, or when either part is empty."""
    if not ref.point_masses:
        return None
    keep = np.ones(len(p), dtype=bool)
    keep[ref.point_masses] = False
    p_rest, q_rest = p[keep], counts[keep]
    if p_rest.sum() <= 0 or q_rest.sum() <= 0:
        return None
    return _js(p_rest / p_rest.sum(), q_rest / q_rest.sum())


def score(reference: DriftReference, window: DriftWindow, thresholds: Thresholds) -> DriftResult | None:
    """Per feature and test, the window against the reference; None under ``min_events``."""
    if window.events < max(1, thresholds.min_events):
        return None
    scores: dict[str, dict[str, float]] = {}
    drifted: dict[str, list[str]] = {}
    for name, ref in reference.features.items():
        if name not in window.values:
            continue
        values = window.values[name]
        out = {MISSING: abs(window.missing[name] / window.events - ref.missing_rate)}
        if values:
            counts = ref.bin_counts(values)
            p, q = np.asarray(ref.probs), counts / counts.sum()
            if ref.kind == NUMERIC:
                out[JS] = _js(p, q)
                shape = _shape_js(ref, p, counts)
                if shape is not None:
                    out[JS_SHAPE] = shape
                bins = np.arange(len(p), dtype=float)
                out[WASSERSTEIN] = float(wasserstein_distance(bins, bins, p + 1e-12, q + 1e-12)) / len(p)
            else:
                out[LINF] = float(np.max(np.abs(p - q)))
        scores[name] = {k: round(v, 6) for k, v in out.items()}
        decided = {MISSING: thresholds.missing} if name in thresholds.report_only else thresholds.limits()
        over = [t for t, limit in decided.items() if t in out and out[t] > limit]
        if over:
            drifted[name] = over
    return DriftResult(reference.model_version, window.events, scores, drifted, thresholds)
