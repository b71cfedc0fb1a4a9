"""Read the stack's logs as one stream: ``taxi-mlops logs``.

Every service writes ``state_dir/logs/<service>.log``. Our Python components and the Go
servers (Prometheus, Alertmanager, Pushgateway with ``--log.format=json``) write JSON lines;
Redis, Kafka (log4j pattern), MLflow's own logger and the supervisor's ``--- start`` lines
do not. ``merge`` yields every line of every file as a dict in time order; a line that is
not JSON is still shown: its time is parsed where the format is known, else it takes the
time of the previous record of the same file (a traceback line stays under its record).

Each yielded dict has ``t`` (epoch seconds), ``ts`` (ISO UTC), ``component`` and ``source``
(the file name without ``.log``: the service), ``subcomponent`` (a JSON line's own different
``component``, e.g. Prometheus' ``tsdb``), ``level``, ``message`` and,
for JSON lines, every other field (``request_id``, ``model_version``, ``logger`` ...); for
other lines ``format`` (redis|kafka|supervisor|python|tensorflow|glog|iso|text) and ``raw``.
"""

from __future__ import annotations

import heapq
import json
import re
import time
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterable, Iterator

from taxi_mlops.observability.logs import utc_iso
from taxi_mlops.settings import Settings

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """``30s``, ``10m``, ``2h``, ``1d``, ``1h30m`` or bare seconds -> seconds."""
    s = str(text).strip().lower()
    if not s:
        raise ValueError("empty duration")
    pos, total = 0, 0.0
    for m in _DURATION_PART.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos != len(s):
        raise ValueError(f"not a duration (use e.g. 30s, 10m, 2h): {text!r}")
    return total


# ---- one line ----------------------------------------------------------------------------
_REDIS_LEVELS = {".": "DEBUG", "-": "INFO", "*": "INFO", "#": "WARNING"}
_PATTERNS: list[tuple[str, re.Pattern, str]] = [
    # 5634:M 27 Nov 2026 20:51:12.532 * Ready to accept connections tcp
    ("redis", re.compile(r"^\d+:[XCSM] (?P<t>\d{1,2} [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d\.\d{3}) "
                         r"(?P<level>[.\-*#]) (?P<msg>.*)$"), "%d %b %Y %H:%M:%S.%f"),
    # [2026-11-27 20:51:25,409] INFO Registered signal handlers ... (org.apache.kafka...)
    ("kafka", re.compile(r"^\[(?P<t>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\] (?P<level>[A-Z]+) (?P<msg>.*)$"),
     "%Y-%m-%d %H:%M:%S,%f"),
    # --- start 2026-11-27 20:51:24: /usr/bin/java ...   (the supervisor, before JSON events)
    ("supervisor", re.compile(r"^--- (?P<msg>start (?P<t>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d): .*)$"),
     "%Y-%m-%d %H:%M:%S"),
    # 2026/11/27 20:51:29 INFO mlflow.store.db.utils: Creating initial MLflow database tables...
    ("python", re.compile(r"^(?P<t>\d{4}/\d\d/\d\d \d\d:\d\d:\d\d) (?P<level>[A-Z]+) (?P<msg>.*)$"),
     "%Y/%m/%d %H:%M:%S"),
    # 2026-11-27 20:51:49.503709: E external/local_xla/...   (TensorFlow's C++ logging)
    ("tensorflow", re.compile(r"^(?P<t>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}): (?P<level>[IWEF]) (?P<msg>.*)$"),
     "%Y-%m-%d %H:%M:%S.%f"),
    # I1127 20:51:49.503709 140 fn.py:12] msg   (absl/glog: no year; the current one is assumed)
    ("glog", re.compile(r"^(?P<level>[IWEF])(?P<t>\d{4} \d\d:\d\d:\d\d\.\d{6}) +\d+ (?P<msg>\S+\] .*)$"),
     "%Y%m%d %H:%M:%S.%f"),
    # 2026-11-27 20:51:29,123 INFO ... / 2026-11-27T20:51:29.123Z ...
    ("iso", re.compile(r"^(?P<t>\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:[.,]\d+)?(?:Z|[+-]\d\d:?\d\d)?)"
                       r"\s+(?:(?P<level>DEBUG|INFO|WARN|WARNING|ERROR|CRITICAL|FATAL)\s+)?(?P<msg>.*)$"), ""),
]
_LEVEL_ALIASES = {"WARN": "WARNING", "ERR": "ERROR", "FATAL": "CRITICAL", "EMERG": "CRITICAL"}


