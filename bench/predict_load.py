"""Drive the gateway's /predict at fixed open-loop rates with vegeta; p50/p90/p99 per rate.

Open loop: requests are sent on schedule whether or not earlier ones have answered, so a slow
server shows up as latency, not as a lower offered rate. The generator is vegeta (Go, built
once into <state_dir>/tools): the Python httpx generator this file used to be saturated itself
near 300 req/s on 2 cores, so it measured the client. Each (round, rate) also runs a "floor":
GET /health/live at the same rate, what the HTTP stack alone costs, in the same run. Rounds
interleave rates and gateways, so machine noise lands on all of them alike. Needs a running
stack (`make demo`, or `taxi-mlops up && taxi-mlops train`).

    .venv/bin/python bench/predict_load.py --rates 100,200,300 --seconds 15 --rounds 2
    .venv/bin/python bench/predict_load.py --gateway a=http://127.0.0.1:8000 --gateway b=http://127.0.0.1:9000
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pandas as pd

from taxi_mlops.settings import get_settings

VEGETA_MODULE = "github.com/tsenart/vegeta/v12@v12.13.0"
GO_BUILD_TIMEOUT_S = 600
REQUEST_TIMEOUT_S = 5
TRIPS = 2000
WARMUP_RATE, WARMUP_SECONDS = 50, 2


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


# ---- vegeta ---------------------------------------------------------------------------------
def build_vegeta(tools_dir: Path) -> Path:
    """``<tools_dir>/vegeta``, built with ``go install`` the first time."""
    exe = tools_dir / "vegeta"
    if exe.is_file() and os.access(exe, os.X_OK):
        return exe
    go = shutil.which("go") or next((p for p in ["/usr/local/go/bin/go"] if Path(p).is_file()), None)
    if go is None:
        sys.exit(f"vegeta is not built and Go is not installed: install Go (https://go.dev/dl/) and "
                 f"rerun, or put a vegeta binary (https://github.com/tsenart/vegeta/releases) at {exe}")
    tools_dir.mkdir(parents=True, exist_ok=True)
    print(f"building vegeta (once) ... {go} install {VEGETA_MODULE} -> {tools_dir}", flush=True)
    started = time.monotonic()
    try:  # go's own "downloading ..." lines go to the terminal as progress
        subprocess.run([go, "install", VEGETA_MODULE], env={**os.environ, "GOBIN": str(tools_dir)},
                       timeout=GO_BUILD_TIMEOUT_S, check=True, stdout=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        sys.exit(f"building vegeta took over {GO_BUILD_TIMEOUT_S} s; check access to the Go module "
                 f"proxy ({os.environ.get('GOPROXY', 'proxy.golang.org')}) and rerun")
    except subprocess.CalledProcessError as exc:
        sys.exit(f"building vegeta failed (go install exited {exc.returncode}, see above); check access "
                 f"to the Go module proxy and rerun, or put a vegeta binary at {exe}")
    print(f"built {exe} in {time.monotonic() - started:.0f} s", flush=True)
    return exe


def write_targets(path: Path, url: str, trips: list[dict]) -> Path:
    """vegeta's JSON target format, one POST per trip (vegeta sends them round-robin)."""
    with path.open("w") as f:
        for trip in trips:
            body = base64.b64encode(json.dumps(trip).encode()).decode()
            f.write(json.dumps({"method": "POST", "url": url, "body": body,
                                "header": {"Content-Type": ["application/json"]}}) + "\n")
    return path


def write_floor_target(path: Path, url: str) -> Path:
    path.write_text(json.dumps({"method": "GET", "url": url}) + "\n")
    return path


