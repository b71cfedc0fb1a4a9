"""Status files of the streaming workers: their health probe and the figures `status` shows.

A consumer has no port to probe, so each worker rewrites ``run/<name>.status.json`` every
second from a heartbeat thread; it is healthy while that file is fresh and its pid alive.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Callable

from taxi_mlops.pids import pid_alive
from taxi_mlops.settings import Settings

HEARTBEAT_S = 1.0
STALE_AFTER_S = 15.0
LIVE_PHASES = ("running", "rebuilding")

log = logging.getLogger("taxi_mlops.streaming.status")


def details(settings: Settings, name: str, keys: tuple[str, ...]) -> dict:
    """The fields ``status`` shows for a worker, from its status file."""
    return {k: v for k, v in (read(settings, name) or {}).items() if k in keys}


def path(settings: Settings, name: str) -> Path:
    return settings.run_dir / f"{name}.status.json"


def read(settings: Settings, name: str) -> dict | None:
    try:
        return json.loads(path(settings, name).read_text())
    except (OSError, ValueError):
        return None


def write(target: Path, status: dict) -> None:
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(json.dumps(status, default=str))
    os.replace(tmp, target)


def healthy(settings: Settings, name: str) -> bool:
    status = read(settings, name)
    return bool(status and status.get("phase") in LIVE_PHASES and pid_alive(int(status["pid"]))
                and time.time() - float(status.get("heartbeat", 0)) < STALE_AFTER_S)


def start_heartbeat(target: Path, snapshot: Callable[[], dict], every_s: float = HEARTBEAT_S,
                    log_every_s: float = 30.0, summary: Callable[[dict], str] | None = None):
    """Rewrite ``target`` every ``every_s`` until the returned event is set."""
    stop = threading.Event()
    target.parent.mkdir(parents=True, exist_ok=True)

    def loop() -> None:
        last_log = time.monotonic()
        while True:
            try:
                status = {**snapshot(), "pid": os.getpid(), "heartbeat": time.time()}
                write(target, status)
                if summary and time.monotonic() - last_log > log_every_s:
                    last_log = time.monotonic()
                    log.info(summary(status))
            except Exception as exc:  # best effort: a status write never kills the worker
                log.debug("status not written: %s", exc)
            if stop.wait(every_s):
                return

    thread = threading.Thread(target=loop, name=f"heartbeat-{target.stem}", daemon=True)
    thread.start()
    return stop, thread


def run_worker(target: Path, run: Callable[[], None], snapshot: Callable[[], dict],
               mark_failed: Callable[[], None], what: str,
               summary: Callable[[dict], str] | None = None) -> int:
    """A worker's main loop under its heartbeat; the last status written says it stopped."""
    done, beat = start_heartbeat(target, snapshot, summary=summary)
    try:
        run()
        return 0
    except Exception as exc:
        mark_failed()
        log.exception("%s failed: %s", what, exc)
        return 1
    finally:
        done.set()
        beat.join(timeout=5)
        try:
            write(target, {**snapshot(), "pid": 0, "heartbeat": 0})
        except Exception:  # the process is ending; a stale file reads as unhealthy anyway
            pass


def serve_worker(settings: Settings, name: str, worker, snapshot: Callable[[], dict], what: str,
                 summary: Callable[[dict], str] | None = None) -> int:
    """A streaming worker process's main: SIGTERM/SIGINT call ``worker.stop``, and
    ``worker.run`` goes on under the heartbeat of ``run/<name>.status.json`` (``run_worker``;
    a crash sets ``worker.phase`` to failed)."""
    import signal

    settings.run_dir.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, worker.stop)
    signal.signal(signal.SIGINT, worker.stop)
    return run_worker(path(settings, name), worker.run, snapshot,
                      lambda: setattr(worker, "phase", "failed"), what, summary=summary)
