"""The control room's entry point: ``streamlit run src/taxi_mlops/ui/app.py``.

``taxi-mlops up`` starts it (``stack/services.py::ui_service``) with the stack's settings in
the environment. Each page is a script under ``views/``; they read the platform only through
its APIs (``clients.py``).
"""

from __future__ import annotations

import streamlit as st

from taxi_mlops.ui import common

PAGES = [
    st.Page("views/overview.py", title="Overview", icon=":material/dashboard:", default=True),
    st.Page("views/predict.py", title="Predict", icon=":material/local_taxi:"),
    st.Page("views/models.py", title="Models", icon=":material/inventory_2:"),
    st.Page("views/experiments.py", title="Experiments", icon=":material/balance:"),
    st.Page("views/monitoring.py", title="Monitoring", icon=":material/monitoring:"),
    st.Page("views/streams.py", title="Streams", icon=":material/waves:"),
    st.Page("views/lineage.py", title="Lineage", icon=":material/account_tree:"),
]

st.set_page_config(page_title="taxi-mlops control room", page_icon=":material/local_taxi:", layout="wide")
page = st.navigation(PAGES)
with st.sidebar:
    st.selectbox("Charts show", list(common.WINDOWS), index=1, key="window")
    s = common.settings()
    st.caption(f"gateway {s.gateway_url} · MLflow {s.mlflow_tracking_uri} · "
               f"Prometheus {s.prometheus_url} · Alertmanager {s.alertmanager_url}")
page.run()
