"""The gateway's Prometheus metrics, correct across uvicorn worker processes.

Each worker is its own process with its own memory, so in-memory counters would show one
worker per scrape. prometheus_client's multiprocess mode writes every value to mmapped files
in one folder (``settings.metrics_dir/"gateway"/<port>``) and ``/metrics`` sums the files of all
workers. The mode is chosen once, when ``prometheus_client`` is first imported, from
``PROMETHEUS_MULTIPROC_DIR``; importing Feast sets that variable to a temporary folder of
its own if it is unset. So ``prepare_multiprocess_dir`` sets it to our folder before
anything imports ``prometheus_client`` or Feast, and this module imports
``prometheus_client`` only inside functions (importing the gateway never chooses the mode).

Names and labels are the contract listed in the README (Observability, metrics): dashboards and alert
rules are written against them.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import sys
import threading
from pathlib import Path

from taxi_mlops.observability.metrics import LATENCY_BUCKETS, MULTIPROC_VARS, PROBABILITY_BUCKETS
from taxi_mlops.settings import Settings

PREFIX = "taxi_gateway_"
FAMILIES = (
    "taxi_gateway_requests_total",
    "taxi_gateway_request_duration_seconds",
    "taxi_gateway_stage_duration_seconds",
    "taxi_gateway_predictions_total",
    "taxi_gateway_prediction_probability",
    "taxi_gateway_defaulted_features_total",
    "taxi_gateway_prediction_log_backlog",
    "taxi_gateway_prediction_log_dropped_total",
    "taxi_gateway_prediction_log_sent_total",
    "taxi_gateway_degraded_predictions_total",
    "taxi_gateway_shared_call_size",
)
SHARED_CALLS = ("feature_read", "model_call")
SHARED_CALL_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
STAGES = ("feature_lookup", "inference", "prediction_log")
METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
_LIVE_FILE = re.compile(r"gauge_live\w+?_(\d+)\.db$")


def multiprocess_dir(settings: Settings) -> Path:
    """``metrics_dir/gateway/<port>``: one folder per gateway, so a second gateway on the same
    state directory (a benchmark, a test) neither wipes nor sums into the first one's."""
    return settings.metrics_dir / "gateway" / str(settings.gateway_port)


OWNER_PREFIX = "owner_"  # owner_<pid>: a gateway process using the folder


def _live_owners(path: Path, but: int | None = None) -> list[int]:
    from taxi_mlops.pids import pid_alive

    pids = []
    for f in path.glob(f"{OWNER_PREFIX}*"):
        try:
            pid = int(f.name[len(OWNER_PREFIX):])
        except ValueError:
            continue
        if pid != but and pid_alive(pid):
            pids.append(pid)
    return pids


def prepare_multiprocess_dir(settings: Settings, wipe: bool = True) -> Path:
    """Point prometheus_client (and Feast) at our folder before any metric exists.

    Called by ``main()`` before uvicorn starts the workers, which inherit the variables. The
    folder is emptied (``wipe``) only when no other gateway instance on this port runs: while
    one does, the files of a crashed sibling stay, so the summed counters never go back. A
    wipe after a metric was created would unlink files this process still writes to, so it
    refuses once ``prometheus_client`` is imported in this process with another folder.
    """
    path = multiprocess_dir(settings)
    if "prometheus_client" in sys.modules and os.environ.get(MULTIPROC_VARS[0]) != str(path):
        raise RuntimeError(
            "prometheus_client was imported before the gateway's multiprocess folder was set "
            f"(PROMETHEUS_MULTIPROC_DIR={os.environ.get(MULTIPROC_VARS[0])!r}); start the gateway "
            "with `python -m taxi_mlops.gateway` or call main() before importing Feast")
    if wipe and not (path.is_dir() and _live_owners(path, but=os.getpid())):
        shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)
    (path / f"{OWNER_PREFIX}{os.getpid()}").touch()
    for var in MULTIPROC_VARS:
        os.environ[var] = str(path)
    return path


def release_multiprocess_dir(path: Path) -> None:
    """A clean exit: the folder goes with the last instance using it (the values mean nothing
    once every gateway process is gone; the next start would wipe them anyway)."""
    (path / f"{OWNER_PREFIX}{os.getpid()}").unlink(missing_ok=True)
    if not _live_owners(path):
        shutil.rmtree(path, ignore_errors=True)


def value_mode() -> dict:
    """Which value class prometheus_client uses here and where it writes (logged at start-up,
    asserted by the tests): a MutexValue in a multi-worker gateway would be silently wrong."""
    from prometheus_client import values

    multiprocess = bool(getattr(values.ValueClass, "_multiprocess", False))
    return {"multiprocess": multiprocess, "value_class": values.ValueClass.__name__,
            "dir": os.environ.get(MULTIPROC_VARS[0]) if multiprocess else None}


class _OnlyOurs:
    """Collector wrapper that keeps ``taxi_gateway_*`` families: Feast's metric objects also
    write into the folder (all zero, its metrics server is off) and are not ours to expose."""

    def __init__(self, collector):
        self._collector = collector

    def collect(self):
        return [m for m in self._collector.collect() if m.name.startswith(PREFIX)]


