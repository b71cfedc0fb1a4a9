"""The rollout store on PostgreSQL (``TAXI_ROLLOUT_DB_URI``): gateway pods that share no disk
see one set of experiments and one routing policy, and its guarantees hold across processes,
as they do on SQLite (tests/unit/test_rollout_unit.py): one running experiment per model, a
decision made once whoever races for it, a redelivered label counted once."""

from __future__ import annotations

import multiprocessing

import pytest

from taxi_mlops.rollout.experiment import Experiment, ExperimentSpec
from taxi_mlops.rollout.store import ExperimentConflict, RolloutStore
from taxi_mlops.settings import Settings

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def rollout_uri(postgres):
    """A database MLflow's tables could share: ours live in their own schema."""
    uri = postgres("rollout")
    import psycopg

    with psycopg.connect(uri, connect_timeout=10) as conn:  # MLflow has a table of that name
        conn.execute("CREATE TABLE experiments (experiment_id INTEGER PRIMARY KEY, name TEXT)")
    return uri


def _experiment(exp_id: str, model: str = "tips") -> Experiment:
    return Experiment(id=exp_id, spec=ExperimentSpec(model_name=model), control_version="1",
                      treatment_version="2")


def _decide(uri: str, exp_id: str, queue) -> None:
    queue.put(RolloutStore(uri).update_status(exp_id, "promoted", {"action": "promote"}))


def test_two_pods_share_experiments_and_routing(rollout_uri, tmp_path):
    settings = Settings(state_dir=tmp_path, rollout_db_uri=rollout_uri)
    assert settings.rollout_location == rollout_uri and "postgres" not in str(settings.rollout_db)
    assert "127.0.0.1" not in settings.rollout_store_name  # the URI (a secret) is never shown
    a, b = RolloutStore(settings.rollout_location), RolloutStore(rollout_uri)  # two pods
    marker = b.changed_marker()
    a.create(_experiment("pg-1"))
    assert b.changed_marker() > marker
    assert b.running("tips").id == "pg-1" and [e.id for e in b.list("tips")] == ["pg-1"]
    with pytest.raises(ExperimentConflict, match="pg-1"):
        b.create(_experiment("pg-2"))
    with pytest.raises(ExperimentConflict, match="exists already"):
        b.create(_experiment("pg-1").model_copy(update={"status": "stopped"}))

    policy = {"split": [{"name": "champion", "target": "champion", "weight": 1.0}], "shadow": None}
    a.set_policy(policy)
    assert b.get_policy() == policy

    assert a.add_observation("pg-1", "trip-1", "control", "1", 0.8, 1, 1.0) is True
    assert b.add_observation("pg-1", "trip-1", "control", "1", 0.8, 1, 1.0) is False  # redelivered
    b.add_observation("pg-1", "trip-2", "treatment", "2", 0.3, 0, 1.0)
    rows = a.observations("pg-1")
    assert [r["trip_id"] for r in rows] == ["trip-1", "trip-2"]
    assert a.observations("pg-1", after_seq=rows[0]["seq"])[0]["trip_id"] == "trip-2"
    assert a.count_observations("pg-1") == {"control": 1, "treatment": 1}
    assert abs(rows[0]["ts"] - rows[1]["ts"]) < 60  # a Unix time keeps its seconds (no 4-byte REAL)

    import psycopg  # the rows are in PostgreSQL itself, not in some local file

    with psycopg.connect(rollout_uri, connect_timeout=10) as conn:
        assert conn.execute("SELECT id FROM taxi_rollout.experiments WHERE id = 'pg-1'").fetchone() == ("pg-1",)
        assert conn.execute("SELECT count(*) FROM taxi_rollout.observations").fetchone() == (2,)


def test_a_decision_is_made_once_across_processes(rollout_uri):
    store = RolloutStore(rollout_uri)
    store.create(_experiment("pg-race", model="race"))
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_decide, args=(rollout_uri, "pg-race", queue)) for _ in range(4)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    assert sorted(results) == [False, False, False, True]
    assert store.get("pg-race").status == "promoted" and store.running("race") is None
