"""The closed loop on a real stack, driven by real drift: trips with fares x3 on the stream ->
the data-quality worker's drift windows -> Prometheus (TaxiFeatureDrift, naming fare) ->
Alertmanager -> the alert receiver's hook -> a new DVC data version from the stream -> a
training run tagged with the alert -> (if blessed) a challenger and a champion-vs-challenger
experiment. A second drift alert (payment_type) inside the cool-down starts no second run.
Clean trips afterwards let the drift alerts resolve; the champion is left alone (other
session tests rely on it)."""

from __future__ import annotations

import time

import httpx
import pandas as pd
import pytest
import yaml

from taxi_mlops import paths, security
from taxi_mlops.registry import models
from taxi_mlops.retrain.guard import Guard
from taxi_mlops.stack.process import wait_for
from tests.conftest import restore_pipeline_metrics
from tests.test_drift_stack import ROWS, _replay, _sample_csv, drift_ready  # noqa: F401 (fixture)

pytestmark = pytest.mark.slow

RETRAIN_DEADLINE_S = 480.0
# Two drifted windows in a row, then the rule's `for: 30s`, a scrape and Alertmanager's
# grouping: about 40 s here; the margin is for a busy machine.
ALERT_DEADLINE_S = 180.0


def _received(settings, alertname: str, since: float, **labels) -> list[dict]:
    """Firing alerts the receiver stored since ``since`` whose labels include ``labels``."""
    r = httpx.get(f"{settings.alert_receiver_url}/alerts", timeout=10,
                  params={"alertname": alertname, "status": "firing", "since": f"{since:.3f}"})
    assert r.status_code == 200, r.text
    return [a for a in r.json()["alerts"] if all(a["labels"].get(k) == v for k, v in labels.items())]


def _drift(settings, tmp_path, seeds, mutate=None, fare_scale: float = 1.0) -> None:
    """One data-quality window of shuffled data-set trips per seed, optionally mutated."""
    for seed in seeds:
        path = _sample_csv(settings, tmp_path, seed=seed, fare_scale=fare_scale)
        if mutate is not None:
            frame = pd.read_csv(path)
            mutate(frame)
            frame.to_csv(path, index=False)
        _replay(settings, path)


@pytest.fixture
def loop_on(stack, settings, supervisor):
    """The alert receiver restarted with the loop's hook for TaxiFeatureDrift (the session runs
    with none), and restarted without it afterwards."""
    from taxi_mlops.stack import monitoring

    on = settings.model_copy(update={"retrain_alerts": "TaxiFeatureDrift"})
    supervisor.stop("alert_receiver")
    supervisor.start(monitoring.alert_receiver_service(on))
    yield on
    supervisor.stop("alert_receiver")
    supervisor.start(monitoring.alert_receiver_service(settings))


