"""One prediction without HTTP: features for a trip, the routed model's answer, the log.

The route only turns a request into a ``Trip`` and a ``Prediction`` into a response; what a
prediction *is* lives here, so it can be read (and exercised) without a web framework.
Which model answers is the ``Router``'s ``Plan`` (split variant, fallback, ensemble, shadow);
this module carries it out: a failed primary is answered by the fallback (marked), an
ensemble by the mean of its members, a shadow is mirrored after the response and logged,
never returned. Failures of a dependency are ``DependencyDown`` naming it; the prediction log
never fails a prediction (``PredictionLogger.log`` never blocks nor raises).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from datetime import datetime, timezone
from typing import Callable

from starlette.concurrency import run_in_threadpool

from taxi_mlops.features import schema
from taxi_mlops.gateway.coalesce import Coalescer
from taxi_mlops.gateway.errors import DependencyDown
from taxi_mlops.gateway.features import StoreBreaker, fallback_rows
from taxi_mlops.gateway.inference import ModelServerError
from taxi_mlops.gateway.metrics import GatewayMetrics
from taxi_mlops.gateway.router import Plan, Router, RoutingPolicy, VariantSpec
from taxi_mlops.gateway.schemas import ModelInfo, Prediction, RoutingInfo, Trip
from taxi_mlops.observability import logs
from taxi_mlops.settings import Settings
from taxi_mlops.features import realtime
from taxi_mlops.streaming.events import PredictionLogV2

log = logging.getLogger("taxi_mlops.gateway")


SHADOW_MAX_IN_FLIGHT = 64  # mirrors past this are skipped (counted), never queued without bound


def default_policy(settings: Settings) -> RoutingPolicy:
    """Everything to the serving alias: what the gateway did before routing existed."""
    alias = settings.serving_alias
    return RoutingPolicy(split=[VariantSpec(name=alias, target=alias, weight=1.0)])


class Predictor:
    """``predict(trip, request_id)``: lookup -> route -> inference -> ``Prediction`` -> log.

    ``lookup_factory`` builds the feature lookup (``FeatureLookup(settings)``, read with
    ``alookup_many(keys)``) on first use, so the gateway starts even if Redis is not up yet.
    ``inference`` has ``infer_batch(request_id, rows, target) -> (probabilities, version)``;
    ``prediction_log`` has ``log(entry)``; ``router`` has ``route(trip) -> Plan``. ``metrics``
    is None when metrics are off: then nothing is timed or recorded.
    """

    def __init__(self, settings: Settings, lookup_factory: Callable[[], object], inference,
                 prediction_log, metrics: GatewayMetrics | None = None, router: Router | None = None):
        self.settings = settings
        self._lookup_factory = lookup_factory
        self._lookup = None
        self.inference = inference
        self.prediction_log = prediction_log
        self.metrics = metrics
        self.router = router or Router(default_policy(settings))
        self._shadow_tasks: set[asyncio.Task] = set()
        self.shadow_counts = {"sent": 0, "failed": 0, "skipped": 0}
        self._breaker = StoreBreaker(settings.feature_store_retry_s)
        # Concurrent /predicts share one online read and one v2 call per target (coalesce.py).
        # The metric counts requests per call (a batch-scoring read is one request, not shared).
        record = None if metrics is None else metrics.record_shared_call
        self._feature_reads = Coalescer(self._read_many, settings.gateway_coalesce_max,
                                        settings.gateway_coalesce_in_flight,
                                        record and functools.partial(record, "feature_read"))
        self._model_calls = Coalescer(self._infer_many, settings.gateway_coalesce_max,
                                      settings.gateway_coalesce_in_flight,
                                      record and functools.partial(record, "model_call"))

    async def feature_lookup(self):
        """The Feast client, built on first use (a Feast client takes seconds to build)."""
        if self._lookup is None:
            self._lookup = await asyncio.wait_for(run_in_threadpool(self._lookup_factory),
                                                  self.settings.request_timeout_s * 5)
        return self._lookup

    async def features_for(self, trip: Trip, strict: bool = False) -> tuple[dict, list[str], bool]:
        """(features, names defaulted, degraded) for one trip; ``strict``: a down store raises
        even with the fallback on (the warm-up must really read it)."""
        rows, degraded = await self._read_features([trip], self.settings.request_timeout_s, strict,
                                                   shared=True)
        values, defaulted = rows[0]
        return values, defaulted, degraded

    async def features_for_many(self, trips: list[Trip]) -> tuple[list[tuple[dict, list[str]]], bool]:
        """One online read for many trips (batch scoring)."""
        return await self._read_features(trips, self.settings.request_timeout_s * 5)

    async def _read_features(self, trips: list[Trip], timeout_s: float, strict: bool = False,
                             shared: bool = False) -> tuple[list[tuple[dict, list[str]]], bool]:
        """Store features (and the names defaulted) per trip in one online read, and whether
        they are the fallback; ``shared``: the read may carry other requests' keys too. A
        down or slow Redis is ``DependencyDown("feature_store")`` within ``timeout_s``, unless
        ``feature_store_fallback``: then the trips get the last prior row read, every feature
        marked defaulted, and the answer is marked degraded; the breaker spares the next
        requests the wait until the store answers again."""
        keys = [(t.pickup_community_area if t.pickup_community_area is not None else schema.MISSING_AREA,
                 t.company or schema.MISSING_COMPANY) for t in trips]
        fallback = self.settings.feature_store_fallback and not strict
        if fallback and not self._breaker.allow():
            return self._fallback(len(keys)), True
        try:
            if shared:
                rows = await self._feature_reads.submit(None, keys)
            else:
                rows = await self._read_many(None, keys, timeout_s)
        except Exception as exc:  # Feast raises many types for a down Redis
            error = (DependencyDown("feature_store", "feature store (Redis) timed out")
                     if isinstance(exc, asyncio.TimeoutError)
                     else DependencyDown("feature_store", f"feature store unavailable: {exc}"))
            if self._breaker.failed() and fallback:
                log.warning("feature store down: answering with its last prior row, marked degraded",
                            extra={"error": str(error)[:200], "retry_s": self.settings.feature_store_retry_s})
            if not fallback:
                raise error from exc
            return self._fallback(len(keys)), True
        if self._breaker.succeeded():
            log.info("feature store answers again: predictions no longer degraded")
        return rows, False

    async def _read_many(self, _key, keys: list[tuple], timeout_s: float | None = None) -> list:
        """One online read, on the event loop (``FeatureLookup.alookup_many``)."""
        lookup = await self.feature_lookup()
        return await asyncio.wait_for(lookup.alookup_many(keys), timeout_s or self.settings.request_timeout_s)

    async def _infer(self, request_id: str, rows: list[dict], target: str | None) -> tuple[list[float], str | None]:
        """(probabilities, version) for ``rows``, in a v2 call shared with concurrent requests
        to the same target (one call, one version for all of them)."""
        answers = await self._model_calls.submit(target, [(request_id, row) for row in rows])
        return [p for p, _ in answers], answers[0][1]

    async def _infer_many(self, target: str | None, items: list[tuple[str, dict]]) -> list:
        # The v2 id names every request in the call, so the model server's log finds each.
        ids = ",".join(dict.fromkeys(request_id for request_id, _ in items))
        probabilities, version = await self.inference.infer_batch(ids, [row for _, row in items], target)
        return [(p, version) for p in probabilities]

    def _fallback(self, count: int) -> list[tuple[dict, list[str]]]:
        if self._lookup is not None:
            return self._lookup.fallback(count)
        return fallback_rows(count)

    # ---- carrying out a plan ---------------------------------------------------------------
    async def _answer(self, plan: Plan, request_id: str, rows: list[dict]) -> tuple[list[float], str | None, bool]:
        """(probabilities, version, fallback_used) for ``rows`` under ``plan``."""
        if plan.ensemble:
            results = await asyncio.gather(
                *(self._infer(request_id, rows, t) for t in plan.ensemble),
                return_exceptions=True)
            answered = [r for r in results if not isinstance(r, BaseException)]
            if not answered:
                raise DependencyDown("model_server", f"no ensemble member answered: {results[0]}")
            probabilities = [sum(p[i] for p, _ in answered) / len(answered) for i in range(len(rows))]
            version = "+".join(v or "?" for _, v in answered)
            return probabilities, version, len(answered) < len(results)
        try:
            probabilities, version = await self._infer(request_id, rows, plan.target)
            return probabilities, version, False
        except ModelServerError as exc:
            if not plan.fallback:
                raise DependencyDown("model_server", str(exc)) from exc
            log.warning("primary target failed; answering from the fallback",
                        extra={"target": plan.target, "fallback": plan.fallback, "error": str(exc)[:200]})
            try:
                probabilities, version = await self._infer(request_id, rows, plan.fallback)
            except ModelServerError as exc2:
                raise DependencyDown("model_server", f"{exc}; fallback {plan.fallback!r}: {exc2}") from exc2
            if self.metrics is not None:
                self.metrics.record_fallback(plan.target, plan.fallback)
            return probabilities, version, True

    def _mirror(self, plan: Plan, request_id: str, trip: Trip, inputs: dict, features_used: dict,
                defer: Callable | None) -> bool:
        """Send the shadow request after the response (``defer``: Starlette's background
        tasks) or as a task of its own; never more than ``SHADOW_MAX_IN_FLIGHT`` at once."""
        if plan.shadow is None:
            return False
        if len(self._shadow_tasks) >= SHADOW_MAX_IN_FLIGHT:
            self.shadow_counts["skipped"] += 1
            return False
        # A partial of the coroutine function: Starlette awaits it (a lambda would be run in a
        # thread, returning a coroutine nobody awaits).
        run = functools.partial(self._shadow, plan, request_id, trip, inputs, features_used)
        if defer is not None:
            defer(run)
        else:
            task = asyncio.get_running_loop().create_task(run())
            self._shadow_tasks.add(task)
            task.add_done_callback(self._shadow_tasks.discard)
        return True

    async def _shadow(self, plan: Plan, request_id: str, trip: Trip, inputs: dict, features_used: dict) -> None:
        """The mirrored request: logged with ``shadow=True``, its answer goes nowhere else."""
        started = time.perf_counter()
        shadow_id = f"{request_id}-shadow"
        try:
            (probability,), version = await self._infer(shadow_id, [inputs], plan.shadow)
        except Exception as exc:  # a shadow never affects anything but its own counter
            self.shadow_counts["failed"] += 1
            log.info("shadow request failed", extra={"target": plan.shadow, "error": str(exc)[:200]})
            return
        self.shadow_counts["sent"] += 1
        probability = min(max(probability, 0.0), 1.0)
        self._log(trip, shadow_id, features_used, version, _alias(plan.shadow), probability,
                  round((time.perf_counter() - started) * 1000, 3), variant="shadow", plan=plan,
                  shadow=True, fallback=False)
        if self.metrics is not None:
            self.metrics.record_prediction(self.settings.model_name, version, "shadow", probability, [])

    # ---- one trip, many trips ----------------------------------------------------------------
    async def predict(self, trip: Trip, request_id: str, context: dict | None = None,
                      defer: Callable | None = None) -> Prediction:
        """``context`` (the request's dict, if any) receives ``model_version`` for the access
        log; ``defer(fn)`` runs ``fn()`` after the response is sent (the shadow mirror)."""
        metrics = self.metrics
        started = time.perf_counter()
        store_features, defaulted, degraded = await self.features_for(trip)
        t_features = time.perf_counter()
        inputs = schema.model_inputs(trip.model_dump(), store_features)
        plan = self.router.route(trip.model_dump())
        (probability,), version, fell_back = await self._answer(plan, request_id, [inputs])
        t_inference = time.perf_counter()
        if context is not None:
            context["model_version"] = version
        latency_ms = round((t_inference - started) * 1000, 3)
        t_log = time.perf_counter()
        with logs.bound(model_version=version, variant=plan.variant):
            prediction = self._finish(trip, request_id, inputs, store_features, defaulted,
                                      probability, version, latency_ms, plan, fell_back, degraded)
            prediction.routing.shadowed = self._mirror(plan, request_id, trip, inputs,
                                                       prediction.features_used, defer)
        if metrics is not None:
            metrics.observe_stage("feature_lookup", t_features - started)
            metrics.observe_stage("inference", t_inference - t_features)
            metrics.observe_stage("prediction_log", time.perf_counter() - t_log)
        return prediction

    async def predict_batch(self, trips: list[Trip], request_id: str) -> list[Prediction]:
        """Many trips with one feature read and one model call per routed target; each answer
        and log record gets its own request id (``<request_id>-<index>``), so lineage works
        per trip. Batches are not mirrored to a shadow (scoring files is not live traffic)."""
        if not trips:
            return []
        started = time.perf_counter()
        looked_up, degraded = await self.features_for_many(trips)
        t_features = time.perf_counter()
        inputs = [schema.model_inputs(t.model_dump(), f) for t, (f, _) in zip(trips, looked_up)]
        plans = [self.router.route(t.model_dump()) for t in trips]
        groups: dict[tuple, list[int]] = {}
        for i, plan in enumerate(plans):
            groups.setdefault((plan.target, plan.fallback, plan.ensemble), []).append(i)
        answers = await asyncio.gather(*(
            self._answer(plans[idx[0]], request_id if len(groups) == 1 else f"{request_id}-g{g}",
                         [inputs[i] for i in idx]) for g, idx in enumerate(groups.values())))
        per_trip: dict[int, tuple[float, str | None, bool]] = {}
        for idx, (probabilities, version, fell_back) in zip(groups.values(), answers):
            for i, probability in zip(idx, probabilities):
                per_trip[i] = (probability, version, fell_back)
        t_inference = time.perf_counter()
        latency_ms = round((t_inference - started) * 1000, 3)
        predictions = []
        t_log = time.perf_counter()
        for i, (trip, (store_features, defaulted), row) in enumerate(zip(trips, looked_up, inputs)):
            probability, version, fell_back = per_trip[i]
            with logs.bound(model_version=version):
                predictions.append(self._finish(trip, f"{request_id}-{i}", row, store_features,
                                                defaulted, probability, version, latency_ms,
                                                plans[i], fell_back, degraded))
        if self.metrics is not None:
            self.metrics.observe_stage("feature_lookup", t_features - started)
            self.metrics.observe_stage("inference", t_inference - t_features)
            self.metrics.observe_stage("prediction_log", time.perf_counter() - t_log)
        return predictions

    def _finish(self, trip: Trip, request_id: str, inputs: dict, store_features: dict,
                defaulted: list[str], probability: float, version: str | None,
                latency_ms: float, plan: Plan, fell_back: bool, degraded: bool = False) -> Prediction:
        """The answer for one trip, logged and counted; ``degraded``: its features are the
        fallback (the store did not answer)."""
        settings = self.settings
        features_used = {**inputs, **{n: store_features[n] for n in realtime.REALTIME_FEATURES}}
        probability = min(max(probability, 0.0), 1.0)
        answered_by = plan.fallback if fell_back and plan.fallback else plan.target
        alias = "ensemble" if plan.ensemble else _alias(answered_by)
        prediction = Prediction(
            request_id=request_id, trip_id=trip.trip_id, tip_probability=probability,
            big_tipper=probability >= 0.5,
            model=ModelInfo(name=settings.model_name, version=version, alias=alias,
                            variant=plan.variant),
            routing=RoutingInfo(policy=plan.policy, variant=plan.variant, target=answered_by,
                                experiment_id=plan.experiment_id, fallback=fell_back,
                                sticky=plan.sticky, ensemble=list(plan.ensemble)),
            features_used=features_used, defaulted_features=defaulted, latency_ms=latency_ms,
            degraded=["feature_store"] if degraded else [])
        self._log(trip, request_id, features_used, version, alias, probability, latency_ms,
                  variant=plan.variant, plan=plan, shadow=False, fallback=fell_back)
        if self.metrics is not None:
            self.metrics.record_prediction(settings.model_name, version, alias or "version",
                                           probability, defaulted)
            self.metrics.record_route(plan.policy, plan.variant, plan.experiment_id)
            if degraded:
                self.metrics.record_degraded("feature_store")
        return prediction

    def _log(self, trip: Trip, request_id: str, features_used: dict, version: str | None,
             alias: str | None, probability: float, latency_ms: float, *, variant: str,
             plan: Plan, shadow: bool, fallback: bool) -> None:
        self.prediction_log.log(PredictionLogV2(
            request_id=request_id, trip_id=trip.trip_id, features=features_used,
            model_name=self.settings.model_name, model_version=version or "",
            model_alias=alias, tip_probability=probability, latency_ms=latency_ms,
            timestamp=datetime.now(timezone.utc),
            event_time=(datetime.fromtimestamp(trip.trip_start_timestamp, timezone.utc)
                        if trip.trip_start_timestamp is not None else None),
            variant=variant, experiment_id=plan.experiment_id,
            policy="shadow" if shadow else ("fallback" if fallback else plan.policy),
            shadow=shadow, fallback=fallback))


def _alias(target: str | None) -> str | None:
    """A target that is not a version number is an alias."""
    return None if target is None or target.isdigit() else target
