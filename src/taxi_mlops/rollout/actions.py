"""Registry decisions: move aliases, and record every move twice.

Each action changes the MLflow registry first (that is what the model servers follow), then
records it (1) as ``rollout.*`` tags on the model versions involved, readable in the MLflow UI
next to the model, and (2) as a ``ModelEventV1`` on ``taxi.model.events``, the ordered audit
trail other systems consume. Kafka being down must never undo or block a registry decision that
already happened: the event is then logged as a warning and returned with ``delivered=False``.

Aliases: ``champion`` is served; ``challenger`` is the candidate; ``previous`` is the champion
before the last promotion (what ``rollback_champion`` restores). MLflow has no transactions, so
the serving-critical move (``champion``) is always done first; the bookkeeping after it is
idempotent and can be redone.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Literal

from mlflow.exceptions import MlflowException

from taxi_mlops.registry import models
from taxi_mlops.registry.models import CHALLENGER, CHAMPION, RegistryUnavailable
from taxi_mlops.settings import Settings
from taxi_mlops.streaming import topics
from taxi_mlops.streaming.events import EventProducer, ModelEventV1

if TYPE_CHECKING:
    from taxi_mlops.rollout.experiment import Experiment

log = logging.getLogger(__name__)

PREVIOUS = "previous"
TAG_MAX = 5000  # MLflow's limit on a tag value
EVENT_TIMEOUT_S = 5.0
_MISSING = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND")


class RolloutError(RuntimeError):
    """Base of the errors a rollout action raises on purpose (the message says what to do)."""


class UnknownVersion(RolloutError, LookupError):
    """The version or alias does not exist (404)."""


class ActionRefused(RolloutError):
    """The action makes no sense in the registry's current state (409)."""


class NothingToDo(ActionRefused):
    """The registry is already in the requested state (409)."""


class NoPreviousVersion(ActionRefused):
    """``rollback_champion`` without a ``previous`` alias (409)."""


@dataclass(frozen=True)
class ActionResult:
    """What an action did: the event that records it, and whether Kafka acknowledged it."""

    event: ModelEventV1
    delivered: bool
    error: str | None = None

    @property
    def version(self) -> str | None:
        return self.event.version

    @property
    def previous_version(self) -> str | None:
        return self.event.previous_version

    def to_dict(self) -> dict:
        return {"event": self.event.model_dump(mode="json"), "delivered": self.delivered,
                "error": self.error}

    def model_dump(self, mode: str = "json") -> dict:
        """JSON-ready, like a pydantic model (what API layers call)."""
        return self.to_dict()


# ---- registry helpers ------------------------------------------------------------------------
def _client(settings: Settings):
    return models.client(settings.mlflow_tracking_uri)


def _unavailable(settings: Settings, exc: MlflowException) -> RegistryUnavailable:
    return RegistryUnavailable(f"MLflow at {settings.mlflow_tracking_uri} did not answer: "
                               f"{exc.message[:200]}. Is the stack up? `taxi-mlops up`")


def _version(settings: Settings, name: str, version: str):
    try:
        return _client(settings).get_model_version(name, str(version))
    except MlflowException as exc:
        if exc.error_code in _MISSING:
            raise UnknownVersion(f"version '{version}' of model '{name}' is not registered; "
                                 "list them with `taxi-mlops models` or the MLflow UI") from None
        raise _unavailable(settings, exc) from exc


def _alias_version(settings: Settings, name: str, alias: str) -> str | None:
    ref = models.by_alias(settings.mlflow_tracking_uri, name, alias)
    return ref.version if ref else None


def resolve(settings: Settings, target: str, model_name: str | None = None) -> str:
    """The version number ``target`` names: a version number (checked to exist) or an alias
    (``champion``, ``challenger``, ...). ``UnknownVersion`` otherwise."""
    name = model_name or settings.model_name
    target = str(target).strip()
    if target.isdigit():
        return str(_version(settings, name, target).version)
    version = _alias_version(settings, name, target)
    if version is None:
        raise UnknownVersion(f"alias '{target}' of model '{name}' is not set (and it is not a "
                             "version number); register a version or set the alias first")
    return version


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _tag(settings: Settings, name: str, version: str, decision: str, actor: str, reason: str,
         experiment_id: str | None, at: datetime, **extra: str) -> None:
    client = _client(settings)
    tags = {"rollout.decision": decision, "rollout.decided_at": at.isoformat(),
            "rollout.actor": actor, "rollout.reason": reason,
            "rollout.experiment": experiment_id or "", **extra}
    try:
        for key, value in tags.items():
            client.set_model_version_tag(name, str(version), key, str(value)[:TAG_MAX])
    except MlflowException as exc:
        raise _unavailable(settings, exc) from exc


def _set_alias(settings: Settings, name: str, alias: str, version: str) -> None:
    try:
        _client(settings).set_registered_model_alias(name, alias, str(version))
    except MlflowException as exc:
        raise _unavailable(settings, exc) from exc


def _delete_alias(settings: Settings, name: str, alias: str) -> None:
    try:
        _client(settings).delete_registered_model_alias(name, alias)
    except MlflowException as exc:
        if exc.error_code not in _MISSING:  # already gone: the goal is reached
            raise _unavailable(settings, exc) from exc


