"""Deployment manifests generated from the code that owns their facts (``taxi-mlops deploy render``).

Kubernetes (``kubernetes.py``: a kustomize base and dev/prod overlays) and docker compose
(``compose.py``) repeat our ports, topic declarations, alert rules and dashboards; generating
them keeps one source of truth. ``validate.py`` checks them offline.
"""
