"""What MLflow's basic-auth app costs a registry read.

Three MLflow servers started by our own code (``stack/services.mlflow_service``) on free ports,
one after another, each with an empty state directory: no authentication (the baseline),
basic-auth as the stack runs it (credential cache, 60 s), and basic-auth without the cache
(every request hashes the password with PBKDF2). Against each: ``--requests`` sequential
``GetRegisteredModel`` calls as the read-only user, the call the model servers poll with, on
one keep-alive connection. Prints p50/p99 and throughput per mode (no asserts).

    .venv/bin/python bench/mlflow_auth_bench.py [--requests 200]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from taxi_mlops import security  # noqa: E402
from taxi_mlops.settings import Settings  # noqa: E402
from taxi_mlops.stack import services  # noqa: E402
from taxi_mlops.stack.process import Supervisor, free_port  # noqa: E402

MODEL = "bench-model"


def _measure(settings: Settings, requests: int) -> list[float]:
    admin = security.mlflow_http_auth(settings, security.MLFLOW_ADMIN)
    reader = security.mlflow_http_auth(settings, security.MLFLOW_READER)
    api = f"{settings.mlflow_tracking_uri}/api/2.0/mlflow"
    httpx.post(f"{api}/registered-models/create", json={"name": MODEL}, auth=admin, timeout=60).raise_for_status()
    out = []
    with httpx.Client(auth=reader, timeout=60) as client:
        for i in range(requests + 5):
            started = time.perf_counter()
            client.get(f"{api}/registered-models/get", params={"name": MODEL}).raise_for_status()
            if i >= 5:  # the first calls warm the connection and the cache
                out.append(time.perf_counter() - started)
    return out


def run(mode: str, requests: int) -> list[float]:
    state = Path(tempfile.mkdtemp(prefix=f"mlflow-auth-bench-{mode}-"))
    settings = Settings(state_dir=state, mlflow_port=free_port(), mlflow_auth=mode != "off")
    sup = Supervisor(settings)
    service = services.mlflow_service(settings)
    if mode == "auth-no-cache":
        prepare = service.prepare

        def without_cache():
            prepare()
            path = services.mlflow_auth_config_path(settings)
            path.write_text(path.read_text().replace("auth_cache_ttl_seconds = 60", "auth_cache_ttl_seconds = 0"))

        service.prepare = without_cache
    sup.start(service)
    try:
        if mode != "off":
            services.ensure_mlflow_reader(settings)
        return _measure(settings, requests)
    finally:
        sup.stop("mlflow")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}; "
          f"{args.requests} sequential GetRegisteredModel calls per mode, one keep-alive connection")
    print(f"{'mode':<16}{'p50 ms':>9}{'p99 ms':>9}{'req/s':>9}")
    for mode in ("off", "auth", "auth-no-cache"):
        t = np.array(run(mode, args.requests if mode != "auth-no-cache" else max(20, args.requests // 10)))
        print(f"{mode:<16}{np.percentile(t, 50) * 1e3:>9.1f}{np.percentile(t, 99) * 1e3:>9.1f}"
              f"{len(t) / t.sum():>9.0f}")


if __name__ == "__main__":
    main()
