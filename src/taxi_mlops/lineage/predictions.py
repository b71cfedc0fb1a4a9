"""The prediction store: every logged prediction and every label, queryable by request id.

SQLite in WAL mode (``settings.predictions_db``), chosen over Parquet parts and DuckDB:

- the query that matters is a point lookup by request id; a B-tree primary key keeps it
  O(log n) (tens of microseconds at 1,000,000 rows, ``bench/lineage_bench.py``), where Parquet
  parts need an index of our own and DuckDB is built for scans;
- one writer process (the consumer, ``lineage/consumer.py``) and many readers (every gateway
  worker) at once: WAL lets readers go on while the writer commits; DuckDB lets only one
  process open a file for writing, so gateway workers could not read while it ingests;
- no server to run, like the rollout store and MLMD.

Labels have their own table, keyed by trip id, and are joined when read: a label that arrives
before its prediction (or a prediction replayed after its label) needs no fix-up, and every
write is an idempotent upsert, so a redelivered message changes nothing. A prediction is
right when ``(p >= 0.5) == big_tipper``, the label join's rule.

Retention (``prune``): predictions older than ``settings.prediction_retention_days`` (by the
time they were made) are deleted, and so are labels stored that long ago that no kept
prediction references. A label is aged by when it was stored, not by its trip's event time:
replayed trips carry event times from years ago. SQLite reuses the freed pages, so the file
stops growing instead of shrinking.

Across pods (no shared disk) ``TAXI_PREDICTIONS_DB_URI=postgresql://...`` keeps the same
tables in PostgreSQL, in a schema of their own (``taxi_lineage``): the SQL is the same but for
the types, and the B-tree lookup by request id stays a primary-key read.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable

THRESHOLD = 0.5
MAX_LIST = 1000
# The gateway accepts client ids of <= 64 of [A-Za-z0-9._-] (gateway/middleware.py) and logs
# derived ids "<id>-shadow" and "<id>-<index>" (batch): nothing longer can ever be stored.
REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,72}")

PG_SCHEMA = "taxi_lineage"
SCHEMA = """
CREATE TABLE IF NOT EXISTS predictions (
    request_id TEXT PRIMARY KEY,
    trip_id TEXT,
    model_name TEXT NOT NULL,
    model_version TEXT NOT NULL,
    model_alias TEXT,
    tip_probability REAL NOT NULL,
    latency_ms REAL,
    ts REAL NOT NULL,
    timestamp TEXT NOT NULL,
    event_time TEXT,
    variant TEXT,
    experiment_id TEXT,
    policy TEXT,
    shadow INTEGER NOT NULL DEFAULT 0,
    fallback INTEGER NOT NULL DEFAULT 0,
    schema_version INTEGER NOT NULL,
    features TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS predictions_ts ON predictions (ts);
CREATE INDEX IF NOT EXISTS predictions_version_ts ON predictions (model_version, ts);
CREATE INDEX IF NOT EXISTS predictions_trip ON predictions (trip_id);
CREATE TABLE IF NOT EXISTS labels (
    trip_id TEXT PRIMARY KEY,
    big_tipper INTEGER NOT NULL,
    tips REAL,
    fare REAL,
    event_time TEXT,
    stored_at REAL
) WITHOUT ROWID;
"""

COLUMNS = ("request_id", "trip_id", "model_name", "model_version", "model_alias", "tip_probability",
           "latency_ms", "ts", "timestamp", "event_time", "variant", "experiment_id", "policy",
           "shadow", "fallback", "schema_version", "features")
# A redelivery or a replay changes nothing; a client that reused its X-Request-ID gets the
# newest prediction under that id, whatever order the messages arrive in.
UPSERT_PREDICTION = (
    f"INSERT INTO predictions ({', '.join(COLUMNS)}) VALUES ({', '.join('?' for _ in COLUMNS)}) "
    f"ON CONFLICT (request_id) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in COLUMNS if c != "request_id")
    + " WHERE excluded.ts >= predictions.ts")
UPSERT_LABEL = ("INSERT INTO labels (trip_id, big_tipper, tips, fare, event_time, stored_at) "
                "VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (trip_id) DO UPDATE SET big_tipper = excluded.big_tipper, tips = excluded.tips, "
                "fare = excluded.fare, event_time = excluded.event_time, stored_at = excluded.stored_at")
# Deleted a chunk at a time, so the write lock is never held for long while gateway workers read.
PRUNE_PREDICTIONS = ("DELETE FROM predictions WHERE request_id IN "
                     "(SELECT request_id FROM predictions WHERE ts < ? LIMIT ?)")
PRUNE_LABELS = ("DELETE FROM labels WHERE trip_id IN (SELECT l.trip_id FROM labels l WHERE l.stored_at < ? "
                "AND NOT EXISTS (SELECT 1 FROM predictions p WHERE p.trip_id = l.trip_id) LIMIT ?)")
# PostgreSQL: no WITHOUT ROWID, and REAL is 4 bytes there (a Unix time would lose its seconds).
PG_TABLES = SCHEMA.replace(") WITHOUT ROWID;", ");").replace(" REAL", " DOUBLE PRECISION")
SELECT = ("SELECT p.*, l.big_tipper AS label_big_tipper, l.tips AS label_tips, "
          "l.event_time AS label_event_time FROM predictions p LEFT JOIN labels l ON l.trip_id = p.trip_id")


class InvalidQuery(ValueError):
    """A list filter that cannot be applied; ``field`` names it (a 422 at the gateway)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


def valid_request_id(request_id: str) -> bool:
    return bool(REQUEST_ID.fullmatch(request_id or ""))


def _iso(value) -> str | None:
    if value is None:
        return None
    return value.isoformat() if isinstance(value, datetime) else str(value)


def _epoch(value) -> float:
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.timestamp()


def prediction_row(p: dict) -> tuple:
    """A ``PredictionLogV1/V2`` (as a dict, ``model_dump()``) as a row of ``predictions``."""
    return (p["request_id"], p.get("trip_id"), p["model_name"], str(p["model_version"]),
            p.get("model_alias"), float(p["tip_probability"]), p.get("latency_ms"),
            _epoch(p["timestamp"]), _iso(p["timestamp"]), _iso(p.get("event_time")), p.get("variant"),
            p.get("experiment_id"), p.get("policy"), int(bool(p.get("shadow"))),
            int(bool(p.get("fallback"))), int(p.get("schema_version", 1)),
            json.dumps(p.get("features") or {}, separators=(",", ":")))


def label_row(lab: dict, stored_at: float | None = None) -> tuple:
    """A ``LabelEventV1`` (as a dict) as a row of ``labels``, stamped with when it was stored."""
    return (lab["trip_id"], int(bool(lab["big_tipper"])), lab.get("tips"), lab.get("fare"),
            _iso(lab.get("event_time")), time.time() if stored_at is None else stored_at)


def correct(probability: float, big_tipper) -> bool | None:
    """The label join's rule; None while the label has not arrived."""
    return None if big_tipper is None else (probability >= THRESHOLD) == bool(big_tipper)


@dataclass(frozen=True)
class Stored:
    """One stored prediction, as logged, with its label once it arrived."""

    prediction: dict
    label: dict | None

    @property
    def request_id(self) -> str:
        return self.prediction["request_id"]

    def summary(self) -> dict:
        """One line of ``GET /predictions``."""
        p = self.prediction
        return {"request_id": p["request_id"], "trip_id": p["trip_id"], "model_version": p["model_version"],
                "variant": p["variant"], "tip_probability": p["tip_probability"],
                "timestamp": p["timestamp"], "shadow": p["shadow"],
                "label_big_tipper": self.label["big_tipper"] if self.label else None,
                "correct": self.label["correct"] if self.label else None}


def _stored(row) -> Stored:
    prediction = {k: row[k] for k in COLUMNS if k not in ("ts", "features")}
    prediction["shadow"], prediction["fallback"] = bool(row["shadow"]), bool(row["fallback"])
    prediction["features"] = json.loads(row["features"])
    label = None
    if row["label_big_tipper"] is not None:
        big = bool(row["label_big_tipper"])
        label = {"big_tipper": big, "tips": row["label_tips"], "event_time": row["label_event_time"],
                 "correct": correct(row["tip_probability"], big)}
    return Stored(prediction=prediction, label=label)


class StoreUnavailable(RuntimeError):
    """The store's database does not answer (PostgreSQL down or unreachable)."""


def is_postgres(location: Path | str) -> bool:
    return str(location).startswith(("postgresql://", "postgres://"))


class _PgConnection:
    """psycopg (3) behind the sqlite3 calls the store makes: ``?`` placeholders, rows by column
    name, ``with conn:`` as one transaction. A connection lost (a restarted server) is made
    again on the next call."""

    def __init__(self, uri: str, timeout_s: float):
        self.uri, self.timeout_s = uri, timeout_s
        self.row_factory = None  # assigned like sqlite3's; rows are dicts already
        self._conn = None
        self._tx = None

    def _connection(self):
        import psycopg
        from psycopg.rows import dict_row

        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self.uri, autocommit=True, row_factory=dict_row,
                                         connect_timeout=max(1, int(self.timeout_s)),
                                         options=f"-c search_path={PG_SCHEMA}")
        return self._conn

    def _run(self, call):
        import psycopg

        try:
            return call(self._connection())
        except psycopg.OperationalError as exc:
            if self._conn is not None and self._tx is None:
                self._conn.close()  # broken: the next call connects again
            raise StoreUnavailable(f"the prediction store's PostgreSQL does not answer: "
                                   f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc

    def execute(self, sql: str, args: tuple = ()):
        return self._run(lambda c: c.execute(sql.replace("?", "%s"), args))

    def executemany(self, sql: str, rows: list[tuple]) -> None:
        def many(c):
            with c.cursor() as cur:
                cur.executemany(sql.replace("?", "%s"), rows)
        self._run(many)

    def __enter__(self):
        self._tx = self._run(lambda c: c.transaction())
        self._tx.__enter__()
        return self

    def __exit__(self, *exc):
        tx, self._tx = self._tx, None
        return tx.__exit__(*exc)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()


class PredictionStore:
    """One connection per instance; the consumer writes, gateway workers read (threads of one
    worker share the instance under a lock: SQLite connections are not for concurrent use).
    ``location``: the SQLite file, or a ``postgresql://`` URI."""

    def __init__(self, location: Path | str, readonly: bool = False, timeout_s: float = 5.0):
        self._lock = threading.Lock()
        if is_postgres(location):
            self.path = None
            self.conn = _PgConnection(str(location), timeout_s)
            if not readonly:
                with self.conn:
                    self.conn.execute("SELECT pg_advisory_xact_lock(7462)")  # one creator at a time
                    self.conn.execute(f"CREATE SCHEMA IF NOT EXISTS {PG_SCHEMA}")
                    for statement in filter(str.strip, PG_TABLES.split(";")):
                        self.conn.execute(statement)
            return
        self.path = Path(location)
        if readonly:
            if not self.path.exists():
                raise FileNotFoundError(f"no prediction store at {self.path}: the prediction-store "
                                        "worker creates it (`taxi-mlops up`)")
            self.conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=timeout_s,
                                        check_same_thread=False)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.conn = sqlite3.connect(self.path, timeout=timeout_s, check_same_thread=False)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")  # durable at checkpoints; WAL stays consistent
            self.conn.executescript(SCHEMA)
            self._migrate()
        self.conn.row_factory = sqlite3.Row

    def _migrate(self) -> None:
        """Stores made before retention have no ``labels.stored_at``: add it, aged from now."""
        columns = {row[1] for row in self.conn.execute("PRAGMA table_info(labels)")}
        if "stored_at" not in columns:
            with self.conn:
                self.conn.execute("ALTER TABLE labels ADD COLUMN stored_at REAL")
                self.conn.execute("UPDATE labels SET stored_at = ?", (time.time(),))

    def close(self) -> None:
        self.conn.close()

    # ---- writes (the consumer) ---------------------------------------------------------------
    def write(self, predictions: Iterable[dict] = (), labels: Iterable[dict] = (),
              stored_at: float | None = None) -> tuple[int, int]:
        """Upsert a batch in one transaction -> (predictions, labels) written."""
        prows = [prediction_row(p) for p in predictions]
        lrows = [label_row(lab, stored_at) for lab in labels]
        with self._lock, self.conn:
            if prows:
                self.conn.executemany(UPSERT_PREDICTION, prows)
            if lrows:
                self.conn.executemany(UPSERT_LABEL, lrows)
        return len(prows), len(lrows)

    def prune(self, before: float, chunk: int = 5000) -> tuple[int, int]:
        """Delete predictions made before ``before`` (epoch seconds), then the labels stored
        before it that no remaining prediction references -> (predictions, labels) deleted."""
        deleted = [0, 0]
        for i, sql in enumerate((PRUNE_PREDICTIONS, PRUNE_LABELS)):
            while True:
                with self._lock, self.conn:
                    n = self.conn.execute(sql, (before, chunk)).rowcount
                deleted[i] += n
                if n < chunk:
                    break
        return deleted[0], deleted[1]

    # ---- reads (the gateway) -----------------------------------------------------------------
    def get(self, request_id: str) -> Stored | None:
        with self._lock:
            row = self.conn.execute(f"{SELECT} WHERE p.request_id = ?", (request_id,)).fetchone()
        return _stored(row) if row is not None else None

    def list(self, model_version: str | None = None, since: datetime | str | float | None = None,
             limit: int = 50) -> list[Stored]:
        """The newest predictions first, optionally of one version and after ``since``."""
        if not 1 <= int(limit) <= MAX_LIST:
            raise InvalidQuery("limit", f"must be between 1 and {MAX_LIST}, got {limit}")
        where, args = [], []
        if model_version:
            where.append("p.model_version = ?")
            args.append(str(model_version))
        if since is not None:
            try:
                args.append(_epoch(since))
            except (ValueError, TypeError, AttributeError) as exc:
                raise InvalidQuery("since", f"not an ISO 8601 time or epoch seconds: {since!r}") from exc
            where.append("p.ts >= ?")
        sql = f"{SELECT}{' WHERE ' + ' AND '.join(where) if where else ''} ORDER BY p.ts DESC LIMIT ?"
        with self._lock:
            rows = self.conn.execute(sql, (*args, int(limit))).fetchall()
        return [_stored(r) for r in rows]

    def counts(self) -> dict:
        with self._lock:
            predictions = self.conn.execute("SELECT COUNT(*) AS n FROM predictions").fetchone()["n"]
            labels = self.conn.execute("SELECT COUNT(*) AS n FROM labels").fetchone()["n"]
        return {"predictions": predictions, "labels": labels}
