"""The control room: a Streamlit app over the platform's APIs (gateway, MLflow, Prometheus,
Alertmanager). It reads no other component's files; ``taxi-mlops up`` runs it as the ``ui``
service (``stack/services.py::ui_service``)."""