# ---- the audit event -------------------------------------------------------------------------
def emit(settings: Settings, event: ModelEventV1, timeout_s: float = EVENT_TIMEOUT_S) -> ActionResult:
    """Send ``event`` to ``taxi.model.events`` and wait up to ``timeout_s`` for the broker.
    Never raises: the registry change it records has already happened."""
    try:
        producer = EventProducer(settings, "rollout",
                                 **{"message.timeout.ms": max(1000, int(timeout_s * 1000))})
        sent = producer.send(topics.MODEL_EVENTS, event, key=event.model_name)
        remaining = producer.flush(timeout_s)
        if not sent:
            error = "the event failed validation and was dead-lettered"
        elif remaining:
            error = f"not acknowledged within {timeout_s:g}s"
        elif producer.counts["failed"]:
            error = "; ".join(producer.errors[:2]) or "delivery failed"
        else:
            return ActionResult(event, True)
    except Exception as exc:  # noqa: BLE001 - a broken audit sink must not undo the decision
        error = f"{type(exc).__name__}: {exc}"
    log.warning("rollout event %s (%s %s v%s) was NOT delivered to %s: %s; the registry change "
                "stands and is recorded in MLflow tags. Check the broker (`taxi-mlops status`).",
                event.event_id, event.action, event.model_name, event.version,
                topics.MODEL_EVENTS, error)
    return ActionResult(event, False, error)


def _event(settings: Settings, action: str, name: str, actor: str, reason: str, *,
           version: str | None = None, previous_version: str | None = None, alias: str | None = None,
           experiment_id: str | None = None, details: dict | None = None,
           at: datetime | None = None) -> ModelEventV1:
    return ModelEventV1(event_id=uuid.uuid4().hex, action=action, model_name=name,
                        version=version, previous_version=previous_version, alias=alias,
                        experiment_id=experiment_id, actor=actor, reason=reason,
                        details=details or {}, timestamp=at or _now())


# ---- actions ---------------------------------------------------------------------------------
def promote(settings: Settings, version: str, *, actor: str, reason: str = "",
            experiment_id: str | None = None, model_name: str | None = None,
            event_timeout_s: float = EVENT_TIMEOUT_S) -> ActionResult:
    """Make ``version`` the champion. The old champion keeps alias ``previous`` (what
    ``rollback_champion`` restores); ``challenger`` is removed if it pointed at ``version``."""
    name = model_name or settings.model_name
    version = str(_version(settings, name, version).version)
    old = _alias_version(settings, name, CHAMPION)
    if old == version:
        raise NothingToDo(f"version {version} of model '{name}' is already the champion")
    challenger = _alias_version(settings, name, CHALLENGER)
    at = _now()
    _set_alias(settings, name, CHAMPION, version)  # the serving move first
    if old is not None:
        _set_alias(settings, name, PREVIOUS, old)
    if challenger == version:
        _delete_alias(settings, name, CHALLENGER)
    _tag(settings, name, version, "promoted", actor, reason, experiment_id, at,
         **{"rollout.replaced": old or ""})
    if old is not None:
        _tag(settings, name, old, "demoted", actor, reason, experiment_id, at,
             **{"rollout.replaced_by": version})
    event = _event(settings, "promote", name, actor, reason, version=version, previous_version=old,
                   alias=CHAMPION, experiment_id=experiment_id, at=at,
                   details={"challenger_removed": challenger == version})
    return emit(settings, event, event_timeout_s)


def retire(settings: Settings, version: str, *, actor: str, reason: str = "",
           experiment_id: str | None = None, model_name: str | None = None,
           event_timeout_s: float = EVENT_TIMEOUT_S) -> ActionResult:
    """Take ``version`` out of rollout: delete every alias on it (challenger, previous, ...).
    The champion is refused: promote another version first. Tagged ``rolled_back`` with event
    action ``rollback`` when an experiment decided it (``experiment_id``), else ``retired`` /
    ``retire``."""
    name = model_name or settings.model_name
    mv = _version(settings, name, version)
    version = str(mv.version)
    aliases = sorted(mv.aliases or [])
    if CHAMPION in aliases:
        raise ActionRefused(f"version {version} of model '{name}' is the champion and cannot be "
                            "retired; promote another version (or `rollback_champion`) first")
    at = _now()
    for alias in aliases:
        _delete_alias(settings, name, alias)
    decision, action = ("rolled_back", "rollback") if experiment_id else ("retired", "retire")
    _tag(settings, name, version, decision, actor, reason, experiment_id, at,
         **{"rollout.removed_aliases": ",".join(aliases)})
    event = _event(settings, action, name, actor, reason, version=version,
                   alias=CHALLENGER if CHALLENGER in aliases else None, experiment_id=experiment_id,
                   at=at, details={"removed_aliases": aliases})
    return emit(settings, event, event_timeout_s)


