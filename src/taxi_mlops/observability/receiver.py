"""The alert receiver: Alertmanager's webhook target.

``POST /alerts`` takes an Alertmanager webhook payload (version 4) and records every alert
in it, firing or resolved, in SQLite (``state_dir/alerts/alerts.db``) before answering, so a
notification Alertmanager saw delivered is never lost. ``GET /alerts`` is the history
(``?status=firing|resolved&since=10m|<ISO time>|<epoch>&limit=N``, newest first), ``GET
/health`` the probe, ``GET /metrics`` counts ``taxi_alerts_received_total{alertname,status}``.
A payload that does not validate is a 422 naming the field; it never reaches the database.

Hook point
----------
``HOOKS`` maps an alertname (or ``"*"`` for every alert) to a list of callables. After an
alert is stored, each matching callable is called once with the stored record (a dict: id,
alertname, status, labels, annotations, starts_at, ends_at, fingerprint, received_at ...)
in a background task: a slow or failing hook never delays or fails the webhook (failures
are logged with the alertname). Register with ``register("TaxiLiveAccuracyBelowEval", fn)``
in-process, or start the receiver with ``--hook ALERTNAME=package.module:function``
(repeatable), which is how the drift/retraining loop attaches its trigger, e.g.::

    python -m taxi_mlops.observability.receiver \\
        --hook TaxiLiveAccuracyBelowEval=taxi_mlops.retraining:on_alert
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sqlite3
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Literal

from fastapi import BackgroundTasks, FastAPI, HTTPException, Query, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from pydantic import BaseModel, Field

from taxi_mlops.observability import logs
from taxi_mlops.settings import Settings

log = logging.getLogger("taxi_mlops.alert_receiver")

Hook = Callable[[dict], Any]
HOOKS: dict[str, list[Hook]] = {}


def register(alertname: str, hook: Hook, hooks: dict[str, list[Hook]] | None = None) -> None:
    """Call ``hook(record)`` for every stored alert named ``alertname`` (``"*"``: all)."""
    (HOOKS if hooks is None else hooks).setdefault(alertname, []).append(hook)


def load_hook(spec: str) -> tuple[str, Hook]:
    """``ALERTNAME=package.module:function`` -> (alertname, function)."""
    name, _, target = spec.partition("=")
    module, _, attr = target.partition(":")
    if not name or not module or not attr:
        raise ValueError(f"--hook must be ALERTNAME=package.module:function, got {spec!r}")
    return name, getattr(importlib.import_module(module), attr)


# ---- payload ---------------------------------------------------------------------------
class WebhookAlert(BaseModel):
    status: Literal["firing", "resolved"]
    labels: dict[str, str]
    annotations: dict[str, str] = Field(default_factory=dict)
    startsAt: datetime
    endsAt: datetime | None = None
    generatorURL: str = ""
    fingerprint: str = Field(min_length=1)


class WebhookPayload(BaseModel):
    version: Literal["4"]
    groupKey: str = ""
    truncatedAlerts: int = 0
    status: Literal["firing", "resolved"]
    receiver: str = ""
    groupLabels: dict[str, str] = Field(default_factory=dict)
    commonLabels: dict[str, str] = Field(default_factory=dict)
    commonAnnotations: dict[str, str] = Field(default_factory=dict)
    externalURL: str = ""
    alerts: list[WebhookAlert]


# ---- storage ---------------------------------------------------------------------------
SCHEMA = """
CREATE TABLE IF NOT EXISTS alerts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    received_at REAL NOT NULL,
    alertname TEXT NOT NULL,
    status TEXT NOT NULL,
    severity TEXT,
    fingerprint TEXT NOT NULL,
    starts_at TEXT NOT NULL,
    ends_at TEXT,
    labels TEXT NOT NULL,
    annotations TEXT NOT NULL,
    generator_url TEXT,
    group_key TEXT,
    receiver TEXT
);
CREATE INDEX IF NOT EXISTS alerts_received ON alerts (received_at);
CREATE INDEX IF NOT EXISTS alerts_name ON alerts (alertname, status);
"""


def db_path(settings: Settings) -> Path:
    return settings.state_dir / "alerts" / "alerts.db"


def _iso(dt: datetime | None) -> str | None:
    if dt is None or dt.year < 1970:  # Alertmanager sends 0001-01-01T00:00:00Z for "not ended"
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class AlertStore:
    """SQLite in WAL mode; one connection per call, so it is safe across threads."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=10.0)
        db.row_factory = sqlite3.Row
        return db

    def insert(self, payload: WebhookPayload, received_at: float | None = None) -> list[dict]:
        received_at = time.time() if received_at is None else received_at
        rows = []
        for a in payload.alerts:
            rows.append({
                "received_at": received_at, "alertname": a.labels.get("alertname", ""),
                "status": a.status, "severity": a.labels.get("severity"), "fingerprint": a.fingerprint,
                "starts_at": _iso(a.startsAt), "ends_at": _iso(a.endsAt),
                "labels": json.dumps(a.labels, sort_keys=True),
                "annotations": json.dumps(a.annotations, sort_keys=True),
                "generator_url": a.generatorURL, "group_key": payload.groupKey, "receiver": payload.receiver,
            })
        conn = self._connect()
        try:
            with conn:  # one transaction: the whole notification or nothing
                for row in rows:
                    cur = conn.execute(
                        f"INSERT INTO alerts ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                        tuple(row.values()))
                    row["id"] = cur.lastrowid
        finally:
            conn.close()
        return [_record(r) for r in rows]

    def query(self, status: str | None = None, since: float | None = None, limit: int = 100,
              alertname: str | None = None) -> list[dict]:
        sql, args = "SELECT * FROM alerts WHERE 1=1", []
        if status:
            sql += " AND status = ?"
            args.append(status)
        if since is not None:
            sql += " AND received_at >= ?"
            args.append(since)
        if alertname:
            sql += " AND alertname = ?"
            args.append(alertname)
        sql += " ORDER BY received_at DESC, id DESC LIMIT ?"
        args.append(limit)
        conn = self._connect()
        try:
            return [_record(dict(r)) for r in conn.execute(sql, args)]
        finally:
            conn.close()

    def count(self) -> int:
        conn = self._connect()
        try:
            return conn.execute("SELECT COUNT(*) FROM alerts").fetchone()[0]
        finally:
            conn.close()


def _record(row: dict) -> dict:
    out = dict(row)
    for key in ("labels", "annotations"):
        if isinstance(out.get(key), str):
            out[key] = json.loads(out[key])
    out["received_at_iso"] = logs.utc_iso(out["received_at"])
    out["summary"] = out["annotations"].get("summary")
    return out


def parse_since(value: str | None, now: float | None = None) -> float | None:
    """``10m`` / ``2h`` / ``30s`` / ``1d`` ago, an ISO time, or epoch seconds -> epoch seconds."""
    if value is None or value == "":
        return None
    from taxi_mlops.observability.logview import parse_duration

    now = time.time() if now is None else now
    try:
        number = float(value)
    except ValueError:
        number = None
    if number is not None and number > 1e8:  # epoch seconds (a duration that long is not meant)
        return number
    try:
        return now - parse_duration(value)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"since must be a duration (10m), an ISO time or epoch seconds, got {value!r}")
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


