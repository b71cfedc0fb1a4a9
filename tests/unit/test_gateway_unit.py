"""The gateway's pure logic, without a stack: request ids, route labels, the body limit, the
Predictor's bookkeeping (with stand-ins for Feast and the model server — logic only; the real
path is covered by tests/test_gateway*.py), and how metrics are wired or left out."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import subprocess
import sys
import textwrap

import pytest
from fastapi import FastAPI

from taxi_mlops.gateway import metrics as gm
from taxi_mlops.gateway.app import create_app
from taxi_mlops.gateway.errors import DependencyDown
from taxi_mlops.gateway.inference import ModelServerError
from taxi_mlops.gateway.middleware import (SCOPE_KEY, BodyLimit, MetricsMiddleware,
                                           RequestIdMiddleware, RouteLabeler, sanitize_request_id)
from taxi_mlops.gateway.predictor import Predictor
from taxi_mlops.gateway.router import Router, RoutingPolicy, VariantSpec
from taxi_mlops.gateway.schemas import Trip
from taxi_mlops.observability import logs
from taxi_mlops.settings import Settings

TRIP = {"trip_id": "u-1", "trip_miles": 2.5, "fare": 9.75, "trip_seconds": 600,
        "trip_start_hour": 13, "trip_start_day": 4, "trip_start_month": 7,
        "pickup_community_area": 8, "payment_type": "Credit Card", "company": "Flash Cab"}


def run(coro):
    return asyncio.run(coro)


# ---- request id -----------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["abc", "A.b_c-9", "x" * 64, b"req-1"])
def test_sane_request_id_is_kept(value):
    expected = value.decode() if isinstance(value, bytes) else value
    assert sanitize_request_id(value) == expected


@pytest.mark.parametrize("value", [None, "", "x" * 65, "has space", "a/b", "é", b"\xff\xfe",
                                   "id\nInjected: 1", '{"json": 1}'])
def test_odd_request_id_is_replaced_not_refused(value):
    new = sanitize_request_id(value)
    assert new != value and len(new) == 32 and int(new, 16) >= 0


# ---- ASGI helpers ---------------------------------------------------------------------------
def http_scope(path="/predict", method="POST", headers=()):
    return {"type": "http", "method": method, "path": path, "headers": list(headers),
            "query_string": b"", "root_path": ""}


async def call(app, scope, body_chunks=(b"{}",)):
    chunks = list(body_chunks)
    sent = []

    async def receive():
        if chunks:
            body = chunks.pop(0)
            return {"type": "http.request", "body": body, "more_body": bool(chunks)}
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    await app(scope, receive, send)
    return sent


async def echo_app(scope, receive, send):
    """Answers 200 with the body it received (to see BodyLimit's replay)."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def status_of(sent):
    return next(m["status"] for m in sent if m["type"] == "http.response.start")


# ---- body limit -----------------------------------------------------------------------------
def test_body_limit_rejects_by_content_length():
    app = BodyLimit(echo_app, max_bytes=10)
    sent = run(call(app, http_scope(headers=[(b"content-length", b"11")]), [b"x" * 11]))
    assert status_of(sent) == 413
    assert json.loads(sent[1]["body"])["detail"][0]["field"] == "body"


def test_body_limit_counts_chunked_bodies_and_replays_accepted_ones():
    app = BodyLimit(echo_app, max_bytes=10)
    assert status_of(run(call(app, http_scope(), [b"x" * 6, b"y" * 6]))) == 413
    sent = run(call(app, http_scope(), [b"abc", b"def"]))
    assert status_of(sent) == 200 and sent[1]["body"] == b"abcdef"
    assert status_of(run(call(app, http_scope(method="GET"), [b""]))) == 200


# ---- request id middleware and its log line --------------------------------------------------
@pytest.fixture
def captured_logs():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter("gateway"))
    logger = logging.getLogger("taxi_mlops.gateway")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    logger.removeHandler(handler)
    logger.setLevel(old_level)


