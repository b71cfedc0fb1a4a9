"""Replay the trips CSV as a live stream: trip events at start, label events at trip end.

Trips come from ``features.tables.load_trips`` (the same normalisation and trip ids as the
batch features and training), in event-time order. Both topics are keyed by pickup area, so
one area's events stay in order on one partition and trips and labels of an area share a
partition number. The producer is idempotent with ``acks=all``: a retry after a broker
hiccup neither loses nor duplicates an event, and ``replay`` returns only once every event
is acknowledged (or raises, saying how many were not).

``speed`` N plays N seconds of event time per wall-clock second; 0 or ``"max"`` plays as
fast as the broker takes it. ``retime`` stamps each event with the wall-clock time it is
sent (so windows and freshness behave as if the trips were happening now); without it the
CSV's own times (2013-2017) are kept. ``max_rate`` caps events per second.

``predict_url`` (the gateway's ``/predict``) also sends each trip to the gateway as it starts,
in replay order, with its ``trip_id``: the gateway logs the prediction to
``taxi.predictions`` and the label join pairs it with the label sent at trip end, so a demo
replay drives live accuracy. Those requests run on a small thread pool with a timeout; at
most ``predict_concurrency`` are in flight and a trip that finds every slot busy is skipped
(counted), so a slow gateway never slows the replay into Kafka.
"""

from __future__ import annotations

import argparse
import math
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import pandas as pd

from taxi_mlops.features import schema, tables
from taxi_mlops.settings import Settings, get_settings
from taxi_mlops.streaming import events, topics

PROGRESS_EVERY = 1000


class ReplayError(RuntimeError):
    pass


def parse_speed(speed: float | str | None) -> float:
    """``"max"``/``0``/``None`` -> 0 (unpaced); otherwise a positive multiplier."""
    if speed is None or (isinstance(speed, str) and speed.strip().lower() in ("max", "0", "")):
        return 0.0
    value = float(speed)
    if value < 0:
        raise ValueError(f"speed must be >= 0 or 'max', got {speed}")
    return value


def timeline(trips: pd.DataFrame) -> pd.DataFrame:
    """Trip starts and trip ends (labels) in one event-time order; a trip precedes its label."""
    start = trips["event_timestamp"]
    end = start + pd.to_timedelta(trips["trip_seconds"].clip(lower=0), unit="s")
    frame = pd.concat([
        trips.assign(_t=start, _kind=0),
        trips.assign(_t=end, _kind=1),
    ], ignore_index=True)
    return frame.sort_values(["_t", "_kind", "trip_id"], kind="stable").reset_index(drop=True)


def trip_event(row: dict, event_time: datetime) -> events.TripEvent:
    return events.TripEvent(
        trip_id=row["trip_id"], event_time=event_time,
        pickup_community_area=int(row[schema.AREA_KEY]),
        dropoff_community_area=int(row["dropoff_community_area"]),
        company=row[schema.COMPANY_KEY], payment_type=row["payment_type"],
        fare=row["fare"], trip_miles=row["trip_miles"], trip_seconds=row["trip_seconds"],
        trip_start_hour=int(row["trip_start_hour"]), trip_start_day=int(row["trip_start_day"]),
        trip_start_month=int(row["trip_start_month"]),
        pickup_latitude=row["pickup_latitude"], pickup_longitude=row["pickup_longitude"],
        dropoff_latitude=row["dropoff_latitude"], dropoff_longitude=row["dropoff_longitude"],
    )


def label_event(row: dict, event_time: datetime) -> events.LabelEvent:
    return events.LabelEvent(
        trip_id=row["trip_id"], event_time=event_time,
        pickup_community_area=int(row[schema.AREA_KEY]),
        tips=row["tips"], fare=row["fare"], big_tipper=bool(row[schema.LABEL]),
    )


def _in_range(value, low: float, high: float):
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if not math.isnan(value) and low <= value <= high else None


def _area(value) -> int | None:
    area = _in_range(value, 1, 77)
    return int(area) if area is not None else None


