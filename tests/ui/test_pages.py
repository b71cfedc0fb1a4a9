"""Every control-room page run by Streamlit's AppTest against the live session stack: each
renders with data and no error, and a backend that is down is named on the page while the
rest of it still renders.

AppTest runs the app in this process; the app builds its ``Settings`` from ``TAXI_*`` as it
does under ``taxi-mlops up``, so each test puts the stack's settings in the environment.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from streamlit.testing.v1 import AppTest

from taxi_mlops.gateway import monitoring
from taxi_mlops.stack.process import free_port, wait_for

pytestmark = pytest.mark.slow

APP = Path(__file__).resolve().parents[2] / "src" / "taxi_mlops" / "ui" / "app.py"
RUN_TIMEOUT_S = 60


@pytest.fixture
def ui_env(observed_stack, monkeypatch):
    for key, value in observed_stack.as_env().items():
        monkeypatch.setenv(key, value)
    return observed_stack


def open_page(page: str | None = None) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=RUN_TIMEOUT_S)
    if page:
        at.switch_page(f"views/{page}.py")
    return at.run()


def assert_clean(at: AppTest) -> None:
    """No exception element and no error message anywhere on the page."""
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def markdown_text(at: AppTest) -> str:
    return "\n".join(m.value for m in at.markdown) + "\n".join(c.value for c in at.caption)


def test_overview_shows_health_traffic_and_alerts(ui_env):
    at = open_page()
    assert_clean(at)
    assert at.title[0].value == "Overview"
    metrics = {m.label: m.value for m in at.metric}
    assert float(metrics["/predict requests/s (1 min)"]) >= 0
    assert metrics["alerts firing"].isdigit()
    frames = [d.value for d in at.dataframe]
    table = next(f for f in frames if "component" in f.columns and "health" in f.columns)
    assert {"gateway", "label-join", "data-quality", "mlflow"} <= set(table["component"]), table
    assert (table.loc[table["component"] == "gateway", "health"] == "up").all()
    assert "no data in this window yet" not in [i.value for i in at.info], "the traffic charts are empty"


def test_predict_form_answers_and_links_to_the_lineage(ui_env):
    at = open_page("predict")
    assert_clean(at)
    company = next(t for t in at.text_input if t.label == "company")
    company.set_value("A Company Nobody Has Seen")
    at.button(key="predict_submit").click().run()
    assert_clean(at)
    metrics = {m.label: m.value for m in at.metric}
    assert 0.0 <= float(metrics["tip probability"]) <= 1.0
    assert metrics["model version"].startswith("v")
    assert metrics["variant"] not in ("", "-")
    features = at.dataframe[0].value
    defaulted = set(features.loc[features["defaulted"] != "", "feature"])
    assert defaulted, "an unseen company's store features must be marked as defaulted"
    assert all("company" in f for f in defaulted), defaulted
    links = at.get("page_link")
    assert len(links) == 1
    request_id = at.session_state["prediction"]["request_id"]
    assert links[0].proto.query_string == f"request_id={request_id}"


def test_models_lists_versions_aliases_slices_and_guards_actions(ui_env):
    at = open_page("models")
    assert_clean(at)
    versions = at.dataframe[0].value
    assert "champion" in " ".join(versions["aliases"])
    # The champion's evaluation is its registry tag (test models registered by other session
    # tests, such as the inverted one, have none and show blank).
    from taxi_mlops.registry import models

    ref = models.by_alias(ui_env.mlflow_tracking_uri, ui_env.model_name, models.CHAMPION)
    row = versions[versions["aliases"].astype(str).str.contains("champion")].iloc[0]
    assert abs(float(row["eval AUC"]) - float(ref.tags["eval_auc"])) < 1e-3, (row, ref.tags.get("eval_auc"))
    history = at.dataframe[1].value
    assert "registered" in set(history["event"])
    slices = at.dataframe[2].value
    assert slices.iloc[0]["slice"] == "overall" and len(slices) > 3
    promote, rollback = at.button(key="promote"), at.button(key="rollback")
    assert promote.disabled and rollback.disabled, "the actions need the admin token"
    at.text_input(key="admin_token").set_value("not-the-token").run()
    at.button(key="rollback").click().run()
    assert not at.exception
    assert any("403" in s.label for s in at.status), [s.label for s in at.status]


def test_experiments_page_matches_the_gateway(ui_env):
    experiments = httpx.get(f"{ui_env.gateway_url}/experiments", timeout=10).json()["experiments"]
    at = open_page("experiments")
    assert_clean(at)
    info = " ".join(i.value for i in at.info)
    if not experiments:
        assert "No experiment" in info
    else:
        assert at.selectbox(key="experiment").options == [
            e["experiment_id"] for e in sorted(experiments, key=lambda e: e["status"] != "running")]
        assert {"labels, control", "labels, treatment"} <= {m.label for m in at.metric}
        if not any(e["status"] == "running" for e in experiments):
            assert "No experiment is running" in info


@pytest.fixture
def drift_report(observed_stack):
    """One report in the worker's format (its folder, its name pattern), removed afterwards."""
    folder = monitoring.reports_dir(observed_stack)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "20000101T000000000000Z-1.json"
    path.write_text(json.dumps({"source": "data_quality", "kind": "drift", "feature": "fare",
                                "timestamp": "2000-01-01T00:00:00+00:00",
                                "details": {"events": 600, "model_version": "1", "drifted_features": ["fare"],
                                            "drifted_tests": {"fare": ["jensen_shannon"]},
                                            "scores": {"fare": {"jensen_shannon": 0.41, "missing_rate": 0.0},
                                                       "company": {"linf": 0.02, "missing_rate": 0.0}}}}))
    yield path.name
    path.unlink(missing_ok=True)


