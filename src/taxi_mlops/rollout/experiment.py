"""What an experiment is: the spec a person writes, and the record the store keeps.

The spec names its targets as aliases or versions; the caller resolves them to version numbers
when the experiment starts (``Experiment.control_version`` / ``treatment_version``), so moving an
alias mid-experiment never mixes two models' labels into one arm.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Any, Iterable, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

VARIANTS = ("control", "treatment")
Status = Literal["running", "promoted", "rolled_back", "stopped", "inconclusive"]
TERMINAL = ("promoted", "rolled_back", "stopped", "inconclusive")


def trip_fields() -> list[str]:
    """The fields a sticky key may name: the gateway's request body (not ``tips``, the label
    it declares only to refuse)."""
    from taxi_mlops.gateway.schemas import Trip

    return [name for name in Trip.model_fields if name != "tips"]


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


class ExperimentSpec(BaseModel):
    """An A/B test of ``treatment`` against ``control`` on live traffic.

    ``sticky_key`` is validated against ``trip_fields()``, or against the list passed as
    validation context ``{"trip_fields": [...]}`` (``ExperimentSpec.model_validate(d,
    context=...)``), so a caller with another request schema can reuse the spec.
    """

    model_config = ConfigDict(extra="forbid")

    model_name: str = Field(min_length=1, description="Registered model (default: settings.model_name).")
    control: str = Field("champion", min_length=1, description="Alias or version number of the control arm.")
    treatment: str = Field("challenger", min_length=1, description="Alias or version number of the treatment arm.")
    split: dict[str, float] = Field(default_factory=lambda: {"control": 0.5, "treatment": 0.5},
                                    description="Share of traffic per arm; keys control and treatment.")
    sticky_key: str = Field("trip_id", description="Trip field whose hash picks the arm (same key, same arm).")
    metric: Literal["accuracy", "log_loss"] = "accuracy"
    alpha: float = Field(0.05, gt=0, le=0.5, description="Type I error of the anytime-valid test.")
    min_labels: int = Field(30, ge=10, description="Labels per arm before any decision.")
    max_labels: int | None = Field(None, ge=20, description="Total labels after which the experiment "
                                   "stops as inconclusive.")
    auto_decide: bool = Field(True, description="Act on the test's decision (promote / retire) by itself.")

    @classmethod
    def from_request(cls, body: dict, default_model_name: str,
                     trip_field_names: Iterable[str] | None = None) -> "ExperimentSpec":
        """A request body as a spec, ``model_name`` defaulting to ``default_model_name``
        (``settings.model_name``). Raises ``pydantic.ValidationError`` (422 material)."""
        data = {"model_name": default_model_name, **{k: v for k, v in body.items() if v is not None}}
        context = {"trip_fields": list(trip_field_names)} if trip_field_names is not None else None
        return cls.model_validate(data, context=context)

    @field_validator("split")
    @classmethod
    def _split(cls, value: dict[str, float]) -> dict[str, float]:
        if set(value) != set(VARIANTS):
            raise ValueError(f"split keys must be exactly 'control' and 'treatment', got {sorted(value)}")
        for key, share in value.items():
            if not 0 < share < 1:
                raise ValueError(f"split['{key}']={share} must be strictly between 0 and 1")
        total = sum(value.values())
        if abs(total - 1) > 1e-6:
            raise ValueError(f"split shares must sum to 1, got {total:g}")
        return {k: float(value[k]) for k in VARIANTS}

    @field_validator("sticky_key")
    @classmethod
    def _sticky_key(cls, value: str, info: ValidationInfo) -> str:
        allowed: Iterable[str] | None = (info.context or {}).get("trip_fields") if info.context else None
        allowed = list(allowed) if allowed is not None else trip_fields()
        if value not in allowed:
            raise ValueError(f"sticky_key '{value}' is not a Trip field; use one of {sorted(allowed)}")
        return value

    @field_validator("max_labels")
    @classmethod
    def _max_labels(cls, value: int | None, info: ValidationInfo) -> int | None:
        min_labels = info.data.get("min_labels")
        if value is not None and min_labels is not None and value < 2 * min_labels:
            raise ValueError(f"max_labels={value} leaves no room for a decision: it must be at least "
                             f"2 * min_labels = {2 * min_labels}")
        return value


class Experiment(BaseModel):
    """A stored experiment: its spec, the versions its arms were resolved to, and its outcome."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(default_factory=lambda: uuid.uuid4().hex[:12])
    spec: ExperimentSpec
    status: Status = "running"
    control_version: str
    treatment_version: str
    created_at: datetime = Field(default_factory=_utcnow)
    decided_at: datetime | None = None
    decision: dict[str, Any] | None = None

    @property
    def model_name(self) -> str:
        return self.spec.model_name

    def version_of(self, variant: str) -> str:
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        return self.control_version if variant == "control" else self.treatment_version
