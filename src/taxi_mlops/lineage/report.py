"""``taxi-mlops lineage --request-id ID``: one prediction's chain, read through the gateway's
``GET /predictions/{request_id}`` (the same answer the UI shows), printed for a terminal.

Errors are ``LineageUnavailable`` with a message that says what to do: an unknown id, a
malformed one, a gateway that is down or older than this API.
"""

from __future__ import annotations

from urllib.parse import quote

import httpx
from rich.console import Console, Group
from rich.table import Table

from taxi_mlops.settings import Settings

TIMEOUT_S = 10.0  # a first lookup of a version reads MLflow and ML Metadata


class LineageUnavailable(RuntimeError):
    pass


def fetch(settings: Settings, request_id: str, timeout_s: float = TIMEOUT_S) -> dict:
    url = f"{settings.gateway_url}/predictions/{quote(request_id, safe='')}"
    try:
        r = httpx.get(url, timeout=timeout_s)
    except httpx.HTTPError as exc:
        raise LineageUnavailable(f"the gateway does not answer at {settings.gateway_url} "
                                 f"({type(exc).__name__}); start the stack with `taxi-mlops up`") from None
    if r.status_code == 200:
        return r.json()
    detail = _detail(r)
    if r.status_code == 404 and detail == "Not Found":
        raise LineageUnavailable(f"the gateway at {settings.gateway_url} has no lineage API; restart it "
                                 "(`taxi-mlops down && taxi-mlops up`)")
    if r.status_code == 404:
        raise LineageUnavailable(f"{detail}. Recent ids: `curl '{settings.gateway_url}/predictions?limit=5'`")
    if r.status_code == 422:
        raise LineageUnavailable(f"{request_id!r} is not a request id: {detail}")
    raise LineageUnavailable(f"the gateway answered {r.status_code}: {detail}")


def _detail(r: httpx.Response) -> str:
    try:
        detail = r.json().get("detail")
    except ValueError:
        return r.text[:300]
    if isinstance(detail, list):
        return "; ".join(f"{d.get('field')}: {d.get('message')}" for d in detail if isinstance(d, dict))
    return str(detail)


def render(chain: dict) -> Group:
    p, model, run = chain["prediction"], chain["model"], chain["mlflow_run"]
    data, pipeline, label = chain["data"], chain["pipeline"], chain["label"]
    head = Table(title=f"prediction {chain['request_id']}", show_header=False)
    head.add_column(style="bold")
    head.add_column()
    verdict = "not arrived yet" if label is None else (
        f"big_tipper={label['big_tipper']} tips={label['tips']} -> "
        f"{'right' if label['correct'] else 'wrong'}")
    rows = [
        ("trip / time", f"{p.get('trip_id')} at {p.get('timestamp')}"),
        ("tip probability", f"{p.get('tip_probability'):.4f} (variant {p.get('variant')}, policy {p.get('policy')}"
                            f"{', shadow' if p.get('shadow') else ''}{', fallback' if p.get('fallback') else ''})"),
        ("model", f"{model['name']} v{model['version']} {model.get('family') or ''} "
                  f"aliases now: {', '.join(model.get('aliases') or []) or 'none'}"),
        ("MLflow run", f"{run.get('run_id')}  {run.get('url') or ''}"),
        ("run metrics", " ".join(f"{k}={v:.4g}" for k, v in sorted(run.get("metrics", {}).items())
                                 if not k.startswith("train_")) or "-"),
        ("pipeline run", f"{pipeline.get('run_id')} ({pipeline.get('pipeline_name')})"),
        ("data (DVC md5)", f"{data.get('dvc_data_version')}  {data.get('path') or ''}"),
        ("label", verdict),
    ]
    for k, v in rows:
        head.add_row(k, v)
    artifacts = Table(title="ML Metadata artifacts, data -> model")
    for col in ("artifact", "produced by", "uri"):
        artifacts.add_column(col)
    for a in pipeline.get("artifacts") or []:
        artifacts.add_row(f"{a['type']} #{a['id']}", str(a.get("produced_by", "")).rsplit(".", 1)[-1], a["uri"])
    parts = [head, artifacts]
    if chain.get("errors"):
        parts.append("[yellow]incomplete: " + "; ".join(chain["errors"]) + "[/]")
    return Group(*parts)


def show(console: Console, chain: dict) -> None:
    """The chain, then the restore command on one unwrapped line (to copy as it is)."""
    console.print(render(chain))
    command = chain["data"].get("restore_command")
    if command:
        console.print("restore this data version (writes the file into the current folder):")
        console.print(command, soft_wrap=True, markup=False)
