"""The control room's pure parts: chart frames, the lineage graph, alias history, slices,
error messages, and the drift-report names the gateway accepts."""

from __future__ import annotations

import json

import pytest

from taxi_mlops.gateway import monitoring
from taxi_mlops.settings import Settings
from taxi_mlops.ui import shaping
from taxi_mlops.ui.clients import BackendError, Gateway, Series, route_missing


def test_frame_has_one_column_per_label_value_on_a_time_index():
    series = [Series({"variant": "control"}, [(100.0, 1.0), (160.0, 2.0)]),
              Series({"variant": "treatment"}, [(160.0, 3.0)])]
    df = shaping.frame(series, "variant")
    assert list(df.columns) == ["control", "treatment"]
    assert len(df) == 2 and df["treatment"].isna().sum() == 1
    assert str(df.index.tz) == "UTC"
    assert shaping.frame([], "variant").empty
    assert list(shaping.frame([Series({}, [(1.0, 5.0)])], (), "requests/s").columns) == ["requests/s"]


def test_lineage_dot_chains_data_artifacts_model_prediction_label():
    lineage = {"request_id": "r-1", "prediction": {"tip_probability": 0.8, "variant": "control"},
               "model": {"name": "m", "version": "3", "aliases": ["champion"], "family": "dnn"},
               "pipeline": {"run_id": "p", "artifacts": [
                   {"id": 7, "type": "Examples", "produced_by": "x.DvcCsvExampleGen"},
                   {"id": 9, "type": "Model", "produced_by": "x.Trainer"}]},
               "data": {"dvc_data_version": "abc123", "path": "data/x.csv"},
               "label": {"big_tipper": True, "correct": True}, "errors": []}
    dot = shaping.lineage_dot(lineage)
    order = ['"data" -> "pipeline"', '"pipeline" -> "model"', '"model" -> "prediction"',
             '"prediction" -> "label"']
    for edge in order:
        assert edge in dot
    assert "Examples #7" in dot and "Trainer" in dot
    assert "abc123" in dot and "p=0.800" in dot and "model right" in dot


def test_lineage_dot_escapes_quotes_and_marks_a_missing_label():
    dot = shaping.lineage_dot({"request_id": 'a"b', "prediction": {}, "label": None,
                               "pipeline": {"run_id": "<x>", "artifacts": [{"id": 1, "type": "A&B"}]}})
    assert 'a\\"b' in dot and "not joined yet" in dot
    assert "&lt;x&gt;" in dot and "A&amp;B" in dot


def _version(v, **tags):
    return {"version": str(v), "run_id": f"run{v}", "creation_timestamp": 1_700_000_000_000 + v,
            "tags": [{"key": k, "value": val} for k, val in tags.items()]}


def test_alias_history_lists_registration_and_the_latest_decision():
    versions = [_version(2, **{"rollout.decision": "promoted", "rollout.replaced": "1",
                               "rollout.decided_at": "2026-01-02T00:00:00+00:00", "rollout.actor": "sequential-test"}),
                _version(1, **{"rollout.decision": "demoted", "rollout.replaced_by": "2",
                               "rollout.decided_at": "2026-01-02T00:00:00+00:00"})]
    df = shaping.alias_history(versions)
    assert set(df["event"]) == {"registered", "promoted", "demoted"}
    promoted = df[df["event"] == "promoted"].iloc[0]
    assert promoted["aliases moved"] == "champion -> v2 (was v1)"
    assert df.iloc[0]["when"].startswith("2026-01-02")  # newest first
    table = shaping.versions_table([_version(3, model_family="linear", eval_auc="0.95")])
    assert table.iloc[0]["family"] == "linear" and table.iloc[0]["eval AUC"] == 0.95


def test_slices_table_puts_overall_first_with_the_gate_verdict():
    doc = {"slices": {"payment_type=Cash": {"auc": 0.7, "example_count": 300},
                      "overall": {"auc": 0.95, "example_count": 5000}},
           "slice_gate": {"checked": ["payment_type=Cash"], "failed": []}}
    df = shaping.slices_table(doc)
    assert list(df["slice"]) == ["overall", "payment_type=Cash"]
    assert list(df["gate"]) == ["-", "pass"]


def test_backend_error_names_the_backend_and_whether_it_is_down():
    down = Gateway("http://127.0.0.1:1")  # nothing listens on port 1
    with pytest.raises(BackendError) as info:
        down.routing()
    assert info.value.down and str(info.value).startswith("gateway is unavailable at http://127.0.0.1:1")
    refused = BackendError("gateway", "http://g", "Not Found", 404, "Not Found")
    assert not refused.down and route_missing(refused)
    assert not route_missing(BackendError("gateway", "http://g", "no prediction 'x'", 404, "no prediction 'x'"))


def test_drift_report_names_are_checked_before_any_path_is_built(tmp_path):
    settings = Settings(state_dir=tmp_path)
    folder = monitoring.reports_dir(settings)
    folder.mkdir(parents=True)
    name = "20260101T000000123456Z-3.json"
    (folder / name).write_text(json.dumps({"feature": "fare", "timestamp": "2026-01-01T00:00:00Z",
                                           "details": {"events": 600, "drifted_features": ["fare"]}}))
    (folder / "notes.txt").write_text("not a report")
    listed = monitoring.list_reports(settings)
    assert [r["name"] for r in listed] == [name]
    assert listed[0]["model_version"] == "3" and listed[0]["drifted_features"] == ["fare"]
    assert monitoring.read_report(settings, name)["feature"] == "fare"
    for bad in ("../admin_token", "notes.txt", "20260101T000000123456Z-3.json/../../x"):
        with pytest.raises(monitoring.InvalidName):
            monitoring.read_report(settings, bad)
    with pytest.raises(monitoring.ReportNotFound):
        monitoring.read_report(settings, "20250101T000000123456Z-3.json")
