"""The versions one model-server process hosts, kept in step with the MLflow registry.

Served = every version of ``settings.model_name`` that holds an alias, plus
``settings.pinned_versions``. A watcher thread rereads the registry every
``settings.registry_poll_s``; a version to add loads in a worker thread (requests keep being
answered by what is loaded), is warmed with one prediction, and only then does the
alias -> version map that requests read change, in one reference assignment (``self.view``).
So a request is answered by a ready model or by the one the alias held before, never by a
half-loaded one, and a move of ``champion`` fails no request. A version that lost its last
alias (and is not pinned) drains for ``settings.unload_grace_s`` before it is dropped; a load
that fails marks the version failed and is retried with backoff, never taking the server down.

The decisions (what to load, what to drop, which alias answers with which version) are the
pure ``plan`` below, so unit tests drive them without MLflow or TensorFlow.
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Mapping

from taxi_mlops.registry import models
from taxi_mlops.registry.models import VersionInfo
from taxi_mlops.settings import Settings

log = logging.getLogger(__name__)

LOADING, READY, FAILED = "loading", "ready", "failed"
FAMILY_TAG = "model_family"
MAX_BACKOFF_S = 300.0


# ---- the pure part ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Slot:
    """What this process knows about one version it hosts (or tries to)."""

    version: str
    state: str  # loading | ready | failed
    failures: int = 0
    retry_at: float = 0.0  # failed: not before this (monotonic seconds)
    unused_since: float | None = None  # neither aliased nor pinned nor answering since then
    loaded_at: float | None = None  # wall clock (time.time())
    error: str | None = None


@dataclass(frozen=True)
class Plan:
    load: tuple[str, ...]  # start loading these (in this order)
    unload: tuple[str, ...]  # drop these now
    aliases: dict[str, str]  # alias -> version that answers for it (always a ready version)
    slots: dict[str, Slot]  # the slots after the plan (loads as LOADING, unloads gone)


def backoff_s(failures: int, base_s: float, cap_s: float = MAX_BACKOFF_S) -> float:
    """Wait before retrying a failed load: ``base_s`` doubling per failure, capped."""
    return min(cap_s, base_s * 2 ** max(0, failures - 1))


def _version_key(version: str) -> tuple:
    return (0, int(version), "") if version.isdigit() else (1, 0, version)


def plan(slots: Mapping[str, Slot], registry: Mapping[str, VersionInfo], pinned: set[str] | frozenset,
         served: Mapping[str, str], now: float, grace_s: float, first: str | None = None) -> Plan:
    """Given what is hosted (``slots``), the registry snapshot, the pinned versions and the
    alias map being served, decide the next step.

    - An alias answers with the version the registry gives it once that version is ready;
      until then it keeps answering with the version it had (if still ready), else with none.
    - Wanted = registry-aliased, pinned (and registered), or still answering for an alias.
      Wanted and not hosted, or failed and past its backoff: load. The version holding
      ``first`` (the serving alias) loads before the others, then newest first.
    - Hosted and unwanted: dropped after ``grace_s`` (at once if it never became ready).
    """
    target = {alias: info.version for info in registry.values() for alias in info.aliases}
    aliases: dict[str, str] = {}
    for alias, version in target.items():
        if version in slots and slots[version].state == READY:
            aliases[alias] = version
        elif (old := served.get(alias)) is not None and old in slots and slots[old].state == READY:
            aliases[alias] = old
    wanted = set(target.values()) | (set(pinned) & set(registry)) | set(aliases.values())

    out: dict[str, Slot] = {}
    unload: list[str] = []
    for version, slot in slots.items():
        if version in wanted:
            out[version] = replace(slot, unused_since=None) if slot.unused_since is not None else slot
            continue
        since = slot.unused_since if slot.unused_since is not None else now
        if slot.state != READY or now - since >= grace_s:
            unload.append(version)
        else:
            out[version] = replace(slot, unused_since=since)

    def order(version: str) -> tuple:
        first_key = 0 if first is not None and target.get(first) == version else 1
        number = _version_key(version)
        return (first_key, -number[1], number[2])

    load = sorted((v for v in wanted
                   if v not in slots or (slots[v].state == FAILED and now >= slots[v].retry_at)),
                  key=order)
    for version in load:
        previous = slots.get(version)
        out[version] = Slot(version, LOADING, failures=previous.failures if previous else 0)
    return Plan(load=tuple(load), unload=tuple(sorted(unload, key=_version_key)),
                aliases=aliases, slots=out)


def loaded(slot: Slot, wall_now: float) -> Slot:
    return replace(slot, state=READY, failures=0, retry_at=0.0, loaded_at=wall_now, error=None)


def failed(slot: Slot, error: str, now: float, base_backoff_s: float) -> Slot:
    failures = slot.failures + 1
    return replace(slot, state=FAILED, failures=failures, error=error,
                   retry_at=now + backoff_s(failures, base_backoff_s))


# ---- the running part ------------------------------------------------------------------------
@dataclass(frozen=True)
class View:
    """What requests read: replaced as a whole, never mutated (one reference assignment)."""

    aliases: dict[str, str] = field(default_factory=dict)
    models: dict[str, object] = field(default_factory=dict)  # version -> ready TaxiTipModel


class UnknownRef(LookupError):
    """404: the name is neither a registered version nor an alias."""


class NotReady(RuntimeError):
    """503: the version exists but is loading (or its load failed)."""


Fetch = Callable[[], Mapping[str, VersionInfo]]
Load = Callable[[VersionInfo], object]  # returns a ready (warmed) model object


class VersionRepository:
    """Hosts the served versions of one registered model; thread-safe.

    ``fetch`` returns the registry snapshot (``mlflow_fetch``) and ``load`` turns a
    ``VersionInfo`` into a warmed model (``model_server.loader``); tests pass stand-ins.
    """

    def __init__(self, settings: Settings, fetch: Fetch, load: Load, metrics=None,
                 component: str = "model_server"):
        self.settings = settings
        self.name = settings.model_name
        self.serving_alias = settings.serving_alias
        self.pinned = frozenset(settings.pinned_versions)
        self._fetch, self._load, self.metrics = fetch, load, metrics
        self.view = View()
        self._slots: dict[str, Slot] = {}
        self._models: dict[str, object] = {}
        self._registry: Mapping[str, VersionInfo] = {}
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{component}-load")
        self._thread: threading.Thread | None = None
        self._published: list[tuple[object, tuple[str, ...]]] = []

    # ---- registry polling --------------------------------------------------------------------
    def poll(self) -> bool:
        """Read the registry once and act on it; False when the registry did not answer (what
        is loaded keeps serving)."""
        try:
            snapshot = dict(self._fetch())
        except Exception as exc:  # noqa: BLE001 - a registry outage must not stop serving
            log.warning("registry read failed, serving what is loaded: %s", exc)
            return False
        with self._lock:
            self._registry = snapshot
            self._apply()
        return True

    def _apply(self) -> None:
        """Run the plan on the current state and carry it out (lock held)."""
        step = plan(self._slots, self._registry, self.pinned, self.view.aliases, time.monotonic(),
                    self.settings.unload_grace_s, first=self.serving_alias)
        for version in step.unload:
            self._models.pop(version, None)
            log.info("unloaded %s version %s", self.name, version)
        self._slots = step.slots
        for version in step.load:
            info = self._registry[version]
            log.info("loading %s version %s (aliases: %s)", self.name, version,
                     ", ".join(info.aliases) or "pinned")
            self._executor.submit(self._load_one, info)
        self._publish(step.aliases)

    def _load_one(self, info: VersionInfo) -> None:
        try:
            model = self._load(info)
            error = None
        except Exception as exc:  # noqa: BLE001 - a bad version is marked failed, never fatal
            model, error = None, f"{type(exc).__name__}: {exc}"[:500]
            log.exception("loading %s version %s failed", self.name, info.version)
        with self._lock:
            slot = self._slots.get(info.version)
            if slot is None or slot.state != LOADING:
                return  # dropped while it loaded
            if model is None:
                self._slots[info.version] = failed(slot, error, time.monotonic(),
                                                   self.settings.registry_poll_s)
            else:
                self._models[info.version] = model
                self._slots[info.version] = loaded(slot, time.time())
                log.info("%s version %s is ready", self.name, info.version)
            self._apply()

    def _publish(self, aliases: dict[str, str]) -> None:
        """Swap the view requests read (lock held), and what /metrics says is loaded."""
        models_ = {v: self._models[v] for v, s in self._slots.items()
                   if s.state == READY and v in self._models}
        new = View(aliases=dict(aliases), models=models_)
        if new.aliases != self.view.aliases or new.models.keys() != self.view.models.keys():
            self.view = new  # the one assignment a request can observe
            self._publish_metrics()
            log.info("serving %s: %s", self.name,
                     ", ".join(f"{a}={v}" for a, v in sorted(new.aliases.items())) or "nothing")
        self._changed.notify_all()

    def _publish_metrics(self) -> None:
        """``taxi_model_info`` (and eval accuracy) once per (loaded version, alias it answers
        for); a pinned version without an alias is published with ``alias=""``."""
        if self.metrics is None:
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            for gauge, labels in self._published:
                try:
                    gauge.remove(*labels)
                except KeyError:
                    pass
        published = []
        for version in self.view.models:
            held = [a for a, v in self.view.aliases.items() if v == version] or [""]
            for alias in held:
                self.metrics.model_info.labels(self.name, version, alias).set(1)
                published.append((self.metrics.model_info, (self.name, version, alias)))
            info = self._registry.get(version)
            accuracy = _float(info.tags.get("eval_binary_accuracy")) if info else None
            if accuracy is not None:
                self.metrics.eval_accuracy.labels(self.name, version).set(accuracy)
                published.append((self.metrics.eval_accuracy, (self.name, version)))
        self._published = published

    # ---- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Poll the registry in the background until ``stop``."""
        def loop():
            while not self._stop.is_set():
                self._wake.wait(self.settings.registry_poll_s)
                self._wake.clear()
                if not self._stop.is_set():
                    self.poll()

        self._thread = threading.Thread(target=loop, name="registry-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._executor.shutdown(wait=False, cancel_futures=True)

    def wait_settled(self, timeout_s: float) -> bool:
        """Block until no version is loading and every registry alias answers with the version
        the registry gives it (or ``timeout_s`` passes); True when settled."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while not self._settled():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(min(left, 1.0))
        return True

    def _settled(self) -> bool:
        if any(s.state == LOADING for s in self._slots.values()):
            return False
        target = {a: i.version for i in self._registry.values() for a in i.aliases}
        return all(self.view.aliases.get(a) == v or self._slots.get(v, Slot(v, FAILED)).state == FAILED
                   for a, v in target.items())

    def refresh(self, timeout_s: float = 60.0) -> dict:
        """Reread the registry now, wait (bounded) for the loads it starts; the listing."""
        self.poll()
        self.wait_settled(timeout_s)
        return self.listing()

    # ---- lookups -----------------------------------------------------------------------------
    def registry_aliases(self) -> dict[str, str]:
        """alias -> version as the registry said at the last successful read."""
        with self._lock:
            return {a: i.version for i in self._registry.values() for a in i.aliases}

    def state(self, version: str) -> str | None:
        """loading | ready | failed, or None when this process does not host ``version``."""
        with self._lock:
            slot = self._slots.get(version)
        return slot.state if slot else None

    def resolve(self, ref: str) -> tuple[str, object]:
        """(version, ready model) for a version number or an alias; ``UnknownRef`` (404) or
        ``NotReady`` (503)."""
        view = self.view  # one read: the rest of the request sees one consistent map
        version = view.aliases.get(ref, ref)
        model = view.models.get(version)
        if model is not None:
            return version, model
        with self._lock:
            target = {a: i.version for i in self._registry.values() for a in i.aliases}
            version = target.get(ref, ref)
            slot = self._slots.get(version)
        if slot is None:
            if version in self._registry:
                raise UnknownRef(f"version {version} of model {self.name!r} is registered but not "
                                 "served here (it holds no alias and is not pinned)")
            what = f"alias {ref!r}" if not ref.isdigit() else f"version {ref!r}"
            raise UnknownRef(f"model {self.name!r} has no {what}")
        if slot.state == FAILED:
            raise NotReady(f"version {version} of model {self.name!r} failed to load "
                           f"(retrying): {slot.error}")
        raise NotReady(f"version {version} of model {self.name!r} is loading")

    def listing(self) -> dict:
        """The ``GET /v2/models/{name}/versions`` body."""
        with self._lock:
            view, slots, registry = self.view, dict(self._slots), self._registry
        versions = {}
        for version in sorted(slots, key=_version_key):
            slot, info = slots[version], registry.get(version)
            versions[version] = {
                "state": slot.state,
                "aliases": sorted(a for a, v in view.aliases.items() if v == version),
                "registry_aliases": list(info.aliases) if info else [],
                "pinned": version in self.pinned,
                "family": (info.tags.get(FAMILY_TAG) if info else None) or None,
                "loaded_at": _iso(slot.loaded_at),
                "error": slot.error,
            }
        return {"name": self.name, "serving_alias": self.serving_alias,
                "aliases": dict(sorted(view.aliases.items())), "versions": versions}


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _float(value) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def mlflow_fetch(settings: Settings) -> Fetch:
    return lambda: models.versions(settings.mlflow_tracking_uri, settings.model_name)


def info_ref(name: str, info: VersionInfo) -> models.ModelRef:
    """The ``ModelRef`` that ``models.load_pyfunc`` takes, for a version known by number."""
    return models.ModelRef(name=name, version=info.version, alias=",".join(info.aliases),
                           source=info.source, run_id=info.run_id, tags=info.tags)


def cache_dir(settings: Settings, replica: int) -> Path:
    """Per replica: two processes downloading one version into one folder would collide."""
    return settings.state_dir / "model_server" / ("models" if replica == 0 else f"models-{replica}")
