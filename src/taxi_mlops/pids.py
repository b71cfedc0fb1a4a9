"""Process liveness, shared by the supervisor (``stack``) and the streaming workers' status
files without either importing the other."""

from __future__ import annotations

import os
from pathlib import Path


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie child counts as dead, but only once all its threads
    are gone: a killed process's main thread can turn zombie while its other threads are
    still exiting and holding its files (a listening socket then still takes connections,
    and resets them when the last thread goes)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    fields = stat_fields(f"/proc/{pid}/stat")
    if fields is None:
        return True
    return fields[0] != "Z" or _threads_running(pid)


def stat_fields(stat_path: str) -> list[str] | None:
    """The fields of a /proc/.../stat after the command name (the state first, as ``proc(5)``'s
    field 3); None when unreadable. Split after the last ``)``: a command name may hold one."""
    try:
        with open(stat_path) as f:
            return f.read().rsplit(") ", 1)[1].split()
    except (OSError, IndexError):
        return None


def _threads_running(pid: int) -> bool:
    """Whether a thread of ``pid`` other than a zombie or dead one is left."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return False
    states = (stat_fields(f"/proc/{pid}/task/{tid}/stat") for tid in tids)
    return any(fields is not None and fields[0] not in ("Z", "X") for fields in states)


def live_pid(pid_file: Path) -> int | None:
    """The pid a supervisor pid file names, if that process runs; None for no file, an
    unreadable one, or a process gone."""
    try:
        pid = int(Path(pid_file).read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if pid_alive(pid) else None


def parent_of(pid: int) -> int | None:
    """``pid``'s parent, from /proc; None once it is gone."""
    fields = stat_fields(f"/proc/{pid}/stat")
    try:
        return int(fields[1]) if fields else None
    except (ValueError, IndexError):
        return None


def mark_serving(folder: Path) -> Path:
    """``folder/<parent pid>/<pid>``: this worker process accepts connections now. A master
    with several workers sharing one socket is ready when all of them are (see
    ``serving_children``); until then the first one up takes every connection."""
    marker = Path(folder) / str(os.getppid()) / str(os.getpid())
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()
    return marker


def forget_serving(folder: Path) -> None:
    """A master's exit: the folder of its workers' markers goes (so restarts leave none)."""
    import shutil

    shutil.rmtree(Path(folder) / str(os.getpid()), ignore_errors=True)


def serving_children(folder: Path, parent: int) -> int:
    """How many live children of ``parent`` marked themselves serving. A marker left by a dead
    worker, or by an unrelated process that reused its pid, does not count."""
    try:
        names = os.listdir(Path(folder) / str(parent))
    except OSError:
        return 0
    return sum(1 for n in names if n.isdigit() and pid_alive(int(n)) and parent_of(int(n)) == parent)
