"""Models: registered versions with their aliases and alias history, evaluation and slice
metrics (MLflow), what the model servers hold (gateway), promote and roll back (admin token)."""

from __future__ import annotations

import streamlit as st

from taxi_mlops.ui import common, shaping
from taxi_mlops.ui.clients import BackendError, metrics_of, tags_of

st.title("Models")
api = common.clients()
name = common.settings().model_name
versions: list[dict] = []

st.subheader(f"Registered versions of `{name}`")
with common.guard("MLflow"):
    versions = api.mlflow.model_versions(name)
    if not versions:
        st.info("No version is registered yet: `taxi-mlops train` registers one.")
    else:
        aliases = {a["alias"]: a["version"] for a in api.mlflow.registered_model(name).get("aliases", [])}
        for v in versions:  # the search answer may leave aliases out: take them from the model
            v["aliases"] = sorted(a for a, ver in aliases.items() if ver == v["version"])
        st.markdown(" · ".join(f"**{a}** → v{ver}" for a, ver in sorted(aliases.items())) or "no aliases")
        st.dataframe(shaping.versions_table(versions), hide_index=True, width="stretch")

with common.guard("gateway"):
    served = api.gateway.served_models()
    st.caption("Loaded in the model servers now: " + ", ".join(
        f"v{version} {info.get('family', '')} {info.get('state', '')}"
        + (f" ({', '.join(info['aliases'])})" if info.get("aliases") else "")
        for version, info in sorted((served.get("versions") or {}).items(), key=lambda kv: int(kv[0]))))

st.subheader("Alias history")
if versions:
    st.dataframe(shaping.alias_history(versions), hide_index=True, width="stretch")
    st.caption("From the registry's `rollout.*` version tags (each version's registration and its "
               "latest decision); every move is also an event on `taxi.model.events`.")

st.subheader("Evaluation and slices")
if versions:
    options = [int(v["version"]) for v in versions]
    serving = next((i for i, v in enumerate(versions) if "champion" in (v.get("aliases") or [])), 0)
    choice = st.selectbox("version", options, index=serving, key="eval_version")  # the champion first
    version = next(v for v in versions if int(v["version"]) == choice)
    with common.guard("MLflow"):
        run = api.mlflow.run(version["run_id"])
        metrics = metrics_of(run)
        evals = {k.removeprefix("eval_"): v for k, v in metrics.items() if k.startswith("eval_")}
        cols = st.columns(max(1, min(6, len(evals))))
        for col, key in zip(cols, ["binary_accuracy", "auc", "brier_score", "expected_calibration_error",
                                   "precision", "recall"]):
            if key in evals:
                col.metric(key, f"{evals[key]:.4f}")
        tags = tags_of(version)
        st.caption(f"family {tags.get('model_family', '?')} · data version `{tags.get('dvc_data_version', '?')}` · "
                   f"[run in MLflow]({api.mlflow.run_url(run)}) · "
                   f"[version in MLflow]({api.mlflow.version_url(name, version['version'])})")
    with common.guard("MLflow (slice metrics)"):
        slices = shaping.slices_table(api.mlflow.artifact_json(version["run_id"], "evaluation/slice_metrics.json"))
        st.dataframe(slices, hide_index=True, width="stretch")

st.subheader("Promote or roll back")
st.caption("State changes need the admin token (`TAXI_ADMIN_TOKEN`, or `<state_dir>/admin_token`).")
token = st.text_input("admin token", type="password", key="admin_token")
reason = st.text_input("reason", "from the control room", key="action_reason")
left, right = st.columns(2)
with left:
    target = st.selectbox("version to promote", [int(v["version"]) for v in versions] or [None],
                          key="promote_version")
    promote = st.button("Promote to champion", disabled=not (token and target), key="promote")
with right:
    st.write("Move `champion` back to the `previous` version.")
    rollback = st.button("Roll back champion", disabled=not token, key="rollback")

if promote or rollback:
    label = f"promoting v{target} …" if promote else "rolling back …"
    with st.status(label, expanded=True) as status:
        try:
            st.write("asking the gateway (registry aliases, tags, audit event) …")
            result = (api.gateway.promote(str(target), reason, token) if promote
                      else api.gateway.rollback(reason, token))
            event = result.get("event", {})
            st.write(f"{event.get('action')}: v{event.get('version')} is champion "
                     f"(was v{event.get('previous_version') or '-'}); audit event "
                     f"{'delivered' if result.get('delivered') else 'NOT delivered: ' + str(result.get('error'))}")
            status.update(label="done: the model servers swap within a poll interval", state="complete")
        except BackendError as exc:
            status.update(label=str(exc), state="error")
            st.write(str(exc))
