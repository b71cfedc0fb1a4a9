"""A new data version from the stream: labelled trips since the last version, appended to a
copy of the training CSV and versioned with DVC.

The repository's CSV is never touched: the copy lives in ``<state_dir>/retrain/data`` (its
own DVC repo, ``dvc init --no-scm``, with a local remote ``<state_dir>/retrain/dvc-remote``),
so a retrain is reproducible (``dvc pull`` there) without a git commit. "Since the last
version" is tracked by the end offsets of ``taxi.labels`` each version consumed
(``stream_offsets.json``); trips are read from the beginning every time because a label's trip
may predate the last version. Kafka is read with ``assign`` (no group membership, nothing
committed) and every call has a timeout; the whole read is bounded by a deadline.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterable

from taxi_mlops.data import versioning
from taxi_mlops.settings import Settings

log = logging.getLogger(__name__)

CSV_COLUMNS = [
    "pickup_community_area", "fare", "trip_start_month", "trip_start_hour", "trip_start_day",
    "trip_start_timestamp", "pickup_latitude", "pickup_longitude", "dropoff_latitude",
    "dropoff_longitude", "trip_miles", "pickup_census_tract", "dropoff_census_tract",
    "payment_type", "company", "trip_seconds", "dropoff_community_area", "tips",
]
DVC_TIMEOUT_S = 120.0
KAFKA_CALL_TIMEOUT_S = 10.0


class RetrainDataError(RuntimeError):
    pass


@dataclass
class NewVersion:
    csv: str
    md5: str
    rows_appended: int
    rows_total: int
    base_csv: str
    few_rows: bool
    note: str = ""
    offsets: dict = field(default_factory=dict)
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


def data_dir(settings: Settings) -> Path:
    return settings.state_dir / "retrain" / "data"


def remote_dir(settings: Settings) -> Path:
    return settings.state_dir / "retrain" / "dvc-remote"


# ---- pure conversion -------------------------------------------------------------------
def _area(value) -> str:
    return "" if value is None or int(value) < 0 else str(int(value))


def _coord(value) -> str:
    # Events carry 0.0 for "unknown" (the CSV's empty cell); Chicago is never at 0.
    return "" if value in (None, 0, 0.0) else repr(float(value))


def _num(value) -> str:
    return repr(float(value)) if value is not None else ""


def to_csv_row(trip: dict, label: dict) -> dict:
    """One TripEventV1 + its LabelEventV1 (as dicts) -> a row with the CSV's columns.
    The timestamp is the trip's event time; census tracts are not on the stream (empty);
    fare and tips come from the label (the trip's final amounts)."""
    event_time = trip["event_time"]
    if isinstance(event_time, str):
        event_time = datetime.fromisoformat(event_time.replace("Z", "+00:00"))
    fare = label.get("fare", trip.get("fare"))
    return {
        "pickup_community_area": _area(trip.get("pickup_community_area")),
        "fare": _num(fare),
        "trip_start_month": str(int(trip["trip_start_month"])),
        "trip_start_hour": str(int(trip["trip_start_hour"])),
        "trip_start_day": str(int(trip["trip_start_day"])),
        "trip_start_timestamp": str(int(event_time.timestamp())),
        "pickup_latitude": _coord(trip.get("pickup_latitude")),
        "pickup_longitude": _coord(trip.get("pickup_longitude")),
        "dropoff_latitude": _coord(trip.get("dropoff_latitude")),
        "dropoff_longitude": _coord(trip.get("dropoff_longitude")),
        "trip_miles": _num(trip.get("trip_miles", 0.0)),
        "pickup_census_tract": "",
        "dropoff_census_tract": "",
        "payment_type": trip.get("payment_type") or "",
        "company": "" if trip.get("company") in (None, "UNKNOWN") else trip["company"],
        "trip_seconds": str(int(float(trip.get("trip_seconds") or 0))),
        "dropoff_community_area": _area(trip.get("dropoff_community_area")),
        "tips": _num(label["tips"]),
    }


def join_rows(trips: dict[str, dict], labels: Iterable[dict]) -> tuple[list[dict], int]:
    """Labels joined to their trips by ``trip_id`` (the first label of a trip wins), in
    event-time order -> (CSV rows, labels without a trip)."""
    rows, seen, orphans = [], set(), 0
    for label in labels:
        tid = label["trip_id"]
        if tid in seen:
            continue
        trip = trips.get(tid)
        if trip is None:
            orphans += 1
            continue
        seen.add(tid)
        rows.append(to_csv_row(trip, label))
    rows.sort(key=lambda r: int(r["trip_start_timestamp"]))
    return rows, orphans


# ---- Kafka -----------------------------------------------------------------------------
def read_topic(settings: Settings, topic: str, start: dict[int, int] | None, deadline: float) -> tuple[list[dict], dict[int, int]]:
    """Every decodable event of ``topic`` from ``start`` offsets (default: the beginning) up to
    the high watermarks seen at the start -> (events as dicts, end offsets per partition)."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

    from taxi_mlops.streaming import clients, events

    conf = clients.consumer_config(settings, "taxi-mlops-retrain",
                                   f"taxi-mlops-retrain-{uuid.uuid4().hex[:8]}",
                                   **{"enable.partition.eof": True})
    consumer = Consumer(conf)
    try:
        try:
            meta = consumer.list_topics(topic, timeout=KAFKA_CALL_TIMEOUT_S)
        except KafkaException as exc:
            raise RetrainDataError(f"cannot read {topic} from {settings.kafka_bootstrap_servers}: {exc}; "
                                   "is Kafka up (`taxi-mlops status`)?") from exc
        if topic not in meta.topics or meta.topics[topic].error is not None:
            raise RetrainDataError(f"topic {topic} does not exist: `taxi-mlops up` creates it")
        partitions = sorted(meta.topics[topic].partitions)
        high, assign, ends = {}, [], {}
        for p in partitions:
            low, hi = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=KAFKA_CALL_TIMEOUT_S)
            high[p] = hi
            begin = max((start or {}).get(p, low), low)
            ends[p] = begin
            if begin < hi:
                assign.append(TopicPartition(topic, p, begin if begin > 0 else OFFSET_BEGINNING))
        out: list[dict] = []
        pending = {tp.partition for tp in assign}
        if assign:
            consumer.assign(assign)
        while pending and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=1000, timeout=min(1.0, max(0.05, deadline - time.monotonic()))):
                p = msg.partition()
                if msg.error():
                    if msg.error().code() == KafkaError._PARTITION_EOF:  # caught up
                        pending.discard(p)
                    continue
                ends[p] = max(ends.get(p, 0), msg.offset() + 1)
                if msg.offset() + 1 >= high[p]:
                    pending.discard(p)
                try:
                    out.append(events.decode(topic, msg.value()).model_dump())
                except events.EventDecodeError:
                    continue  # the stream processor dead-letters these; not training data
        if pending:
            log.warning("retrain data: deadline reached before the end of %s (partitions %s)", topic, sorted(pending))
        return out, ends
    finally:
        consumer.close()


def read_labelled(settings: Settings, since: dict[int, int] | None, deadline_s: float = 60.0) -> tuple[list[dict], dict[int, int], int]:
    """CSV rows of the labels after ``since`` (taxi.labels offsets) whose trip is on taxi.trips.raw
    -> (rows, new label end offsets, labels without a trip)."""
    from taxi_mlops.streaming import topics

    deadline = time.monotonic() + deadline_s
    labels, ends = read_topic(settings, topics.LABELS, since, deadline)
    wanted = {label["trip_id"] for label in labels}
    trips: dict[str, dict] = {}
    if wanted:
        for trip in read_topic(settings, topics.TRIPS, None, deadline)[0]:
            if trip["trip_id"] in wanted:
                trips[trip["trip_id"]] = trip
    rows, orphans = join_rows(trips, labels)
    return rows, ends, orphans


# ---- DVC -------------------------------------------------------------------------------
def dvc_executable() -> Path:
    exe = Path(sys.executable).with_name("dvc")
    if not exe.exists():
        raise RetrainDataError(f"{exe} is missing: install the platform requirements "
                               "(`.venv/bin/pip install -r requirements/platform.lock`)")
    return exe


def dvc(args: list[str], cwd: Path, timeout_s: float = DVC_TIMEOUT_S) -> str:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    try:
        out = subprocess.run([str(dvc_executable()), *args], cwd=cwd, capture_output=True, text=True,
                             timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired as exc:
        raise RetrainDataError(f"`dvc {' '.join(args)}` timed out after {timeout_s:.0f}s in {cwd}") from exc
    if out.returncode != 0:
        raise RetrainDataError(f"`dvc {' '.join(args)}` failed in {cwd} (exit {out.returncode}): "
                               f"{(out.stderr or out.stdout).strip()[-800:]}")
    return out.stdout


def ensure_repo(settings: Settings) -> Path:
    """``<state_dir>/retrain/data`` as a DVC repo (no git) with the local default remote."""
    root = data_dir(settings)
    root.mkdir(parents=True, exist_ok=True)
    if not (root / ".dvc").is_dir():
        dvc(["init", "--no-scm", "-q"], root)
        dvc(["config", "core.analytics", "false"], root)
    remote = remote_dir(settings)
    remote.mkdir(parents=True, exist_ok=True)
    dvc(["remote", "add", "-d", "-f", "local", str(remote)], root)
    return root


# ---- the version -----------------------------------------------------------------------
def _offsets_file(settings: Settings) -> Path:
    return data_dir(settings) / "stream_offsets.json"


def base_csv(settings: Settings) -> Path:
    """The previous retrain version when it is intact (versions accumulate), else the
    configured training CSV."""
    own = data_dir(settings) / "data.csv"
    try:
        versioning.current(own)
        return own
    except versioning.DataVersionError:
        return settings.data_csv


def new_version(settings: Settings, progress: Callable[[str], None] = lambda _m: None,
                min_rows: int = 50, deadline_s: float = 60.0) -> NewVersion:
    started = time.monotonic()
    base = base_csv(settings)
    versioning.current(base)  # refuse a base that differs from its DVC record
    with base.open(newline="") as f:
        header = next(csv.reader(f))
    if header != CSV_COLUMNS:
        raise RetrainDataError(f"{base} has columns {header}; the retrain conversion writes {CSV_COLUMNS}: "
                               "update retrain/data.py::CSV_COLUMNS with the new schema")
    offsets_file = _offsets_file(settings)
    since = {int(k): v for k, v in json.loads(offsets_file.read_text()).items()} if offsets_file.exists() else None
    progress(f"reading labelled trips from Kafka ({'since the last version' if since else 'from the beginning'})")
    rows, ends, orphans = read_labelled(settings, since, deadline_s)
    root = ensure_repo(settings)
    target = root / "data.csv"
    tmp = root / f".data.csv.{os.getpid()}.tmp"
    shutil.copyfile(base, tmp)
    with tmp.open("rb") as f:
        f.seek(-1, os.SEEK_END)
        needs_newline = f.read(1) != b"\n"
    with tmp.open("a", newline="") as f:
        if needs_newline:
            f.write("\n")
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS, lineterminator="\n")
        writer.writerows(rows)
    os.replace(tmp, target)
    progress(f"appended {len(rows)} labelled trips ({orphans} labels without their trip) to a copy of {base}")
    dvc(["add", "-q", "data.csv"], root)
    dvc(["push", "-q"], root)
    offsets_file.write_text(json.dumps({str(k): v for k, v in ends.items()}))
    version = versioning.current(target)
    with target.open() as f:
        total = sum(1 for _ in f) - 1
    few = len(rows) < min_rows
    note = (f"only {len(rows)} new labelled trips (< {min_rows}): versioned anyway, the run is about freshness"
            if few else "")
    if note:
        progress(note)
    return NewVersion(csv=str(target), md5=version.md5, rows_appended=len(rows), rows_total=total,
                      base_csv=str(base), few_rows=few, note=note, offsets=ends,
                      seconds=round(time.monotonic() - started, 2))
