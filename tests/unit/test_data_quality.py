"""Data-quality checks against small TFDV Schema protos (no stack, no Kafka)."""

from __future__ import annotations

import math

import pytest
from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import schema_pb2, statistics_pb2

from taxi_mlops.streaming import events
from taxi_mlops.streaming import quality_checks as qc

SCHEMA = """
feature { name: "company" type: BYTES domain: "company" presence { min_fraction: 1.0 } }
feature { name: "payment_type" type: BYTES string_domain { value: "Cash" value: "Credit Card" }
          presence { min_fraction: 1.0 } }
feature { name: "fare" type: FLOAT presence { min_fraction: 1.0 } }
feature { name: "trip_miles" type: FLOAT presence { min_fraction: 0.5 } }
feature { name: "trip_start_hour" type: INT int_domain { min: 0 max: 23 } presence { min_fraction: 1.0 } }
feature { name: "hour_bucket" type: BYTES domain: "hour_bucket" presence { min_fraction: 1.0 } }
feature { name: "area_avg_fare" type: FLOAT presence { min_fraction: 1.0 } }
feature { name: "big_tipper" type: INT bool_domain { } presence { min_fraction: 1.0 } }
string_domain { name: "company" value: "Flash Cab" value: "UNKNOWN" }
string_domain { name: "hour_bucket" value: "night" value: "morning" value: "afternoon" value: "evening" }
"""

STATS = """
datasets { name: "train" features { path { step: "fare" } type: FLOAT num_stats { min: 0.0 max: 100.04999542236328 } }
           features { path { step: "trip_miles" } type: FLOAT num_stats { min: 0.0 max: 30.0 } }
           features { path { step: "trip_start_hour" } type: INT num_stats { min: 0 max: 23 } } }
datasets { name: "eval" features { path { step: "fare" } type: FLOAT num_stats { min: 0.0 max: 120.0 } } }
"""

CLEAN = {"company": "Flash Cab", "payment_type": "Cash", "fare": 12.5, "trip_miles": 2.0,
         "trip_start_hour": 14}


@pytest.fixture
def schema() -> schema_pb2.Schema:
    return text_format.Parse(SCHEMA, schema_pb2.Schema())


@pytest.fixture
def stats() -> statistics_pb2.DatasetFeatureStatisticsList:
    return text_format.Parse(STATS, statistics_pb2.DatasetFeatureStatisticsList())


@pytest.fixture
def validator(schema, stats) -> qc.Validator:
    return qc.Validator(schema, stats)


def checks(violations) -> set[tuple[str, str]]:
    return {(v.feature, v.check) for v in violations}


def test_specs_read_domains_presence_and_ranges(validator):
    specs = validator.specs
    assert specs["company"].categories == {"Flash Cab", "UNKNOWN"} and specs["company"].required
    assert specs["payment_type"].categories == {"Cash", "Credit Card"}  # inline string_domain
    assert (specs["fare"].low, specs["fare"].high, specs["fare"].range_source) == (0.0, 120.0, "statistics")
    assert (specs["trip_start_hour"].low, specs["trip_start_hour"].high) == (0, 23)
    assert specs["trip_start_hour"].range_source == "schema"  # the schema's own domain wins
    assert not specs["trip_miles"].required


def test_clean_trip_has_no_violation(validator):
    assert validator.check(CLEAN) == []


def test_unseen_categories(validator):
    found = validator.check({**CLEAN, "payment_type": "Bitcoin", "company": "Brand New Cab Co"})
    assert checks(found) == {("payment_type", "unseen_category"), ("company", "unseen_category")}
    assert next(v for v in found if v.feature == "payment_type").value == "Bitcoin"


def test_missing_required_feature_even_when_the_model_filled_a_default(validator):
    # The event model defaults company to "UNKNOWN" (in the domain); what was sent decides.
    fields = {**CLEAN, "company": "UNKNOWN"}
    assert checks(validator.check(fields, present=set(CLEAN) - {"company"})) == {("company", "missing")}
    assert checks(validator.check({**CLEAN, "company": ""})) == {("company", "missing")}
    assert checks(validator.check({**CLEAN, "fare": math.nan})) == {("fare", "missing")}
    # Not required (min_fraction 0.5): absent is fine.
    assert validator.check({k: v for k, v in CLEAN.items() if k != "trip_miles"}) == []


