"""Chaos soak: /predict load and replayed trips while components are killed with kill -9.

Starts its own stack (every port free and >= 10000, a fresh or given state directory) through
``taxi_mlops.stack.up``, trains a champion unless the state directory already has one, and
then for ``--minutes``:

* sends ``--rate`` /predict requests per second (open loop: a slow answer never slows the
  offered rate), each with its own ``X-Request-ID``; a request that fails on a connection
  error (refused or reset: the gateway process is gone) is retried once after ``--retry-after``
  seconds, and counted: availability is reported at the first try and with that one retry;
* replays the trips CSV into Kafka (``streaming/replay.py``, retimed to now) at
  ``--replay-rate`` events per second;
* every ``--kill-every`` seconds kills one component (SIGKILL to its process group, as
  ``Supervisor.kill``), in turn: the active gateway instance, a model-server replica, Redis,
  the Kafka broker, the stream processor, the label join, MLflow; nobody restarts them but
  the keeper.

Then it checks for loss:

* every request id answered 200 must be in ``taxi.predictions`` (the topic read to its end);
* every replayed event must be reflected in the online features: the trips and labels topics
  are read to their end and folded into the processor's own window state
  (``windows.AreaWindow``, exact and order-independent), and each area's Feast online row must
  equal that state.

It prints a table: availability (first try / with one retry), time to recover per kill
(kill -> the component's health probe passes with a new pid), p50/p99 outside the fault windows
(from a kill to 5 s after its recovery), and the loss figures; then tears the stack down.

    .venv/bin/python bench/soak.py [--minutes 10] [--rate 100] [--kill-every 60] [--state-dir DIR]

Loopback only, bounded in time, not run in CI.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from taxi_mlops.settings import Settings
from taxi_mlops.stack.process import Supervisor, _safe, free_port, free_port_block, wait_for

ROTATION = ["gateway", "{model_server}", "redis", "kafka", "stream-processor-0", "label-join", "mlflow"]
AFTER_RECOVERY_S = 5.0  # a fault window ends this long after the component is healthy again
HEAL_DEADLINE_S = 180.0
TRIP = {
    "trip_miles": 2.5, "fare": 9.75, "trip_seconds": 600, "trip_start_hour": 13, "trip_start_day": 4,
    "trip_start_month": 7, "pickup_community_area": 8, "dropoff_community_area": 32,
    "payment_type": "Credit Card", "company": "Taxi Affiliation Services",
}


def soak_settings(state: Path, backoff_s: float) -> Settings:
    """The stack on free ports (as tests/conftest.py), with two model-server replicas."""
    return Settings(state_dir=state, redis_port=free_port(), mlflow_port=free_port(),
                    model_server_port=free_port_block((0, 1)), model_server_replicas=2,
                    gateway_port=free_port(), ui_port=free_port(),
                    kafka_port=free_port(), kafka_controller_port=free_port(), kafka_bootstrap_override=None,
                    prometheus_port=free_port(), prometheus_external_url=None,
                    pushgateway_port=free_port(), alertmanager_port=free_port(),
                    alert_receiver_port=free_port(), kafka_metrics_port=free_port(),
                    processor_metrics_port=free_port(), label_join_metrics_port=free_port(),
                    quality_metrics_port=free_port(), prediction_store_metrics_port=free_port(),
                    retrain_alerts="",  # an alert fired by a kill must not retrain under the soak
                    restart_backoff_s=backoff_s)


# ---- the stack -------------------------------------------------------------------------------
def start_stack(settings: Settings, sup: Supervisor, say) -> None:
    from taxi_mlops.features import store
    from taxi_mlops.pipeline import launcher
    from taxi_mlops.stack import monitoring, services
    from taxi_mlops.stack import up as stack_up

    from taxi_mlops import security

    os.environ.update(settings.feast_env())
    security.use_mlflow_credentials(settings)  # this process reads the registry (MLflow's login)
    sup.start(services.redis_service(settings))
    sup.start(monitoring.pushgateway_service(settings))
    sup.start(services.mlflow_service(settings))
    store.apply(settings)
    if services.champion_exists(settings):
        say("reusing the champion in the state directory")
    else:
        say("training a champion (the TFX pipeline; several minutes here) …")
        t0 = time.monotonic()
        launcher.run_training(settings, progress=lambda _e: None)
        say(f"trained in {time.monotonic() - t0:.0f}s")
    say("starting the stack (taxi_mlops.stack.up) …")
    stack_up(settings, sup)


def stop_stack(settings: Settings, sup: Supervisor) -> None:
    """Everything this run started: the keeper first, then the rest in reverse start order
    (or, if the stack's definitions cannot be built, whatever the run directory holds)."""
    from taxi_mlops.stack import keeper, services

    try:
        names = [s.name for s in reversed(services.all_services(settings))]
    except Exception as exc:  # noqa: BLE001
        print(f"stack definitions failed ({exc}); stopping what {settings.run_dir} holds", file=sys.stderr)
        names = []
    names = [keeper.NAME] + [n for n in names + sorted(sup.wanted()) if n != keeper.NAME]
    for name in dict.fromkeys(names):
        try:
            sup.stop(name)
        except Exception as exc:  # noqa: BLE001 - tear down the rest whatever one does
            print(f"stopping {name}: {exc}", file=sys.stderr)


# ---- /predict load -----------------------------------------------------------------------------
@dataclass
class Result:
    request_id: str
    sent: float  # monotonic
    first_status: int | None  # None: transport error / timeout
    first_error: str = ""
    retried: bool = False
    final_status: int | None = None
    latency_s: float = 0.0  # of the first try


def _retryable(exc: BaseException) -> bool:
    """A connection error (refused, reset, closed before the answer): the gateway process is
    gone, the request was not served. A timeout is not one: the request may have been served."""
    import aiohttp

    return isinstance(exc, (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError)) and \
        not isinstance(exc, (asyncio.TimeoutError, aiohttp.ServerTimeoutError))


async def _post(session, url: str, request_id: str) -> int:
    async with session.post(url, json={**TRIP, "trip_id": request_id},
                            headers={"X-Request-ID": request_id}) as r:
        await r.read()
        return r.status


async def _one(session, url: str, request_id: str, retry_after: float) -> Result:
    t0 = time.monotonic()
    res = Result(request_id, t0, None)
    try:
        res.first_status = res.final_status = await _post(session, url, request_id)
        res.latency_s = time.monotonic() - t0
    except Exception as exc:  # noqa: BLE001 - every failure is counted by its kind
        res.first_error = type(exc).__name__
        res.latency_s = time.monotonic() - t0
        if _retryable(exc):
            res.retried = True
            await asyncio.sleep(retry_after)
            try:
                res.final_status = await _post(session, url, request_id)
            except Exception:  # noqa: BLE001
                pass
    return res


async def _load(url: str, rate: float, seconds: float, retry_after: float, timeout_s: float) -> list[Result]:
    """Open loop (aiohttp: httpx's pool degrades quadratically with thousands of queued
    requests, which is what a dead gateway leaves behind)."""
    import aiohttp

    run = uuid.uuid4().hex[:8]
    connector = aiohttp.TCPConnector(limit=200)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout_s)) as session:
        tasks = []
        t0 = time.monotonic()
        i = 0
        while (now := time.monotonic()) - t0 < seconds:
            target = t0 + i / rate
            if target > now:
                await asyncio.sleep(target - now)
            tasks.append(asyncio.create_task(_one(session, url, f"soak-{run}-{i}", retry_after)))
            i += 1
        return list(await asyncio.gather(*tasks))


