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
"""

from __future__ import annotations

import argparse
import sys
import time
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


def replay(settings: Settings, speed: float | str = 0, retime: bool = False, limit: int | None = None,
           progress: Callable[[str], None] = print, *, max_rate: float | None = None,
           csv_path: Path | None = None, flush_timeout_s: float = 300.0) -> dict:
    """Send the CSV's trips and labels; returns counts once every event is acknowledged."""
    speed = parse_speed(speed)
    bootstrap = settings.kafka_bootstrap_servers
    topics.ensure_topics(bootstrap)
    csv_path = Path(csv_path or settings.data_csv)
    if not csv_path.exists():
        raise ReplayError(f"{csv_path} not found; fetch the data first (`dvc pull` or `make data`)")
    trips = tables.load_trips(csv_path).sort_values(["event_timestamp", "trip_id"], kind="stable")
    if limit is not None:
        trips = trips.head(limit)
    plan = timeline(trips)
    total = len(plan)
    progress(f"replaying {len(trips)} trips and their labels ({total} events) to {bootstrap} "
             f"at {'max speed' if not speed else f'{speed:g}x'}{' retimed to now' if retime else ''}")

    producer = events.EventProducer(bootstrap, "taxi-replay")
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
        else:
            producer.send(topics.LABELS, label_event(row, stamp), key=str(row[schema.AREA_KEY]))
            counts["labels"] += 1
        if (i + 1) % PROGRESS_EVERY == 0:
            elapsed = time.monotonic() - wall0
            progress(f"  {i + 1}/{total} events sent ({(i + 1) / max(elapsed, 1e-9):,.0f}/s), "
                     f"{producer.counts['delivered']} acknowledged")
    remaining = producer.flush(flush_timeout_s)
    elapsed = time.monotonic() - wall0
    result = {**counts, "sent": producer.counts["sent"], "delivered": producer.counts["delivered"],
              "failed": producer.counts["failed"], "dead_lettered": producer.counts["dead_lettered"],
              "unacknowledged": remaining, "seconds": round(elapsed, 3),
              "events_per_s": round(total / elapsed, 1) if elapsed else None}
    if remaining or producer.counts["failed"]:
        raise ReplayError(f"{remaining} events unacknowledged after {flush_timeout_s:.0f}s and "
                          f"{producer.counts['failed']} failed ({producer.errors[:3]}); is the broker "
                          f"up? (`taxi-mlops status`). Replaying again is safe: consumers de-duplicate "
                          f"by trip id. Counts: {result}")
    progress(f"replay done: {counts['trips']} trips, {counts['labels']} labels acknowledged in "
             f"{elapsed:.1f}s")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m taxi_mlops.streaming.replay",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--speed", default="max", help="N x real time, or 'max' (default)")
    parser.add_argument("--retime", action="store_true", help="stamp events with the current time")
    parser.add_argument("--limit", type=int, default=None, help="first N trips only")
    parser.add_argument("--max-rate", type=float, default=None, help="cap in events per second")
    args = parser.parse_args(argv)
    try:
        replay(get_settings(), args.speed, args.retime, args.limit, max_rate=args.max_rate)
    except (ReplayError, topics.TopicError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
