"""Drive the gateway's /predict at a fixed request rate; print p50/p99 latency and throughput.

Open loop: requests are sent on schedule whether or not earlier ones have answered, so a slow
server shows up as latency, not as a lower offered rate. Needs a running stack
(`make demo`, or `taxi-mlops up && taxi-mlops train`).

    .venv/bin/python bench/predict_load.py --rate 50 --seconds 20
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import random
import statistics
import time

import httpx
import pandas as pd

from taxi_mlops.settings import get_settings


def sample_trips(n: int) -> list[dict]:
    df = pd.read_csv(get_settings().data_csv).sample(n, random_state=1, replace=True)
    trips = []
    for _, r in df.iterrows():
        area = None if pd.isna(r.pickup_community_area) else int(r.pickup_community_area)
        trips.append({
            "trip_miles": float(min(max(r.trip_miles, 0), 500)), "fare": float(min(max(r.fare, 0), 1000)),
            "trip_seconds": int(0 if pd.isna(r.trip_seconds) else min(r.trip_seconds, 86400)),
            "trip_start_hour": int(r.trip_start_hour), "trip_start_day": int(r.trip_start_day),
            "trip_start_month": int(r.trip_start_month), "pickup_community_area": area,
            "payment_type": str(r.payment_type),
            "company": None if pd.isna(r.company) else str(r.company),
        })
    return trips


async def open_loop(client: httpx.AsyncClient, url: str, trips: list[dict], rate: float,
                    seconds: float) -> tuple[list[float], dict, float]:
    """Send ``rate * seconds`` requests on schedule; (latencies in ms, status counts, elapsed s)."""
    latencies, statuses = [], {}

    async def one(trip):
        t0 = time.perf_counter()
        try:
            r = await client.post(url, json=trip)
            code = r.status_code
        except httpx.HTTPError as exc:
            code = type(exc).__name__
        latencies.append((time.perf_counter() - t0) * 1000)
        statuses[code] = statuses.get(code, 0) + 1

    total = int(rate * seconds)
    start = time.perf_counter()
    tasks = []
    for i in range(total):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(random.choice(trips))))
    await asyncio.gather(*tasks)
    return latencies, statuses, time.perf_counter() - start


def summarize(latencies: list[float]) -> dict:
    latencies = sorted(latencies)
    q = statistics.quantiles(latencies, n=100)
    return {"p50_ms": q[49], "p99_ms": q[98], "max_ms": latencies[-1], "mean_ms": statistics.fmean(latencies)}


async def run(rate: float, seconds: float, url: str) -> dict:
    trips = sample_trips(500)
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=50)
    async with httpx.AsyncClient(timeout=10, limits=limits) as client:
        await client.post(url, json=trips[0])  # warm-up
        latencies, statuses, elapsed = await open_loop(client, url, trips, rate, seconds)
    total = len(latencies)
    return {"requests": total, "offered_rps": rate, "achieved_rps": total / elapsed,
            **summarize(latencies), "statuses": statuses}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=50.0, help="requests per second")
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    url = f"{get_settings().gateway_url}/predict"
    result = asyncio.run(run(args.rate, args.seconds, url))
    print(f"machine: {platform.processor() or platform.machine()}, {__import__('os').cpu_count()} cores")
    print(f"POST {url} at {args.rate:.0f} req/s for {args.seconds:.0f}s: {result['requests']} requests")
    print(f"throughput {result['achieved_rps']:.1f} req/s   p50 {result['p50_ms']:.1f} ms   "
          f"p99 {result['p99_ms']:.1f} ms   max {result['max_ms']:.1f} ms   statuses {result['statuses']}")


if __name__ == "__main__":
    main()
