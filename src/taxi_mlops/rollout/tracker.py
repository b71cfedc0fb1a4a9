"""Joined labels -> the experiment's sequential test -> a decision, acted on once.

The label-join worker calls ``ExperimentTracker.observe`` for every label whose prediction was
served under an experiment. Every observation goes to the store first (idempotent: a
redelivered label is counted once), and the in-memory test *catches up from the store* by
sequence number rather than trusting its own calls: after a restart it replays what was
stored, and with several label-join processes each one sees what the others inserted. The
decision is taken once: ``RolloutStore.update_status`` only moves a running experiment, so of
two processes racing, one wins and only that one acts on the registry.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any, Callable

from taxi_mlops.rollout import actions
from taxi_mlops.rollout.experiment import VARIANTS, Experiment
from taxi_mlops.rollout.sequential import Decision, SequentialTest, outcome
from taxi_mlops.rollout.store import RolloutStore
from taxi_mlops.settings import Settings

log = logging.getLogger(__name__)

DecideCallback = Callable[[Experiment, Decision], Any]
ACTOR = "sequential-test"


class _Replay:
    """A ``SequentialTest`` fed from the store's observations, up to ``last_seq``."""

    def __init__(self, experiment: Experiment):
        spec = experiment.spec
        self.test = SequentialTest(spec.metric, spec.alpha, spec.min_labels)
        self.last_seq = 0
        self.lock = threading.Lock()

    def catch_up(self, store: RolloutStore, experiment_id: str) -> SequentialTest:
        with self.lock:
            for row in store.observations(experiment_id, after_seq=self.last_seq):
                self.test.add_outcome(row["variant"], row["outcome"])
                self.last_seq = row["seq"]
        return self.test


def _status_dict(experiment: Experiment, test: SequentialTest) -> dict:
    d = test.decision()
    return {
        "experiment_id": experiment.id, "model_name": experiment.model_name,
        "status": experiment.status,
        "control_version": experiment.control_version,
        "treatment_version": experiment.treatment_version,
        "metric": experiment.spec.metric, "alpha": experiment.spec.alpha,
        "min_labels": experiment.spec.min_labels, "max_labels": experiment.spec.max_labels,
        "split": experiment.spec.split, "auto_decide": experiment.spec.auto_decide,
        "created_at": experiment.created_at.isoformat(),
        "decided_at": experiment.decided_at.isoformat() if experiment.decided_at else None,
        "test": d.to_dict(),  # what the test says now (counts, means, effect, CI, p-value, action)
        "decision": experiment.decision,  # what was decided and stored (None while running)
        # The registry move follows the decision: applied once its audit event is recorded
        # (event_id), or failed (action_error: apply it by hand).
        "applied": bool(experiment.decision and "event_id" in experiment.decision),
        "action_error": (experiment.decision or {}).get("action_error"),
    }


_status_cache: dict[tuple[str, str], _Replay] = {}
_status_lock = threading.Lock()


def experiment_status(store: RolloutStore, experiment: Experiment) -> dict:
    """The experiment's state from the store alone (the gateway's GET endpoint): counts, means,
    effect, anytime-valid CI, p-value, the test's current action, and the stored decision.
    Incremental per process (only new observations are replayed), so polling it is cheap."""
    key = (str(Path(store.path).resolve()), experiment.id)
    with _status_lock:
        replay = _status_cache.get(key)
        if replay is None:
            replay = _status_cache[key] = _Replay(experiment)
    return _status_dict(experiment, replay.catch_up(store, experiment.id))


def default_decide(settings: Settings) -> DecideCallback:
    """Act on a decision in the registry: promote the treatment, or retire it; an inconclusive
    experiment only gets its ``experiment_stopped`` event."""

    def decide(experiment: Experiment, decision: Decision) -> actions.ActionResult:
        reason = f"experiment {experiment.id}: {decision.reason}"
        kw = dict(actor=ACTOR, reason=reason, experiment_id=experiment.id,
                  model_name=experiment.model_name)
        if experiment.status == "promoted":
            return actions.promote(settings, experiment.treatment_version, **kw)
        if experiment.status == "rolled_back":
            return actions.retire(settings, experiment.treatment_version, **kw)
        return actions.record_experiment_event(settings, experiment, "experiment_stopped",
                                               actor=ACTOR, reason=reason)

    return decide


