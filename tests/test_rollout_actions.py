"""Rollout actions against a real MLflow registry and a real Kafka broker: every decision moves
the aliases, tags the versions and lands on taxi.model.events."""

from __future__ import annotations

import time
import uuid

import pytest
from mlflow import MlflowClient

from taxi_mlops.registry.models import CHALLENGER, CHAMPION
from taxi_mlops.rollout import actions
from taxi_mlops.streaming import clients, events, topics

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def registry_and_kafka(trained, settings, supervisor):
    """MLflow with the trained champion, and the Kafka broker with its topics: all these actions
    touch. Not the whole ``stack`` (the gateway and model servers are not involved); when
    ``stack`` already runs in the session, its broker is reused as it is."""
    from taxi_mlops.stack.streaming import kafka_service

    service = kafka_service(settings)
    if service is not None:
        supervisor.start(service)
    topics.ensure_topics(settings.kafka_bootstrap_servers)
    return settings


def _read_events(settings, event_ids: set[str], timeout_s: float = 30.0) -> dict[str, events.ModelEventV1]:
    from confluent_kafka import Consumer

    consumer = Consumer(clients.consumer_config(settings.kafka_bootstrap_servers, "test-rollout",
                                                f"test-rollout-{uuid.uuid4().hex[:8]}"))
    consumer.subscribe([topics.MODEL_EVENTS])
    found: dict[str, events.ModelEventV1] = {}
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline and not event_ids <= set(found):
            msg = consumer.poll(1.0)
            if msg is None or msg.error():
                continue
            event = events.decode(topics.MODEL_EVENTS, msg.value())
            if event.event_id in event_ids:
                found[event.event_id] = event
    finally:
        consumer.close()
    return found


def _new_version(client: MlflowClient, name: str, champion) -> str:
    """Another registered version of the champion's model (MLflow 3: a ``models:/<id>`` source
    must come with its logged model's id)."""
    model_id = champion.source.split("/", 1)[1] if champion.source.startswith("models:/m-") else None
    return str(client.create_model_version(name, source=champion.source, run_id=champion.run_id,
                                           model_id=model_id).version)


def _aliases(client: MlflowClient, name: str, version: str) -> set[str]:
    return set(client.get_model_version(name, version).aliases or [])


