"""Data-quality checks of one trip against a TFDV schema (and the run's statistics): pure logic.

``Validator(schema, statistics)`` turns the schema of the pipeline run that trained the
champion into one ``FeatureSpec`` per feature: its type, whether it is required (presence
``min_fraction`` 1), its categories (a string domain, by name or inline) and its value range
(an ``int_domain``/``float_domain`` of the schema when it has one, else the min/max over every
split of the run's StatisticsGen output, so a replayed training trip is always in range).
``Validator.check(fields, present)`` returns the ``Violation``s of one event.

Coverage: every feature of the schema is either checked against the event (directly by field
name, or derived from fields: ``FEATURE_SOURCES``) or declared out of scope with a reason
(``OUT_OF_SCOPE``: store features joined at serving time, the label). ``coverage`` is the
share of the schema's features accounted for either way; a feature a new schema adds that is
neither makes it drop below 1 (and is listed in ``unaccounted``), so it cannot slip through.

Checks, a bounded set (they are metric labels): ``missing`` (a required feature absent, null,
NaN or an empty string), ``type`` (the value is not of the schema's type), ``unseen_category``
(a string outside the domain) and ``out_of_range`` (a number outside the range).

Nothing here imports TensorFlow or Kafka; the protos are ``tensorflow_metadata``'s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from tensorflow_metadata.proto.v0 import schema_pb2, statistics_pb2

from taxi_mlops.pipeline.slicing import hour_bucket

MISSING, TYPE, UNSEEN_CATEGORY, OUT_OF_RANGE = "missing", "type", "unseen_category", "out_of_range"
CHECKS = (MISSING, TYPE, UNSEEN_CATEGORY, OUT_OF_RANGE)
# Statistics are float32: a bound may be rounded past the float64 value it came from.
RANGE_TOLERANCE = 1e-6


@dataclass(frozen=True)
class Derived:
    """A schema feature computed from event fields the way the pipeline computes it."""

    sources: tuple[str, ...]
    compute: Callable[..., Any]
    note: str = ""


# Schema features of the raw trip event: by field name (the same name) or derived.
TRIP_FIELDS = ("company", "payment_type", "fare", "trip_miles", "trip_seconds", "trip_start_hour",
               "trip_start_day", "trip_start_month", "pickup_community_area", "dropoff_community_area",
               "pickup_latitude", "pickup_longitude", "dropoff_latitude", "dropoff_longitude")
FEATURE_SOURCES: dict[str, str | Derived] = {
    **{name: name for name in TRIP_FIELDS},
    "hour_bucket": Derived(("trip_start_hour",), hour_bucket, "pipeline.slicing.hour_bucket"),
}
_STORE = "a Feast store feature joined at serving time, not on the raw trip event"
OUT_OF_SCOPE: dict[str, str] = {
    **{f"{entity}_{stat}": _STORE for entity in ("area", "company")
       for stat in ("avg_fare", "tip_rate", "trip_count")},
    "company_known": "derived from the company's store history (company_trip_count), a slice column",
    "big_tipper": "the label: it arrives on taxi.labels at trip end, not with the trip",
}


@dataclass(frozen=True)
class FeatureSpec:
    name: str
    type: str  # INT, FLOAT, BYTES, STRUCT, TYPE_UNKNOWN
    required: bool = False
    categories: frozenset[str] | None = None
    low: float | None = None
    high: float | None = None
    range_source: str | None = None  # "schema" or "statistics"


@dataclass(frozen=True)
class Violation:
    feature: str
    check: str
    value: Any = None
    expected: str = ""

    def as_dict(self) -> dict:
        value = self.value
        if isinstance(value, float) and not math.isfinite(value):
            value = str(value)
        return {"feature": self.feature, "check": self.check, "value": value, "expected": self.expected}


# ---- reading the artifacts ---------------------------------------------------------------------
def load_schema(uri: str | Path) -> schema_pb2.Schema:
    """``schema.pbtxt`` of a Schema artifact (its folder, or the file itself)."""
    from google.protobuf import text_format

    path = Path(uri)
    if path.is_dir():
        path = path / "schema.pbtxt"
    return text_format.Parse(path.read_text(), schema_pb2.Schema())


def load_statistics(uri: str | Path) -> statistics_pb2.DatasetFeatureStatisticsList:
    """Every split's ``FeatureStats.pb`` of an ExampleStatistics artifact, in one list."""
    out = statistics_pb2.DatasetFeatureStatisticsList()
    files = sorted(Path(uri).glob("Split-*/FeatureStats.pb"))
    if not files:
        raise FileNotFoundError(f"no Split-*/FeatureStats.pb under {uri}")
    for f in files:
        part = statistics_pb2.DatasetFeatureStatisticsList()
        part.ParseFromString(f.read_bytes())
        out.datasets.extend(part.datasets)
    return out


