"""Model server entry point: ``python -m taxi_mlops.serving.model_server [--replica N]``.

A KServe ``ModelServer`` (v1 and Open Inference Protocol v2 over REST) hosting every served
version of the tip model at once (``serving/repository.py``: the aliased ones and the pinned
ones, hot-swapped as the registry's aliases move). KServe binds to 0.0.0.0; the platform
binds every server to one interface (127.0.0.1 by default), so the REST server's host is
taken from ``Settings``. Replica N listens on ``model_server_port + N``.

Routes (all on the REST port; ours are registered before KServe's, whose versioned v2 routes
raise NotImplementedError in 0.15, and FastAPI answers with the first match):

- KServe's unversioned ones (``/v2/models/{name}/infer``, ``/ready``, metadata, v1
  ``:predict``) answer with the version holding ``settings.serving_alias``, looked up per
  request (``ServedModel``).
- ``POST /v2/models/{name}/versions/{ref}/infer``, ``GET .../versions/{ref}/ready`` and
  ``GET .../versions/{ref}``: ``ref`` is a version number or an alias; 404 unknown, 503 loading.
  The infer route, the gateway's call for every prediction, is answered before FastAPI's
  routing (``serving/fast_infer.py``) by the handler its FastAPI route also calls.
- ``GET /v2/models/{name}/versions``: the alias map and every hosted version's state.
- ``POST /v2/models/{name}/refresh`` (admin bearer token): reread the registry now.

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

import argparse
import asyncio
import logging
import os
import sys
import time

from taxi_mlops.observability.metrics import MULTIPROC_VARS  # noqa: E402 (imports nothing else)

for _var in MULTIPROC_VARS:
    os.environ.pop(_var, None)  # before prometheus_client picks its value class (import time)
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a tqdm bar is no log line

import kserve  # noqa: E402
from kserve import model_server as kserve_model_server  # noqa: E402
from prometheus_client import REGISTRY  # noqa: E402
from prometheus_client.metrics import MetricWrapperBase  # noqa: E402
from kserve.protocol.rest import server as rest_server  # noqa: E402

from fastapi import APIRouter, FastAPI, Request  # noqa: E402
from fastapi.responses import JSONResponse, Response  # noqa: E402
import orjson  # noqa: E402
import uvloop  # noqa: E402
from kserve import InferRequest, Model  # noqa: E402
from kserve.errors import ModelNotReady  # noqa: E402
from kserve.model import InferenceVerb  # noqa: E402
from kserve.protocol.rest.v2_datamodels import InferenceRequest  # noqa: E402
from pydantic import ValidationError  # noqa: E402

from taxi_mlops import runtime, security  # noqa: E402
from taxi_mlops.observability import logs  # noqa: E402
from taxi_mlops.registry.models import VersionInfo  # noqa: E402
from taxi_mlops.serving import fast_infer, replica_name, repository as repo_mod  # noqa: E402
from taxi_mlops.serving.metrics import ModelServerMetrics, RequestRecorder  # noqa: E402
from taxi_mlops.serving.model import ModelNotRegistered, TaxiTipModel  # noqa: E402
from taxi_mlops.serving.repository import NotReady, UnknownRef, VersionRepository  # noqa: E402
from taxi_mlops.settings import Settings, get_settings  # noqa: E402

log = logging.getLogger(__name__)

REFRESH_WAIT_S = 60.0


def _bind_rest_server_to(host: str, routes: APIRouter | None = None,
                         infer: fast_infer.InferHandler | None = None) -> None:
    """KServe's REST server on ``host``, with ``routes`` matched before KServe's own, the
    versioned infer route ``infer`` taken before FastAPI's routing (``serving/fast_infer.py``),
    and without KServe's ``TimingMiddleware``: it measures wall and CPU time of every request
    only to hand them to ``kserve.trace`` at INFO, which ``setup_logging`` silences (our own
    per-request line and histograms carry the timing). Issue 11: per-request CPU."""
    class RESTServer(rest_server.RESTServer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.config.host = host

        def _register_endpoints(self, app: FastAPI):
            if routes is not None:
                app.include_router(routes)
            super()._register_endpoints(app)

        def _add_middlewares(self, app: FastAPI):
            # not KServe's TimingMiddleware (above) nor its access logger (never configured);
            # the handlers dict is the app's own, filled by _add_exception_handlers after this
            if infer is not None:
                app.add_middleware(fast_infer.InferFastPath, infer=infer,
                                   exception_handlers=app.exception_handlers)

    kserve_model_server.RESTServer = RESTServer


def _bind_grpc_server_to(host: str) -> None:
    """KServe's gRPC server listens on ``[::]`` (every interface); ours on ``host`` only."""
    from grpc import aio
    from kserve.protocol.grpc import server as grpc_server

    class _LocalAio:
        @staticmethod
        def server(*args, **kwargs):
            server = aio.server(*args, **kwargs)
            add = server.add_insecure_port
            server.add_insecure_port = lambda address: add(address.replace("[::]", host, 1))
            return server

    grpc_server.aio = _LocalAio


