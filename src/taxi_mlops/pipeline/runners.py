"""Which Beam runner the pipeline's Beam steps use (``Settings.beam_runner``).

Imported by both environments (the launcher builds the config, the TFX run builds the
args), so no third-party import at module level. The runners:

- ``direct-in-process`` (default): FnApiRunner in the pipeline process, as before;
- ``direct-multi-process``: DirectRunner with ``beam_workers`` SDK worker processes;
- ``dask``: Beam's DaskRunner on a ``dask.distributed`` LocalCluster the run starts on
  127.0.0.1 (``beam_workers`` worker processes) and closes afterwards. Beam 2.74's
  DaskRunner runs none of this pipeline's four Beam steps correctly (``DASK_UNSUPPORTED``:
  what each did). They run in-process and the run says so (``fallback``); a step moves to
  the cluster by leaving that map once Beam fixes it (``beam_fallback=False`` in the
  config, as ``bench/pipeline_runners.py --dask-unsupported`` does, re-measures them);
- ``portable``: whatever ``beam_extra_args`` names (``--runner=PortableRunner
  --job_endpoint=...``, ``--runner=FlinkRunner --flink_master=...``), passed through.

The local runners add ``--sdk_container_image``: without a dependency option TFX builds an
sdist of itself for remote workers before every Beam step (~4 s each); local workers share
this interpreter and never read the image name. A portable runner's workers are remote, so
its args are left as given.
"""

from __future__ import annotations

import contextlib
import shlex
from pathlib import Path
from typing import Iterator, Sequence

IN_PROCESS = "direct-in-process"
MULTI_PROCESS = "direct-multi-process"
DASK = "dask"
PORTABLE = "portable"
RUNNERS = (IN_PROCESS, MULTI_PROCESS, DASK, PORTABLE)

NO_SDIST = "--sdk_container_image=in-process"
FN_API_RUNNER = "apache_beam.runners.portability.fn_api_runner.fn_runner.FnApiRunner"
# Beam's DaskRunner computing every sink, not only the last (pipeline/dask_runner.py).
DASK_RUNNER = "taxi_mlops.pipeline.dask_runner.AllSinksDaskRunner"
# Beam steps Beam 2.74's DaskRunner cannot run, with the error it gave on this pipeline
# (bench/pipeline_runners.py, README): on the dask runner they run in-process instead,
# by a component-level --runner (TFX puts component args after the pipeline's).
DASK_UNSUPPORTED = {
    "DvcCsvExampleGen": "no error, empty splits: each data_tfrecord-00000-of-00001.gz is 20 bytes "
                        "(0 records); the records went to a beam-temp folder the finalize step "
                        "never read (the write's setup ran three times, one temp folder each)",
    "StatisticsGen": "AttributeError: 'NoneType' object has no attribute '__dask_keys__' "
                     "(the DaskRunner's Flatten translation gets an input it did not translate)",
    "Transform": "AttributeError: 'NoneType' object has no attribute '__dask_keys__' (as StatisticsGen)",
    "Evaluator": "AttributeError: 'NoneType' object has no attribute '__dask_keys__' (as StatisticsGen)",
}
# Config keys that say how the Beam steps execute, not what they compute: run_records keeps
# them out of a run's fingerprint (a runner change trains the same model).
CONFIG_KEYS = ("beam_runner", "beam_workers", "beam_extra_args", "beam_args", "beam_fallback")


class RunnerError(ValueError):
    """A runner setting that cannot work, with the fix in the message."""


def split_extra(extra: str | Sequence[str]) -> list[str]:
    """``beam_extra_args`` as a list (the setting is one shell-quoted string)."""
    return shlex.split(extra) if isinstance(extra, str) else list(extra)