def run_load(settings: Settings, rate: float, seconds: float, retry_after: float, timeout_s: float,
             out: list) -> threading.Thread:
    def target():
        out.extend(asyncio.run(_load(f"{settings.gateway_url}/predict", rate, seconds, retry_after, timeout_s)))

    thread = threading.Thread(target=target, name="soak-load", daemon=True)
    thread.start()
    return thread


# ---- kills -------------------------------------------------------------------------------------
@dataclass
class Kill:
    name: str
    at: float  # monotonic
    old_pid: int | None
    healed_at: float | None = None
    note: str = ""

    @property
    def recovery_s(self) -> float | None:
        return None if self.healed_at is None else self.healed_at - self.at


def kill_and_wait(settings: Settings, sup: Supervisor, name: str, deadline: float) -> Kill:
    """kill -9 ``name`` (its process group), then wait for the keeper to bring it back healthy."""
    from taxi_mlops.stack import keeper, services

    service = {s.name: s for s in services.all_services(settings)}[name]
    restarts = keeper.read_state(settings.run_dir, name).restarts
    kill = Kill(name, time.monotonic(), sup.pid(name))
    if kill.old_pid is None:
        kill.note = "was not running"
        return kill
    sup.kill(name)

    def healed() -> bool:
        pid = sup.pid(name)
        return pid not in (None, kill.old_pid) and _safe(service.healthy)

    if wait_for(healed, max(1.0, min(HEAL_DEADLINE_S, deadline - time.monotonic())), 0.1):
        kill.healed_at = time.monotonic()
        # the keeper records the restart once its start returns, just after the probe passes
        wait_for(lambda: keeper.read_state(settings.run_dir, name).restarts > restarts, 10, 0.2)
        kill.note = f"keeper restarts {restarts} -> {keeper.read_state(settings.run_dir, name).restarts}"
    else:
        st = keeper.read_state(settings.run_dir, name)
        kill.note = f"NOT healed: pid {sup.pid(name)}, keeper state {st.state} ({st.reason})"
    return kill


