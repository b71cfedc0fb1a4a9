"""The closed loop: an alert (or a person, or a schedule) -> guard -> fresh data version ->
training -> the trigger recorded on the new model -> champion vs challenger experiment.

``trigger`` runs it in the caller's thread and returns the outcome (also stored by the
guard, so ``taxi-mlops status`` shows it). ``on_alert`` is the alert receiver's hook
(``--hook TaxiFeatureDrift=taxi_mlops.retrain.loop:on_alert``): it filters and hands the work
to a background thread, because a webhook must answer in milliseconds and a retrain takes
minutes. Nothing here promotes a model: the experiment's sequential test decides that.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Callable

from taxi_mlops.retrain import data as retrain_data
from taxi_mlops.retrain.guard import Guard
from taxi_mlops.settings import Settings

log = logging.getLogger("taxi_mlops.retrain")

HTTP_TIMEOUT_S = 10.0
TAG_PREFIX = "retrain."


def _trigger_info(reason: str, alert: dict | None) -> dict:
    info = {"reason": reason}
    if alert:
        info.update({"alert_id": alert.get("id"), "alertname": alert.get("alertname"),
                     "fingerprint": alert.get("fingerprint"), "starts_at": alert.get("starts_at"),
                     "summary": alert.get("summary")})
    return info


def trigger(settings: Settings, reason: str, alert: dict | None = None,
            progress: Callable[[str], None] = lambda _m: None, family: str = "dnn") -> dict:
    """Run the loop once if the guard allows it -> the outcome (``started`` False: refused,
    ``reason`` says why; ``error`` set: a step failed, the rest was skipped)."""
    from taxi_mlops.pipeline import launcher

    info = _trigger_info(reason, alert)
    guard = Guard.from_settings(settings)
    run_id, why = guard.try_start(info)
    if run_id is None:
        log.info("retrain refused: %s", why, extra={"trigger": reason})
        progress(f"refused: {why}")
        return {"started": False, "reason": why, "trigger": info}
    log.info("retrain %s started", run_id, extra={"trigger": reason, "alert_id": info.get("alert_id")})
    progress(f"retrain {run_id} started ({reason})")
    outcome: dict = {"started": True, "run_id": run_id, "trigger": info}
    wall_start, t0 = time.time(), time.monotonic()
    try:
        step = time.monotonic()
        version = retrain_data.new_version(settings, progress)
        outcome["data"] = {**version.as_dict(), "seconds": round(time.monotonic() - step, 1)}
        progress(f"data version {version.md5} ({version.rows_appended} new rows, {version.rows_total} total)")

        def on_event(event: dict) -> None:
            if event.get("state") == "finished" and "component" in event:
                progress(f"  ✓ {event['component']}")

        step = time.monotonic()
        result = launcher.run_training(settings.model_copy(update={"data_csv": Path(version.csv)}),
                                       progress=on_event, family=family)
        outcome["training"] = {"seconds": round(time.monotonic() - step, 1), "log": result.log_path,
                               "data_version": result.data_version, "eval": result.eval_metrics}
        progress(f"training finished in {outcome['training']['seconds']:.0f}s")
        tags = {"retrain.trigger": (info.get("alertname") or "manual") if alert else reason,
                "retrain.alert_id": str(info.get("alert_id") or ""), "retrain.reason": reason,
                "retrain.data_md5": version.md5, "retrain.run_id": run_id}
        outcome["mlflow"] = record_in_mlflow(settings, wall_start, version.md5, tags)
        outcome["mlmd"] = record_in_mlmd(settings, outcome["mlflow"].get("mlflow_run_id"), tags)
        challenger = outcome["mlflow"].get("challenger_version")
        if challenger:
            outcome["experiment"] = start_experiment(settings, challenger, reason)
            progress(f"experiment: {outcome['experiment']}")
        else:
            outcome["experiment"] = {"started": False, "why": "no new challenger (the model was not blessed)"}
            progress("no new challenger: the new model was not blessed, nothing to experiment with")
    except Exception as exc:  # noqa: BLE001 - the outcome records it; the guard must finish
        outcome["error"] = f"{type(exc).__name__}: {exc}"
        log.exception("retrain %s failed", run_id)
        progress(f"failed: {outcome['error']}")
    finally:
        outcome["seconds"] = round(time.monotonic() - t0, 1)
        guard.finish(run_id, outcome)
    log.info("retrain %s %s in %.0fs", run_id, "failed" if "error" in outcome else "finished",
             outcome["seconds"])
    return outcome


def record_in_mlflow(settings: Settings, since: float, md5: str, tags: dict) -> dict:
    """Tag the run this retrain trained (newest run on ``md5`` started after ``since``) and its
    model version; report whether that version now holds ``challenger``."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    from taxi_mlops.registry import models

    client = models.client(settings.mlflow_tracking_uri)
    experiment_ids = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiment_ids, filter_string=(
        f"tags.dvc_data_version = '{md5}' and attributes.start_time >= {int(since * 1000) - 1000}"),
        order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        return {"error": f"no MLflow run on data version {md5} since the retrain started: "
                         "see the pipeline log (MlflowLogger)"}
    run_id = runs[0].info.run_id
    for key, value in tags.items():
        client.set_tag(run_id, key, value)
    out: dict = {"mlflow_run_id": run_id}
    found = client.search_model_versions(f"run_id = '{run_id}'")
    for mv in found:
        for key, value in tags.items():
            client.set_model_version_tag(mv.name, mv.version, key, value)
        out["model_version"] = mv.version
        if models.CHALLENGER in (client.get_model_version(mv.name, mv.version).aliases or []):
            out["challenger_version"] = mv.version
    return out


