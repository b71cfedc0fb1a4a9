"""ML Metadata lineage: from the pushed model back to the DVC-versioned Examples."""

import pytest
import yaml

from taxi_mlops.lineage import mlmd

pytestmark = pytest.mark.slow


def test_pushed_model_traces_back_to_examples_with_dvc_version(settings, trained):
    nodes = mlmd.serving_lineage(settings.mlmd_path)
    assert nodes[0].type == "PushedModel" and nodes[0].properties["pushed"] == 1
    types = [n.type for n in nodes]
    assert "Model" in types and "ModelBlessing" in types and "TransformGraph" in types
    raw_examples = [n for n in nodes if n.type == "Examples" and "dvc_data_version" in n.properties]
    assert len(raw_examples) == 1
    dvc = yaml.safe_load(settings.data_csv.with_name("data.csv.dvc").read_text())
    assert raw_examples[0].properties["dvc_data_version"] == dvc["outs"][0]["md5"]
    assert raw_examples[0].properties["dvc_data_path"] == "data/chicago_taxi/data.csv"


def test_feast_pusher_recorded_what_it_materialized(settings, trained):
    store = mlmd.open_store(settings.mlmd_path)
    tables = mlmd.latest(store, "FeastFeatureTables")
    props = mlmd._props(tables)
    assert props["pushed"] == 1
    assert props["area_trip_stats_rows"] > 1000 and props["company_trip_stats_rows"] > 1000
    assert props["feature_service"] == "taxi_tip_model_v1"


def test_cli_lineage_prints_the_data_version(settings, trained):
    import os
    import subprocess
    import sys

    dvc = yaml.safe_load(settings.data_csv.with_name("data.csv.dvc").read_text())
    proc = subprocess.run([sys.executable, "-m", "taxi_mlops.cli", "lineage"], capture_output=True,
                          text=True, timeout=60, env={**os.environ, **settings.as_env(), "COLUMNS": "400"})
    assert proc.returncode == 0, proc.stderr
    assert dvc["outs"][0]["md5"] in proc.stdout and "PushedModel" in proc.stdout
