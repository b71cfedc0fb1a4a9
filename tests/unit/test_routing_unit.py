"""Routing without a stack: policy validation, sticky weighted split, shadow, fallback,
ensemble, experiment override, and least-outstanding balancing over replicas. The model
server here is a stand-in (logic only); tests/test_rollout_stack.py drives the real one."""

from __future__ import annotations

import asyncio
import random

import pytest
from pydantic import ValidationError

from taxi_mlops.gateway.errors import DependencyDown
from taxi_mlops.gateway.inference import InferenceClient
from taxi_mlops.gateway.predictor import Predictor
from taxi_mlops.gateway.router import ExperimentRoute, Router, RoutingPolicy, bucket, choose
from taxi_mlops.gateway.schemas import Trip
from taxi_mlops.settings import Settings
from tests.unit.test_gateway_unit import TRIP, FakeInference, FakeLog, FakeLookup


def policy(**kwargs) -> RoutingPolicy:
    return RoutingPolicy.model_validate(kwargs)


def split(*pairs) -> list[dict]:
    return [{"name": n, "target": t, "weight": w} for n, t, w in pairs]


# ---- policy validation ------------------------------------------------------------------------
@pytest.mark.parametrize("body,needle", [
    ({"split": split(("a", "champion", 0.5), ("b", "challenger", 0.4))}, "sum to 1"),
    ({"split": split(("a", "champion", 0.5), ("a", "challenger", 0.5))}, "distinct"),
    ({"split": split(("a", "champion", 0.5), ("b", "challenger", 0.5)),
      "ensemble": {"targets": ["champion", "challenger"]}}, "ensemble"),
    ({"ensemble": {"targets": ["champion", "champion"]}}, "distinct"),
    ({"shadow": {"target": "challenger", "percent": 150}}, "percent"),
    ({"split": split(("a", "bad/target", 1.0))}, "target"),
])
def test_invalid_policies_are_refused_naming_the_problem(body, needle):
    with pytest.raises(ValidationError) as exc:
        RoutingPolicy.model_validate(body)
    assert needle in str(exc.value)


def test_policy_lists_every_target_by_field():
    p = policy(split=split(("a", "champion", 0.7), ("b", "7", 0.3)),
               shadow={"target": "challenger", "percent": 10}, fallback="previous")
    assert p.targets() == {"split.0.target": "champion", "split.1.target": "7",
                           "shadow.target": "challenger", "fallback": "previous"}


# ---- sticky weighted split ----------------------------------------------------------------------
def test_split_ratios_within_tolerance_over_2000_keys_and_sticky():
    router = Router(policy(split=split(("a", "champion", 0.7), ("b", "challenger", 0.2),
                                       ("c", "5", 0.1))))
    keys = [f"trip-{i}" for i in range(2000)]
    first = {k: router.route({"trip_id": k}).variant for k in keys}
    counts = {v: list(first.values()).count(v) for v in "abc"}
    # Binomial sd at n=2000 is <= 1.1 points: 3.5 sd bounds.
    assert abs(counts["a"] / 2000 - 0.7) < 0.036
    assert abs(counts["b"] / 2000 - 0.2) < 0.032
    assert abs(counts["c"] / 2000 - 0.1) < 0.024
    again = {k: router.route({"trip_id": k}).variant for k in reversed(keys)}
    assert again == first  # sticky: the same key always gets the same variant
    router2 = Router(policy(split=split(("a", "champion", 0.7), ("b", "challenger", 0.2),
                                        ("c", "5", 0.1))))
    assert {k: router2.route({"trip_id": k}).variant for k in keys} == first  # across processes


def test_sticky_key_is_configurable_and_a_missing_key_is_random():
    router = Router(policy(split=split(("a", "champion", 0.5), ("b", "challenger", 0.5)),
                           sticky_key="company"), rng=random.Random(1))
    same_company = {router.route({"trip_id": f"t{i}", "company": "Flash Cab"}).variant for i in range(50)}
    assert len(same_company) == 1
    plans = [router.route({"trip_id": "x"}) for _ in range(200)]
    assert not any(p.sticky for p in plans) and {p.variant for p in plans} == {"a", "b"}


def test_bucket_is_uniform_enough_and_choose_covers_the_interval():
    points = [bucket("s", str(i)) for i in range(5000)]
    assert 0 <= min(points) and max(points) < 1
    assert abs(sum(points) / len(points) - 0.5) < 0.02
    assert choose([("a", 0.5), ("b", 0.5)], 0.0) == "a"
    assert choose([("a", 0.5), ("b", 0.5)], 0.999999) == "b"


def test_experiment_overrides_the_split_with_pinned_versions_and_falls_back_to_control():
    router = Router(policy(shadow={"target": "challenger", "percent": 100}),
                    ExperimentRoute(id="e1", split={"control": 0.5, "treatment": 0.5},
                                    versions={"control": "3", "treatment": "4"}))
    plans = [router.route({"trip_id": f"k{i}"}) for i in range(400)]
    assert {p.target for p in plans} == {"3", "4"} and all(p.experiment_id == "e1" for p in plans)
    assert all(p.fallback == "3" for p in plans if p.variant == "treatment")
    assert all(p.fallback is None for p in plans if p.variant == "control")