_MLMD_SCRIPT = """
import json, sys
from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2
path, run_id, tags = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
config = metadata_store_pb2.ConnectionConfig()
config.sqlite.filename_uri = path
config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READWRITE
store = metadata_store.MetadataStore(config)
for artifact in sorted(store.get_artifacts_by_type("MlflowModelVersion"), key=lambda a: -a.id):
    prop = artifact.properties.get("run_id") or artifact.custom_properties.get("run_id")
    if prop is not None and prop.string_value == run_id:
        for key, value in tags.items():
            artifact.custom_properties[key].string_value = value
        store.put_artifacts([artifact])
        print(json.dumps({"recorded": True, "artifact_id": artifact.id}))
        break
else:
    print(json.dumps({"recorded": False, "why": "no MlflowModelVersion artifact with run_id " + run_id}))
"""


def record_in_mlmd(settings: Settings, mlflow_run_id: str | None, tags: dict) -> dict:
    """The trigger as custom properties (``retrain_*``) of the run's ``MlflowModelVersion``
    artifact in ML Metadata, so lineage shows why a model exists. Written by the TFX
    environment's Python: its ml_metadata wrote the store (the platform's is another version,
    and a writer of another version must not touch the schema). Best effort: a report."""
    import json
    import subprocess

    if not mlflow_run_id:
        return {"recorded": False, "why": "no MLflow run found"}
    props = {key.replace(".", "_"): str(value) for key, value in tags.items()}
    try:
        out = subprocess.run([str(settings.resolved_pipeline_python()), "-c", _MLMD_SCRIPT,
                              str(settings.mlmd_path), mlflow_run_id, json.dumps(props)],
                             capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            raise RuntimeError(out.stderr.strip()[-500:])
        return json.loads(out.stdout.strip().splitlines()[-1])
    except Exception as exc:  # noqa: BLE001
        log.warning("retrain trigger not recorded in ML Metadata: %s", exc)
        return {"recorded": False, "why": f"{type(exc).__name__}: {exc}"}


def start_experiment(settings: Settings, challenger_version: str, reason: str) -> dict:
    """champion vs the new challenger through the gateway (the same path a person takes, so
    it is audited on taxi.model.events). A gateway that is down is recorded, not fatal: the
    challenger is registered and `taxi-mlops experiment start` can begin it later."""
    import httpx

    from taxi_mlops import security

    token = security.read_token(settings)
    if not token:
        return {"started": False, "why": f"no admin token ({settings.admin_token_file}): start the stack "
                                         "with `taxi-mlops up`, then `taxi-mlops experiment start`"}
    body = {"control": "champion", "treatment": str(challenger_version)}
    try:
        r = httpx.post(f"{settings.gateway_url}/experiments", json=body, timeout=HTTP_TIMEOUT_S,
                       headers={"Authorization": f"Bearer {token}"})
    except httpx.HTTPError as exc:
        return {"started": False, "why": f"gateway unreachable at {settings.gateway_url} ({exc}): "
                                         "start it, then `taxi-mlops experiment start`"}
    if r.status_code != 201:
        return {"started": False, "why": f"gateway answered {r.status_code}: {r.text[:400]}"}
    exp = r.json()
    return {"started": True, "experiment_id": exp.get("id") or exp.get("experiment_id"),
            "control": body["control"], "treatment": body["treatment"]}


def on_alert(record: dict) -> None:
    """Alert receiver hook: a firing alert named in ``settings.retrain_alerts`` starts the loop
    in a background thread (the guard decides whether it actually runs)."""
    settings = Settings()
    if record.get("status") != "firing" or record.get("alertname") not in settings.retrain_alert_names:
        return
    reason = f"alert {record.get('alertname')} (id {record.get('id')})"
    thread = threading.Thread(target=_run_quietly, args=(settings, reason, record),
                              name=f"retrain-{record.get('id')}", daemon=True)
    thread.start()


def _run_quietly(settings: Settings, reason: str, record: dict) -> None:
    try:
        trigger(settings, reason, alert=record, progress=lambda m: log.info("retrain: %s", m))
    except Exception:  # noqa: BLE001 - a thread's exception would vanish otherwise
        log.exception("retrain loop crashed", extra={"alertname": record.get("alertname")})
