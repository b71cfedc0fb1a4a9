"""JSON-lines logging shared by every Python component.

Each record is one JSON object: ``ts`` (ISO 8601 UTC), ``level``, ``component``, ``logger``,
``message``, plus ``request_id`` and ``model_version`` when the code handling a request has
bound them (``bind``), and any ``extra={...}`` fields. One format everywhere lets
``taxi-mlops logs`` merge the files in time order and follow one request across components,
and lets Alloy/Loki parse them without per-component regexes.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from contextlib import contextmanager
from datetime import datetime, timezone

_context: contextvars.ContextVar[dict] = contextvars.ContextVar("taxi_log_context", default={})

# LogRecord attributes that are not user extras.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message", "asctime", "taskName", "color_message"}  # uvicorn adds an ANSI-coloured copy


def utc_iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    def __init__(self, component: str):
        super().__init__()
        self.component = component

    def format(self, record: logging.LogRecord) -> str:
        entry = {"ts": utc_iso(record.created), "level": record.levelname, "component": self.component,
                 "logger": record.name, "message": record.getMessage()}
        entry.update({k: v for k, v in _context.get().items() if v is not None})
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def setup(component: str, level: str | int = "INFO", stream=None) -> None:
    """Route the root logger (and uvicorn's) to one JSON handler on ``stream`` (stdout, which
    the supervisor writes to ``logs/<component>.log``)."""
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(JsonFormatter(component))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "kserve", "kserve.trace", "mlflow"):
        lg = logging.getLogger(name)
        for h in list(lg.handlers):
            lg.removeHandler(h)
        lg.propagate = True


def uvicorn_log_config(component: str, level: str = "INFO") -> dict:
    """A ``log_config`` for ``uvicorn.run`` that keeps uvicorn's loggers on our JSON format."""
    return {
        "version": 1, "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter, "component": component}},
        "handlers": {"default": {"class": "logging.StreamHandler", "formatter": "json",
                                 "stream": "ext://sys.stdout"}},
        "loggers": {"": {"handlers": ["default"], "level": level},
                    "uvicorn": {"handlers": [], "level": level, "propagate": True},
                    "uvicorn.error": {"handlers": [], "level": level, "propagate": True},
                    "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": True}},
    }


def bind(**fields) -> contextvars.Token:
    """Add fields (``request_id``, ``model_version``) to every record in this context."""
    return _context.set({**_context.get(), **fields})


def reset(token: contextvars.Token) -> None:
    _context.reset(token)


@contextmanager
def bound(**fields):
    token = bind(**fields)
    try:
        yield
    finally:
        reset(token)


def event(component: str, message: str, level: str = "INFO", **fields) -> str:
    """One JSON line written by code that is not a logger (the supervisor's start lines)."""
    import time

    return json.dumps({"ts": utc_iso(time.time()), "level": level, "component": component,
                       "logger": "taxi_mlops.supervisor", "message": message, **fields}, default=str)
