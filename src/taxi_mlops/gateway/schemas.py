"""The gateway's request and response bodies: one raw trip in, one decision out."""

from __future__ import annotations

from datetime import datetime, timezone

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.json_schema import SkipJsonSchema


TIME_PARTS = ("trip_start_hour", "trip_start_day", "trip_start_month")
EXAMPLE_TRIP = {
    "trip_id": "demo-1", "trip_miles": 3.2, "fare": 12.5, "trip_seconds": 780,
    "trip_start_hour": 14, "trip_start_day": 3, "trip_start_month": 5,
    "pickup_community_area": 8, "dropoff_community_area": 32,
    "pickup_latitude": 41.89, "pickup_longitude": -87.63,
    "dropoff_latitude": 41.90, "dropoff_longitude": -87.65,
    "payment_type": "Credit Card", "company": "Flash Cab",
}


def _trip_json_schema(schema: dict) -> None:
    """The time parts are required unless ``trip_start_timestamp`` (an integer) is given, from
    which ``Trip._raw_row`` derives them. Pydantic can only say "required"; the schema says
    "one or the other", so a client (and the fuzzer) reads what the gateway really accepts."""
    schema["required"] = [name for name in schema.get("required", []) if name not in TIME_PARTS]
    schema["anyOf"] = [{"required": list(TIME_PARTS)},
                       {"required": ["trip_start_timestamp"],
                        "properties": {"trip_start_timestamp": {"type": "integer"}}}]
    schema["examples"] = [EXAMPLE_TRIP]