class GatewayMetrics:
    """The gateway's metric objects and the few operations the request path needs.

    Each app gets its own registry (``create_app`` may run more than once per process in
    tests); in multiprocess mode the registry is irrelevant to values, which live in files.
    """

    def __init__(self, settings: Settings):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        mode = value_mode()
        self.multiprocess = mode["multiprocess"]
        self.path = Path(mode["dir"]) if self.multiprocess else None
        self.expected_path = multiprocess_dir(settings)
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("taxi_gateway_requests", "HTTP requests by route template, method "
                                "and status.", ["route", "method", "status"], registry=r)
        self.duration = Histogram("taxi_gateway_request_duration_seconds", "Request latency as the "
                                  "gateway sees it.", ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.stage = Histogram("taxi_gateway_stage_duration_seconds", "Time per /predict stage.",
                               ["stage"], buckets=LATENCY_BUCKETS, registry=r)
        self.predictions = Counter("taxi_gateway_predictions", "Predictions served.",
                                   ["model_name", "model_version", "alias"], registry=r)
        self.probability = Histogram("taxi_gateway_prediction_probability", "Predicted tip "
                                     "probability.", ["model_version"], buckets=PROBABILITY_BUCKETS,
                                     registry=r)
        self.defaulted = Counter("taxi_gateway_defaulted_features", "Store features answered with "
                                 "their default (unseen entity).", ["feature"], registry=r)
        self.log_backlog = Gauge("taxi_gateway_prediction_log_backlog", "Prediction logs queued, "
                                 "not yet acknowledged by Kafka.", registry=r,
                                 multiprocess_mode="livesum")
        self.log_dropped = Counter("taxi_gateway_prediction_log_dropped", "Prediction logs lost: "
                                   "buffer full, closed, or undeliverable.", registry=r)
        self.log_sent = Counter("taxi_gateway_prediction_log_sent", "Prediction logs acknowledged "
                                "by Kafka.", registry=r)
        self.routed = Counter("taxi_gateway_routed", "Answers by routing policy, variant and "
                              "experiment ('none' outside an experiment).",
                              ["policy", "variant", "experiment"], registry=r)
        self.fallbacks = Counter("taxi_gateway_fallbacks", "Answers given by the fallback target "
                                 "because the primary failed.", ["target", "fallback"], registry=r)
        self.degraded = Counter("taxi_gateway_degraded_predictions", "Predictions answered without "
                                "a dependency (feature_store: fallback features).", ["dependency"],
                                registry=r)
        self.shared = Histogram("taxi_gateway_shared_call_size", "Requests carried by one "
                                "online read or one model call (concurrent /predicts share them).",
                                ["call"], buckets=SHARED_CALL_BUCKETS, registry=r)
        self.shared_children = {c: self.shared.labels(c) for c in SHARED_CALLS}
        self.degraded.labels("feature_store")  # exposed at 0: an alert can tell "none" from "no data"
        self.stage_children = {s: self.stage.labels(stage=s) for s in STAGES}
        self._request_children: dict = {}
        self._duration_children: dict = {}
        self._log_seen = {"sent": 0, "dropped": 0}
        self._log_lock = threading.Lock()

    # ---- request path (kept to a dict lookup and two observations) -------------------------
    def record_request(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        child = self._request_children.get(key)
        if child is None:
            child = self._request_children[key] = self.requests.labels(route, method, str(status))
        child.inc()
        hist = self._duration_children.get(route)
        if hist is None:
            hist = self._duration_children[route] = self.duration.labels(route)
        hist.observe(seconds)

    def observe_stage(self, stage: str, seconds: float) -> None:
        self.stage_children[stage].observe(seconds)

    def record_prediction(self, model_name: str, model_version: str | None, alias: str,
                          probability: float, defaulted: list[str]) -> None:
        version = model_version or "unknown"
        self.predictions.labels(model_name, version, alias).inc()
        self.probability.labels(version).observe(probability)
        for name in defaulted:
            self.defaulted.labels(name).inc()

    def record_route(self, policy: str, variant: str, experiment_id: str | None) -> None:
        self.routed.labels(policy, variant, experiment_id or "none").inc()

    def record_degraded(self, dependency: str) -> None:
        self.degraded.labels(dependency).inc()

    def record_shared_call(self, call: str, requests: int) -> None:
        self.shared_children[call].observe(requests)

    def record_fallback(self, target: str, fallback: str) -> None:
        self.fallbacks.labels(target, fallback).inc()

    # ---- prediction log --------------------------------------------------------------------
    def sync_prediction_log(self, counters: dict) -> None:
        """Move the counters by what ``PredictionLogger.counters()`` gained since last time.
        Lost = dropped (full or closed) + delivery_errors (given up on after the timeout)."""
        current = {"sent": counters.get("sent", 0),
                   "dropped": counters.get("dropped", 0) + counters.get("delivery_errors", 0)}
        with self._log_lock:
            for name, counter in (("sent", self.log_sent), ("dropped", self.log_dropped)):
                delta = current[name] - self._log_seen[name]
                if delta > 0:
                    counter.inc(delta)
                    self._log_seen[name] = current[name]
            self.log_backlog.set(counters.get("buffered", 0))

    # ---- exposition ------------------------------------------------------------------------
    def exposition(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
        from prometheus_client import multiprocess

        if not self.multiprocess:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        self.mark_dead_workers()
        registry = CollectorRegistry()
        registry.register(_OnlyOurs(multiprocess.MultiProcessCollector(None, path=str(self.path))))
        return generate_latest(registry), CONTENT_TYPE_LATEST

    def mark_dead_workers(self) -> list[int]:
        """Drop live gauges of workers that died without a clean shutdown (uvicorn restarts
        a killed worker; its backlog must not be summed forever)."""
        from prometheus_client import multiprocess

        from taxi_mlops.pids import pid_alive

        dead = set()
        for f in glob.glob(os.path.join(str(self.path), "gauge_live*_*.db")):
            m = _LIVE_FILE.search(os.path.basename(f))
            if m and not pid_alive(int(m.group(1))):
                dead.add(int(m.group(1)))
        for pid in dead:
            multiprocess.mark_process_dead(pid, str(self.path))
        return sorted(dead)

    def close(self) -> None:
        """A worker's clean exit: its live gauges leave the sum."""
        if self.multiprocess:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(os.getpid(), str(self.path))
