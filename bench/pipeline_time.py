"""Time the TFX pipeline cold (empty state) and again with nothing changed (cache hits).

Starts its own Redis and MLflow on free ports with a temporary state directory, so it can
run beside a developer's stack.

    .venv/bin/python bench/pipeline_time.py
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from taxi_mlops.features import store
from taxi_mlops.pipeline import launcher
from taxi_mlops.settings import Settings
from taxi_mlops.stack import services
from taxi_mlops.stack.process import Supervisor, free_port


def main() -> None:
    settings = Settings(state_dir=Path(tempfile.mkdtemp(prefix="taxi-bench-")),
                        redis_port=free_port(), mlflow_port=free_port())
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
            print(f"pipeline {label}: {result.seconds:.1f}s  [{steps}]")
    finally:
        sup.stop("mlflow")
        sup.stop("redis")


if __name__ == "__main__":
    main()