def gateway_trip(row: dict) -> dict:
    """The gateway's ``Trip`` body (``gateway/schemas.py``) for one CSV row.

    Unknown areas (-1) and coordinates outside Chicago (the CSV's gaps, filled with 0) are
    sent as null, as a client without them would; everything else is the row's own value.
    """
    return {
        "trip_id": row["trip_id"],
        "trip_miles": float(row["trip_miles"]), "fare": float(row["fare"]),
        "trip_seconds": int(row["trip_seconds"]),
        "trip_start_hour": int(row["trip_start_hour"]), "trip_start_day": int(row["trip_start_day"]),
        "trip_start_month": int(row["trip_start_month"]),
        "pickup_community_area": _area(row[schema.AREA_KEY]),
        "dropoff_community_area": _area(row["dropoff_community_area"]),
        "pickup_latitude": _in_range(row.get("pickup_latitude"), 41.6, 42.1),
        "pickup_longitude": _in_range(row.get("pickup_longitude"), -88.0, -87.5),
        "dropoff_latitude": _in_range(row.get("dropoff_latitude"), 41.6, 42.1),
        "dropoff_longitude": _in_range(row.get("dropoff_longitude"), -88.0, -87.5),
        "payment_type": str(row["payment_type"]) or "Unknown",
        "company": str(row[schema.COMPANY_KEY]) if row.get(schema.COMPANY_KEY) else None,
    }


def predict_endpoint(url: str) -> str:
    """``http://host:port`` or ``.../predict`` -> the ``/predict`` URL."""
    url = url.rstrip("/")
    return url if url.endswith("/predict") else url + "/predict"


class GatewayPredictor:
    """Bounded, non-blocking POST /predict calls beside the replay."""

    def __init__(self, url: str, concurrency: int = 8, timeout_s: float = 2.0):
        import httpx

        self.url = predict_endpoint(url)
        self.client = httpx.Client(timeout=timeout_s, limits=httpx.Limits(
            max_connections=concurrency, max_keepalive_connections=concurrency))
        self.pool = ThreadPoolExecutor(concurrency, thread_name_prefix="replay-predict")
        self.slots = threading.BoundedSemaphore(concurrency)
        self._lock = threading.Lock()
        self.counts = {"sent": 0, "ok": 0, "failed": 0, "skipped": 0}
        self.errors: list[str] = []

    def submit(self, trip: dict) -> bool:
        """Send ``trip`` unless ``concurrency`` requests are in flight (then it is skipped)."""
        if not self.slots.acquire(blocking=False):
            self.counts["skipped"] += 1
            return False
        self.counts["sent"] += 1
        try:
            self.pool.submit(self._post, trip)
        except RuntimeError:  # pool shut down
            self.slots.release()
            raise
        return True

    def _post(self, trip: dict) -> None:
        import httpx

        error = None
        try:
            response = self.client.post(self.url, json=trip)
            if response.status_code != 200:
                error = f"{response.status_code}: {response.text[:200]}"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"
        finally:
            self.slots.release()
        with self._lock:
            if error is None:
                self.counts["ok"] += 1
            else:
                self.counts["failed"] += 1
                if len(self.errors) < 5:
                    self.errors.append(error)

    def close(self) -> dict:
        """Wait for the requests in flight (each bounded by the timeout); the counts."""
        self.pool.shutdown(wait=True)
        self.client.close()
        return dict(self.counts)

    def summary(self) -> str:
        c = self.counts
        return f"predictions {c['ok']} ok, {c['failed']} failed, {c['skipped']} skipped"


