"""A second model family (issue 7, part 2): the same pipeline trains a linear model on the
same Transform output as the session's dnn champion.

The linear run must reuse Transform from TFX's cache (its Trainer reads the very
transform_graph artifact the dnn Trainer read, per ML Metadata), be evaluated and gated like
the dnn (champion as baseline), and be logged to MLflow tagged ``model_family=linear``;
registered as ``challenger`` only if blessed. The champion alias is left as it was.
"""

from __future__ import annotations

import json

import pytest
from ml_metadata.proto import metadata_store_pb2

from taxi_mlops.lineage import mlmd
from taxi_mlops.pipeline import launcher, quality
from taxi_mlops.registry import models
from tests.conftest import restore_pipeline_metrics

pytestmark = pytest.mark.slow

BOUNDARY = 1e-4  # metrics this close to a gate's bar: the gate's rounding decides, not ours


def _producer(store, artifact_ids, type_suffix):
    """The execution of type ``*type_suffix`` that output one of the artifacts (newest first);
    a baseline Importer outputs a Model at the Trainer's URI too, so filter by type."""
    exec_types = {t.id: t.name for t in store.get_execution_types()}
    events = [e for e in store.get_events_by_artifact_ids(artifact_ids) if e.type in mlmd.OUTPUT_EVENTS]
    executions = store.get_executions_by_id([e.execution_id for e in events])
    found = [x for x in executions if exec_types[x.type_id].endswith(type_suffix)]
    assert found, f"no {type_suffix} execution output artifacts {artifact_ids}"
    return max(found, key=lambda x: x.id)


def _trainer_of(store, model_uri):
    """The Trainer execution that produced the Model at ``model_uri``, and its inputs by key."""
    artifacts = store.get_artifacts_by_uri(model_uri)
    execution = _producer(store, [a.id for a in artifacts], "Trainer")
    inputs = {e.path.steps[0].key: e.artifact_id
              for e in store.get_events_by_execution_ids([execution.id])
              if e.type in mlmd.INPUT_EVENTS}
    return execution, inputs


def _latest_execution(store, type_suffix):
    exec_types = {t.id: t.name for t in store.get_execution_types()}
    ids = [i for i, name in exec_types.items() if name.endswith(type_suffix)]
    executions = [x for i in ids for x in store.get_executions_by_type(exec_types[i])]
    return max(executions, key=lambda x: x.id)


def _custom_config(execution) -> dict:
    """The Trainer's custom_config (TFX stores exec properties as JSON custom properties)."""
    return json.loads(execution.custom_properties["custom_config"].string_value)


def test_cli_choices_match_the_launcher():
    from taxi_mlops.cli import build_parser

    args = build_parser().parse_args(["train", "--family", "linear"])
    assert args.family == "linear"
    assert build_parser().parse_args(["train"]).family == launcher.DEFAULT_FAMILY
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--family", "xgboost"])
    with pytest.raises(ValueError, match="unknown model family"):
        launcher.run_training(None, family="xgboost")  # checked before any work


