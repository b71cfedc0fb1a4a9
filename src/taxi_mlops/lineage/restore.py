"""The ``dvc`` command that brings back the exact data of a DVC version (an md5).

DVC remotes are content-addressed (``<remote>/files/md5/<first 2>/<other 30>``), so
``dvc get-url <that object> <out>`` restores the file with that md5 whatever the git state of
the workspace, without touching it, and for both kinds of repository the platform has: the
project's (``data/chicago_taxi``, remote ``data/dvc-remote``, git) and a retrain's
(``<state_dir>/retrain/data``, remote ``<state_dir>/retrain/dvc-remote``, no git, whose
``data.csv.dvc`` is overwritten by the next version). ``git checkout <rev> data.csv.dvc &&
dvc pull`` would only cover the first, and would rewrite the workspace.
"""

from __future__ import annotations

import configparser
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

MD5 = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True)
class Restore:
    repo: str
    remote: str
    object: str
    command: str
    checked: bool  # True: seen in a local remote; False: a remote URL, taken on trust


def find_repo(path: Path) -> Path | None:
    """The nearest folder at or above ``path`` holding a ``.dvc`` folder."""
    for folder in (path, *path.parents):
        if (folder / ".dvc").is_dir():
            return folder
    return None


def default_remote(repo: Path) -> str | None:
    """The default remote's URL (``core.remote``), relative URLs resolved as DVC does: against
    the ``.dvc`` folder of the config file that sets them."""
    config = configparser.ConfigParser(interpolation=None)
    for name in ("config", "config.local"):
        file = repo / ".dvc" / name
        if file.exists():
            config.read(file)
    # configobj, which DVC writes, quotes section names: ['remote "local"']
    sections = {section.strip("'"): section for section in config.sections()}
    try:
        name = config["core"]["remote"].strip()
        url = config[sections[f'remote "{name}"']]["url"].strip()
    except KeyError:
        return None
    if "://" in url:
        return url
    return str((repo / ".dvc" / url).resolve())


def object_url(remote: str, md5: str) -> str:
    return f"{remote.rstrip('/')}/files/md5/{md5[:2]}/{md5[2:]}"


def dvc_executable() -> str:
    """The platform environment's ``dvc`` (a new user has no other on PATH)."""
    exe = Path(sys.executable).with_name("dvc")
    return str(exe) if exe.exists() else "dvc"


def restore(md5: str, candidates: list[Path], data_path: str = "data.csv") -> Restore | None:
    """The restore command for ``md5`` from the first candidate repository whose default
    remote holds it (a remote URL that is not a local folder is taken on trust); None when
    none does."""
    if not MD5.fullmatch(md5 or ""):
        raise ValueError(f"not a DVC md5: {md5!r}")
    out = f"{Path(data_path).stem}-{md5[:8]}{Path(data_path).suffix or '.csv'}"
    seen = set()
    for candidate in candidates:
        repo = find_repo(candidate)
        if repo is None or repo in seen:
            continue
        seen.add(repo)
        remote = default_remote(repo)
        if remote is None:
            continue
        obj = object_url(remote, md5)
        local = "://" not in remote
        if local and not Path(obj).is_file():
            continue
        command = f"{shlex.quote(dvc_executable())} get-url {shlex.quote(obj)} {shlex.quote(out)}"
        return Restore(repo=str(repo), remote=remote, object=obj, command=command, checked=local)
    return None