def test_drift_report_routes(observed_stack, drift_report):
    base = f"{observed_stack.gateway_url}/monitoring/drift-reports"
    listed = httpx.get(base, timeout=10).json()["reports"]
    assert drift_report in [r["name"] for r in listed]
    assert httpx.get(f"{base}/{drift_report}", timeout=10).json()["feature"] == "fare"
    bad = httpx.get(f"{base}/admin_token", timeout=10)
    assert bad.status_code == 422 and bad.json()["detail"][0]["field"] == "name"
    assert httpx.get(f"{base}/19990101T000000000000Z-1.json", timeout=10).status_code == 404
    assert httpx.get(base, params={"limit": 0}, timeout=10).status_code == 422


def test_monitoring_shows_drift_quality_accuracy_and_reports(ui_env, drift_report):
    at = open_page("monitoring")
    assert_clean(at)
    text = markdown_text(at)
    for title in ("live accuracy per version", "prediction drift", "violations per feature"):
        assert title in text
    assert "no labels joined yet" not in [i.value for i in at.info]
    assert drift_report in at.selectbox(key="drift_report").options
    at.selectbox(key="drift_report").set_value(drift_report).run()
    assert_clean(at)
    scores = at.dataframe[-1].value
    assert scores.iloc[0]["feature"] == "fare" and scores.iloc[0]["drifted"] == "jensen_shannon"


def test_streams_shows_topic_rates_lag_and_freshness(ui_env):
    at = open_page("streams")
    assert_clean(at)
    assert {"events consumed/s", "consumer lag (messages)", "feature freshness p99"} <= {m.label for m in at.metric}
    assert "no messages in this window" not in [i.value for i in at.info]
    assert "no events processed in this window" not in [i.value for i in at.info]


def test_lineage_draws_the_chain_of_a_prediction(ui_env, trip):
    answer = httpx.post(f"{ui_env.gateway_url}/predict", json=trip, timeout=10).json()
    request_id = answer["request_id"]
    url = f"{ui_env.gateway_url}/predictions/{request_id}"
    assert wait_for(lambda: httpx.get(url, timeout=5).status_code == 200, 30, 0.5), \
        f"the gateway never stored prediction {request_id}"
    at = AppTest.from_file(str(APP), default_timeout=RUN_TIMEOUT_S)
    at.switch_page("views/lineage.py")
    at.query_params["request_id"] = request_id
    at.run()
    assert_clean(at)
    dot = at.get("graphviz_chart")[0].proto.spec
    for node in ('"data"', '"model"', '"prediction"', '"label"'):
        assert node in dot
    data_version = httpx.get(url, timeout=5).json()["data"]["dvc_data_version"]
    assert data_version and data_version[:12] in {m.value for m in at.metric}


def test_a_backend_that_is_down_is_named_and_the_page_still_renders(ui_env, monkeypatch):
    dead = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("TAXI_PROMETHEUS_EXTERNAL_URL", dead)
    at = open_page()
    assert not at.exception
    errors = [e.value for e in at.error]
    assert errors and all(f"Prometheus is unavailable at {dead}" in e for e in errors), errors
    assert "alerts firing" in {m.label for m in at.metric}, "the Alertmanager part must still render"
    assert at.dataframe, "the URL table must still render"


def test_the_predict_page_names_a_gateway_that_is_down(ui_env, monkeypatch):
    port = free_port()
    monkeypatch.setenv("TAXI_GATEWAY_PORT", str(port))
    at = open_page("predict")
    at.button(key="predict_submit").click().run()
    assert not at.exception
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and errors[0].startswith(f"gateway is unavailable at http://127.0.0.1:{port}: unreachable")
    assert not at.metric, "no answer may be shown"
