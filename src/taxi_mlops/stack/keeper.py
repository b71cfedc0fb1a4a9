"""Self-healing: the keeper restarts a crashed service, with exponential backoff, and gives up
on one that keeps crashing.

``taxi-mlops up`` starts the keeper last, as a service of its own; ``down`` stops it first.
It watches what the supervisor started: a service is *wanted* while its spec file
(``<run>/<name>.spec.json``, the command and environment it was started with, written by
``Supervisor.start``) exists, and ``Supervisor.stop`` removes that file, so a service stopped
on purpose is never brought back. A wanted service whose process is gone has crashed: the
keeper starts it again, from the same spec, through ``Supervisor.start`` (the same health
probe and per-service lock as a human's ``up``), after a delay that doubles with every crash
in ``restart_window_s`` (``restart_backoff_s`` up to ``restart_backoff_max_s``). The
``restart_max_crashes``-th crash in the window leaves the service *failed*: not restarted
again until someone runs ``up``, and ``status`` names its log.

Why not supervisord: its backoff is linear and covers only processes that die while
starting (one that ran past ``startsecs`` and then crashes is restarted at once, forever, so
a crash loop never ends in a failed state); it has no HTTP health probe, no restart count in
its status, and taking it would move every start (the test fixtures start single services
with their own settings) behind ``supervisorctl``. The supervisor we have already knows each
service's probe and order; the keeper adds only the watching.

The decision (``on_crash``) is pure and unit-tested; the state of each service is a small
JSON file next to its pid file, read by ``status``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from taxi_mlops.settings import Settings

NAME = "keeper"
TICK_S = 0.5
HEARTBEAT_STALE_S = 10.0

log = logging.getLogger("taxi_mlops.stack.keeper")


@dataclass(frozen=True)
class Policy:
    backoff_s: float = 1.0
    backoff_max_s: float = 30.0
    max_crashes: int = 5
    window_s: float = 300.0

    @classmethod
    def from_settings(cls, settings: Settings) -> "Policy":
        return cls(settings.restart_backoff_s, settings.restart_backoff_max_s,
                   settings.restart_max_crashes, settings.restart_window_s)


@dataclass
class RestartState:
    """One service's record: ``state`` is ok | backoff | failed."""

    state: str = "ok"
    restarts: int = 0
    crashes: list[float] = field(default_factory=list)  # times of the crashes in the window
    next_attempt: float | None = None
    last_restart: float | None = None
    reason: str = ""
    log: str = ""


def on_crash(st: RestartState, now: float, policy: Policy, why: str, log_path: str) -> RestartState:
    """A crash noticed at ``now``: backoff before the next start, or failed."""
    crashes = [t for t in st.crashes if now - t < policy.window_s] + [now]
    if len(crashes) >= policy.max_crashes:
        return RestartState(state="failed", restarts=st.restarts, crashes=crashes, next_attempt=None,
                            last_restart=st.last_restart, log=log_path,
                            reason=f"{why}; crashed {len(crashes)} times in {policy.window_s:.0f}s, "
                                   f"not restarted again: read {log_path}, fix it, then `taxi-mlops up`")
    delay = min(policy.backoff_s * 2 ** (len(crashes) - 1), policy.backoff_max_s)
    return RestartState(state="backoff", restarts=st.restarts, crashes=crashes, next_attempt=now + delay,
                        last_restart=st.last_restart, reason=f"{why}; restart in {delay:.1f}s", log=log_path)


def on_restarted(st: RestartState, now: float) -> RestartState:
    return RestartState(state="ok", restarts=st.restarts + 1, crashes=st.crashes, next_attempt=None,
                        last_restart=now, reason="", log=st.log)


# ---- the state files -------------------------------------------------------------------------
def state_path(run_dir: Path, name: str) -> Path:
    return run_dir / f"{name}.restarts.json"


def read_state(run_dir: Path, name: str) -> RestartState:
    try:
        return RestartState(**json.loads(state_path(run_dir, name).read_text()))
    except (OSError, ValueError, TypeError):
        return RestartState()


def write_state(run_dir: Path, name: str, st: RestartState) -> None:
    tmp = state_path(run_dir, name).with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(st)))
    tmp.replace(state_path(run_dir, name))  # atomic: status never reads half a file