def numeric_ranges(statistics: statistics_pb2.DatasetFeatureStatisticsList | None) -> dict[str, tuple[float, float]]:
    """Per numeric feature, (min, max) over every dataset (split) of the statistics."""
    ranges: dict[str, tuple[float, float]] = {}
    for dataset in statistics.datasets if statistics is not None else ():
        for feat in dataset.features:
            if feat.WhichOneof("stats") != "num_stats":
                continue
            name = feat.path.step[-1] if feat.path.step else feat.name
            low, high = feat.num_stats.min, feat.num_stats.max
            if name in ranges:
                low, high = min(low, ranges[name][0]), max(high, ranges[name][1])
            ranges[name] = (low, high)
    return ranges


def feature_specs(schema: schema_pb2.Schema,
                  statistics: statistics_pb2.DatasetFeatureStatisticsList | None = None) -> dict[str, FeatureSpec]:
    domains = {d.name: frozenset(d.value) for d in schema.string_domain}
    ranges = numeric_ranges(statistics)
    specs = {}
    for feat in schema.feature:
        kind = schema_pb2.FeatureType.Name(feat.type)
        required = feat.HasField("presence") and feat.presence.min_fraction >= 1.0
        categories = low = high = source = None
        which = feat.WhichOneof("domain_info")
        if which == "domain":
            if feat.domain not in domains:
                raise ValueError(f"feature {feat.name} names the domain {feat.domain!r}, "
                                 "which the schema does not declare")
            categories = domains[feat.domain]
        elif which == "string_domain":
            categories = frozenset(feat.string_domain.value)
        elif which in ("int_domain", "float_domain"):
            dom = getattr(feat, which)
            if dom.HasField("min") or dom.HasField("max"):
                low = dom.min if dom.HasField("min") else None
                high = dom.max if dom.HasField("max") else None
                source = "schema"
        elif which == "bool_domain" and kind == "INT":
            low, high, source = 0, 1, "schema"
        if source is None and kind in ("INT", "FLOAT") and feat.name in ranges:
            low, high = ranges[feat.name]
            source = "statistics"
        specs[feat.name] = FeatureSpec(feat.name, kind, required, categories, low, high, source)
    return specs


# ---- the checks ----------------------------------------------------------------------------------
def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value == ""


def _type_ok(kind: str, value: Any) -> bool:
    if kind == "INT":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "FLOAT":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "BYTES":
        return isinstance(value, (str, bytes))
    return True


def _out_of_range(spec: FeatureSpec, value: float) -> bool:
    if not math.isfinite(value):
        return True
    if spec.low is not None and value < spec.low - RANGE_TOLERANCE * max(1.0, abs(spec.low)):
        return True
    return spec.high is not None and value > spec.high + RANGE_TOLERANCE * max(1.0, abs(spec.high))


def check_value(spec: FeatureSpec, value: Any, present: bool = True) -> Violation | None:
    """The first failed check of one feature's value (they exclude each other), or None."""
    if not present or _is_missing(value):
        if spec.required:
            return Violation(spec.name, MISSING, None, "required (presence min_fraction 1.0)")
        return None
    if not _type_ok(spec.type, value):
        return Violation(spec.name, TYPE, repr(value)[:100], spec.type)
    if spec.categories is not None and spec.type == "BYTES":
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
        if text not in spec.categories:
            return Violation(spec.name, UNSEEN_CATEGORY, text[:100],
                             f"one of the {len(spec.categories)} values of the schema's domain")
    if spec.range_source and spec.type in ("INT", "FLOAT") and _out_of_range(spec, float(value)):
        return Violation(spec.name, OUT_OF_RANGE, value,
                         f"[{spec.low:g}, {spec.high:g}] ({spec.range_source})"
                         if spec.low is not None and spec.high is not None
                         else f"within {spec.low}..{spec.high} ({spec.range_source})")
    return None


