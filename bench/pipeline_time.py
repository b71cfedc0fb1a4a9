"""Time the TFX pipeline cold (empty state) and again with nothing changed (a run with the
same inputs and champion is answered from its run record without launching TFX).

Starts its own Redis and MLflow on free ports with a temporary state directory, so it can
run beside a developer's stack.

    .venv/bin/python bench/pipeline_time.py

Figures depend on the machine's load (printed after each run): compare two launchers in
the same session, e.g. an older tree with ``PYTHONPATH=<tree>/src`` (the tree needs the
data CSV) right before or after this one.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from taxi_mlops import security
from taxi_mlops.features import store
from taxi_mlops.pipeline import launcher
from taxi_mlops.settings import Settings
from taxi_mlops.stack import services
from taxi_mlops.stack.process import Supervisor, free_port


def main() -> None:
    settings = Settings(state_dir=Path(tempfile.mkdtemp(prefix="taxi-bench-")),
                        redis_port=free_port(), mlflow_port=free_port())
    security.use_mlflow_credentials(settings)  # the registry calls in this process: MLflow's admin
    sup = Supervisor(settings)
    sup.start(services.redis_service(settings))
    sup.start(services.mlflow_service(settings))
    try:
        store.apply(settings)
        for label in ("cold", "unchanged (cached)"):
            timings: dict[str, float] = {}
            marks: dict[str, float] = {}

            def on_event(e, marks=marks, timings=timings):
                if "component" in e:
                    if e["state"] == "running":
                        marks[e["component"]] = time.monotonic()
                    else:
                        timings[e["component"]] = time.monotonic() - marks.pop(e["component"], time.monotonic())

            result = launcher.run_training(settings, progress=on_event)
            steps = ", ".join(f"{k} {v:.1f}s" for k, v in timings.items())
            data = result.component_seconds.get("data", 0.0)
            # TFX's start (imports, compiling the DAG) and end, the registry and MLMD look-ups.
            rest = result.seconds - data - sum(timings.values())
            print(f"pipeline {label}: {result.seconds:.1f}s  (data {data:.1f}s, components "
                  f"{sum(timings.values()):.1f}s, launch and the rest {rest:.1f}s)  [{steps}]")
            reused = getattr(result, "reused", None)  # older launchers have no such field
            if reused:
                print(f"  not launched: {reused['reason']} (no component ran)")
            print(f"  load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    finally:
        sup.stop("mlflow")
        sup.stop("redis")


if __name__ == "__main__":
    main()
