"""Model server entry point: ``python -m taxi_mlops.serving.model_server``.

A KServe ``ModelServer`` (v1 and Open Inference Protocol v2 over REST) hosting the tip model
by registry alias. KServe binds to 0.0.0.0; the platform binds every server to one interface
(127.0.0.1 by default), so the REST server's host is taken from ``Settings``.

Observability: ``/metrics`` on the REST port is KServe's handler over prometheus_client's
default registry, which holds KServe's ``request_*_seconds{model_name}`` and our
``taxi_model_*`` families (``serving/metrics.py``). One process (``workers=1``), so the
single-process registry is the right one: a ``PROMETHEUS_MULTIPROC_DIR`` inherited from a
parent (importing feast sets one) would switch prometheus_client to files no collector reads,
so it is dropped before prometheus_client is imported (and again after the model is loaded,
see ``_undo_feast_import``). Logs are our JSON lines on stdout;
KServe's own logging setup is turned off and its and uvicorn's loggers go through ours.
"""

from __future__ import annotations

import logging
import os
import sys

from taxi_mlops.observability.metrics import MULTIPROC_VARS  # noqa: E402 (imports nothing else)

for _var in MULTIPROC_VARS:
    os.environ.pop(_var, None)  # before prometheus_client picks its value class (import time)
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a tqdm bar is no log line

import kserve  # noqa: E402
from kserve import model_server as kserve_model_server  # noqa: E402
from prometheus_client import REGISTRY  # noqa: E402
from prometheus_client.metrics import MetricWrapperBase  # noqa: E402
from kserve.protocol.rest import server as rest_server  # noqa: E402

from taxi_mlops.observability import logs  # noqa: E402
from taxi_mlops.serving.metrics import ModelServerMetrics  # noqa: E402
from taxi_mlops.serving.model import TaxiTipModel  # noqa: E402
from taxi_mlops.settings import get_settings  # noqa: E402


def _bind_rest_server_to(host: str) -> None:
    class RESTServer(rest_server.RESTServer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.config.host = host

    kserve_model_server.RESTServer = RESTServer


def setup_logging(level: str) -> None:
    """Our JSON lines for everything; KServe must not install its own handlers.

    ``ModelServer()`` calls ``kserve.logging.configure_logging`` (plain-text handlers on the
    ``kserve`` and ``uvicorn`` loggers, propagation off) when its module-level
    ``args.configure_logging`` is true; uvicorn gets ``log_config=None`` from KServe and
    configures nothing. Per request we log one line of our own (``TaxiTipModel.__call__``), so
    uvicorn's access line and KServe's timing lines (``kserve.trace``) are kept to warnings.
    """
    kserve_model_server.args.configure_logging = False
    logs.setup("model_server", level)
    logging.captureWarnings(True)  # library DeprecationWarnings as JSON lines too
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    logging.getLogger("kserve.trace").setLevel(logging.WARNING)


def _undo_feast_import() -> None:
    """MLflow's client loads its request-header plugins on its first call, and Feast ships one:
    importing feast sets ``PROMETHEUS_MULTIPROC_DIR`` (to a temporary folder) and registers
    its feature-server families in the default registry. Neither belongs to this process:
    the variable would leak into anything it starts, the families would be scraped as zeros."""
    for var in MULTIPROC_VARS:
        os.environ.pop(var, None)
    feast_metrics = sys.modules.get("feast.metrics")
    for value in vars(feast_metrics).values() if feast_metrics else ():
        if isinstance(value, MetricWrapperBase):
            try:
                REGISTRY.unregister(value)
            except KeyError:
                pass


def main() -> None:
    settings = get_settings()
    setup_logging(settings.log_level)
    _bind_rest_server_to(settings.host)
    model = TaxiTipModel(
        name=settings.model_name,
        tracking_uri=settings.mlflow_tracking_uri,
        registered_name=settings.model_name,
        alias=settings.serving_alias,
        cache_dir=settings.state_dir / "model_server" / "models",
        metrics=ModelServerMetrics() if settings.metrics_enabled else None,
    )
    model.load()
    _undo_feast_import()
    kserve.ModelServer(http_port=settings.model_server_port, enable_grpc=False, workers=1,
                       enable_latency_logging=False).start([model])


if __name__ == "__main__":
    main()
