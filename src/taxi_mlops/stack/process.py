"""Start, watch and stop the platform's local processes.

Each service is a command, a health probe and a name; its pid file and log live in the
state directory. ``start`` is idempotent (a healthy running service is left alone) and a
service that fails says which, why, and where its log is.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import random
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from taxi_mlops.observability import logs
from taxi_mlops.observability.metrics import MULTIPROC_VARS
from taxi_mlops.pids import live_pid, pid_alive
from taxi_mlops.settings import Settings


# Importing feast points prometheus_client at a temporary folder it deletes on exit; a child
# inheriting these would crash on its first metric. The MLflow login is not inherited either:
# each service states its own (``security.mlflow_env``), the read-only user where it only reads.
PROCESS_LOCAL_VARS = (*MULTIPROC_VARS, "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
PROBE_TIMEOUT_S = 2.0


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment minus process-local variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in PROCESS_LOCAL_VARS}
    env.update(extra or {})
    return env


class ServiceStartError(RuntimeError):
    def __init__(self, name: str, reason: str, log_path: Path):
        tail = ""
        if log_path.exists():
            tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-15:])
        super().__init__(f"{name} did not start: {reason}. Log: {log_path}\n{tail}")
        self.name, self.reason, self.log_path = name, reason, log_path


@dataclass
class Service:
    name: str
    command: list[str]
    healthy: Callable[[], bool] | None  # None: the process being alive is all we can check
    url: str
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    prepare: Callable[[], None] | None = None  # runs before the first start (dirs, formats)
    stop_timeout_s: float = 15.0
    details: Callable[[], dict] | None = None  # extra fields for `status`


def http_ok(url: str, timeout_s: float = PROBE_TIMEOUT_S) -> bool:
    """A health probe: 200 within ``timeout_s``."""
    import httpx

    try:
        return httpx.get(url, timeout=timeout_s).status_code == 200
    except httpx.HTTPError:
        return False


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


_port_rng = random.Random()
# Ports handed out by this process: a test session picks its stack's ports first and starts
# some services minutes later, so a port free "right now" may already be promised.
_handed_out: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (tests and benchmarks run beside a dev stack),
    chosen below the kernel's ephemeral range: a port from bind(0) is an ephemeral one, which
    any outgoing connection (an MLflow call during training) may take before the service that
    was given it starts ("Address already in use" minutes later). Never the same port twice
    in one process: one promised to a service not started yet is not free."""
    return free_port_block((0,), host)


def free_port_block(offsets: Sequence[int], host: str = "127.0.0.1") -> int:
    """A base port N with N + o free for every offset o, as ``free_port`` chooses one:
    model-server replicas on N, N+1; a Kafka node's three ports side by side; Redis Cluster
    nodes on N.. and their bus ports on N+10000... Every port of the block counts as handed
    out."""
    low, _ = _ephemeral_range()
    floor, span = 10000, max(offsets)
    if low - span - floor > 1000:
        for _ in range(500):
            base = _port_rng.randrange(floor, low - span)
            ports = [base + o for o in offsets]
            if _handed_out.intersection(ports) or not _all_bind(host, ports):
                continue
            _handed_out.update(ports)
            return base
    if span == 0:  # no room below the range: fall back to the kernel's choice
        with socket.socket() as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free block of ports at offsets {list(offsets)} below {low} "
                       "(the kernel's ephemeral range, /proc/sys/net/ipv4/ip_local_port_range)")


def _all_bind(host: str, ports: Sequence[int]) -> bool:
    with contextlib.ExitStack() as stack:
        try:
            for port in ports:
                stack.enter_context(socket.socket()).bind((host, port))
        except OSError:
            return False
    return True