def test_promote_rollback_retire(registry_and_kafka, champion):
    settings = registry_and_kafka
    name = settings.model_name
    client = MlflowClient(settings.mlflow_tracking_uri)
    v1, v2, v3 = champion.version, _new_version(client, name, champion), _new_version(client, name, champion)
    try:
        assert actions.resolve(settings, "champion") == v1
        assert actions.resolve(settings, v2) == v2
        with pytest.raises(actions.UnknownVersion, match="is not registered"):
            actions.resolve(settings, "9999")
        with pytest.raises(actions.UnknownVersion, match="alias 'nope'"):
            actions.resolve(settings, "nope")
        with pytest.raises(actions.UnknownVersion, match=f"version '9999' of model '{name}' is not registered"):
            actions.promote(settings, "9999", actor="manual:test", reason="x")
        with pytest.raises(actions.NothingToDo):
            actions.promote(settings, v1, actor="manual:test", reason="x")

        # promote v2 (the challenger): champion moves, previous = v1, challenger removed
        client.set_registered_model_alias(name, CHALLENGER, v2)
        promoted = actions.promote(settings, v2, actor="manual:test", reason="better on holdout",
                                   experiment_id="exp-1")
        assert promoted.delivered, promoted.error
        assert _aliases(client, name, v2) == {CHAMPION}
        assert _aliases(client, name, v1) == {actions.PREVIOUS}
        tags = client.get_model_version(name, v2).tags
        assert tags["rollout.decision"] == "promoted"
        assert tags["rollout.experiment"] == "exp-1"
        assert tags["rollout.actor"] == "manual:test"
        assert tags["rollout.reason"] == "better on holdout"
        assert tags["rollout.decided_at"]
        assert client.get_model_version(name, v1).tags["rollout.decision"] == "demoted"

        # manual undo: champion back to v1, previous removed, v2 tagged rolled_back
        undone = actions.rollback_champion(settings, actor="manual:test", reason="latency regression")
        assert undone.delivered, undone.error
        assert _aliases(client, name, v1) == {CHAMPION}
        assert _aliases(client, name, v2) == set()
        assert client.get_model_version(name, v2).tags["rollout.decision"] == "rolled_back"
        with pytest.raises(actions.NoPreviousVersion):
            actions.rollback_champion(settings, actor="manual:test")

        # an experiment's losing challenger is retired: aliases gone, tags set; champion refused
        client.set_registered_model_alias(name, CHALLENGER, v3)
        retired = actions.retire(settings, v3, actor="sequential-test", reason="worse",
                                 experiment_id="exp-2")
        assert retired.delivered, retired.error
        assert _aliases(client, name, v3) == set()
        tags = client.get_model_version(name, v3).tags
        assert tags["rollout.decision"] == "rolled_back" and tags["rollout.experiment"] == "exp-2"
        with pytest.raises(actions.ActionRefused):
            actions.retire(settings, v1, actor="manual:test")

        ids = {r.event.event_id for r in (promoted, undone, retired)}
        found = _read_events(settings, ids)
        assert set(found) == ids, f"missing events on {topics.MODEL_EVENTS}: {ids - set(found)}"
        p = found[promoted.event.event_id]
        assert (p.action, p.version, p.previous_version, p.alias, p.experiment_id) == \
            ("promote", v2, v1, CHAMPION, "exp-1")
        u = found[undone.event.event_id]
        assert (u.action, u.version, u.previous_version) == ("rollback", v1, v2)
        r = found[retired.event.event_id]
        assert (r.action, r.version, r.details["removed_aliases"]) == ("rollback", v3, [CHALLENGER])
    finally:
        client.set_registered_model_alias(name, CHAMPION, champion.version)
        for alias in (actions.PREVIOUS, CHALLENGER):
            try:
                client.delete_registered_model_alias(name, alias)
            except Exception:
                pass


def test_kafka_down_keeps_the_registry_change(registry_and_kafka, champion):
    """An unreachable broker: the alias still moves; the event comes back undelivered."""
    settings = registry_and_kafka.model_copy(update={"kafka_bootstrap_override": "127.0.0.1:1"})
    name = settings.model_name
    client = MlflowClient(settings.mlflow_tracking_uri)
    v = _new_version(client, name, champion)
    try:
        result = actions.promote(settings, v, actor="manual:test", reason="broker down",
                                 event_timeout_s=2.0)
        assert not result.delivered and result.error
        assert _aliases(client, name, v) == {CHAMPION}
    finally:
        client.set_registered_model_alias(name, CHAMPION, champion.version)
        try:
            client.delete_registered_model_alias(name, actions.PREVIOUS)
        except Exception:
            pass


def test_experiment_lifecycle_events(registry_and_kafka, champion, tmp_path):
    """start_experiment resolves aliases to versions against the real registry and records
    experiment_started / experiment_stopped on taxi.model.events."""
    from taxi_mlops.rollout.experiment import ExperimentSpec
    from taxi_mlops.rollout.store import RolloutStore

    settings = registry_and_kafka
    name = settings.model_name
    client = MlflowClient(settings.mlflow_tracking_uri)
    v = _new_version(client, name, champion)
    client.set_registered_model_alias(name, CHALLENGER, v)
    store = RolloutStore(tmp_path / "rollout.sqlite")
    try:
        exp, started = actions.start_experiment(settings, store, ExperimentSpec(model_name=name),
                                                actor="manual:test")
        assert (exp.control_version, exp.treatment_version) == (champion.version, v)
        _, stopped = actions.stop_experiment(settings, store, exp.id, actor="manual:test", reason="done")
        found = _read_events(settings, {started.event.event_id, stopped.event.event_id})
        assert [found[r.event.event_id].action for r in (started, stopped)] == \
            ["experiment_started", "experiment_stopped"]
        assert found[started.event.event_id].experiment_id == exp.id
    finally:
        try:
            client.delete_registered_model_alias(name, CHALLENGER)
        except Exception:
            pass
