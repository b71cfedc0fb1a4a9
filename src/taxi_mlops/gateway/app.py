"""The prediction gateway: validate a trip, look up its features, ask the model server.

``POST /predict`` is the platform's front door; ``GET /health`` reports each dependency.
Bad input is a 4xx naming the field; a dependency that is down is a 503 saying which, within
``Settings.request_timeout_s``. Nothing here knows how the model computes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from contextlib import asynccontextmanager
from datetime import datetime, timezone

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from taxi_mlops.features import schema
from taxi_mlops.gateway.features import FeatureLookup
from taxi_mlops.gateway.inference import InferenceClient, ModelServerError
from taxi_mlops.gateway.schemas import ModelInfo, Prediction, Trip
from taxi_mlops.settings import Settings, get_settings
from taxi_mlops.streaming import features as realtime
from taxi_mlops.streaming.events import PredictionLogV1
from taxi_mlops.streaming.prediction_log import PredictionLogger

log = logging.getLogger("taxi_mlops.gateway")
MAX_BODY_BYTES = 64 * 1024


class DependencyDown(Exception):
    def __init__(self, dependency: str, message: str):
        super().__init__(message)
        self.dependency, self.message = dependency, message


class BodyLimit:
    """413 for a body over ``max_bytes``: by its Content-Length, or counted as a chunked body
    streams in. Bodies are small (one trip), so the accepted ones are buffered and replayed."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            return await self._reject(send)
        chunks, total, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunks.append(message.get("body", b""))
            total += len(chunks[-1])
            if total > self.max_bytes:
                return await self._reject(send)
            more = message.get("more_body", False)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _reject(self, send):
        body = json.dumps({"detail": [{"field": "body",
                                       "message": f"request body over {self.max_bytes} bytes"}]}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.features = None
        app.state.prediction_log = PredictionLogger(settings)  # never blocks, never raises
        try:  # warm the Feast client now; if Redis is not up yet, the first request retries
            await feature_lookup()
        except Exception as exc:
            log.warning("feature store not ready at start-up (%s); will retry per request", exc)
        app.state.inference = InferenceClient(settings.model_server_url, settings.model_name,
                                              settings.request_timeout_s)
        yield
        await app.state.inference.close()
        await run_in_threadpool(app.state.prediction_log.close, 5.0)

    app = FastAPI(
        title="Chicago Taxi tip gateway",
        version="1.0",
        description="Predicts whether a trip's tip exceeds 20% of the fare, using online "
                    "features from Feast and the model served by KServe.",
        lifespan=lifespan,
    )

    app.add_middleware(BodyLimit, max_bytes=MAX_BODY_BYTES)

    async def feature_lookup() -> FeatureLookup:
        """The Feast client, built on first use: the gateway starts even if Redis is not up yet."""
        if app.state.features is None:
            app.state.features = await asyncio.wait_for(
                run_in_threadpool(FeatureLookup, settings), settings.request_timeout_s * 5)
        return app.state.features

    async def features_for(trip: Trip) -> tuple[dict, list[str]]:
        try:
            lookup = await feature_lookup()
            area = trip.pickup_community_area if trip.pickup_community_area is not None else schema.MISSING_AREA
            company = trip.company or schema.MISSING_COMPANY
            return await asyncio.wait_for(run_in_threadpool(lookup.lookup, area, company),
                                          settings.request_timeout_s)
        except asyncio.TimeoutError as exc:
            raise DependencyDown("feature_store", "feature store (Redis) timed out") from exc
        except Exception as exc:  # Feast raises many types for a down Redis
            raise DependencyDown("feature_store", f"feature store unavailable: {exc}") from exc

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        errors = []
        for err in exc.errors():
            loc = [str(p) for p in err.get("loc", ()) if p != "body"]
            field = ".".join(loc) or "body"
            message = err.get("msg", "invalid")
            if err.get("type") == "json_invalid":
                field, message = "body", "request body is not valid JSON"
            errors.append({"field": field, "message": message})
        return JSONResponse(status_code=422, content={"detail": errors})

    @app.exception_handler(DependencyDown)
    async def dependency_down(request: Request, exc: DependencyDown):
        return JSONResponse(status_code=503, content={
            "detail": exc.message, "dependency": exc.dependency})

    @app.post("/predict", response_model=Prediction, responses={
        422: {"description": "Invalid trip: each error names its field."},
        503: {"description": "A dependency (feature store or model server) is unavailable."}})
    async def predict(trip: Trip) -> Prediction:
        started = time.perf_counter()
        request_id = uuid.uuid4().hex
        store_features, defaulted = await features_for(trip)
        inputs = schema.model_inputs(trip.model_dump(), store_features)
        try:
            probability, version = await app.state.inference.infer(request_id, inputs)
        except ModelServerError as exc:
            raise DependencyDown("model_server", str(exc)) from exc
        features_used = {**inputs, **{n: store_features[n] for n in realtime.REALTIME_FEATURES}}
        prediction = Prediction(
            request_id=request_id,
            trip_id=trip.trip_id,
            tip_probability=min(max(probability, 0.0), 1.0),
            big_tipper=probability >= 0.5,
            model=ModelInfo(name=settings.model_name, version=version, alias=settings.serving_alias),
            features_used=features_used,
            defaulted_features=defaulted,
            latency_ms=round((time.perf_counter() - started) * 1000, 3),
        )
        app.state.prediction_log.log(PredictionLogV1(
            request_id=request_id, trip_id=trip.trip_id, features=features_used,
            model_name=settings.model_name, model_version=version or "",
            model_alias=settings.serving_alias, tip_probability=prediction.tip_probability,
            latency_ms=prediction.latency_ms, timestamp=datetime.now(timezone.utc),
        ))
        return prediction

    @app.get("/health")
    async def health():
        checks = {"model_server": await app.state.inference.ready()}
        try:
            lookup = await feature_lookup()
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
                                     "prediction_log": app.state.prediction_log.counters()})

    return app


def main() -> None:
    import uvicorn

    settings = get_settings()
    uvicorn.run(create_app(settings), host=settings.host, port=settings.gateway_port,
                log_level="info", timeout_keep_alive=30)


if __name__ == "__main__":
    main()
