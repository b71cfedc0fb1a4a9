"""The model server's own Prometheus families, served beside KServe's on the REST port.

KServe 0.15 registers ``request_{preprocess,predict,postprocess,explain}_seconds{model_name}``
in prometheus_client's default ``REGISTRY`` and serves that registry at ``/metrics`` (one
process: ``ModelServer(workers=1)``). Ours go into the same registry, so one scrape returns
both; they add the model version (KServe's labels carry the model name only), the request
outcome, and what is loaded.
"""

from __future__ import annotations

import warnings

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from taxi_mlops.observability.metrics import LATENCY_BUCKETS


class ModelServerMetrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY):
        self.inference_seconds = Histogram(
            "taxi_model_server_inference_seconds",
            "Time the model server spends on one inference request (preprocess, predict, postprocess).",
            ["model_name", "model_version"], buckets=LATENCY_BUCKETS, registry=registry)
        self.requests = Counter(
            "taxi_model_server_requests",
            "Inference requests handled by the model server, by outcome (ok|error).",
            ["model_name", "model_version", "status"], registry=registry)
        self.model_info = Gauge(
            "taxi_model_info", "1 for the model version this server has loaded, with its registry alias.",
            ["model_name", "model_version", "alias"], registry=registry)
        self.eval_accuracy = Gauge(
            "taxi_model_eval_accuracy",
            "Evaluation accuracy of the loaded version (MLflow tag eval_binary_accuracy).",
            ["model_name", "model_version"], registry=registry)
        self._published: list[tuple[Gauge, tuple[str, ...]]] = []

    def loaded(self, name: str, version: str, alias: str, tags: dict) -> "RequestRecorder":
        """Publish what is loaded (replacing an earlier version); returns the per-request
        recorder for that version."""
        with warnings.catch_warnings():  # "not implemented in multi-process mode": we are not in it
            warnings.simplefilter("ignore", UserWarning)
            for gauge, labels in self._published:
                gauge.remove(*labels)
        self._published = [(self.model_info, (name, version, alias))]
        self.model_info.labels(name, version, alias).set(1)
        accuracy = _float(tags.get("eval_binary_accuracy"))
        if accuracy is not None:
            self.eval_accuracy.labels(name, version).set(accuracy)
            self._published.append((self.eval_accuracy, (name, version)))
        return RequestRecorder(self, name, version)


class RequestRecorder:
    """Label children resolved once, so a request costs one observe and one increment."""

    def __init__(self, metrics: ModelServerMetrics, name: str, version: str):
        self._latency = metrics.inference_seconds.labels(name, version)
        self._ok = metrics.requests.labels(name, version, "ok")
        self._error = metrics.requests.labels(name, version, "error")

    def record(self, seconds: float, ok: bool) -> None:
        self._latency.observe(seconds)
        (self._ok if ok else self._error).inc()


class NoRecorder:
    """Stands in when ``settings.metrics_enabled`` is off."""

    def record(self, seconds: float, ok: bool) -> None:
        pass


def _float(value) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None