def run_kills(settings: Settings, sup: Supervisor, seconds: float, every: float, kills: list[Kill],
              say) -> threading.Thread:
    def target():
        t0 = time.monotonic()
        end = t0 + seconds
        n = 0
        while True:
            at = t0 + every * (n + 1)
            if at >= end - 5:  # no kill in the last seconds: its recovery would not be seen
                return
            time.sleep(max(0.0, at - time.monotonic()))
            template = ROTATION[n % len(ROTATION)]
            from taxi_mlops.serving import replica_name
            from taxi_mlops.stack import services

            replica = 1 - (n // len(ROTATION)) % 2  # replica 1 in the first rotation, then 0, ...
            name = template.format(model_server=replica_name(replica))
            if name == "gateway":  # the instance taking the traffic, not a standby
                name = services.active_gateway_name(settings) or name
            say(f"kill -9 {name}")
            k = kill_and_wait(settings, sup, name, end + HEAL_DEADLINE_S)
            kills.append(k)
            say(f"  {name}: " + (f"healthy again after {k.recovery_s:.1f}s" if k.healed_at else k.note))
            n += 1

    thread = threading.Thread(target=target, name="soak-kills", daemon=True)
    thread.start()
    return thread


# ---- replay ------------------------------------------------------------------------------------
def run_replay(settings: Settings, rate: float, seconds: float, out: dict) -> threading.Thread:
    from taxi_mlops.streaming import replay

    def target():
        try:
            out.update(replay.replay(settings, speed="max", retime=True, limit=max(1, int(rate * seconds / 2)),
                                     max_rate=rate, id_prefix=f"soak-{uuid.uuid4().hex[:6]}-",
                                     progress=lambda _m: None, flush_timeout_s=300))
        except Exception as exc:  # noqa: BLE001 - reported as a defect, not a crash of the soak
            out["error"] = f"{type(exc).__name__}: {exc}"

    thread = threading.Thread(target=target, name="soak-replay", daemon=True)
    thread.start()
    return thread


# ---- loss checks -------------------------------------------------------------------------------
def read_topic(settings: Settings, topic: str, on_message, timeout_s: float = 120.0) -> None:
    """Every record of ``topic`` from the beginning to its current end."""
    from confluent_kafka import Consumer, KafkaError, TopicPartition

    from taxi_mlops.streaming import clients, topics

    consumer = Consumer(clients.consumer_config(settings, "soak-check", f"soak-check-{uuid.uuid4().hex[:6]}",
                                                **{"enable.partition.eof": True}))
    try:
        n = topics.partition_count(settings, topic)
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in range(n)}
        todo = {p for p, end in ends.items() if end > 0}
        consumer.assign([TopicPartition(topic, p, 0) for p in todo])
        deadline = time.monotonic() + timeout_s
        while todo and time.monotonic() < deadline:
            for msg in consumer.consume(1000, 0.5):
                if msg.error() is not None:
                    if msg.error().code() == KafkaError._PARTITION_EOF:
                        todo.discard(msg.partition())
                    continue
                on_message(msg)
                if msg.offset() >= ends[msg.partition()] - 1:
                    todo.discard(msg.partition())
        if todo:
            raise RuntimeError(f"{topic}: partitions {sorted(todo)} not read to the end in {timeout_s:.0f}s")
    finally:
        consumer.close()


