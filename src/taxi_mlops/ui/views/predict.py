"""Predict: one trip through the gateway, with the ranges the API documents; the answer's
probability, variant and version, the features used (defaulted ones marked) and a link to
the prediction's lineage."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from taxi_mlops.gateway.schemas import Trip
from taxi_mlops.ui import common
from taxi_mlops.ui.clients import BackendError

PAYMENT_TYPES = ["Credit Card", "Cash", "No Charge", "Dispute", "Unknown", "Prcard", "Mobile"]
SCHEMA = Trip.model_json_schema()["properties"]


def bounds(field: str) -> dict:
    """min / max / help of a Trip field, from the gateway's own schema (one source of truth)."""
    prop = SCHEMA[field]
    typed = next((p for p in prop.get("anyOf", [prop]) if p.get("type") != "null"), prop)
    out = {"min_value": typed.get("minimum"), "max_value": typed.get("maximum")}
    if typed.get("type") == "number":
        out = {k: float(v) if v is not None else None for k, v in out.items()}
    help_text = prop.get("description") or ""
    lo, hi = typed.get("minimum"), typed.get("maximum")
    if lo is not None or hi is not None:
        help_text = f"{help_text} Range {lo if lo is not None else '…'} to {hi if hi is not None else '…'}.".strip()
    return {**out, "help": help_text}


st.title("Predict")
st.caption("One trip to `POST /predict`. Ranges are the gateway's; a value outside them is refused by name.")

with st.form("trip"):
    a, b, c = st.columns(3)
    trip = {
        "trip_id": a.text_input("trip_id", "ui-demo", help="Your id for the trip (sticky key of an A/B split)."),
        "trip_miles": a.number_input("trip_miles", value=3.2, step=0.1, **bounds("trip_miles")),
        "fare": a.number_input("fare (USD)", value=12.5, step=0.25, **bounds("fare")),
        "trip_seconds": a.number_input("trip_seconds", value=780, step=30, **bounds("trip_seconds")),
        "trip_start_hour": b.number_input("trip_start_hour", value=14, **bounds("trip_start_hour")),
        "trip_start_day": b.number_input("trip_start_day (1 = Sunday)", value=3, **bounds("trip_start_day")),
        "trip_start_month": b.number_input("trip_start_month", value=5, **bounds("trip_start_month")),
        "pickup_community_area": c.number_input("pickup_community_area", value=8,
                                                **bounds("pickup_community_area")),
        "dropoff_community_area": c.number_input("dropoff_community_area", value=32,
                                                 **bounds("dropoff_community_area")),
        "payment_type": c.selectbox("payment_type", PAYMENT_TYPES, help=SCHEMA["payment_type"].get("description")),
        "company": c.text_input("company", "Flash Cab", help=SCHEMA["company"].get("description")),
    }
    submitted = st.form_submit_button("Predict", type="primary", key="predict_submit")

if submitted:
    body = {k: v for k, v in trip.items() if v not in (None, "")}
    with st.spinner("asking the gateway …"):
        try:
            st.session_state["prediction"] = common.clients().gateway.predict(body)
            st.session_state.pop("prediction_error", None)
        except BackendError as exc:
            st.session_state.pop("prediction", None)
            st.session_state["prediction_error"] = exc

error = st.session_state.get("prediction_error")
if error is not None:
    if error.down:
        st.error(str(error), icon=":material/power_off:")
    else:
        st.warning(str(error))

answer = st.session_state.get("prediction")
if answer:
    model, routing = answer.get("model", {}), answer.get("routing", {})
    m1, m2, m3, m4 = st.columns(4)
    m1.metric("tip probability", f"{answer['tip_probability']:.3f}")
    m2.metric("big tipper (tip > 20 %)", "yes" if answer.get("big_tipper") else "no")
    m3.metric("variant", model.get("variant") or routing.get("variant") or "-")
    m4.metric("model version", f"v{model.get('version')}" + (f" ({model['alias']})" if model.get("alias") else ""))
    st.progress(min(1.0, max(0.0, float(answer["tip_probability"]))))
    st.caption(f"request id `{answer['request_id']}` · routing {routing.get('policy')} → {routing.get('target')}"
               + (f" · experiment {routing['experiment_id']}" if routing.get("experiment_id") else "")
               + (" · answered by the fallback" if routing.get("fallback") else "")
               + f" · {answer.get('latency_ms', 0):.1f} ms")
    st.page_link("views/lineage.py", label="Lineage of this prediction: data version → model → prediction",
                 icon=":material/account_tree:", query_params={"request_id": answer["request_id"]})
    defaulted = set(answer.get("defaulted_features") or [])
    features = pd.DataFrame([{"feature": k, "value": str(v), "defaulted": "defaulted" if k in defaulted else ""}
                             for k, v in sorted(answer.get("features_used", {}).items())])
    st.subheader("Features used")
    if defaulted:
        st.info(f"{len(defaulted)} store feature(s) had no value for this entity and were sent as defaults: "
                + ", ".join(sorted(defaulted)))
    st.dataframe(features, hide_index=True, width="stretch", height=35 * (len(features) + 1) + 3)
