"""The tip model as KServe sees it: load from the registry, check inputs, predict.

Knows nothing about HTTP: the KServe data plane hands it decoded v2 requests (or v1
``instances``) and turns what it returns or raises (``InvalidInput`` -> 400) into responses.
Each request is timed and counted by model version (``serving/metrics.py``) and logged as one
JSON line carrying the caller's ``X-Request-ID`` and the version that answered.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from kserve import InferOutput, InferRequest, InferResponse, Model  # noqa: E402
from kserve.errors import InvalidInput  # noqa: E402
from kserve.model import InferenceVerb  # noqa: E402

from taxi_mlops.features import schema  # noqa: E402
from taxi_mlops.observability import logs  # noqa: E402
from taxi_mlops.registry import models  # noqa: E402
from taxi_mlops.serving.batching import MicroBatcher  # noqa: E402
from taxi_mlops.serving.metrics import ModelServerMetrics, NoRecorder  # noqa: E402

log = logging.getLogger(__name__)

NUMPY_DTYPES = {"FP32": np.float32, "INT64": np.int64, "BYTES": object}
OUTPUT = "tip_probability"


class ModelNotRegistered(RuntimeError):
    pass


class TaxiTipModel(Model):
    """One registry alias of ``chicago-taxi-tips`` served under one name."""

    def __init__(self, name: str, tracking_uri: str, registered_name: str, alias: str,
                 cache_dir: Path | None = None, metrics: ModelServerMetrics | None = None,
                 batch_max_rows: int = 256, batch_wait_s: float = 0.0, batch_inline_rows: int = 0):
        super().__init__(name)
        self.batch_max_rows, self.batch_wait_s = batch_max_rows, batch_wait_s
        self.batch_inline_rows = batch_inline_rows
        self._batcher: MicroBatcher | None = None
        self.tracking_uri = tracking_uri
        self.registered_name = registered_name
        self.alias = alias
        self.cache_dir = cache_dir or Path(tempfile.mkdtemp(prefix="taxi-model-"))
        self.version: str | None = None
        self.metrics = metrics  # None: record nothing (settings.metrics_enabled off)
        self._recorder = NoRecorder()
        self._model = None

    # ---- load ------------------------------------------------------------------------------
    def load(self) -> bool:
        ref = models.by_alias(self.tracking_uri, self.registered_name, self.alias)
        if ref is None:
            raise ModelNotRegistered(
                f"no version of {self.registered_name!r} has alias {self.alias!r} in MLflow at "
                f"{self.tracking_uri}: run `taxi-mlops train` first"
            )
        self._model = models.load_pyfunc(self.tracking_uri, ref, self.cache_dir / f"v{ref.version}")
        self._batcher = None  # the next request builds one on the model just loaded
        self.version = ref.version
        if self.metrics is not None:
            self._recorder = self.metrics.loaded(self.name, ref.version, self.alias, ref.tags)
        self.ready = True
        log.info("loaded %s version %s (%s) as an MLflow pyfunc", self.registered_name, ref.version, self.alias)
        return self.ready

    def load_ref(self, ref: models.ModelRef, recorder=None) -> bool:
        """Load one version known by number (the version repository's path; ``load`` resolves
        the alias itself). ``recorder`` counts this version's requests."""
        self._model = models.load_pyfunc(self.tracking_uri, ref, self.cache_dir / f"v{ref.version}")
        self._batcher = None  # the next request builds one on the model just loaded
        self.version = ref.version
        if recorder is not None:
            self._recorder = recorder
        self.ready = True
        log.info("loaded %s version %s as an MLflow pyfunc", self.registered_name, ref.version)
        return self.ready

    def warm(self) -> None:
        """One prediction on a sample trip before the version answers anyone: TensorFlow
        traces its graph on the first call, which must not be a caller's (nor a broken
        model's first sign of life)."""
        from taxi_mlops.samples import SAMPLE_TRIPS

        row = schema.model_inputs(SAMPLE_TRIPS[0], {})
        probabilities = self._model.predict_columns(
            _columns({n: [v] for n, v in row.items()}, "v2")["columns"])
        if len(probabilities) != 1:
            raise RuntimeError(f"warm-up of version {self.version} returned {len(probabilities)} values")

    # ---- protocol metadata ------------------------------------------------------------------
    def get_input_types(self) -> list[dict]:
        return [{"name": n, "datatype": dt, "shape": [-1]} for n, dt in schema.SERVING_DTYPES.items()]

    def get_output_types(self) -> list[dict]:
        return [{"name": OUTPUT, "datatype": "FP32", "shape": [-1]}]

    # ---- one request ------------------------------------------------------------------------
    async def __call__(self, body, headers: dict | None = None, verb: InferenceVerb = InferenceVerb.PREDICT):
        """KServe's preprocess -> predict -> postprocess (and its own request_*_seconds
        histograms), timed, counted and logged with the caller's request id bound."""
        request_id = headers.get("x-request-id") if headers else None
        token = logs.bind(request_id=request_id, model_version=self.version)
        started, ok = time.perf_counter(), False
        try:
            result = await super().__call__(body, headers=headers, verb=verb)
            ok = True
            return result
        finally:
            seconds = time.perf_counter() - started
            self._recorder.record(seconds, ok)
            if log.isEnabledFor(logging.INFO):
                status = "ok" if ok else "error"
                log.info("inference %s", status,
                         extra={"status": status, "duration_ms": round(seconds * 1000, 3)})
            logs.reset(token)

    # ---- preprocess / predict ---------------------------------------------------------------
    async def preprocess(self, payload: InferRequest | dict, headers: dict | None = None) -> dict:
        """Named, typed, equally long columns, whichever protocol they came in by."""
        if isinstance(payload, InferRequest):
            columns = {}
            for inp in payload.inputs:
                try:
                    columns[inp.name] = inp.as_numpy()
                except (TypeError, ValueError) as exc:
                    raise InvalidInput(f"input {inp.name!r} does not match {inp.datatype}: {exc}") from exc
            return {**_columns(columns, "v2"), "id": payload.id}
        elif isinstance(payload, dict) and isinstance(payload.get("instances"), list):
            rows = payload["instances"]
            if not rows or not all(isinstance(r, dict) for r in rows):
                raise InvalidInput("'instances' must be a non-empty list of objects")
            columns = {n: [r.get(n) for r in rows] for n in schema.MODEL_INPUTS}
        else:
            raise InvalidInput("expected a v2 inference request or a v1 {'instances': [...]} body")
        return _columns(columns, "v1")

    async def predict(self, payload: dict, headers: dict | None = None,
                      response_headers: dict | None = None) -> InferResponse | dict:
        if self._batcher is None:  # concurrent requests share one model call (serving/batching.py)
            self._batcher = MicroBatcher(self._model.predict_columns, self.batch_max_rows,
                                         self.batch_wait_s, name=f"v{self.version}",
                                         inline_rows=self.batch_inline_rows)
        probabilities = await self._batcher.submit(payload["columns"])
        if payload["protocol"] == "v1":
            return {"predictions": probabilities.tolist(), "model_version": self.version}
        return InferResponse(
            response_id=payload.get("id") or "", model_name=self.name, model_version=self.version,
            infer_outputs=[InferOutput(name=OUTPUT, shape=list(probabilities.shape),
                                       datatype="FP32", data=probabilities)],
        )


