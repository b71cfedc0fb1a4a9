"""FeastPusher's work: hand the CSV to the platform environment's Feast, record the result.

Feast needs pyarrow and pandas newer than TFX 1.16 allows, so the Feast calls run in the
platform's Python (``python -m taxi_mlops.features.store push``) and report JSON back.
"""

import json
import os
import subprocess
from typing import Any, Dict, List

from absl import logging
from tfx import types
from tfx.dsl.components.base import base_executor
from tfx.types import artifact_utils

from taxi_mlops import paths

TIMEOUT_S = 600


class Executor(base_executor.BaseExecutor):
    def Do(self, input_dict: Dict[str, List[types.Artifact]],
           output_dict: Dict[str, List[types.Artifact]], exec_properties: Dict[str, Any]) -> None:
        pushed = artifact_utils.get_single_instance(input_dict["pushed_model"])
        tables = artifact_utils.get_single_instance(output_dict["feature_tables"])
        tables.set_string_custom_property("feature_service", exec_properties["feature_service"])
        tables.feature_service = exec_properties["feature_service"]
        if not pushed.get_int_custom_property("pushed"):
            logging.info("FeastPusher: model not pushed (not blessed); feature store left as it is")
            tables.set_int_custom_property("pushed", 0)
            tables.materialized_until = ""
            return
        env = {**os.environ, "PYTHONPATH": str(paths.PROJECT_ROOT / "src")}
        proc = subprocess.run(
            [exec_properties["platform_python"], "-m", "taxi_mlops.features.store", "push",
             exec_properties["data_path"]],
            capture_output=True, text=True, env=env, timeout=TIMEOUT_S,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"Feast push failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        with open(os.path.join(tables.uri, "feast_push.json"), "w") as f:
            json.dump(result, f, indent=2)
        tables.set_int_custom_property("pushed", 1)
        tables.materialized_until = result["materialized_until"]
        for view, info in result["tables"].items():
            tables.set_string_custom_property(f"{view}_path", info["path"])
            tables.set_int_custom_property(f"{view}_rows", int(info["rows"]))
        logging.info("FeastPusher: %s", result)
