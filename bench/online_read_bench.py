"""Feast online read latency: one Redis (the baseline) against a 3-master Redis Cluster, in
the same run.

Both are started by the stack's own code (``redis_cluster.redis_services``, a ``Supervisor``
and ``up``'s set-up hook: cluster joined, Feast repo applied) in temporary state directories
on free ports >= 10000; the offline tables of the taxi CSV are materialized into each, and
the stores are torn down at the end. Reads go through the gateway's own ``FeatureLookup``
(the model's feature service plus the realtime view, and the prior row, in one
``get_online_features`` call), for random (pickup area, company) pairs:

* single: one pair per read, what ``POST /predict`` does;
* batch: ``--batch`` pairs per read, what ``POST /predict/batch`` does.

The two stores are read in alternating blocks of ``--block`` reads, so a change of machine
load hits both alike. Prints p50/p99/mean per read and reads per second.

    .venv/bin/python bench/online_read_bench.py [--reads 3000] [--batch 100] [--batch-reads 300]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd

from taxi_mlops import paths
from taxi_mlops.features import schema, store
from taxi_mlops.gateway.features import FeatureLookup
from taxi_mlops.settings import Settings
from taxi_mlops.stack import redis_cluster, services
from taxi_mlops.stack.process import Supervisor, free_port_block

CSV = paths.PROJECT_ROOT / "data" / "chicago_taxi" / "data.csv"


@contextlib.contextmanager
def online_store(nodes: int):
    """Redis (``nodes`` 0) or a cluster of ``nodes`` masters, set up as ``up`` does, loaded."""
    settings = Settings(state_dir=Path(tempfile.mkdtemp(prefix=f"redis-bench-{nodes}-")),
                        redis_port=free_port_block(redis_cluster.port_offsets(max(1, nodes))),
                        redis_cluster_nodes=nodes, startup_timeout_s=120)
    sup = Supervisor(settings)
    procs = redis_cluster.redis_services(settings)
    try:
        started = time.perf_counter()
        for proc in procs:
            sup.start(proc)
        hook = time.perf_counter()
        services.after_start(settings)[procs[-1].name]()
        set_up = time.perf_counter()
        store.write_offline_tables(settings, CSV)
        store.materialize(settings)
        print(f"  {label(nodes)}: started in {hook - started:.1f}s, set-up hook (cluster join, Feast apply; "
              f"the first store pays Feast's import) {set_up - hook:.1f}s, "
              f"materialized {time.perf_counter() - set_up:.1f}s")
        yield settings
    finally:
        for proc in reversed(procs):
            sup.stop(proc.name)
        shutil.rmtree(settings.state_dir, ignore_errors=True)


def label(nodes: int) -> str:
    return "single Redis" if nodes == 0 else f"Redis Cluster ({nodes} masters)"


def entities(settings: Settings) -> tuple[list[int], list[str]]:
    areas = pd.read_parquet(settings.feast_data_dir / f"{schema.AREA_VIEW}.parquet")[schema.AREA_KEY]
    companies = pd.read_parquet(settings.feast_data_dir / f"{schema.COMPANY_VIEW}.parquet")[schema.COMPANY_KEY]
    return sorted(int(a) for a in areas.unique()), sorted(str(c) for c in companies.unique())


def measure(lookups: dict[str, FeatureLookup], pairs: list[tuple[int, str]], size: int, reads: int,
            block: int, rng: random.Random) -> dict[str, list[float]]:
    """Seconds per read, the stores taking turns block by block."""
    times = {name: [] for name in lookups}
    while any(len(t) < reads for t in times.values()):
        for name, lookup in lookups.items():
            for _ in range(min(block, reads - len(times[name]))):
                keys = [rng.choice(pairs) for _ in range(size)]
                started = time.perf_counter()
                got = lookup.lookup_many(keys)
                times[name].append(time.perf_counter() - started)
                assert len(got) == size
    return times


def report(title: str, times: dict[str, list[float]]) -> None:
    print(f"\n{title}")
    print(f"  {'store':<28}{'reads':>7}{'p50 ms':>9}{'p99 ms':>9}{'mean ms':>9}{'reads/s':>9}")
    base = None
    for name, samples in times.items():
        ms = sorted(t * 1000 for t in samples)
        p50, p99 = statistics.median(ms), ms[min(len(ms) - 1, int(0.99 * len(ms)))]
        mean = statistics.fmean(ms)
        print(f"  {name:<28}{len(ms):>7}{p50:>9.2f}{p99:>9.2f}{mean:>9.2f}{1000 / mean:>9.0f}")
        if base is None:
            base = (p50, p99)
        else:
            print(f"  {'vs single':<28}{'':>7}{p50 / base[0]:>8.2f}x{p99 / base[1]:>8.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reads", type=int, default=3000, help="single-pair reads per store")
    parser.add_argument("--batch", type=int, default=100, help="pairs per batch read")
    parser.add_argument("--batch-reads", type=int, default=300, help="batch reads per store")
    parser.add_argument("--block", type=int, default=100, help="reads per turn before switching store")
    parser.add_argument("--nodes", type=int, default=3, help="masters of the cluster")
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    rng = random.Random(12)
    with online_store(0) as single, online_store(args.nodes) as cluster:
        areas, companies = entities(single)
        pairs = [(a, c) for a in areas for c in companies]
        lookups = {label(0): FeatureLookup(single), label(args.nodes): FeatureLookup(cluster)}
        for lookup in lookups.values():  # connections, registry cache, first-call imports
            for _ in range(20):
                lookup.lookup_many([rng.choice(pairs)])
        print(f"  {len(areas)} areas x {len(companies)} companies; reads alternate in blocks of {args.block}")
        report("one (area, company) pair per read  (POST /predict)",
               measure(lookups, pairs, 1, args.reads, args.block, rng))
        report(f"{args.batch} pairs per read  (POST /predict/batch)",
               measure(lookups, pairs, args.batch, args.batch_reads, max(1, args.block // 10), rng))
    print(f"\nload average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
