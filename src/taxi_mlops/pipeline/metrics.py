"""Training-run metrics for the Prometheus Pushgateway (job ``taxi_pipeline``).

A training run is a batch job: nothing is left running for Prometheus to scrape, so the
launcher (platform side) pushes one group per run when it ends, successful or not. The
durations come from the progress events the TFX process prints (``pipeline/run.py``) and
the launcher timestamps on arrival; the evaluation metrics are those MlflowLogger logged
for the run's model (``eval_*`` run metrics in MLflow).

Everything here but ``push`` is pure, so the families are unit-tested without a gateway.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Callable, Iterable, Mapping

from prometheus_client import CollectorRegistry, Gauge, push_to_gateway, pushadd_to_gateway

log = logging.getLogger(__name__)

JOB = "taxi_pipeline"
PUSH_TIMEOUT_S = 5.0
EVAL_PREFIX = "eval_"


class RunTimer:
    """Per-step durations from the launcher's progress events.

    ``{"component": X, "state": "running"}`` starts X, ``{..., "state": "finished"}`` ends it;
    the launcher's own data step (``{"step": "data", ...}``) is timed the same way under the
    name ``data``. Other events (``{"components": [...]}``, ``{"done": true}``) are ignored.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._running: dict[str, float] = {}
        self.durations: dict[str, float] = {}

    def observe(self, event: Mapping, at: float | None = None) -> None:
        name = event.get("component") or event.get("step")
        state = event.get("state")
        if not isinstance(name, str) or state not in ("running", "finished"):
            return
        at = self._clock() if at is None else at
        if state == "running":
            self._running[name] = at
        elif name in self._running:
            self.durations[name] = at - self._running.pop(name)

    def until_now(self, at: float | None = None) -> dict[str, float]:
        """Finished steps plus the ones still running, timed up to ``at`` (for a failed run:
        the step that failed shows how long it ran)."""
        at = self._clock() if at is None else at
        return {**self.durations, **{name: at - start for name, start in self._running.items()}}


def component_durations(events: Iterable[tuple[float, Mapping]]) -> dict[str, float]:
    """``(arrival time, event)`` pairs -> seconds per finished component."""
    timer = RunTimer()
    for at, event in events:
        timer.observe(event, at)
    return timer.durations


def eval_metrics(run_metrics: Mapping[str, float]) -> dict[str, float]:
    """MLflow run metrics -> ``{metric: value}`` for the ``eval_*`` ones, prefix dropped."""
    out = {}
    for key, value in run_metrics.items():
        if key.startswith(EVAL_PREFIX) and len(key) > len(EVAL_PREFIX):
            try:
                number = float(value)
            except (TypeError, ValueError):
                continue
            if math.isfinite(number):
                out[key[len(EVAL_PREFIX):]] = number
    return out


def build_registry(*, success: bool, run_seconds: float, finished_at: float,
                   component_seconds: Mapping[str, float],
                   eval_metrics: Mapping[str, float] | None = None) -> CollectorRegistry:
    """The run's families in a fresh registry, ready for ``push``.

    A failed run carries no evaluation metrics (``eval_metrics`` is ignored); its component
    durations are those of the steps that ran (``RunTimer.until_now``).
    """
    registry = CollectorRegistry()
    components = Gauge("taxi_pipeline_component_duration_seconds",
                       "Wall time of each pipeline component in the last run (cached components "
                       "included: they take the time TFX takes to find the cache hit).",
                       ["component"], registry=registry)
    for name, seconds in component_seconds.items():
        components.labels(name).set(seconds)
    Gauge("taxi_pipeline_run_duration_seconds", "Wall time of the last training run.",
          registry=registry).set(run_seconds)
    Gauge("taxi_pipeline_last_run_success", "1 if the last training run succeeded, else 0.",
          registry=registry).set(1 if success else 0)
    Gauge("taxi_pipeline_last_run_timestamp_seconds", "Unix time the last training run ended.",
          registry=registry).set(finished_at)
    if success and eval_metrics:
        metric = Gauge("taxi_pipeline_eval_metric",
                       "Evaluation metrics (overall slice) of the model the last run trained.",
                       ["metric"], registry=registry)
        for name, value in eval_metrics.items():
            metric.labels(name).set(value)
    return registry


def push(url: str, registry: CollectorRegistry, *, replace: bool = True,
         timeout: float = PUSH_TIMEOUT_S) -> bool:
    """Send the run's group to the Pushgateway; False (and a warning) when it cannot.

    ``replace`` PUTs (the group becomes exactly this run's families); otherwise POST replaces
    only the families pushed, so a failed run keeps the last successful run's
    ``taxi_pipeline_eval_metric`` on display while ``last_run_success`` turns 0 (a family
    replaces the old one only if it has samples: the data step always starts, so a failed
    run's component durations always replace the previous run's). Monitoring
    being down never fails training: any error is logged and swallowed.
    """
    send = push_to_gateway if replace else pushadd_to_gateway
    try:
        send(url, job=JOB, registry=registry, timeout=timeout)
    except Exception as exc:  # noqa: BLE001 - URLError, timeouts, HTTP errors alike
        log.warning("could not push pipeline metrics to the Pushgateway at %s: %s", url, exc)
        return False
    return True
