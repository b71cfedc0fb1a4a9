"""``taxi-mlops``: the one entry point of the local platform.

up / down / status run the stack; train runs the TFX pipeline; deploy (re)loads the model
server on the current champion; predict sends sample trips through the gateway.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from taxi_mlops import paths
from taxi_mlops.samples import SAMPLE_TRIPS
from taxi_mlops.settings import Settings, get_settings

# Rich reads COLUMNS itself; a pipe without it gets 150 columns rather than 80.
console = Console(highlight=False,
                  width=None if sys.stdout.isatty() or "COLUMNS" in os.environ else 150)
err = Console(stderr=True, highlight=False)


class CliError(RuntimeError):
    """An error whose message already says what to do next."""


# ---- stack ------------------------------------------------------------------------------
def cmd_up(settings: Settings, args) -> int:
    from taxi_mlops import stack

    overrides = {field: value for field, value in (("kafka_nodes", args.kafka_nodes),
                                                   ("redis_cluster_nodes", args.redis_cluster))
                 if value is not None}
    if overrides:  # validated like TAXI_KAFKA_NODES etc. (pydantic names the field)
        before, settings = settings, get_settings(**overrides)
        if settings.redis_cluster_nodes != before.redis_cluster_nodes:
            console.print(f"[yellow]note:[/] export TAXI_REDIS_CLUSTER_NODES={settings.redis_cluster_nodes} "
                          "so that train, env, status and down reach this Redis too")

    def report(name: str, state: str, detail: str) -> None:
        if state == "waiting":
            console.print(f"[yellow]{name}[/] waiting: {detail}")
        elif state == "set up":
            console.print(f"[green]{name}[/] {detail}")
        else:
            console.print(f"[green]{name}[/] {state} at {detail}")

    stack.up(settings, report=report, step=console.status)
    if settings.kafka_bootstrap_override:
        console.print(f"kafka: external cluster at {settings.kafka_bootstrap_servers} (not started)")
    return 0


def cmd_down(settings: Settings, args) -> int:
    from taxi_mlops.stack import services
    from taxi_mlops.stack.process import Supervisor

    from taxi_mlops.stack.redis_cluster import is_redis_node
    from taxi_mlops.stack.streaming import is_kafka_node

    sup = Supervisor(settings)
    known = services.all_services(settings)
    for service in reversed(known):
        stopped = sup.stop(service.name, timeout_s=service.stop_timeout_s)
        console.print(f"{service.name}: {'stopped' if stopped else 'not running'}")
    # Nodes of a cluster started by `up --kafka-nodes N` (`--redis-cluster N`) while these
    # settings say fewer.
    for name in sorted(set(sup.wanted()) - {s.name for s in known}):
        if is_kafka_node(name) or is_redis_node(name):
            console.print(f"{name}: {'stopped' if sup.stop(name, timeout_s=30.0) else 'not running'}")
    return 0


def stack_status(settings: Settings) -> dict:
    from taxi_mlops.stack import keeper, services
    from taxi_mlops.stack.process import Supervisor, _safe, http_ok

    sup = Supervisor(settings)
    components = {}
    for service in services.all_services(settings):
        healthy = _safe(service.healthy)
        entry = {"url": service.url, "healthy": healthy, "pid": sup.pid(service.name),
                 "log": str(sup.log_path(service.name))}
        restarts = keeper.read_state(settings.run_dir, service.name)
        entry["restarts"] = restarts.restarts
        if restarts.state != "ok":  # backoff (about to restart) or failed (given up)
            entry["restart_state"] = restarts.state
            entry["restart_reason"] = restarts.reason
        if healthy and service.details:
            entry.update(service.details())
        components[service.name] = entry
    if "mlflow" not in components:
        components["mlflow"] = {"url": settings.mlflow_tracking_uri,
                                "healthy": http_ok(f"{settings.mlflow_tracking_uri}/health"),
                                "external": True}
    components["mlflow"]["tracking_uri"] = settings.mlflow_tracking_uri
    if "prometheus" not in components:
        components["prometheus"] = {"url": settings.prometheus_url, "external": True,
                                    "healthy": http_ok(f"{settings.prometheus_url}/-/ready")}
    registry = settings.feast_data_dir / "registry.db"
    components["feast"] = {"path": str(settings.feast_repo), "registry": str(registry),
                           "healthy": registry.exists()}
    components["mlmd"] = {"path": str(settings.mlmd_path), "healthy": settings.mlmd_path.exists()}
    from taxi_mlops.retrain.guard import Guard

    try:  # the closed loop's guard: last runs, what runs now, when the next may start
        retrain = Guard.from_settings(settings).state(limit=3)
        last = retrain["runs"][0] if retrain["runs"] else None
        components["retrain"] = {"path": retrain["db"], "healthy": not (last and last["status"] == "failed"),
                                 "phase": last["status"] if last else "never run", **retrain}
    except Exception as exc:  # noqa: BLE001 - status reports, it never fails on one component
        components["retrain"] = {"healthy": False, "error": f"{type(exc).__name__}: {exc}"}
    return {"state_dir": str(settings.state_dir), "components": components}


def cmd_status(settings: Settings, args) -> int:
    status = stack_status(settings)
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    table = Table(title=f"taxi-mlops stack ({status['state_dir']})")
    for col in ("component", "health", "url / path", "pid", "details"):
        table.add_column(col)
    shown = ("version", "phase", "processed", "joined", "model", "role", "docs", "targets", "down", "firing",
             "groups", "alerts_stored", "restarts", "restart_reason")
    for name, c in status["components"].items():
        health = "[green]ok[/]" if c["healthy"] else "[red]down[/]"
        if c.get("restart_state") == "failed":
            health = "[red]failed[/]"
        elif c.get("restart_state") == "backoff":
            health = "[yellow]restarting[/]"
        details = " ".join(f"{k}={c[k]}" for k in shown if c.get(k) not in (None, "", {}))
        table.add_row(name, health, c.get("url") or c.get("path", ""), str(c.get("pid") or ""), details)
    console.print(table)
    return 0


# ---- training and deployment -------------------------------------------------------------
def _require_up(settings: Settings, names: tuple[str, ...]) -> None:
    status = stack_status(settings)["components"]
    down = [n for n in names if n in status and not status[n]["healthy"]]
    if down:
        raise CliError(f"{', '.join(down)} not running: start the stack with `taxi-mlops up`.")


def cmd_train(settings: Settings, args) -> int:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from taxi_mlops.pipeline import launcher
    from taxi_mlops.registry import models

    _require_up(settings, ("redis", "mlflow"))
    if args.beam_runner:  # one run on another Beam runner (TAXI_BEAM_RUNNER for every run)
        settings = settings.model_copy(update={"beam_runner": args.beam_runner})
    overrides = {"train_steps": args.train_steps} if args.train_steps else {}
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=console, transient=False) as progress:
        task = progress.add_task("data: joining point-in-time features", total=None)

        def on_event(event: dict) -> None:
            if "components" in event:
                progress.update(task, total=len(event["components"]), completed=0)
                if event.get("fallback"):  # Beam steps the chosen runner cannot run
                    progress.console.print(f"  [yellow]in-process, not {event['beam_runner']}:[/] "
                                           f"{', '.join(event['fallback'])} (README: Beam runners)")
            elif event.get("state") == "running" and "component" in event:
                progress.update(task, description=f"pipeline: {event['component']}")
            elif event.get("state") == "finished" and "component" in event:
                progress.advance(task)
                progress.console.print(f"  [green]✓[/] {event['component']}")
            elif event.get("step") == "data" and event.get("state") == "finished":
                progress.console.print(f"  [green]✓[/] data version {event['data_version']}")

        result = launcher.run_training(settings, progress=on_event, family=args.family, **overrides)
    console.print(f"pipeline ({result.family}) finished in {result.seconds:.1f}s (log: {result.log_path})")
    if result.reused:  # nothing changed since a run already judged against this champion
        console.print(f"  [yellow]not run again:[/] {result.reused.get('reason')}")
    champion = models.by_alias(settings.mlflow_tracking_uri, settings.model_name, models.CHAMPION)
    challenger = models.by_alias(settings.mlflow_tracking_uri, settings.model_name, models.CHALLENGER)
    for ref in (champion, challenger):
        if ref:
            console.print(f"  {ref.name} v{ref.version} @{ref.alias} "
                          f"({ref.tags.get('model_family', 'dnn')}): accuracy "
                          f"{float(ref.tags.get('eval_binary_accuracy', 'nan')):.3f}, AUC "
                          f"{float(ref.tags.get('eval_auc', 'nan')):.3f}")
    if not args.no_deploy and champion:
        return cmd_deploy(settings, args)
    return 0


def cmd_retrain(settings: Settings, args) -> int:
    """The closed loop once, in the foreground: guard -> data version -> train -> experiment."""
    from taxi_mlops.retrain import loop

    _require_up(settings, ("redis", "mlflow", "kafka"))
    outcome = loop.trigger(settings, args.reason, progress=lambda m: console.print(f"  {m}"))
    if not outcome["started"]:
        raise CliError(f"retrain refused: {outcome['reason']}")
    if outcome.get("error"):
        raise CliError(f"retrain {outcome['run_id']} failed: {outcome['error']}")
    console.print(f"retrain {outcome['run_id']} finished in {outcome['seconds']:.0f}s")
    return 0


def cmd_deploy_or_render(settings: Settings, args) -> int:
    """``deploy`` alone reloads the champion; ``deploy render`` generates the manifests."""
    if args.action != "render":
        if args.out or args.overlay:
            raise CliError("--out and --overlay belong to `taxi-mlops deploy render`")
        return cmd_deploy(settings, args)
    from taxi_mlops.manifests import render

    if args.overlay:
        print(render.dump(render.resolve_overlay(settings, args.overlay)), end="")
        return 0
    for path in render.render(settings, args.out):
        console.print(f"wrote {path}")
    return 0


def cmd_deploy(settings: Settings, args) -> int:
    """Serve the version now holding the serving alias: a running model server swaps it in
    (hot, no restart: each replica rereads the registry); a stopped one is started."""
    from taxi_mlops import security
    from taxi_mlops.stack import services
    from taxi_mlops.stack.process import Supervisor

    _require_up(settings, ("mlflow",))
    if not services.champion_exists(settings):
        raise CliError(f"no '{settings.serving_alias}' version of {settings.model_name} in MLflow: "
                       "run `taxi-mlops train` first.")
    sup = Supervisor(settings)
    token = security.ensure_token(settings)
    for service in services.model_server_services(settings):
        if sup.pid(service.name) is not None and _refresh_replica(settings, service.url, token):
            console.print(f"[green]{service.name}[/] swapped in {settings.model_name}@"
                          f"{settings.serving_alias} (hot, no restart) at {service.url}")
            continue
        sup.stop(service.name)
        with console.status(f"loading the model into {service.name} …"):
            sup.start(service)
        console.print(f"[green]{service.name}[/] serving {settings.model_name}@{settings.serving_alias} "
                      f"at {service.url}")
    for gateway in services.gateway_services(settings):
        if sup.pid(gateway.name) is None:
            sup.start(gateway)
            console.print(f"[green]{gateway.name}[/] started at {settings.gateway_url}")
    return 0


def _refresh_replica(settings: Settings, url: str, token: str) -> bool:
    """True if the replica reread the registry and now serves the alias."""
    import httpx

    try:
        response = httpx.post(f"{url}/v2/models/{settings.model_name}/refresh",
                              headers={"Authorization": f"Bearer {token}"}, timeout=120.0)
    except httpx.HTTPError:
        return False
    return response.status_code == 200


def cmd_predict_csv(settings: Settings, args) -> int:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from taxi_mlops.gateway.batch import BatchScoringError, score_csv

    src = Path(args.file)
    if not src.exists():
        raise CliError(f"{src} does not exist")
    out = Path(args.out) if args.out else src.with_name(src.stem + ".predictions.csv")
    with Progress(TextColumn("scoring {task.description}"), BarColumn(),
                  TextColumn("{task.completed}/{task.total} rows"), TimeElapsedColumn(),
                  console=console) as progress:
        task = progress.add_task(src.name, total=None)
        try:
            result = score_csv(settings.gateway_url, src, out,
                               progress=lambda done, total: progress.update(task, completed=done, total=total))
        except BatchScoringError as exc:
            raise CliError(str(exc)) from exc
    if result["ignored_columns"]:
        console.print(f"ignored the label column(s) {', '.join(result['ignored_columns'])}: "
                      "a prediction cannot know them")
    console.print(f"{result['answered']} of {result['rows']} rows scored, {result['rejected']} refused "
                  f"(see the error column) in {result['seconds']}s ({result['rows_per_s']} rows/s) "
                  f"-> {result['out']}")
    return 0


def cmd_predict(settings: Settings, args) -> int:
    import httpx

    if args.file and args.file.endswith(".csv"):
        return cmd_predict_csv(settings, args)
    if args.out:
        raise CliError("--out is for CSV input: `taxi-mlops predict --file trips.csv --out predictions.csv`")
    trips = SAMPLE_TRIPS if not args.file else json.loads(Path(args.file).read_text())
    if isinstance(trips, dict):
        trips = [trips]
    table = Table(title=f"predictions from {settings.gateway_url}/predict")
    for col in ("trip", "payment", "area", "company", "area trips 15m", "tip_probability",
                "big_tipper", "model", "ms"):
        table.add_column(col)
    with httpx.Client(timeout=10) as client:
        for trip in trips:
            try:
                r = client.post(f"{settings.gateway_url}/predict", json=trip)
            except httpx.HTTPError as exc:
                raise CliError(f"gateway at {settings.gateway_url} unreachable ({exc}): "
                               "`taxi-mlops up` then `taxi-mlops deploy`.") from exc
            if r.status_code != 200:
                raise CliError(f"gateway answered {r.status_code}: {r.text[:400]}")
            p = r.json()
            table.add_row(str(p["trip_id"]), trip["payment_type"], str(trip.get("pickup_community_area")),
                          str(trip.get("company")),
                          f"{p['features_used'].get('area_trips_15m', 0):.0f}",
                          f"{p['tip_probability']:.3f}", str(p["big_tipper"]),
                          _model_label(p["model"]), f"{p['latency_ms']:.1f}")
    console.print(table)
    return 0


def _model_label(model: dict) -> str:
    """``v3@champion``; a version reached by number (an experiment's arm) shows its variant:
    ``v3 (treatment)``."""
    label = f"v{model['version']}"
    if model.get("alias"):
        return f"{label}@{model['alias']}"
    return f"{label} ({model['variant']})" if model.get("variant") else label


def cmd_stream_replay(settings: Settings, args) -> int:
    from taxi_mlops.streaming import replay

    _require_up(settings, ("kafka",) + (("gateway",) if args.predict else ()))
    with console.status("replaying trips …") as status:
        result = replay.replay(settings, speed=args.speed, retime=args.retime, limit=args.limit,
                               max_rate=args.max_rate,
                               predict_url=settings.gateway_url if args.predict else None,
                               predict_concurrency=args.predict_concurrency,
                               progress=lambda msg: status.update(f"replay: {msg}"))
    console.print(f"replayed: {result}")
    return 0


def cmd_urls(settings: Settings, args) -> int:
    console.print(f"control room {settings.ui_url}  (Streamlit UI)")
    console.print(f"gateway      {settings.gateway_url}/docs")
    console.print(f"model server {settings.model_server_url}/v2/models/{settings.model_name}")
    login = ""
    if settings.mlflow_auth and not settings.mlflow_external_uri:  # where the password is, never it
        where = "TAXI_MLFLOW_ADMIN_PASSWORD" if settings.mlflow_admin_password else \
            settings.state_dir / "mlflow_admin_password"
        login = f"  (user {settings.mlflow_admin_username}, password in {where})"
    console.print(f"MLflow       {settings.mlflow_tracking_uri}{login}")
    console.print(f"Prometheus   {settings.prometheus_url}")
    console.print(f"Alertmanager {settings.alertmanager_url}")
    console.print(f"Pushgateway  {settings.pushgateway_url}")
    console.print(f"alerts       {settings.alert_receiver_url}/alerts  (taxi-mlops alerts)")
    console.print(f"dashboards   {paths.PROJECT_ROOT / 'deploy' / 'grafana'}  (Grafana provisioning)")
    console.print(f"logs         {settings.logs_dir}  (taxi-mlops logs)")
    console.print(f"Redis        {settings.redis_url}")
    console.print(f"Feast repo   {settings.feast_repo}")
    console.print(f"MLMD         {settings.mlmd_path}")
    return 0


def cmd_lineage(settings: Settings, args) -> int:
    """Where the last pushed model came from, read from ML Metadata; with ``--request-id``,
    one prediction's chain through the gateway (model, run, pipeline, data, label)."""
    from taxi_mlops.lineage import mlmd

    if getattr(args, "request_id", None):
        from taxi_mlops.lineage import report

        try:
            chain = report.fetch(settings, args.request_id)
        except report.LineageUnavailable as exc:
            raise CliError(str(exc)) from exc
        if args.json:
            print(json.dumps(chain, indent=2, default=str))
        else:
            report.show(console, chain)
        return 0
    try:
        nodes = mlmd.serving_lineage(settings.mlmd_path)
    except (FileNotFoundError, LookupError) as exc:
        raise CliError(str(exc)) from exc
    table = Table(title=f"lineage of the last pushed model ({settings.mlmd_path})")
    for col in ("artifact", "produced by", "uri", "properties"):
        table.add_column(col)
    keep = ("pushed", "blessed", "dvc_data_version", "dvc_data_path", "split_names")
    for n in nodes:
        props = " ".join(f"{k}={v}" for k, v in n.properties.items() if k in keep)
        table.add_row(f"{n.type} #{n.id}", n.produced_by.rsplit(".", 1)[-1], n.uri, props)
    console.print(table)
    return 0


def cmd_alerts(settings: Settings, args) -> int:
    """What is firing now (Alertmanager) and what fired (our receiver's record)."""
    from taxi_mlops.observability import alerts

    view = alerts.overview(settings, since=args.since, limit=args.limit)
    if args.json:
        print(json.dumps(view, indent=2, default=str))
    else:
        console.print(alerts.render(view))
        if view["errors"]:
            err.print("[yellow]some alert sources did not answer: start them with `taxi-mlops up`[/]")
    return 0


def cmd_logs(settings: Settings, args) -> int:
    """Every component's JSON-lines log merged in time order, filtered, optionally followed."""
    from taxi_mlops.observability import logview

    component = args.component or args.component_opt
    try:
        since_s = logview.parse_duration(args.since) if args.since else None
    except ValueError as exc:
        raise CliError(f"--since {args.since!r}: {exc} (use e.g. 30s, 10m, 2h)") from exc
    known = {p.stem for p in logview.log_files(settings)}
    if component and component not in known:
        raise CliError(f"no log for {component!r} in {settings.logs_dir}; known: {', '.join(sorted(known))}")
    records = (logview.follow(settings, component, args.request_id, since_s) if args.follow
               else logview.merge(settings, component, args.request_id, since_s))
    shown = 0
    try:
        for rec in records:
            print(json.dumps(rec, default=str) if args.json else logview.format_record(rec), flush=args.follow)
            shown += 1
    except KeyboardInterrupt:
        pass
    if not shown and not args.follow:
        err.print("no matching log lines")
    return 0


def cmd_env(settings: Settings, args) -> int:
    """Shell exports that point the plain Feast SDK or `feast` CLI at this stack's repo."""
    for key, value in settings.feast_env().items():
        print(f"export {key}='{value}'")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="taxi-mlops", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("up", help="start the local stack (idempotent)")
    p.add_argument("--kafka-nodes", type=int, default=None, metavar="N",
                   help="a local N-node KRaft cluster instead of one broker (TAXI_KAFKA_NODES); "
                        "fixed once its data is formatted")
    p.add_argument("--redis-cluster", type=int, default=None, metavar="N",
                   help="the online store on a local Redis Cluster of N >= 3 masters instead of one "
                        "Redis (TAXI_REDIS_CLUSTER_NODES; 0: one Redis)")
    p.set_defaults(func=cmd_up)
    sub.add_parser("down", help="stop the local stack").set_defaults(func=cmd_down)
    p = sub.add_parser("status", help="health of every component")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("train", help="run the TFX pipeline, register and deploy a blessed model")
    p.add_argument("--train-steps", type=int, default=None)
    # launcher.FAMILIES, spelled out: importing the launcher here would slow every command.
    p.add_argument("--family", choices=("dnn", "linear"), default="dnn",
                   help="model family the Trainer builds on the shared Transform output")
    p.add_argument("--no-deploy", action="store_true", help="do not reload the model server")
    p.add_argument("--beam-runner", choices=("direct-in-process", "direct-multi-process", "dask", "portable"),
                   help="where the Beam steps run (default TAXI_BEAM_RUNNER, direct-in-process); "
                        "portable takes the runner from TAXI_BEAM_EXTRA_ARGS")
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("retrain", help="fresh data version from the stream, train, start an experiment")
    p.add_argument("--reason", default="manual", help="recorded on the MLflow run (retrain.reason)")
    p.set_defaults(func=cmd_retrain)
    p = sub.add_parser("deploy", help="load the current champion into the model server; "
                                      "`deploy render`: write the Kubernetes and compose manifests")
    p.add_argument("action", nargs="?", choices=("render",), help="render: generate deploy/k8s and deploy/compose")
    p.add_argument("--out", type=Path, help="render: output folder (default: the repo's deploy/)")
    p.add_argument("--overlay", choices=("dev", "prod"),
                   help="render: print this overlay's resolved documents instead (for kubectl apply -f -)")
    p.set_defaults(func=cmd_deploy_or_render)
    p = sub.add_parser("predict", help="send sample trips, a JSON file or a CSV through the gateway")
    p.add_argument("--file", help="JSON file with one trip or a list of trips, or a CSV of trips "
                                  "(the data set's columns) scored in batches of 1,000")
    p.add_argument("--out", help="where a CSV's predictions go (default: <file>.predictions.csv)")
    p.set_defaults(func=cmd_predict)
    stream = sub.add_parser("stream", help="Kafka streaming").add_subparsers(dest="stream_cmd", required=True)
    p = stream.add_parser("replay", help="replay the CSV's trips and labels into Kafka in event-time order")
    p.add_argument("--speed", default="max",
                   help="N times real time, or 'max' for as fast as the broker takes them")
    p.add_argument("--retime", action="store_true", help="shift event times so the replay ends now")
    p.add_argument("--limit", type=int, default=None, help="replay only the first N trips")
    p.add_argument("--max-rate", type=float, default=None, help="cap on events per second")
    p.add_argument("--predict", action="store_true",
                   help="also POST each trip to the gateway's /predict as it starts (live traffic "
                        "for the label join and the dashboards)")
    p.add_argument("--predict-concurrency", type=int, default=8,
                   help="requests in flight at most; trips beyond it are skipped and counted")
    p.set_defaults(func=cmd_stream_replay)
    p = sub.add_parser("alerts", help="alerts firing now (Alertmanager) and fired (our receiver)")
    p.add_argument("--since", default="24h", help="history window, e.g. 30m, 24h (default 24h)")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_alerts)
    p = sub.add_parser("logs", help="every component's log merged in time order")
    p.add_argument("component", nargs="?", help="only this component (its log file's name)")
    p.add_argument("--component", dest="component_opt", help=argparse.SUPPRESS)
    p.add_argument("--request-id", help="only lines of this request (gateway -> model server -> log)")
    p.add_argument("--since", help="only the last 30s / 10m / 2h")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new lines (Ctrl-C stops)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=cmd_logs)
    sub.add_parser("urls", help="where everything is").set_defaults(func=cmd_urls)
    p = sub.add_parser("lineage", help="ML Metadata lineage of the pushed model, back to the data version")
    p.add_argument("--request-id", help="one prediction's chain instead: model, MLflow run, pipeline, "
                                        "DVC data version (with the command restoring it), label")
    p.add_argument("--json", action="store_true", help="with --request-id: the API's JSON")
    p.set_defaults(func=cmd_lineage)
    sub.add_parser("env", help="exports for the Feast SDK and CLI: "
                   "eval \"$(taxi-mlops env)\"").set_defaults(func=cmd_env)
    from taxi_mlops.rollout import cli as rollout_cli

    rollout_cli.register(sub, lambda fn: lambda settings, args: fn(settings, args, console))
    from taxi_mlops.pipeline import kfp as kfp_cli

    kfp_cli.register(sub, lambda fn: lambda settings, args: fn(settings, args, console))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = get_settings()
    except Exception as exc:  # pydantic names the bad variable
        err.print(f"[red]error:[/] invalid settings: {exc}")
        return 2
    from taxi_mlops import security
    from taxi_mlops.data.versioning import DataVersionError
    from taxi_mlops.pipeline.launcher import PipelineFailed
    from taxi_mlops.pipeline_env import PipelineEnvError
    from taxi_mlops.registry.models import RegistryUnavailable
    from taxi_mlops.rollout.cli import RolloutCliError
    from taxi_mlops.stack.process import ServiceStartError
    from taxi_mlops.stack.redis_cluster import RedisClusterError
    from taxi_mlops.streaming.broker import BrokerSetupError
    from taxi_mlops.streaming.replay import ReplayError
    from taxi_mlops.streaming.topics import TopicError

    started = time.monotonic()
    try:
        with security.mlflow_login(settings):  # the operator's commands: MLflow's admin
            return args.func(settings, args)
    except (CliError, ServiceStartError, PipelineFailed, PipelineEnvError, DataVersionError,
            RegistryUnavailable, BrokerSetupError, RedisClusterError, ReplayError, TopicError, RolloutCliError,
            ValueError) as exc:
        err.print(f"[red]error:[/] {exc}")
        return 1
    finally:
        if args.command in ("train",):
            console.print(f"[dim]{args.command} took {time.monotonic() - started:.1f}s[/]")


if __name__ == "__main__":
    sys.exit(main())
