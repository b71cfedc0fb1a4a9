"""Rollout core without services: spec validation, the store, the sequential test, the tracker."""

from __future__ import annotations

import threading
import warnings

import numpy as np
import pytest
from pydantic import ValidationError

from taxi_mlops.rollout.experiment import Experiment, ExperimentSpec
from taxi_mlops.rollout.sequential import SequentialTest, outcome
from taxi_mlops.rollout.store import ExperimentConflict, RolloutStore
from taxi_mlops.rollout.tracker import ExperimentTracker, experiment_status
from taxi_mlops.settings import Settings


def _spec(**kw) -> ExperimentSpec:
    return ExperimentSpec(model_name="m", **kw)


def _experiment(**kw) -> Experiment:
    return Experiment(spec=_spec(**kw), control_version="1", treatment_version="2")


def _error_fields(exc: ValidationError) -> set[str]:
    return {".".join(str(p) for p in e["loc"]) for e in exc.errors()}


# ---- spec -------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad, field", [
    ({"split": {"control": 0.7, "treatment": 0.7}}, "split"),
    ({"split": {"control": 0.5, "variant_b": 0.5}}, "split"),
    ({"split": {"control": 1.0, "treatment": 0.0}}, "split"),
    ({"sticky_key": "not_a_field"}, "sticky_key"),
    ({"sticky_key": "tips"}, "sticky_key"),
    ({"alpha": 0.0}, "alpha"),
    ({"alpha": 0.6}, "alpha"),
    ({"min_labels": 5}, "min_labels"),
    ({"metric": "auc"}, "metric"),
    ({"max_labels": 30}, "max_labels"),
])
def test_spec_errors_name_the_field(bad, field):
    with pytest.raises(ValidationError) as info:
        _spec(**bad)
    assert _error_fields(info.value) == {field}
    if field == "split":
        assert "split" in str(info.value)


def test_spec_defaults_and_sticky_key_context():
    spec = _spec()
    assert (spec.control, spec.treatment, spec.split, spec.sticky_key, spec.metric, spec.alpha,
            spec.min_labels, spec.max_labels, spec.auto_decide) == \
        ("champion", "challenger", {"control": 0.5, "treatment": 0.5}, "trip_id", "accuracy", 0.05,
         30, None, True)
    assert _spec(sticky_key="company").sticky_key == "company"
    spec = ExperimentSpec.model_validate({"model_name": "m", "sticky_key": "rider"},
                                         context={"trip_fields": ["rider"]})
    assert spec.sticky_key == "rider"
    assert _spec(split={"control": 0.9, "treatment": 0.1 + 1e-9}).split["treatment"] == pytest.approx(0.1)


# ---- store ------------------------------------------------------------------------------------
def test_store_create_conflict_get_list(tmp_path):
    store = RolloutStore(tmp_path / "r.sqlite")
    a = store.create(_experiment())
    with pytest.raises(ExperimentConflict, match=a.id):
        store.create(_experiment())
    other = Experiment(spec=ExperimentSpec(model_name="other"), control_version="1", treatment_version="2")
    store.create(other)  # another model: no conflict
    assert store.get(a.id) == a and store.get("nope") is None
    assert store.running("m").id == a.id and store.running("zzz") is None
    assert {e.id for e in store.list()} == {a.id, other.id}
    assert [e.id for e in store.list("m")] == [a.id]
    assert store.update_status(a.id, "stopped")
    b = store.create(_experiment())  # allowed once a is no longer running
    assert store.running("m").id == b.id


def test_store_status_changes_once(tmp_path):
    store = RolloutStore(tmp_path / "r.sqlite")
    exp = store.create(_experiment())
    results = []
    threads = [threading.Thread(target=lambda s=s: results.append(
        store.update_status(exp.id, s, {"by": s}))) for s in ("promoted", "rolled_back", "stopped")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False, False, True]
    stored = store.get(exp.id)
    assert stored.status in ("promoted", "rolled_back", "stopped")
    assert stored.decision == {"by": stored.status} and stored.decided_at is not None
    assert not store.update_status(exp.id, "promoted")
    assert not store.update_status("nope", "promoted")


