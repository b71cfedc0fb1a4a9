"""The gateway's metrics and logs against the real stack: every [gateway] family is served
and moves with traffic, a request id round-trips into the JSON log, and two worker processes
add up to the right counts."""

from __future__ import annotations

import glob
import json
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from taxi_mlops.gateway import metrics as gateway_metrics
from taxi_mlops.stack import services
from taxi_mlops.stack.process import free_port, wait_for

pytestmark = pytest.mark.slow


def scrape(base_url: str) -> dict[tuple[str, tuple], float]:
    """``{(sample name, sorted labels): value}`` from ``/metrics``."""
    r = httpx.get(f"{base_url}/metrics", timeout=10)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def total(samples: dict, name: str, **labels) -> float:
    """Sum of ``name`` over the samples whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


def names(samples: dict) -> set[str]:
    return {n for n, _ in samples}


def test_every_gateway_family_is_served_and_moves(stack, trip):
    url = stack.gateway_url
    before = scrape(url)
    posted = [httpx.post(f"{url}/predict", json=t, timeout=10) for t in
              (trip, {**trip, "trip_id": "obs-2"}, {**trip, "company": f"New Cab {uuid.uuid4().hex[:6]}"})]
    assert [r.status_code for r in posted] == [200, 200, 200]
    version = posted[0].json()["model"]["version"]

    # Kafka acknowledges asynchronously; the sent counter follows within a sync interval.
    sent_before = total(before, "taxi_gateway_prediction_log_sent_total")
    assert wait_for(lambda: total(scrape(url), "taxi_gateway_prediction_log_sent_total")
                    >= sent_before + 3, 30, 0.2), "prediction log sends never counted"
    after = scrape(url)

    exposed = names(after)
    for family in gateway_metrics.FAMILIES:
        assert family in exposed or f"{family}_count" in exposed, f"{family} missing from /metrics"
    assert not {n for n in exposed if not n.startswith("taxi_gateway_")}, "foreign families exposed"

    def moved(name, by=1, **labels):
        return total(after, name, **labels) - total(before, name, **labels) >= by

    assert moved("taxi_gateway_requests_total", 3, route="/predict", method="POST", status="200")
    assert moved("taxi_gateway_request_duration_seconds_count", 3, route="/predict")
    assert moved("taxi_gateway_request_duration_seconds_bucket", 3, route="/predict", le="+Inf")
    for stage in gateway_metrics.STAGES:
        assert moved("taxi_gateway_stage_duration_seconds_count", 3, stage=stage), stage
    assert moved("taxi_gateway_predictions_total", 3, model_name=stack.model_name,
                 model_version=version, alias=stack.serving_alias)
    assert moved("taxi_gateway_prediction_probability_count", 3, model_version=version)
    assert moved("taxi_gateway_defaulted_features_total", 1, feature="company_trip_count")
    for call in gateway_metrics.SHARED_CALLS:  # one read and one model call per lone request
        assert moved("taxi_gateway_shared_call_size_count", 3, call=call), call
    assert moved("taxi_gateway_prediction_log_sent_total", 3)
    assert total(after, "taxi_gateway_prediction_log_backlog") >= 0
    assert total(after, "taxi_gateway_prediction_log_dropped_total") >= 0


def test_unknown_paths_share_one_route_label(stack):
    for i in range(5):
        assert httpx.get(f"{stack.gateway_url}/no/such/{uuid.uuid4().hex}", timeout=10).status_code == 404
    routes = {dict(ls).get("route") for n, ls in scrape(stack.gateway_url)
              if n == "taxi_gateway_requests_total"}
    assert "other" in routes and all(r == "other" or r.startswith("/") and "no/such" not in r
                                     for r in routes)


def read_log(path) -> list[dict]:
    entries = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            entries.append(json.loads(line))
        except ValueError:
            continue
    return entries


def test_request_id_round_trips_into_the_json_log(stack, trip):
    rid = f"obs-{uuid.uuid4().hex[:12]}"
    r = httpx.post(f"{stack.gateway_url}/predict", json=trip, headers={"X-Request-ID": rid}, timeout=10)
    assert r.status_code == 200
    assert r.headers["x-request-id"] == rid and r.json()["request_id"] == rid

    # Whichever gateway instance answered logged it, in its own file.
    log_paths = [stack.logs_dir / f"{g.name}.log" for g in services.gateway_services(stack)]

    def logged():
        return [e for path in log_paths for e in read_log(path)
                if e.get("request_id") == rid and e.get("message") == "predict"]

    assert wait_for(lambda: bool(logged()), 10, 0.1), f"no predict line for {rid} in {log_paths}"
    (line,) = logged()
    assert line["component"] == "gateway" and line["level"] == "INFO" and line["ts"].endswith("Z")
    assert line["status"] == 200 and line["model_version"] == r.json()["model"]["version"]
    assert line["latency_ms"] > 0

    odd = httpx.post(f"{stack.gateway_url}/predict", json=trip, headers={"X-Request-ID": "no spaces!"},
                     timeout=10)
    assert odd.status_code == 200 and odd.headers["x-request-id"] == odd.json()["request_id"] != "no spaces!"

    # The metrics live in the gateway's own folder (not the temporary one importing Feast makes).
    modes = [e for path in log_paths for e in read_log(path) if e.get("message") == "metrics in multiprocess mode"]
    assert modes and modes[-1]["metrics_dir"] == str(gateway_metrics.multiprocess_dir(stack))
    assert modes[-1]["value_class"] == "MmapedValue"


def per_worker_predict_counts(path) -> dict[str, float]:
    counts = {}
    for f in glob.glob(str(path / "counter_*.db")):
        for family in MultiProcessCollector.merge([f]):
            for s in family.samples:
                if s.name == "taxi_gateway_requests_total" and s.labels.get("route") == "/predict":
                    counts[f] = counts.get(f, 0) + s.value
    return counts


def test_two_workers_add_up(stack, supervisor, trip):
    two = stack.model_copy(update={"gateway_port": free_port(), "gateway_workers": 2})
    service = services.gateway_service(two, name="gateway-2workers")
    supervisor.start(service)
    try:
        def one(i):
            # a connection per request, so the kernel hands them to both workers
            r = httpx.post(f"{two.gateway_url}/predict", json={**trip, "trip_id": f"w-{i}"},
                           headers={"Connection": "close"}, timeout=10)
            return r.status_code

        with ThreadPoolExecutor(8) as pool:
            assert list(pool.map(one, range(40))) == [200] * 40
        samples = scrape(two.gateway_url)
        assert total(samples, "taxi_gateway_requests_total", route="/predict", method="POST") == 40
        assert total(samples, "taxi_gateway_predictions_total") == 40
        assert total(samples, "taxi_gateway_stage_duration_seconds_count", stage="inference") == 40
        workers = per_worker_predict_counts(gateway_metrics.multiprocess_dir(two))
        assert sum(workers.values()) == 40
        assert len([c for c in workers.values() if c > 0]) == 2, f"one worker served all: {workers}"
    finally:
        supervisor.stop(service.name)
