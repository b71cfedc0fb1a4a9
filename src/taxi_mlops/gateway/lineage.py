"""Prediction lineage without HTTP: the response models of ``GET /predictions/{request_id}``
and ``GET /predictions``, and the lookups behind them (``app.register_lineage_routes`` only
maps them to routes).

A lookup is one read of the prediction store (SQLite, opened read-only once per worker) plus
the per-version chain (``lineage/chain.py``, cached). Errors are the control plane's typed
ones, already mapped by ``errors.py``: ``InvalidField`` (422 naming the field) for an id that
could never be stored or a bad filter, ``NotFound`` (404) for an id that is not stored, and
``DependencyDown`` (503) when the store does not exist yet.
"""

from __future__ import annotations

import math
import threading
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from taxi_mlops.gateway.control import InvalidField, NotFound
from taxi_mlops.gateway.errors import DependencyDown
from taxi_mlops.lineage import predictions as store_mod
from taxi_mlops.settings import Settings

# The route declares it (OpenAPI), so a client and a fuzzer know which ids can exist.
REQUEST_ID_PATTERN = f"^{store_mod.REQUEST_ID.pattern}$"


# ---- response models (the UI and the CLI read exactly these) ------------------------------------
class ModelInfo(BaseModel):
    name: str
    version: str
    aliases: list[str] = Field(default_factory=list, description="The aliases it holds now.")
    family: str | None = None


class MlflowRun(BaseModel):
    run_id: str | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    params: dict[str, str | None] = Field(default_factory=dict)
    tags: dict[str, str | None] = Field(default_factory=dict)
    url: str | None = None


class Artifact(BaseModel):
    id: int
    type: str
    uri: str
    produced_by: str = ""
    properties: dict[str, Any] = Field(default_factory=dict)


class PipelineRun(BaseModel):
    run_id: str | None = Field(None, description="The TFX pipeline run (ML Metadata pipeline_run context).")
    pipeline_name: str | None = None
    artifacts: list[Artifact] = Field(default_factory=list, description="From the data to the model.")


class DataVersion(BaseModel):
    dvc_data_version: str | None = Field(None, description="DVC md5 of the training CSV.")
    path: str | None = None
    restore_command: str | None = Field(None, description="A shell command that writes that exact file.")
    remote: str | None = None


class Label(BaseModel):
    big_tipper: bool
    tips: float | None = None
    event_time: str | None = None
    correct: bool | None = Field(None, description="(tip_probability >= 0.5) == big_tipper")


class PredictionChain(BaseModel):
    request_id: str
    prediction: dict[str, Any] = Field(description="The prediction log as the gateway wrote it.")
    model: ModelInfo
    mlflow_run: MlflowRun
    pipeline: PipelineRun
    data: DataVersion
    label: Label | None = Field(None, description="Null until the trip's label has arrived.")
    errors: list[str] = Field(default_factory=list, description="Backends that could not be read, "
                                                                "each entry starting with its name.")


class PredictionSummary(BaseModel):
    request_id: str
    trip_id: str | None
    model_version: str
    variant: str | None
    tip_probability: float
    timestamp: str
    shadow: bool
    label_big_tipper: bool | None
    correct: bool | None


class PredictionList(BaseModel):
    predictions: list[PredictionSummary]
    count: int


# ---- lookups ------------------------------------------------------------------------------------
class Lineage:
    """One per gateway worker; blocking (the routes run it in the thread pool)."""

    def __init__(self, settings: Settings):
        from taxi_mlops.lineage.chain import ChainBuilder

        self.settings = settings
        self.chains = ChainBuilder(settings)
        self._store: store_mod.PredictionStore | None = None
        self._lock = threading.Lock()

    def store(self) -> store_mod.PredictionStore:
        """Opened on first use: the worker that creates the file may start after the gateway."""
        with self._lock:
            if self._store is None:
                try:
                    self._store = store_mod.PredictionStore(self.settings.predictions_location, readonly=True)
                except FileNotFoundError as exc:
                    raise DependencyDown("prediction_store", str(exc)) from exc
            return self._store

    def _read(self, query):
        """A read of the store; a database that does not answer is a 503 naming it."""
        import sqlite3

        try:
            return query(self.store())
        except (store_mod.StoreUnavailable, sqlite3.OperationalError) as exc:
            raise DependencyDown("prediction_store", str(exc)) from exc

    def get(self, request_id: str) -> PredictionChain:
        if not store_mod.valid_request_id(request_id):
            raise InvalidField("request_id", "a request id is 1 to 72 of A-Z a-z 0-9 . _ - (what the "
                                             "gateway accepts and logs); this one can never be stored")
        stored = self._read(lambda store: store.get(request_id))
        if stored is None:
            raise NotFound(f"no prediction with request id {request_id!r} is stored (yet): a prediction "
                           "is stored about a second after /predict answers; check the id in the "
                           "response's X-Request-ID header")
        return PredictionChain.model_validate(self.chains.build(stored))

    def list(self, model_version: str | None, since: str | None, limit: int) -> PredictionList:
        if since is not None:
            since = _parse_since(since)
        try:
            rows = self._read(lambda store: store.list(model_version=model_version or None, since=since,
                                                       limit=limit))
        except store_mod.InvalidQuery as exc:
            raise InvalidField(exc.field, exc.message) from exc
        items = [PredictionSummary(**r.summary()) for r in rows]
        return PredictionList(predictions=items, count=len(items))


def _parse_since(value: str) -> float:
    """ISO 8601 (a naive time is UTC) or epoch seconds."""
    try:
        number = float(value)
    except ValueError:
        number = None
    if number is not None:
        if not math.isfinite(number):
            raise InvalidField("since", f"not a finite time: {value!r}")
        return number
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidField("since", f"not an ISO 8601 time or epoch seconds: {value!r} "
                                    "(e.g. 2026-01-31T12:00:00Z)") from None
    return store_mod._epoch(parsed)
