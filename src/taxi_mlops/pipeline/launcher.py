"""Platform side of training: prepare the input, run the TFX environment, report progress.

Runs in the platform environment (Python 3.11). It checks the DVC data version, joins the
trips with their point-in-time features into the pipeline's input folder, finds the current
champion to evaluate against, and starts ``taxi_mlops.pipeline.run`` in the TFX environment.
When the run ends (either way) it pushes the run's metrics to the Pushgateway
(``pipeline/metrics.py``); a Pushgateway that is down costs a warning, never the run.

A run whose inputs and champion are those of an earlier run is not launched at all
(``run_records.py``): TFX alone takes ~20 s to start and its Evaluator cannot cache a
comparison whose baseline moved (after the first run the champion is the model just
trained). The result then names the version it already is (``TrainingResult.reused``).
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from taxi_mlops import paths, security
from taxi_mlops.data import versioning
from taxi_mlops.features import schema, tables
from taxi_mlops.pipeline import metrics, run_records, runners, slicing
from taxi_mlops.registry import models
from taxi_mlops.settings import Settings
from taxi_mlops.stack.process import child_env


log = logging.getLogger(__name__)

# Model families the pipeline trains (keys of pipeline.FAMILIES, which lives in the TFX
# environment); checked here so a typo fails before the data step, not inside TFX.
FAMILIES = ("dnn", "linear")
DEFAULT_FAMILY = "dnn"


class PipelineFailed(RuntimeError):
    pass


@dataclass
class TrainingResult:
    data_version: str
    seconds: float
    family: str = DEFAULT_FAMILY
    components: list[str] = field(default_factory=list)
    log_path: str = ""
    component_seconds: dict[str, float] = field(default_factory=dict)
    eval_metrics: dict[str, float] = field(default_factory=dict)  # binary_accuracy, auc, ...
    model_version: int = 0  # the registered version of the model this run stands for (0: none)
    # Set when nothing changed and the pipeline was not launched: the earlier verdict reused
    # (version, run_id, blessed, model_uri, fingerprint, reason); empty when the pipeline ran.
    reused: dict = field(default_factory=dict)


def prepare_input(settings: Settings) -> tuple[Path, versioning.DataVersion]:
    """Write ``input/<md5>/data.csv`` once per data version (unchanged files keep TFX's cache)."""
    version = versioning.current(settings.data_csv)
    input_dir = settings.pipeline_root / "input" / version.md5
    marker = input_dir / "data_version.json"
    columns = input_columns()
    if not marker.exists() or _csv_header(input_dir / "data.csv") != columns:
        input_dir.mkdir(parents=True, exist_ok=True)
        frame = with_slice_columns(tables.training_frame(tables.load_trips(settings.data_csv)))
        frame[columns].to_csv(input_dir / "data.csv", index=False)
        marker.write_text(json.dumps(version.as_dict(), indent=2))
    return input_dir, version


def input_columns() -> list[str]:
    """The pipeline CSV's columns: model inputs, label, then the Evaluator's slice-only
    columns (strings; no model input reads them, see ``pipeline/slicing.py``)."""
    return schema.MODEL_INPUTS + [schema.LABEL] + slicing.SLICE_COLUMNS


def with_slice_columns(frame):
    """``company_known`` (the company had trips before this one's day, point in time) and
    ``hour_bucket`` (night / morning / afternoon / evening) for the Evaluator to slice on."""
    frame = frame.copy()
    frame[slicing.COMPANY_KNOWN] = frame["company_trip_count"].map(slicing.company_known)
    frame[slicing.HOUR_BUCKET] = frame["trip_start_hour"].map(slicing.hour_bucket)
    return frame


def _csv_header(path: Path) -> list[str]:
    """An input folder written before a column change is rewritten, not reused."""
    try:
        with path.open() as f:
            return f.readline().rstrip("\n").split(",")
    except OSError:
        return []


def pipeline_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in child_env().items() if not k.startswith("PYTHON")}
    env.update({
        "PYTHONPATH": str(paths.PROJECT_ROOT / "src"),
        "TF_USE_LEGACY_KERAS": "1",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        **settings.as_env(),  # the FeastPusher's platform-side call rebuilds the same Settings
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "60",
        **security.mlflow_env(settings),  # the MlflowLogger registers the model: the admin
    })
    return env