def check_predictions(settings: Settings, answered: set[str], wait_s: float = 60.0) -> dict:
    """Request ids answered 200 that are not in ``taxi.predictions`` (waiting for the gateway's
    background log to drain)."""
    from taxi_mlops.streaming import events, topics

    seen: set[str] = set()

    def collect(msg) -> None:
        try:
            seen.add(events.decode(topics.PREDICTIONS, msg.value()).request_id)
        except events.EventDecodeError:
            pass

    deadline = time.monotonic() + wait_s
    while True:
        seen.clear()
        read_topic(settings, topics.PREDICTIONS, collect)
        missing = answered - seen
        if not missing or time.monotonic() > deadline:
            return {"answered_200": len(answered), "in_topic": len(answered & seen), "missing": len(missing),
                    "missing_examples": sorted(missing)[:5]}
        time.sleep(5)


def expected_features(settings: Settings) -> dict[int, dict]:
    """Each area's window features as a batch over both input topics (the processor's own
    window code, whose result does not depend on the order of arrival)."""
    from taxi_mlops.streaming import events, processor, topics

    state = processor.PartitionState(0)

    def fold(msg) -> None:
        try:
            event = events.decode(msg.topic(), msg.value())
        except events.EventDecodeError:
            return  # dead-lettered by the processor
        processor.apply_event(state, msg.topic(), event, msg.offset())

    for topic in (topics.TRIPS, topics.LABELS):
        read_topic(settings, topic, fold)
    return {area: w.features() for area, w in state.areas.items() if w.latest is not None}


def check_features(settings: Settings, wait_s: float = 180.0) -> dict:
    """Areas whose Feast online row differs from the batch computation over the topics."""
    from taxi_mlops.features import realtime as rt
    from taxi_mlops.features import store

    expected = expected_features(settings)
    fs = store.feature_store(settings)
    names = list(rt.REALTIME_FEATURES)
    areas = sorted(expected)
    wrong: dict[int, tuple] = {}

    def matches() -> bool:
        wrong.clear()
        try:
            got = fs.get_online_features(features=[f"{rt.REALTIME_VIEW}:{n}" for n in names],
                                         entity_rows=[{rt.ENTITY_KEY: a} for a in areas]).to_dict()
        except Exception as exc:  # noqa: BLE001 - Redis just restarting: try again
            wrong[-1] = (str(exc),)
            return False
        for i, area in enumerate(areas):
            for n in names:
                want, have = expected[area][n], got[n][i]
                # Feast stores the view's Float32 features: compare at float32 precision
                if have is None or abs(float(have) - float(want)) > 1e-6 * max(1.0, abs(float(want))):
                    wrong[area] = (n, want, have)
                    break
        return not wrong

    ok = wait_for(matches, wait_s, 2.0)
    return {"areas": len(areas), "mismatched_areas": 0 if ok else len(wrong),
            "mismatch_examples": dict(list(wrong.items())[:5])}