def attack(vegeta: Path, targets: Path, rate: int, seconds: float, workdir: Path) -> dict:
    """One open-loop vegeta attack; its JSON report (latencies in ns)."""
    results = workdir / "results.bin"
    timeout = seconds + 60
    # Enough workers for every request of REQUEST_TIMEOUT_S in flight at once: a slow server
    # must not throttle the sending rate (that would be a closed loop).
    max_workers = max(10, int(rate * REQUEST_TIMEOUT_S))
    cmd = [str(vegeta), "attack", "-format=json", f"-targets={targets}", f"-rate={rate}/s",
           f"-duration={seconds:g}s", f"-timeout={REQUEST_TIMEOUT_S}s", f"-max-workers={max_workers}",
           "-keepalive=true", f"-output={results}"]
    for step in (cmd, [str(vegeta), "report", "-type=json", str(results)]):
        try:
            done = subprocess.run(step, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            sys.exit(f"vegeta {step[1]} did not finish within {timeout:g} s; is the machine overloaded? "
                     "rerun with lower --rates")
        if done.returncode != 0:
            sys.exit(f"vegeta {step[1]} exited {done.returncode}: {done.stderr.strip()[-1000:]}")
    return json.loads(done.stdout)


def report_row(report: dict, **labels) -> dict:
    """The figures of one run from vegeta's report, latencies in ms."""
    lat = report["latencies"]
    codes = {str(k): v for k, v in (report.get("status_codes") or {}).items()}
    return {**labels, "requests": report["requests"], "sent_rps": report["rate"],
            "ok_rps": report["throughput"], "success": report["success"],
            "p50_ms": lat["50th"] / 1e6, "p90_ms": lat["90th"] / 1e6, "p99_ms": lat["99th"] / 1e6,
            "max_ms": lat["max"] / 1e6, "mean_ms": lat["mean"] / 1e6, "status_codes": codes,
            "non_2xx": {c: n for c, n in codes.items() if not c.startswith("2")},
            "errors": (report.get("errors") or [])[:5]}


def warm_up(vegeta: Path, name: str, targets: Path, workdir: Path) -> None:
    """~100 requests not counted; stops the run with what to do if the gateway does not answer."""
    print(f"warming up {name} ({WARMUP_RATE} req/s for {WARMUP_SECONDS} s) ...", flush=True)
    row = report_row(attack(vegeta, targets, WARMUP_RATE, WARMUP_SECONDS, workdir))
    refused = [e for e in row["errors"] if "connection refused" in e]
    if row["success"] == 0 and refused:
        sys.exit(f"{name}: connection refused ({refused[0]}); is the stack up? "
                 "run `taxi-mlops up && taxi-mlops train`, or pass --gateway NAME=URL")
    if row["success"] == 0:
        sys.exit(f"{name}: no request succeeded in the warm-up (statuses {row['status_codes']}, "
                 f"errors {row['errors'][:2]}); is a champion served? run `taxi-mlops train`, "
                 "then `taxi-mlops status`")
    if row["success"] < 1:
        print(f"  warning: {name} answered {row['success']:.1%} of the warm-up "
              f"(statuses {row['status_codes']}, errors {row['errors'][:2]})", flush=True)


# ---- kept for bench/metrics_cost.py and bench/rollout_bench.py, which import them -------------
async def open_loop(client: httpx.AsyncClient, url: str, trips: list[dict], rate: float,
                    seconds: float) -> tuple[list[float], dict, float]:
    """Send ``rate * seconds`` requests on schedule from Python (fine below ~200 req/s);
    (latencies in ms, status counts, elapsed s)."""
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


# ---- main -------------------------------------------------------------------------------------
def parse_gateways(values: list[str] | None, default_url: str) -> dict[str, str]:
    if not values:
        return {"gateway": default_url}
    gateways = {}
    for value in values:
        name, sep, url = value.partition("=")
        if not sep or not name or not url.startswith(("http://", "https://")):
            sys.exit(f"--gateway {value!r}: expected NAME=URL, e.g. --gateway a=http://127.0.0.1:8000")
        if name == "floor":
            sys.exit("--gateway floor=...: 'floor' names the /health/live baseline; choose another name")
        gateways[name] = url.rstrip("/")
    return gateways


def print_table(rows: list[dict]) -> None:
    print(f"{'req/s':>5} {'target':<12} {'round':>5} {'sent/s':>7} {'ok/s':>7} {'ok %':>6} "
          f"{'p50 ms':>7} {'p90 ms':>7} {'p99 ms':>7} {'max ms':>8}  non-2xx")
    for r in rows:
        non_2xx = " ".join(f"{c}x{n}" for c, n in sorted(r["non_2xx"].items())) or "-"
        print(f"{r['rate']:>5} {r['target']:<12} {r['round']:>5} {r['sent_rps']:>7.1f} {r['ok_rps']:>7.1f} "
              f"{r['success'] * 100:>6.1f} {r['p50_ms']:>7.1f} {r['p90_ms']:>7.1f} {r['p99_ms']:>7.1f} "
              f"{r['max_ms']:>8.1f}  {non_2xx}")
    if any("0" in r["non_2xx"] for r in rows):
        print("status 0: no response (a transport error or the 5 s timeout)")
    errors = sorted({e for r in rows for e in r["errors"]})
    if errors:
        print("errors (first few):\n  " + "\n  ".join(errors[:5]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="100,200,300", help="comma-separated requests per second")
    parser.add_argument("--seconds", type=float, default=15.0, help="duration of each run")
    parser.add_argument("--rounds", type=int, default=1, help="rounds over every rate and gateway")
    parser.add_argument("--gateway", action="append", metavar="NAME=URL",
                        help="a gateway to drive (repeatable); default: the settings' gateway_url")
    parser.add_argument("--no-floor", action="store_true", help="skip the GET /health/live baseline")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write every result here")
    args = parser.parse_args()
    try:
        rates = [int(r) for r in args.rates.split(",") if r.strip()]
    except ValueError:
        sys.exit(f"--rates {args.rates!r}: expected whole requests per second, e.g. --rates 100,200,300")
    if not rates or min(rates) <= 0 or args.seconds <= 0 or args.rounds < 1:
        sys.exit("--rates, --seconds and --rounds must be positive")

    settings = get_settings()
    gateways = parse_gateways(args.gateway, settings.gateway_url)
    vegeta = build_vegeta(settings.state_dir / "tools")
    trips = [{**t, "trip_id": f"bench-{i}"} for i, t in enumerate(sample_trips(TRIPS))]
    load_at_start = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory(prefix="predict_load-") as tmp:
        workdir = Path(tmp)
        targets = {name: write_targets(workdir / f"{name}.jsonl", f"{url}/predict", trips)
                   for name, url in gateways.items()}
        floor_url = None if args.no_floor else f"{next(iter(gateways.values()))}/health/live"
        if floor_url:
            targets["floor"] = write_floor_target(workdir / "floor.jsonl", floor_url)
        for name, url in gateways.items():
            warm_up(vegeta, f"{name} ({url})", targets[name], workdir)
        runs = [(rnd, rate, name) for rnd in range(1, args.rounds + 1) for rate in rates
                for name in targets]
        for i, (rnd, rate, name) in enumerate(runs, 1):
            what = f"GET {floor_url}" if name == "floor" else f"POST {gateways[name]}/predict"
            print(f"[{i}/{len(runs)}] round {rnd}, {rate} req/s, {args.seconds:g} s: {name}: {what}",
                  flush=True)
            rows.append(report_row(attack(vegeta, targets[name], rate, args.seconds, workdir),
                                   rate=rate, target=name, round=rnd, load=os.getloadavg()[0]))

    machine = {"platform": platform.platform(), "cpus": os.cpu_count(), "load_at_start": load_at_start}
    print(f"\nmachine: {machine['platform']}, {machine['cpus']} CPUs, "
          f"load average {load_at_start:.2f} at start")
    print(f"open loop by vegeta ({VEGETA_MODULE.split('@')[1]}), {args.seconds:g} s per run, "
          f"{len(trips)} distinct trips round-robin, timeout {REQUEST_TIMEOUT_S} s")
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "gateways": gateways, "floor": floor_url,
                                         "seconds": args.seconds, "vegeta": VEGETA_MODULE,
                                         "results": rows}, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