def test_value_ranges_from_statistics_and_schema(validator):
    assert checks(validator.check({**CLEAN, "fare": 5000.0})) == {("fare", "out_of_range")}
    assert validator.check({**CLEAN, "fare": 120.0}) == []  # the eval split's max counts too
    assert validator.check({**CLEAN, "fare": 100.05}) == []  # float32-rounded bound, tolerated
    assert checks(validator.check({**CLEAN, "fare": -1.0})) == {("fare", "out_of_range")}
    assert checks(validator.check({**CLEAN, "trip_miles": 31.0})) == {("trip_miles", "out_of_range")}


def test_types(validator):
    assert checks(validator.check({**CLEAN, "fare": "12.5"})) == {("fare", "type")}
    assert checks(validator.check({**CLEAN, "trip_start_hour": 14.0, "fare": True})) == {
        ("trip_start_hour", "type"), ("fare", "type")}


def test_derived_hour_bucket(validator):
    # Derived from trip_start_hour as the pipeline derives it (hour % 24): 25 is out of the
    # hour's range but still buckets; an hour the pipeline cannot bucket fails hour_bucket too.
    assert checks(validator.check({**CLEAN, "trip_start_hour": 25})) == {("trip_start_hour", "out_of_range")}
    assert checks(validator.check({**CLEAN, "trip_start_hour": "x"})) == {
        ("trip_start_hour", "type"), ("hour_bucket", "type")}
    # A missing hour is reported once, on the hour, not again on the bucket.
    assert checks(validator.check(CLEAN, present=set(CLEAN) - {"trip_start_hour"})) == {
        ("trip_start_hour", "missing")}


def test_coverage_is_complete_with_out_of_scope_declarations(validator):
    assert validator.coverage == 1.0
    assert set(validator.skipped) == {"area_avg_fare", "big_tipper"}
    assert validator.unaccounted == []


def test_an_unmapped_new_feature_lowers_coverage(schema):
    schema.feature.add(name="weather", type=schema_pb2.FLOAT)
    v = qc.Validator(schema)
    assert v.unaccounted == ["weather"]
    assert v.coverage == pytest.approx(8 / 9)


def test_the_platform_mapping_covers_the_pipeline_schema():
    """Every schema feature the pipeline emits (trip columns, slice columns, store features,
    the label) is checked or declared out of scope, and every checked trip field exists on
    the trip event."""
    accounted = set(qc.FEATURE_SOURCES) | set(qc.OUT_OF_SCOPE)
    assert not set(qc.FEATURE_SOURCES) & set(qc.OUT_OF_SCOPE)
    fields = set(events.TripEventV1.model_fields)
    for name, source in qc.FEATURE_SOURCES.items():
        sources = source.sources if isinstance(source, qc.Derived) else (source,)
        assert set(sources) <= fields, name
    assert {"company", "payment_type", "fare", "hour_bucket", "company_known", "big_tipper",
            "area_trip_count", "company_tip_rate"} <= accounted


def test_unknown_domain_reference_is_an_error(schema):
    schema.feature.add(name="x", type=schema_pb2.BYTES, domain="nope")
    with pytest.raises(ValueError, match="nope"):
        qc.Validator(schema)


def test_window_closes_on_count_or_time():
    w = qc.QualityWindow(max_events=3, max_s=60.0)
    assert not w.due(0.0)  # empty windows are not reported
    w.add([], 100.0)
    w.add([qc.Violation("fare", "out_of_range", 5000.0)], 101.0)
    assert not w.due(102.0)
    w.add([qc.Violation("fare", "out_of_range", 6000.0), qc.Violation("company", "missing")], 102.0)
    assert w.due(102.0)
    summary = w.close(102.0)
    assert summary["events"] == 3 and summary["violating_events"] == 2
    assert summary["violations"] == [{"feature": "company", "check": "missing", "count": 1},
                                     {"feature": "fare", "check": "out_of_range", "count": 2}]
    assert w.events == 0 and w.violations == {}
    w.add([], 200.0)
    assert not w.due(259.0) and w.due(260.0)


def test_violation_record_is_json_safe():
    assert qc.Violation("fare", "missing", math.nan).as_dict()["value"] == "nan"
