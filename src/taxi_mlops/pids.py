"""Process liveness, shared by the supervisor (``stack``) and the streaming workers' status
files without either importing the other."""

from __future__ import annotations

import os
from pathlib import Path


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie child counts as dead."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return True


def live_pid(pid_file: Path) -> int | None:
    """The pid a supervisor pid file names, if that process runs; None for no file, an
    unreadable one, or a process gone."""
    try:
        pid = int(Path(pid_file).read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if pid_alive(pid) else None