class ServedModel(Model):
    """What KServe's unversioned routes see: the version holding the serving alias, resolved
    per request from the repository's current view, so an alias move needs no restart and a
    request in flight keeps the version it started with."""

    def __init__(self, name: str, repository: VersionRepository, alias: str):
        super().__init__(name)
        self.repository, self.alias = repository, alias
        self.ready = True  # KServe registers only ready models; healthy() tells the truth

    async def healthy(self) -> bool:
        try:
            self.repository.resolve(self.alias)
            return True
        except (UnknownRef, NotReady):
            return False

    def get_input_types(self) -> list[dict]:
        return TaxiTipModel.get_input_types(self)

    def get_output_types(self) -> list[dict]:
        return TaxiTipModel.get_output_types(self)

    async def __call__(self, body, headers: dict | None = None, verb: InferenceVerb = InferenceVerb.PREDICT):
        try:
            _, model = self.repository.resolve(self.alias)
        except (UnknownRef, NotReady) as exc:
            raise ModelNotReady(self.name, str(exc)) from exc
        return await model(body, headers=headers, verb=verb)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": message})


def _error_bytes(message: str) -> bytes:
    return orjson.dumps({"error": message})


class _Refused(Exception):
    """A versioned route's 404 or 503, decided before any model is asked."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def _no_such_model(model_name: str, name: str) -> str:
    return f"model {model_name!r} does not exist (this server hosts {name!r})"


def _resolve(name: str, repository: VersionRepository, model_name: str, ref: str) -> tuple[str, TaxiTipModel]:
    """(version, model) for ``ref`` of ``model_name``; ``_Refused`` 404 for another model or an
    unknown ref, 503 for a version still loading."""
    if model_name != name:
        raise _Refused(404, _no_such_model(model_name, name))
    try:
        return repository.resolve(ref)
    except UnknownRef as exc:
        raise _Refused(404, str(exc)) from exc
    except NotReady as exc:
        raise _Refused(503, str(exc)) from exc


def versioned_infer(settings: Settings, repository: VersionRepository) -> fast_infer.InferHandler:
    """``POST /v2/models/{name}/versions/{ref}/infer`` as (name, ref, body, headers) ->
    (status, JSON bytes): served by ``fast_infer.InferFastPath`` and, for any other spelling
    of the path, by the FastAPI route (the same function). KServe's exceptions propagate to
    the app's handlers (``InvalidInput`` from preprocess becomes 400)."""
    name = settings.model_name

    async def infer(model_name: str, ref: str, body: bytes, headers: dict) -> tuple[int, bytes]:
        try:
            _, model = _resolve(name, repository, model_name, ref)
        except _Refused as refused:
            return refused.status, _error_bytes(refused.message)
        try:
            request = InferenceRequest.model_validate_json(body)
        except ValidationError as exc:
            return 400, _error_bytes(f"not a v2 inference request: {exc}"[:1000])
        response, _ = await model(InferRequest.from_inference_request(request, model_name),
                                  headers=headers)
        rest, _ = response.to_rest()
        # The v2 response as bytes, straight from the dict: a pydantic model would be
        # validated and then re-encoded by FastAPI's jsonable_encoder (issue 11).
        return 200, orjson.dumps(rest, option=orjson.OPT_SERIALIZE_NUMPY)

    return infer


def version_routes(settings: Settings, repository: VersionRepository,
                   handler: fast_infer.InferHandler | None = None) -> APIRouter:
    """The versioned v2 routes, the listing and the admin refresh (see the module docstring)."""
    router = APIRouter(prefix="/v2/models/{model_name}")
    name = settings.model_name
    handler = handler or versioned_infer(settings, repository)

    def resolve(model_name: str, ref: str) -> tuple[str, TaxiTipModel] | JSONResponse:
        try:
            return _resolve(name, repository, model_name, ref)
        except _Refused as refused:
            return _error(refused.status, refused.message)

    def aliases_of(version: str) -> list[str]:
        return sorted(a for a, v in repository.view.aliases.items() if v == version)

    @router.get("/versions")
    async def listing(model_name: str):
        if model_name != name:
            return _error(404, _no_such_model(model_name, name))
        return repository.listing()

    @router.post("/refresh")
    async def refresh(model_name: str, request: Request):
        try:
            security.check_authorization(request.headers.get("authorization"),
                                         security.read_token(settings))
        except security.AuthError as exc:
            return _error(exc.status, exc.message)
        if model_name != name:
            return _error(404, _no_such_model(model_name, name))
        return await asyncio.to_thread(repository.refresh, REFRESH_WAIT_S)

    @router.get("/versions/{ref}")
    async def metadata(model_name: str, ref: str):
        found = resolve(model_name, ref)
        if isinstance(found, JSONResponse):
            return found
        version, model = found
        return {"name": name, "versions": [version], "model_version": version,
                "aliases": aliases_of(version), "platform": "",
                "inputs": model.get_input_types(), "outputs": model.get_output_types()}

    @router.get("/versions/{ref}/ready")
    async def ready(model_name: str, ref: str):
        found = resolve(model_name, ref)
        if isinstance(found, JSONResponse):
            return found
        version, _ = found
        return {"name": name, "ready": True, "model_version": version, "aliases": aliases_of(version)}

    @router.post("/versions/{ref}/infer")
    async def infer(model_name: str, ref: str, request: Request):
        status, content = await handler(model_name, ref, await request.body(), dict(request.headers))
        return Response(content, status_code=status, media_type="application/json")

    return router


