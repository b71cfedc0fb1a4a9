"""Tests that need the TFX environment run there: the ``*_test.py`` beside the code (each
component's executor, ``pipeline/beam_tuning.py``)."""

import os
import subprocess

from taxi_mlops import paths
from taxi_mlops.pipeline_env import find_pipeline_python


def test_component_executor_tests_pass_in_the_tfx_environment():
    env = {**os.environ, "PYTHONPATH": str(paths.PROJECT_ROOT / "src"), "TF_CPP_MIN_LOG_LEVEL": "2",
           "TF_USE_LEGACY_KERAS": "1"}
    proc = subprocess.run(
        [str(find_pipeline_python()), "-m", "unittest", "discover", "-v",
         "-s", str(paths.PACKAGE_DIR / "pipeline"), "-t", str(paths.PROJECT_ROOT / "src"),
         "-p", "*_test.py"],
        capture_output=True, text=True, env=env, timeout=600)
    report = proc.stderr[-3000:]
    assert proc.returncode == 0, report
    assert "Ran 18 tests" in report and "OK" in report, report
