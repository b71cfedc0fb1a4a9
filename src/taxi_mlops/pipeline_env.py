"""The TFX pipeline's own virtual environment (Python 3.10, TFX 1.16.0, pinned by a lock file).

TFX 1.16 does not install on Python 3.11, so the pipeline runs in a separate interpreter.
The environment is cached under ``~/.cache/taxi-mlops/venvs`` keyed by the lock file's hash,
so every clone of the project shares one 3 GB install and a changed lock builds a new one.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

from taxi_mlops import paths

CACHE_ROOT = Path(os.environ.get("TAXI_CACHE_DIR", Path.home() / ".cache" / "taxi-mlops"))


class PipelineEnvError(RuntimeError):
    pass


def find_python310() -> Path:
    """``python3.10`` on PATH, else the newest 3.10 under pyenv's versions folder."""
    on_path = shutil.which("python3.10")
    if on_path:
        try:
            subprocess.run([on_path, "-c", "import venv"], check=True, capture_output=True, timeout=30)
            return Path(on_path)
        except (subprocess.SubprocessError, OSError):
            pass
    pyenv_root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    candidates = sorted((pyenv_root / "versions").glob("3.10.*/bin/python3.10"), reverse=True)
    if candidates:
        return candidates[0]
    raise PipelineEnvError(
        "Python 3.10 not found: TFX 1.16 needs it. Install it (for example `pyenv install 3.10`) "
        "or put `python3.10` on PATH, then run `make install` again."
    )


def lock_hash() -> str:
    return hashlib.sha256(paths.PIPELINE_LOCK.read_bytes()).hexdigest()[:12]


def venv_dir() -> Path:
    return CACHE_ROOT / "venvs" / f"pipeline-py310-{lock_hash()}"


def find_pipeline_python() -> Path:
    python = venv_dir() / "bin" / "python"
    if not (venv_dir() / ".complete").exists():
        raise PipelineEnvError(
            f"The TFX pipeline environment is not installed ({venv_dir()}). Run `make install`."
        )
    return python


def install(progress=print) -> Path:
    """Create the pipeline venv from the lock file if missing; return its python."""
    target = venv_dir()
    if (target / ".complete").exists():
        return target / "bin" / "python"
    if target.exists():
        shutil.rmtree(target)
    python310 = find_python310()
    progress(f"creating the TFX environment with {python310} in {target}")
    subprocess.run([str(python310), "-m", "venv", str(target)], check=True)
    pip = [str(target / "bin" / "python"), "-m", "pip", "--disable-pip-version-check"]
    subprocess.run([*pip, "install", "-q", "--upgrade", "pip==24.3.1", "wheel"], check=True)
    progress("installing TFX 1.16.0 and its pinned dependencies (about 3 GB; a few minutes cold)")
    # --no-deps: the lock is complete; letting the resolver loose on tfx's tree stalls for minutes.
    subprocess.run([*pip, "install", "--no-deps", "-r", str(paths.PIPELINE_LOCK)], check=True)
    (target / ".complete").write_text(lock_hash())
    progress("TFX environment ready")
    return target / "bin" / "python"


if __name__ == "__main__":
    try:
        print(install())
    except PipelineEnvError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
