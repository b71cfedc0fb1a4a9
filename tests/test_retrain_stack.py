"""The closed loop on a real stack: a firing TaxiFeatureDrift webhook -> the receiver's hook ->
a new DVC data version from the stream -> a training run tagged with the alert -> (if
blessed) a challenger and a champion-vs-challenger experiment; a second alert is refused by
the cool-down. Leaves the champion alone (other session tests rely on it)."""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timezone

import httpx
import pytest
import yaml

from taxi_mlops import paths, security
from taxi_mlops.registry import models
from taxi_mlops.retrain.guard import Guard
from taxi_mlops.stack.process import wait_for
from taxi_mlops.streaming import replay
from tests.conftest import restore_pipeline_metrics

pytestmark = pytest.mark.slow

RETRAIN_DEADLINE_S = 480.0


def _webhook(fingerprint: str) -> dict:
    now = datetime.now(timezone.utc).isoformat()
    return {
        "version": "4", "status": "firing", "receiver": "taxi-receiver", "groupKey": "{}:{}",
        "alerts": [{
            "status": "firing", "fingerprint": fingerprint, "startsAt": now,
            "endsAt": "0001-01-01T00:00:00Z",
            "labels": {"alertname": "TaxiFeatureDrift", "severity": "warning", "feature": "fare"},
            "annotations": {"summary": "fare drifted (retrain stack test)"},
        }],
    }


def _post_alert(settings, fingerprint: str) -> int:
    r = httpx.post(f"{settings.alert_receiver_url}/alerts", json=_webhook(fingerprint), timeout=10)
    assert r.status_code == 200, r.text
    return r.json()["ids"][0]


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


def test_alert_retrains_on_fresh_data_and_starts_experiment(stack, settings, champion, trained, loop_on):
    client = models.client(settings.mlflow_tracking_uri)
    guard = Guard.from_settings(settings)
    assert guard.state()["runs"] == [], "a retrain ran before this test: the loop fired on its own"
    # Labelled trips on the stream: the new data version's rows.
    sent = replay.replay(settings, speed="max", retime=True, limit=120, progress=lambda _m: None,
                         id_prefix=f"retrain-{uuid.uuid4().hex[:6]}-")
    assert sent, sent
    outcome = None
    try:
        alert_id = _post_alert(settings, f"retrain-{uuid.uuid4().hex[:8]}")
        t0 = time.monotonic()

        def finished() -> bool:
            runs = guard.state()["runs"]
            return bool(runs) and runs[0]["status"] in ("finished", "failed")

        assert wait_for(finished, RETRAIN_DEADLINE_S, interval_s=2.0), (
            f"no finished retrain within {RETRAIN_DEADLINE_S:.0f}s: {guard.state()}")
        print(f"\nretrain triggered by alert {alert_id} finished after {time.monotonic() - t0:.0f}s")
        state = guard.state()
        assert len(state["runs"]) == 1, state
        run = state["runs"][0]
        outcome = run["outcome"]
        assert run["status"] == "finished", outcome
        assert run["trigger"]["alert_id"] == alert_id

        # A new DVC data version, appended to a copy (the repository's CSV is untouched).
        repo_md5 = yaml.safe_load((paths.PROJECT_ROOT / "data" / "chicago_taxi" / "data.csv.dvc")
                                  .read_text())["outs"][0]["md5"]
        data = outcome["data"]
        assert data["md5"] != repo_md5 and data["rows_appended"] > 0, data
        assert (settings.state_dir / "retrain" / "dvc-remote" / "files" / "md5" / data["md5"][:2]
                / data["md5"][2:]).exists(), "dvc push did not reach the local remote"

        # The MLflow run trained on it carries the trigger.
        mlflow_run = client.get_run(outcome["mlflow"]["mlflow_run_id"])
        assert mlflow_run.data.tags["retrain.alert_id"] == str(alert_id)
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

        # A second alert now: the cool-down refuses it, and says so.
        second_id = _post_alert(settings, f"retrain-{uuid.uuid4().hex[:8]}")
        assert wait_for(lambda: (guard.state()["last_refusal"] or {}).get("trigger", {}).get("alert_id")
                        == second_id, 30), guard.state()
        state = guard.state()
        assert "cool-down" in state["last_refusal"]["reason"], state["last_refusal"]
        assert len(state["runs"]) == 1
    finally:
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
