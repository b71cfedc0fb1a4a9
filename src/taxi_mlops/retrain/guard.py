"""Guard rails of automatic retraining: one run at a time, a cool-down, a daily cap.

Alerts repeat (Alertmanager re-notifies, three drift alerts fire together), and a retrain
costs minutes of both cores; without a guard one bad hour would train all day. The state is
SQLite (``<state_dir>/retrain/retrain.sqlite``) so it survives a receiver restart and is
shared by the receiver hook, the CLI and ``taxi-mlops status``. Refusals are recorded too:
"why did nothing retrain?" is answered by ``state()["last_refusal"]``.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    started_at REAL NOT NULL,
    finished_at REAL,
    status TEXT NOT NULL,          -- running | finished | failed | abandoned
    pid INTEGER,
    trigger TEXT NOT NULL,
    outcome TEXT
);
CREATE INDEX IF NOT EXISTS runs_started ON runs (started_at);
CREATE TABLE IF NOT EXISTS refusals (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    reason TEXT NOT NULL,
    trigger TEXT NOT NULL
);
"""

DAY_S = 24 * 3600.0


def db_path(state_dir: Path) -> Path:
    return Path(state_dir) / "retrain" / "retrain.sqlite"


def pid_alive(pid: int | None) -> bool:
    """A pid that is gone (or never recorded) cannot still be running a retrain."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


class Guard:
    """``try_start`` -> ``(run_id, reason)`` (``run_id`` None: refused, ``reason`` says why);
    ``finish(run_id, outcome)`` always, whatever happened in between."""

    def __init__(self, path: Path, cooldown_s: float = 3600.0, max_per_day: int = 4,
                 clock: Callable[[], float] = time.time, pid: int | None = None,
                 alive: Callable[[int | None], bool] = pid_alive):
        self.path = Path(path)
        self.cooldown_s = float(cooldown_s)
        self.max_per_day = int(max_per_day)
        self.clock = clock
        self.pid = os.getpid() if pid is None else pid
        self.alive = alive
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)

    @classmethod
    def from_settings(cls, settings, **kwargs) -> "Guard":
        return cls(db_path(settings.state_dir), cooldown_s=settings.retrain_cooldown_s,
                   max_per_day=settings.retrain_max_per_day, **kwargs)

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: we issue BEGIN IMMEDIATE ourselves, so check-and-insert is
        # atomic across processes (receiver hook and CLI racing for the same slot).
        db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None)
        db.row_factory = sqlite3.Row
        return db

    # ---- decisions ----------------------------------------------------------------------
    def try_start(self, trigger: dict) -> tuple[str | None, str]:
        now = self.clock()
        db = self._connect()
        try:
            db.execute("BEGIN IMMEDIATE")
            reason = self._refusal(db, now)
            if reason:
                db.execute("INSERT INTO refusals (at, reason, trigger) VALUES (?, ?, ?)",
                           (now, reason, json.dumps(trigger, default=str)))
                db.execute("COMMIT")
                return None, reason
            run_id = f"rt-{time.strftime('%Y%m%d-%H%M%S', time.gmtime(now))}-{uuid.uuid4().hex[:6]}"
            db.execute("INSERT INTO runs (id, started_at, status, pid, trigger) VALUES (?, ?, 'running', ?, ?)",
                       (run_id, now, self.pid, json.dumps(trigger, default=str)))
            db.execute("COMMIT")
            return run_id, "started"
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        finally:
            db.close()

    def _refusal(self, db: sqlite3.Connection, now: float) -> str | None:
        for row in db.execute("SELECT id, pid FROM runs WHERE status = 'running'").fetchall():
            if self.alive(row["pid"]):
                return f"run {row['id']} is still running (pid {row['pid']}): one retrain at a time"
            # Its process died (killed receiver, crash): the slot is free again.
            db.execute("UPDATE runs SET status = 'abandoned', finished_at = ?, outcome = ? WHERE id = ?",
                       (now, json.dumps({"error": f"process {row['pid']} died before finishing"}), row["id"]))
        last = db.execute("SELECT MAX(started_at) FROM runs").fetchone()[0]
        if last is not None and now - last < self.cooldown_s:
            return (f"cool-down: the last run started {now - last:.0f}s ago; next run allowed at "
                    f"{_iso(last + self.cooldown_s)} (retrain_cooldown_s={self.cooldown_s:.0f})")
        started = [r[0] for r in db.execute("SELECT started_at FROM runs WHERE started_at > ? ORDER BY started_at",
                                            (now - DAY_S,))]
        if len(started) >= self.max_per_day:
            return (f"daily cap: {len(started)} runs in the last 24h (retrain_max_per_day={self.max_per_day}); "
                    f"next run allowed at {_iso(started[len(started) - self.max_per_day] + DAY_S)}")
        return None

    def finish(self, run_id: str, outcome: dict) -> None:
        status = "failed" if outcome.get("error") else "finished"
        db = self._connect()
        try:
            db.execute("UPDATE runs SET status = ?, finished_at = ?, outcome = ? WHERE id = ?",
                       (status, self.clock(), json.dumps(outcome, default=str), run_id))
        finally:
            db.close()

    # ---- reporting ----------------------------------------------------------------------
    def next_allowed(self, db: sqlite3.Connection | None = None) -> float:
        own = db is None
        db = db or self._connect()
        try:
            now = self.clock()
            candidates = [now]
            last = db.execute("SELECT MAX(started_at) FROM runs").fetchone()[0]
            if last is not None:
                candidates.append(last + self.cooldown_s)
            started = [r[0] for r in db.execute(
                "SELECT started_at FROM runs WHERE started_at > ? ORDER BY started_at", (now - DAY_S,))]
            if len(started) >= self.max_per_day:
                candidates.append(started[len(started) - self.max_per_day] + DAY_S)
            return max(candidates)
        finally:
            if own:
                db.close()

    def state(self, limit: int = 5) -> dict:
        db = self._connect()
        try:
            runs = [_run(dict(r)) for r in db.execute(
                "SELECT * FROM runs ORDER BY started_at DESC LIMIT ?", (limit,))]
            running = [r for r in runs if r["status"] == "running"]
            refusal = db.execute("SELECT * FROM refusals ORDER BY id DESC LIMIT 1").fetchone()
            day = db.execute("SELECT COUNT(*) FROM runs WHERE started_at > ?",
                             (self.clock() - DAY_S,)).fetchone()[0]
            nxt = self.next_allowed(db)
        finally:
            db.close()
        return {
            "db": str(self.path), "running": running[0] if running else None, "runs": runs,
            "runs_last_24h": day, "cooldown_s": self.cooldown_s, "max_per_day": self.max_per_day,
            "next_allowed_at": _iso(nxt), "next_allowed_ts": nxt,
            "last_refusal": None if refusal is None else {
                "at": _iso(refusal["at"]), "reason": refusal["reason"], "trigger": json.loads(refusal["trigger"])},
        }


def _run(row: dict) -> dict:
    for key in ("trigger", "outcome"):
        row[key] = json.loads(row[key]) if row.get(key) else None
    row["started_at_iso"] = _iso(row["started_at"])
    row["finished_at_iso"] = _iso(row["finished_at"])
    return row
