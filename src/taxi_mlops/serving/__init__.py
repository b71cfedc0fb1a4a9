"""The model server (``serving/model_server.py``). This package file stays light: the stack
and Prometheus name replicas without importing KServe or TensorFlow."""


def replica_name(replica: int) -> str:
    """A model-server replica's service name. Replica 0 keeps the historical name
    (logs/model_server.log, the scrape target's component label)."""
    return "model_server" if replica == 0 else f"model_server-{replica}"
