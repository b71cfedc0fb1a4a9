"""Overview: component health and URLs, /predict requests/s and p99, alerts firing."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from taxi_mlops.ui import common

st.title("Overview")
api = common.clients()
s = common.settings()

RPS = 'sum(rate(taxi_gateway_requests_total{route="/predict"}[1m]))'
P99 = ('histogram_quantile(0.99, sum by (le) '
       '(rate(taxi_gateway_request_duration_seconds_bucket{route="/predict"}[1m]))) * 1000')

firing = None
left, mid, right = st.columns(3)
with left, common.guard("Prometheus"):
    st.metric("/predict requests/s (1 min)", common.fmt(common.instant(RPS), "{:.1f}"))
with mid, common.guard("Prometheus"):
    st.metric("/predict p99 latency (1 min)", common.fmt(common.instant(P99), "{:.1f} ms"))
with right, common.guard("Alertmanager"):
    firing = api.alertmanager.firing()
    st.metric("alerts firing", len(firing))

st.subheader("Alerts firing")
with common.guard("Alertmanager"):
    if firing is None:
        st.caption("Alertmanager did not answer (see above).")
    elif not firing:
        st.success("No alert is firing.")
    else:
        st.dataframe(pd.DataFrame([{
            "alert": a["labels"].get("alertname"), "severity": a["labels"].get("severity", ""),
            "component": a["labels"].get("component", ""), "since": a.get("startsAt", "")[:19],
            "summary": (a.get("annotations") or {}).get("summary", "")} for a in firing]),
            hide_index=True, width="stretch")

c1, c2 = st.columns(2)
with c1:
    common.range_chart("/predict requests/s", RPS, (), name="requests/s")
with c2:
    common.range_chart("/predict p99 latency (ms)", P99, (), name="p99 ms")

st.subheader("Components")
with common.guard("Prometheus"):
    targets = api.prometheus.targets()
    rows = [{"component": t["labels"].get("component") or t["labels"].get("job"),
             "job": t["labels"].get("job"), "health": t.get("health"),
             "metrics URL": t.get("scrapeUrl"), "last error": t.get("lastError") or ""}
            for t in targets]
    st.dataframe(pd.DataFrame(rows).sort_values("component"), hide_index=True, width="stretch")
    up = sum(t.get("health") == "up" for t in targets)
    st.caption(f"{up}/{len(targets)} scrape targets up (Prometheus `up`).")

with common.guard("gateway"):
    health = api.gateway.health()
    deps = health.get("dependencies", {})
    st.markdown(f"**Gateway dependencies**: {health.get('status')} — " + ", ".join(
        f"{name} {'ok' if d.get('ok') else 'DOWN'}" for name, d in deps.items()))

st.subheader("URLs")
st.dataframe(pd.DataFrame([
    {"service": "gateway (OpenAPI docs)", "url": f"{s.gateway_url}/docs"},
    {"service": "MLflow", "url": s.mlflow_tracking_uri},
    {"service": "Prometheus", "url": s.prometheus_url},
    {"service": "Alertmanager", "url": s.alertmanager_url},
    {"service": "control room (this app)", "url": s.ui_url},
]), hide_index=True, width="stretch",
    column_config={"url": st.column_config.LinkColumn("url")})