def _columns(columns: dict[str, Any], protocol: str) -> dict:
    missing = [n for n in schema.MODEL_INPUTS if n not in columns]
    if missing:
        raise InvalidInput(f"missing input(s): {', '.join(missing)}")
    unknown = sorted(set(columns) - set(schema.MODEL_INPUTS))
    if unknown:
        raise InvalidInput(f"unknown input(s): {', '.join(unknown)}")
    out, length, first = {}, None, None
    for name, datatype in schema.SERVING_DTYPES.items():
        array = _typed(name, datatype, columns[name])
        if length is None:
            length, first = len(array), name
        elif len(array) != length:
            raise InvalidInput(f"inputs must have equal lengths: {first!r} has {length} values, "
                               f"{name!r} has {len(array)}")
        out[name] = array
    if not length:
        raise InvalidInput("empty batch")
    return {"columns": out, "protocol": protocol}


def _typed(name: str, datatype: str, given: Any) -> np.ndarray:
    """One input as a flat array of its serving type, or ``InvalidInput`` naming it."""
    if datatype != "BYTES" and isinstance(given, np.ndarray) and given.dtype == NUMPY_DTYPES[datatype]:
        # A v2 input KServe has decoded already (``as_numpy``: numbers of exactly this type):
        # the checks below would box every value to find what the dtype already rules out.
        return given.reshape(-1)
    raw = np.asarray(given, dtype=object).reshape(-1)
    try:
        if datatype == "BYTES":
            if any(v is None for v in raw):
                raise ValueError("null value")
            return np.array([v.decode() if isinstance(v, bytes) else str(v) for v in raw], dtype=object)
        if any(v is None or isinstance(v, (str, bytes)) for v in raw):
            raise ValueError("not a number")
        return raw.astype(NUMPY_DTYPES[datatype])
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"input {name!r} must be {datatype}: {exc}") from exc
