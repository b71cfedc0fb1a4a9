"""Lineage: a request id (typed, or from the Predict page's link) to its chain, drawn as a
graph: data version -> pipeline artifacts -> model version -> prediction -> label."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from taxi_mlops.ui import common, shaping
from taxi_mlops.ui.clients import BackendError, route_missing

st.title("Lineage")
api = common.clients()

request_id = st.text_input("request id", st.query_params.get("request_id", ""),
                           placeholder="paste the request_id of a /predict answer", key="lineage_request_id")
if request_id:
    st.query_params["request_id"] = request_id


def recent() -> None:
    """The last predictions, to pick from."""
    with common.guard("gateway (prediction store)"):
        try:
            answer = api.gateway.recent_predictions(limit=10)
        except BackendError as exc:
            if route_missing(exc):
                st.info("The gateway has no prediction store API (`GET /predictions`) yet.")
                return
            raise
        rows = answer.get("predictions", answer) if isinstance(answer, dict) else answer
        if rows:
            st.markdown("**Recent predictions**")
            st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")


if not request_id.strip():
    st.info("Paste a request id, or follow the link under an answer on the Predict page.")
    recent()
else:
    lineage = None
    with common.guard("gateway (lineage)"):
        try:
            lineage = api.gateway.prediction_lineage(request_id.strip())
        except BackendError as exc:
            if route_missing(exc):
                st.error("The lineage API is unavailable: this gateway has no `GET /predictions/{request_id}` route.")
            elif exc.status == 404:
                st.warning(f"No prediction with request id `{request_id}` is stored: {exc.message}")
            else:
                raise
    if lineage:
        st.graphviz_chart(shaping.lineage_dot(lineage), width="stretch")
        data, model, run = lineage.get("data") or {}, lineage.get("model") or {}, lineage.get("mlflow_run") or {}
        prediction, label = lineage.get("prediction") or {}, lineage.get("label")
        c = st.columns(4)
        c[0].metric("data version (DVC)", (data.get("dvc_data_version") or "–")[:12])
        c[1].metric("model", f"v{model.get('version', '?')} {model.get('family') or ''}")
        c[2].metric("tip probability", common.fmt(prediction.get("tip_probability")))
        correct = (label or {}).get("correct")
        c[3].metric("label", "not joined yet" if not label else
                    ("big tipper" if label.get("big_tipper") else "no big tip"),
                    delta=None if correct is None else ("model right" if correct else "model wrong"),
                    delta_color="normal" if correct else "inverse")
        if data:
            st.markdown(f"**Data**: `{data.get('dvc_data_version')}` at `{data.get('path', '')}`")
            if data.get("restore_command"):
                st.code(data["restore_command"], language="bash")
        if run:
            st.markdown(f"**MLflow run** [`{run.get('run_id', '')}`]({run.get('url', '')})")
            metrics = run.get("metrics") or {}
            evals = {k: v for k, v in metrics.items() if k.startswith("eval_")}
            if evals:
                st.dataframe(pd.DataFrame([evals]), hide_index=True, width="stretch")
        artifacts = (lineage.get("pipeline") or {}).get("artifacts") or []
        if artifacts:
            st.markdown(f"**Pipeline run** `{(lineage.get('pipeline') or {}).get('run_id', '')}`")
            st.dataframe(pd.DataFrame([{"id": a.get("id"), "type": a.get("type"),
                                        "produced by": str(a.get("produced_by", "")).rsplit(".", 1)[-1],
                                        "uri": a.get("uri")} for a in sorted(artifacts, key=shaping.by_id)]),
                         hide_index=True, width="stretch")
        with st.expander("prediction as logged"):
            st.json(prediction)
        for problem in lineage.get("errors") or []:
            st.warning(f"incomplete lineage: {problem}")