def test_request_id_goes_back_as_header_and_into_the_predict_log(captured_logs):
    seen = {}

    async def route(scope, receive, send):
        seen["ctx"] = dict(scope[SCOPE_KEY])
        scope[SCOPE_KEY]["model_version"] = "7"
        logging.getLogger("taxi_mlops.gateway").info("inside")
        await echo_app(scope, receive, send)

    app = RequestIdMiddleware(route)
    sent = run(call(app, http_scope(headers=[(b"x-request-id", b"client-42")])))
    assert (b"x-request-id", b"client-42") in sent[0]["headers"]
    assert seen["ctx"]["request_id"] == "client-42"
    inside, line = captured_logs()
    assert inside["request_id"] == "client-42"  # bound for every record during the request
    assert line["message"] == "predict" and line["request_id"] == "client-42"
    assert line["model_version"] == "7" and line["status"] == 200 and line["latency_ms"] >= 0

    sent = run(call(app, http_scope(headers=[(b"x-request-id", b"bad id")])))
    generated = dict(sent[0]["headers"])[b"x-request-id"].decode()
    assert generated != "bad id" and len(generated) == 32
    assert "request_id" not in logs._context.get()  # unbound after the request


# ---- route labels ---------------------------------------------------------------------------
def test_route_label_is_the_template_and_unknown_paths_are_other():
    app = FastAPI()

    @app.get("/predict")
    def p():
        return {}

    @app.get("/models/{name}/versions/{version}")
    def v(name: str, version: str):
        return {}

    label = RouteLabeler(app.routes)
    assert label(http_scope("/predict", "GET")) == "/predict"
    assert label(http_scope("/models/a/versions/3", "GET")) == "/models/{name}/versions/{version}"
    assert label(http_scope("/predict/../../etc/passwd", "GET")) == "other"
    assert {label(http_scope(f"/random/{i}", "GET")) for i in range(100)} == {"other"}


# ---- metrics ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def metrics(tmp_path_factory):
    return gm.GatewayMetrics(Settings(state_dir=tmp_path_factory.mktemp("state")))


def sample(metrics, name, **labels):
    return metrics.registry.get_sample_value(name, labels) or 0.0


def test_metrics_middleware_counts_by_template_method_and_status(metrics):
    app = FastAPI()

    @app.get("/predict")
    def p():
        return {}

    mw = MetricsMiddleware(echo_app, metrics, RouteLabeler(app.routes))
    before = sample(metrics, "taxi_gateway_requests_total", route="other", method="other", status="200")
    run(call(mw, http_scope("/whatever", "BREW")))
    assert sample(metrics, "taxi_gateway_requests_total", route="other", method="other",
                  status="200") == before + 1
    before = sample(metrics, "taxi_gateway_request_duration_seconds_count", route="/predict")
    run(call(mw, http_scope("/predict", "GET")))
    assert sample(metrics, "taxi_gateway_request_duration_seconds_count", route="/predict") == before + 1


def test_prediction_log_counters_move_by_their_deltas(metrics):
    sent0 = sample(metrics, "taxi_gateway_prediction_log_sent_total")
    dropped0 = sample(metrics, "taxi_gateway_prediction_log_dropped_total")
    base = dict(metrics._log_seen)
    metrics.sync_prediction_log({"sent": base["sent"] + 5, "dropped": 2, "delivery_errors": 1,
                                 "buffered": 4})
    metrics.sync_prediction_log({"sent": base["sent"] + 5, "dropped": 2, "delivery_errors": 1,
                                 "buffered": 3})  # nothing new: no double count
    assert sample(metrics, "taxi_gateway_prediction_log_sent_total") == sent0 + 5
    assert sample(metrics, "taxi_gateway_prediction_log_dropped_total") == dropped0 + 3 - base["dropped"]
    assert sample(metrics, "taxi_gateway_prediction_log_backlog") == 3


# ---- Predictor (pure logic: stand-ins for the lookup, the model server and the log) -----------
class FakeLookup:
    def __init__(self, fail=None):
        self.fail = fail
        self.prior = {}

    def fallback(self, count):
        from taxi_mlops.gateway.features import fallback_rows

        return fallback_rows(count, self.prior)

    async def alookup_many(self, keys):
        if self.fail:
            raise self.fail
        from taxi_mlops.gateway.features import DEFAULTS

        return [(dict(DEFAULTS), ["company_trip_count"]) for _ in keys]


class FakeInference:
    """Answers per target: ``answers[target] = (probability, version)``; targets in ``fail``
    raise like a model server that timed out."""

    def __init__(self, fail=False, answers=None, failing=()):
        self.fail, self.calls = fail, []
        self.answers = answers or {}
        self.failing = set(failing)

    async def infer_batch(self, request_id, rows, target=None):
        self.calls.append(request_id)
        if self.fail or target in self.failing:
            raise ModelServerError("model server at http://x timed out")
        probability, version = self.answers.get(target, (0.73, "5"))
        return [probability] * len(rows), version