# ---- the report --------------------------------------------------------------------------------
def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] * 1000 if values else float("nan")


def summarize(results: list[Result], kills: list[Kill]) -> dict:
    total = len(results)
    first_ok = sum(1 for r in results if r.first_status is not None and 200 <= r.first_status < 300)
    final_ok = sum(1 for r in results if r.final_status is not None and 200 <= r.final_status < 300)
    windows = [(k.at, (k.healed_at or float("inf")) + AFTER_RECOVERY_S) for k in kills]
    calm = [r.latency_s for r in results if r.first_status == 200
            and not any(a <= r.sent <= b for a, b in windows)]
    per_kill = []
    for k, (a, b) in zip(kills, windows):
        inside = [r for r in results if a <= r.sent <= b]
        per_kill.append({"component": k.name, "recovery_s": k.recovery_s, "note": k.note,
                         "requests": len(inside),
                         "failed_first_try": sum(1 for r in inside if r.first_status != 200),
                         "failed_after_retry": sum(1 for r in inside if r.final_status != 200)})
    failures: dict[str, int] = {}
    for r in results:
        if r.final_status != 200:
            key = str(r.final_status) if r.final_status is not None else (r.first_error or "error")
            failures[key] = failures.get(key, 0) + 1
    timeline: dict[int, dict] = {}  # per 10 s of the run: what the client saw
    t0 = min((r.sent for r in results), default=0.0)
    for r in results:
        slot = timeline.setdefault(int((r.sent - t0) // 10) * 10, {"sent": 0, "ok": 0, "errors": {}})
        slot["sent"] += 1
        if r.final_status == 200:
            slot["ok"] += 1
        else:
            kind = str(r.final_status) if r.final_status is not None else r.first_error
            slot["errors"][kind] = slot["errors"].get(kind, 0) + 1
    kills_at = {k.name + f"@{k.at - t0:.0f}s": k.recovery_s for k in kills}
    return {"timeline": timeline, "kills_at": kills_at, "requests": total, "first_try_ok": first_ok, "with_retry_ok": final_ok,
            "retried": sum(1 for r in results if r.retried),
            "availability_first_try": first_ok / total if total else float("nan"),
            "availability_with_retry": final_ok / total if total else float("nan"),
            "calm_requests": len(calm), "calm_p50_ms": pct(calm, 0.5), "calm_p99_ms": pct(calm, 0.99),
            "all_p99_ms": pct([r.latency_s for r in results if r.first_status == 200], 0.99),
            "kills": per_kill, "failures": failures}


def print_report(s: dict, preds: dict, feats: dict, replayed: dict, args, load: str) -> None:
    print("\n=== chaos soak ===")
    print(f"{args.minutes:g} min, {args.rate:g} /predict req/s, replay {args.replay_rate:g} events/s, "
          f"a kill every {args.kill_every:g}s; {load}")
    print(f"availability (2xx/all): first try {100 * s['availability_first_try']:.3f}% "
          f"({s['first_try_ok']}/{s['requests']}); with one retry on a connection error "
          f"{100 * s['availability_with_retry']:.3f}% ({s['with_retry_ok']}/{s['requests']}, "
          f"{s['retried']} retried)")
    print(f"latency outside fault windows: p50 {s['calm_p50_ms']:.0f} ms, p99 {s['calm_p99_ms']:.0f} ms "
          f"({s['calm_requests']} requests); p99 of all 200s {s['all_p99_ms']:.0f} ms")
    if s["failures"]:
        print(f"failures after retry by kind: {s['failures']}")
    print(f"\n{'component':<22}{'recovery':>10}{'requests':>10}{'failed 1st':>12}{'failed retry':>14}  note")
    for k in s["kills"]:
        rec = f"{k['recovery_s']:.1f}s" if k["recovery_s"] is not None else "NEVER"
        print(f"{k['component']:<22}{rec:>10}{k['requests']:>10}{k['failed_first_try']:>12}"
              f"{k['failed_after_retry']:>14}  {k['note']}")
    print(f"\npredictions: {preds['in_topic']}/{preds['answered_200']} request ids answered 200 are in "
          f"taxi.predictions; missing {preds['missing']} {preds['missing_examples'] or ''}")
    print(f"replay: {replayed}")
    print(f"online features: {feats['areas']} areas, {feats['mismatched_areas']} differ from the batch "
          f"computation over the topics {feats['mismatch_examples'] or ''}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=100.0, help="/predict requests per second")
    parser.add_argument("--replay-rate", type=float, default=50.0, help="replayed events per second")
    parser.add_argument("--kill-every", type=float, default=60.0)
    parser.add_argument("--retry-after", type=float, default=1.0,
                        help="seconds before the one retry of a request that failed on a connection error")
    parser.add_argument("--timeout", type=float, default=5.0, help="client timeout per request (s)")
    parser.add_argument("--backoff", type=float, default=1.0, help="the keeper's first restart delay (s)")
    parser.add_argument("--state-dir", type=Path, default=None,
                        help="reuse this state directory (and its champion: no training); kept afterwards")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)

    state = args.state_dir or Path(tempfile.mkdtemp(prefix="soak-"))
    state.mkdir(parents=True, exist_ok=True)
    settings = soak_settings(state, args.backoff)
    sup = Supervisor(settings)
    t_start = time.monotonic()

    def say(msg: str) -> None:
        print(f"[{time.monotonic() - t_start:7.1f}s] {msg}", flush=True)

    say(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
        f"load {os.getloadavg()}; state in {state}")
    seconds = args.minutes * 60
    try:
        start_stack(settings, sup, say)
        say(f"stack up; gateway {settings.gateway_url}; soaking for {args.minutes:g} min")
        load_before = os.getloadavg()
        results: list[Result] = []
        kills: list[Kill] = []
        replayed: dict = {}
        threads = [run_load(settings, args.rate, seconds, args.retry_after, args.timeout, results),
                   run_replay(settings, args.replay_rate, seconds, replayed),
                   run_kills(settings, sup, seconds, args.kill_every, kills, say)]
        for t in threads:
            t.join(seconds + HEAL_DEADLINE_S + 400)
        load_after = os.getloadavg()
        say("soak done; checking for loss")
        summary = summarize(results, kills)
        answered = {r.request_id for r in results if r.final_status == 200}
        try:
            preds = check_predictions(settings, answered)
        except Exception as exc:  # noqa: BLE001 - still print what was measured
            preds = {"answered_200": len(answered), "in_topic": 0, "missing": None,
                     "missing_examples": f"CHECK FAILED: {type(exc).__name__}: {exc}"}
        try:
            feats = check_features(settings)
        except Exception as exc:  # noqa: BLE001
            feats = {"areas": 0, "mismatched_areas": None,
                     "mismatch_examples": f"CHECK FAILED: {type(exc).__name__}: {exc}"}
        load = f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after ({os.cpu_count()} cores)"
        print_report(summary, preds, feats, replayed, args, load)
        if args.json:
            args.json.write_text(json.dumps({"summary": summary, "predictions": preds, "features": feats,
                                             "replay": replayed, "load": load}, indent=1, default=str))
    finally:
        say("tearing down")
        stop_stack(settings, sup)
        if args.state_dir is None:
            shutil.rmtree(state, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