def parse_time(value) -> float | None:
    """An ISO 8601 string (any precision, ``Z`` or offset; naive = local time) or epoch number."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value) / 1000 if value > 1e11 else float(value)
    s = str(value).strip().replace(",", ".")
    if s.endswith("Z"):
        s = s[:-1] + "+00:00"
    m = re.match(r"^(.*T\d\d:\d\d:\d\d)\.(\d+)(.*)$", s) or re.match(r"^(.* \d\d:\d\d:\d\d)\.(\d+)(.*)$", s)
    if m:  # Go writes nanoseconds; Python takes at most microseconds
        s = f"{m.group(1)}.{m.group(2)[:6].ljust(6, '0')}{m.group(3)}"
    try:
        return datetime.fromisoformat(s).timestamp()
    except ValueError:
        return None


def _level(value) -> str:
    s = str(value or "").upper()
    return _LEVEL_ALIASES.get(s, s) or "INFO"


def parse_line(line: str, source: str) -> dict | None:
    """One log line as a record; ``t`` is None when the line carries no time we can read."""
    text = line.rstrip("\r\n")
    if not text.strip():
        return None
    if text.lstrip().startswith("{"):
        try:
            obj = json.loads(text)
        except ValueError:
            obj = None
        if isinstance(obj, dict):
            rec = dict(obj)
            t = None
            for key in ("ts", "time", "timestamp", "@timestamp", "asctime"):
                if key in obj:
                    t = parse_time(obj[key])
                    if t is not None:
                        break
            rec["t"] = t
            rec["level"] = _level(obj.get("level") or obj.get("levelname") or obj.get("severity"))
            if "message" not in rec:
                rec["message"] = str(obj.get("msg", ""))
            # The file names the service; Go servers use "component" for their subsystems
            # (tsdb, web), so the line's own value is kept as subcomponent when it differs.
            if obj.get("component") and obj["component"] != source:
                rec["subcomponent"] = obj["component"]
            rec["component"] = source
            rec["source"] = source
            return rec
    for fmt, pattern, strp in _PATTERNS:
        m = pattern.match(text)
        if not m:
            continue
        raw_t = m.group("t")
        if fmt == "glog":
            raw_t = f"{time.localtime().tm_year}{raw_t}"
        if strp:
            try:
                t = datetime.strptime(raw_t, strp).timestamp()  # naive: the machine's local time
            except ValueError:
                continue
        else:
            t = parse_time(raw_t)
            if t is None:
                continue
        level = m.groupdict().get("level")
        if fmt == "redis":
            level = _REDIS_LEVELS.get(level, level)
        elif fmt in ("tensorflow", "glog"):
            level = {"I": "INFO", "W": "WARNING", "E": "ERROR", "F": "CRITICAL"}[level]
        return {"t": t, "level": _level(level or "INFO"), "message": m.group("msg"), "component": source,
                "source": source, "format": fmt, "raw": text}
    return {"t": None, "level": "INFO", "message": text, "component": source, "source": source,
            "format": "text", "raw": text}


def _timed(records: Iterable[dict], last_t: float | None = None) -> Iterator[dict]:
    """Give untimed records the previous record's time (leading ones: the first time seen)
    and its request_id (a traceback belongs to the request whose record it follows)."""
    pending: list[dict] = []
    last_rid = None
    for rec in records:
        if rec["t"] is None:
            if last_t is None:
                pending.append(rec)
                continue
            rec["t"] = last_t
            rec["continuation"] = True
            if last_rid and "request_id" not in rec:
                rec["request_id"] = last_rid
        else:
            last_t = rec["t"]
            last_rid = rec.get("request_id")
            for p in pending:
                p["t"], p["continuation"] = last_t, True
                yield p
            pending = []
        yield rec
    for p in pending:  # a file with no readable time at all
        p["t"], p["continuation"] = 0.0, True
        yield p


def _finish(rec: dict) -> dict:
    rec["ts"] = utc_iso(rec["t"])
    return rec


def log_files(settings: Settings) -> list[Path]:
    return sorted(settings.logs_dir.glob("*.log"))


def _wanted(component: str | Iterable[str] | None) -> set[str] | None:
    if component is None:
        return None
    return {component} if isinstance(component, str) else set(component)


def _match(rec: dict, wanted: set[str] | None, request_id: str | None, since: float | None) -> bool:
    if wanted is not None and rec["source"] not in wanted and rec.get("subcomponent") not in wanted:
        return False
    # A model-server line of a shared call names every request in it, comma-separated.
    if request_id is not None and request_id not in str(rec.get("request_id") or "").split(",") and not (
            "raw" in rec and re.search(rf"(?<![\w-]){re.escape(request_id)}(?![\w-])", rec["raw"])):
        return False
    return since is None or rec["t"] >= since


def _read_file(path: Path) -> Iterator[dict]:
    source = path.name[:-4] if path.name.endswith(".log") else path.name
    with path.open("r", errors="replace") as f:
        for line in f:
            rec = parse_line(line, source)
            if rec is not None:
                yield rec


def merge(settings: Settings, component: str | Iterable[str] | None = None, request_id: str | None = None,
          since_s: float | None = None) -> Iterator[dict]:
    """Every record of every ``logs/*.log`` in time order (ties keep file order), filtered."""
    wanted = _wanted(component)
    since = None if since_s is None else time.time() - since_s
    streams = []
    for path in log_files(settings):
        streams.append(_timed(_read_file(path)))
    for rec in heapq.merge(*streams, key=lambda r: r["t"]):
        if _match(rec, wanted, request_id, since):
            yield _finish(rec)


def follow(settings: Settings, component: str | Iterable[str] | None = None, request_id: str | None = None,
           since_s: float | None = None, backlog: int = 10, poll_interval_s: float = 0.5,
           stop: Callable[[], bool] | None = None) -> Iterator[dict]:
    """``tail -f`` over all log files: first the matching records of the last ``since_s``
    seconds (or the last ``backlog`` records), then new lines as they are written, each poll's
    batch in time order. New files are picked up, truncated ones re-read from the start.
    Ends on KeyboardInterrupt or when ``stop()`` returns True (checked every poll)."""
    wanted = _wanted(component)
    poll_interval_s = min(max(poll_interval_s, 0.05), 5.0)
    offsets: dict[Path, int] = {}
    partial: dict[Path, str] = {}
    last_t: dict[Path, float | None] = {}
    try:
        for path in log_files(settings):
            offsets[path] = path.stat().st_size
        history = list(merge(settings, component, request_id, since_s))
        if since_s is None:
            history = history[-backlog:] if backlog > 0 else []
        for rec in history:
            last_t[_path_of(settings, rec)] = rec["t"]
        yield from history
        while not (stop and stop()):
            batch = []
            for path in log_files(settings):
                try:
                    size = path.stat().st_size
                except FileNotFoundError:
                    continue
                offset = offsets.get(path, 0)
                if size < offset:  # truncated or replaced
                    offset, partial[path] = 0, ""
                if size == offset:
                    continue
                with path.open("rb") as f:
                    f.seek(offset)
                    chunk = f.read(size - offset)
                offsets[path] = size
                text = partial.get(path, "") + chunk.decode("utf-8", errors="replace")
                lines = text.split("\n")
                partial[path] = lines.pop()  # an unfinished last line waits for its newline
                source = path.name[:-4]
                recs = [r for r in (parse_line(line, source) for line in lines) if r is not None]
                timed = list(_timed(recs, last_t.get(path)))
                if timed:
                    last_t[path] = timed[-1]["t"]
                batch.extend(timed)
            batch.sort(key=lambda r: r["t"])
            for rec in batch:
                if _match(rec, wanted, request_id, None):
                    yield _finish(rec)
            if stop and stop():
                break
            time.sleep(poll_interval_s)
    except KeyboardInterrupt:
        return


def _path_of(settings: Settings, rec: dict) -> Path:
    return settings.logs_dir / f"{rec['source']}.log"


_SKIP = {"t", "ts", "time", "timestamp", "level", "component", "source", "message", "msg", "logger",
         "raw", "format", "continuation", "caller", "color_message", "subcomponent"}


def format_record(rec: dict, color: bool = False) -> str:
    """One line for a terminal: ``time component level [request_id] message key=value ...``."""
    rid = rec.get("request_id")
    extras = " ".join(f"{k}={v}" for k, v in rec.items()
                      if k not in _SKIP and k != "request_id" and v is not None and v != "")
    name = rec["component"] + (f"/{rec['subcomponent']}" if rec.get("subcomponent") else "")
    parts = [rec["ts"], f"{name:<18}", f"{rec['level']:<7}"]
    if rid:
        parts.append(f"[{rid}]")
    parts.append(str(rec.get("message", "")))
    if extras:
        parts.append(extras)
    return " ".join(parts)