def test_store_observations_are_idempotent_across_restarts(tmp_path):
    path = tmp_path / "r.sqlite"
    store = RolloutStore(path)
    assert store.add_observation("e", "t1", "control", "1", 0.8, 1, 1.0, ts=1.0)
    assert store.add_observation("e", "t2", "treatment", "2", 0.3, 1, 0.0, ts=2.0)
    assert not store.add_observation("e", "t1", "control", "1", 0.8, 1, 1.0)
    again = RolloutStore(path)  # a restarted process
    assert not again.add_observation("e", "t2", "treatment", "2", 0.3, 1, 0.0)
    assert again.add_observation("other", "t1", "control", "1", 0.8, 1, 1.0)
    rows = again.observations("e")
    assert [r["trip_id"] for r in rows] == ["t1", "t2"]
    assert rows[1] | {"seq": 0} == {"experiment_id": "e", "trip_id": "t2", "variant": "treatment",
                                    "model_version": "2", "probability": 0.3, "label": 1,
                                    "outcome": 0.0, "ts": 2.0, "seq": 0}
    assert [r["trip_id"] for r in again.observations("e", after_seq=rows[0]["seq"])] == ["t2"]
    assert again.count_observations("e") == {"control": 1, "treatment": 1}


def test_store_policy_and_changed_marker(tmp_path):
    store = RolloutStore(tmp_path / "r.sqlite")
    assert store.get_policy() is None
    m0 = store.changed_marker()
    store.set_policy({"mode": "split", "weights": {"1": 0.9, "2": 0.1}})
    m1 = store.changed_marker()
    assert m1 != m0 and store.get_policy() == {"mode": "split", "weights": {"1": 0.9, "2": 0.1}}
    store.add_observation("e", "t1", "control", "1", 0.8, 1, 1.0)
    assert store.changed_marker() == m1  # observations are not routing changes
    exp = store.create(_experiment())
    m2 = store.changed_marker()
    assert m2 != m1
    store.update_status(exp.id, "stopped")
    assert store.changed_marker() != m2
    assert RolloutStore(tmp_path / "r.sqlite").changed_marker() == store.changed_marker()


# ---- sequential test ----------------------------------------------------------------------------
def _run(test: SequentialTest, p_control: float, p_treatment: float, n: int, seed: int):
    rng = np.random.default_rng(seed)
    decision = test.decision()
    for _ in range(n):
        variant = "treatment" if rng.random() < 0.5 else "control"
        p = p_treatment if variant == "treatment" else p_control
        test.add(variant, 0.9, int(rng.random() < p))  # prob 0.9: correct iff label 1
        decision = test.decision()
        if decision.action != "continue":
            break
    return decision


def test_outcomes_higher_is_better():
    assert outcome("accuracy", 0.7, 1) == 1.0 and outcome("accuracy", 0.7, 0) == 0.0
    assert outcome("accuracy", 0.5, 1) == 1.0 and outcome("accuracy", 0.49, 0) == 1.0
    assert outcome("log_loss", 0.9, 1) > outcome("log_loss", 0.6, 1)
    assert outcome("log_loss", 1.0, 0) == pytest.approx(np.log(1e-6))  # clipped, finite


def test_clearly_better_treatment_is_promoted():
    d = _run(SequentialTest("accuracy", 0.05, 30), 0.6, 0.95, 5000, seed=1)
    assert d.action == "promote" and d.ci_low > 0 and d.effect > 0, d
    assert d.n_control >= 30 and d.n_treatment >= 30
    assert "better" in d.reason


def test_clearly_worse_treatment_is_rolled_back():
    d = _run(SequentialTest("log_loss", 0.05, 30), 0.95, 0.6, 5000, seed=2)
    assert d.action == "rollback" and d.ci_high < 0, d
    assert "worse" in d.reason


def test_aa_continues_over_a_short_run():
    for seed in range(5):
        d = _run(SequentialTest("accuracy", 0.05, 30), 0.78, 0.78, 600, seed=seed)
        assert d.action == "continue", d
        assert d.ci_low < 0 < d.ci_high