def setup_logging(level: str, component: str = "model_server") -> None:
    """Our JSON lines for everything; KServe must not install its own handlers.

    ``ModelServer()`` calls ``kserve.logging.configure_logging`` (plain-text handlers on the
    ``kserve`` and ``uvicorn`` loggers, propagation off) when its module-level
    ``args.configure_logging`` is true; uvicorn gets ``log_config=None`` from KServe and
    configures nothing. Per request we log one line of our own (``TaxiTipModel.__call__``), so
    uvicorn's access line and KServe's timing lines (``kserve.trace``) are kept to warnings.
    """
    kserve_model_server.args.configure_logging = False
    logs.setup(component, level)
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


def loader(settings: Settings, metrics: ModelServerMetrics | None, replica: int):
    """How the repository turns a registry version into a ready model: load the MLflow pyfunc,
    attach its per-version request recorder, warm it with one prediction."""
    cache = repo_mod.cache_dir(settings, replica)

    def load(info: VersionInfo) -> TaxiTipModel:
        ref = repo_mod.info_ref(settings.model_name, info)
        model = TaxiTipModel(name=settings.model_name, tracking_uri=settings.mlflow_tracking_uri,
                             registered_name=settings.model_name, alias=ref.alias, cache_dir=cache,
                             batch_max_rows=settings.model_batch_max_rows,
                             batch_wait_s=settings.model_batch_wait_ms / 1000,
                             batch_inline_rows=settings.model_batch_inline_rows)
        recorder = RequestRecorder(metrics, settings.model_name, info.version) if metrics else None
        model.load_ref(ref, recorder)
        model.warm()
        _undo_feast_import()  # the first MLflow call may have imported feast
        return model

    return load


def start_repository(settings: Settings, metrics: ModelServerMetrics | None,
                     replica: int = 0) -> VersionRepository:
    """The repository, with the serving alias's version loaded before the server opens (as
    the single-model server did): no such alias is ``ModelNotRegistered``, a failed load of it
    is fatal; the other versions load in the background."""
    repository = VersionRepository(settings, repo_mod.mlflow_fetch(settings),
                                   loader(settings, metrics, replica), metrics=metrics,
                                   component=replica_name(replica))
    if not repository.poll():
        raise RuntimeError(f"MLflow at {settings.mlflow_tracking_uri} did not answer")
    alias = settings.serving_alias
    version = repository.registry_aliases().get(alias)
    if version is None:
        raise ModelNotRegistered(
            f"no version of {settings.model_name!r} has alias {alias!r} in MLflow at "
            f"{settings.mlflow_tracking_uri}: run `taxi-mlops train` first")
    deadline = time.monotonic() + max(settings.startup_timeout_s, 60.0)
    while True:
        try:
            repository.resolve(alias)
            break
        except NotReady as exc:
            if repository.state(version) == repo_mod.FAILED or time.monotonic() > deadline:
                raise RuntimeError(f"cannot serve {settings.model_name}@{alias}: {exc}") from exc
        repository.wait_settled(1.0)
    repository.start()
    return repository


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="taxi_mlops.serving.model_server")
    parser.add_argument("--replica", type=int, default=0, help="replica index: port model_server_port + N")
    parser.add_argument("--grpc-port", type=int, default=0,
                        help="also serve KServe's OIP v2 gRPC here (unversioned routes only; "
                             "bench/oip_transport.py compares it with REST); 0: off")
    args, _ = parser.parse_known_args(argv)
    settings = get_settings()
    setup_logging(settings.log_level, replica_name(args.replica))
    metrics = ModelServerMetrics() if settings.metrics_enabled else None
    repository = start_repository(settings, metrics, args.replica)
    _undo_feast_import()
    infer = versioned_infer(settings, repository)
    _bind_rest_server_to(settings.host, version_routes(settings, repository, infer), infer)
    if args.grpc_port:
        _bind_grpc_server_to(settings.host)
    served = ServedModel(settings.model_name, repository, settings.serving_alias)
    # KServe runs its servers with asyncio.run() on the default loop (its uvicorn config
    # says loop="asyncio", which start() never reads); uvloop's transports and thread-safe
    # wake-ups (every micro-batch returns from a thread) cost less CPU per request.
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.set_event_loop(asyncio.new_event_loop())  # KServe's setup asks for a current loop
    runtime.freeze_startup_heap()  # TensorFlow, KServe and the served versions are loaded
    try:
        kserve.ModelServer(http_port=settings.model_server_port + args.replica,
                           enable_grpc=args.grpc_port > 0, grpc_port=args.grpc_port or 8081,
                           workers=1, enable_latency_logging=False).start([served])
    finally:
        repository.stop()


if __name__ == "__main__":
    main()
