"""Retrain guard rails and the stream -> CSV conversion, without a stack."""

from __future__ import annotations

import csv
import io
from datetime import datetime, timezone

import pytest

from taxi_mlops.retrain import data
from taxi_mlops.retrain.guard import DAY_S, Guard


class Clock:
    def __init__(self, t: float = 1_800_000_000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock():
    return Clock()


def make(tmp_path, clock, alive=lambda pid: True, **kw):
    kw.setdefault("cooldown_s", 3600)
    kw.setdefault("max_per_day", 4)
    return Guard(tmp_path / "retrain.sqlite", clock=clock, pid=4242, alive=alive, **kw)


def test_one_run_at_a_time(tmp_path, clock):
    guard = make(tmp_path, clock, cooldown_s=0)
    run_id, reason = guard.try_start({"reason": "a"})
    assert run_id and reason == "started"
    clock.t += 10
    refused, why = guard.try_start({"reason": "b"})
    assert refused is None and "still running" in why
    assert guard.state()["running"]["id"] == run_id
    assert guard.state()["last_refusal"]["trigger"] == {"reason": "b"}
    guard.finish(run_id, {"ok": True})
    assert guard.state()["running"] is None
    assert guard.try_start({"reason": "c"})[0]


def test_cooldown_since_last_start(tmp_path, clock):
    guard = make(tmp_path, clock)
    run_id, _ = guard.try_start({})
    guard.finish(run_id, {"error": "boom"})  # a failed run counts too
    assert guard.state()["runs"][0]["status"] == "failed"
    clock.t += 3599
    refused, why = guard.try_start({})
    assert refused is None and why.startswith("cool-down")
    assert guard.state()["next_allowed_ts"] == pytest.approx(clock.t + 1)
    clock.t += 1
    assert guard.try_start({})[0]


def test_daily_cap(tmp_path, clock):
    guard = make(tmp_path, clock, cooldown_s=60, max_per_day=2)
    first = clock.t
    for _ in range(2):
        run_id, _ = guard.try_start({})
        guard.finish(run_id, {})
        clock.t += 120
    refused, why = guard.try_start({})
    assert refused is None and why.startswith("daily cap")
    assert guard.state()["next_allowed_ts"] == pytest.approx(first + DAY_S)
    clock.t = first + DAY_S + 1
    assert guard.try_start({})[0]


def test_stale_running_row_of_dead_pid_is_cleared(tmp_path, clock):
    dead = make(tmp_path, clock, alive=lambda pid: False, cooldown_s=0)
    stale, _ = dead.try_start({"reason": "crashed"})
    clock.t += 5
    run_id, reason = dead.try_start({"reason": "next"})
    assert run_id and run_id != stale, reason
    runs = {r["id"]: r for r in dead.state()["runs"]}
    assert runs[stale]["status"] == "abandoned" and "died" in runs[stale]["outcome"]["error"]


def test_state_survives_a_new_guard(tmp_path, clock):
    make(tmp_path, clock).try_start({"reason": "x"})
    state = make(tmp_path, clock).state()
    assert state["running"]["trigger"] == {"reason": "x"} and state["runs_last_24h"] == 1


TRIP = {"trip_id": "t1", "event_time": datetime(2026, 5, 1, 13, 30, tzinfo=timezone.utc),
        "pickup_community_area": 8, "dropoff_community_area": -1, "company": "Flash Cab",
        "payment_type": "Credit Card", "fare": 9.5, "trip_miles": 2.5, "trip_seconds": 600.0,
        "trip_start_hour": 13, "trip_start_day": 6, "trip_start_month": 5,
        "pickup_latitude": 41.9, "pickup_longitude": -87.6, "dropoff_latitude": 0.0,
        "dropoff_longitude": 0.0, "schema_version": 1}
LABEL = {"trip_id": "t1", "event_time": datetime(2026, 5, 1, 13, 40, tzinfo=timezone.utc),
         "pickup_community_area": 8, "tips": 3.0, "fare": 10.0, "big_tipper": True, "schema_version": 1}


def test_to_csv_row_matches_the_training_csv():
    from taxi_mlops import paths

    with (paths.PROJECT_ROOT / "data" / "chicago_taxi" / "data.csv").open() as f:
        assert next(csv.reader(f)) == data.CSV_COLUMNS
    row = data.to_csv_row(TRIP, LABEL)
    assert list(row) == data.CSV_COLUMNS
    assert row["trip_start_timestamp"] == str(int(TRIP["event_time"].timestamp()))
    assert row["tips"] == "3.0" and row["fare"] == "10.0"  # the label's final amounts
    assert row["pickup_community_area"] == "8" and row["dropoff_community_area"] == ""
    assert row["dropoff_latitude"] == "" and row["pickup_latitude"] == "41.9"
    assert row["pickup_census_tract"] == row["dropoff_census_tract"] == ""
    assert row["trip_seconds"] == "600" and row["company"] == "Flash Cab"
    # ... and it reads back through the platform's own loader.
    from taxi_mlops.features import schema, tables

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=data.CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerow(row)
    buf.seek(0)
    frame = tables.load_trips(buf)
    assert int(frame[schema.LABEL].iloc[0]) == 1  # tips 3.0 > 20% of fare 10.0
    assert int(frame["dropoff_community_area"].iloc[0]) == -1


def test_join_rows_skips_orphans_and_duplicates_and_sorts():
    later = {**TRIP, "trip_id": "t0", "event_time": datetime(2026, 5, 1, 15, 0, tzinfo=timezone.utc),
             "company": "UNKNOWN"}
    labels = [{**LABEL, "trip_id": "t0"}, LABEL, {**LABEL, "tips": 99.0}, {**LABEL, "trip_id": "ghost"}]
    rows, orphans = data.join_rows({"t1": TRIP, "t0": later}, labels)
    assert orphans == 1 and len(rows) == 2
    assert [r["tips"] for r in rows] == ["3.0", "3.0"]  # first label of t1 wins; t1 sorts first
    assert rows[1]["company"] == ""


def test_on_alert_starts_only_for_configured_firing_alerts(monkeypatch):
    import threading

    from taxi_mlops.retrain import loop

    started = []
    monkeypatch.setenv("TAXI_RETRAIN_ALERTS", "TaxiFeatureDrift, TaxiPredictionDrift")
    monkeypatch.setattr(loop, "_run_quietly", lambda settings, reason, record: started.append(reason))
    loop.on_alert({"id": 1, "alertname": "TaxiFeatureDrift", "status": "resolved"})
    loop.on_alert({"id": 2, "alertname": "TaxiGatewayDown", "status": "firing"})
    loop.on_alert({"id": 3, "alertname": "TaxiPredictionDrift", "status": "firing"})
    for t in threading.enumerate():
        if t.name.startswith("retrain-"):
            t.join(5)
    assert started == ["alert TaxiPredictionDrift (id 3)"]


def test_receiver_gets_one_hook_per_retrain_alert():
    from taxi_mlops.settings import Settings
    from taxi_mlops.stack import monitoring

    command = monitoring.monitoring_services(Settings(retrain_alerts="A,B"))[0].command
    assert command[-4:] == ["--hook", "A=taxi_mlops.retrain.loop:on_alert",
                            "--hook", "B=taxi_mlops.retrain.loop:on_alert"]
    assert "--hook" not in monitoring.monitoring_services(Settings(retrain_alerts=""))[0].command
