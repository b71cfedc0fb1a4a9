"""The prediction gateway: validate a trip, look up its features, ask the model server.

``POST /predict`` is the platform's front door; ``GET /health`` reports each dependency;
``GET /metrics`` is Prometheus text summed over all workers. Bad input is a 4xx naming the
field; a dependency that is down is a 503 saying which, within ``Settings.request_timeout_s``.
Nothing here knows how the model computes.

The control plane (issue 7): ``/routing`` (split, shadow, fallback, ensemble), ``/experiments``
(sequential-test rollout) and ``/models`` (served versions, promote, rollback, reload).
Reads are open; every call that changes state needs the admin bearer token (``auth``).

Layered like KServe's REST server: this module holds the routes and small ``register_*``
functions; the prediction is ``predictor.Predictor``, which model answers is
``router.Router``, the control plane is ``control.Control``, the ASGI layers are in
``middleware``, error responses in ``errors`` and the metric objects in ``metrics``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import time
from contextlib import asynccontextmanager
from datetime import datetime

import uvicorn
from fastapi import BackgroundTasks, Body, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field, ValidationError

from taxi_mlops import pids, runtime, security
from taxi_mlops.gateway import metrics as gateway_metrics, reuseport
from taxi_mlops.gateway.auth import require_admin
from taxi_mlops.gateway.errors import (ADMIN, DependencyDown, documented,  # noqa: F401 (public)
                                       register_exception_handlers, validation_errors)
from taxi_mlops.gateway.inference import InferenceClient
from taxi_mlops.gateway.metrics import GatewayMetrics
from taxi_mlops.gateway.middleware import (BodyLimit, MetricsMiddleware, RequestIdMiddleware,
                                           request_context)
from taxi_mlops.gateway.predictor import Predictor, default_policy
from taxi_mlops.gateway.router import Router, RoutingPolicy
from taxi_mlops.gateway.warmup import WarmUp
from taxi_mlops.gateway.schemas import (MAX_BATCH, BatchRequest, BatchResponse, BatchResult,
                                        HealthReport, Liveness, Prediction, Trip)
from taxi_mlops.observability import logs
from taxi_mlops.rollout.experiment import ExperimentSpec  # noqa: E402
from taxi_mlops.settings import Settings, get_settings

log = logging.getLogger("taxi_mlops.gateway")
MAX_BODY_BYTES = 64 * 1024
# A batch of MAX_BATCH raw rows is ~400 KB of JSON.
BODY_LIMITS = {"/predict/batch": 1024 * MAX_BATCH}
LOG_SYNC_INTERVAL_S = 1.0  # prediction-log counters -> metrics, per worker
APP_IMPORT = "taxi_mlops.gateway.app:create_app"
WARM_UP_WAIT_S = 30.0  # start-up waits this long for the warm-up before serving anyway


def _lifespan(settings: Settings, metrics: GatewayMetrics | None):
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        from taxi_mlops.gateway.features import FeatureLookup
        from taxi_mlops.streaming.prediction_log import PredictionLogger

        app.state.prediction_log = PredictionLogger(  # never blocks, never raises
            settings, spool_dir=settings.prediction_spool_dir if settings.prediction_log_spool else None,
            linger_ms=settings.prediction_log_linger_ms)
        app.state.inference = InferenceClient(settings.model_server_urls, settings.model_name,
                                              settings.request_timeout_s)
        router = Router(default_policy(settings))
        app.state.predictor = Predictor(settings, lambda: FeatureLookup(settings),
                                        app.state.inference, app.state.prediction_log, metrics,
                                        router=router)
        app.state.control = _control(settings, router)
        routing_task = asyncio.create_task(_refresh_routing(app, settings))
        app.state.warm_up = WarmUp(app.state.predictor, app.state.inference)
        warm_task = asyncio.create_task(app.state.warm_up.run())
        # Serve only once warm (uvicorn opens the port after start-up), unless a dependency
        # is still down after WARM_UP_WAIT_S, or no model server listens at all (no champion
        # yet): then serve, /health 503 until warm (the warm-up goes on), /predict a 503 naming
        # the model server, and a request meanwhile pays for the cold clients itself.
        absent = asyncio.create_task(app.state.warm_up.model_server_absent.wait())
        done, _ = await asyncio.wait({warm_task, absent}, timeout=WARM_UP_WAIT_S,
                                     return_when=asyncio.FIRST_COMPLETED)
        absent.cancel()
        if warm_task not in done:
            log.warning("not warm (%s); serving, /health stays 503 until warm",
                        app.state.warm_up.error)
        runtime.freeze_startup_heap()  # Feast's client and the warm clients are built by now
        if settings.gateway_workers > 1:  # the master's readiness counts warm workers (pids.py)
            pids.mark_serving(settings.gateway_serving_dir)
        sync_task = None
        if metrics is not None:
            _check_metrics_mode(metrics)
            sync_task = asyncio.create_task(_sync_prediction_log(app, metrics))
        yield
        warm_task.cancel()
        routing_task.cancel()
        if sync_task is not None:
            sync_task.cancel()
        await app.state.inference.close()
        await run_in_threadpool(app.state.prediction_log.close, 5.0)
        if metrics is not None:
            metrics.sync_prediction_log(app.state.prediction_log.counters())
            metrics.close()

    return lifespan


def _control(settings: Settings, router: Router):
    """The control plane, or None if the rollout store cannot be opened (then /predict
    still answers with the default policy, and the control routes say why they cannot)."""
    from taxi_mlops.gateway.control import Control

    try:
        control = Control(settings, router)
        control.refresh(force=True)
        return control
    except Exception as exc:
        log.error("rollout store unavailable: routing stays on the default policy",
                  extra={"store": settings.rollout_store_name, "error": str(exc)})
        return None


async def _refresh_routing(app: FastAPI, settings: Settings) -> None:
    """Every ``routing_refresh_s``: pick up policy and experiment changes made through any
    worker or the label join (a decided experiment stops routing within a second)."""
    while True:
        await asyncio.sleep(settings.routing_refresh_s)
        control = app.state.control
        if control is None:
            continue
        try:
            await run_in_threadpool(control.refresh)
        except Exception as exc:  # a locked or vanished store must not stop the loop
            log.warning("routing refresh failed", extra={"error": str(exc)})


def _check_metrics_mode(metrics: GatewayMetrics) -> None:
    """Say which value class the metrics use: in-memory values behind several workers, or
    files in someone else's folder (Feast's temporary one), would make /metrics wrong."""
    mode = gateway_metrics.value_mode()
    if mode["multiprocess"] and mode["dir"] == str(metrics.expected_path):
        log.info("metrics in multiprocess mode", extra={"metrics_dir": mode["dir"],
                                                        "value_class": mode["value_class"]})
    else:
        log.warning("metrics not in the gateway's multiprocess folder: /metrics shows this "
                    "process only", extra={"metrics_dir": mode["dir"], "expected": str(metrics.expected_path),
                                           "value_class": mode["value_class"]})


async def _sync_prediction_log(app: FastAPI, metrics: GatewayMetrics) -> None:
    while True:
        await asyncio.sleep(LOG_SYNC_INTERVAL_S)
        metrics.sync_prediction_log(app.state.prediction_log.counters())


def register_middleware(app: FastAPI, metrics: GatewayMetrics | None) -> None:
    """Outermost first: request id (every response carries it), metrics (counting 413s
    too), body limit."""
    app.add_middleware(BodyLimit, max_bytes=MAX_BODY_BYTES, per_path=BODY_LIMITS)
    if metrics is not None:
        app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_middleware(RequestIdMiddleware)


def register_predict_routes(app: FastAPI) -> None:
    @app.post("/predict", response_model=Prediction, responses=documented({
        422: "Invalid trip: each error names its field.",
        503: "A dependency (feature store or model server) is unavailable."}))
    async def predict(trip: Trip, request: Request, background: BackgroundTasks) -> Response:
        ctx = request_context(request.scope)
        prediction = await request.app.state.predictor.predict(trip, ctx["request_id"], ctx,
                                                               defer=background.add_task)
        # Serialized once, here: returned as a model, FastAPI would validate it again against
        # ``response_model`` and then encode it (issue 11: CPU per request). The clamps in
        # ``Predictor._finish`` keep it within the schema ``response_model`` documents.
        return Response(prediction.model_dump_json(), media_type="application/json",
                        background=background)


def register_batch_routes(app: FastAPI) -> None:
    @app.post("/predict/batch", response_model=BatchResponse, responses=documented({
        422: "The body is not a list of 1 to 1,000 trips.",
        503: "A dependency (feature store or model server) is unavailable."}))
    async def predict_batch(batch: BatchRequest, request: Request) -> BatchResponse:
        """Score up to 1,000 trips in order. An invalid trip gets its own error entry (fields
        named as for /predict); the others are still answered."""
        started = time.perf_counter()
        ctx = request_context(request.scope)
        trips, results = [], []
        for index, raw in enumerate(batch.trips):
            try:
                trips.append((index, Trip.model_validate(raw)))
            except ValidationError as exc:
                results.append(BatchResult(index=index, errors=validation_errors(exc)))
        predictions = await request.app.state.predictor.predict_batch([t for _, t in trips],
                                                                      ctx["request_id"])
        results += [BatchResult(index=i, prediction=p) for (i, _), p in zip(trips, predictions)]
        results.sort(key=lambda r: r.index)
        return BatchResponse(request_id=ctx["request_id"], answered=len(predictions),
                             rejected=len(batch.trips) - len(predictions), results=results,
                             latency_ms=round((time.perf_counter() - started) * 1000, 3))


def register_health_routes(app: FastAPI, settings: Settings) -> None:
    @app.get("/health/live", response_model=Liveness)
    async def liveness():
        import os

        return Liveness(status="alive", pid=os.getpid(), parent_pid=os.getppid())

    @app.get("/health", response_model=HealthReport, responses={
        503: {"model": HealthReport, "description": "A dependency does not answer (status 'degraded')."}})
    async def health(request: Request):
        state = request.app.state
        checks = {"model_server": await state.inference.ready(), "warm_up": state.warm_up.state()}
        try:
            lookup = await state.predictor.feature_lookup()
            await asyncio.wait_for(run_in_threadpool(lookup.ping), settings.request_timeout_s)
            checks["feature_store"] = {"ok": True, "redis": settings.redis_url,
                                       "repo": str(settings.feast_repo)}
        except Exception as exc:
            checks["feature_store"] = {"ok": False, "redis": settings.redis_url,
                                       "error": str(exc) or type(exc).__name__}
        ok = all(c["ok"] for c in checks.values())
        # The prediction log is best effort: its backlog is reported, never a reason to fail.
        return JSONResponse(status_code=200 if ok else 503,
                            content={"status": "ok" if ok else "degraded", "dependencies": checks,
                                     "prediction_log": state.prediction_log.counters()})


STORE_DOWN = "The rollout store could not be opened."
REGISTRY_DOWN = "The rollout store or the model registry (MLflow) does not answer."


class PromoteRequest(BaseModel):
    version: str = Field(..., pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="A version number or an alias.")
    reason: str = Field("", max_length=500)


class RollbackRequest(BaseModel):
    reason: str = Field("", max_length=500)


def _control_of(request: Request):
    control = request.app.state.control
    if control is None:
        raise DependencyDown("rollout_store", f"the rollout store at {request.app.state.settings.rollout_store_name} "
                                              "could not be opened; see the gateway log")
    return control


def register_routing_routes(app: FastAPI) -> None:
    @app.get("/routing", responses=documented({503: STORE_DOWN}))
    async def get_routing(request: Request):
        return _control_of(request).routing()

    @app.put("/routing", responses=documented({
        **ADMIN, 422: "Invalid policy, or a target that is not registered: the field is named.",
        503: REGISTRY_DOWN}))
    async def put_routing(policy: RoutingPolicy, request: Request, actor: str = Depends(require_admin)):
        """Set the base policy: split (sticky A/B/N), shadow, fallback, ensemble."""
        control = _control_of(request)
        result = await run_in_threadpool(control.set_routing, policy)
        log.info("routing policy set", extra={"actor": actor, "policy": policy.model_dump()})
        return result


def register_experiment_routes(app: FastAPI) -> None:
    @app.get("/experiments", responses=documented({503: STORE_DOWN}))
    async def list_experiments(request: Request):
        return {"experiments": await run_in_threadpool(_control_of(request).experiments)}

    @app.get("/experiments/{experiment_id}", responses=documented({404: "No such experiment.",
                                                                    503: STORE_DOWN}))
    async def get_experiment(experiment_id: str, request: Request):
        return await run_in_threadpool(_control_of(request).experiment, experiment_id)

    @app.post("/experiments", status_code=201, responses=documented({
        **ADMIN, 409: "An experiment is already running for this model.",
        422: "Invalid spec, or a target that is not registered: the field is named.",
        503: REGISTRY_DOWN}))
    async def start_experiment(request: Request, body: dict = Body(default_factory=dict,
                                                                   examples=[{"control": "champion", "treatment": "challenger",
                                                                              "split": {"control": 0.5, "treatment": 0.5},
                                                                              "metric": "accuracy", "alpha": 0.05}]),
                               actor: str = Depends(require_admin)):
        """Split traffic between two versions until a sequential test decides (fields: see
        ``ExperimentSpec``; ``model_name`` defaults to the served model)."""
        try:
            spec = ExperimentSpec.from_request(body, request.app.state.settings.model_name)
        except ValidationError as exc:
            raise RequestValidationError(exc.errors()) from exc
        return await run_in_threadpool(_control_of(request).start_experiment, spec, actor)

    @app.post("/experiments/{experiment_id}/stop", responses=documented({
        **ADMIN, 404: "No such experiment.", 409: "The experiment is not running.", 503: STORE_DOWN}))
    async def stop_experiment(experiment_id: str, request: Request, actor: str = Depends(require_admin)):
        return await run_in_threadpool(_control_of(request).stop_experiment, experiment_id, actor)


def register_model_routes(app: FastAPI) -> None:
    @app.get("/models", responses=documented({503: "The model server does not answer."}))
    async def served_models(request: Request):
        """The model servers' versions and aliases."""
        try:
            return await request.app.state.inference.versions()
        except Exception as exc:
            raise DependencyDown("model_server", str(exc)) from exc

    @app.post("/models/promote", responses=documented({
        **ADMIN, 409: "Nothing to do (already champion) or refused.",
        422: "Invalid body, or a version that is not registered: the field is named.",
        503: REGISTRY_DOWN}))
    async def promote(body: PromoteRequest, request: Request, actor: str = Depends(require_admin)):
        """Move the champion alias to ``version``; the old champion becomes ``previous``."""
        return await run_in_threadpool(_control_of(request).promote, body.version, actor,
                                       body.reason or "manual promotion")

    @app.post("/models/rollback", responses=documented({
        **ADMIN, 409: "No previous version to go back to.", 503: REGISTRY_DOWN}))
    async def rollback(request: Request, body: RollbackRequest | None = None,
                       actor: str = Depends(require_admin)):
        """Move the champion alias back to ``previous``."""
        reason = (body.reason if body else "") or "manual rollback"
        return await run_in_threadpool(_control_of(request).rollback, actor, reason)

    @app.post("/models/reload", responses=documented(ADMIN))
    async def reload(request: Request, actor: str = Depends(require_admin)):
        """Make every model-server replica reread the registry now (no wait for its poll)."""
        token = security.read_token(request.app.state.settings)
        return {"replicas": await request.app.state.inference.refresh(token)}