@dataclass
class Validator:
    """The checks of the reference schema, with the event mapping and coverage."""

    schema: schema_pb2.Schema
    statistics: statistics_pb2.DatasetFeatureStatisticsList | None = None
    sources: Mapping[str, str | Derived] = field(default_factory=lambda: dict(FEATURE_SOURCES))
    out_of_scope: Mapping[str, str] = field(default_factory=lambda: dict(OUT_OF_SCOPE))

    def __post_init__(self) -> None:
        self.specs = feature_specs(self.schema, self.statistics)
        self.checked = [n for n in self.specs if n in self.sources]
        self.skipped = [n for n in self.specs if n not in self.sources and n in self.out_of_scope]
        self.unaccounted = [n for n in self.specs if n not in self.sources and n not in self.out_of_scope]

    @property
    def coverage(self) -> float:
        """Share of the schema's features checked or declared out of scope (1.0 when complete)."""
        if not self.specs:
            return 1.0
        return (len(self.checked) + len(self.skipped)) / len(self.specs)

    def features(self) -> list[str]:
        return list(self.specs)

    def check(self, fields: Mapping[str, Any], present: Iterable[str] | None = None) -> list[Violation]:
        """Violations of one event; ``present`` names the fields the producer sent (absent
        ones count as missing even if the event model filled in a default)."""
        sent = set(fields) if present is None else set(present)
        out = []
        for name in self.checked:
            source = self.sources[name]
            if isinstance(source, Derived):
                if not all(s in sent and not _is_missing(fields.get(s)) for s in source.sources):
                    continue  # its sources are reported themselves
                try:
                    value, here = source.compute(*(fields[s] for s in source.sources)), True
                except Exception:
                    out.append(Violation(name, TYPE, None, f"derivable by {source.note}"))
                    continue
            else:
                value, here = fields.get(source), source in sent
            violation = check_value(self.specs[name], value, here)
            if violation is not None:
                out.append(violation)
        return out

    def describe(self) -> dict:
        ranges = {n: [s.low, s.high, s.range_source] for n, s in self.specs.items() if s.range_source}
        return {"features": len(self.specs), "checked": self.checked, "out_of_scope": self.skipped,
                "unaccounted": self.unaccounted, "coverage": self.coverage, "ranges": ranges}


# ---- windows -------------------------------------------------------------------------------------
@dataclass
class QualityWindow:
    """Counts of one summary window, closed after ``max_events`` events or ``max_s`` seconds
    (whichever comes first; an empty window is never reported)."""

    max_events: int
    max_s: float
    started: float = 0.0
    events: int = 0
    violating: int = 0
    violations: dict[tuple[str, str], int] = field(default_factory=dict)

    def add(self, violations: list[Violation], now: float) -> None:
        if self.events == 0:
            self.started = now
        self.events += 1
        if violations:
            self.violating += 1
        for v in violations:
            self.violations[(v.feature, v.check)] = self.violations.get((v.feature, v.check), 0) + 1

    def due(self, now: float) -> bool:
        return self.events > 0 and (self.events >= self.max_events or now - self.started >= self.max_s)

    def close(self, now: float) -> dict:
        """The summary of the window; resets it."""
        summary = {"events": self.events, "violating_events": self.violating,
                   "violating_rate": self.violating / self.events if self.events else 0.0,
                   "violations": [{"feature": f, "check": c, "count": n}
                                  for (f, c), n in sorted(self.violations.items())],
                   "window_start": self.started, "window_end": now,
                   "window_max_events": self.max_events, "window_max_s": self.max_s}
        self.events = self.violating = 0
        self.violations = {}
        return summary
