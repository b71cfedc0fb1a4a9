"""Batch scoring throughput: the 15,002-row data set through POST /predict/batch (via
``taxi-mlops predict --file``'s code), against the per-request path (/predict, closed loop
with N concurrent clients), in the same run. Needs a running stack (`make demo`).

    .venv/bin/python bench/batch_scoring.py [--per-request-rows 1500] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import csv
import platform
import tempfile
import time
from pathlib import Path

import httpx

from taxi_mlops.gateway.batch import row_to_trip, score_csv
from taxi_mlops.settings import get_settings


def per_request(gateway_url: str, rows: list[dict], concurrency: int) -> tuple[float, int]:
    """Rows/s through /predict with ``concurrency`` clients; returns (rows_per_s, failures)."""
    failures = 0

    def one(client: httpx.Client, trip: dict) -> bool:
        return client.post(f"{gateway_url}/predict", json=trip).status_code == 200

    started = time.perf_counter()
    with httpx.Client(timeout=10, limits=httpx.Limits(max_connections=concurrency)) as client, \
            concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        for ok in pool.map(lambda t: one(client, t), rows):
            failures += not ok
    return len(rows) / (time.perf_counter() - started), failures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-request-rows", type=int, default=1500)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    settings = get_settings()
    src = settings.data_csv
    with open(src, newline="") as f:
        rows = [row_to_trip(r) for r in csv.DictReader(f)][: args.per_request_rows]
    print(f"machine: {platform.node()} {platform.machine()}, gateway {settings.gateway_url}")
    score_csv(settings.gateway_url, src, Path(tempfile.mkdtemp()) / "warm.csv")  # warm-up
    with tempfile.TemporaryDirectory() as tmp:
        batch = score_csv(settings.gateway_url, src, Path(tmp) / "out.csv")
    single, failures = per_request(settings.gateway_url, rows, args.concurrency)
    print(f"batch       {batch['rows']} rows in {batch['seconds']:.2f} s: {batch['rows_per_s']:,.0f} rows/s "
          f"({batch['rejected']} refused by validation)")
    print(f"per-request {len(rows)} rows, {args.concurrency} clients: {single:,.0f} rows/s "
          f"({failures} non-200)")
    print(f"batch / per-request: {batch['rows_per_s'] / single:.1f}x")


if __name__ == "__main__":
    main()
