"""Model server entry point: ``python -m taxi_mlops.serving.model_server``.

A KServe ``ModelServer`` (v1 and Open Inference Protocol v2 over REST) hosting the tip model
by registry alias. KServe binds to 0.0.0.0; the platform binds every server to one interface
(127.0.0.1 by default), so the REST server's host is taken from ``Settings``.
"""

from __future__ import annotations

import logging

import kserve
from kserve import model_server as kserve_model_server
from kserve.protocol.rest import server as rest_server

from taxi_mlops.serving.model import TaxiTipModel
from taxi_mlops.settings import get_settings


def _bind_rest_server_to(host: str) -> None:
    class RESTServer(rest_server.RESTServer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.config.host = host

    kserve_model_server.RESTServer = RESTServer


def main() -> None:
    settings = get_settings()
    logging.basicConfig(level=logging.INFO)
    _bind_rest_server_to(settings.host)
    model = TaxiTipModel(
        name=settings.model_name,
        tracking_uri=settings.mlflow_tracking_uri,
        registered_name=settings.model_name,
        alias=settings.serving_alias,
        cache_dir=settings.state_dir / "model_server" / "models",
    )
    model.load()
    kserve.ModelServer(http_port=settings.model_server_port, enable_grpc=False, workers=1).start([model])


if __name__ == "__main__":
    main()
