"""The prediction store, the restore command and the lineage lookups, without services."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from taxi_mlops import paths
from taxi_mlops.gateway.control import InvalidField, NotFound
from taxi_mlops.gateway.lineage import Lineage, PredictionChain
from taxi_mlops.lineage import restore
from taxi_mlops.lineage.predictions import InvalidQuery, PredictionStore, valid_request_id
from taxi_mlops.settings import Settings
from taxi_mlops.stack.process import free_port
from taxi_mlops.streaming import events

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)


def log(request_id: str, trip_id: str | None = "t-1", p: float = 0.8, version: str = "3",
        at: datetime = T0, **kw) -> dict:
    """A real PredictionLogV2, as the consumer hands it over (model_dump)."""
    return events.PredictionLogV2(
        request_id=request_id, trip_id=trip_id, features={"fare": 9.75, "company": "X"},
        model_name="chicago-taxi-tips", model_version=version, model_alias="champion",
        tip_probability=p, latency_ms=4.2, timestamp=at, variant="control", **kw).model_dump()


def label(trip_id: str, big: bool, tips: float = 3.0) -> dict:
    return events.LabelEventV1(trip_id=trip_id, event_time=T0 + timedelta(minutes=20),
                               pickup_community_area=8, tips=tips, fare=10.0, big_tipper=big).model_dump()


@pytest.fixture
def store(tmp_path) -> PredictionStore:
    s = PredictionStore(tmp_path / "p.sqlite")
    yield s
    s.close()


def test_get_returns_the_logged_fields(store):
    store.write([log("r1", shadow=True, experiment_id="e1")])
    got = store.get("r1")
    assert got.prediction["features"] == {"fare": 9.75, "company": "X"}
    assert got.prediction["shadow"] is True and got.prediction["experiment_id"] == "e1"
    assert got.prediction["timestamp"] == T0.isoformat() and got.prediction["schema_version"] == 2
    assert got.label is None
    assert store.get("nope") is None


def test_label_before_its_prediction_still_joins(store):
    store.write(labels=[label("t-9", big=False)])
    store.write([log("r9", trip_id="t-9", p=0.2)])
    got = store.get("r9")
    assert got.label == {"big_tipper": False, "tips": 3.0, "event_time": (T0 + timedelta(minutes=20)).isoformat(),
                         "correct": True}  # 0.2 < 0.5 and not a big tipper


@pytest.mark.parametrize("p,big,expected", [(0.5, True, True), (0.49, True, False), (0.7, False, False),
                                            (0.1, False, True)])
def test_correct_uses_the_label_joins_threshold(store, p, big, expected):
    store.write([log("r", trip_id="t", p=p)], [label("t", big)])
    assert store.get("r").label["correct"] is expected


def test_redelivery_is_idempotent_and_newest_wins(store):
    first, newer = log("r1", p=0.3, at=T0), log("r1", p=0.9, at=T0 + timedelta(seconds=5))
    store.write([newer])
    store.write([first, first])  # an older, redelivered message arrives late
    assert store.get("r1").prediction["tip_probability"] == 0.9
    store.write(labels=[label("t-1", True), label("t-1", True)])
    assert store.counts() == {"predictions": 1, "labels": 1}


def test_list_filters_and_orders_newest_first(store):
    store.write([log(f"r{i}", trip_id=f"t{i}", version="3" if i % 2 else "4", at=T0 + timedelta(minutes=i))
                 for i in range(10)], [label("t9", True)])
    all_ = store.list(limit=100)
    assert [s.request_id for s in all_] == [f"r{i}" for i in range(9, -1, -1)]
    v3 = store.list(model_version="3", since=T0 + timedelta(minutes=4), limit=2)
    assert [s.request_id for s in v3] == ["r9", "r7"]
    top = v3[0].summary()
    assert top["label_big_tipper"] is True and top["correct"] is True and top["model_version"] == "3"
    assert v3[1].summary()["correct"] is None
    with pytest.raises(InvalidQuery) as exc:
        store.list(limit=0)
    assert exc.value.field == "limit"
    with pytest.raises(InvalidQuery) as exc:
        store.list(since="yesterday")
    assert exc.value.field == "since"


def test_a_reader_sees_the_writers_commits(store, tmp_path):
    reader = PredictionStore(tmp_path / "p.sqlite", readonly=True)
    assert reader.get("r1") is None
    store.write([log("r1")])
    assert reader.get("r1").request_id == "r1"  # WAL: no reopen, no lock
    with pytest.raises(Exception):
        reader.write([log("r2")])  # read-only


@pytest.mark.parametrize("rid,ok", [("abc", True), ("a" * 64 + "-shadow", True), ("req.1_2-3", True),
                                    ("", False), ("a b", False), ("a/b", False), ("ü", False),
                                    ("a" * 73, False), ("x;drop", False)])
def test_request_id_shape_matches_what_the_gateway_can_log(rid, ok):
    assert valid_request_id(rid) is ok


# ---- the restore command ------------------------------------------------------------------------
def _dvc_md5(csv: Path) -> str:
    import yaml

    return yaml.safe_load(csv.with_name(csv.name + ".dvc").read_text())["outs"][0]["md5"]


def test_restore_command_writes_the_projects_data_with_that_md5(tmp_path):
    csv = paths.PROJECT_ROOT / "data" / "chicago_taxi" / "data.csv"
    md5 = _dvc_md5(csv)
    found = restore.restore(md5, [csv.parent], "data.csv")
    assert found.repo == str(paths.PROJECT_ROOT) and found.checked
    assert found.remote == str(paths.PROJECT_ROOT / "data" / "dvc-remote")
    subprocess.run(found.command, shell=True, cwd=tmp_path, check=True, timeout=120, capture_output=True)
    [out] = list(tmp_path.iterdir())
    assert hashlib.md5(out.read_bytes()).hexdigest() == md5


def test_restore_finds_a_retrain_repository_and_refuses_unknown(tmp_path):
    """A retrain-like repository: `dvc init --no-scm`, a local remote, `dvc add` + `dvc push`."""
    from taxi_mlops.retrain import data as retrain_data

    settings = Settings(state_dir=tmp_path / "state")
    root = retrain_data.ensure_repo(settings)
    (root / "data.csv").write_text("a,b\n1,2\n")
    retrain_data.dvc(["add", "-q", "data.csv"], root)
    retrain_data.dvc(["push", "-q"], root)
    md5 = _dvc_md5(root / "data.csv")
    found = restore.restore(md5, [paths.PROJECT_ROOT / "data" / "chicago_taxi", root], "data.csv")
    assert found.repo == str(root) and found.remote == str(retrain_data.remote_dir(settings))
    out = tmp_path / "out"
    out.mkdir()
    (root / "data.csv").write_text("changed\n")  # the workspace moved on; the version did not
    subprocess.run(found.command, shell=True, cwd=out, check=True, timeout=120, capture_output=True)
    assert hashlib.md5(next(out.iterdir()).read_bytes()).hexdigest() == md5
    assert restore.restore("0" * 32, [root]) is None
    with pytest.raises(ValueError):
        restore.restore("not-an-md5", [root])


# ---- the gateway's lookups, with MLflow and ML Metadata absent -------------------------------------
def test_lookup_gives_a_partial_chain_naming_each_missing_backend(tmp_path):
    settings = Settings(state_dir=tmp_path, mlflow_port=free_port(), request_timeout_s=0.5)
    lineage = Lineage(settings)
    with pytest.raises(Exception) as exc:  # no store yet: a 503 naming it, not a 500
        lineage.get("r1")
    assert getattr(exc.value, "dependency", None) == "prediction_store"
    writer = PredictionStore(settings.predictions_db)
    writer.write([log("r1")], [label("t-1", True)])
    chain = lineage.get("r1")
    assert isinstance(chain, PredictionChain)
    body = chain.model_dump()
    assert set(body) == {"request_id", "prediction", "model", "mlflow_run", "pipeline", "data", "label",
                         "errors"}
    assert body["label"]["correct"] is True and body["prediction"]["tip_probability"] == 0.8
    assert body["model"]["version"] == "3" and body["mlflow_run"]["run_id"] is None
    assert any(e.startswith("mlflow: unreachable") for e in body["errors"]), body["errors"]
    assert any(e.startswith("data:") for e in body["errors"]), body["errors"]
    with pytest.raises(NotFound):
        lineage.get("r2")
    with pytest.raises(InvalidField) as bad:
        lineage.get("bad id")
    assert bad.value.field == "request_id"
    with pytest.raises(InvalidField) as bad:
        lineage.list(None, "not-a-time", 10)
    assert bad.value.field == "since"
    listed = lineage.list("3", "2025-12-31T00:00:00Z", 10)
    assert listed.count == 1 and listed.predictions[0].correct is True
    assert lineage.list("4", None, 10).count == 0
    shutil.rmtree(tmp_path / "predictions", ignore_errors=True)


# ---- retention ---------------------------------------------------------------------------------
def test_prune_deletes_old_predictions_and_only_orphaned_old_labels(store):
    old, new = T0, T0 + timedelta(days=40)
    store.write([log("old-1", trip_id="t-old", at=old), log("old-2", trip_id="t-shared", at=old),
                 log("new-1", trip_id="t-new", at=new), log("new-2", trip_id="t-shared", at=new)])
    # Labels stored long ago: one orphaned by the prune, one still referenced by a kept prediction.
    store.write(labels=[label("t-old", True), label("t-shared", False), label("t-new", True)],
                stored_at=old.timestamp())
    # A label stored recently whose prediction has not arrived yet: kept.
    store.write(labels=[label("t-early", True)], stored_at=new.timestamp())

    assert store.prune((old + timedelta(days=1)).timestamp()) == (2, 1)
    assert store.get("old-1") is None and store.get("old-2") is None
    assert store.get("new-2").label["big_tipper"] is False  # its label survived
    assert store.counts() == {"predictions": 2, "labels": 3}
    store.write([log("late", trip_id="t-early", at=new)])
    assert store.get("late").label["big_tipper"] is True


def test_prune_works_in_chunks(store):
    store.write([log(f"r{i}", trip_id=f"t{i}", at=T0 + timedelta(seconds=i)) for i in range(7)])
    assert store.prune((T0 + timedelta(seconds=5)).timestamp(), chunk=2) == (5, 0)
    assert [s.request_id for s in store.list(limit=10)] == ["r6", "r5"]


def test_a_store_made_before_retention_is_migrated(tmp_path):
    import sqlite3

    path = tmp_path / "old.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE labels (trip_id TEXT PRIMARY KEY, big_tipper INTEGER NOT NULL, tips REAL, "
                 "fare REAL, event_time TEXT) WITHOUT ROWID")
    conn.execute("INSERT INTO labels VALUES ('t-1', 1, 3.0, 10.0, NULL)")
    conn.commit()
    conn.close()
    s = PredictionStore(path)
    try:
        # Aged from the migration: a prune of everything older than an hour ago keeps it.
        assert s.prune((datetime.now(timezone.utc) - timedelta(hours=1)).timestamp()) == (0, 0)
        assert s.prune((datetime.now(timezone.utc) + timedelta(hours=1)).timestamp()) == (0, 1)
    finally:
        s.close()


def test_the_worker_prunes_at_start_then_every_interval_and_never_when_off(tmp_path):
    from taxi_mlops.lineage.consumer import PredictionStoreWorker

    settings = Settings(state_dir=tmp_path, kafka_port=free_port(), prediction_retention_days=1,
                        prediction_prune_interval_s=600)
    worker = PredictionStoreWorker(settings)  # no broker needed: nothing is consumed here
    try:
        ancient = datetime.now(timezone.utc) - timedelta(days=3)
        worker.store.write([log("a", at=ancient), log("b", trip_id="t-2", at=ancient)])
        assert worker.prune_if_due(now=1000.0) == (2, 0)
        worker.store.write([log("c", at=ancient)])
        assert worker.prune_if_due(now=1500.0) == (0, 0)  # not due yet
        assert worker.prune_if_due(now=1601.0) == (1, 0)
        assert worker.stats["pruned_predictions"] == 3
        worker.settings = Settings(state_dir=tmp_path, kafka_port=settings.kafka_port,
                                   prediction_retention_days=0)
        worker.store.write([log("d", at=ancient)])
        assert worker.prune_if_due(now=10_000.0) == (0, 0)
        assert worker.store.get("d") is not None
    finally:
        worker.consumer.close()
        worker.store.close()
