"""The prediction gateway: validate a trip, look up its features, ask the model server.

``POST /predict`` is the platform's front door; ``GET /health`` reports each dependency;
``GET /metrics`` is Prometheus text summed over all workers. Bad input is a 4xx naming the
field; a dependency that is down is a 503 saying which, within ``Settings.request_timeout_s``.
Nothing here knows how the model computes.

Layered like KServe's REST server: this module holds the routes and small ``register_*``
functions; the prediction itself is ``predictor.Predictor``, the ASGI layers are in
``middleware``, error responses in ``errors`` and the metric objects in ``metrics``.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import signal
import sys
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from taxi_mlops.gateway import metrics as gateway_metrics
from taxi_mlops.gateway.errors import (DependencyDown, register_exception_handlers,  # noqa: F401 (public)
                                       validation_errors)
from taxi_mlops.gateway.inference import InferenceClient
from taxi_mlops.gateway.metrics import GatewayMetrics
from taxi_mlops.gateway.middleware import (BodyLimit, MetricsMiddleware, RequestIdMiddleware,
                                           request_context)
from taxi_mlops.gateway.predictor import Predictor
from taxi_mlops.gateway.schemas import (MAX_BATCH, BatchRequest, BatchResponse, BatchResult,
                                        Prediction, Trip)
from taxi_mlops.observability import logs
from taxi_mlops.settings import Settings, get_settings

log = logging.getLogger("taxi_mlops.gateway")
MAX_BODY_BYTES = 64 * 1024
# A batch of MAX_BATCH raw rows is ~400 KB of JSON.
BODY_LIMITS = {"/predict/batch": 1024 * MAX_BATCH}
LOG_SYNC_INTERVAL_S = 1.0  # prediction-log counters -> metrics, per worker
APP_IMPORT = "taxi_mlops.gateway.app:create_app"


def _lifespan(settings: Settings, metrics: GatewayMetrics | None):
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        from taxi_mlops.gateway.features import FeatureLookup
        from taxi_mlops.streaming.prediction_log import PredictionLogger

        app.state.prediction_log = PredictionLogger(settings)  # never blocks, never raises
        app.state.inference = InferenceClient(settings.model_server_url, settings.model_name,
                                              settings.request_timeout_s)
        app.state.predictor = Predictor(settings, lambda: FeatureLookup(settings),
                                        app.state.inference, app.state.prediction_log, metrics)
        try:  # warm the Feast client now; if Redis is not up yet, the first request retries
            await app.state.predictor.feature_lookup()
        except Exception as exc:
            log.warning("feature store not ready at start-up (%s); will retry per request", exc)
        sync_task = None
        if metrics is not None:
            _check_metrics_mode(metrics)
            sync_task = asyncio.create_task(_sync_prediction_log(app, metrics))
        yield
        if sync_task is not None:
            sync_task.cancel()
        await app.state.inference.close()
        await run_in_threadpool(app.state.prediction_log.close, 5.0)
        if metrics is not None:
            metrics.sync_prediction_log(app.state.prediction_log.counters())
            metrics.close()

    return lifespan


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
    @app.post("/predict", response_model=Prediction, responses={
        422: {"description": "Invalid trip: each error names its field."},
        503: {"description": "A dependency (feature store or model server) is unavailable."}})
    async def predict(trip: Trip, request: Request) -> Prediction:
        ctx = request_context(request.scope)
        return await request.app.state.predictor.predict(trip, ctx["request_id"], ctx)


def register_batch_routes(app: FastAPI) -> None:
    @app.post("/predict/batch", response_model=BatchResponse, responses={
        422: {"description": "The body is not a list of 1 to 1,000 trips."},
        503: {"description": "A dependency (feature store or model server) is unavailable."}})
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
    @app.get("/health")
    async def health(request: Request):
        state = request.app.state
        checks = {"model_server": await state.inference.ready()}
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
    register_middleware(app, metrics)
    register_exception_handlers(app)
    register_predict_routes(app)
    register_batch_routes(app)
    register_health_routes(app, settings)
    if metrics is not None:
        register_metrics_route(app, metrics)
    return app


def main() -> None:
    """Serve with ``settings.gateway_workers`` uvicorn workers, each building the app from
    ``APP_IMPORT`` (a factory: workers are spawned processes, an app object cannot be passed).

    The metrics folder is set and wiped here, before any worker (or this process) imports
    prometheus_client or Feast; the workers inherit the environment.
    """
    import uvicorn

    settings = get_settings()
    logs.setup("gateway", settings.log_level)
    path = gateway_metrics.prepare_multiprocess_dir(settings)
    log.info("gateway starting", extra={"port": settings.gateway_port, "workers": settings.gateway_workers,
                                        "metrics_enabled": settings.metrics_enabled, "metrics_dir": str(path)})
    # uvicorn re-raises the SIGTERM it handled once the server stopped; exit through Python
    # (not the default handler) so the folder below is removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        uvicorn.run(APP_IMPORT, factory=True, host=settings.host, port=settings.gateway_port,
                    workers=max(1, settings.gateway_workers), timeout_keep_alive=30,
                    log_config=logs.uvicorn_log_config("gateway", settings.log_level))
    finally:  # the values mean nothing once every worker is gone (next start wipes them too)
        shutil.rmtree(path, ignore_errors=True)


if __name__ == "__main__":
    main()