class Trip(BaseModel):
    """One taxi trip as the Chicago data set describes it, before the tip is known.

    Strict: a field is refused unless its JSON type is the documented one (no ``true`` read as
    hour 1, no ``"12"`` read as 12). Coercion would accept what the schema says is invalid and
    score a trip the client did not mean. JSON Schema's own rules still hold: an integer is a
    number, and ``7.0`` is an integer (``_integral_floats``)."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra=_trip_json_schema)

    trip_id: str | None = Field(None, max_length=128, description="Caller's id, echoed in logs.")
    trip_miles: float = Field(..., ge=0, le=500, description="Distance in miles.")
    fare: float = Field(..., ge=0, le=1000, description="Fare in USD (without tip).")
    trip_seconds: int | None = Field(0, ge=0, le=86_400, description="Duration in seconds.")
    trip_start_timestamp: int | None = Field(
        None, ge=0, le=4_102_444_800,
        description="Trip start, Unix seconds (as the data set publishes it). When given, the "
                    "hour, day and month may be left out: they are derived from it (UTC).")
    trip_start_hour: int = Field(..., ge=0, le=23, description="Hour of day (0-23).")
    trip_start_day: int = Field(..., ge=1, le=7, description="Day of week, 1 = Sunday.")
    trip_start_month: int = Field(..., ge=1, le=12, description="Month (1-12).")
    pickup_census_tract: int | None = Field(
        None, ge=0, description="Census tract of the pickup (published, not a model input).")
    dropoff_census_tract: int | None = Field(
        None, ge=0, description="Census tract of the dropoff (published, not a model input).")
    pickup_community_area: int | None = Field(
        None, ge=1, le=77, description="Chicago community area of the pickup (1-77); null if unknown.")
    dropoff_community_area: int | None = Field(None, ge=1, le=77, description="Dropoff area (1-77).")
    pickup_latitude: float | None = Field(None, ge=41.6, le=42.1)
    pickup_longitude: float | None = Field(None, ge=-88.0, le=-87.5)
    dropoff_latitude: float | None = Field(None, ge=41.6, le=42.1)
    dropoff_longitude: float | None = Field(None, ge=-88.0, le=-87.5)
    payment_type: str = Field(..., min_length=1, max_length=64,
                              description="Cash, Credit Card, ... (unseen values are allowed).")
    company: str | None = Field(None, max_length=128,
                                description="Taxi company; unseen or null companies are allowed.")

    # The data set's label column: declared only to refuse it by name (422 on "tips"), and
    # left out of the OpenAPI schema.
    tips: SkipJsonSchema[Any] = Field(None, exclude=True)

    @field_validator("*", mode="before")
    @classmethod
    def _integral_floats(cls, value):
        """``7.0`` as ``7``: JSON Schema counts it as an integer (clients that serialise every
        number as a float send it), and strict mode would refuse it for an integer field."""
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return value

    @field_validator("tips", mode="before")
    @classmethod
    def _no_label(cls, value):
        raise ValueError("'tips' is the label the model predicts: it is not known when a "
                         "prediction is asked for; remove it from the request")

    @model_validator(mode="before")
    @classmethod
    def _raw_row(cls, data):
        """A raw row of the data set: refuse its label by name, derive time parts from the
        timestamp. Any other unknown field is still refused by ``extra="forbid"``."""
        if not isinstance(data, dict):
            return data
        ts = data.get("trip_start_timestamp")
        if isinstance(ts, (int, float)) and not isinstance(ts, bool) and 0 <= ts <= 4_102_444_800:
            start = datetime.fromtimestamp(ts, timezone.utc)
            data = dict(data)
            data.setdefault("trip_start_hour", start.hour)
            data.setdefault("trip_start_day", start.isoweekday() % 7 + 1)  # 1 = Sunday
            data.setdefault("trip_start_month", start.month)
        return data




class ModelInfo(BaseModel):
    name: str
    version: str | None = Field(..., description="The version that answered ('3+5': an ensemble).")
    alias: str | None = Field(..., description="The alias it was reached by (None: a pinned version).")
    variant: str | None = Field(None, description="The routing variant that answered.")


class RoutingInfo(BaseModel):
    """How the request was routed (gateway/router.py)."""

    policy: str = Field(..., description="single | split | ensemble")
    variant: str
    target: str = Field(..., description="The alias or version asked (the fallback's, if it answered).")
    experiment_id: str | None = None
    fallback: bool = Field(False, description="The primary failed; the fallback answered.")
    sticky: bool = Field(True, description="False: no sticky key in the request; assigned at random.")
    ensemble: list[str] = Field(default_factory=list)
    shadowed: bool = Field(False, description="A mirror of this request goes to the shadow "
                                              "model after the response (never returned).")


class Prediction(BaseModel):
    request_id: str
    trip_id: str | None
    tip_probability: float = Field(..., ge=0, le=1)
    big_tipper: bool = Field(..., description="tip_probability >= 0.5: a tip above 20% of the fare.")
    model: ModelInfo
    routing: RoutingInfo
    features_used: dict[str, float | int | str] = Field(
        ..., description="Model inputs (raw trip + batch store features) and the realtime area "
                         "features from the stream processor (area_trips_15m, ...).")
    defaulted_features: list[str] = Field(
        default_factory=list, description="Store features absent for this entity (unseen area or "
                                          "company), sent to the model as their defaults.")
    latency_ms: float
    degraded: list[str] = Field(
        default_factory=list, description="Dependencies that did not answer for this prediction "
                                          "(\"feature_store\": every feature is the last prior row read, "
                                          "as for an unseen entity). Empty for a normal answer.")


MAX_BATCH = 1000


class BatchRequest(BaseModel):
    """Up to ``MAX_BATCH`` trips; each is checked on its own, so one bad trip costs only its
    own answer."""

    model_config = ConfigDict(extra="forbid")
    trips: list[dict[str, Any]] = Field(..., min_length=1, max_length=MAX_BATCH,
                                        description="Trips, each with the fields of POST /predict.")


class FieldError(BaseModel):
    field: str = Field(..., description="Dotted path of the bad field ('body' for the body as a whole).")
    message: str


class FieldErrors(BaseModel):
    """Every 4xx about the request's content (422 invalid field or body, 413 body too large)."""

    detail: list[FieldError]


class ErrorMessage(BaseModel):
    """401/403 (admin token), 404 (unknown resource or path), 409 (conflicting action)."""

    detail: str


class DependencyError(BaseModel):
    """503: the dependency that failed or timed out, and why."""

    detail: str
    dependency: str = Field(..., description="feature_store | model_server | model_registry | rollout_store")


class HealthReport(BaseModel):
    """GET /health, 200 (every dependency answers) or 503 (one does not)."""

    status: Literal["ok", "degraded"]
    dependencies: dict[str, dict[str, Any]] = Field(..., description="Per dependency: ok, and where or why not.")
    prediction_log: dict[str, Any] = Field(..., description="The prediction log's counters (best effort).")


class Liveness(BaseModel):
    """GET /health/live: this process answers (no dependency is asked). The supervisor tells
    the gateway processes sharing the port apart by their pids."""

    status: Literal["alive"]
    pid: int = Field(..., description="The answering process.")
    parent_pid: int = Field(..., description="Its parent (the instance's uvicorn master, with several workers).")


class BatchResult(BaseModel):
    index: int = Field(..., description="Position of the trip in the request.")
    prediction: Prediction | None = None
    errors: list[FieldError] | None = Field(None, description="Why this trip was not scored.")


class BatchResponse(BaseModel):
    request_id: str
    answered: int
    rejected: int
    results: list[BatchResult] = Field(..., description="One entry per trip, in request order.")
    latency_ms: float
