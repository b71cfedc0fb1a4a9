"""Our composed /predict against the peers it is made of, in one run, with wrk (closed loop).

The peers are the off-the-shelf servers for the same two steps: ``feast serve`` (the online
read of the same feature refs, the trip's row and the prior row, from the same Redis) and
``mlflow models serve`` (the same champion version, the same pyfunc). A client composing them
does one call to each per prediction, so their composition answers at most
``1 / (1/feast + 1/mlflow)`` req/s; the ratio printed is /predict over that bound.

Every server listens on 127.0.0.1; each is driven by wrk with the same threads, connections
and duration, interleaved for ``--rounds`` rounds (the machine is shared: a slow minute hurts
all systems alike), the median round reported. The load average is printed with each figure.

    # reuse a running stack (its TAXI_* environment), e.g. a dev stack on ports >= 10000:
    .venv/bin/python bench/compare_peers.py --connections 8 --seconds 12
    # or start a fresh one (free ports, temporary state, trains a model: ~5 minutes):
    .venv/bin/python bench/compare_peers.py --fresh-stack

Needs ``wrk`` (Debian: ``apt-get install wrk``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

from taxi_mlops import security
from taxi_mlops.features import realtime, schema
from taxi_mlops.samples import SAMPLE_TRIPS
from taxi_mlops.settings import Settings, get_settings
from taxi_mlops.stack.process import free_port, wait_for

VENV_BIN = Path(sys.executable).parent

WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = [==[%s]==]
wrk.headers["Content-Type"] = "application/json"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRK_RESULT {"requests": %%d, "duration_us": %%d, "p50_us": %%d, '
    .. '"p99_us": %%d, "non2xx": %%d, "socket_errors": %%d}\\n', summary.requests,
    summary.duration, latency:percentile(50), latency:percentile(99), e.status,
    e.connect + e.read + e.write + e.timeout))
end
"""