def test_drift_alert_retrains_on_fresh_data_and_starts_experiment(drift_ready, settings, champion, trained,
                                                                  loop_on, tmp_path):
    client = models.client(settings.mlflow_tracking_uri)
    guard = Guard.from_settings(settings)
    assert guard.state()["runs"] == [], "a retrain ran before this test: the loop fired on its own"
    outcome = None
    try:
        # Two windows of fares x3: two drifted windows in a row is what TaxiFeatureDrift waits for.
        since = time.time()
        _drift(settings, tmp_path, seeds=(31, 32), fare_scale=3.0)
        assert wait_for(lambda: _received(settings, "TaxiFeatureDrift", since, feature="fare"),
                        ALERT_DEADLINE_S, 1.0), (
            f"no TaxiFeatureDrift naming fare reached the receiver in {ALERT_DEADLINE_S:.0f}s: "
            f"{_received(settings, 'TaxiFeatureDrift', since)}")
        fare_alert = _received(settings, "TaxiFeatureDrift", since, feature="fare")[-1]  # newest first: the first one received
        print(f"\nTaxiFeatureDrift(fare) received {fare_alert['received_at'] - since:.0f}s after the "
              f"drift began: {fare_alert['summary']}")

        def finished() -> bool:
            runs = guard.state()["runs"]
            return bool(runs) and runs[0]["status"] in ("finished", "failed")

        assert wait_for(finished, RETRAIN_DEADLINE_S, interval_s=2.0), (
            f"no finished retrain within {RETRAIN_DEADLINE_S:.0f}s: {guard.state()}")
        print(f"retrain finished {time.time() - since:.0f}s after the drift began")
        state = guard.state()
        assert len(state["runs"]) == 1, state
        run = state["runs"][0]
        outcome = run["outcome"]
        assert run["status"] == "finished", outcome
        # Started by a drift alert the receiver stored (the notification may carry several).
        drift_ids = {a["id"] for a in _received(settings, "TaxiFeatureDrift", since)}
        assert run["trigger"]["alertname"] == "TaxiFeatureDrift" and run["trigger"]["alert_id"] in drift_ids, run
        alert_id = run["trigger"]["alert_id"]

        # A new DVC data version, appended to a copy (the repository's CSV is untouched).
        repo_md5 = yaml.safe_load((paths.PROJECT_ROOT / "data" / "chicago_taxi" / "data.csv.dvc")
                                  .read_text())["outs"][0]["md5"]
        data = outcome["data"]
        assert data["md5"] != repo_md5 and data["rows_appended"] >= 2 * ROWS, data
        assert (settings.state_dir / "retrain" / "dvc-remote" / "files" / "md5" / data["md5"][:2]
                / data["md5"][2:]).exists(), "dvc push did not reach the local remote"

        # The MLflow run trained on it carries the trigger.
        mlflow_run = client.get_run(outcome["mlflow"]["mlflow_run_id"])
        assert mlflow_run.data.tags["retrain.alert_id"] == str(alert_id)
        assert mlflow_run.data.tags["retrain.trigger"] == "TaxiFeatureDrift"
        assert mlflow_run.data.tags["retrain.data_md5"] == data["md5"]
        assert mlflow_run.data.tags["dvc_data_version"] == data["md5"]
        assert outcome["mlmd"]["recorded"], outcome["mlmd"]  # retrain_* on the MlflowModelVersion
        challenger = outcome["mlflow"].get("challenger_version")
        if challenger:
            mv = client.get_model_version_by_alias(settings.model_name, models.CHALLENGER)
            assert mv.version == challenger and mv.tags["retrain.alert_id"] == str(alert_id)
            assert outcome["experiment"]["started"], outcome["experiment"]
        else:
            print(f"the retrained model was not blessed; no challenger: {outcome['experiment']}")

        # A second drift inside the cool-down (a new payment type on most trips): its alert
        # reaches the hook, and the guard refuses it, saying why.
        since = time.time()
        _drift(settings, tmp_path, seeds=(33, 34),
               mutate=lambda f: f.__setitem__("payment_type", "Mobile Wallet"))

        def refused() -> dict | None:
            alerts = _received(settings, "TaxiFeatureDrift", since, feature="payment_type")
            refusal = guard.state()["last_refusal"] or {}
            ids = {a["id"] for a in alerts}
            return refusal if refusal.get("trigger", {}).get("alert_id") in ids else None

        assert wait_for(refused, ALERT_DEADLINE_S, 1.0), (
            f"no refused payment_type drift alert: {_received(settings, 'TaxiFeatureDrift', since)}, "
            f"{guard.state()['last_refusal']}")
        state = guard.state()
        assert "cool-down" in state["last_refusal"]["reason"], state["last_refusal"]
        assert len(state["runs"]) == 1
    finally:
        # Clean trips: the drift counters fall back to 0 and the drift alerts resolve.
        _drift(settings, tmp_path, seeds=(35, 36))
        token = security.read_token(settings)
        exp = (outcome or {}).get("experiment") or {}
        if exp.get("started") and exp.get("experiment_id"):
            httpx.post(f"{settings.gateway_url}/experiments/{exp['experiment_id']}/stop", timeout=10,
                       headers={"Authorization": f"Bearer {token}"})
        if models.by_alias(settings.mlflow_tracking_uri, settings.model_name, models.CHALLENGER):
            client.delete_registered_model_alias(settings.model_name, models.CHALLENGER)
        restore_pipeline_metrics(settings, trained)  # later tests read the session run's figures
        now = models.by_alias(settings.mlflow_tracking_uri, settings.model_name, models.CHAMPION)
        assert now is not None and now.version == champion.version, "the retrain moved the champion"