def rollback_champion(settings: Settings, *, actor: str, reason: str = "",
                      experiment_id: str | None = None, model_name: str | None = None,
                      event_timeout_s: float = EVENT_TIMEOUT_S) -> ActionResult:
    """Manual undo of the last promotion: ``champion`` <- the ``previous`` version.

    The ``previous`` alias is then *removed*, not pointed at the demoted version: a second
    rollback would otherwise flip back to the model just judged bad. To go forward again,
    promote that version explicitly."""
    name = model_name or settings.model_name
    target = _alias_version(settings, name, PREVIOUS)
    if target is None:
        raise NoPreviousVersion(f"model '{name}' has no '{PREVIOUS}' version to roll back to (no "
                                "promotion since, or already rolled back); promote a version instead")
    demoted = _alias_version(settings, name, CHAMPION)
    if demoted == target:
        _delete_alias(settings, name, PREVIOUS)
        raise NothingToDo(f"version {target} of model '{name}' is already the champion")
    at = _now()
    _set_alias(settings, name, CHAMPION, target)
    _delete_alias(settings, name, PREVIOUS)
    if _alias_version(settings, name, CHALLENGER) == target:
        _delete_alias(settings, name, CHALLENGER)
    if demoted is not None:
        _tag(settings, name, demoted, "rolled_back", actor, reason, experiment_id, at,
             **{"rollout.replaced_by": target})
    _tag(settings, name, target, "restored", actor, reason, experiment_id, at,
         **{"rollout.replaced": demoted or ""})
    event = _event(settings, "rollback", name, actor, reason, version=target,
                   previous_version=demoted, alias=CHAMPION, experiment_id=experiment_id, at=at)
    return emit(settings, event, event_timeout_s)


def record_experiment_event(settings: Settings, experiment: "Experiment",
                            action: Literal["experiment_started", "experiment_stopped"], *,
                            actor: str = "cli", reason: str = "",
                            event_timeout_s: float = EVENT_TIMEOUT_S) -> ActionResult:
    """An experiment started or stopped, on the audit topic (no registry change)."""
    if action not in ("experiment_started", "experiment_stopped"):
        raise ValueError(f"action must be experiment_started or experiment_stopped, got {action!r}")
    event = _event(settings, action, experiment.model_name, actor, reason,
                   version=experiment.treatment_version, previous_version=experiment.control_version,
                   experiment_id=experiment.id,
                   details={"status": experiment.status, "spec": experiment.spec.model_dump(mode="json"),
                            "control_version": experiment.control_version,
                            "treatment_version": experiment.treatment_version,
                            "decision": experiment.decision})
    return emit(settings, event, event_timeout_s)


# ---- experiment lifecycle (the CLI and the gateway share these) --------------------------------
class UnknownExperiment(RolloutError, LookupError):
    """No experiment with that id (404)."""


def start_experiment(settings: Settings, store, spec, *, actor: str = "cli", reason: str = "",
                     event_timeout_s: float = EVENT_TIMEOUT_S):
    """Resolve the spec's arms to versions *now* (an alias moved later does not change them),
    store the experiment as running and record ``experiment_started``.
    Returns ``(Experiment, ActionResult)``. Raises ``UnknownVersion``, ``ActionRefused`` (both
    arms are the same version) or ``store.ExperimentConflict`` (one is running already)."""
    from taxi_mlops.rollout.experiment import Experiment

    resolved = {}
    for arm in ("control", "treatment"):
        try:
            resolved[arm] = resolve(settings, getattr(spec, arm), spec.model_name)
        except UnknownVersion as exc:
            exc.field = arm  # which arm, for a 4xx that names the field
            raise
    control, treatment = resolved["control"], resolved["treatment"]
    if control == treatment:
        raise ActionRefused(f"control '{spec.control}' and treatment '{spec.treatment}' are both "
                            f"version {control} of model '{spec.model_name}'; set the challenger "
                            "alias to the candidate version first")
    experiment = store.create(Experiment(spec=spec, control_version=control, treatment_version=treatment))
    return experiment, record_experiment_event(settings, experiment, "experiment_started", actor=actor,
                                               reason=reason, event_timeout_s=event_timeout_s)


def stop_experiment(settings: Settings, store, experiment_id: str, *, actor: str = "cli",
                    reason: str = "", event_timeout_s: float = EVENT_TIMEOUT_S):
    """Stop a running experiment by hand (no registry change; traffic returns to the routing
    policy). Returns ``(Experiment, ActionResult)``; ``UnknownExperiment`` or ``ActionRefused``
    when it is not running (it was decided or stopped already)."""
    experiment = store.get(experiment_id)
    if experiment is None:
        raise UnknownExperiment(f"no experiment '{experiment_id}'; list them with GET /experiments")
    if not store.update_status(experiment_id, "stopped",
                               {"status": "stopped", "actor": actor, "reason": reason or "stopped by hand"}):
        current = store.get(experiment_id)
        raise ActionRefused(f"experiment {experiment_id} is {current.status if current else 'gone'}, "
                            "not running: nothing to stop")
    experiment = store.get(experiment_id)
    return experiment, record_experiment_event(settings, experiment, "experiment_stopped", actor=actor,
                                               reason=reason, event_timeout_s=event_timeout_s)
