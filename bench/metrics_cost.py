"""What the gateway's metrics cost per /predict: p50/p99 with metrics on and off, one run.

Two gateways (TAXI_METRICS_ENABLED=true / false, every other setting the same) are started on
free ports against the same running stack and driven alternately, round after round, at the
same open-loop rate (as bench/predict_load.py), so drift in the shared stack (Redis, model
server, Kafka, other load on the 2 cores) hits both alike. A second, noise-free figure: the
recording calls one /predict makes, timed in-process in multiprocess mode.

The stack comes from Settings (TAXI_* variables; defaults = the dev stack of `taxi-mlops up`):

    .venv/bin/python bench/metrics_cost.py --rate 50 --rounds 15 --round-seconds 2
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from predict_load import open_loop, sample_trips, summarize  # noqa: E402

from taxi_mlops.settings import get_settings  # noqa: E402
from taxi_mlops.stack import services  # noqa: E402
from taxi_mlops.stack.process import Supervisor, free_port  # noqa: E402


def recording_cost_us(n: int = 20_000) -> float:
    """Microseconds of metric recording per /predict (request counter + duration, three stage
    histograms, prediction counter + probability), with file-backed multiprocess values."""
    folder = tempfile.mkdtemp(prefix="taxi-metrics-cost-")
    for var in ("PROMETHEUS_MULTIPROC_DIR", "PROMETHEUS_MULTIPROCESS_DIR"):
        os.environ[var] = folder  # before prometheus_client's first import in this process
    from taxi_mlops.gateway.metrics import GatewayMetrics, value_mode

    assert value_mode()["multiprocess"], "prometheus_client was imported before the folder was set"
    settings = get_settings()
    m = GatewayMetrics(settings)
    started = time.perf_counter()
    for _ in range(n):
        m.record_request("/predict", "POST", 200, 0.009)
        m.observe_stage("feature_lookup", 0.002)
        m.observe_stage("inference", 0.005)
        m.observe_stage("prediction_log", 0.0001)
        m.record_prediction(settings.model_name, "1", settings.serving_alias, 0.7, [])
    return (time.perf_counter() - started) / n * 1e6


async def drive(urls: dict[str, str], rate: float, rounds: int, round_seconds: float) -> dict:
    trips = sample_trips(500)
    results = {name: {"latencies": [], "statuses": {}, "round_p50": []} for name in urls}
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=50)
    async with httpx.AsyncClient(timeout=10, limits=limits) as client:
        for url in urls.values():  # warm-up: Feast client, connections, model server path
            for trip in trips[:20]:
                await client.post(url, json=trip)
        order = list(urls)
        for r in range(rounds):
            for name in (order if r % 2 == 0 else order[::-1]):  # ABBA: neither always goes first
                latencies, statuses, _ = await open_loop(client, urls[name], trips, rate, round_seconds)
                results[name]["latencies"] += latencies
                results[name]["round_p50"].append(statistics.median(latencies))
                for code, count in statuses.items():
                    results[name]["statuses"][code] = results[name]["statuses"].get(code, 0) + count
    return {name: {**summarize(r["latencies"]), "requests": len(r["latencies"]),
                   "statuses": r["statuses"], "round_p50": r["round_p50"]} for name, r in results.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=50.0, help="requests per second, each gateway")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--round-seconds", type=float, default=2.0)
    args = parser.parse_args()

    settings = get_settings()
    probe = httpx.get(f"{settings.model_server_url}/v2/models/{settings.model_name}/ready", timeout=5)
    if probe.status_code != 200:
        sys.exit(f"no model server ready at {settings.model_server_url}: start the stack first")

    supervisor = Supervisor(settings)
    gateways = {}
    for name, enabled in (("metrics_on", True), ("metrics_off", False)):
        variant = settings.model_copy(update={"gateway_port": free_port(), "metrics_enabled": enabled})
        gateways[name] = (variant, dataclasses.replace(services.gateway_service(variant),
                                                       name=f"bench-gateway-{name.replace('_', '-')}"))
    try:
        for variant, service in gateways.values():
            supervisor.start(service)
        on_url = gateways["metrics_on"][0].gateway_url
        assert httpx.get(f"{on_url}/metrics", timeout=5).status_code == 200
        assert httpx.get(f"{gateways['metrics_off'][0].gateway_url}/metrics", timeout=5).status_code == 404
        urls = {name: f"{variant.gateway_url}/predict" for name, (variant, _) in gateways.items()}
        result = asyncio.run(drive(urls, args.rate, args.rounds, args.round_seconds))
    finally:
        for _, service in gateways.values():
            supervisor.stop(service.name)

    per_round = args.rate * args.round_seconds
    print(f"{os.cpu_count()} cores; gateways with {settings.gateway_workers} worker(s) against the stack "
          f"at {settings.model_server_url} / {settings.redis_url}")
    print(f"{args.rounds} interleaved rounds x {per_round:.0f} requests per gateway at {args.rate:.0f} req/s")
    for name, r in result.items():
        print(f"  {name:<12} p50 {r['p50_ms']:6.2f} ms   p99 {r['p99_ms']:6.2f} ms   mean "
              f"{r['mean_ms']:6.2f} ms   {r['requests']} requests {r['statuses']}")
    on, off = result["metrics_on"], result["metrics_off"]
    print(f"  difference   p50 {on['p50_ms'] - off['p50_ms']:+6.2f} ms   p99 "
          f"{on['p99_ms'] - off['p99_ms']:+6.2f} ms   mean {on['mean_ms'] - off['mean_ms']:+6.2f} ms"
          f"   (goal: p50 <= +0.30 ms)")
    paired = sorted(a - b for a, b in zip(on["round_p50"], off["round_p50"]))
    q = statistics.quantiles(paired, n=4) if len(paired) > 1 else paired * 3
    print(f"  per-round p50 difference (on - off, same round): median {statistics.median(paired):+.2f} ms"
          f"   quartiles {q[0]:+.2f} / {q[2]:+.2f} ms   ({len(paired)} rounds; robust to load drift)")
    print(f"  recording calls per /predict, in-process: {recording_cost_us():.1f} us")


if __name__ == "__main__":
    main()
