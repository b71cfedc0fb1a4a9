"""Score a CSV of trips through the gateway's ``POST /predict/batch``, chunk by chunk.

The client side of batch scoring (``taxi-mlops predict --file trips.csv --out out.csv``):
the same features, model and prediction log as ``/predict``, at batch speed. A row the
gateway refuses gets its error in the output; the others are scored.
"""

from __future__ import annotations

import csv
import math
import time
import typing
from pathlib import Path
from typing import Callable

import httpx

from taxi_mlops.gateway.schemas import MAX_BATCH, Trip

LABEL_COLUMNS = ("tips",)
OUTPUT_COLUMNS = ("row", "trip_id", "tip_probability", "big_tipper", "model_version", "request_id", "error")


class BatchScoringError(RuntimeError):
    """The gateway cannot be reached or refused a whole chunk; the message says what to do."""


def _int_fields() -> set[str]:
    ints = set()
    for name, info in Trip.model_fields.items():
        ann = info.annotation
        if ann is int or int in typing.get_args(ann):
            ints.add(name)
    return ints


INT_FIELDS = _int_fields()


def row_to_trip(row: dict) -> dict:
    """A CSV row as the gateway's JSON: empty cells null, integral columns as integers."""
    out = {}
    for key, value in row.items():
        if key in LABEL_COLUMNS:
            continue
        if value is None or value == "" or (isinstance(value, float) and math.isnan(value)):
            out[key] = None
            continue
        if key in INT_FIELDS:
            try:
                number = float(value)
                out[key] = int(number) if number.is_integer() else number
            except ValueError:
                out[key] = value  # the gateway names the bad field
        elif key in Trip.model_fields and key not in ("payment_type", "company", "trip_id"):
            try:
                out[key] = float(value)
            except ValueError:
                out[key] = value
        else:
            out[key] = value
    return out


def score_csv(gateway_url: str, src: Path, dst: Path, chunk: int = MAX_BATCH, timeout_s: float = 60.0,
              progress: Callable[[int, int], None] | None = None) -> dict:
    """Score every row of ``src`` into ``dst`` (same order); returns counts and timing."""
    with open(src, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise BatchScoringError(f"{src} has no rows")
    dropped = [c for c in LABEL_COLUMNS if c in rows[0]]
    started = time.perf_counter()
    answered = rejected = 0
    dst.parent.mkdir(parents=True, exist_ok=True)
    with httpx.Client(timeout=timeout_s) as client, open(dst, "w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=OUTPUT_COLUMNS)
        writer.writeheader()
        for first in range(0, len(rows), chunk):
            trips = [row_to_trip(r) for r in rows[first:first + chunk]]
            try:
                r = client.post(f"{gateway_url}/predict/batch", json={"trips": trips})
            except httpx.HTTPError as exc:
                raise BatchScoringError(f"gateway at {gateway_url} unreachable ({exc}): "
                                        "`taxi-mlops up`, then retry") from exc
            if r.status_code != 200:
                raise BatchScoringError(f"gateway answered {r.status_code} for rows {first}.."
                                        f"{first + len(trips) - 1}: {r.text[:400]}")
            body = r.json()
            for result in body["results"]:
                p, errors = result.get("prediction"), result.get("errors")
                writer.writerow({
                    "row": first + result["index"],
                    "trip_id": (p or {}).get("trip_id") or trips[result["index"]].get("trip_id"),
                    "tip_probability": p["tip_probability"] if p else "",
                    "big_tipper": p["big_tipper"] if p else "",
                    "model_version": p["model"]["version"] if p else "",
                    "request_id": p["request_id"] if p else "",
                    "error": "; ".join(f"{e['field']}: {e['message']}" for e in errors) if errors else "",
                })
            answered += body["answered"]
            rejected += body["rejected"]
            if progress:
                progress(min(first + chunk, len(rows)), len(rows))
    seconds = time.perf_counter() - started
    return {"rows": len(rows), "answered": answered, "rejected": rejected, "seconds": round(seconds, 3),
            "rows_per_s": round(len(rows) / seconds, 1), "ignored_columns": dropped, "out": str(dst)}
