"""The gateway's control plane without HTTP: routing policy, experiments, promote, rollback.

State lives in the rollout store (SQLite in the state directory), so it survives restarts
and every gateway worker sees the same policy: each worker rereads it when the store's
change marker moves (``refresh``, every ``Settings.routing_refresh_s``) and swaps its
``Router`` in one assignment. Registry changes (promote, rollback, retire) go through
``rollout.actions``, which records each in MLflow tags and on ``taxi.model.events``.

Errors are typed for the error mapping (``errors.py``): ``InvalidField`` (422 naming the
field), ``NotFound`` (404), ``Conflict`` (409).
"""

from __future__ import annotations

import logging
from contextlib import contextmanager

from taxi_mlops.gateway.errors import DependencyDown
from taxi_mlops.gateway.router import ExperimentRoute, Router, RoutingPolicy
from taxi_mlops.rollout import actions
from taxi_mlops.rollout.experiment import Experiment, ExperimentSpec
from taxi_mlops.rollout.store import ExperimentConflict, RolloutStore
from taxi_mlops.rollout.tracker import experiment_status
from taxi_mlops.settings import Settings

log = logging.getLogger("taxi_mlops.gateway")


class InvalidField(ValueError):
    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field, self.message = field, message


class NotFound(LookupError):
    pass


class Conflict(RuntimeError):
    pass


def experiment_route(experiment: Experiment) -> ExperimentRoute:
    spec = experiment.spec
    return ExperimentRoute(id=experiment.id, split=dict(spec.split), sticky_key=spec.sticky_key,
                           versions={"control": experiment.control_version,
                                     "treatment": experiment.treatment_version})


class Control:
    """One per gateway worker; all methods are blocking (the routes run them in a thread)."""

    def __init__(self, settings: Settings, router: Router, store: RolloutStore | None = None):
        self.settings = settings
        self.router = router
        self.store = store or RolloutStore(settings.rollout_location)
        self._marker = None
        self.default_policy = router.policy

    # ---- the router's view ------------------------------------------------------------------
    def refresh(self, force: bool = False) -> bool:
        """Reload policy and running experiment if the store changed; True if reloaded."""
        marker = self.store.changed_marker()
        if marker == self._marker and not force:
            return False
        stored = self.store.get_policy()
        policy = RoutingPolicy.model_validate(stored) if stored else self.default_policy
        running = self.store.running(self.settings.model_name)
        self.router.update(policy, experiment_route(running) if running else None)
        self._marker = marker
        return True

    # ---- routing policy ---------------------------------------------------------------------
    def routing(self) -> dict:
        experiment = self.router.experiment
        return {"policy": self.router.policy.model_dump(),
                "experiment": None if experiment is None else {
                    "id": experiment.id, "split": experiment.split, "versions": experiment.versions,
                    "sticky_key": experiment.sticky_key},
                "effective": "experiment" if experiment else "policy"}

    def set_routing(self, policy: RoutingPolicy) -> dict:
        self._check_sticky_key("sticky_key", policy.sticky_key)
        for field, target in policy.targets().items():
            self._resolve(field, target)
        self.store.set_policy(policy.model_dump())
        self.refresh(force=True)
        return self.routing()

    # ---- experiments ------------------------------------------------------------------------
    def start_experiment(self, spec: ExperimentSpec, actor: str) -> dict:
        """``actions.start_experiment`` (arms resolved to versions now, stored, audited), its
        refusals turned into 4xx naming the field."""
        if spec.model_name != self.settings.model_name:
            raise InvalidField("model_name", f"model {spec.model_name!r} is not served here; "
                                             f"this gateway serves {self.settings.model_name!r}")
        self._check_sticky_key("sticky_key", spec.sticky_key)
        try:
            experiment, _ = actions.start_experiment(self.settings, self.store, spec, actor=actor)
        except actions.UnknownVersion as exc:
            raise InvalidField(getattr(exc, "field", "control"), str(exc)) from exc
        except actions.ActionRefused as exc:  # both arms are the same version
            raise InvalidField("treatment", str(exc)) from exc
        except ExperimentConflict as exc:
            raise Conflict(str(exc)) from exc
        except actions.RegistryUnavailable as exc:
            raise DependencyDown("model_registry", str(exc)) from exc
        self.refresh(force=True)
        return self.experiment(experiment.id)

    def experiment(self, experiment_id: str) -> dict:
        experiment = self.store.get(experiment_id)
        if experiment is None:
            raise NotFound(f"no experiment {experiment_id!r}: `taxi-mlops experiment status` lists them")
        return experiment_status(self.store, experiment)

    def experiments(self) -> list[dict]:
        return [experiment_status(self.store, e) for e in self.store.list(self.settings.model_name)]

    def stop_experiment(self, experiment_id: str, actor: str) -> dict:
        try:
            actions.stop_experiment(self.settings, self.store, experiment_id, actor=actor,
                                    reason=f"stopped by {actor}")
        except actions.UnknownExperiment as exc:
            raise NotFound(str(exc)) from exc
        except actions.ActionRefused as exc:
            raise Conflict(str(exc)) from exc
        self.refresh(force=True)
        return self.experiment(experiment_id)

    # ---- registry decisions -----------------------------------------------------------------
    def promote(self, version: str, actor: str, reason: str) -> dict:
        resolved = self._resolve("version", version)
        with _registry_errors():
            return _jsonable(actions.promote(self.settings, resolved, actor=actor, reason=reason))

    def rollback(self, actor: str, reason: str) -> dict:
        with _registry_errors():
            return _jsonable(actions.rollback_champion(self.settings, actor=actor, reason=reason))

    # ---- checks -------------------------------------------------------------------------------
    def _resolve(self, field: str, target: str) -> str:
        try:
            return actions.resolve(self.settings, target)
        except actions.UnknownVersion as exc:
            raise InvalidField(field, str(exc)) from exc
        except actions.RegistryUnavailable as exc:
            raise DependencyDown("model_registry", str(exc)) from exc

    @staticmethod
    def _check_sticky_key(field: str, key: str) -> None:
        from taxi_mlops.gateway.schemas import Trip

        if key not in Trip.model_fields:
            raise InvalidField(field, f"{key!r} is not a trip field; use one of trip_id, company, "
                                      "pickup_community_area, ...")


@contextmanager
def _registry_errors():
    """A refused action (nothing to do, no previous version, the champion) is 409; an MLflow
    that does not answer is 503 naming the registry."""
    try:
        yield
    except (actions.ActionRefused, actions.UnknownVersion) as exc:
        raise Conflict(str(exc)) from exc
    except actions.RegistryUnavailable as exc:
        raise DependencyDown("model_registry", str(exc)) from exc


def _jsonable(value):
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if hasattr(value, "__dataclass_fields__"):
        import dataclasses

        return dataclasses.asdict(value)
    return value
