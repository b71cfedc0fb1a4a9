"""A pipeline fit for a loop (issue 8, part 6): a run with nothing changed is answered from
the earlier run's record, without launching TFX.

After the session's first run the champion is the model it trained, so a rerun is the
candidate compared with itself: nothing can change. It must not re-execute a component,
log an MLflow run, register a version or move an alias, and must say which version it is.
Timings are measured by ``bench/pipeline_time.py``, not asserted here.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from taxi_mlops.lineage import mlmd
from taxi_mlops.pipeline import launcher, run_records
from taxi_mlops.registry import models
from tests.conftest import restore_pipeline_metrics

pytestmark = pytest.mark.slow


def _registry_state(settings):
    client = models.client(settings.mlflow_tracking_uri)
    versions = sorted((v.version, tuple(sorted(getattr(v, "aliases", []) or [])))
                      for v in client.search_model_versions(f"name='{settings.model_name}'"))
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = sorted(r.info.run_id for r in client.search_runs(experiments, max_results=1000))
    return versions, runs


def _execution_ids(settings) -> set[int]:
    store = mlmd.open_store(settings.mlmd_path)
    return {x.id for t in store.get_execution_types() for x in store.get_executions_by_type(t.name)}


def test_first_run_recorded_its_verdict(trained, settings, champion):
    """The cold run (no champion then) left a record naming the version it registered."""
    result = trained["result"]
    assert result.reused == {}  # the pipeline ran
    assert result.model_version == int(champion.version)
    records = list((settings.pipeline_root / "run_records").glob("*.json"))
    found = [r for r in (run_records.load(settings.pipeline_root, p.stem) for p in records)
             if r is not None and r.model_uri == champion.tfx_model_uri]
    assert found, records
    verdict = found[0].evaluations[run_records.NO_BASELINE]
    assert verdict.version == int(champion.version) and verdict.blessed
    assert verdict.run_id == champion.run_id
    assert verdict.eval_metrics == pytest.approx(result.eval_metrics)


def test_rerun_with_nothing_changed_is_served_from_the_record(trained, settings, champion):
    before_registry = _registry_state(settings)
    before_executions = _execution_ids(settings)
    challenger = models.by_alias(settings.mlflow_tracking_uri, settings.model_name,
                                 models.CHALLENGER)
    events: list[dict] = []
    try:
        result = launcher.run_training(settings, progress=events.append)
    finally:
        restore_pipeline_metrics(settings, trained)  # later tests read the first run's figures

    # It says so, and which version it is.
    assert result.reused["version"] == int(champion.version) == result.model_version
    assert result.reused["model_uri"] == champion.tfx_model_uri
    assert result.reused["run_id"] == champion.run_id and result.reused["blessed"] is True
    assert "nothing changed" in result.reused["reason"]
    assert f"version {champion.version}" in result.reused["reason"]
    assert "nothing changed" in Path(result.log_path).read_text()
    [reuse_event] = [e for e in events if e.get("step") == "reuse"]
    assert reuse_event["version"] == int(champion.version)
    # The same report as a launched run: the DAG (champion importer included), the metrics.
    assert "ChampionModelImporter" in result.components and "Evaluator" in result.components
    assert result.eval_metrics == pytest.approx(trained["result"].eval_metrics)
    assert result.data_version == trained["result"].data_version

    # Nothing re-executed, nothing logged or registered, no alias moved.
    assert not any("component" in e for e in events)
    assert set(result.component_seconds) <= {"data"}
    assert _execution_ids(settings) == before_executions
    assert _registry_state(settings) == before_registry
    again = models.by_alias(settings.mlflow_tracking_uri, settings.model_name, models.CHAMPION)
    assert again.version == champion.version
    after = models.by_alias(settings.mlflow_tracking_uri, settings.model_name, models.CHALLENGER)
    assert (after and after.version) == (challenger and challenger.version)


def test_a_verdict_is_reused_only_while_its_version_is_registered(trained, settings, champion):
    """Reuse rests on the registry as the live MLflow server has it now: without the
    record's version (deleted, or another model under that number) the pipeline runs."""
    record = next(r for r in (run_records.load(settings.pipeline_root, p.stem)
                              for p in (settings.pipeline_root / "run_records").glob("*.json"))
                  if r is not None and r.model_uri == champion.tfx_model_uri)
    assert launcher.find_reuse(settings, record.fingerprint, champion, champion.version)
    uris = launcher.registered_uris(settings)
    assert uris[int(champion.version)] == champion.tfx_model_uri
    # no champion now: the cold run's verdict (it had none either) holds
    assert run_records.decide(record, None, None, None, uris) is not None
    del uris[int(champion.version)]
    assert run_records.decide(record, None, None, None, uris) is None