def run_training(settings: Settings, progress: Callable[[dict], None] = lambda e: None,
                 family: str = DEFAULT_FAMILY, **overrides) -> TrainingResult:
    """Run the pipeline; push its metrics to the Pushgateway whether it succeeds or fails.

    ``family`` picks the model the Trainer builds (``dnn`` or ``linear``); everything up to
    Transform is shared, so a second family on unchanged data reuses it from TFX's cache.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; one of {list(FAMILIES)}")
    overrides["family"] = family
    started = time.monotonic()
    timer = metrics.RunTimer()

    def observe(event: dict) -> None:
        timer.observe(event)
        progress(event)

    try:
        result = _run(settings, observe, started, **overrides)
    except BaseException:
        registry = metrics.build_registry(
            success=False, run_seconds=time.monotonic() - started, finished_at=time.time(),
            component_seconds=timer.until_now())
        metrics.push(settings.pushgateway_url, registry, replace=False)
        raise
    result.component_seconds = dict(timer.durations)
    # A reused run ran no component: it keeps the last launched run's component durations on
    # display (POST of families with samples only) and updates the run's own figures.
    registry = metrics.build_registry(
        success=True, run_seconds=result.seconds, finished_at=time.time(),
        component_seconds={} if result.reused else result.component_seconds,
        eval_metrics=result.eval_metrics)
    metrics.push(settings.pushgateway_url, registry, replace=not result.reused)
    return result


def run_eval_metrics(settings: Settings, run_id: str) -> dict[str, float]:
    """Evaluation metrics (``eval_*``) that MlflowLogger logged to the MLflow run ``run_id``.
    Empty, with a warning, when they cannot be read."""
    try:
        if not run_id:
            raise LookupError("the run logged no MLflow run")
        run = models.client(settings.mlflow_tracking_uri).get_run(run_id)
    except Exception as exc:  # noqa: BLE001 - metrics are a report, not part of training
        log.warning("no evaluation metrics for the Pushgateway: %s", exc)
        return {}
    return metrics.eval_metrics(run.data.metrics)


@dataclass
class Outcome:
    """What the pipeline run that just ended produced, read from ML Metadata."""

    model_uri: str
    run_id: str
    version: int
    blessed: bool


def run_outcome(settings: Settings) -> Outcome:
    """The newest MlflowLogger execution (TFX records cached executions too, so it is this
    run's): its input model and blessing, and the MLflow run / version it output. Not the
    newest MlflowModelVersion artifact: a cached run makes none."""
    from taxi_mlops.lineage import mlmd

    store = mlmd.open_store(settings.mlmd_path)
    [kind] = [t.name for t in store.get_execution_types() if t.name.endswith(".MlflowLogger")]
    execution = max(store.get_executions_by_type(kind), key=lambda e: e.id)
    ids = {e.path.steps[0].key: e.artifact_id
           for e in store.get_events_by_execution_ids([execution.id]) if e.path.steps}
    model, blessing, registered = store.get_artifacts_by_id(
        [ids["model"], ids["blessing"], ids["registered_model"]])
    blessed = blessing.custom_properties["blessed"].int_value \
        if "blessed" in blessing.custom_properties else 0
    return Outcome(model_uri=model.uri, run_id=registered.properties["run_id"].string_value,
                   version=registered.properties["version"].int_value, blessed=bool(blessed))


def registered_uris(settings: Settings) -> dict[int, str]:
    """Every registered version of the model -> its ``tfx_model_uri`` tag, as MLflow has it now."""
    versions = models.client(settings.mlflow_tracking_uri).search_model_versions(
        f"name='{settings.model_name}'")
    return {int(v.version): (v.tags or {}).get("tfx_model_uri", "") for v in versions}


def find_reuse(settings: Settings, fingerprint: str, champion: models.ModelRef | None,
               baseline_version: str | None) -> run_records.Reuse | None:
    """The earlier verdict this run would repeat, if any (``run_records.decide``)."""
    record = run_records.load(settings.pipeline_root, fingerprint)
    if record is None:
        return None
    return run_records.decide(record, champion.version if champion else None,
                              champion.tfx_model_uri if champion else None,
                              baseline_version, registered_uris(settings))


def _reused(reuse: run_records.Reuse, result: TrainingResult, log_path: Path,
            progress: Callable[[dict], None], with_baseline: bool) -> TrainingResult:
    """Report the earlier verdict as this run's: no component ran, nothing was registered.
    ``components`` is the DAG this config stands for (the champion's importer included)."""
    summary = reuse.summary()
    components = run_records.dag(reuse.record.components, with_baseline)
    log_path.write_text(f"pipeline not launched: {reuse.reason}\n{json.dumps(summary, indent=2)}\n")
    log.info("pipeline not launched: %s", reuse.reason)
    progress({"components": components, "family": result.family})
    progress({"step": "reuse", "state": "finished", **summary})
    progress({"done": True})
    result.components = components
    result.eval_metrics = dict(reuse.evaluation.eval_metrics)
    result.model_version = reuse.evaluation.version
    result.reused = summary
    return result


def _run(settings: Settings, progress: Callable[[dict], None], started: float,
         **overrides) -> TrainingResult:
    settings.pipeline_root.mkdir(parents=True, exist_ok=True)
    settings.logs_dir.mkdir(parents=True, exist_ok=True)
    progress({"step": "data", "state": "running"})
    input_dir, version = prepare_input(settings)
    progress({"step": "data", "state": "finished", "data_version": version.md5})

    champion = models.by_alias(settings.mlflow_tracking_uri, settings.model_name, models.CHAMPION)
    baseline_uri = champion.tfx_model_uri if champion else None
    if baseline_uri and not Path(baseline_uri).exists():
        baseline_uri = None  # champion trained elsewhere: absolute thresholds only
    config = {
        "pipeline_root": str(settings.pipeline_root),
        "metadata_path": str(settings.mlmd_path),
        "input_base": str(input_dir),
        "data_path": str(settings.data_csv),
        "module_file": str(paths.TRAINER_MODULE),
        "serving_model_dir": str(settings.serving_model_dir),
        "tracking_uri": settings.mlflow_tracking_uri,
        "model_name": settings.model_name,
        "platform_python": sys.executable,
        "baseline_model_uri": baseline_uri,
        "baseline_version": champion.version if champion and baseline_uri else None,
        **runners.config(settings),  # how the Beam steps run: not part of the fingerprint
        **overrides,
    }
    log_path = settings.logs_dir / f"pipeline-{time.strftime('%Y%m%d-%H%M%S')}.log"
    result = TrainingResult(data_version=version.md5, seconds=0.0, log_path=str(log_path),
                            family=config["family"])
    fingerprint = run_records.fingerprint(input_dir / "data.csv", config, run_records.code_hash())
    reuse = find_reuse(settings, fingerprint, champion, config["baseline_version"])
    if reuse is not None:
        _reused(reuse, result, log_path, progress, with_baseline=bool(baseline_uri))
        result.seconds = time.monotonic() - started
        return result
    config_path = settings.pipeline_root / "run_config.json"
    config_path.write_text(json.dumps(config, indent=2))
    python = str(settings.resolved_pipeline_python())
    with log_path.open("w") as log_file:
        proc = subprocess.Popen(
            [python, "-m", "taxi_mlops.pipeline.run", str(config_path)],
            stdout=subprocess.PIPE, stderr=log_file, text=True, env=pipeline_env(settings),
            cwd=settings.pipeline_root,
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            log_file.write(line)
            if line.startswith("PROGRESS "):
                event = json.loads(line[len("PROGRESS "):])
                if "components" in event:
                    result.components = event["components"]
                progress(event)
        code = proc.wait()
    result.seconds = time.monotonic() - started
    if code != 0:
        tail = "".join(log_path.read_text().splitlines(keepends=True)[-25:])
        raise PipelineFailed(f"the TFX pipeline failed (exit {code}); full log: {log_path}\n{tail}")
    _remember(settings, result, fingerprint, config["baseline_version"])
    result.seconds = time.monotonic() - started
    return result


def _remember(settings: Settings, result: TrainingResult, fingerprint: str,
              baseline_version: str | None) -> None:
    """Record this run's verdict for the next run with the same inputs and champion; a
    record that cannot be written costs a warning (the next run launches TFX), never the run."""
    try:
        outcome = run_outcome(settings)
    except Exception as exc:  # noqa: BLE001 - the run itself succeeded
        log.warning("could not read this run's outcome from ML Metadata: %s", exc)
        return
    result.model_version = outcome.version
    result.eval_metrics = run_eval_metrics(settings, outcome.run_id)
    try:
        run_records.remember(
            settings.pipeline_root, fingerprint, model_uri=outcome.model_uri,
            family=result.family, data_version=result.data_version,
            components=result.components, baseline_version=baseline_version,
            evaluation=run_records.Evaluation(run_id=outcome.run_id, version=outcome.version,
                                              blessed=outcome.blessed,
                                              eval_metrics=result.eval_metrics))
    except OSError as exc:
        log.warning("could not record the run for reuse: %s", exc)
