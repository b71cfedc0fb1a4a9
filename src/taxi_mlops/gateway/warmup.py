"""Warm the gateway's clients before it reports ready (issue 11: the first /predict after a
start took 497 ms, the next ones 14 ms).

What is cold after a start: the Feast client (registry read, Redis connection), the
connections to every model-server replica (TCP and HTTP/2-less keep-alive pools, the
replica's own first request through its routes) and the first pass through our own request
code. ``WarmUp.run`` does one feature read and one inference per replica on a sample trip,
retrying until both answer; no prediction is logged (the prediction log is the record of
real traffic) and no metric is moved. Until it has succeeded, ``/health`` says
``warm_up: not ok`` (503), so a load balancer or the stack's health wait sends nothing yet.
"""

from __future__ import annotations

import asyncio
import logging
import time

from taxi_mlops.features import schema
from taxi_mlops.gateway.schemas import Trip
from taxi_mlops.samples import SAMPLE_TRIPS

log = logging.getLogger("taxi_mlops.gateway")
RETRY_S = 0.5
SLOW_RETRY_S = 5.0  # after SLOW_AFTER failed passes: a dependency that is not coming soon
SLOW_AFTER = 20
WARM_REQUEST_ID = "gateway-warm-up"


class WarmUp:
    """One warm-up pass, retried until it succeeds; ``state()`` is the /health entry."""

    def __init__(self, predictor, inference):
        self.predictor, self.inference = predictor, inference
        self.done = False
        self.attempts = 0
        self.error: str | None = None
        self.took_ms: float | None = None
        # Set when no model server listens at all (connection refused), e.g. no champion yet:
        # start-up then serves at once (503 naming it) instead of waiting for it.
        self.model_server_absent = asyncio.Event()

    async def once(self) -> None:
        """Feature read, then one inference on every replica, for a sample trip."""
        trip = Trip.model_validate({k: v for k, v in SAMPLE_TRIPS[0].items() if k in Trip.model_fields})
        features, _, _ = await self.predictor.features_for(trip, strict=True)
        inputs = schema.model_inputs(trip.model_dump(), features)
        plan = self.predictor.router.route(trip.model_dump())
        await self.inference.warm(WARM_REQUEST_ID, [inputs], plan.target)

    async def run(self) -> bool:
        """Until warm: one pass every ``RETRY_S`` (the model server may still be loading)."""
        started = time.perf_counter()
        while not self.done:
            self.attempts += 1
            try:
                await self.once()
            except Exception as exc:  # a dependency not up yet: say which, retry
                self.error = str(exc)[:300] or type(exc).__name__
                if _refused(exc):
                    self.model_server_absent.set()
                if self.attempts == 1 or self.attempts % 20 == 0:
                    log.info("warm-up waiting", extra={"attempt": self.attempts, "error": self.error})
                await asyncio.sleep(RETRY_S if self.attempts < SLOW_AFTER else SLOW_RETRY_S)
                continue
            self.done, self.error = True, None
            self.took_ms = round((time.perf_counter() - started) * 1000, 1)
            log.info("warm-up done", extra={"attempts": self.attempts, "took_ms": self.took_ms})
        return True

    def state(self) -> dict:
        out = {"ok": self.done, "attempts": self.attempts}
        if self.took_ms is not None:
            out["took_ms"] = self.took_ms
        if self.error:
            out["error"] = self.error
        return out


def _refused(exc: BaseException) -> bool:
    """A model-server call that found nothing listening (not one that was slow or failed)."""
    from taxi_mlops.gateway.inference import ModelServerError

    return isinstance(exc, ModelServerError) and exc.refused