def heartbeat_path(run_dir: Path) -> Path:
    return run_dir / f"{NAME}.heartbeat"


def alive(settings: Settings) -> bool:
    """The keeper's health: its process lives and wrote its heartbeat (its pid) within
    ``HEARTBEAT_STALE_S``."""
    from taxi_mlops.pids import pid_alive

    path = heartbeat_path(settings.run_dir)
    try:
        fresh = time.time() - path.stat().st_mtime < HEARTBEAT_STALE_S
        return fresh and pid_alive(int(path.read_text().strip()))
    except (OSError, ValueError):
        return False


# ---- the loop ----------------------------------------------------------------------------------
class Keeper:
    def __init__(self, settings: Settings):
        from taxi_mlops.stack.process import Supervisor

        self.settings = settings
        self.sup = Supervisor(settings)
        self.policy = Policy.from_settings(settings)

    def _service(self, name: str):
        """The service as it was started (its spec), with the stack's probe and set-up when
        the stack defines one by that name; else alive is healthy."""
        from taxi_mlops.stack import services
        from taxi_mlops.stack.process import Service

        spec = self.sup.read_spec(name)
        if spec is None:
            return None
        known = {s.name: s for s in services.all_services(self.settings)}.get(name)
        return Service(name=name, command=spec["command"], env=spec.get("env") or {},
                       cwd=Path(spec["cwd"]) if spec.get("cwd") else None, url=spec.get("url", ""),
                       healthy=known.healthy if known else None,
                       prepare=known.prepare if known else None,
                       stop_timeout_s=known.stop_timeout_s if known else 15.0)

    def tick(self, now: float | None = None) -> None:
        for name in self.sup.wanted():
            if name != NAME:
                self._check(name, time.time() if now is None else now)
        _reap()

    def _check(self, name: str, now: float) -> None:
        from taxi_mlops.stack.process import ServiceStartError

        with self.sup.locked(name):
            if not self.sup.is_wanted(name) or self.sup.pid(name) is not None:
                return  # stopped on purpose, or running
            st = read_state(self.settings.run_dir, name)
            if st.state == "failed":
                return
            log_path = str(self.sup.log_path(name))
            if st.next_attempt is None:  # a crash not seen before
                st = on_crash(st, now, self.policy, "process exited", log_path)
                write_state(self.settings.run_dir, name, st)
                log.warning("%s crashed: %s", name, st.reason, extra={"service": name, "state": st.state})
            if st.state == "failed" or now < (st.next_attempt or 0):
                return
            service = self._service(name)
            if service is None:
                return
            try:
                self.sup.start(service, restart=True)
            except ServiceStartError as exc:
                st = on_crash(st, time.time(), self.policy, f"restart failed: {exc.reason}", log_path)
                write_state(self.settings.run_dir, name, st)
                log.warning("%s did not restart: %s", name, st.reason, extra={"service": name, "state": st.state})
                return
            st = on_restarted(st, time.time())
            write_state(self.settings.run_dir, name, st)
            log.info("%s restarted (%d restarts)", name, st.restarts,
                     extra={"service": name, "restarts": st.restarts, "pid": self.sup.pid(name)})

    def run(self, stop: callable = lambda: False) -> None:
        beat = heartbeat_path(self.settings.run_dir)
        while not stop():
            beat.write_text(str(os.getpid()))
            try:
                self.tick()
            except Exception:  # noqa: BLE001 - the keeper must outlive any one bad tick
                log.exception("keeper tick failed")
            time.sleep(TICK_S)


def _reap() -> None:
    """Collect the exit status of children that died (services the keeper restarted), so
    they do not linger as zombies."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def main(argv: list[str] | None = None) -> int:
    from taxi_mlops.observability import logs

    argparse.ArgumentParser(description=__doc__.split("\n")[0]).parse_args(argv)
    settings = Settings()
    logs.setup(NAME, settings.log_level)
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    log.info("keeper watching", extra={"run_dir": str(settings.run_dir), **asdict(Policy.from_settings(settings))})
    Keeper(settings).run(stop=lambda: bool(stopping))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
