"""Beam runner settings (``pipeline/runners.py``) and their place in the run fingerprint."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from taxi_mlops.pipeline import run_records, runners
from taxi_mlops.settings import Settings


def test_in_process_is_the_default_and_builds_no_sdist():
    settings = Settings()
    assert settings.beam_runner == runners.IN_PROCESS
    args = runners.beam_args(settings.beam_runner, settings.beam_workers)
    assert args == [f"--runner={runners.FN_API_RUNNER}", runners.NO_SDIST]


def test_multi_process_direct_runner_with_n_workers():
    args = runners.beam_args(runners.MULTI_PROCESS, 3, "--direct_runner_bundle_repeat=0")
    assert args[:3] == ["--runner=DirectRunner", "--direct_running_mode=multi_processing",
                        "--direct_num_workers=3"]
    assert runners.NO_SDIST in args and args[-1] == "--direct_runner_bundle_repeat=0"


def test_dask_is_addressed_by_a_stable_scheduler_file(tmp_path):
    path = runners.scheduler_file(str(tmp_path))
    args = runners.beam_args(runners.DASK, 2, dask_scheduler_file=str(path))
    assert args[0] == f"--runner={runners.DASK_RUNNER}"
    assert f"--dask_scheduler_file={path}" in args
    # the same path every run: TFX's cache key (which includes the args) keeps hitting
    assert path == runners.scheduler_file(str(tmp_path))
    with pytest.raises(runners.RunnerError, match="scheduler file"):
        runners.beam_args(runners.DASK, 2)


def test_portable_passes_the_runner_through_and_needs_one():
    extra = "--runner=FlinkRunner --flink_master=flink:8081 --environment_type=LOOPBACK"
    assert runners.beam_args(runners.PORTABLE, 2, extra) == extra.split()
    with pytest.raises(runners.RunnerError, match="TAXI_BEAM_EXTRA_ARGS"):
        runners.beam_args(runners.PORTABLE, 2, "")
    with pytest.raises(runners.RunnerError, match="beam_runner=portable"):
        runners.beam_args(runners.MULTI_PROCESS, 2, "--runner=SparkRunner")


def test_settings_from_the_environment_and_bad_values_named(monkeypatch):
    monkeypatch.setenv("TAXI_BEAM_RUNNER", "direct-multi-process")
    monkeypatch.setenv("TAXI_BEAM_WORKERS", "4")
    monkeypatch.setenv("TAXI_BEAM_EXTRA_ARGS", "--direct_runner_bundle_repeat=0")
    cfg = runners.config(Settings())
    assert cfg == {"beam_runner": "direct-multi-process", "beam_workers": 4,
                   "beam_extra_args": ["--direct_runner_bundle_repeat=0"]}
    monkeypatch.setenv("TAXI_BEAM_RUNNER", "spark")
    with pytest.raises(ValidationError, match="beam_runner"):
        Settings()
    monkeypatch.setenv("TAXI_BEAM_RUNNER", "dask")
    monkeypatch.setenv("TAXI_BEAM_WORKERS", "0")
    with pytest.raises(ValidationError, match="beam_workers"):
        Settings()


def test_a_runner_change_keeps_the_fingerprint_but_a_training_change_does_not(tmp_path):
    """Runners execute the same steps on the same inputs: a rerun elsewhere is the same model."""
    csv = tmp_path / "data.csv"
    csv.write_text("a,b\n1,2\n")
    config = {"family": "dnn", "train_steps": 1500, **runners.config(Settings())}
    fp = run_records.fingerprint(csv, config, "code")
    for runner in (runners.MULTI_PROCESS, runners.DASK):
        other = {**config, "beam_runner": runner, "beam_workers": 4}
        assert run_records.fingerprint(csv, other, "code") == fp
    assert run_records.fingerprint(csv, {**config, "beam_extra_args": ["--x=1"]}, "code") == fp
    assert run_records.fingerprint(csv, {**config, "train_steps": 100}, "code") != fp


def test_runner_and_kfp_modules_are_not_training_code():
    names = {p.name for p in run_records.code_files()}
    assert "pipeline.py" in names and "taxi_model.py" in names
    assert not names & {"runners.py", "kfp.py", "kfp_compile.py"}


def test_steps_the_dask_runner_cannot_run_fall_back_to_in_process():
    for step in runners.DASK_UNSUPPORTED:
        assert runners.component_args(runners.DASK, step) == [f"--runner={runners.FN_API_RUNNER}"]
    assert runners.component_args(runners.DASK, "Trainer") == []  # not a Beam step
    assert runners.component_args(runners.MULTI_PROCESS, "Transform") == []
