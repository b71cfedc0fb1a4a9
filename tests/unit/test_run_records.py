"""When a pipeline run may be answered from an earlier one (``pipeline/run_records.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from taxi_mlops.pipeline import run_records as rr

COMPONENTS = ["DvcCsvExampleGen", "Transform", "Trainer", "Evaluator", "SliceGate", "MlflowLogger"]


@pytest.fixture
def model(tmp_path) -> str:
    path = tmp_path / "Trainer" / "model" / "7"
    path.mkdir(parents=True)
    return str(path)


def _remember(root: Path, model: str, baseline, version: int, blessed: bool = True,
              fp: str = "fp1") -> rr.Record:
    return rr.remember(root, fp, model_uri=model, family="dnn", data_version="abc",
                       components=COMPONENTS, baseline_version=baseline,
                       evaluation=rr.Evaluation(run_id=f"run-{baseline}-{version}", version=version,
                                                blessed=blessed, eval_metrics={"auc": 0.95}))


def test_fingerprint_follows_data_code_and_config_but_not_the_champion(tmp_path):
    csv = tmp_path / "data.csv"
    csv.write_text("a,b\n1,2\n")
    config = {"family": "dnn", "train_steps": 1500, "baseline_model_uri": None,
              "baseline_version": None}
    fp = rr.fingerprint(csv, config, "code1")
    assert fp == rr.fingerprint(csv, dict(config), "code1")
    assert fp == rr.fingerprint(csv, {**config, "baseline_model_uri": "/m/1",
                                      "baseline_version": "1"}, "code1")
    assert fp != rr.fingerprint(csv, {**config, "family": "linear"}, "code1")
    assert fp != rr.fingerprint(csv, {**config, "train_steps": 1000}, "code1")
    assert fp != rr.fingerprint(csv, config, "code2")
    csv.write_text("a,b\n1,2\n3,4\n")  # appended data
    assert fp != rr.fingerprint(csv, config, "code1")


def test_code_hash_covers_trainer_module_and_schema_but_not_the_launcher(tmp_path, monkeypatch):
    files = {p.name for p in rr.code_files()}
    assert {"taxi_model.py", "pipeline.py", "schema.py", "pipeline.lock"} <= files
    assert not files & set(rr.NOT_CODE)
    tree = tmp_path / "src"
    (tree / "pkg").mkdir(parents=True)
    monkeypatch.setattr(rr.paths, "PROJECT_ROOT", tmp_path)
    (tree / "pkg" / "a.py").write_text("x = 1\n")
    before = rr.code_hash([tree])
    (tree / "pkg" / "launcher.py").write_text("changed\n")  # decides, does not train
    assert rr.code_hash([tree]) == before
    (tree / "pkg" / "a.py").write_text("x = 2\n")
    assert rr.code_hash([tree]) != before


def test_rerun_after_the_model_became_champion_is_reused(tmp_path, model):
    _remember(tmp_path, model, baseline=None, version=1)
    record = rr.load(tmp_path, "fp1")
    reuse = rr.decide(record, "1", model, baseline_version="1", registered_uris={1: model})
    assert reuse is not None and reuse.evaluation.version == 1
    assert "version 1, the champion" in reuse.reason
    assert reuse.summary()["version"] == 1


def test_same_pair_is_reused_and_another_champion_is_not(tmp_path, model):
    _remember(tmp_path, model, baseline="1", version=2)  # e.g. the linear model vs dnn v1
    record = rr.load(tmp_path, "fp1")
    reuse = rr.decide(record, "1", "/elsewhere/1", baseline_version="1",
                      registered_uris={1: "/elsewhere/1", 2: model})
    assert reuse is not None and reuse.evaluation.run_id == "run-1-2"
    assert "against champion version 1" in reuse.reason
    # a new champion: the pair is new, the Evaluator must compare them
    assert rr.decide(record, "3", "/elsewhere/3", baseline_version="3",
                     registered_uris={2: model, 3: "/elsewhere/3"}) is None


def test_unblessed_verdict_is_reused_for_the_same_champion(tmp_path, model):
    _remember(tmp_path, model, baseline="1", version=0, blessed=False)
    reuse = rr.decide(rr.load(tmp_path, "fp1"), "1", "/elsewhere/1", "1", {1: "/elsewhere/1"})
    assert reuse is not None and not reuse.evaluation.blessed
    assert "not blessed" in reuse.reason


def test_nothing_is_reused_when_its_version_or_model_is_gone(tmp_path, model):
    _remember(tmp_path, model, baseline="1", version=2)
    record = rr.load(tmp_path, "fp1")
    assert rr.decide(record, "1", "/e/1", "1", {1: "/e/1"}) is None  # version 2 deleted
    assert rr.decide(record, "1", "/e/1", "1", {1: "/e/1", 2: "/other"}) is None
    Path(model).rmdir()
    assert rr.decide(record, "1", "/e/1", "1", {1: "/e/1", 2: model}) is None
    assert rr.decide(None, "1", "/e/1", "1", {}) is None


def test_no_baseline_verdict_does_not_answer_a_run_with_a_champion(tmp_path, model):
    _remember(tmp_path, model, baseline=None, version=0, blessed=False)
    record = rr.load(tmp_path, "fp1")
    assert rr.decide(record, "5", "/e/5", "5", {5: "/e/5"}) is None
    assert rr.decide(record, None, None, None, {}) is not None


def test_records_keep_one_verdict_per_champion_and_reset_for_a_new_candidate(tmp_path, model):
    _remember(tmp_path, model, baseline=None, version=1)
    _remember(tmp_path, model, baseline="4", version=1)
    assert set(rr.load(tmp_path, "fp1").evaluations) == {rr.NO_BASELINE, "4"}
    other = tmp_path / "Trainer" / "model" / "9"
    other.mkdir(parents=True)
    record = _remember(tmp_path, str(other), baseline="4", version=5)
    assert set(record.evaluations) == {"4"} and record.model_uri == str(other)
    assert rr.load(tmp_path, "missing") is None
    (tmp_path / "run_records" / "bad.json").write_text("{not json")
    assert rr.load(tmp_path, "bad") is None


def test_dag_adds_the_champion_importer_before_the_evaluator():
    with_importer = rr.dag(COMPONENTS, with_baseline=True)
    assert with_importer.index(rr.IMPORTER) == with_importer.index("Evaluator") - 1
    assert rr.dag(with_importer, with_baseline=False) == COMPONENTS
    assert rr.dag(with_importer, with_baseline=True) == with_importer
