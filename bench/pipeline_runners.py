"""Time the whole TFX pipeline on each Beam runner, in the same session.

    .venv/bin/python bench/pipeline_runners.py [--runners direct-in-process,direct-multi-process,dask]
                                               [--workers 2] [--dask-unsupported]

Starts its own Redis and MLflow on free ports. Each runner gets its own state directory
(pipeline root, ML Metadata) and its own registered model name, so every run is cold (no
TFX cache, no run record, no champion to compare with) and none touches another's aliases.
Prints per-component and total seconds per runner, and the load average after each run:
the in-process run is the baseline measured in the same session. On ``dask`` the Beam steps
Beam's DaskRunner cannot run go in-process (listed); ``--dask-unsupported`` adds a run with
every step on Dask, which fails at the first such step. A failed run is reported with the
component that failed and the error, and the bench goes on.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import tempfile
import time
from pathlib import Path

from taxi_mlops.features import store
from taxi_mlops.pipeline import launcher, runners
from taxi_mlops.settings import Settings
from taxi_mlops.stack import services
from taxi_mlops.stack.process import Supervisor, free_port

DEFAULT_RUNNERS = (runners.IN_PROCESS, runners.MULTI_PROCESS, runners.DASK)


def run_once(base: Settings, root: Path, runner: str, workers: int, fallback: bool = True) -> dict:
    """One cold run on ``runner``; component seconds from the progress events. Without
    ``fallback`` every Beam step runs on the runner, even those known not to work there."""
    label = runner if fallback else f"{runner}-every-step"
    settings = base.model_copy(update={
        "state_dir": root / label, "beam_runner": runner, "beam_workers": workers,
        "model_name": f"bench-{label}"})
    store.apply(settings)
    marks: dict[str, float] = {}
    seconds: dict[str, float] = {}
    running: list[str] = []
    out = {"runner": label, "components": seconds, "error": None, "fallback": []}

    def on_event(e: dict) -> None:
        if "fallback" in e:
            out["fallback"] = e["fallback"]
        if "component" in e and e.get("state") == "running":
            marks[e["component"]] = time.monotonic()
            running.append(e["component"])
        elif "component" in e and e.get("state") == "finished":
            seconds[e["component"]] = time.monotonic() - marks.pop(e["component"])
            running.remove(e["component"])

    started = time.monotonic()
    try:
        result = launcher.run_training(settings, progress=on_event,
                                       **({} if fallback else {"beam_fallback": False}))
        out.update(total=result.seconds, data=result.component_seconds.get("data", 0.0),
                   version=result.model_version)
    except launcher.PipelineFailed as exc:
        out.update(total=time.monotonic() - started, failed_in=list(running),
                   error=_error_line(str(exc)))
    out["load"] = os.getloadavg()
    return out


def _error_line(text: str) -> str:
    """The last exception line of a failed run's log tail."""
    lines = [l.strip() for l in text.splitlines() if re.match(r"^\s*[\w.]+(Error|Exception)\b", l)]
    return lines[-1] if lines else text.splitlines()[0]


def report(r: dict) -> None:
    steps = ", ".join(f"{k} {v:.1f}s" for k, v in r["components"].items())
    status = f"FAILED in {', '.join(r['failed_in']) or '?'}: {r['error']}" if r["error"] \
        else f"model version {r.get('version')}"
    if r["fallback"]:
        status += f"; in-process instead: {', '.join(r['fallback'])}"
    print(f"{r['runner']}: total {r['total']:.1f}s, components {sum(r['components'].values()):.1f}s"
          f" ({status})\n  [{steps}]\n  load average {' '.join(f'{x:.1f}' for x in r['load'])}",
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runners", default=",".join(DEFAULT_RUNNERS))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--dask-unsupported", action="store_true",
                        help="also run every Beam step on Dask (no fallback) to re-measure what fails")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="taxi-bench-runners-"))
    base = Settings(state_dir=root / "stack", redis_port=free_port(), mlflow_port=free_port(),
                    pushgateway_port=free_port(), redis_password=secrets.token_hex(16),
                    mlflow_admin_password=secrets.token_hex(16))  # every runner's MLflow login
    sup = Supervisor(base)
    sup.start(services.redis_service(base))
    sup.start(services.mlflow_service(base))
    # Every runner's settings talk to this MLflow (their own state dirs start none).
    base = base.model_copy(update={"mlflow_external_uri": base.mlflow_tracking_uri})
    print(f"cpus {os.cpu_count()}, load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}",
          flush=True)
    results = []
    try:
        for runner in args.runners.split(","):
            results.append(run_once(base, root, runner, args.workers))
            report(results[-1])
        if args.dask_unsupported:
            results.append(run_once(base, root, runners.DASK, args.workers, fallback=False))
            report(results[-1])
    finally:
        sup.stop("mlflow")
        sup.stop("redis")
    baseline = next((r for r in results if r["runner"] == runners.IN_PROCESS and not r["error"]), None)
    if baseline:
        for r in results:
            if r is not baseline and not r["error"]:
                print(f"{r['runner']} / in-process: total x{r['total'] / baseline['total']:.2f}")


if __name__ == "__main__":
    main()
