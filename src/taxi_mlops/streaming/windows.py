"""Event-time window state of one pickup area, exact and order-independent.

An area keeps the trips and labels of the last hour *of its own event time* (its latest trip
start or trip end seen), keyed by trip id. Features are computed "as of" that latest time:

* ``area_trips_15m``   trips with start in (T - 15 min, T]
* ``area_avg_fare_1h`` mean fare of trips with start in (T - 1 h, T]
* ``area_tip_rate_1h`` share of big tippers among labels with trip end in (T - 1 h, T]

Keying by trip id makes a redelivered event a no-op, and evicting only what is older than
the window of the latest time makes the result independent of arrival order (trips and
labels come from two topics, interleaved arbitrarily): the state after any order of the same
events equals a batch computation over them, which the tests check after a crash.

Fares are summed in integer cents so adding and evicting never drifts.
"""

from __future__ import annotations

from bisect import bisect_right, insort
from datetime import datetime, timedelta, timezone

from taxi_mlops.features import realtime as rt

US = 1_000_000
COUNT_WINDOW_US = int(rt.COUNT_WINDOW.total_seconds() * US)
STATS_WINDOW_US = int(rt.STATS_WINDOW.total_seconds() * US)
_MAX_ID = "\U0010ffff"


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_ONE_US = timedelta(microseconds=1)


def to_us(ts: datetime) -> int:
    """Exact integer microseconds since the epoch (float timestamps round)."""
    return (ts - _EPOCH) // _ONE_US


def from_us(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


class AreaWindow:
    __slots__ = ("trips", "trip_index", "labels", "label_index", "latest", "fare_cents", "big")

    def __init__(self) -> None:
        self.trips: dict[str, tuple[int, int, int]] = {}   # trip_id -> (time_us, fare_cents, offset)
        self.trip_index: list[tuple[int, str]] = []        # sorted (time_us, trip_id)
        self.labels: dict[str, tuple[int, int, int]] = {}  # trip_id -> (time_us, big_tipper, offset)
        self.label_index: list[tuple[int, str]] = []
        self.latest: int | None = None
        self.fare_cents = 0
        self.big = 0

    def _too_old(self, t: int) -> bool:
        return self.latest is not None and t <= self.latest - STATS_WINDOW_US

    def add_trip(self, trip_id: str, t: int, fare: float, offset: int) -> bool:
        """False when the event changes nothing (a duplicate, or older than the window)."""
        if trip_id in self.trips or self._too_old(t):
            return False
        cents = round(fare * 100)
        self.trips[trip_id] = (t, cents, offset)
        _insert(self.trip_index, (t, trip_id))
        self.fare_cents += cents
        self._advance(t)
        return True

    def add_label(self, trip_id: str, t: int, big_tipper: bool, offset: int) -> bool:
        if trip_id in self.labels or self._too_old(t):
            return False
        self.labels[trip_id] = (t, int(big_tipper), offset)
        _insert(self.label_index, (t, trip_id))
        self.big += int(big_tipper)
        self._advance(t)
        return True

    def _advance(self, t: int) -> None:
        if self.latest is not None and t <= self.latest:
            return
        self.latest = t
        cutoff = (t - STATS_WINDOW_US, _MAX_ID)
        k = bisect_right(self.trip_index, cutoff)
        if k:
            for _, trip_id in self.trip_index[:k]:
                self.fare_cents -= self.trips.pop(trip_id)[1]
            del self.trip_index[:k]
        k = bisect_right(self.label_index, cutoff)
        if k:
            for _, trip_id in self.label_index[:k]:
                self.big -= self.labels.pop(trip_id)[1]
            del self.label_index[:k]

    def features(self) -> dict:
        n = len(self.trips)
        recent = n - bisect_right(self.trip_index, (self.latest - COUNT_WINDOW_US, _MAX_ID))
        return {
            rt.TRIPS_15M: float(recent),
            rt.AVG_FARE_1H: self.fare_cents / 100.0 / n if n else 0.0,
            rt.TIP_RATE_1H: self.big / len(self.labels) if self.labels else 0.0,
            "trips_1h": n,
            "labels_1h": len(self.labels),
        }

    def min_offsets(self) -> tuple[int | None, int | None]:
        """Lowest log offsets still held, per topic: where a rebuild must start reading."""
        trips = min((v[2] for v in self.trips.values()), default=None)
        labels = min((v[2] for v in self.labels.values()), default=None)
        return trips, labels


def _insert(index: list, item: tuple) -> None:
    if not index or item >= index[-1]:
        index.append(item)  # the usual case: events arrive in time order
    else:
        insort(index, item)
