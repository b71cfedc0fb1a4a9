"""Runs TFX's CSV executor, then records where the data came from on the Examples."""

import json
import os
from typing import Any, Dict, List

from tfx import types
from tfx.components.example_gen.csv_example_gen import executor as csv_executor
from tfx.types import standard_component_specs

VERSION_FILE = "data_version.json"


class Executor(csv_executor.Executor):
    def Do(self, input_dict: Dict[str, List[types.Artifact]],
           output_dict: Dict[str, List[types.Artifact]], exec_properties: Dict[str, Any]) -> None:
        super().Do(input_dict, output_dict, exec_properties)
        version_path = os.path.join(exec_properties[standard_component_specs.INPUT_BASE_KEY], VERSION_FILE)
        with open(version_path) as f:
            version = json.load(f)
        for examples in output_dict[standard_component_specs.EXAMPLES_KEY]:
            examples.set_string_custom_property("dvc_data_version", version["md5"])
            examples.set_string_custom_property("dvc_data_path", version["path"])
            examples.set_string_custom_property("git_commit", version.get("git_commit", ""))
