"""Experiments, their observations and the routing policy, in one SQLite file, or in
PostgreSQL when the readers and writers are not on one machine.

SQLite by default because every reader and writer is on this machine (gateway instances and
workers, the label-join worker, the CLI) and the volume is small (one row per joined label).
WAL mode lets readers proceed while one process writes; ``busy_timeout`` makes a writer wait
for the lock instead of failing. A connection is opened per call (cheap for SQLite, and safe
across threads and spawned workers: nothing is shared).

Gateway pods on a cluster do not share a disk, so ``TAXI_ROLLOUT_DB_URI=postgresql://...``
puts the same tables in PostgreSQL (psycopg 3, already in the lock for MLflow's backend). The
SQL is the same but for the types; a write transaction starts by locking the ``meta`` row,
which serializes writers as SQLite's ``BEGIN IMMEDIATE`` does, so a check-then-write (one
running experiment per model, a decision made once) stays atomic across pods.

``changed_marker()`` is a counter in the ``meta`` table, bumped in the same transaction as any
change to experiments or routing; a gateway worker polls it every second (one indexed read)
and reloads only when it moved.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from taxi_mlops.rollout.experiment import Experiment, Status

BUSY_TIMEOUT_MS = 10_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS experiments (
    id TEXT PRIMARY KEY,
    model_name TEXT NOT NULL,
    status TEXT NOT NULL,
    body TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS experiments_model_status ON experiments (model_name, status);
CREATE TABLE IF NOT EXISTS observations (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    experiment_id TEXT NOT NULL,
    trip_id TEXT NOT NULL,
    variant TEXT NOT NULL,
    model_version TEXT NOT NULL,
    probability REAL NOT NULL,
    label INTEGER NOT NULL,
    outcome REAL NOT NULL,
    ts REAL NOT NULL,
    UNIQUE (experiment_id, trip_id)
);
CREATE TABLE IF NOT EXISTS routing (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    policy TEXT NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT INTO meta (key, value) VALUES ('changes', 0) ON CONFLICT (key) DO NOTHING;
"""
# PostgreSQL: the same tables in a schema of their own (a cluster may give the store MLflow's
# database, which has an ``experiments`` table too); REAL is 4 bytes there (a Unix time would lose its seconds).
_PG_SCHEMA = (_SCHEMA.replace("seq INTEGER PRIMARY KEY AUTOINCREMENT", "seq BIGSERIAL PRIMARY KEY")
              .replace(" REAL ", " DOUBLE PRECISION "))


PG_SCHEMA = "taxi_rollout"


def is_postgres(location: Path | str) -> bool:
    return str(location).startswith(("postgresql://", "postgres://"))


@dataclass
class _PgConnection:
    """psycopg's connection behind the few sqlite3 calls the store makes (``?`` placeholders,
    rows by column name, ``rowcount``)."""

    conn: Any

    def execute(self, sql: str, args: tuple = ()):
        return self.conn.execute(sql.replace("?", "%s"), args)


class ExperimentConflict(RuntimeError):
    """Another experiment of the same model is running (one at a time per model)."""


