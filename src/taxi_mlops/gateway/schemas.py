"""The gateway's request and response bodies: one raw trip in, one decision out."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


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
    trip_seconds: int = Field(0, ge=0, le=86_400, description="Duration in seconds.")
    trip_start_hour: int = Field(..., ge=0, le=23, description="Hour of day (0-23).")
    trip_start_day: int = Field(..., ge=1, le=7, description="Day of week, 1 = Sunday.")
    trip_start_month: int = Field(..., ge=1, le=12, description="Month (1-12).")
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


class ModelInfo(BaseModel):
    name: str
    version: str | None
    alias: str


class Prediction(BaseModel):
    request_id: str
    trip_id: str | None
    tip_probability: float = Field(..., ge=0, le=1)
    big_tipper: bool = Field(..., description="tip_probability >= 0.5: a tip above 20% of the fare.")
    model: ModelInfo
    features_used: dict[str, float | int | str] = Field(
        ..., description="Model inputs (raw trip + batch store features) and the realtime area "
                         "features from the stream processor (area_trips_15m, ...).")
    defaulted_features: list[str] = Field(
        default_factory=list, description="Store features absent for this entity (unseen area or "
                                          "company), sent to the model as their defaults.")
    latency_ms: float
