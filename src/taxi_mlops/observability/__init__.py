"""Observability: JSON logs, Prometheus metrics conventions, and the monitoring services
(Prometheus, Alertmanager, Pushgateway, our alert receiver)."""
