"""OIP v2 over REST against OIP v2 over gRPC, on one model-server process, in one run.

Why: gRPC between the gateway and the model server was the first lever listed for issue 11
(serving CPU). This measures it before building on it: a model-server replica of the running
stack is started with KServe's gRPC server on as well (``--grpc-port``), and the same rows are
sent to that one process over both transports, interleaved for ``--rounds`` rounds so machine
noise lands on both alike.

- REST: the gateway's own client (``gateway.inference.InferenceClient``, aiohttp).
- gRPC: KServe's async ``InferenceGRPCClient`` (the unversioned route: KServe 0.15's servicer
  ignores ``model_version``).

Printed per transport and round: the model server's CPU per call (from /proc), the client's
CPU per call, and p50/p99 latency, at ``--concurrency`` calls in flight. Needs a running stack
with a champion (``make demo``, or ``taxi-mlops up && taxi-mlops train``).

    .venv/bin/python bench/oip_transport.py --calls 1500 --rounds 3 --concurrency 1,8
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from taxi_mlops.features import schema
from taxi_mlops.gateway.features import fallback_rows
from taxi_mlops.gateway.inference import InferenceClient
from taxi_mlops.pids import stat_fields
from taxi_mlops.samples import SAMPLE_TRIPS
from taxi_mlops.settings import get_settings
from taxi_mlops.stack import services
from taxi_mlops.stack.process import free_port, http_ok, wait_for

NUMPY_TYPES = {"FP32": np.float32, "INT64": np.int64, "BYTES": object}
START_TIMEOUT_S = 240
BENCH_REPLICA = 9


def cpu_s(pid: int) -> float:
    """utime + stime of ``pid``, in seconds."""
    fields = stat_fields(f"/proc/{pid}/stat")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def sample_rows(count: int) -> list[dict]:
    """Model inputs of the sample trips, with the stores' default values (no feature read:
    this measures the hop to the model server only)."""
    rows = []
    for i in range(count):
        trip = SAMPLE_TRIPS[i % len(SAMPLE_TRIPS)]
        store, _ = fallback_rows(1)[0]
        rows.append(schema.model_inputs(trip, store))
    return rows


def grpc_request(model: str, rows: list[dict], request_id: str):
    from kserve import InferInput, InferRequest

    inputs = []
    for name, dtype in schema.SERVING_DTYPES.items():
        column = InferInput(name, [len(rows)], dtype)
        column.set_data_from_numpy(np.array([r[name] for r in rows], dtype=NUMPY_TYPES[dtype]))
        inputs.append(column)
    return InferRequest(model_name=model, infer_inputs=inputs, request_id=request_id)


def start_replica(settings, grpc_port: int):
    """A replica of the stack's model server on a free REST port, with gRPC on ``grpc_port``;
    (process, REST url, log path). Not registered with the supervisor or Prometheus."""
    # replica BENCH_REPLICA (its own model cache) of a copy whose replica 0 port makes it free
    port = free_port(settings.host)
    copy = settings.model_copy(update={"model_server_port": port - BENCH_REPLICA})
    service = services.model_server_service(copy, BENCH_REPLICA)
    log = tempfile.NamedTemporaryFile("w", prefix="oip-transport-", suffix=".log", delete=False)
    proc = subprocess.Popen([*service.command, "--grpc-port", str(grpc_port)],
                            env={**os.environ, **service.env}, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    print(f"starting a model-server replica: REST {service.url}, gRPC {settings.host}:{grpc_port} "
          f"(log {log.name}); loading the champion takes up to a minute", flush=True)
    ready = f"{service.url}/v2/models/{settings.model_name}/ready"
    if not wait_for(lambda: proc.poll() is not None or http_ok(ready), START_TIMEOUT_S, 0.5) \
            or proc.poll() is not None:
        proc.kill()
        sys.exit(f"the replica did not become ready in {START_TIMEOUT_S} s; see {log.name} "
                 "(is the stack up and trained? `taxi-mlops status`)")
    return proc, service.url, log.name


async def drive(call, rows: list[dict], calls: int, concurrency: int) -> list[float]:
    """``calls`` calls, ``concurrency`` in flight; the latency of each, in ms."""
    latencies: list[float] = []
    next_call = iter(range(calls))

    async def worker():
        for i in next_call:
            started = time.perf_counter()
            await call(i, [rows[i % len(rows)]])
            latencies.append((time.perf_counter() - started) * 1000)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


async def measure(settings, proc, rest_url: str, grpc_port: int, args) -> list[dict]:
    from kserve import InferenceGRPCClient

    model = settings.model_name
    rest = InferenceClient([rest_url], model, settings.request_timeout_s)
    grpc = InferenceGRPCClient(f"{settings.host}:{grpc_port}", timeout=settings.request_timeout_s)
    rows = sample_rows(64)

    async def via_rest(i, batch):
        probabilities, _ = await rest.infer_batch(f"rest-{i}", batch)
        return probabilities

    async def via_grpc(i, batch):
        response = await grpc.infer(grpc_request(model, batch, f"grpc-{i}"))
        return [float(p) for p in response.outputs[0].as_numpy().reshape(-1)]

    # Same answer both ways (else the comparison is meaningless); this also warms both paths.
    for i, row in enumerate(rows[:8]):
        a, b = (await via_rest(i, [row]))[0], (await via_grpc(i, [row]))[0]
        if abs(a - b) > 1e-6:
            sys.exit(f"REST answered {a}, gRPC {b} for the same row: not the same model?")
    results = []
    try:
        for concurrency in args.concurrency:
            for rnd in range(1, args.rounds + 1):
                for name, call in (("rest", via_rest), ("grpc", via_grpc)):
                    server0, client0 = cpu_s(proc.pid), time.process_time()
                    started = time.perf_counter()
                    latencies = await drive(call, rows, args.calls, concurrency)
                    wall = time.perf_counter() - started
                    q = statistics.quantiles(latencies, n=100)
                    results.append({
                        "transport": name, "concurrency": concurrency, "round": rnd,
                        "server_ms": 1000 * (cpu_s(proc.pid) - server0) / args.calls,
                        "client_ms": 1000 * (time.process_time() - client0) / args.calls,
                        "p50_ms": q[49], "p99_ms": q[98], "calls_s": args.calls / wall,
                        "load": os.getloadavg()[0]})
                    r = results[-1]
                    print(f"{name:5} conc {concurrency:2} round {rnd}: server {r['server_ms']:.3f} ms CPU/call, "
                          f"client {r['client_ms']:.3f}, p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms, "
                          f"{r['calls_s']:.0f} calls/s, load {r['load']:.2f}", flush=True)
    finally:
        await rest.close()
        await grpc.close()
    return results


def summary(results: list[dict]) -> None:
    print("\nmedian over rounds:")
    print("transport  conc  server ms CPU/call  client ms CPU/call  p50 ms  p99 ms  calls/s")
    for concurrency in sorted({r["concurrency"] for r in results}):
        for name in ("rest", "grpc"):
            rs = [r for r in results if r["transport"] == name and r["concurrency"] == concurrency]
            med = {k: statistics.median(r[k] for r in rs)
                   for k in ("server_ms", "client_ms", "p50_ms", "p99_ms", "calls_s")}
            print(f"{name:9} {concurrency:5} {med['server_ms']:19.3f} {med['client_ms']:19.3f} "
                  f"{med['p50_ms']:7.2f} {med['p99_ms']:7.2f} {med['calls_s']:8.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1500, help="calls per transport and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", default="1,8",
                        type=lambda s: [int(x) for x in s.split(",") if x.strip()],
                        help="comma-separated calls in flight, e.g. 1,8")
    args = parser.parse_args()
    settings = get_settings()
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.2f} at start")
    grpc_port = free_port(settings.host)
    proc, rest_url, log = start_replica(settings, grpc_port)
    try:
        summary(asyncio.run(measure(settings, proc, rest_url, grpc_port, args)))
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        os.unlink(log)


if __name__ == "__main__":
    main()