# ---- app -------------------------------------------------------------------------------
def create_app(settings: Settings, hooks: dict[str, list[Hook]] | None = None) -> FastAPI:
    hooks = HOOKS if hooks is None else hooks
    store = AlertStore(db_path(settings))
    registry = CollectorRegistry()
    received = Counter("taxi_alerts_received", "Alerts received from Alertmanager, per notification.",
                       ["alertname", "status"], registry=registry)
    hook_failures = Counter("taxi_alert_hook_failures", "Alert hooks that raised.", ["alertname"],
                            registry=registry)
    app = FastAPI(title="taxi-mlops alert receiver")
    app.state.store = store

    def run_hooks(records: list[dict]) -> None:
        for rec in records:
            for fn in hooks.get(rec["alertname"], []) + hooks.get("*", []):
                try:
                    fn(rec)
                except Exception:
                    hook_failures.labels(rec["alertname"]).inc()
                    log.exception("alert hook failed", extra={"alertname": rec["alertname"],
                                                                "hook": getattr(fn, "__qualname__", repr(fn))})

    @app.post("/alerts")
    def receive(payload: WebhookPayload, background: BackgroundTasks) -> dict:
        try:
            records = store.insert(payload)
        except sqlite3.Error as exc:
            log.error("cannot store alerts", extra={"error": str(exc)})
            raise HTTPException(503, f"alert store unavailable: {exc}")
        for rec in records:
            received.labels(rec["alertname"], rec["status"]).inc()
            fields = {"alertname": rec["alertname"], "status": rec["status"], "severity": rec["severity"],
                      "fingerprint": rec["fingerprint"], "starts_at": rec["starts_at"], "summary": rec["summary"]}
            log.info("alert %s %s", rec["alertname"], rec["status"],
                     extra={k: v for k, v in fields.items() if v is not None})
        if records:
            background.add_task(run_hooks, records)
        return {"stored": len(records), "ids": [r["id"] for r in records]}

    @app.get("/alerts")
    def history(status: Literal["firing", "resolved"] | None = None, since: str | None = None,
                limit: int = Query(100, ge=1, le=10000), alertname: str | None = None) -> dict:
        try:
            since_ts = parse_since(since)
        except ValueError as exc:
            raise HTTPException(422, [{"loc": ["query", "since"], "msg": str(exc), "type": "value_error"}])
        return {"alerts": store.query(status=status, since=since_ts, limit=limit, alertname=alertname)}

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "alerts_stored": store.count()}

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):  # pragma: no cover - last resort
        log.exception("unexpected error", extra={"path": request.url.path})
        from fastapi.responses import JSONResponse

        return JSONResponse({"detail": f"internal error: {type(exc).__name__}"}, status_code=503)

    return app


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hook", action="append", default=[], metavar="ALERTNAME=module:function")
    args = parser.parse_args(argv)
    settings = Settings()
    logs.setup("alert_receiver", settings.log_level)
    for spec in args.hook:
        name, fn = load_hook(spec)
        register(name, fn)
    log.info("alert receiver listening", extra={"url": settings.alert_receiver_url,
                                                "db": str(db_path(settings)),
                                                "hooks": {k: len(v) for k, v in HOOKS.items()}})
    uvicorn.run(create_app(settings), host=settings.host, port=settings.alert_receiver_port,
                log_config=logs.uvicorn_log_config("alert_receiver", settings.log_level),
                access_log=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
