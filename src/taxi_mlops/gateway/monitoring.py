"""The drift reports of drifted windows, read-only, for clients that must not read the
data-quality worker's files (the control room).

The worker writes one JSON per drifted window to ``<state_dir>/drift/reports/`` named
``<UTC stamp>-<model version>.json`` (``streaming/quality.py``). A name is checked against that
pattern before any path is built, so a request cannot reach another file.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from taxi_mlops.settings import Settings

# Also the route's declared pattern (OpenAPI, so ECMA regex: no named groups there).
NAME_PATTERN = r"^\d{8}T\d{12}Z-[A-Za-z0-9_.-]{1,64}\.json$"
NAME = re.compile(r"^(?P<stamp>\d{8}T\d{12}Z)-(?P<version>[A-Za-z0-9_.-]{1,64})\.json$")
MAX_LIMIT = 500


class InvalidName(ValueError):
    """Not a report name (the 422 names the field)."""


class ReportNotFound(LookupError):
    pass


def reports_dir(settings: Settings) -> Path:
    return settings.state_dir / "drift" / "reports"


def _summary(path: Path) -> dict:
    """Name, model version and drifted features of one report (what a list shows)."""
    match = NAME.match(path.name)
    entry = {"name": path.name, "model_version": match["version"], "bytes": path.stat().st_size}
    try:
        record = json.loads(path.read_text())
        details = record.get("details") or {}
        entry.update(timestamp=record.get("timestamp"), events=details.get("events"),
                     drifted_features=details.get("drifted_features", []), feature=record.get("feature"))
    except (OSError, ValueError) as exc:  # a half-written or damaged file is listed as such
        entry["error"] = f"unreadable: {type(exc).__name__}"
    return entry


def list_reports(settings: Settings, limit: int = 50) -> list[dict]:
    """The newest ``limit`` reports first (names sort by time)."""
    folder = reports_dir(settings)
    if not folder.is_dir():
        return []
    names = sorted((p for p in folder.iterdir() if NAME.match(p.name)), key=lambda p: p.name, reverse=True)
    return [_summary(p) for p in names[:max(1, min(limit, MAX_LIMIT))]]


def read_report(settings: Settings, name: str) -> dict:
    if not NAME.match(name):
        raise InvalidName(f"{name!r} is not a drift report name (<yyyymmddThhmmssffffffZ>-<version>.json); "
                          "GET /monitoring/drift-reports lists them")
    path = reports_dir(settings) / name
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ReportNotFound(f"no drift report {name!r}; GET /monitoring/drift-reports lists them") from None