class FakeLog:
    def __init__(self):
        self.entries = []

    def log(self, entry):
        self.entries.append(entry)
        return True


def make_predictor(metrics=None, lookup=None, inference=None):
    settings = Settings(request_timeout_s=1.0)
    return Predictor(settings, lambda: lookup or FakeLookup(), inference or FakeInference(),
                     FakeLog(), metrics)


def test_predictor_builds_logs_and_records_one_prediction(metrics):
    p = make_predictor(metrics)
    stage0 = {s: sample(metrics, "taxi_gateway_stage_duration_seconds_count", stage=s) for s in gm.STAGES}
    preds0 = sample(metrics, "taxi_gateway_predictions_total", model_name=p.settings.model_name,
                    model_version="5", alias=p.settings.serving_alias)
    defaulted0 = sample(metrics, "taxi_gateway_defaulted_features_total", feature="company_trip_count")
    ctx = {}
    prediction = run(p.predict(Trip(**TRIP), "rid-1", ctx))
    assert prediction.request_id == "rid-1" and prediction.big_tipper and prediction.model.version == "5"
    assert prediction.defaulted_features == ["company_trip_count"] and ctx["model_version"] == "5"
    assert p.inference.calls == ["rid-1"]
    (entry,) = p.prediction_log.entries
    assert entry.request_id == "rid-1" and entry.model_version == "5"
    for s in gm.STAGES:
        assert sample(metrics, "taxi_gateway_stage_duration_seconds_count", stage=s) == stage0[s] + 1
    assert sample(metrics, "taxi_gateway_predictions_total", model_name=p.settings.model_name,
                  model_version="5", alias=p.settings.serving_alias) == preds0 + 1
    assert sample(metrics, "taxi_gateway_defaulted_features_total",
                  feature="company_trip_count") == defaulted0 + 1


def test_predictor_names_the_dependency_that_failed():
    with pytest.raises(DependencyDown) as down:
        run(make_predictor(inference=FakeInference(fail=True)).predict(Trip(**TRIP), "r"))
    assert down.value.dependency == "model_server"


def test_predictor_without_metrics_records_nothing():
    p = make_predictor(metrics=None)
    assert run(p.predict(Trip(**TRIP), "r")).request_id == "r"


class SlowLookup(FakeLookup):
    """Records the keys of every read; each read takes a while (Redis under load)."""

    def __init__(self):
        super().__init__()
        self.reads = []

    async def alookup_many(self, keys):
        self.reads.append(list(keys))
        await asyncio.sleep(0.05)
        return await super().alookup_many(keys)