def register_monitoring_routes(app: FastAPI) -> None:
    """Read-only drift reports of drifted windows (``gateway/monitoring.py``), so a client
    never reads the data-quality worker's files."""
    from fastapi import Path as PathParam, Query

    from taxi_mlops.gateway import control, monitoring

    @app.get("/monitoring/drift-reports")
    async def drift_reports(request: Request, limit: int = Query(50, ge=1, le=monitoring.MAX_LIMIT)):
        return {"reports": await run_in_threadpool(monitoring.list_reports, request.app.state.settings, limit)}

    @app.get("/monitoring/drift-reports/{name}", responses={404: {"description": "No such report."},
                                                           422: {"description": "Not a report name."}})
    async def drift_report(request: Request, name: str = PathParam(..., pattern=monitoring.NAME_PATTERN)):
        try:
            return await run_in_threadpool(monitoring.read_report, request.app.state.settings, name)
        except monitoring.InvalidName as exc:
            raise control.InvalidField("name", str(exc)) from exc
        except monitoring.ReportNotFound as exc:
            raise control.NotFound(str(exc)) from exc


def register_lineage_routes(app: FastAPI) -> None:
    """Prediction lineage (``gateway/lineage.py``): one stored prediction's full chain, from
    the DVC data version to its label, and the recent ones."""
    from fastapi import Path, Query

    from taxi_mlops.gateway.errors import documented
    from taxi_mlops.gateway.lineage import REQUEST_ID_PATTERN, Lineage, PredictionChain, PredictionList
    from taxi_mlops.lineage.predictions import MAX_LIST

    def lineage_of(request: Request) -> Lineage:
        state = request.app.state
        if getattr(state, "lineage", None) is None:
            state.lineage = Lineage(state.settings)
        return state.lineage

    store_down = "The prediction store does not exist yet (the prediction-store worker creates it)."

    @app.get("/predictions/{request_id}", response_model=PredictionChain, responses=documented({
        404: "No prediction with this request id is stored (yet).",
        422: "Not an id the gateway could have logged: 1 to 72 of A-Z a-z 0-9 . _ -.",
        503: store_down}))
    async def prediction_lineage(request: Request, request_id: str = Path(
            ..., pattern=REQUEST_ID_PATTERN)) -> PredictionChain:
        """The logged prediction, its model version and aliases, the MLflow run and its metrics,
        the TFX pipeline run and its artifacts (ML Metadata), the DVC data version with the
        command that restores it, and the label once it has arrived. A backend that cannot be
        read leaves its part empty and is named in ``errors``."""
        return await run_in_threadpool(lineage_of(request).get, request_id)

    @app.get("/predictions", response_model=PredictionList, responses=documented({
        422: "A bad filter: the field (since, limit, model_version) is named.", 503: store_down}))
    async def list_predictions(request: Request,
                               model_version: str | None = Query(None, max_length=64),
                               since: float | datetime | None = Query(None, description=(
                                   "Epoch seconds, or an ISO 8601 date-time (naive = UTC).")),
                               limit: int = Query(50, ge=1, le=MAX_LIST)) -> PredictionList:
        """Stored predictions, newest first."""
        # Typed so the OpenAPI says which values are valid (a fuzzer holds us to it); the
        # lineage layer takes text, as the CLI and tests call it directly.
        text = since.isoformat() if isinstance(since, datetime) else None if since is None else repr(since)
        return await run_in_threadpool(lineage_of(request).list, model_version, text, limit)


