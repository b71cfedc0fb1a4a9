"""Monitoring: feature drift against training over time, data-quality violations, live
accuracy per version, prediction drift, and the reports kept for drifted windows."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from taxi_mlops.ui import common

st.title("Monitoring")
api = common.clients()

st.subheader("Feature drift against the champion's training statistics")
left, right = st.columns(2)
with left:
    common.range_chart("numeric features: Jensen–Shannon distance (threshold 0.25; 0.18 for the shape off "
                       "a heavy value such as 0 miles)",
                       'max by (feature) (taxi_drift_score{test=~"jensen_shannon|jensen_shannon_shape"})', "feature",
                       empty="no window scored yet (a window needs 500 trips)")
with right:
    common.range_chart("categorical features: L-infinity distance (threshold 0.15)",
                       'max by (feature) (taxi_drift_score{test="linf"})', "feature",
                       empty="no window scored yet (a window needs 500 trips)")
st.caption("Scored per window of at least 500 trips. Hour, day and month are scored but never "
           "decided on: a live window's clock sets them.")
with common.guard("Prometheus"):
    drifted = api.prometheus.query("taxi_drift_detected == 1")
    names = sorted({s.labels.get("feature", "?") for s in drifted})
    if names:
        st.warning("Drifted in the last scored window: " + ", ".join(names))
    else:
        st.caption("No feature drifted in the last scored window.")

st.subheader("Data quality")
left, right = st.columns(2)
with left:
    common.range_chart("violations per feature and check (per 5 min)",
                       "sum by (feature, check) (increase(taxi_data_quality_violations_total[5m]))",
                       ("feature", "check"), empty="no violations in this window")
with right:
    common.range_chart("share of checked trips with a violation (5 min)",
                       "sum(rate(taxi_data_quality_events_violating_total[5m])) / "
                       "sum(rate(taxi_data_quality_events_checked_total[5m]))", (), name="violating share")

st.subheader("Live performance")
left, right = st.columns(2)
with left:
    common.range_chart("live accuracy per version (labelled pairs)",
                       "max by (model_version) (taxi_live_accuracy)", "model_version",
                       empty="no labels joined yet")
    common.range_chart("estimated accuracy before labels (mean max(p, 1−p))",
                       "max by (model_version) (taxi_live_estimated_accuracy)", "model_version")
with right:
    common.range_chart("prediction drift: scores vs the eval split (Jensen–Shannon, alert at 0.2)",
                       "max by (model_version) (taxi_prediction_drift_score)", "model_version",
                       empty="no version has 200 predictions in the window yet")
    common.range_chart("evaluation accuracy of the loaded versions",
                       "max by (model_version) (taxi_model_eval_accuracy)", "model_version")

st.subheader("Drift reports (drifted windows)")
with common.guard("gateway (drift reports)"):
    reports = api.gateway.drift_reports()
    if not reports:
        st.info("No drifted window so far: a report is kept for each one.")
    else:
        st.dataframe(pd.DataFrame(reports), hide_index=True, width="stretch")
        name = st.selectbox("report", [r["name"] for r in reports], key="drift_report")
        report = api.gateway.drift_report(name)
        details = report.get("details", {})
        scores = details.get("scores", {})
        rows = [{"feature": f, **{t: v for t, v in s.items()},
                 "drifted": ", ".join(details.get("drifted_tests", {}).get(f, []))} for f, s in scores.items()]
        st.markdown(f"**{details.get('events', '?')} trips** against v{details.get('model_version', '?')}; "
                    f"drifted: {', '.join(details.get('drifted_features', [])) or 'none'}")
        st.dataframe(pd.DataFrame(rows).sort_values("drifted", ascending=False), hide_index=True, width="stretch")
        with st.expander("raw report"):
            st.json(report)
