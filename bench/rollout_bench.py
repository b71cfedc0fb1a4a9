"""What routing costs, measured against itself in one run: router overhead, shadow cost,
and alias swaps under load.

Phases at the same open-loop rate, interleaved (baseline, split, shadow, baseline, ...) so
machine noise lands on all of them alike:
- **baseline**: every request to the champion (one variant, no router work to speak of);
- **split**: 50/50 sticky split between the champion and a second version;
- **shadow**: the champion answers, 100% mirrored to the second version after the response;
- **swaps**: steady load while the champion alias moves 10 times between the two versions
  (the model servers hot-swap); every non-2xx is counted.

The second version is the champion's own MLflow Model registered again (same weights), so
the split and shadow figures are the cost of routing and mirroring, not of a different model.
Needs a running stack with a champion (`make demo`). Restores the policy and aliases at the end.

    .venv/bin/python bench/rollout_bench.py --rate 40 --seconds 15 --rounds 2
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from predict_load import open_loop, sample_trips, summarize  # noqa: E402

from taxi_mlops import security  # noqa: E402
from taxi_mlops.registry import models  # noqa: E402
from taxi_mlops.settings import get_settings  # noqa: E402

SINGLE = {"split": [{"name": "champion", "target": "champion", "weight": 1}]}
SPLIT = {"split": [{"name": "a", "target": "champion", "weight": 0.5},
                   {"name": "b", "target": "bench", "weight": 0.5}]}
SHADOW = {**SINGLE, "shadow": {"target": "bench", "percent": 100}}


def second_version(settings, champion) -> str:
    """The champion's model registered again, under alias ``bench``."""
    client = models.client(settings.mlflow_tracking_uri)
    # MLflow 3: a models:/m-... source must name its logged model.
    model_id = champion.source.split("/")[-1] if champion.source.startswith("models:/m-") else None
    mv = client.create_model_version(settings.model_name, source=champion.source, run_id=champion.run_id,
                                     tags={**champion.tags, "bench": "rollout_bench"}, model_id=model_id)
    client.set_registered_model_alias(settings.model_name, "bench", mv.version)
    return str(mv.version)


def await_alias(settings, alias: str, version: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ok = True
        for url in settings.model_server_urls:
            try:
                body = httpx.get(f"{url}/v2/models/{settings.model_name}/versions", timeout=5).json()
                ok &= body["aliases"].get(alias) == version
            except (httpx.HTTPError, ValueError, KeyError):
                ok = False
        if ok:
            return
        time.sleep(0.2)
    raise SystemExit(f"model servers never served {alias}={version}")


def set_policy(settings, policy: dict, headers: dict) -> None:
    r = httpx.put(f"{settings.gateway_url}/routing", json=policy, headers=headers, timeout=30)
    r.raise_for_status()
    time.sleep(settings.routing_refresh_s * 2 + 0.5)  # every gateway worker rereads the store


async def phase(url: str, trips: list[dict], rate: float, seconds: float) -> tuple[list[float], dict]:
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=50)
    async with httpx.AsyncClient(timeout=10, limits=limits) as client:
        await client.post(url, json=trips[0])
        latencies, statuses, _ = await open_loop(client, url, trips, rate, seconds)
    return latencies, statuses


async def swaps_under_load(settings, url, trips, rate, versions: tuple[str, str], n: int) -> tuple[list, dict]:
    client = models.client(settings.mlflow_tracking_uri)
    seconds = n * 4.0 + 4.0
    load = asyncio.create_task(phase(url, trips, rate, seconds))
    await asyncio.sleep(2.0)
    for i in range(n):
        target = versions[(i + 1) % 2]
        await asyncio.to_thread(client.set_registered_model_alias, settings.model_name, "champion", target)
        await asyncio.to_thread(await_alias, settings, "champion", target)
        await asyncio.sleep(1.0)
    return await load


