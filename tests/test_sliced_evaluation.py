"""Sliced and calibrated evaluation (issue 9, item 2), on the session's real training run.

The Evaluator slices by payment type, company known / unseen, hour bucket and pickup area;
the MlflowLogger logs each slice's metrics, the calibration data and plot, and the slice
table in the model card; the SliceGate's blessing follows the per-slice rule.
"""

import json

import pytest

from taxi_mlops.lineage import mlmd
from taxi_mlops.pipeline import quality, slicing
from taxi_mlops.registry import models

pytestmark = pytest.mark.slow

FAMILIES = {"payment_type": {"Cash", "Credit Card"}, "company_known": {"known", "unseen"},
            "hour_bucket": {"night", "morning", "afternoon", "evening"},
            "pickup_community_area": {"8", "32", "76"}}


@pytest.fixture(scope="module")
def run(trained, settings):
    """The MLflow run the session's first pipeline run logged (blessed or not), and its slice
    report. The first: later runs (another model family) are evaluated against a champion."""
    store = mlmd.open_store(settings.mlmd_path)
    first = min(store.get_artifacts_by_type("MlflowModelVersion"), key=lambda a: a.id)
    run_id = first.properties["run_id"].string_value
    client = models.client(settings.mlflow_tracking_uri)
    report = json.loads(open(client.download_artifacts(
        run_id, "evaluation/slice_metrics.json", str(settings.state_dir / "slice-report"))).read())
    return client, client.get_run(run_id), report


def test_every_slice_family_has_metrics_in_mlflow(run):
    _, mlflow_run, report = run
    metrics = mlflow_run.data.metrics
    for feature, values in FAMILIES.items():
        names = {n.split("=", 1)[1] for n in report["slices"] if n.startswith(feature + "=")}
        assert values <= names, (feature, names)
        for value in values:
            name = f"{feature}={value}"
            for metric in ("example_count", "positives", "auc", "brier_score"):
                assert slicing.metric_key(name, metric) in metrics, (name, metric)
    assert metrics["slice_payment_type_Cash_example_count"] > 1000
    # Slices partition the eval split: each family's counts add up to the overall count.
    overall = report["slices"][slicing.OVERALL]["example_count"]
    for feature in FAMILIES:
        assert sum(r["example_count"] for n, r in report["slices"].items()
                   if n.startswith(feature + "=")) == overall, feature


def test_calibration_figures_and_artifacts(run, settings):
    client, mlflow_run, report = run
    metrics = mlflow_run.data.metrics
    assert 0.0 < metrics["eval_brier_score"] < 0.25  # better than a constant 0.5
    assert 0.0 <= metrics["eval_expected_calibration_error"] < 0.2
    paths = {a.path for a in client.list_artifacts(mlflow_run.info.run_id, "evaluation")}
    assert {"evaluation/calibration.json", "evaluation/calibration_plot.png",
            "evaluation/slice_metrics.json"} <= paths, paths
    png = client.download_artifacts(mlflow_run.info.run_id, "evaluation/calibration_plot.png",
                                    str(settings.state_dir / "slice-report"))
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    calibration = json.loads(open(client.download_artifacts(
        mlflow_run.info.run_id, "evaluation/calibration.json",
        str(settings.state_dir / "slice-report"))).read())
    overall = calibration["slices"][slicing.OVERALL]
    assert len(overall["bins"]) == slicing.ECE_BINS
    assert sum(b["examples"] for b in overall["bins"]) == report["slices"]["overall"]["example_count"]
    # The logged ECE is the documented function of the logged bins.
    assert slicing.expected_calibration_error(overall["buckets"]) == pytest.approx(
        metrics["eval_expected_calibration_error"], rel=1e-6)


def test_model_card_lists_every_slice(run):
    client, mlflow_run, report = run
    card = open(client.download_artifacts(mlflow_run.info.run_id, "model_card.md")).read()
    assert "## Metrics by slice" in card
    for name in report["slices"]:
        assert f"| {name} |" in card, name


def test_blessing_follows_the_slice_rule(run, settings):
    _, mlflow_run, report = run
    metrics = mlflow_run.data.metrics
    # Rebuild each slice from the MLflow metrics alone, and apply the rule.
    slices = {}
    for name in report["slices"]:
        if name == slicing.OVERALL:
            continue
        get = lambda m: metrics.get(slicing.metric_key(name, m))  # noqa: E731
        slices[name] = {"example_count": get("example_count"), "auc": get("auc"),
                        "mean_label": (get("positives") or 0) / get("example_count")}
    verdict = slicing.gate(slices)
    assert verdict.checked == report["slice_gate"]["checked"]
    assert verdict.failed == report["slice_gate"]["failed"]
    assert any(name.startswith("payment_type=") for name in verdict.checked)
    overall_ok = (metrics["eval_binary_accuracy"] >= quality.MIN_ACCURACY
                  and metrics["eval_auc"] >= quality.MIN_AUC)
    blessed = mlflow_run.data.tags["blessed"] == "true"
    assert blessed == (overall_ok and verdict.passed)  # no champion before: no regression bar
    if blessed:
        for name in verdict.checked:
            assert slices[name]["auc"] >= quality.MIN_SLICE_AUC, name
        champion = models.by_alias(settings.mlflow_tracking_uri, settings.model_name, models.CHAMPION)
        assert champion is not None and champion.run_id == mlflow_run.info.run_id


def test_slice_columns_are_not_in_the_serving_signature(run):
    """The slice-only columns are in the Examples, not in what the gateway must send."""
    import tensorflow as tf

    from taxi_mlops.features import schema

    _, mlflow_run, _ = run
    model = tf.saved_model.load(mlflow_run.data.tags["tfx_model_uri"] + "/Format-Serving")
    _, inputs = model.signatures["serving_default"].structured_input_signature
    assert set(inputs) == set(schema.SERVING_DTYPES)
    _, examples = model.signatures["serving_tf_example"].structured_input_signature
    assert set(examples) == {"examples"}
