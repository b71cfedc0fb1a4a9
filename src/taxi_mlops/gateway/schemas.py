"""The gateway's request and response bodies: one raw trip in, one decision out."""

from __future__ import annotations

from datetime import datetime, timezone

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.json_schema import SkipJsonSchema


class Trip(BaseModel):
    """One taxi trip as the Chicago data set describes it, before the tip is known."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "trip_id": "demo-1", "trip_miles": 3.2, "fare": 12.5, "trip_seconds": 780,
        "trip_start_hour": 14, "trip_start_day": 3, "trip_start_month": 5,
        "pickup_community_area": 8, "dropoff_community_area": 32,
        "pickup_latitude": 41.89, "pickup_longitude": -87.63,
        "dropoff_latitude": 41.90, "dropoff_longitude": -87.65,
        "payment_type": "Credit Card", "company": "Flash Cab",
    }]})

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


MAX_BATCH = 1000


class BatchRequest(BaseModel):
    """Up to ``MAX_BATCH`` trips; each is checked on its own, so one bad trip costs only its
    own answer."""

    model_config = ConfigDict(extra="forbid")
    trips: list[dict[str, Any]] = Field(..., min_length=1, max_length=MAX_BATCH,
                                        description="Trips, each with the fields of POST /predict.")


class FieldError(BaseModel):
    field: str
    message: str


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