def router_cost_us(n: int = 200_000) -> dict[str, float]:
    """The routing decision itself, in-process (no network, no noise from the other phases)."""
    from taxi_mlops.gateway.router import ExperimentRoute, Router, RoutingPolicy

    routers = {
        "single": Router(RoutingPolicy.model_validate(SINGLE)),
        "split 50/50": Router(RoutingPolicy.model_validate({**SPLIT, "split": [
            {"name": "a", "target": "champion", "weight": 0.5}, {"name": "b", "target": "7", "weight": 0.5}]})),
        "split + shadow": Router(RoutingPolicy.model_validate({**SPLIT, "shadow": {"target": "5", "percent": 100}})),
        "experiment": Router(RoutingPolicy(), ExperimentRoute("e", {"control": 0.5, "treatment": 0.5},
                                                             {"control": "1", "treatment": "2"})),
    }
    trips = [{"trip_id": f"t{i}"} for i in range(1000)]
    out = {}
    for name, router in routers.items():
        start = time.perf_counter()
        for i in range(n):
            router.route(trips[i % 1000])
        out[name] = (time.perf_counter() - start) / n * 1e6
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=40.0)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--swaps", type=int, default=10)
    args = parser.parse_args()
    settings = get_settings()
    security.use_mlflow_credentials(settings)  # the registry calls in this process: MLflow's admin
    headers = {"Authorization": f"Bearer {security.read_token(settings)}"}
    champion = models.by_alias(settings.mlflow_tracking_uri, settings.model_name, "champion")
    if champion is None:
        raise SystemExit("no champion: run `make demo` (or `taxi-mlops up && taxi-mlops train`) first")
    bench_version = second_version(settings, champion)
    await_alias(settings, "bench", bench_version)
    url = f"{settings.gateway_url}/predict"
    trips = [{**t, "trip_id": f"bench-{i}"} for i, t in enumerate(sample_trips(2000))]
    results: dict[str, list[float]] = {"baseline": [], "split": [], "shadow": []}
    statuses: dict[str, dict] = {k: {} for k in results}
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
          f"{args.rate:.0f} req/s open loop, {args.seconds:.0f}s per phase, {args.rounds} rounds")
    try:
        for r in range(args.rounds):
            for name, policy in (("baseline", SINGLE), ("split", SPLIT), ("shadow", SHADOW)):
                set_policy(settings, policy, headers)
                latencies, st = asyncio.run(phase(url, trips, args.rate, args.seconds))
                results[name] += latencies
                for k, v in st.items():
                    statuses[name][k] = statuses[name].get(k, 0) + v
                s = summarize(latencies)
                print(f"  round {r + 1} {name:8s} p50 {s['p50_ms']:6.2f} ms  p99 {s['p99_ms']:6.2f} ms  {st}",
                      flush=True)
        set_policy(settings, SINGLE, headers)
        swap_lat, swap_st = asyncio.run(swaps_under_load(settings, url, trips, args.rate,
                                                         (champion.version, bench_version), args.swaps))
    finally:
        client = models.client(settings.mlflow_tracking_uri)
        client.set_registered_model_alias(settings.model_name, "champion", champion.version)
        client.delete_registered_model_alias(settings.model_name, "bench")
        httpx.put(f"{settings.gateway_url}/routing", json=SINGLE, headers=headers, timeout=30)
    base = summarize(results["baseline"])
    print()
    print("| phase | requests | p50 ms | p99 ms | vs baseline p99 | non-2xx |")
    print("|---|---|---|---|---|---|")
    for name in results:
        s = summarize(results[name])
        bad = sum(v for k, v in statuses[name].items() if not (isinstance(k, int) and k < 300))
        print(f"| {name} | {len(results[name])} | {s['p50_ms']:.2f} | {s['p99_ms']:.2f} | "
              f"{s['p99_ms'] - base['p99_ms']:+.2f} ms ({(s['p99_ms'] / base['p99_ms'] - 1) * 100:+.1f}%) | {bad} |")
    s = summarize(swap_lat)
    bad = sum(v for k, v in swap_st.items() if not (isinstance(k, int) and k < 300))
    print(f"| {args.swaps} alias swaps under load | {len(swap_lat)} | {s['p50_ms']:.2f} | {s['p99_ms']:.2f} | "
          f"{s['p99_ms'] - base['p99_ms']:+.2f} ms | {bad} |")
    print(f"\nstatuses during swaps: {swap_st}")
    print("\nrouting decision in-process (Router.route, per request): " +
          ", ".join(f"{k} {v:.1f} µs" for k, v in router_cost_us().items()))


if __name__ == "__main__":
    main()