class PerRowInference(FakeInference):
    """Answers each row with its own fare / 100, and records each call's rows; slow enough
    that concurrent requests queue behind the first call."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.rows = []

    async def infer_batch(self, request_id, rows, target=None):
        self.calls.append(request_id)
        self.rows.append(len(rows))
        await asyncio.sleep(0.05)
        if self.fail or target in self.failing:
            raise ModelServerError("model server at http://x timed out")
        return [r["fare"] / 100 for r in rows], "5"


def test_concurrent_predictions_share_reads_and_model_calls_and_each_gets_its_own_answer(metrics):
    lookup, inference = SlowLookup(), PerRowInference()
    p = Predictor(Settings(request_timeout_s=2.0), lambda: lookup, inference, FakeLog(), metrics)
    shared0 = {c: sample(metrics, "taxi_gateway_shared_call_size_sum", call=c) for c in gm.SHARED_CALLS}

    async def main():
        first = await p.predict(Trip(**TRIP), "warm")  # builds the lookup: one call of its own
        trips = [Trip(**{**TRIP, "trip_id": f"t{i}", "fare": float(i)}) for i in range(1, 9)]
        return first, await asyncio.gather(*(p.predict(t, f"r{i}") for i, t in enumerate(trips, 1)))

    first, answers = run(main())
    assert [a.tip_probability for a in answers] == [i / 100 for i in range(1, 9)]
    assert [a.request_id for a in answers] == [f"r{i}" for i in range(1, 9)]
    assert len(lookup.reads) < 9 and sum(map(len, lookup.reads)) == 9  # shared, none lost
    assert len(inference.rows) < 9 and sum(inference.rows) == 9
    shared_call = next(c for c in inference.calls if "," in c)  # the v2 id names each request
    assert set(shared_call.split(",")) <= {f"r{i}" for i in range(1, 9)}
    assert sorted(e.request_id for e in p.prediction_log.entries) == sorted(["warm"] + [f"r{i}" for i in range(1, 9)])
    for call in gm.SHARED_CALLS:
        assert sample(metrics, "taxi_gateway_shared_call_size_sum", call=call) == shared0[call] + 9


def test_a_shared_model_call_that_fails_sends_every_request_to_its_fallback():
    inference = PerRowInference(failing={"champion"})
    policy = RoutingPolicy(split=[VariantSpec(name="champion", target="champion", weight=1.0)],
                           fallback="previous")
    p = Predictor(Settings(request_timeout_s=2.0), lambda: FakeLookup(), inference, FakeLog(),
                  router=Router(policy))

    async def main():
        trips = [Trip(**{**TRIP, "trip_id": f"t{i}", "fare": float(i)}) for i in range(1, 6)]
        return await asyncio.gather(*(p.predict(t, f"r{i}") for i, t in enumerate(trips, 1)))

    answers = run(main())
    assert all(a.routing.fallback and a.routing.target == "previous" for a in answers)
    assert [a.tip_probability for a in answers] == [i / 100 for i in range(1, 6)]
    assert Settings(gateway_coalesce_max=1).gateway_coalesce_max == 1


# ---- wiring ----------------------------------------------------------------------------------
def test_metrics_off_means_no_middleware_and_no_endpoint(tmp_path):
    off = create_app(Settings(state_dir=tmp_path, metrics_enabled=False))
    on = create_app(Settings(state_dir=tmp_path, metrics_enabled=True))
    paths = lambda app: {getattr(r, "path", None) for r in app.routes}  # noqa: E731
    classes = lambda app: {m.cls for m in app.user_middleware}  # noqa: E731
    assert "/metrics" not in paths(off) and MetricsMiddleware not in classes(off)
    assert off.state.metrics is None
    assert "/metrics" in paths(on) and MetricsMiddleware in classes(on)
    assert {"/predict", "/health"} <= paths(off)


def test_importing_the_gateway_does_not_choose_the_metrics_mode(tmp_path):
    """prometheus_client picks in-memory or file values at import, and Feast points it at a
    temporary folder: neither may be imported before main() has set our folder."""
    code = textwrap.dedent(f"""
        import os, sys
        import taxi_mlops.gateway.app as app
        assert "prometheus_client" not in sys.modules and "feast" not in sys.modules
        from taxi_mlops.gateway import metrics
        from taxi_mlops.settings import Settings
        s = Settings(state_dir={str(tmp_path)!r}, gateway_port=1234)
        stale = metrics.multiprocess_dir(s) / "counter_1.db"
        stale.parent.mkdir(parents=True); stale.write_bytes(b"old")
        path = metrics.prepare_multiprocess_dir(s)
        assert not stale.exists(), "not wiped"
        assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == os.environ["PROMETHEUS_MULTIPROCESS_DIR"] == str(path)
        mode = metrics.value_mode()
        assert mode == {{"multiprocess": True, "value_class": "MmapedValue", "dir": str(path)}}, mode
        print("ok", path)
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROMETHEUS_MULTIPROC")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert str(tmp_path / "metrics" / "gateway" / "1234") in out.stdout