def test_shadow_percent_mirrors_that_share():
    router = Router(policy(shadow={"target": "challenger", "percent": 25}))
    shadowed = sum(router.route({"trip_id": f"k{i}"}).shadow == "challenger" for i in range(4000))
    assert abs(shadowed / 4000 - 0.25) < 0.03


# ---- the predictor carrying out a plan -----------------------------------------------------------
def make(router, inference):
    log = FakeLog()
    p = Predictor(Settings(request_timeout_s=1.0), lambda: FakeLookup(), inference, log, None,
                  router=router)
    return p, log


def test_shadow_answer_is_logged_never_returned():
    async def go():
        inference = FakeInference(answers={"champion": (0.9, "3"), "challenger": (0.1, "4")})
        p, log = make(Router(policy(shadow={"target": "challenger", "percent": 100})), inference)
        deferred = []
        prediction = await p.predict(Trip(**TRIP), "r1", defer=deferred.append)
        assert prediction.tip_probability == pytest.approx(0.9) and prediction.model.version == "3"
        assert prediction.routing.shadowed and len(log.entries) == 1  # the mirror waits for the response
        from starlette._utils import is_async_callable

        for fn in deferred:  # as Starlette's BackgroundTasks will: awaited, not run in a thread
            assert is_async_callable(fn)
            await fn()
        return prediction, log.entries

    prediction, entries = asyncio.run(go())
    primary, shadow = entries
    assert not primary.shadow and primary.model_version == "3"
    assert shadow.shadow and shadow.model_version == "4" and shadow.tip_probability == pytest.approx(0.1)
    assert shadow.request_id == "r1-shadow" and shadow.variant == "shadow"


def test_fallback_answers_when_the_primary_fails_and_is_marked():
    inference = FakeInference(answers={"previous": (0.2, "2")}, failing={"champion"})
    p, log = make(Router(policy(fallback="previous")), inference)
    prediction = asyncio.run(p.predict(Trip(**TRIP), "r"))
    assert prediction.routing.fallback and prediction.model.version == "2"
    assert prediction.routing.target == "previous" and log.entries[0].fallback
    assert log.entries[0].policy == "fallback"


def test_no_fallback_means_503_naming_the_model_server():
    p, _ = make(Router(policy()), FakeInference(failing={"champion"}))
    with pytest.raises(DependencyDown) as down:
        asyncio.run(p.predict(Trip(**TRIP), "r"))
    assert down.value.dependency == "model_server"


def test_ensemble_is_the_mean_of_its_members():
    inference = FakeInference(answers={"champion": (0.8, "3"), "challenger": (0.4, "4")})
    p, log = make(Router(policy(ensemble={"targets": ["champion", "challenger"]})), inference)
    prediction = asyncio.run(p.predict(Trip(**TRIP), "r"))
    assert prediction.tip_probability == pytest.approx(0.6)
    assert prediction.model.version == "3+4" and prediction.routing.policy == "ensemble"


def test_batch_is_scored_per_routed_target():
    inference = FakeInference(answers={"champion": (0.9, "3"), "challenger": (0.1, "4")})
    p, log = make(Router(policy(split=split(("a", "champion", 0.5), ("b", "challenger", 0.5)))), inference)
    trips = [Trip(**{**TRIP, "trip_id": f"b{i}"}) for i in range(40)]
    predictions = asyncio.run(p.predict_batch(trips, "batch"))
    for pred in predictions:
        expected = {"a": "3", "b": "4"}[pred.model.variant]
        assert pred.model.version == expected
    assert len(inference.calls) == 2  # one model call per target


# ---- replicas: least outstanding requests --------------------------------------------------------
def test_least_outstanding_replica_is_picked_and_down_ones_skipped():
    client = InferenceClient(["http://127.0.0.1:1", "http://127.0.0.1:2", "http://127.0.0.1:3"], "m", 1.0)
    a, b, c = client.replicas
    a.outstanding, b.outstanding, c.outstanding = 3, 1, 2
    assert client.pick() is b
    b.healthy = False
    assert client.pick() is c
    c.outstanding = 3
    assert {client.pick().url for _ in range(4)} == {a.url, c.url}  # ties: round robin
    asyncio.run(client.close())


def test_a_refused_replica_is_taken_out_and_the_request_retried_elsewhere():
    async def go():
        from taxi_mlops.stack.process import free_port

        client = InferenceClient([f"http://127.0.0.1:{free_port()}" for _ in range(2)], "m", 0.5)
        with pytest.raises(Exception) as exc:
            from taxi_mlops.features import schema

            await client.infer_batch("r", [{n: 0 for n in schema.SERVING_DTYPES}], "champion")
        states = [r.healthy for r in client.replicas]
        await client.close()
        return exc.value, states

    error, states = asyncio.run(go())
    assert states == [False, False] and "no model server replica is reachable" in str(error)


def test_gateway_app_builds_its_openapi_with_the_control_routes(tmp_path):
    """Every route's types resolve (a forward reference left unresolved breaks /openapi.json,
    which is also the stack's health probe of the gateway)."""
    from taxi_mlops.gateway.app import create_app

    spec = create_app(Settings(state_dir=tmp_path)).openapi()
    assert {"/routing", "/experiments", "/experiments/{experiment_id}", "/experiments/{experiment_id}/stop",
            "/models", "/models/promote", "/models/rollback", "/models/reload"} <= set(spec["paths"])
