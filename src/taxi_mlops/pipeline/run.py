"""Entry point of the TFX environment: ``python -m taxi_mlops.pipeline.run CONFIG.json``.

The platform CLI writes the config and starts this in the Python 3.10 environment; it reads
our progress lines (``PROGRESS {...}``) from stdout and keeps the full log. The config's keys
are ``PipelineConfig``'s fields (``family`` among them: the model family the Trainer builds).
"""

import dataclasses
import json
import logging
import os
import sys

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


class _ProgressHandler(logging.Handler):
    """Turns LocalDagRunner's component log lines into machine-readable progress."""

    def emit(self, record):
        msg = record.getMessage()
        for state, marker in (("running", " is running."), ("finished", " is finished.")):
            if msg.startswith("Component ") and msg.endswith(marker):
                name = msg[len("Component "):-len(marker)]
                print("PROGRESS " + json.dumps({"component": name, "state": state}), flush=True)


def main(argv):
    with open(argv[1]) as f:
        raw = json.load(f)
    from absl import logging as absl_logging
    from tfx.orchestration.local.local_dag_runner import LocalDagRunner

    from taxi_mlops.pipeline import beam_tuning, runners
    from taxi_mlops.pipeline.pipeline import PipelineConfig, create_pipeline

    absl_logging.set_verbosity(absl_logging.INFO)
    # Time-stamped lines: the log is where a slow component's time is read from.
    logging.basicConfig(format="%(asctime)s %(levelname)s:%(name)s:%(message)s", force=True)
    logging.getLogger().addHandler(_ProgressHandler())
    cfg = PipelineConfig(**raw)
    beam_tuning.install()  # before any Beam pipeline is built
    # The Dask runner's local cluster lives as long as the run (runners.started).
    with runners.started(cfg.beam_runner, cfg.beam_workers, cfg.beam_extra_args,
                         cfg.pipeline_root) as beam_args:
        pipeline = create_pipeline(dataclasses.replace(cfg, beam_args=cfg.beam_args or beam_args))
        # Beam steps the runner cannot run, run in-process instead (runners.DASK_UNSUPPORTED).
        fallback = [c.id for c in pipeline.components
                    if runners.component_args(cfg.beam_runner, c.id, cfg.beam_fallback)]
        print("PROGRESS " + json.dumps({"components": [c.id for c in pipeline.components],
                                        "family": cfg.family, "beam_runner": cfg.beam_runner,
                                        "fallback": fallback}), flush=True)
        LocalDagRunner().run(pipeline)
    print("PROGRESS " + json.dumps({"done": True}), flush=True)
    return 0


def _exit_now(code: int) -> None:
    """End the process without the interpreter's teardown. Once LocalDagRunner has returned,
    every output is written and every execution committed to ML Metadata; what is left is
    tearing down TF's and Beam's modules and native state, 2 s of the run on this machine
    (measured: no Python frame ran in it). Logs and stdout are flushed first."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    _exit_now(main(sys.argv))