def wrk(url: str, body: dict, threads: int, connections: int, seconds: int) -> dict:
    """One closed-loop wrk run POSTing ``body``: req/s, p50/p99 ms, errors."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(WRK_SCRIPT % json.dumps(body))
        script = f.name
    try:
        out = subprocess.run(["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s",
                              "--timeout", "5s", "-s", script, url],
                             capture_output=True, text=True, timeout=seconds + 60, check=True).stdout
    finally:
        os.unlink(script)
    line = next(l for l in out.splitlines() if l.startswith("WRK_RESULT "))
    r = json.loads(line.split(" ", 1)[1])
    return {"rps": r["requests"] / (r["duration_us"] / 1e6), "p50_ms": r["p50_us"] / 1000,
            "p99_ms": r["p99_us"] / 1000, "non2xx": r["non2xx"], "socket_errors": r["socket_errors"],
            "load": os.getloadavg()[0]}


# ---- the bodies: the same trip everywhere -----------------------------------------------------
def gateway_body() -> dict:
    return {k: v for k, v in SAMPLE_TRIPS[0].items()}


def feast_body() -> dict:
    """What ``FeatureLookup.lookup_many`` reads for one trip: its row and the prior row."""
    from taxi_mlops.features import store

    fs = store.feature_store(get_settings())
    service = fs.get_feature_service(schema.FEATURE_SERVICE)
    refs = [f"{p.name}:{f.name}" for p in service.feature_view_projections for f in p.features]
    refs += [f"{realtime.REALTIME_VIEW}:{n}" for n in realtime.REALTIME_FEATURES]
    trip = SAMPLE_TRIPS[0]
    return {"features": refs,
            "entities": {schema.AREA_KEY: [trip["pickup_community_area"], schema.PRIOR_AREA],
                         schema.COMPANY_KEY: [trip["company"], schema.PRIOR_COMPANY]}}


def mlflow_body() -> dict:
    return {"dataframe_records": [schema.model_inputs(SAMPLE_TRIPS[0], {})]}


# ---- the servers --------------------------------------------------------------------------------
def start_peer(name: str, argv: list[str], env: dict, cwd: Path | None, url: str, body: dict,
               log_dir: Path) -> subprocess.Popen:
    """Start a peer and wait until ``body`` POSTed to ``url`` answers 200."""
    log = open(log_dir / f"{name}.log", "w")
    proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)

    def answers() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited ({proc.returncode}); see {log_dir / f'{name}.log'}")
        try:
            return httpx.post(url, json=body, timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    if not wait_for(answers, 180, 0.5):
        stop(proc)
        raise RuntimeError(f"{name} did not answer at {url}; see {log_dir / f'{name}.log'}")
    return proc


def stop(proc: subprocess.Popen) -> None:
    import signal

    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def fresh_stack(state: Path) -> dict:
    """``taxi-mlops up`` and ``train`` on free ports in ``state``: the environment to reuse."""
    ports = {n: free_port() for n in Settings.model_fields if n.endswith("_port")}
    settings = Settings(state_dir=state, **ports)
    env = {**os.environ, **settings.as_env()}
    for cmd in (["up"], ["train"]):
        subprocess.run([str(VENV_BIN / "taxi-mlops"), *cmd], env=env, check=True, timeout=1800)
    return env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds; the median is reported")
    parser.add_argument("--peer-workers", type=int, default=None,
                        help="workers of feast serve / mlflow models serve (default: the gateway's)")
    parser.add_argument("--fresh-stack", action="store_true", help="start and train a stack on free ports")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install wrk")

    tmp = Path(tempfile.mkdtemp(prefix="compare-peers-"))
    stack_env = None
    if args.fresh_stack:
        stack_env = fresh_stack(tmp / "state")
        os.environ.update(stack_env)
    settings = get_settings()
    gateway = f"{settings.gateway_url}/predict"
    r = httpx.post(gateway, json=gateway_body(), timeout=10)
    if r.status_code != 200:
        sys.exit(f"the gateway at {gateway} answered {r.status_code}: start the stack (taxi-mlops up "
                 f"&& taxi-mlops train) or pass --fresh-stack")
    workers = str(args.peer_workers or max(1, settings.gateway_workers))
    env = {**os.environ, **settings.feast_env(), **security.mlflow_env(settings, security.MLFLOW_READER),
           "MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri,
           "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}  # mlflow execs `uvicorn`
    for var in ("PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir"):
        env.pop(var, None)
    feast_port, mlflow_port = free_port(), free_port()
    feast_url = f"http://127.0.0.1:{feast_port}/get-online-features"
    mlflow_url = f"http://127.0.0.1:{mlflow_port}/invocations"
    bodies = {"gateway /predict": (gateway, gateway_body()), "feast serve": (feast_url, feast_body()),
              "mlflow models serve": (mlflow_url, mlflow_body())}
    procs = []
    try:
        procs.append(start_peer("feast", [str(VENV_BIN / "feast"), "serve", "-h", "127.0.0.1", "-p",
                                          str(feast_port), "-w", workers, "--no-access-log"],
                                env, settings.feast_repo, feast_url, bodies["feast serve"][1], tmp))
        procs.append(start_peer("mlflow", [str(VENV_BIN / "mlflow"), "models", "serve", "-m",
                                           f"models:/{settings.model_name}@{settings.serving_alias}",
                                           "-h", "127.0.0.1", "-p", str(mlflow_port), "-w", workers,
                                           "--env-manager", "local"],
                                 env, None, mlflow_url, bodies["mlflow models serve"][1], tmp))
        runs: dict[str, list[dict]] = {name: [] for name in bodies}
        for rnd in range(args.rounds):
            for name, (url, body) in bodies.items():
                wrk(url, body, args.threads, args.connections, 2)  # warm the connections
                result = wrk(url, body, args.threads, args.connections, args.seconds)
                runs[name].append(result)
                print(f"round {rnd + 1} {name:22s} {result['rps']:8.1f} req/s  p50 {result['p50_ms']:6.2f} ms  "
                      f"p99 {result['p99_ms']:6.2f} ms  non-2xx {result['non2xx']}  load {result['load']:.2f}",
                      flush=True)
    finally:
        for proc in procs:
            stop(proc)
        if stack_env is not None:
            subprocess.run([str(VENV_BIN / "taxi-mlops"), "down"], env=stack_env, timeout=300)

    summary = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in runs.items()}
    composed = 1 / (1 / summary["feast serve"]["rps"] + 1 / summary["mlflow models serve"]["rps"])
    ratio = summary["gateway /predict"]["rps"] / composed
    print(f"\nwrk -t{args.threads} -c{args.connections} -d{args.seconds}s, median of {args.rounds} "
          f"interleaved rounds, {os.cpu_count()} cores, peer workers {workers}")
    print(f"{'system':24s} {'req/s':>8s} {'p50 ms':>8s} {'p99 ms':>8s} {'load1':>6s}")
    for name, s in summary.items():
        print(f"{name:24s} {s['rps']:8.1f} {s['p50_ms']:8.2f} {s['p99_ms']:8.2f} {s['load']:6.2f}")
    print(f"{'composed peers (bound)':24s} {composed:8.1f}")
    print(f"ratio /predict : composed peers = {ratio:.2f}x")
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "composed_rps": composed, "ratio": ratio,
                                         "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