class RolloutStore:
    def __init__(self, location: Path | str, connect_timeout_s: float = 10.0):
        """``location``: a SQLite file, or a ``postgresql://`` URI."""
        self.uri = str(location) if is_postgres(location) else None
        self.connect_timeout_s = connect_timeout_s
        if self.uri:
            self.path = None
            with self._pg() as conn:
                conn.execute("SELECT pg_advisory_xact_lock(7461)")  # one schema creator at a time
                conn.execute(f"CREATE SCHEMA IF NOT EXISTS {PG_SCHEMA}")
                for statement in filter(str.strip, _PG_SCHEMA.split(";")):
                    conn.execute(statement)
            return
        self.path = Path(location)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as conn:
            conn.execute("PRAGMA journal_mode=WAL")  # persistent: set once per file
            conn.executescript(_SCHEMA)

    # ---- connections ------------------------------------------------------------------------
    @contextmanager
    def _pg(self) -> Iterator[_PgConnection]:
        """One PostgreSQL transaction on a new connection (committed, or rolled back on error)."""
        import psycopg
        from psycopg.rows import dict_row

        with psycopg.connect(self.uri, connect_timeout=max(1, int(self.connect_timeout_s)),
                             options=f"-c search_path={PG_SCHEMA}", row_factory=dict_row) as conn:
            with conn.transaction():
                yield _PgConnection(conn)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process crashes
        conn.row_factory = sqlite3.Row
        return conn

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        if self.uri:
            with self._pg() as conn:
                yield conn
            return
        conn = self._connect()
        try:
            yield conn
        finally:
            conn.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One IMMEDIATE transaction: the write lock is taken up front, so a check-then-write
        (conflict, status once) is atomic across processes. PostgreSQL: the ``meta`` row's lock,
        taken first, does the same across pods."""
        if self.uri:
            with self._pg() as conn:
                conn.execute("SELECT value FROM meta WHERE key = 'changes' FOR UPDATE")
                yield conn
            return
        conn = self._connect()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        finally:
            conn.close()

    @staticmethod
    def _bump(conn: sqlite3.Connection) -> None:
        conn.execute("UPDATE meta SET value = value + 1 WHERE key = 'changes'")

    # ---- experiments ------------------------------------------------------------------------
    def create(self, experiment: Experiment) -> Experiment:
        """Store a new running experiment; ``ExperimentConflict`` when one of the same model
        is already running (stop or decide it first)."""
        now = time.time()
        with self._write() as conn:
            if experiment.status == "running":
                row = conn.execute("SELECT id FROM experiments WHERE model_name = ? AND status = "
                                   "'running'", (experiment.model_name,)).fetchone()
                if row is not None:
                    raise ExperimentConflict(
                        f"experiment {row['id']} of model '{experiment.model_name}' is still running; "
                        "stop it (or wait for its decision) before starting another")
            try:
                conn.execute("INSERT INTO experiments (id, model_name, status, body, created_at, "
                             "updated_at) VALUES (?, ?, ?, ?, ?, ?)",
                             (experiment.id, experiment.model_name, experiment.status,
                              experiment.model_dump_json(), experiment.created_at.timestamp(), now))
            except Exception as exc:
                if not _unique_violation(exc):
                    raise
                raise ExperimentConflict(f"an experiment with id {experiment.id} exists already") from None
            self._bump(conn)
        return experiment

    def get(self, experiment_id: str) -> Experiment | None:
        with self._read() as conn:
            row = conn.execute("SELECT body FROM experiments WHERE id = ?", (experiment_id,)).fetchone()
        return Experiment.model_validate_json(row["body"]) if row else None

    def list(self, model_name: str | None = None) -> list[Experiment]:
        """Newest first."""
        sql, args = "SELECT body FROM experiments", ()
        if model_name is not None:
            sql, args = sql + " WHERE model_name = ?", (model_name,)
        with self._read() as conn:
            tie = "id DESC" if self.uri else "rowid DESC"  # PostgreSQL has no rowid
            rows = conn.execute(sql + f" ORDER BY created_at DESC, {tie}", args).fetchall()
        return [Experiment.model_validate_json(r["body"]) for r in rows]

    def running(self, model_name: str) -> Experiment | None:
        with self._read() as conn:
            row = conn.execute("SELECT body FROM experiments WHERE model_name = ? AND status = "
                               "'running'", (model_name,)).fetchone()
        return Experiment.model_validate_json(row["body"]) if row else None

    def update_status(self, experiment_id: str, status: Status,
                      decision: dict[str, Any] | None = None) -> bool:
        """Move a *running* experiment to ``status`` (with its decision). False when it is not
        running (absent or decided already): a decision is made once, whoever races for it."""
        from datetime import datetime, timezone

        now = time.time()
        with self._write() as conn:
            row = conn.execute("SELECT body FROM experiments WHERE id = ? AND status = 'running'",
                               (experiment_id,)).fetchone()
            if row is None:
                return False
            exp = Experiment.model_validate_json(row["body"])
            exp = exp.model_copy(update={"status": status, "decision": decision,
                                         "decided_at": datetime.fromtimestamp(now, timezone.utc)})
            conn.execute("UPDATE experiments SET status = ?, body = ?, updated_at = ? WHERE id = ?",
                         (status, exp.model_dump_json(), now, experiment_id))
            self._bump(conn)
        return True

    def annotate_decision(self, experiment_id: str, **fields: Any) -> bool:
        """Add ``fields`` to a decided experiment's decision (e.g. the registry action's outcome)
        without changing its status. False when the experiment does not exist."""
        with self._write() as conn:
            row = conn.execute("SELECT body FROM experiments WHERE id = ?", (experiment_id,)).fetchone()
            if row is None:
                return False
            exp = Experiment.model_validate_json(row["body"])
            exp = exp.model_copy(update={"decision": {**(exp.decision or {}), **fields}})
            conn.execute("UPDATE experiments SET body = ?, updated_at = ? WHERE id = ?",
                         (exp.model_dump_json(), time.time(), experiment_id))
            self._bump(conn)
        return True

    # ---- observations -----------------------------------------------------------------------
    def add_observation(self, experiment_id: str, trip_id: str, variant: str, model_version: str,
                        probability: float, label: int, outcome: float, ts: float | None = None) -> bool:
        """Record one joined label; False when this (experiment, trip) was recorded before
        (a redelivered label counts once, across restarts too)."""
        with self._write() as conn:
            cur = conn.execute(
                "INSERT INTO observations (experiment_id, trip_id, variant, model_version, "
                "probability, label, outcome, ts) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (experiment_id, trip_id) DO NOTHING",
                (experiment_id, trip_id, variant, str(model_version), float(probability),
                 1 if label else 0, float(outcome), time.time() if ts is None else float(ts)))
            return cur.rowcount == 1

    def observations(self, experiment_id: str, after_seq: int = 0) -> list[dict]:
        """The experiment's observations in insertion order (those with ``seq > after_seq``:
        a reader catches up on what other processes inserted since it last looked)."""
        with self._read() as conn:
            rows = conn.execute("SELECT experiment_id, trip_id, variant, model_version, probability, "
                                "label, outcome, ts, seq FROM observations WHERE experiment_id = ? "
                                "AND seq > ? ORDER BY seq", (experiment_id, after_seq)).fetchall()
        return [dict(r) for r in rows]

    def count_observations(self, experiment_id: str) -> dict[str, int]:
        with self._read() as conn:
            rows = conn.execute("SELECT variant, COUNT(*) AS n FROM observations WHERE "
                                "experiment_id = ? GROUP BY variant", (experiment_id,)).fetchall()
        counts = {"control": 0, "treatment": 0}
        counts.update({r["variant"]: r["n"] for r in rows})
        return counts

    # ---- routing ----------------------------------------------------------------------------
    def get_policy(self) -> dict | None:
        """The routing policy last set, or None (the gateway's default applies)."""
        with self._read() as conn:
            row = conn.execute("SELECT policy FROM routing WHERE id = 1").fetchone()
        return json.loads(row["policy"]) if row else None

    def set_policy(self, policy: dict) -> None:
        body = json.dumps(policy, sort_keys=True)
        with self._write() as conn:
            conn.execute("INSERT INTO routing (id, policy, updated_at) VALUES (1, ?, ?) "
                         "ON CONFLICT (id) DO UPDATE SET policy = excluded.policy, "
                         "updated_at = excluded.updated_at", (body, time.time()))
            self._bump(conn)

    def changed_marker(self) -> int:
        """A number that changes whenever experiments or the routing policy change."""
        with self._read() as conn:
            return int(conn.execute("SELECT value FROM meta WHERE key = 'changes'").fetchone()["value"])


def _unique_violation(exc: Exception) -> bool:
    if isinstance(exc, sqlite3.IntegrityError):
        return True
    try:
        import psycopg

        return isinstance(exc, psycopg.errors.UniqueViolation)
    except ImportError:
        return False
