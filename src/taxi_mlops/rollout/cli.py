"""``taxi-mlops experiment|model|routing``: the rollout commands, as calls to the gateway.

The gateway owns the control plane (one place checks input, holds the token check and
writes the audit trail), so these commands are thin: they send the admin token read from
``<state_dir>/admin_token`` (or ``TAXI_ADMIN_TOKEN``) and print what the gateway answers. A
4xx is printed with the field it names and exits 1.
"""

from __future__ import annotations

import argparse
import json

import httpx

from taxi_mlops import security
from taxi_mlops.settings import Settings

TIMEOUT_S = 120.0  # promote/reload wait for MLflow, Kafka and model loads


class RolloutCliError(RuntimeError):
    pass


def _call(settings: Settings, method: str, path: str, body: dict | None = None, admin: bool = False) -> dict:
    headers = {}
    if admin:
        token = security.read_token(settings)
        if token is None:
            raise RolloutCliError(f"no admin token: {settings.admin_token_file} does not exist and "
                                  "TAXI_ADMIN_TOKEN is unset. `taxi-mlops up` generates it.")
        headers["Authorization"] = f"Bearer {token}"
    try:
        response = httpx.request(method, f"{settings.gateway_url}{path}", json=body, headers=headers,
                                 timeout=TIMEOUT_S)
    except httpx.HTTPError as exc:
        raise RolloutCliError(f"the gateway at {settings.gateway_url} did not answer ({exc}). "
                              "Is the stack up? `taxi-mlops up`") from exc
    try:
        payload = response.json()
    except ValueError:
        payload = {"detail": response.text[:300]}
    if response.status_code >= 400:
        detail = payload.get("detail", payload) if isinstance(payload, dict) else payload
        if isinstance(detail, list):
            detail = "; ".join(f"{d.get('field')}: {d.get('message')}" for d in detail)
        raise RolloutCliError(f"{method} {path} -> {response.status_code}: {detail}")
    return payload


def _print(console, payload) -> None:
    console.print_json(json.dumps(payload, default=str))


def _split(value: str) -> dict[str, float]:
    """'50/50' or '90/10' (control/treatment, percent) -> weights."""
    try:
        control, treatment = (float(x) for x in value.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError("--split must look like 50/50 (control/treatment, percent)")
    total = control + treatment
    if total <= 0:
        raise argparse.ArgumentTypeError("--split must have positive parts")
    return {"control": control / total, "treatment": treatment / total}


def cmd_experiment(settings: Settings, args, console) -> int:
    if args.exp_cmd == "start":
        body = {"model_name": settings.model_name, "control": args.control, "treatment": args.treatment,
                "split": args.split, "sticky_key": args.key, "metric": args.metric, "alpha": args.alpha,
                "min_labels": args.min_labels}
        if args.max_labels:
            body["max_labels"] = args.max_labels
        if args.replace:
            for experiment in _call(settings, "GET", "/experiments")["experiments"]:
                if experiment["status"] == "running":
                    _call(settings, "POST", f"/experiments/{experiment['experiment_id']}/stop", admin=True)
                    console.print(f"stopped the running experiment {experiment['experiment_id']}")
        _print(console, _call(settings, "POST", "/experiments", body, admin=True))
    elif args.exp_cmd == "status":
        path = f"/experiments/{args.id}" if args.id else "/experiments"
        _print(console, _call(settings, "GET", path))
    elif args.exp_cmd == "stop":
        _print(console, _call(settings, "POST", f"/experiments/{args.id}/stop", admin=True))
    return 0


def cmd_model(settings: Settings, args, console) -> int:
    if args.model_cmd == "list":
        _print(console, _call(settings, "GET", "/models"))
    elif args.model_cmd == "promote":
        _print(console, _call(settings, "POST", "/models/promote",
                              {"version": args.version, "reason": args.reason or ""}, admin=True))
    elif args.model_cmd == "rollback":
        _print(console, _call(settings, "POST", "/models/rollback", {"reason": args.reason or ""}, admin=True))
    elif args.model_cmd == "reload":
        _print(console, _call(settings, "POST", "/models/reload", admin=True))
    return 0


def cmd_routing(settings: Settings, args, console) -> int:
    if args.routing_cmd == "show":
        _print(console, _call(settings, "GET", "/routing"))
    else:
        try:
            policy = json.loads(args.policy)
        except json.JSONDecodeError as exc:
            raise RolloutCliError(f"the policy is not valid JSON ({exc}); e.g. "
                                  '\'{"split": [{"name": "a", "target": "champion", "weight": 1}], '
                                  '"shadow": {"target": "challenger", "percent": 100}}\'') from exc
        _print(console, _call(settings, "PUT", "/routing", policy, admin=True))
    return 0


def register(sub, wrap) -> None:
    """Add the commands to the main parser; ``wrap(fn)`` adapts ``fn(settings, args, console)``."""
    exp = sub.add_parser("experiment", help="A/B experiments decided by a sequential test"
                         ).add_subparsers(dest="exp_cmd", required=True)
    p = exp.add_parser("start", help="split traffic between two versions until the test decides")
    p.add_argument("--control", default="champion", help="alias or version (default champion)")
    p.add_argument("--treatment", default="challenger", help="alias or version (default challenger)")
    p.add_argument("--split", type=_split, default={"control": 0.5, "treatment": 0.5},
                   help="control/treatment percent, e.g. 90/10 (default 50/50)")
    p.add_argument("--key", default="trip_id", help="trip field for sticky assignment (default trip_id)")
    p.add_argument("--metric", choices=("accuracy", "log_loss"), default="accuracy")
    p.add_argument("--alpha", type=float, default=0.05)
    p.add_argument("--min-labels", type=int, default=30, help="labels per variant before any decision")
    p.add_argument("--max-labels", type=int, default=None, help="stop as inconclusive after this many")
    p.add_argument("--replace", action="store_true", help="stop a running experiment first")
    p.set_defaults(func=wrap(cmd_experiment))
    p = exp.add_parser("status", help="one experiment, or all")
    p.add_argument("id", nargs="?")
    p.set_defaults(func=wrap(cmd_experiment))
    p = exp.add_parser("stop", help="stop without a decision (routing returns to the policy)")
    p.add_argument("id")
    p.set_defaults(func=wrap(cmd_experiment))

    model = sub.add_parser("model", help="served versions; manual promote, rollback, reload"
                           ).add_subparsers(dest="model_cmd", required=True)
    model.add_parser("list", help="versions and aliases the model servers hold").set_defaults(
        func=wrap(cmd_model))
    p = model.add_parser("promote", help="move the champion alias to VERSION (old one -> previous)")
    p.add_argument("version")
    p.add_argument("--reason")
    p.set_defaults(func=wrap(cmd_model))
    p = model.add_parser("rollback", help="move the champion alias back to previous")
    p.add_argument("--reason")
    p.set_defaults(func=wrap(cmd_model))
    model.add_parser("reload", help="model servers reread the registry now").set_defaults(
        func=wrap(cmd_model))

    routing = sub.add_parser("routing", help="the gateway's routing policy"
                             ).add_subparsers(dest="routing_cmd", required=True)
    routing.add_parser("show").set_defaults(func=wrap(cmd_routing))
    p = routing.add_parser("set", help="replace the policy (JSON: split, shadow, fallback, ensemble)")
    p.add_argument("policy")
    p.set_defaults(func=wrap(cmd_routing))