def test_min_labels_is_respected():
    test = SequentialTest("accuracy", 0.05, min_labels=50)
    for _ in range(200):
        test.add("treatment", 0.9, 1)  # perfect treatment ...
    for _ in range(49):
        test.add("control", 0.9, 0)  # ... and a control that is always wrong, one label short
    d = test.decision()
    assert d.action == "continue" and "50 labels per arm" in d.reason and d.ci_low is None
    test.add("control", 0.9, 0)
    # every outcome is identical within each arm: no variance estimate, still no decision
    assert test.decision().action == "continue"
    test.add("control", 0.9, 1)
    assert test.decision().action == "promote"


def test_degenerate_stats_never_warn_or_decide():
    test = SequentialTest("accuracy", 0.05, min_labels=10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for i in range(100):
            test.add("control" if i % 2 else "treatment", 0.9, 1)
        d = test.decision()
    assert d.action == "continue" and d.p_value is None
    assert d.to_dict()["ci_low"] is None


# ---- tracker ------------------------------------------------------------------------------------
def _feed(tracker, exp, start, n, seed, p_control=0.6, p_treatment=0.95):
    rng = np.random.default_rng(seed)
    last = None
    for i in range(start, start + n):
        variant = "treatment" if rng.random() < 0.5 else "control"
        p = p_treatment if variant == "treatment" else p_control
        version = exp.version_of(variant)
        last = tracker.observe(f"trip-{i}", exp.id, variant, version, 0.9, int(rng.random() < p), ts=i)
    return last


def test_tracker_rebuilds_from_the_store_without_double_counting(tmp_path):
    settings = Settings(state_dir=tmp_path)
    store = RolloutStore(tmp_path / "r.sqlite")
    exp = store.create(_experiment(min_labels=30))
    decided = []
    tracker = ExperimentTracker(settings, store, decide=lambda e, d: decided.append((e, d)))
    first = _feed(tracker, exp, 0, 40, seed=3)
    assert first.action == "continue"
    # a restart: a new tracker on the same db; the last 10 labels are redelivered
    restarted = ExperimentTracker(settings, RolloutStore(tmp_path / "r.sqlite"),
                                  decide=lambda e, d: decided.append((e, d)))
    assert _feed(restarted, exp, 30, 10, seed=99) is None  # duplicates: not counted
    assert restarted.counts["duplicates"] == 10
    d = _feed(restarted, exp, 40, 1, seed=4)
    assert d.n_control + d.n_treatment == 41
    # wrong version for the arm, unknown experiment: ignored
    assert restarted.observe("x-1", exp.id, "control", "7", 0.9, 1) is None
    assert restarted.observe("x-2", "no-such", "control", "1", 0.9, 1) is None
    # keep going until the clearly better treatment is promoted, once
    for start in range(41, 5000, 50):
        _feed(restarted, exp, start, 50, seed=start)
        if decided:
            break
    assert len(decided) == 1
    experiment, decision = decided[0]
    assert experiment.status == "promoted" and decision.action == "promote"
    stored = store.get(exp.id)
    assert stored.status == "promoted" and stored.decision["action"] == "promote"
    assert tracker.observe("late", exp.id, "control", "1", 0.9, 1) is None  # decided: ignored
    status = experiment_status(store, stored)
    n = len(store.observations(exp.id))
    assert status["test"]["n_control"] + status["test"]["n_treatment"] == n
    assert status["status"] == "promoted" and status["test"]["ci_low"] > 0
    assert restarted.status(exp.id)["decision"]["action"] == "promote"


def test_tracker_max_labels_stops_inconclusive(tmp_path):
    store = RolloutStore(tmp_path / "r.sqlite")
    exp = store.create(_experiment(min_labels=10, max_labels=60))
    decided = []
    tracker = ExperimentTracker(Settings(state_dir=tmp_path), store,
                                decide=lambda e, d: decided.append(e.status))
    _feed(tracker, exp, 0, 80, seed=5, p_control=0.78, p_treatment=0.78)
    assert decided == ["inconclusive"]
    assert store.get(exp.id).status == "inconclusive"
    assert len(store.observations(exp.id)) == 60


def test_tracker_without_auto_decide_only_reports(tmp_path):
    store = RolloutStore(tmp_path / "r.sqlite")
    exp = store.create(_experiment(auto_decide=False))
    decided = []
    tracker = ExperimentTracker(Settings(state_dir=tmp_path), store,
                                decide=lambda e, d: decided.append(e))
    d = _feed(tracker, exp, 0, 2000, seed=6)
    assert d.action == "promote" and decided == [] and store.get(exp.id).status == "running"


def test_store_concurrent_writers_count_each_trip_once(tmp_path):
    """Several processes' worth of writers (threads with their own connections) racing on
    overlapping trips: every trip is stored exactly once."""
    path = tmp_path / "r.sqlite"
    RolloutStore(path)
    inserted = []

    def writer(offset: int) -> None:
        store = RolloutStore(path)
        inserted.append(sum(store.add_observation("e", f"t{(offset + i) % 300}", "control", "1",
                                                  0.8, 1, 1.0) for i in range(200)))

    threads = [threading.Thread(target=writer, args=(k * 50,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(inserted) == len(RolloutStore(path).observations("e")) == 300


def test_start_and_stop_experiment_resolve_versions_once(tmp_path, monkeypatch):
    from taxi_mlops.rollout import actions

    aliases = {"champion": "1", "challenger": "2"}
    monkeypatch.setattr(actions, "resolve", lambda settings, target, model_name=None:
                        aliases.get(target, target))
    recorded = []
    monkeypatch.setattr(actions, "record_experiment_event",
                        lambda settings, exp, action, **kw: recorded.append((exp.status, action)) or "ok")
    settings, store = Settings(state_dir=tmp_path), RolloutStore(tmp_path / "r.sqlite")
    exp, _ = actions.start_experiment(settings, store, _spec(), actor="cli")
    assert (exp.control_version, exp.treatment_version, exp.status) == ("1", "2", "running")
    aliases["challenger"] = "3"  # an alias moving later does not change the running experiment
    assert store.get(exp.id).treatment_version == "2"
    with pytest.raises(ExperimentConflict):
        actions.start_experiment(settings, store, _spec(), actor="cli")
    stopped, _ = actions.stop_experiment(settings, store, exp.id, actor="cli", reason="enough")
    assert stopped.status == "stopped" and stopped.decision["reason"] == "enough"
    with pytest.raises(actions.ActionRefused):
        actions.stop_experiment(settings, store, exp.id, actor="cli")
    with pytest.raises(actions.UnknownExperiment):
        actions.stop_experiment(settings, store, "nope", actor="cli")
    with pytest.raises(actions.ActionRefused, match="both version 1"):
        actions.start_experiment(settings, store, _spec(treatment="1"), actor="cli")
    assert recorded == [("running", "experiment_started"), ("stopped", "experiment_stopped")]


def test_label_join_metrics_show_each_experiment_arm(tmp_path):
    """The label join's /metrics: labels and mean outcome per arm, the effect and its interval."""
    from types import SimpleNamespace

    from taxi_mlops.streaming.label_join import JoinState
    from taxi_mlops.streaming.metrics import LabelJoinMetrics

    store = RolloutStore(tmp_path / "r.sqlite")
    exp = store.create(_experiment(min_labels=30))
    tracker = ExperimentTracker(Settings(state_dir=tmp_path), store, decide=lambda e, d: None)
    _feed(tracker, exp, 0, 80, seed=5)
    worker = SimpleNamespace(stats={"labels": 0, "predictions": 0, "joined": 0},
                             state=JoinState(window_s=60), tracker=tracker)
    families = {f.name: f for f in LabelJoinMetrics(worker).collect()}
    arms = {s.labels["variant"]: s.value for s in families["taxi_experiment_labels"].samples}
    assert sum(arms.values()) == 80 and set(arms) == {"control", "treatment"}
    assert {s.labels["model_version"] for s in families["taxi_experiment_labels"].samples} == {"1", "2"}
    bounds = {s.labels["bound"] for s in families["taxi_experiment_effect"].samples}
    assert "estimate" in bounds