class ExperimentTracker:
    """Per-experiment sequential tests for the label-join worker (thread-safe)."""

    def __init__(self, settings: Settings, store: RolloutStore | None = None,
                 decide: DecideCallback | None = None):
        self.settings = settings
        self.store = store or RolloutStore(settings.rollout_location)
        self.decide = decide or default_decide(settings)
        self._replays: dict[str, _Replay] = {}
        self._experiments: dict[str, Experiment | None] = {}
        self._marker: int | None = None
        self._lock = threading.Lock()
        self.counts = {"observed": 0, "duplicates": 0, "ignored": 0, "decisions": 0, "action_errors": 0}

    def _experiment(self, experiment_id: str) -> Experiment | None:
        """Cached, reloaded whenever the store's change marker moved (a CLI stop, a decision by
        another process)."""
        marker = self.store.changed_marker()
        with self._lock:
            if marker != self._marker:
                self._experiments.clear()
                self._marker = marker
            if experiment_id not in self._experiments:
                self._experiments[experiment_id] = self.store.get(experiment_id)
            return self._experiments[experiment_id]

    def _replay(self, experiment: Experiment) -> _Replay:
        with self._lock:
            replay = self._replays.get(experiment.id)
            if replay is None:
                replay = self._replays[experiment.id] = _Replay(experiment)
            return replay

    def observe(self, trip_id: str, experiment_id: str, variant: str, model_version: str,
                probability: float, label: int, ts: float | None = None) -> Decision | None:
        """One joined label. Returns the test's decision after it, or None when the label was
        not counted (unknown or finished experiment, unknown variant, a version that is not the
        arm's, or a duplicate)."""
        experiment = self._experiment(experiment_id)
        if experiment is None or experiment.status != "running" or variant not in VARIANTS:
            self.counts["ignored"] += 1
            return None
        if str(model_version) != experiment.version_of(variant):
            # e.g. a fallback answer by another version: counting it would mix models in one arm
            self.counts["ignored"] += 1
            log.debug("experiment %s: %s answered by v%s, not v%s; not counted", experiment_id,
                      variant, model_version, experiment.version_of(variant))
            return None
        y = outcome(experiment.spec.metric, probability, label)
        if not self.store.add_observation(experiment_id, trip_id, variant, str(model_version),
                                          probability, label, y, ts):
            self.counts["duplicates"] += 1
            return None
        self.counts["observed"] += 1
        test = self._replay(experiment).catch_up(self.store, experiment_id)
        decision = test.decision()
        spec = experiment.spec
        status = None
        if spec.auto_decide and decision.action != "continue":
            status = "promoted" if decision.action == "promote" else "rolled_back"
        elif (decision.action == "continue" and spec.max_labels is not None
              and decision.n_control + decision.n_treatment >= spec.max_labels):
            status = "inconclusive"
        if status is not None:
            self._act(experiment, status, decision)
        return decision

    def _act(self, experiment: Experiment, status: str, decision: Decision) -> None:
        record = {**decision.to_dict(), "status": status, "metric": experiment.spec.metric,
                  "alpha": experiment.spec.alpha, "actor": ACTOR}
        if status == "inconclusive":
            record["reason"] = (f"max_labels={experiment.spec.max_labels} reached without a "
                                f"decision; {decision.reason}")
        if not self.store.update_status(experiment.id, status, record):
            return  # decided already (by another process, or stopped): act once
        self.counts["decisions"] += 1
        decided = self.store.get(experiment.id) or experiment
        with self._lock:
            self._experiments[experiment.id] = decided
        log.info("experiment %s %s: %s", experiment.id, status, record["reason"])
        try:
            result = self.decide(decided, decision)
        except Exception as exc:  # noqa: BLE001 - the decision stands; the registry move is retried by hand
            self.counts["action_errors"] += 1
            log.error("experiment %s was decided (%s) but the registry action failed: %s; apply it "
                      "by hand (promote / retire v%s)", experiment.id, status, exc,
                      experiment.treatment_version)
            self.store.annotate_decision(experiment.id, action_error=f"{type(exc).__name__}: {exc}")
            return
        if isinstance(result, actions.ActionResult):
            self.store.annotate_decision(experiment.id, event_id=result.event.event_id,
                                         event_delivered=result.delivered)

    def summaries(self) -> list[dict]:
        """Per experiment this process has counted labels for: arms, versions, counts, means and
        the test's view (for the label join's /metrics)."""
        out = []
        with self._lock:
            items = [(eid, replay, self._experiments.get(eid)) for eid, replay in self._replays.items()]
        for experiment_id, replay, experiment in items:
            if experiment is None:
                continue
            with replay.lock:
                test = replay.test
                out.append({"experiment_id": experiment_id, "status": experiment.status,
                            "metric": experiment.spec.metric,
                            "versions": {v: experiment.version_of(v) for v in VARIANTS},
                            "n": {v: test.n.get(v, 0) for v in VARIANTS},
                            "mean": {v: test.mean(v) for v in VARIANTS},
                            "decision": test.decision().to_dict()})
        return out

    def status(self, experiment_id: str) -> dict | None:
        experiment = self.store.get(experiment_id)
        return experiment_status(self.store, experiment) if experiment else None
