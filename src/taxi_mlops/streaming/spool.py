"""A write-ahead spool for records handed to Kafka but not acknowledged yet.

The gateway answers a prediction before Kafka has its log (a request never waits on the
broker), so a kill -9 used to lose what sat in librdkafka's memory. Each record is now
appended to a file of its process first (one ``write``: once it returns, the record outlives
the process, though not a power cut: there is no fsync per request), and its sequence
number to an acknowledgement file once Kafka has it. A segment whose records are all
acknowledged is deleted. The next gateway process to start claims the spools of dead
processes (an atomic rename, so two starting instances never both take one) and produces
what was never acknowledged: at least once, duplicates only for records acknowledged in the
instant before the kill (consumers key predictions by request id).

Layout: ``<root>/<pid>/<first seq>.log`` (``<seq> <value>`` lines) and ``<first seq>.acks``.
"""

from __future__ import annotations

import bisect
import os
import shutil
import threading
from pathlib import Path
from typing import Iterator

from taxi_mlops.pids import pid_alive

CLAIMED = ".recovering-"


class Spool:
    """One process's spool. ``append`` before producing, ``acknowledged`` from the delivery
    callback. Thread-safe; every method may raise ``OSError`` (a full disk), which the
    caller counts rather than fail a request on."""

    def __init__(self, root: Path, segment_records: int = 5000):
        self.dir = Path(root) / str(os.getpid())
        self.dir.mkdir(parents=True, exist_ok=True)
        self.segment_records = segment_records
        self._lock = threading.Lock()
        self._seq = 0
        self._firsts: list[int] = []           # every open segment's first sequence number
        self._pending: dict[int, int] = {}     # first seq -> records not yet acknowledged
        self._fds: dict[int, tuple[int, int]] = {}  # first seq -> (log fd, acks fd)
        self._current: int | None = None

    def append(self, value: bytes) -> int:
        with self._lock:
            seq = self._seq
            if self._current is None or seq - self._current >= self.segment_records:
                self._rotate(seq)
            os.write(self._fds[self._current][0], b"%d %s\n" % (seq, value))
            self._seq += 1
            self._pending[self._current] += 1
            return seq

    def acknowledged(self, seq: int) -> None:
        with self._lock:
            at = bisect.bisect_right(self._firsts, seq) - 1
            if at < 0 or self._firsts[at] not in self._fds:
                return  # closed already
            first = self._firsts[at]
            os.write(self._fds[first][1], b"%d\n" % seq)
            self._pending[first] -= 1
            if self._pending[first] == 0 and first != self._current:
                self._drop(first)

    def pending(self) -> int:
        with self._lock:
            return sum(self._pending.values())

    def close(self) -> int:
        """Close the files; the folder goes if nothing in it awaits Kafka. Returns what is
        left for the next process to send."""
        with self._lock:
            left = sum(self._pending.values())
            for first in list(self._fds):
                for fd in self._fds.pop(first):
                    os.close(fd)
            if left == 0:
                shutil.rmtree(self.dir, ignore_errors=True)
            return left

    def _rotate(self, first: int) -> None:
        previous = self._current
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
        self._fds[first] = (os.open(self.dir / f"{first}.log", flags, 0o600),
                            os.open(self.dir / f"{first}.acks", flags, 0o600))
        self._firsts.append(first)
        self._pending[first] = 0
        self._current = first
        if previous is not None and self._pending[previous] == 0:
            self._drop(previous)

    def _drop(self, first: int) -> None:
        for fd in self._fds.pop(first):
            os.close(fd)
        for suffix in (".log", ".acks"):
            (self.dir / f"{first}{suffix}").unlink(missing_ok=True)
        self._firsts.remove(first)
        del self._pending[first]


def unacknowledged(folder: Path) -> list[bytes]:
    """The values in ``folder`` never acknowledged, in sequence order. A torn last line (the
    disk filled mid-write) is skipped."""
    acked: set[int] = set()
    for path in folder.glob("*.acks"):
        for line in path.read_bytes().splitlines():
            if line.strip().isdigit():
                acked.add(int(line))
    records: list[tuple[int, bytes]] = []
    for path in folder.glob("*.log"):
        for line in path.read_bytes().splitlines():
            seq, _, value = line.partition(b" ")
            if seq.isdigit() and value and int(seq) not in acked:
                records.append((int(seq), value))
    return [value for _, value in sorted(records)]


def _owner(name: str) -> int | None:
    """The pid that owns a spool folder (its creator, or the process recovering it)."""
    pid = name.rsplit(CLAIMED, 1)[-1]
    return int(pid) if pid.isdigit() else None


def claim_orphans(root: Path) -> Iterator[Path]:
    """Spool folders of dead processes, each renamed to ``<pid>.recovering-<our pid>`` so no
    other process takes it too; a recovery that died is claimed again."""
    root = Path(root)
    if not root.is_dir():
        return
    mine = str(os.getpid())
    for folder in sorted(root.iterdir()):
        owner = _owner(folder.name)
        if not folder.is_dir() or owner is None or owner == os.getpid() or pid_alive(owner):
            continue
        target = root / f"{folder.name.split(CLAIMED)[0]}{CLAIMED}{mine}"
        try:
            folder.rename(target)
        except OSError:  # another process claimed it first
            continue
        yield target
