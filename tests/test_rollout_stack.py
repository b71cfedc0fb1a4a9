"""Multi-model rollout on the real stack: routing through the gateway to versions served side
by side, shadow, fallback, token checks, bad input, and end-to-end experiments on a real
replay decided by the sequential test (a better challenger promoted, a worse one rolled back)
with the audit trail in MLflow and on ``taxi.model.events``.

The worse model is ``tests/support/inverted_model.py``: the champion's SavedModel answering
1 - p, a real MLflow Model served by the real model server (named a test model).
The champion alias is restored after every test that moves it (the session shares one stack).
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import httpx
import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient

from taxi_mlops import security
from taxi_mlops.registry import mlflow_model, models
from taxi_mlops.stack.process import wait_for
from tests.conftest import TRIP

pytestmark = pytest.mark.slow
INVERTED = Path(__file__).parent / "support" / "inverted_model.py"


# ---- helpers ------------------------------------------------------------------------------------
def admin(settings) -> dict:
    return {"Authorization": f"Bearer {security.read_token(settings)}"}


def mlflow_client(settings) -> MlflowClient:
    return MlflowClient(settings.mlflow_tracking_uri)


def served_aliases(settings) -> dict:
    r = httpx.get(f"{settings.model_server_url}/v2/models/{settings.model_name}/versions", timeout=5)
    return r.json()["aliases"] if r.status_code == 200 else {}


def await_served(settings, alias: str, version: str | None, timeout_s: float = 90) -> None:
    """Every replica serves ``alias`` with ``version`` (None: the alias is gone)."""
    def ok() -> bool:
        for url in settings.model_server_urls:
            try:
                r = httpx.get(f"{url}/v2/models/{settings.model_name}/versions", timeout=5)
            except httpx.HTTPError:
                return False
            if r.status_code != 200 or r.json()["aliases"].get(alias) != version:
                return False
        return True

    assert wait_for(ok, timeout_s, 0.3), f"model servers never served {alias}={version}: {served_aliases(settings)}"


def set_alias(settings, alias: str, version: str) -> None:
    mlflow_client(settings).set_registered_model_alias(settings.model_name, alias, version)
    await_served(settings, alias, version)


def drop_alias(settings, alias: str) -> None:
    try:
        mlflow_client(settings).delete_registered_model_alias(settings.model_name, alias)
    except mlflow.exceptions.MlflowException:
        pass


@pytest.fixture(scope="module")
def inverted(stack, champion) -> str:
    """A registered TEST version answering 1 - p (clearly worse than the champion)."""
    mlflow.set_tracking_uri(stack.mlflow_tracking_uri)
    mlflow.set_experiment("rollout-tests")
    serving_dir = str(Path(champion.tfx_model_uri) / "Format-Serving")
    with mlflow.start_run(run_name="inverted-test-model"):
        info = mlflow.pyfunc.log_model(
            name="model", python_model=str(INVERTED), artifacts={"saved_model": serving_dir},
            pip_requirements=mlflow_model.pinned_requirements(),
            model_config={"input_types": mlflow_model.input_types()})
    mv = mlflow.register_model(info.model_uri, stack.model_name, tags={"model_family": "test-inverted"})
    return str(mv.version)


@pytest.fixture
def restore_champion(stack, champion):
    """Whatever a test does to aliases and routing, the session gets its champion back."""
    yield
    client = mlflow_client(stack)
    client.set_registered_model_alias(stack.model_name, models.CHAMPION, champion.version)
    for alias in ("challenger", "previous", "canary"):
        drop_alias(stack, alias)
    httpx.put(f"{stack.gateway_url}/routing", json={"split": [{"name": "champion", "target": "champion",
                                                               "weight": 1.0}]},
              headers=admin(stack), timeout=30)
    for e in httpx.get(f"{stack.gateway_url}/experiments", timeout=10).json()["experiments"]:
        if e["status"] == "running":
            httpx.post(f"{stack.gateway_url}/experiments/{e['experiment_id']}/stop", headers=admin(stack), timeout=30)
    routing_applied(stack, lambda body: not body["experiment"] and body["policy"]["shadow"] is None
                    and [v["target"] for v in body["policy"]["split"]] == ["champion"])
    await_served(stack, models.CHAMPION, champion.version)


def predict(settings, trip_id: str, **extra) -> httpx.Response:
    return httpx.post(f"{settings.gateway_url}/predict", json={**TRIP, "trip_id": trip_id, **extra}, timeout=10)


def routing_applied(settings, check) -> None:
    """Gateway workers and instances reread the store every routing_refresh_s: await the new
    policy on all of them (12 answers in a row, each on a new connection, which the kernel
    spreads over the instances sharing the port)."""
    def everywhere() -> bool:
        return all(check(httpx.get(f"{settings.gateway_url}/routing", timeout=5).json()) for _ in range(12))

    assert wait_for(everywhere, 10, 0.2)


def model_events(settings, since_ms: int, want: callable, timeout_s: float = 30) -> list[dict]:
    from confluent_kafka import Consumer, TopicPartition

    from taxi_mlops.streaming import clients, topics

    consumer = Consumer(clients.consumer_config(settings.kafka_bootstrap_servers, "rollout-test",
                                                f"rollout-test-{uuid.uuid4().hex[:8]}"))
    try:
        offsets = consumer.offsets_for_times([TopicPartition(topics.MODEL_EVENTS, 0, since_ms)], timeout=10)
        consumer.assign(offsets)
        seen, deadline = [], time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            seen.append(json.loads(msg.value()))
            if want(seen):
                break
        return seen
    finally:
        consumer.close()


# ---- security and bad input -----------------------------------------------------------------------
@pytest.mark.parametrize("method,path,body", [
    ("POST", "/experiments", {"control": "champion", "treatment": "challenger"}),
    ("PUT", "/routing", {"split": [{"name": "a", "target": "champion", "weight": 1}]}),
    ("POST", "/models/promote", {"version": "1"}),
    ("POST", "/models/rollback", {}),
    ("POST", "/models/reload", None),
])
def test_state_changing_endpoints_need_the_token(stack, method, path, body):
    url = f"{stack.gateway_url}{path}"
    missing = httpx.request(method, url, json=body, timeout=10)
    assert missing.status_code == 401 and "Bearer" in missing.json()["detail"]
    assert missing.headers.get("www-authenticate", "").startswith("Bearer")
    wrong = httpx.request(method, url, json=body, headers={"Authorization": "Bearer not-the-token"}, timeout=10)
    assert wrong.status_code == 403
    assert httpx.get(f"{stack.gateway_url}/routing", timeout=10).status_code == 200  # reads stay open


def test_model_server_refresh_needs_the_token(stack):
    url = f"{stack.model_server_url}/v2/models/{stack.model_name}/refresh"
    assert httpx.post(url, timeout=10).status_code == 401
    assert httpx.post(url, headers={"Authorization": "Bearer nope"}, timeout=10).status_code == 403
    assert httpx.post(url, headers=admin(stack), timeout=90).status_code == 200


@pytest.mark.parametrize("method,path,body,field", [
    ("POST", "/models/promote", {"version": "9999"}, "version"),
    ("POST", "/experiments", {"control": "champion", "treatment": "no-such-alias"}, "treatment"),
    ("POST", "/experiments", {"split": {"control": 0.5, "treatment": 0.6}}, "split"),
    ("POST", "/experiments", {"model_name": "not-a-registered-model"}, "model_name"),
    ("POST", "/experiments", {"sticky_key": "no_such_field"}, "sticky_key"),
    ("PUT", "/routing", {"split": [{"name": "a", "target": "9999", "weight": 1}]}, "split.0.target"),
    ("PUT", "/routing", {"split": [{"name": "a", "target": "champion", "weight": 0.5},
                                   {"name": "b", "target": "champion", "weight": 0.4}]}, "sum to 1"),
])
def test_bad_control_input_is_a_4xx_naming_the_field(stack, method, path, body, field):
    r = httpx.request(method, f"{stack.gateway_url}{path}", json=body, headers=admin(stack), timeout=30)
    assert r.status_code in (404, 409, 422), r.text
    assert field in r.text, r.text


def test_two_versions_served_side_by_side_through_the_gateway(stack, champion, inverted, restore_champion):
    set_alias(stack, "challenger", inverted)
    r = httpx.put(f"{stack.gateway_url}/routing", headers=admin(stack), timeout=30, json={
        "split": [{"name": "a", "target": "champion", "weight": 0.5},
                  {"name": "b", "target": "challenger", "weight": 0.5}]})
    assert r.status_code == 200, r.text
    routing_applied(stack, lambda body: len(body["policy"]["split"]) == 2)
    answers = {}
    for i in range(120):
        body = predict(stack, f"ab-{i}").json()
        answers[f"ab-{i}"] = (body["model"]["variant"], body["model"]["version"], body["tip_probability"])
    by_variant = {v: {ver for vv, ver, _ in answers.values() if vv == v} for v in ("a", "b")}
    assert by_variant == {"a": {champion.version}, "b": {inverted}}
    share = sum(v == "a" for v, _, _ in answers.values()) / len(answers)
    assert 0.3 < share < 0.7
    for key in list(answers)[:20]:  # sticky: the same trip id gets the same variant again
        again = predict(stack, key).json()
        assert again["model"]["variant"] == answers[key][0]
        assert again["tip_probability"] == pytest.approx(answers[key][2], abs=1e-6)


def test_shadow_answers_are_logged_never_returned(stack, champion, inverted, restore_champion):
    set_alias(stack, "challenger", inverted)
    r = httpx.put(f"{stack.gateway_url}/routing", headers=admin(stack), timeout=30, json={
        "split": [{"name": "champion", "target": "champion", "weight": 1}],
        "shadow": {"target": "challenger", "percent": 100}})
    assert r.status_code == 200, r.text
    routing_applied(stack, lambda body: body["policy"]["shadow"] is not None)
    since = int(time.time() * 1000) - 1000
    ids = [f"shadow-{uuid.uuid4().hex[:8]}-{i}" for i in range(10)]
    for trip_id in ids:
        body = predict(stack, trip_id).json()
        assert body["model"]["version"] == champion.version and body["routing"]["shadowed"] is True
    logs = _prediction_logs(stack, since, lambda seen: sum(1 for e in seen if e.get("shadow")
                                                           and e.get("trip_id") in ids) >= len(ids))
    shadow = [e for e in logs if e.get("trip_id") in ids and e.get("shadow")]
    primary = [e for e in logs if e.get("trip_id") in ids and not e.get("shadow")]
    assert len(shadow) == len(ids) and {e["model_version"] for e in shadow} == {inverted}
    assert {e["model_version"] for e in primary} == {champion.version}
    # The mirror answered 1 - p: were it returned, the client would have seen it.
    for s in shadow:
        p = next(e for e in primary if e["trip_id"] == s["trip_id"])
        assert s["tip_probability"] == pytest.approx(1 - p["tip_probability"], abs=1e-4)


def _prediction_logs(settings, since_ms: int, want, timeout_s: float = 30) -> list[dict]:
    from confluent_kafka import Consumer, TopicPartition

    from taxi_mlops.streaming import clients, topics

    consumer = Consumer(clients.consumer_config(settings.kafka_bootstrap_servers, "rollout-test",
                                                f"rollout-test-{uuid.uuid4().hex[:8]}"))
    try:
        parts = [TopicPartition(topics.PREDICTIONS, p, since_ms)
                 for p in range(topics.partition_count(settings.kafka_bootstrap_servers, topics.PREDICTIONS))]
        consumer.assign(consumer.offsets_for_times(parts, timeout=10))
        seen, deadline = [], time.monotonic() + timeout_s
        while time.monotonic() < deadline and not want(seen):
            msg = consumer.poll(0.5)
            if msg is not None and not msg.error():
                seen.append(json.loads(msg.value()))
        return seen
    finally:
        consumer.close()


def test_fallback_answers_when_the_primary_version_goes_away(stack, champion, inverted, restore_champion):
    set_alias(stack, "canary", inverted)
    r = httpx.put(f"{stack.gateway_url}/routing", headers=admin(stack), timeout=30, json={
        "split": [{"name": "canary", "target": "canary", "weight": 1}], "fallback": "champion"})
    assert r.status_code == 200, r.text
    routing_applied(stack, lambda body: body["policy"]["fallback"] == "champion")
    first = predict(stack, "fb-0").json()
    assert first["model"]["version"] == inverted and first["routing"]["fallback"] is False
    drop_alias(stack, "canary")  # the primary is gone: once unloaded, the model server says 404
    await_served(stack, "canary", None)
    statuses, answers = [], []
    for i in range(30):
        r = predict(stack, f"fb-{i + 1}")
        statuses.append(r.status_code)
        if r.status_code == 200:
            answers.append(r.json())
    assert statuses == [200] * 30
    assert all(a["routing"]["fallback"] and a["model"]["version"] == champion.version for a in answers)


def test_a_variant_whose_model_is_gone_without_fallback_is_503_not_500(stack, inverted, restore_champion):
    set_alias(stack, "canary", inverted)
    r = httpx.put(f"{stack.gateway_url}/routing", headers=admin(stack), timeout=30, json={
        "split": [{"name": "canary", "target": "canary", "weight": 1}]})
    assert r.status_code == 200, r.text
    routing_applied(stack, lambda body: body["policy"]["split"][0]["target"] == "canary")
    drop_alias(stack, "canary")
    await_served(stack, "canary", None)
    r = predict(stack, "nofb-1")
    assert r.status_code == 503 and r.json()["dependency"] == "model_server"


# ---- experiments end to end on a real replay ----------------------------------------------------------
def _replay_slice(settings, tmp_path, start: int, count: int) -> dict:
    from taxi_mlops.streaming import replay

    rows = pd.read_csv(settings.data_csv)
    part = tmp_path / f"slice-{start}.csv"
    rows.iloc[start:start + count].to_csv(part, index=False)
    return replay.replay(settings, speed="max", retime=True, max_rate=250, csv_path=part,
                         predict_url=settings.gateway_url, predict_concurrency=8,
                         progress=lambda _m: None, id_prefix=f"x{uuid.uuid4().hex[:6]}-")


def _run_experiment(settings, tmp_path, control: str, treatment: str, start: int) -> dict:
    r = httpx.post(f"{settings.gateway_url}/experiments", headers=admin(settings), timeout=60, json={
        "control": control, "treatment": treatment, "split": {"control": 0.5, "treatment": 0.5},
        "metric": "accuracy", "alpha": 0.05, "min_labels": 30})
    assert r.status_code == 201, r.text
    experiment_id = r.json()["experiment_id"]
    routing_applied(settings, lambda body: (body["experiment"] or {}).get("id") == experiment_id)
    status = {}
    for chunk in range(4):  # replay more only while the test has not decided
        result = _replay_slice(settings, tmp_path, start + chunk * 500, 500)
        assert result["predict_ok"] > 200, result

        def decided() -> bool:  # and the registry move done (or failed), not just the verdict
            status.update(httpx.get(f"{settings.gateway_url}/experiments/{experiment_id}", timeout=10).json())
            return status["status"] != "running" and (status["applied"] or bool(status["action_error"]))

        if wait_for(decided, 45, 0.5):
            return status
    pytest.fail(f"the experiment never decided: {status}")


def test_experiment_promotes_a_better_challenger_and_rolls_back_a_worse_one(
        stack, champion, inverted, restore_champion, tmp_path):
    client = mlflow_client(stack)
    since = int(time.time() * 1000) - 1000
    # 1. The champion is the bad (inverted) model; the real one is the challenger: promoted.
    client.set_registered_model_alias(stack.model_name, "champion", inverted)
    set_alias(stack, "challenger", champion.version)
    await_served(stack, "champion", inverted)
    promoted = _run_experiment(stack, tmp_path, "champion", "challenger", start=3000)
    assert promoted["status"] == "promoted" and promoted["applied"], promoted
    assert promoted["decision"]["action"] == "promote" and promoted["test"]["effect"] > 0
    assert promoted["test"]["ci_low"] > 0
    aliases = {a: client.get_model_version_by_alias(stack.model_name, a).version
               for a in ("champion", "previous")}
    assert aliases == {"champion": champion.version, "previous": inverted}
    tags = client.get_model_version(stack.model_name, champion.version).tags
    assert tags["rollout.decision"] == "promoted" and tags["rollout.experiment"] == promoted["experiment_id"]
    await_served(stack, "champion", champion.version)  # hot-swapped, no restart

    # 2. The bad model comes back as challenger: rolled back, its alias removed.
    set_alias(stack, "challenger", inverted)
    rolled = _run_experiment(stack, tmp_path, "champion", "challenger", start=6000)
    assert rolled["status"] == "rolled_back" and rolled["applied"], rolled
    assert rolled["test"]["ci_high"] < 0
    assert "challenger" not in client.get_registered_model(stack.model_name).aliases
    assert client.get_model_version(stack.model_name, inverted).tags["rollout.decision"] in ("rolled_back", "retired")
    assert client.get_model_version_by_alias(stack.model_name, "champion").version == champion.version

    # 3. The audit trail: each decision is an event on taxi.model.events.
    def both(seen):
        actions = {(e["action"], e.get("experiment_id")) for e in seen}
        return {("promote", promoted["experiment_id"]), ("rollback", rolled["experiment_id"])} <= actions

    seen = model_events(stack, since, both)
    assert both(seen), seen
    promote_event = next(e for e in seen if e["action"] == "promote")
    assert promote_event["version"] == champion.version and promote_event["previous_version"] == inverted
    assert promote_event["actor"] == "sequential-test"


def test_manual_promote_and_rollback_through_the_gateway(stack, champion, inverted, restore_champion):
    r = httpx.post(f"{stack.gateway_url}/models/promote", headers=admin(stack), timeout=60,
                   json={"version": inverted, "reason": "test manual promote"})
    assert r.status_code == 200, r.text
    await_served(stack, "champion", inverted)
    assert predict(stack, "manual-1").json()["model"]["version"] == inverted
    r = httpx.post(f"{stack.gateway_url}/models/rollback", headers=admin(stack), timeout=60,
                   json={"reason": "test manual rollback"})
    assert r.status_code == 200, r.text
    await_served(stack, "champion", champion.version)
    assert predict(stack, "manual-2").json()["model"]["version"] == champion.version
    again = httpx.post(f"{stack.gateway_url}/models/promote", headers=admin(stack), timeout=60,
                       json={"version": champion.version})
    assert again.status_code == 409  # already the champion


def test_experiments_survive_a_gateway_restart(stack, champion, inverted, restore_champion, supervisor):
    from taxi_mlops.stack import services

    set_alias(stack, "challenger", inverted)
    r = httpx.post(f"{stack.gateway_url}/experiments", headers=admin(stack), timeout=60,
                   json={"control": "champion", "treatment": "challenger"})
    assert r.status_code == 201, r.text
    experiment_id = r.json()["experiment_id"]
    conflict = httpx.post(f"{stack.gateway_url}/experiments", headers=admin(stack), timeout=60,
                          json={"control": "champion", "treatment": "challenger"})
    assert conflict.status_code == 409
    supervisor.stop("gateway")
    supervisor.start(services.gateway_service(stack))
    after = httpx.get(f"{stack.gateway_url}/routing", timeout=10).json()
    assert after["experiment"]["id"] == experiment_id
    assert after["experiment"]["versions"] == {"control": champion.version, "treatment": inverted}
    stopped = httpx.post(f"{stack.gateway_url}/experiments/{experiment_id}/stop", headers=admin(stack), timeout=60)
    assert stopped.status_code == 200 and stopped.json()["status"] == "stopped"


# ---- replicas ------------------------------------------------------------------------------------------
def _replica_requests(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("taxi_model_server_requests_total{"))


def test_replicas_share_the_load_and_a_dead_one_fails_no_request(stack, supervisor, keeper_paused):
    """Two model-server replicas: least-outstanding balancing uses both; kill -9 one under
    steady load and every request is still answered (the gateway retries on the other:
    inference has no side effects); restarted, it is back in rotation.

    Each gateway instance keeps its own view of the replicas, so the health checks go over
    the load's own keep-alive connection: the instance that serves the load is the one asked."""
    import threading

    from taxi_mlops.stack import services

    assert len(stack.model_server_urls) == 2
    before = [_replica_requests(u) for u in stack.model_server_urls]
    statuses: list[int] = []
    stop = threading.Event()
    asks: list[threading.Event] = []
    answers: list[dict] = []

    def load():
        i = 0
        with httpx.Client(timeout=10) as client:
            while not stop.is_set():
                if asks:  # a health question: asked of this connection's gateway instance
                    answers.append(client.get(f"{stack.gateway_url}/health").json()["dependencies"]["model_server"])
                    asks.pop().set()
                r = client.post(f"{stack.gateway_url}/predict", json={**TRIP, "trip_id": f"rep-{i}"})
                statuses.append(r.status_code)
                i += 1

    def health() -> dict:
        answered = threading.Event()
        asks.append(answered)
        assert answered.wait(15), "the load thread did not answer the health question"
        return answers[-1]

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    replica = services.model_server_services(stack)[1]
    try:
        assert wait_for(lambda: len(statuses) >= 40, 60, 0.1)
        after = [_replica_requests(u) for u in stack.model_server_urls]
        assert all(a > b for a, b in zip(after, before)), (before, after)  # both replicas served
        supervisor.kill(replica.name)
        at_kill = len(statuses)
        assert wait_for(lambda: len(statuses) >= at_kill + 60, 60, 0.1)
        served = health()
        assert served["ok"] and [r["ok"] for r in served["replicas"]] == [True, False], served
    finally:
        supervisor.start(replica)

    def back_in_rotation() -> bool:
        return all(r.get("in_rotation") for r in health()["replicas"])

    assert wait_for(back_in_rotation, 60, 0.5)
    served_before = _replica_requests(replica.url)
    n = len(statuses)
    assert wait_for(lambda: len(statuses) >= n + 40, 60, 0.1)
    stop.set()
    thread.join(15)
    assert _replica_requests(replica.url) > served_before  # it answers again
    assert set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