def wait_for(predicate: Callable[[], bool], timeout_s: float, interval_s: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return predicate()


class Supervisor:
    """Starts and stops services; a started service's spec file says it is wanted, which is
    what the keeper (``stack/keeper.py``) watches to restart it after a crash. Start and stop
    of one service hold its lock file, so a keeper's restart and a person's ``down`` or
    ``up`` never interleave."""

    def __init__(self, settings: Settings):
        self.settings = settings
        settings.run_dir.mkdir(parents=True, exist_ok=True)
        settings.logs_dir.mkdir(parents=True, exist_ok=True)
        self._held: dict[str, int] = {}

    @contextlib.contextmanager
    def locked(self, name: str):
        """The service's lock across processes (flock), re-entrant within this supervisor."""
        if self._held.get(name):
            self._held[name] += 1
            try:
                yield
            finally:
                self._held[name] -= 1
            return
        with open(self.settings.run_dir / f"{name}.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            self._held[name] = 1
            try:
                yield
            finally:
                self._held[name] = 0
                fcntl.flock(handle, fcntl.LOCK_UN)

    def spec_path(self, name: str) -> Path:
        return self.settings.run_dir / f"{name}.spec.json"

    def read_spec(self, name: str) -> dict | None:
        try:
            return json.loads(self.spec_path(name).read_text())
        except (OSError, ValueError):
            return None

    def is_wanted(self, name: str) -> bool:
        return self.spec_path(name).exists()

    def wanted(self) -> list[str]:
        """Services started and not stopped on purpose (crashed ones included)."""
        return sorted(p.name[:-len(".spec.json")] for p in self.settings.run_dir.glob("*.spec.json"))

    def _write_spec(self, service: Service) -> None:
        """What the keeper needs to start it again. Mode 0600: the environment may carry
        secrets (the admin token)."""
        path = self.spec_path(service.name)
        fd = os.open(path.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"command": service.command, "env": service.env, "url": service.url,
                       "cwd": str(service.cwd) if service.cwd else None}, f)
        path.with_suffix(".tmp").replace(path)

    def pid_path(self, name: str) -> Path:
        return self.settings.run_dir / f"{name}.pid"

    def log_path(self, name: str) -> Path:
        return self.settings.logs_dir / f"{name}.log"

    def pid(self, name: str) -> int | None:
        return live_pid(self.pid_path(name))

    def start(self, service: Service, restart: bool = False) -> str:
        """Start ``service`` unless it is already up; returns 'running' or 'started'.

        A start by a person (``restart`` False) also clears the keeper's record of the service
        (its restart count and a failed state); the keeper's own restarts keep it."""
        with self.locked(service.name):
            state = self._start(service, restart)
        if not restart:
            (self.settings.run_dir / f"{service.name}.restarts.json").unlink(missing_ok=True)
        return state

    def _start(self, service: Service, restart: bool) -> str:
        healthy = service.healthy or (lambda: True)
        pid = self.pid(service.name)
        if pid and _safe(healthy):
            self._write_spec(service)
            return "running"
        if pid:
            self.stop(service.name)
        if service.healthy is not None and _safe(service.healthy):
            raise ServiceStartError(service.name, f"something else already answers at {service.url}"
                                    " (stop it or choose another port in the settings)",
                                    self.log_path(service.name))
        if service.prepare:
            service.prepare()
        log = self.log_path(service.name).open("ab")
        log.write((logs.event(service.name, "starting", command=" ".join(service.command)) + "\n").encode())
        log.flush()
        try:
            proc = subprocess.Popen(
                service.command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=child_env(service.env), cwd=service.cwd, start_new_session=True,
            )
        except OSError as exc:
            raise ServiceStartError(service.name, f"cannot run {service.command[0]}: {exc}",
                                    self.log_path(service.name)) from exc
        finally:
            log.close()
        self.pid_path(service.name).write_text(str(proc.pid))
        self._write_spec(service)
        ok = wait_for(lambda: proc.poll() is not None or _safe(healthy),
                      self.settings.startup_timeout_s)
        if proc.poll() is not None:
            self.pid_path(service.name).unlink(missing_ok=True)
            if not restart:  # a person sees the error; only the keeper's restarts retry
                self.spec_path(service.name).unlink(missing_ok=True)
            raise ServiceStartError(service.name, f"exited with code {proc.returncode}",
                                    self.log_path(service.name))
        if not ok or not _safe(healthy):
            self._stop(service.name, 15.0)
            if restart:
                self._write_spec(service)  # still wanted: the keeper tries again after a backoff
            raise ServiceStartError(
                service.name, f"not healthy at {service.url} after {self.settings.startup_timeout_s:.0f}s",
                self.log_path(service.name))
        return "started"

    def stop(self, name: str, timeout_s: float = 15.0) -> bool:
        """SIGTERM the service's process group, SIGKILL after ``timeout_s``; True if it ran.
        Stopped on purpose: no longer wanted, so the keeper leaves it down."""
        with self.locked(name):
            return self._stop(name, timeout_s)

    def _stop(self, name: str, timeout_s: float) -> bool:
        pid = self.pid(name)
        self.spec_path(name).unlink(missing_ok=True)
        (self.settings.run_dir / f"{name}.restarts.json").unlink(missing_ok=True)
        self.pid_path(name).unlink(missing_ok=True)
        if not pid:
            return False
        for sig, wait in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                return True
            if wait_for(lambda: not pid_alive(pid), wait, 0.1):
                return True
        return True

    def kill(self, name: str) -> None:
        """SIGKILL at once (tests use it to simulate a crash)."""
        pid = self.pid(name)
        if pid:
            os.killpg(pid, signal.SIGKILL)
            wait_for(lambda: not pid_alive(pid), 5.0, 0.05)


def _safe(probe: Callable[[], bool]) -> bool:
    try:
        return bool(probe())
    except Exception:  # a probe that raises means "not healthy", never a crash
        return False