def test_linear_family_reuses_transform_and_is_gated_like_the_dnn(trained, settings, champion):
    client = models.client(settings.mlflow_tracking_uri)
    champion_run = client.get_run(champion.run_id)
    assert champion_run.data.tags.get("model_family") == "dnn"
    assert champion.tags.get("model_family") == "dnn"
    assert champion_run.data.params.get("family") == "dnn"

    before = models.by_alias(settings.mlflow_tracking_uri, settings.model_name, models.CHALLENGER)
    events: list[dict] = []
    try:
        result = launcher.run_training(settings, family="linear", progress=events.append)
        assert result.family == "linear"
        assert any(e.get("family") == "linear" for e in events if "components" in e)
        assert "ChampionModelImporter" in result.components  # evaluated against the champion

        # ML Metadata: the linear Trainer read the dnn Trainer's transform_graph; Transform cached.
        store = mlmd.open_store(settings.mlmd_path)
        run_id = mlmd.latest(store, "MlflowModelVersion").properties["run_id"].string_value
        run = client.get_run(run_id)
        linear_uri = run.data.tags["tfx_model_uri"]
        assert linear_uri != champion.tfx_model_uri
        dnn_trainer, dnn_inputs = _trainer_of(store, champion.tfx_model_uri)
        linear_trainer, linear_inputs = _trainer_of(store, linear_uri)
        assert _custom_config(dnn_trainer)["family"] == "dnn"
        assert _custom_config(linear_trainer)["family"] == "linear"
        assert _custom_config(linear_trainer)["hidden_units"] == []
        assert linear_inputs["transform_graph"] == dnn_inputs["transform_graph"]
        assert linear_inputs["examples"] == dnn_inputs["examples"]  # the transformed examples
        transform = _latest_execution(store, "Transform")
        assert transform.last_known_state == metadata_store_pb2.Execution.CACHED
        assert linear_trainer.last_known_state == metadata_store_pb2.Execution.COMPLETE

        # MLflow: the run says which family it is and carries the evaluation.
        assert run.data.tags["model_family"] == "linear"
        assert run.data.params["family"] == "linear"
        assert run.data.params["hidden_units"] == "[]"
        metrics, base = run.data.metrics, champion_run.data.metrics
        for name in ("eval_binary_accuracy", "eval_auc", "eval_example_count"):
            assert name in metrics, name
        assert metrics["eval_example_count"] == base["eval_example_count"]  # same eval split
        assert result.eval_metrics["auc"] == pytest.approx(metrics["eval_auc"])  # what was pushed
        card = open(client.download_artifacts(run_id, "model_card.md",
                                              str(settings.state_dir / "family-card"))).read()
        assert "Model family `linear`" in card

        blessed = run.data.tags["blessed"] == "true"
        acc, auc = metrics["eval_binary_accuracy"], metrics["eval_auc"]
        d_acc, d_auc = acc - base["eval_binary_accuracy"], auc - base["eval_auc"]
        print(f"\nMODEL FAMILIES: dnn {trained['result'].seconds:.1f}s accuracy "
              f"{base['eval_binary_accuracy']:.4f} AUC {base['eval_auc']:.4f} | linear "
              f"{result.seconds:.1f}s accuracy {acc:.4f} AUC {auc:.4f} (delta {d_acc:+.4f} / "
              f"{d_auc:+.4f}, bar -{quality.MAX_REGRESSION}) blessed={blessed} "
              f"slice_gate_failed={run.data.tags.get('slice_gate_failed')!r}\n"
              f"  component seconds dnn {trained['result'].component_seconds}\n"
              f"  component seconds linear {result.component_seconds}")
        # The blessing is the Evaluator's and SliceGate's verdict; check it is the documented
        # one (absolute bars, no regression beyond MAX_REGRESSION, every checked slice passes).
        bars = [acc - quality.MIN_ACCURACY, auc - quality.MIN_AUC,
                d_acc + quality.MAX_REGRESSION, d_auc + quality.MAX_REGRESSION]
        if all(abs(b) > BOUNDARY for b in bars):
            expected = all(b > 0 for b in bars) and not run.data.tags.get("slice_gate_failed")
            assert blessed == expected, (bars, run.data.tags)

        versions = [v for v in client.search_model_versions(f"name='{settings.model_name}'")
                    if (v.tags or {}).get("tfx_model_uri") == linear_uri]
        if blessed:
            [linear_version] = versions
            assert linear_version.tags["model_family"] == "linear"
            assert linear_version.run_id == run_id
            challenger = models.by_alias(settings.mlflow_tracking_uri, settings.model_name,
                                         models.CHALLENGER)
            assert challenger is not None and challenger.version == linear_version.version
        else:
            assert versions == []  # not blessed: logged, not registered
    finally:
        again = models.by_alias(settings.mlflow_tracking_uri, settings.model_name, models.CHAMPION)
        challenger = models.by_alias(settings.mlflow_tracking_uri, settings.model_name,
                                     models.CHALLENGER)
        if challenger is not None and (before is None or challenger.version != before.version):
            # This run made it; other tests assume no challenger unless they make one.
            client.delete_registered_model_alias(settings.model_name, models.CHALLENGER)
        restore_pipeline_metrics(settings, trained)  # later tests read the dnn run's figures
    assert again is not None and again.version == champion.version