def replay(settings: Settings, speed: float | str = 0, retime: bool = False, limit: int | None = None,
           progress: Callable[[str], None] = print, *, max_rate: float | None = None,
           csv_path: Path | None = None, flush_timeout_s: float = 300.0,
           predict_url: str | None = None, predict_concurrency: int = 8,
           predict_timeout_s: float = 2.0, id_prefix: str = "") -> dict:
    """Send the CSV's trips and labels; returns counts once every event is acknowledged.

    ``id_prefix`` is put before every trip id: trip ids are row numbers, so a second replay of
    the same rows is, to the consumers, the same trips again (de-duplicated); a prefix makes
    them new trips (an experiment replayed on fresh traffic).

    With ``predict_url`` each trip also goes to the gateway's ``/predict`` at its start
    (``GatewayPredictor``); the result then has ``predict_sent/ok/failed/skipped``.
    """
    speed = parse_speed(speed)
    bootstrap = settings.kafka_bootstrap_servers
    topics.ensure_topics(settings)
    csv_path = Path(csv_path or settings.data_csv)
    if not csv_path.exists():
        raise ReplayError(f"{csv_path} not found; fetch the data first (`dvc pull` or `make data`)")
    trips = tables.load_trips(csv_path).sort_values(["event_timestamp", "trip_id"], kind="stable")
    if limit is not None:
        trips = trips.head(limit)
    if id_prefix:
        trips = trips.assign(trip_id=id_prefix + trips["trip_id"].astype(str))
    plan = timeline(trips)
    total = len(plan)
    progress(f"replaying {len(trips)} trips and their labels ({total} events) to {bootstrap} "
             f"at {'max speed' if not speed else f'{speed:g}x'}{' retimed to now' if retime else ''}")

    producer = events.EventProducer(settings, "taxi-replay")
    predictor = GatewayPredictor(predict_url, predict_concurrency, predict_timeout_s) if predict_url else None
    if predictor:
        progress(f"  and each trip to {predictor.url} (at most {predict_concurrency} in flight)")
    t0 = plan["_t"].iloc[0] if total else None
    wall0 = time.monotonic()
    counts = {"trips": 0, "labels": 0}
    for i, row in enumerate(plan.to_dict("records")):
        target = wall0
        if speed:
            target = wall0 + (row["_t"] - t0).total_seconds() / speed
        if max_rate:
            target = max(target, wall0 + i / max_rate)
        while (delay := target - time.monotonic()) > 0:
            producer.poll(min(delay, 0.05))
        stamp = datetime.now(timezone.utc) if retime else row["_t"].to_pydatetime()
        if row["_kind"] == 0:
            producer.send(topics.TRIPS, trip_event(row, stamp), key=str(row[schema.AREA_KEY]))
            counts["trips"] += 1
            if predictor:
                predictor.submit(gateway_trip(row))
        else:
            producer.send(topics.LABELS, label_event(row, stamp), key=str(row[schema.AREA_KEY]))
            counts["labels"] += 1
        if (i + 1) % PROGRESS_EVERY == 0:
            elapsed = time.monotonic() - wall0
            progress(f"  {i + 1}/{total} events sent ({(i + 1) / max(elapsed, 1e-9):,.0f}/s), "
                     f"{producer.counts['delivered']} acknowledged"
                     + (f"; {predictor.summary()}" if predictor else ""))
    remaining = producer.flush(flush_timeout_s)
    predicted = predictor.close() if predictor else None
    elapsed = time.monotonic() - wall0
    result = {**counts, "sent": producer.counts["sent"], "delivered": producer.counts["delivered"],
              "failed": producer.counts["failed"], "dead_lettered": producer.counts["dead_lettered"],
              "unacknowledged": remaining, "seconds": round(elapsed, 3),
              "events_per_s": round(total / elapsed, 1) if elapsed else None}
    if predicted is not None:
        result.update({f"predict_{k}": v for k, v in predicted.items()})
        if predictor.errors:
            result["predict_errors"] = predictor.errors
    if remaining or producer.counts["failed"]:
        raise ReplayError(f"{remaining} events unacknowledged after {flush_timeout_s:.0f}s and "
                          f"{producer.counts['failed']} failed ({producer.errors[:3]}); is the broker "
                          f"up? (`taxi-mlops status`). Replaying again is safe: consumers de-duplicate "
                          f"by trip id. Counts: {result}")
    progress(f"replay done: {counts['trips']} trips, {counts['labels']} labels acknowledged in "
             f"{elapsed:.1f}s" + (f"; {predictor.summary()}" if predictor else ""))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m taxi_mlops.streaming.replay",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--speed", default="max", help="N x real time, or 'max' (default)")
    parser.add_argument("--retime", action="store_true", help="stamp events with the current time")
    parser.add_argument("--limit", type=int, default=None, help="first N trips only")
    parser.add_argument("--max-rate", type=float, default=None, help="cap in events per second")
    parser.add_argument("--predict", nargs="?", const="", default=None, metavar="URL",
                        help="also POST each trip to the gateway's /predict (default: the settings' gateway)")
    parser.add_argument("--predict-concurrency", type=int, default=8)
    args = parser.parse_args(argv)
    settings = get_settings()
    try:
        replay(settings, args.speed, args.retime, args.limit, max_rate=args.max_rate,
               predict_url=(args.predict or settings.gateway_url) if args.predict is not None else None,
               predict_concurrency=args.predict_concurrency)
    except (ReplayError, topics.TopicError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