def register_metrics_route(app: FastAPI, metrics: GatewayMetrics) -> None:
    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics(request: Request):
        metrics.sync_prediction_log(request.app.state.prediction_log.counters())
        body, content_type = await run_in_threadpool(metrics.exposition)
        return Response(body, media_type=content_type)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    metrics = GatewayMetrics(settings) if settings.metrics_enabled else None
    app = FastAPI(
        title="Chicago Taxi tip gateway",
        version="1.0",
        description="Predicts whether a trip's tip exceeds 20% of the fare, using online "
                    "features from Feast and the model served by KServe.",
        lifespan=_lifespan(settings, metrics),
    )
    app.state.metrics = metrics
    app.state.settings = settings
    app.state.control = None
    register_middleware(app, metrics)
    register_exception_handlers(app)
    register_predict_routes(app)
    register_batch_routes(app)
    register_health_routes(app, settings)
    register_routing_routes(app)
    register_experiment_routes(app)
    register_model_routes(app)
    register_monitoring_routes(app)
    register_lineage_routes(app)
    if metrics is not None:
        register_metrics_route(app, metrics)
    return app


def _listening_socket(settings: Settings):
    """The gateway's port, bound with SO_REUSEPORT so that ``gateway_instances`` independent
    processes share it (``reuseport.py``: one active, the others warm standbys, unless
    ``gateway_standby`` is off). Bound, not listening: uvicorn listens once the app is warm,
    so no connection waits on a cold one."""
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((settings.host, settings.gateway_port))
    except OSError as exc:
        log.error("cannot bind %s:%s: %s (another program holds the port: stop it or set "
                  "TAXI_GATEWAY_PORT)", settings.host, settings.gateway_port, exc)
        sys.exit(1)
    sock.set_inheritable(True)
    return sock


