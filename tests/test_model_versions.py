"""The model server hosts several registered versions at once and follows alias moves
without a restart (issue 7): versioned v2 routes by number or alias, the listing, a hot swap
of ``champion`` under steady traffic with no failed request, and the admin-only refresh.

Every alias this module sets is removed again, and ``champion`` is always moved back to the
session's champion (and awaited) before the module ends: later tests rely on it.
"""

from __future__ import annotations

import threading
import time
from collections import Counter

import httpx
import pytest
from mlflow import MlflowClient

from taxi_mlops import security
from taxi_mlops.features import schema

pytestmark = pytest.mark.slow

ALIAS = "versions-test"  # ours alone: other tests may own "challenger"
LOAD_DEADLINE_S = 240  # a cold TensorFlow load on a busy 2-core machine


def _inputs(trip: dict) -> list[dict]:
    values = schema.model_inputs(trip, {"area_trip_count": 900.0, "area_avg_fare": 11.0,
                                        "area_tip_rate": 0.3})
    return [{"name": n, "datatype": dt, "shape": [1], "data": [values[n]]}
            for n, dt in schema.SERVING_DTYPES.items()]


def _listing(settings) -> dict:
    r = httpx.get(f"{settings.model_server_url}/v2/models/{settings.model_name}/versions", timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def _await(predicate, deadline_s: float, what: str):
    deadline = time.monotonic() + deadline_s
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except httpx.HTTPError as exc:
            last = exc
        if last is True:
            return
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def _serves(settings, alias: str, version: str) -> bool | dict:
    listing = _listing(settings)
    return (listing["aliases"].get(alias) == version
            and listing["versions"].get(version, {}).get("state") == "ready") or listing


@pytest.fixture(scope="module")
def second(stack, champion, settings):
    """A second registered version of the champion's model, holding ``ALIAS``; awaited ready."""
    client = MlflowClient(settings.mlflow_tracking_uri)
    # MLflow 3: a "models:/<model_id>" source must name that logged model
    model_id = champion.source.split("/", 1)[1] if champion.source.startswith("models:/m-") else None
    mv = client.create_model_version(settings.model_name, source=champion.source,
                                     run_id=champion.run_id, tags=champion.tags, model_id=model_id)
    new = str(mv.version)
    client.set_registered_model_alias(settings.model_name, ALIAS, new)
    try:
        _await(lambda: _serves(settings, ALIAS, new), LOAD_DEADLINE_S, f"version {new} ready")
        yield new
    finally:
        client.set_registered_model_alias(settings.model_name, "champion", champion.version)
        client.delete_registered_model_alias(settings.model_name, ALIAS)
        _await(lambda: _serves(settings, "champion", champion.version), 60, "champion restored")


def _post(settings, path: str, body: dict, **kw) -> httpx.Response:
    return httpx.post(f"{settings.model_server_url}/v2/models/{settings.model_name}{path}",
                      json=body, timeout=10, **kw)


def test_two_versions_answer_by_number_and_by_alias(stack, champion, second, trip):
    body = {"id": "v-1", "inputs": _inputs(trip)}
    for ref, version in [(champion.version, champion.version), (second, second),
                         (ALIAS, second), ("champion", champion.version)]:
        r = _post(stack, f"/versions/{ref}/infer", body)
        assert r.status_code == 200, (ref, r.text)
        out = r.json()
        assert out["model_version"] == version and out["model_name"] == stack.model_name
        assert out["id"] == "v-1" and 0.0 <= out["outputs"][0]["data"][0] <= 1.0
    base = f"{stack.model_server_url}/v2/models/{stack.model_name}"
    ready = httpx.get(f"{base}/versions/{ALIAS}/ready", timeout=5)
    assert ready.status_code == 200 and ready.json()["model_version"] == second
    meta = httpx.get(f"{base}/versions/{ALIAS}", timeout=5).json()
    assert meta["model_version"] == second and ALIAS in meta["aliases"]
    assert {i["name"]: i["datatype"] for i in meta["inputs"]} == schema.SERVING_DTYPES
    listing = _listing(stack)
    assert listing["aliases"]["champion"] == champion.version and listing["aliases"][ALIAS] == second
    entry = listing["versions"][second]
    assert entry["state"] == "ready" and entry["aliases"] == [ALIAS] and entry["pinned"] is False
    assert entry["loaded_at"].endswith("Z") and "family" in entry
    # bad input is still a 400 naming the input, on the versioned route too
    bad = _post(stack, f"/versions/{second}/infer", {"inputs": _inputs(trip)[1:]})
    assert bad.status_code == 400 and "missing input(s)" in bad.json()["error"]
    garbled = httpx.post(f"{base}/versions/{second}/infer", content=b'{"inputs": [', timeout=10)
    assert garbled.status_code == 400 and "not a v2 inference request" in garbled.json()["error"]


def test_unknown_versions_and_aliases_are_404_naming_them(stack, second, trip):
    body = {"inputs": _inputs(trip)}
    for ref in ("987654", "no-such-alias"):
        r = _post(stack, f"/versions/{ref}/infer", body)
        assert r.status_code == 404 and ref in r.json()["error"], r.text
        r = httpx.get(f"{stack.model_server_url}/v2/models/{stack.model_name}/versions/{ref}/ready",
                      timeout=5)
        assert r.status_code == 404 and ref in r.json()["error"], r.text
    r = httpx.post(f"{stack.model_server_url}/v2/models/no-such-model/versions/1/infer", json=body,
                   timeout=5)
    assert r.status_code == 404 and "no-such-model" in r.json()["error"]


def test_champion_hot_swap_under_load_fails_no_request(stack, champion, second, trip):
    client = MlflowClient(stack.mlflow_tracking_uri)
    body = {"inputs": _inputs(trip)}
    answered: Counter = Counter()
    failures: list[str] = []
    stop = threading.Event()

    def traffic():
        with httpx.Client(timeout=10) as http:
            while not stop.is_set():
                try:
                    r = http.post(f"{stack.model_server_url}/v2/models/{stack.model_name}/infer", json=body)
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))
                    continue
                if r.status_code == 200:
                    answered[r.json()["model_version"]] += 1
                else:
                    failures.append(f"{r.status_code} {r.text[:200]}")

    sender = threading.Thread(target=traffic, daemon=True)
    sender.start()
    try:
        for _ in range(2):
            for version in (second, champion.version):
                client.set_registered_model_alias(stack.model_name, "champion", version)
                _await(lambda: _serves(stack, "champion", version), 60, f"champion -> {version}")
                seen = answered[version]
                _await(lambda: answered[version] > seen or answered, 30, f"an answer by {version}")
    finally:
        client.set_registered_model_alias(stack.model_name, "champion", champion.version)
        stop.set()
        sender.join(15)
    assert not failures, failures[:5]
    assert answered[second] > 0 and answered[champion.version] > 0, answered


def test_refresh_needs_the_admin_token(stack, second):
    url = f"{stack.model_server_url}/v2/models/{stack.model_name}/refresh"
    assert httpx.post(url, timeout=10).status_code == 401
    assert httpx.post(url, headers={"Authorization": "Bearer wrong"}, timeout=10).status_code == 403
    token = security.ensure_token(stack)
    r = httpx.post(url, headers={"Authorization": f"Bearer {token}"}, timeout=90)
    assert r.status_code == 200, r.text
    assert r.json()["aliases"][ALIAS] == second and second in r.json()["versions"]
