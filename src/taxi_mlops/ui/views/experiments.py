"""Experiments: the live A/B test (gateway), traffic and metric per variant and the
sequential test's evidence over time (Prometheus range queries)."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from taxi_mlops.ui import common

st.title("Experiments")
api = common.clients()
experiments: list[dict] | None = None

with common.guard("gateway"):
    experiments = api.gateway.experiments()

if experiments is not None:
    running = [e for e in experiments if e["status"] == "running"]
    if not experiments:
        st.info("No experiment: none has been started. "
                "`taxi-mlops experiment start --control champion --treatment challenger --split 50/50`")
    else:
        if not running:
            st.info("No experiment is running; the latest ones are listed below.")
        ids = [e["experiment_id"] for e in running + [e for e in experiments if e["status"] != "running"]]
        chosen = st.selectbox("experiment", ids, key="experiment")
        exp = next(e for e in experiments if e["experiment_id"] == chosen)
        test = exp.get("test") or {}
        st.markdown(f"**{exp['status']}** · control v{exp['control_version']} vs treatment "
                    f"v{exp['treatment_version']} · split {exp.get('split')} · metric {exp['metric']} · "
                    f"α {exp['alpha']} · started {exp['created_at'][:19]}")
        c = st.columns(5)
        c[0].metric("labels, control", test.get("n_control", 0))
        c[1].metric("labels, treatment", test.get("n_treatment", 0))
        c[2].metric("effect (treatment − control)", common.fmt(test.get("effect"), "{:+.4f}"))
        low, high = test.get("ci_low"), test.get("ci_high")
        c[3].metric("anytime-valid interval", "–" if low is None or high is None else f"[{low:+.2f}, {high:+.2f}]")
        c[4].metric("the test says", test.get("action", "–"))
        st.caption(test.get("reason", ""))
        if exp.get("decision"):
            st.json(exp["decision"], expanded=False)

        eid = exp["experiment_id"]
        left, right = st.columns(2)
        with left:
            common.range_chart("traffic per variant (answers/s)",
                               f'sum by (variant) (rate(taxi_gateway_routed_total{{experiment="{eid}"}}[1m]))',
                               "variant")
            common.range_chart(f"{exp['metric']} per variant (mean outcome)",
                               f'max by (variant) (taxi_experiment_outcome_mean{{experiment="{eid}"}})',
                               "variant")
        with right:
            common.range_chart("labels per variant",
                               f'max by (variant) (taxi_experiment_labels{{experiment="{eid}"}})', "variant")
            common.range_chart("evidence: effect and its anytime-valid interval",
                               f'max by (bound) (taxi_experiment_effect{{experiment="{eid}"}})', "bound",
                               empty="no interval yet (each arm needs its minimum labels)")
        st.caption("Promotion when the interval lies above 0, roll-back when below; it stays valid "
                   "however often it is looked at.")
        st.subheader("All experiments")
        st.dataframe(pd.DataFrame([{"id": e["experiment_id"], "status": e["status"],
                                    "control": e["control_version"], "treatment": e["treatment_version"],
                                    "labels": (e.get("test") or {}).get("n_control", 0)
                                    + (e.get("test") or {}).get("n_treatment", 0),
                                    "started": e["created_at"][:19], "decided": (e.get("decided_at") or "")[:19]}
                                   for e in experiments]), hide_index=True, width="stretch")