def test_a_sibling_instance_keeps_the_shared_metrics_folder(tmp_path):
    """Instances on one port share the folder: one starting beside a live sibling keeps the
    files (a crashed sibling's counters stay in the sum); the last one leaving removes it."""
    code = textwrap.dedent(f"""
        import os
        from taxi_mlops.gateway import metrics
        from taxi_mlops.settings import Settings
        s = Settings(state_dir={str(tmp_path)!r}, gateway_port=1234)
        folder = metrics.multiprocess_dir(s)
        folder.mkdir(parents=True)
        crashed = folder / "counter_999999.db"; crashed.write_bytes(b"old")
        (folder / "owner_{os.getpid()}").touch()   # the test process: a live sibling
        path = metrics.prepare_multiprocess_dir(s)
        assert crashed.exists(), "wiped under a live sibling"
        assert (path / f"owner_{{os.getpid()}}").exists()
        metrics.release_multiprocess_dir(path)
        assert path.exists() and not (path / f"owner_{{os.getpid()}}").exists(), "removed under a live sibling"
        (folder / "owner_{os.getpid()}").unlink()
        (folder / "owner_999999").touch()           # a dead owner does not count
        path = metrics.prepare_multiprocess_dir(s)
        assert not crashed.exists(), "not wiped with no live sibling"
        metrics.release_multiprocess_dir(path)
        assert not path.exists(), "the last instance leaving keeps the folder"
        print("ok")
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROMETHEUS_MULTIPROC")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr


# ---- the feature store's breaker and fallback ----------------------------------------------------
def test_the_breaker_skips_the_store_after_a_failure_then_lets_one_request_try():
    from taxi_mlops.gateway.features import StoreBreaker

    now = [100.0]
    b = StoreBreaker(2.0, clock=lambda: now[0])
    assert b.allow() and not b.open
    assert b.failed() is True and b.open          # closed -> open: worth a log line
    assert not b.allow()                          # skipped while open
    now[0] += 2.0
    assert b.allow()                              # one request tries ...
    assert not b.allow()                          # ... the others keep skipping meanwhile
    assert b.failed() is False                    # still down: no second log line
    now[0] += 2.0
    assert b.allow() and b.succeeded() is True and not b.open
    assert b.allow() and b.allow() and b.succeeded() is False


def test_a_down_store_answers_degraded_with_the_last_prior_row(metrics):
    p = make_predictor(metrics, lookup=FakeLookup(fail=ConnectionError("Connection refused")))
    before = sample(metrics, "taxi_gateway_degraded_predictions_total", dependency="feature_store")
    prediction = run(p.predict(Trip(**TRIP), "rid-degraded"))
    assert prediction.degraded == ["feature_store"]
    from taxi_mlops.gateway.features import DEFAULTS

    assert sorted(prediction.defaulted_features) == sorted(DEFAULTS)
    assert sample(metrics, "taxi_gateway_degraded_predictions_total", dependency="feature_store") == before + 1
    assert p.prediction_log.entries[-1].request_id == "rid-degraded"  # still logged
    # The breaker is open: the next request does not even ask the store.
    p._lookup.fail = AssertionError("asked the store while the breaker is open")
    assert run(p.predict(Trip(**TRIP), "rid-2")).degraded == ["feature_store"]


def test_without_the_fallback_a_down_store_is_503_naming_it():
    from taxi_mlops.gateway.errors import DependencyDown

    settings = Settings(request_timeout_s=1.0, feature_store_fallback=False)
    p = Predictor(settings, lambda: FakeLookup(fail=ConnectionError("refused")), FakeInference(), FakeLog())
    with pytest.raises(DependencyDown) as err:
        run(p.predict(Trip(**TRIP), "rid-strict"))
    assert err.value.dependency == "feature_store"


def test_the_fallback_uses_the_prior_row_last_read():
    from taxi_mlops.features import schema
    from taxi_mlops.gateway.features import DEFAULTS, fallback_rows

    name = schema.STORE_FEATURES[0]
    [(values, defaulted)] = fallback_rows(1, {name: 42.0})
    assert values[name] == 42.0 and sorted(defaulted) == sorted(DEFAULTS)
    assert all(values[n] == DEFAULTS[n] for n in DEFAULTS if n != name)


# ---- warm-up ---------------------------------------------------------------------------------------
class _SlowInference:
    """A model server that is there but does not answer in time."""

    async def warm(self, request_id, rows, target=None):
        raise ModelServerError("model server at http://x timed out") from asyncio.TimeoutError()


@pytest.mark.parametrize("absent", [True, False])
def test_warm_up_says_when_no_model_server_listens(absent):
    """No model server at all (no champion yet): start-up serves at once instead of waiting
    WARM_UP_WAIT_S; a slow one is waited for. The absent one is the real client on a port
    nothing listens on."""
    from taxi_mlops.gateway.inference import InferenceClient
    from taxi_mlops.gateway.warmup import WarmUp
    from taxi_mlops.stack.process import free_port

    async def scenario():
        inference = (InferenceClient([f"http://127.0.0.1:{free_port()}"], "m", 1.0) if absent
                     else _SlowInference())
        warm = WarmUp(make_predictor(), inference)
        task = asyncio.create_task(warm.run())
        try:
            await asyncio.wait_for(warm.model_server_absent.wait(), 1.5)
            seen = True
        except asyncio.TimeoutError:
            seen = False
        task.cancel()
        if absent:
            await inference.close()
        return seen, warm.state()

    seen, state = run(scenario())
    assert seen is absent
    assert state["ok"] is False and state["attempts"] >= 1 and "model server" in state["error"]