def check(runner: str, workers: int, extra: str | Sequence[str]) -> list[str]:
    """Validate the settings before anything starts; return the extra args as a list."""
    if runner not in RUNNERS:
        raise RunnerError(f"unknown beam runner {runner!r}: one of {', '.join(RUNNERS)}")
    if workers < 1:
        raise RunnerError(f"beam_workers must be at least 1, not {workers}")
    args = split_extra(extra)
    named = [a for a in args if a.startswith("--runner")]
    if runner == PORTABLE and not named:
        raise RunnerError(
            "beam_runner=portable needs the runner in beam_extra_args, e.g. TAXI_BEAM_EXTRA_ARGS="
            "'--runner=PortableRunner --job_endpoint=localhost:8099 --environment_type=LOOPBACK'")
    if runner != PORTABLE and named:
        raise RunnerError(f"beam_extra_args names a runner ({named[0]}): set beam_runner=portable "
                          f"to pass a runner through, or drop it to use {runner}")
    return args


def beam_args(runner: str, workers: int, extra: str | Sequence[str] = "",
              dask_scheduler_file: str | None = None) -> list[str]:
    """The pipeline's ``beam_pipeline_args`` for one runner.

    Dask is addressed through a scheduler file at a fixed path, not the scheduler's random
    port: TFX's cache key includes each Beam step's args, so stable args keep it hitting.
    """
    args = check(runner, workers, extra)
    if runner == IN_PROCESS:
        return [f"--runner={FN_API_RUNNER}", NO_SDIST, *args]
    if runner == MULTI_PROCESS:
        return ["--runner=DirectRunner", "--direct_running_mode=multi_processing",
                f"--direct_num_workers={workers}", NO_SDIST, *args]
    if runner == DASK:
        if not dask_scheduler_file:
            raise RunnerError("the dask runner needs the local cluster's scheduler file")
        return [f"--runner={DASK_RUNNER}", f"--dask_scheduler_file={dask_scheduler_file}",
                NO_SDIST, *args]
    return args


def component_args(runner: str, component_id: str, fallback: bool = True) -> list[str]:
    """Beam args one step adds to the pipeline's: in-process for what Dask cannot run."""
    if fallback and runner == DASK and component_id in DASK_UNSUPPORTED:
        return [f"--runner={FN_API_RUNNER}"]
    return []


def config(settings) -> dict:
    """The runner part of the pipeline config (``PipelineConfig`` fields) from Settings."""
    extra = check(settings.beam_runner, settings.beam_workers, settings.beam_extra_args)
    return {"beam_runner": settings.beam_runner, "beam_workers": settings.beam_workers,
            "beam_extra_args": extra}


def scheduler_file(pipeline_root: str) -> Path:
    return Path(pipeline_root) / "dask" / "scheduler.json"


@contextlib.contextmanager
def dask_cluster(workers: int, scheduler_path: Path) -> Iterator[str]:
    """A LocalCluster of ``workers`` single-threaded processes on 127.0.0.1 for one run
    (dashboard off), described in ``scheduler_path``; closed, file removed, when the run ends."""
    from dask.distributed import Client, LocalCluster

    scheduler_path.parent.mkdir(parents=True, exist_ok=True)
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                           host="127.0.0.1", dashboard_address=None)
    try:
        with Client(cluster, timeout=60) as client:
            client.write_scheduler_file(str(scheduler_path))
        yield cluster.scheduler_address
    finally:
        _close_clients()
        cluster.close(timeout=60)
        scheduler_path.unlink(missing_ok=True)


def _close_clients() -> None:
    """Beam's DaskRunner opens a Client per Beam step and never closes it; closed here, before
    the cluster, they go quietly instead of retrying a closed scheduler at exit."""
    from distributed import client as dask_client

    for client in list(getattr(dask_client, "_global_clients", {}).values()):
        with contextlib.suppress(Exception):
            client.close(timeout=10)


@contextlib.contextmanager
def started(runner: str, workers: int, extra: Sequence[str], pipeline_root: str) -> Iterator[list[str]]:
    """The Beam args for this run, with whatever the runner needs running meanwhile."""
    if runner == DASK:
        path = scheduler_file(pipeline_root)
        with dask_cluster(workers, path):
            yield beam_args(runner, workers, extra, dask_scheduler_file=str(path))
    else:
        yield beam_args(runner, workers, extra)
