"""Feature drift on the session stack: the data-quality worker compares each window of trips
with the champion's StatisticsGen histograms. A clean replay (rows drawn at random from the
data set, so not ordered in time: a time-ordered 2013 stretch really drifts on trip_miles)
scores no drift; the same kind of rows with fares x3 publish a drift record naming fare."""

from __future__ import annotations

import json
import time
import uuid

import pandas as pd
import pytest

from taxi_mlops.stack.process import wait_for
from taxi_mlops.streaming import replay, status
from taxi_mlops.streaming.quality import NAME
from tests.test_data_quality import read_quality_records, scrape, value

pytestmark = pytest.mark.slow

ROWS = 1000  # one data-quality window (quality_window_events) and twice drift_min_events


def _total(samples, name) -> float:
    return sum(v for (n, _), v in samples.items() if n == name)


def _sample_csv(settings, tmp_path, seed: int, fare_scale: float = 1.0):
    rows = pd.read_csv(settings.data_csv).sample(ROWS, random_state=seed)
    rows["fare"] = rows["fare"] * fare_scale
    path = tmp_path / f"sample-{seed}-x{fare_scale:g}.csv"
    rows.to_csv(path, index=False)
    return path


def _replay(settings, path) -> float:
    """Send the rows' trips; returns the time the replay started."""
    started = time.time()
    result = replay.replay(settings, speed="max", retime=True, max_rate=2000, csv_path=path,
                           id_prefix=f"drift-{uuid.uuid4().hex[:6]}-", progress=lambda _m: None)
    assert result, result
    return started


@pytest.fixture(scope="module")
def drift_ready(stack):
    """The worker checks trips against the champion and has its drift reference."""
    settings = stack
    assert settings.quality_window_events >= ROWS >= 2 * settings.drift_min_events

    def ready() -> bool:
        s = status.read(settings, NAME) or {}
        return bool((s.get("drift") or {}).get("reference"))

    assert wait_for(ready, 120, 0.5), status.read(settings, NAME)
    return settings


def _scored_after(settings, before: dict, checked: float) -> bool:
    now = scrape(settings)
    return value(now, "taxi_data_quality_events_checked_total") >= checked and \
        _total(now, "taxi_drift_windows_total") > _total(before, "taxi_drift_windows_total")


def test_clean_replay_raises_no_drift(drift_ready, tmp_path):
    settings = drift_ready
    before = scrape(settings)
    started = _replay(settings, _sample_csv(settings, tmp_path, seed=11))
    checked = value(before, "taxi_data_quality_events_checked_total") + ROWS
    assert wait_for(lambda: _scored_after(settings, before, checked), 90, 0.5), status.read(settings, NAME)
    after = scrape(settings)
    assert value(after, "taxi_drift_windows_total", drifted="true") == \
        value(before, "taxi_drift_windows_total", drifted="true"), status.read(settings, NAME)
    detected = {dict(labels)["feature"]: v for (n, labels), v in after.items() if n == "taxi_drift_detected"}
    assert detected and set(detected.values()) == {0.0}, detected
    scores = {dict(labels)["test"] for (n, labels), _ in after.items() if n == "taxi_drift_score"}
    assert {"jensen_shannon", "wasserstein", "linf", "missing_rate"} <= scores
    # The summary of the window says it was scored; no drift record since the replay began.
    records = read_quality_records(settings, lambda rs: any(
        r["kind"] == "window_summary" and r["details"].get("drift", {}).get("scored")
        and r["timestamp"] >= _iso(started) for r in rs))
    assert not [r for r in records if r["kind"] == "drift" and r["timestamp"] >= _iso(started)]
    cache = settings.state_dir / "drift" / f"reference-{status.read(settings, NAME)['drift']['reference']}.json"
    assert json.loads(cache.read_text())["features"]["fare"]["kind"] == "numeric"


def test_tripled_fares_are_drift_on_fare(drift_ready, tmp_path):
    settings = drift_ready
    started = _replay(settings, _sample_csv(settings, tmp_path, seed=12, fare_scale=3.0))
    records = read_quality_records(settings, lambda rs: any(
        r["kind"] == "drift" and r["timestamp"] >= _iso(started) for r in rs), timeout_s=90)
    record = next(r for r in records if r["kind"] == "drift" and r["timestamp"] >= _iso(started))
    assert record["schema_version"] == 2 and record["check"] == "drift" and not record["passed"]
    details = record["details"]
    assert "fare" in details["drifted_features"] and record["feature"] == "fare", details
    assert details["scores"]["fare"]["jensen_shannon"] > details["thresholds"]["js"]
    assert details["events"] >= settings.drift_min_events and details["model_version"] == \
        record["reference"]["model_version"]
    assert wait_for(lambda: value(scrape(settings), "taxi_drift_detected", feature="fare") == 1.0, 30, 0.5)
    reports = sorted((settings.state_dir / "drift" / "reports").glob(f"*-{details['model_version']}.json"))
    assert reports and any(json.loads(p.read_text())["details"]["drifted_features"] == details["drifted_features"]
                           for p in reports)


def _iso(ts: float) -> str:
    """A record timestamp (model_dump(mode="json"): ISO 8601 UTC, 'Z') comparable as a string."""
    return pd.Timestamp(ts, unit="s", tz="UTC").strftime("%Y-%m-%dT%H:%M:%S")
