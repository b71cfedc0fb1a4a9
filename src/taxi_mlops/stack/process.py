"""Start, watch and stop the platform's local processes.

Each service is a command, a health probe and a name; its pid file and log live in the
state directory. ``start`` is idempotent (a healthy running service is left alone) and a
service that fails says which, why, and where its log is.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from taxi_mlops.observability import logs
from taxi_mlops.observability.metrics import MULTIPROC_VARS
from taxi_mlops.pids import pid_alive  # noqa: F401 (part of this module's API)
from taxi_mlops.settings import Settings


# Importing feast points prometheus_client at a temporary folder it deletes on exit; a child
# inheriting these would crash on its first metric.
PROCESS_LOCAL_VARS = MULTIPROC_VARS
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
    healthy: Callable[[], bool]
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


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (tests and benchmarks run beside a dev stack),
    chosen below the kernel's ephemeral range: a port from bind(0) is an ephemeral one, which
    any outgoing connection (an MLflow call during training) may take before the service that
    was given it starts ("Address already in use" minutes later)."""
    low, _ = _ephemeral_range()
    floor = 10000
    if low - floor > 1000:
        for _ in range(200):
            port = _port_rng.randrange(floor, low)
            with socket.socket() as s:
                try:
                    s.bind((host, port))
                except OSError:
                    continue
                return port
    with socket.socket() as s:  # no room below the range: fall back to the kernel's choice
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], bool], timeout_s: float, interval_s: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return predicate()


class Supervisor:
    def __init__(self, settings: Settings):
        self.settings = settings
        settings.run_dir.mkdir(parents=True, exist_ok=True)
        settings.logs_dir.mkdir(parents=True, exist_ok=True)

    def pid_path(self, name: str) -> Path:
        return self.settings.run_dir / f"{name}.pid"

    def log_path(self, name: str) -> Path:
        return self.settings.logs_dir / f"{name}.log"

    def pid(self, name: str) -> int | None:
        try:
            pid = int(self.pid_path(name).read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if pid_alive(pid) else None

    def start(self, service: Service) -> str:
        """Start ``service`` unless it is already up; returns 'running' or 'started'."""
        pid = self.pid(service.name)
        if pid and _safe(service.healthy):
            return "running"
        if pid:
            self.stop(service.name)
        if _safe(service.healthy):
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
        ok = wait_for(lambda: proc.poll() is not None or _safe(service.healthy),
                      self.settings.startup_timeout_s)
        if proc.poll() is not None:
            self.pid_path(service.name).unlink(missing_ok=True)
            raise ServiceStartError(service.name, f"exited with code {proc.returncode}",
                                    self.log_path(service.name))
        if not ok or not _safe(service.healthy):
            self.stop(service.name)
            raise ServiceStartError(
                service.name, f"not healthy at {service.url} after {self.settings.startup_timeout_s:.0f}s",
                self.log_path(service.name))
        return "started"

    def stop(self, name: str, timeout_s: float = 15.0) -> bool:
        """SIGTERM the service's process group, SIGKILL after ``timeout_s``; True if it ran."""
        pid = self.pid(name)
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
