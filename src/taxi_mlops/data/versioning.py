"""The data version: DVC's content hash of the tracked CSV, checked against the file itself."""

from __future__ import annotations

import hashlib
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from taxi_mlops import paths


class DataVersionError(RuntimeError):
    pass


@dataclass(frozen=True)
class DataVersion:
    md5: str
    path: str
    size: int
    git_commit: str

    def as_dict(self) -> dict:
        return asdict(self)


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=paths.PROJECT_ROOT,
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def current(csv_path: Path) -> DataVersion:
    """The version recorded in ``<csv>.dvc``; refuses a CSV that differs from it."""
    dvc_file = csv_path.with_name(csv_path.name + ".dvc")
    if not csv_path.exists():
        raise DataVersionError(f"{csv_path} is missing: run `dvc pull` (or `dvc checkout`).")
    if not dvc_file.exists():
        raise DataVersionError(f"{dvc_file} is missing: track the data with `dvc add {csv_path}`.")
    out = yaml.safe_load(dvc_file.read_text())["outs"][0]
    actual = _md5(csv_path)
    if actual != out["md5"]:
        raise DataVersionError(
            f"{csv_path} (md5 {actual}) differs from its DVC record ({out['md5']}): "
            f"`dvc add {csv_path}` to version the change, or `dvc checkout` to restore it."
        )
    rel = csv_path.resolve().relative_to(paths.PROJECT_ROOT) if csv_path.resolve().is_relative_to(
        paths.PROJECT_ROOT) else csv_path
    return DataVersion(md5=out["md5"], path=str(rel), size=int(out.get("size", 0)),
                       git_commit=_git_commit())
