"""Memory of every running component of a stack: RSS and PSS of each service's process group.

Each service runs in its own session (the supervisor starts it with ``start_new_session``),
so a component's processes are the ones in its process group (uvicorn workers, the JVM, a
Streamlit server's children). RSS counts shared pages (TensorFlow's libraries, loaded by the
model servers and the gateway alike) once per process; PSS splits them among the processes
that share them, so the PSS column adds up to what the stack really uses.

    TAXI_STATE_DIR=.state .venv/bin/python bench/memory.py      # after `make demo`
"""

from __future__ import annotations

import os
from pathlib import Path

from taxi_mlops.settings import get_settings
from taxi_mlops.stack import services
from taxi_mlops.stack.process import Supervisor


def _kib(path: Path, key: str) -> int:
    """A ``key:  N kB`` line of a /proc file, in KiB (0 when the process is gone)."""
    try:
        for line in path.read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def group_members(pgid: int) -> list[int]:
    """Every process whose process group is ``pgid``."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state ppid pgrp ...
        if int(fields[2]) == pgid:
            out.append(int(entry.name))
    return out


def usage(pgid: int) -> tuple[int, int, int]:
    """(processes, RSS KiB, PSS KiB) of a process group."""
    members = group_members(pgid)
    rss = sum(_kib(Path(f"/proc/{p}/status"), "VmRSS") for p in members)
    pss = sum(_kib(Path(f"/proc/{p}/smaps_rollup"), "Pss") for p in members)
    return len(members), rss, pss


def main() -> None:
    settings = get_settings()
    sup = Supervisor(settings)
    print(f"stack: {settings.state_dir}  ({os.cpu_count()} cores visible)")
    print(f"{'component':22s} {'procs':>5s} {'RSS MiB':>9s} {'PSS MiB':>9s}")
    total_rss = total_pss = 0
    for service in services.all_services(settings):
        pid = sup.pid(service.name)
        if pid is None:
            print(f"{service.name:22s} {'-':>5s} {'not running':>19s}")
            continue
        n, rss, pss = usage(pid)
        total_rss, total_pss = total_rss + rss, total_pss + pss
        print(f"{service.name:22s} {n:5d} {rss / 1024:9.0f} {pss / 1024:9.0f}")
    print(f"{'total':22s} {'':5s} {total_rss / 1024:9.0f} {total_pss / 1024:9.0f}")


if __name__ == "__main__":
    main()