class SteeringServer(uvicorn.Server):
    """uvicorn's Server that, once it listens, steers the shared port's connections to the
    group's first listener (``reuseport.steer_to_first`` must follow listen()). At module
    level: with several workers uvicorn pickles ``server.run`` into spawned processes."""

    steer = False

    async def startup(self, sockets=None):
        await super().startup(sockets=sockets)
        if self.steer and not self.should_exit:
            for sock in sockets or ():
                if sock.family in (socket.AF_INET, socket.AF_INET6):  # not the instance's own
                    reuseport.steer_to_first(sock)


def main() -> None:
    """Serve with ``settings.gateway_workers`` uvicorn workers, each building the app from
    ``APP_IMPORT`` (a factory: workers are spawned processes, an app object cannot be passed).

    The metrics folder is set here, before any worker (or this process) imports
    prometheus_client or Feast; the workers inherit the environment. It is shared by the
    instances on this port (``/metrics`` sums them all) and wiped only when none of them runs.
    Besides the shared port, the process answers on a Unix socket of its own
    (``reuseport.instance_socket``): how the supervisor checks a standby's health.
    """
    from uvicorn.supervisors import Multiprocess

    settings = get_settings()
    logs.setup("gateway", settings.log_level)
    path = gateway_metrics.prepare_multiprocess_dir(settings)
    log.info("gateway starting", extra={"port": settings.gateway_port, "workers": settings.gateway_workers,
                                        "standby": settings.gateway_standby,
                                        "metrics_enabled": settings.metrics_enabled, "metrics_dir": str(path)})
    # uvicorn re-raises the SIGTERM it handled once the server stopped; exit through Python
    # (not the default handler) so the folder below is released.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    config = uvicorn.Config(APP_IMPORT, factory=True, host=settings.host, port=settings.gateway_port,
                            workers=max(1, settings.gateway_workers), timeout_keep_alive=30,
                            log_config=logs.uvicorn_log_config("gateway", settings.log_level))
    sock = _listening_socket(settings)
    own = reuseport.bind_instance_socket(settings.run_dir, os.getpid())
    server = SteeringServer(config)
    server.steer = settings.gateway_standby
    try:
        if config.workers > 1:
            Multiprocess(config, target=server.run, sockets=[sock, own]).run()
        else:
            server.run(sockets=[sock, own])
    finally:
        reuseport.instance_socket(settings.run_dir, os.getpid()).unlink(missing_ok=True)
        gateway_metrics.release_multiprocess_dir(path)
        if config.workers > 1:  # the workers' serving markers (see _lifespan)
            pids.forget_serving(settings.gateway_serving_dir)


if __name__ == "__main__":
    main()
