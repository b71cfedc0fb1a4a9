"""Schemathesis against the gateway's live OpenAPI: every operation it lists (new ones
included, found at run time) is fuzzed with positive and negative data and held to every
check: no 5xx, no accepted schema violation, no status, content type or body outside the
schema, ``Allow`` on 405s.

Where each operation is fuzzed, so that nothing here moves the session's state:
- reads (GET) and the prediction routes (``/predict``, ``/predict/batch``: they change no
  control state; their few hundred predictions join the prediction log like any client's)
  go to the session gateway;
- every other operation changes state and needs the admin token. Those go to a second
  gateway started here: the same code, on its own free port, its own state directory (its
  own rollout store and admin token), serving a model name that is not registered and no
  model server. There they are fuzzed without a token (401), with a wrong one (403) and with
  the valid one, which can only ever reach a refusal: every target resolves against a model
  that does not exist.

Bounded and deterministic for CI: ``MAX_EXAMPLES`` per operation in Hypothesis' generation
phase (plus Schemathesis' example and coverage phases, fixed by the schema), a fixed seed,
no example database.
"""

from __future__ import annotations

import collections
import json

import hypothesis
import pytest
import schemathesis
from schemathesis.checks import positive_data_acceptance
from schemathesis.config import SchemathesisConfig

from taxi_mlops import security
from taxi_mlops.stack import services
from taxi_mlops.stack.process import Supervisor, free_port

pytestmark = pytest.mark.slow

MAX_EXAMPLES = 50
SEED = 1111
TIMEOUT_S = 30.0  # per request; the gateway's own dependency timeout is 2 s
PREDICTION_PATHS = {"/predict", "/predict/batch"}
UNREGISTERED_MODEL = "fuzz-model-that-is-not-registered"
SANDBOX_TOKEN = "fuzz-admin-token"

# No deadline and no health checks: a request's time is the stack's (2 shared cores), not the
# generator's; no database, so a run replays nothing from an earlier one.
FUZZ = hypothesis.settings(max_examples=MAX_EXAMPLES, deadline=None, database=None,
                           suppress_health_check=list(hypothesis.HealthCheck))


def is_read(ctx) -> bool:
    """Operations the session gateway can take from a fuzzer: they change no control state."""
    return ctx.operation.method.upper() == "GET" or ctx.operation.path in PREDICTION_PATHS


def load(url: str):
    return schemathesis.openapi.from_url(f"{url}/openapi.json", config=SchemathesisConfig(seed=SEED),
                                         timeout=10)


class Tally:
    """Requests sent and statuses seen, per operation (printed at the end: ``-s`` shows it)."""

    def __init__(self):
        self.calls = collections.defaultdict(collections.Counter)

    def record(self, group: str, case, response) -> None:
        self.calls[f"{group} {case.operation.label}"][response.status_code] += 1

    def summary(self) -> dict:
        return {"operations": len(self.calls), "requests": sum(sum(c.values()) for c in self.calls.values()),
                "by_operation": {k: dict(sorted(v.items())) for k, v in sorted(self.calls.items())}}


@pytest.fixture(autouse=True)
def _node_id_for_schemathesis(request):
    """Schemathesis 4.32's fixture-loaded schemas read ``node._nodeid`` (to name each
    operation's subtest), an attribute pytest 9.2 no longer has: give it the node id."""
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid


@pytest.fixture(scope="module")
def tally():
    tally = Tally()
    yield tally
    print("\nfuzz summary:", json.dumps(tally.summary(), indent=1))


@pytest.fixture(scope="module")
def session_schema(stack):
    return load(stack.gateway_url)


@pytest.fixture(scope="module")
def sandbox(stack, tmp_path_factory):
    """A second gateway whose valid admin token can change nothing (see the module doc)."""
    settings = stack.model_copy(update={
        "state_dir": tmp_path_factory.mktemp("fuzz-sandbox"), "gateway_port": free_port(),
        "model_name": UNREGISTERED_MODEL, "admin_token": SANDBOX_TOKEN,
        "model_server_port": free_port(), "model_server_replicas": 1,
        # Its own state dir would generate other passwords: log in as the session does.
        **security.shared_secrets(stack)})
    supervisor = Supervisor(settings)
    supervisor.start(services.gateway_service(settings))
    yield settings
    supervisor.stop("gateway")


@pytest.fixture(scope="module")
def sandbox_schema(sandbox):
    return load(sandbox.gateway_url)


session = schemathesis.pytest.from_fixture("session_schema").include(is_read)
state_changes = schemathesis.pytest.from_fixture("sandbox_schema").exclude(is_read)


def refused_first(case, response) -> bool:
    """Answers that come before the token is looked at: 405 for a method the path does not
    have (Schemathesis' coverage phase sends those; its checks want the 405), 422 for a body
    that is not JSON or not UTF-8."""
    if case.method.upper() != case.operation.method.upper():
        return response.status_code == 405
    return response.status_code == 422 and response.json()["detail"][0]["field"] == "body"


@FUZZ
@session.parametrize()
def test_reads_and_predictions(case, tally):
    response = case.call_and_validate(timeout=TIMEOUT_S)
    tally.record("session", case, response)


@FUZZ
@state_changes.parametrize()
def test_state_changes_without_a_token_are_401(case, tally):
    response = case.call_and_validate(timeout=TIMEOUT_S)
    tally.record("no-token", case, response)
    assert response.status_code == 401 or refused_first(case, response), response.text


@FUZZ
@state_changes.parametrize()
def test_state_changes_with_a_wrong_token_are_403(case, tally):
    headers = {"Authorization": "Bearer not-the-token"}
    response = case.call_and_validate(headers=headers, timeout=TIMEOUT_S)
    tally.record("wrong-token", case, response)
    assert response.status_code == 403 or refused_first(case, response), response.text


@FUZZ
@state_changes.parametrize()
def test_state_change_bodies_with_the_token(case, sandbox, tally):
    """Everything but ``positive_data_acceptance``: in the sandbox a schema-valid body is
    refused by design (its targets name versions of a model that is not registered: 422
    naming the field, 404, 409), which is what makes a valid token safe here."""
    headers = {"Authorization": f"Bearer {sandbox.admin_token}"}
    response = case.call_and_validate(headers=headers, excluded_checks=[positive_data_acceptance],
                                      timeout=TIMEOUT_S)
    tally.record("token", case, response)
    assert response.status_code not in (401, 403), response.text
