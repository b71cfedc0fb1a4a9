"""One prediction without HTTP: features for a trip, the model's answer, the prediction log.

The route only turns a request into a ``Trip`` and a ``Prediction`` into a response; what a
prediction *is* lives here, so it can be read (and exercised) without a web framework.
Failures of a dependency are ``DependencyDown`` naming it; the prediction log never fails
a prediction (``PredictionLogger.log`` never blocks nor raises).
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime, timezone
from typing import Callable

from starlette.concurrency import run_in_threadpool

from taxi_mlops.features import schema
from taxi_mlops.gateway.errors import DependencyDown
from taxi_mlops.gateway.inference import ModelServerError
from taxi_mlops.gateway.metrics import GatewayMetrics
from taxi_mlops.gateway.schemas import ModelInfo, Prediction, Trip
from taxi_mlops.observability import logs
from taxi_mlops.settings import Settings
from taxi_mlops.features import realtime
from taxi_mlops.streaming.events import PredictionLogV1

log = logging.getLogger("taxi_mlops.gateway")


class Predictor:
    """``predict(trip, request_id)``: lookup -> inference -> ``Prediction`` -> log.

    ``lookup_factory`` builds the feature lookup (``FeatureLookup(settings)``) on first use,
    so the gateway starts even if Redis is not up yet. ``inference`` has ``infer(request_id,
    inputs) -> (probability, version)``; ``prediction_log`` has ``log(entry)``. ``metrics``
    is None when metrics are off: then nothing is timed or recorded.
    """

    def __init__(self, settings: Settings, lookup_factory: Callable[[], object], inference,
                 prediction_log, metrics: GatewayMetrics | None = None):
        self.settings = settings
        self._lookup_factory = lookup_factory
        self._lookup = None
        self.inference = inference
        self.prediction_log = prediction_log
        self.metrics = metrics

    async def feature_lookup(self):
        """The Feast client, built on first use (a Feast client takes seconds to build)."""
        if self._lookup is None:
            self._lookup = await asyncio.wait_for(run_in_threadpool(self._lookup_factory),
                                                  self.settings.request_timeout_s * 5)
        return self._lookup

    async def features_for(self, trip: Trip) -> tuple[dict, list[str]]:
        return (await self._read_features([trip], self.settings.request_timeout_s))[0]

    async def features_for_many(self, trips: list[Trip]) -> list[tuple[dict, list[str]]]:
        """One online read for many trips (batch scoring)."""
        return await self._read_features(trips, self.settings.request_timeout_s * 5)

    async def _read_features(self, trips: list[Trip], timeout_s: float) -> list[tuple[dict, list[str]]]:
        """Store features (and the names defaulted) per trip, in one online read; a down or
        slow Redis is ``DependencyDown("feature_store")`` within ``timeout_s``."""
        keys = [(t.pickup_community_area if t.pickup_community_area is not None else schema.MISSING_AREA,
                 t.company or schema.MISSING_COMPANY) for t in trips]
        try:
            lookup = await self.feature_lookup()
            return await asyncio.wait_for(run_in_threadpool(lookup.lookup_many, keys), timeout_s)
        except asyncio.TimeoutError as exc:
            raise DependencyDown("feature_store", "feature store (Redis) timed out") from exc
        except Exception as exc:  # Feast raises many types for a down Redis
            raise DependencyDown("feature_store", f"feature store unavailable: {exc}") from exc

    async def predict_batch(self, trips: list[Trip], request_id: str) -> list[Prediction]:
        """Many trips with one feature read and one model call; each answer and log record
        gets its own request id (``<request_id>-<index>``), so lineage works per trip."""
        if not trips:
            return []
        started = time.perf_counter()
        looked_up = await self.features_for_many(trips)
        t_features = time.perf_counter()
        inputs = [schema.model_inputs(t.model_dump(), f) for t, (f, _) in zip(trips, looked_up)]
        try:
            probabilities, version = await self.inference.infer_batch(request_id, inputs)
        except ModelServerError as exc:
            raise DependencyDown("model_server", str(exc)) from exc
        t_inference = time.perf_counter()
        latency_ms = round((t_inference - started) * 1000, 3)
        predictions = []
        t_log = time.perf_counter()
        with logs.bound(model_version=version):
            for i, (trip, (store_features, defaulted), row, probability) in enumerate(
                    zip(trips, looked_up, inputs, probabilities)):
                predictions.append(self._finish(trip, f"{request_id}-{i}", row, store_features,
                                                defaulted, probability, version, latency_ms))
        if self.metrics is not None:
            self.metrics.observe_stage("feature_lookup", t_features - started)
            self.metrics.observe_stage("inference", t_inference - t_features)
            self.metrics.observe_stage("prediction_log", time.perf_counter() - t_log)
        return predictions

    def _finish(self, trip: Trip, request_id: str, inputs: dict, store_features: dict,
                defaulted: list[str], probability: float, version: str | None,
                latency_ms: float) -> Prediction:
        """The answer for one trip, logged and counted."""
        settings = self.settings
        features_used = {**inputs, **{n: store_features[n] for n in realtime.REALTIME_FEATURES}}
        probability = min(max(probability, 0.0), 1.0)
        prediction = Prediction(
            request_id=request_id, trip_id=trip.trip_id, tip_probability=probability,
            big_tipper=probability >= 0.5,
            model=ModelInfo(name=settings.model_name, version=version, alias=settings.serving_alias),
            features_used=features_used, defaulted_features=defaulted, latency_ms=latency_ms)
        self.prediction_log.log(PredictionLogV1(
            request_id=request_id, trip_id=trip.trip_id, features=features_used,
            model_name=settings.model_name, model_version=version or "",
            model_alias=settings.serving_alias, tip_probability=probability,
            latency_ms=latency_ms, timestamp=datetime.now(timezone.utc),
            event_time=(datetime.fromtimestamp(trip.trip_start_timestamp, timezone.utc)
                        if trip.trip_start_timestamp is not None else None)))
        if self.metrics is not None:
            self.metrics.record_prediction(settings.model_name, version, settings.serving_alias,
                                           probability, defaulted)
        return prediction

    async def predict(self, trip: Trip, request_id: str, context: dict | None = None) -> Prediction:
        """``context`` (the request's dict, if any) receives ``model_version`` for the access log."""
        metrics = self.metrics
        started = time.perf_counter()
        store_features, defaulted = await self.features_for(trip)
        t_features = time.perf_counter()
        inputs = schema.model_inputs(trip.model_dump(), store_features)
        try:
            probability, version = await self.inference.infer(request_id, inputs)
        except ModelServerError as exc:
            raise DependencyDown("model_server", str(exc)) from exc
        t_inference = time.perf_counter()
        if context is not None:
            context["model_version"] = version
        latency_ms = round((t_inference - started) * 1000, 3)
        t_log = time.perf_counter()
        with logs.bound(model_version=version):
            prediction = self._finish(trip, request_id, inputs, store_features, defaulted,
                                      probability, version, latency_ms)
        if metrics is not None:
            metrics.observe_stage("feature_lookup", t_features - started)
            metrics.observe_stage("inference", t_inference - t_features)
            metrics.observe_stage("prediction_log", time.perf_counter() - t_log)
        return prediction
