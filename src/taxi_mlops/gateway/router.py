"""Which model answers a request: routing policies, defined in one place, decided without HTTP.

A ``RoutingPolicy`` says:
- **split**: weighted A/B/N over variants, each a *target* (a registry alias such as
  ``champion`` or a version number). Assignment is sticky: the value of ``sticky_key`` (a trip
  field, ``trip_id`` by default) is hashed with a salt into [0, 1), so the same key always
  gets the same variant; a request without the key is assigned at random (and says so);
- **shadow**: mirror ``percent`` of requests to a target whose answer is logged, never returned;
- **fallback**: when the primary fails or times out, answer from this target (marked as such);
- **ensemble**: query several targets concurrently and answer their mean probability.

A running experiment (``rollout``) overrides the split with its own two variants, pinned to
the versions it resolved at start, and falls back from the treatment to the control.

``Router.route(trip)`` turns the effective policy and one trip into a ``Plan``; the
``Predictor`` carries it out. Nothing here does I/O: the gateway refreshes the policy from the
rollout store in the background (``Router.update``), so tests drive this module directly.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_TARGET_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
SUM_TOLERANCE = 1e-6


class VariantSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # no `true` read as 1.0
    name: str = Field(..., pattern=r"^[A-Za-z0-9_-]{1,32}$", description="Variant name, in responses and logs.")
    target: str = Field(..., pattern=_TARGET_PATTERN, description="A registry alias or a version number.")
    weight: float = Field(..., gt=0, le=1)


class ShadowSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # no `true` read as 1.0
    target: str = Field(..., pattern=_TARGET_PATTERN)
    percent: float = Field(100.0, gt=0, le=100, description="Share of requests mirrored.")


class EnsembleSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # no `true` read as 1.0
    targets: list[str] = Field(..., min_length=2, max_length=5)
    combine: Literal["mean"] = "mean"

    @field_validator("targets")
    @classmethod
    def _distinct(cls, targets: list[str]) -> list[str]:
        import re

        for t in targets:
            if not re.fullmatch(_TARGET_PATTERN[1:-1], t):
                raise ValueError(f"target {t!r} is not an alias or a version number")
        if len(set(targets)) != len(targets):
            raise ValueError("targets must be distinct")
        return targets


class RoutingPolicy(BaseModel):
    """The gateway's routing, as stored (``PUT /routing``) and shown (``GET /routing``).
    Strict like ``schemas.Trip``: a boolean weight or percent is refused, not read as 1."""

    model_config = ConfigDict(extra="forbid", strict=True)
    split: list[VariantSpec] = Field(
        default_factory=lambda: [VariantSpec(name="champion", target="champion", weight=1.0)],
        min_length=1, max_length=10)
    sticky_key: str = Field("trip_id", description="The trip field hashed for sticky assignment.")
    shadow: ShadowSpec | None = None
    fallback: str | None = Field(None, pattern=_TARGET_PATTERN,
                                 description="Answer from this target when the primary fails.")
    ensemble: EnsembleSpec | None = None

    @model_validator(mode="after")
    def _weights_sum_to_one(self) -> "RoutingPolicy":
        total = sum(v.weight for v in self.split)
        if abs(total - 1.0) > SUM_TOLERANCE:
            raise ValueError(f"split: weights must sum to 1, they sum to {total:g}")
        names = [v.name for v in self.split]
        if len(set(names)) != len(names):
            raise ValueError("split: variant names must be distinct")
        if self.ensemble is not None and len(self.split) > 1:
            raise ValueError("ensemble: an ensemble answers every request; it cannot be combined "
                             "with a split over several variants")
        return self

    def targets(self) -> dict[str, str]:
        """Every target the policy names, by field path (to check they exist)."""
        out = {f"split.{i}.target": v.target for i, v in enumerate(self.split)}
        if self.shadow:
            out["shadow.target"] = self.shadow.target
        if self.fallback:
            out["fallback"] = self.fallback
        for i, t in enumerate(self.ensemble.targets if self.ensemble else []):
            out[f"ensemble.targets.{i}"] = t
        return out


@dataclass(frozen=True)
class ExperimentRoute:
    """The routing half of a running experiment (the rest lives in ``rollout``)."""

    id: str
    split: dict[str, float]  # variant -> weight
    versions: dict[str, str]  # variant -> pinned version
    sticky_key: str = "trip_id"


@dataclass(frozen=True)
class Plan:
    """How one request is answered."""

    variant: str
    target: str
    policy: str  # single | split | ensemble
    experiment_id: str | None = None
    fallback: str | None = None
    shadow: str | None = None
    ensemble: tuple[str, ...] = ()
    sticky: bool = True  # False: the request had no sticky key; assigned at random
    extra: dict = field(default_factory=dict)


def bucket(salt: str, key: str) -> float:
    """A stable point in [0, 1) for ``key``: the same key always lands in the same place."""
    digest = hashlib.blake2b(f"{salt}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0 ** 64


def choose(weights: list[tuple[str, float]], point: float) -> str:
    """The variant whose cumulative weight interval holds ``point``."""
    cumulative = 0.0
    for name, weight in weights:
        cumulative += weight
        if point < cumulative:
            return name
    return weights[-1][0]  # rounding: the last variant takes the remainder


class Router:
    """The effective policy (base + running experiment) applied to one trip at a time."""

    def __init__(self, policy: RoutingPolicy | None = None, experiment: ExperimentRoute | None = None,
                 rng: random.Random | None = None):
        self._rng = rng or random.Random()
        self.update(policy or RoutingPolicy(), experiment)

    def update(self, policy: RoutingPolicy, experiment: ExperimentRoute | None) -> None:
        """Swap the policy in one assignment: a request sees the old or the new one, whole."""
        self._state = (policy, experiment)

    @property
    def policy(self) -> RoutingPolicy:
        return self._state[0]

    @property
    def experiment(self) -> ExperimentRoute | None:
        return self._state[1]

    def _key(self, trip: dict, sticky_key: str) -> str | None:
        value = trip.get(sticky_key)
        return None if value is None or value == "" else str(value)

    def route(self, trip: dict) -> Plan:
        policy, experiment = self._state
        shadow = None
        if policy.shadow is not None:
            key = self._key(trip, policy.sticky_key)
            point = bucket("shadow", key) if key is not None else self._rng.random()
            if point * 100.0 < policy.shadow.percent:
                shadow = policy.shadow.target
        if experiment is not None:
            key = self._key(trip, experiment.sticky_key)
            point = bucket(experiment.id, key) if key is not None else self._rng.random()
            variant = choose(sorted(experiment.split.items()), point)
            control = experiment.versions.get("control")
            target = experiment.versions[variant]
            return Plan(variant=variant, target=target, policy="split", experiment_id=experiment.id,
                        fallback=control if target != control else policy.fallback,
                        shadow=shadow if shadow != target else None, sticky=key is not None)
        if policy.ensemble is not None:
            return Plan(variant="ensemble", target=policy.ensemble.targets[0], policy="ensemble",
                        ensemble=tuple(policy.ensemble.targets), fallback=policy.fallback,
                        shadow=shadow)
        if len(policy.split) == 1:
            only = policy.split[0]
            return Plan(variant=only.name, target=only.target, policy="single",
                        fallback=policy.fallback if policy.fallback != only.target else None,
                        shadow=shadow if shadow != only.target else None)
        key = self._key(trip, policy.sticky_key)
        point = bucket("split", key) if key is not None else self._rng.random()
        name = choose([(v.name, v.weight) for v in policy.split], point)
        target = next(v.target for v in policy.split if v.name == name)
        return Plan(variant=name, target=target, policy="split",
                    fallback=policy.fallback if policy.fallback != target else None,
                    shadow=shadow if shadow != target else None, sticky=key is not None)
