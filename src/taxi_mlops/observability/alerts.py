"""``taxi-mlops alerts``: what is firing now (Alertmanager) and what fired (the receiver).

Every function returns plain dicts and never raises for an unreachable server: the error is
reported in the result so the CLI can print what it has.
"""

from __future__ import annotations

import sqlite3
from typing import Any

import httpx
from rich.table import Table

from taxi_mlops.settings import Settings


def firing(settings: Settings, timeout_s: float = 3.0, include_suppressed: bool = False) -> list[dict]:
    """Active alerts from Alertmanager's API v2 (``GET /api/v2/alerts``), oldest first.

    Each: alertname, severity, state (active|suppressed), summary, description, labels,
    starts_at, fingerprint. Raises ``httpx.HTTPError`` if Alertmanager does not answer
    within ``timeout_s`` (``overview`` turns that into an error entry)."""
    params = {"active": "true"}
    if not include_suppressed:
        params.update(silenced="false", inhibited="false")
    r = httpx.get(f"{settings.alertmanager_url}/api/v2/alerts", params=params, timeout=timeout_s)
    r.raise_for_status()
    out = []
    for a in r.json():
        labels, ann = a.get("labels", {}), a.get("annotations", {})
        out.append({"alertname": labels.get("alertname", ""), "severity": labels.get("severity"),
                    "state": (a.get("status") or {}).get("state", "active"),
                    "summary": ann.get("summary"), "description": ann.get("description"),
                    "labels": labels, "starts_at": a.get("startsAt"), "fingerprint": a.get("fingerprint")})
    return sorted(out, key=lambda x: x["starts_at"] or "")


def history(settings: Settings, status: str | None = None, since: str | None = None, limit: int = 50,
            timeout_s: float = 3.0) -> list[dict]:
    """Alerts the receiver recorded (newest first): from its HTTP API, or straight from its
    SQLite file when the receiver is not running. ``status``: firing|resolved; ``since``:
    ``10m``/``2h``, an ISO time or epoch seconds. Each: id, alertname, status, severity,
    summary, labels, annotations, starts_at, ends_at, fingerprint, received_at(_iso)."""
    params: dict[str, Any] = {"limit": limit}
    if status:
        params["status"] = status
    if since:
        params["since"] = since
    try:
        r = httpx.get(f"{settings.alert_receiver_url}/alerts", params=params, timeout=timeout_s)
        if r.status_code == 422:
            raise ValueError(r.json().get("detail"))
        r.raise_for_status()
        return r.json()["alerts"]
    except httpx.HTTPError:
        from taxi_mlops.observability.receiver import AlertStore, db_path, parse_since

        path = db_path(settings)
        if not path.exists():
            raise
        return AlertStore(path).query(status=status, since=parse_since(since), limit=limit)


def overview(settings: Settings, since: str | None = "24h", limit: int = 50, timeout_s: float = 3.0) -> dict:
    """``{"firing": [...], "history": [...], "errors": {"alertmanager": str, "receiver": str}}``."""
    result: dict = {"firing": [], "history": [], "errors": {}}
    try:
        result["firing"] = firing(settings, timeout_s)
    except (httpx.HTTPError, ValueError) as exc:
        result["errors"]["alertmanager"] = f"{settings.alertmanager_url}: {type(exc).__name__}: {exc}"
    try:
        result["history"] = history(settings, since=since, limit=limit, timeout_s=timeout_s)
    except (httpx.HTTPError, ValueError, sqlite3.Error) as exc:
        result["errors"]["receiver"] = f"{settings.alert_receiver_url}: {type(exc).__name__}: {exc}"
    return result


_STYLE = {"critical": "bold red", "warning": "yellow", "info": "cyan"}


def render(view: dict) -> Table:
    """One table: a section of alerts firing now, then the recorded history."""
    table = Table(title="Alerts", show_lines=False)
    for col in ("when", "state", "alert", "severity", "where", "summary"):
        table.add_column(col, overflow="fold")

    def where(labels: dict) -> str:
        keys = ("component", "topic", "model_version", "route")
        return " ".join(f"{k}={labels[k]}" for k in keys if labels.get(k))

    if not view.get("firing"):
        table.add_row("", "[green]nothing firing[/]", "", "", "", "")
    for a in view.get("firing", []):
        sev = a.get("severity") or ""
        table.add_row(a.get("starts_at") or "", "[bold red]FIRING[/]" if a["state"] == "active" else a["state"],
                      a["alertname"], f"[{_STYLE.get(sev, 'white')}]{sev}[/]", where(a["labels"]),
                      a.get("summary") or "")
    table.add_section()
    for h in view.get("history", []):
        sev = h.get("severity") or ""
        state = "[red]fired[/]" if h["status"] == "firing" else "[green]resolved[/]"
        table.add_row(h.get("received_at_iso") or "", state, h["alertname"],
                      f"[{_STYLE.get(sev, 'white')}]{sev}[/]", where(h.get("labels") or {}), h.get("summary") or "")
    for name, err in (view.get("errors") or {}).items():
        table.add_row("", "[red]error[/]", name, "", "", err)
    return table
