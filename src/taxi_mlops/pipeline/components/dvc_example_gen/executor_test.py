"""DvcCsvExampleGen's executor: real TFX CSV ingestion, plus the DVC stamp on the output."""

import json
import os
import tempfile
import unittest

from tfx.types import artifact_utils, standard_artifacts, standard_component_specs

from taxi_mlops.pipeline.components.dvc_example_gen import component, executor


class ExecutorTest(unittest.TestCase):
    def test_examples_carry_the_dvc_version(self):
        root = tempfile.mkdtemp()
        input_base = os.path.join(root, "input")
        os.makedirs(input_base)
        with open(os.path.join(input_base, "data.csv"), "w") as f:
            f.write("fare,big_tipper\n" + "".join(f"{i}.5,{i % 2}\n" for i in range(60)))
        with open(os.path.join(input_base, executor.VERSION_FILE), "w") as f:
            json.dump({"md5": "0123abcd", "path": "data/x.csv", "git_commit": "deadbeef"}, f)
        examples = standard_artifacts.Examples()
        examples.uri = os.path.join(root, "examples")
        gen = component.DvcCsvExampleGen(input_base=input_base)
        props = {k: v for k, v in gen.exec_properties.items()}
        from tfx.components.example_gen import utils
        props = {**props, standard_component_specs.INPUT_CONFIG_KEY: utils.proto_utils.proto_to_json(props["input_config"]) if not isinstance(props["input_config"], str) else props["input_config"],
                 standard_component_specs.OUTPUT_CONFIG_KEY: utils.proto_utils.proto_to_json(props["output_config"]) if not isinstance(props["output_config"], str) else props["output_config"]}
        executor.Executor().Do({}, {standard_component_specs.EXAMPLES_KEY: [examples]}, props)
        self.assertEqual(examples.get_string_custom_property("dvc_data_version"), "0123abcd")
        self.assertEqual(examples.get_string_custom_property("git_commit"), "deadbeef")
        splits = artifact_utils.decode_split_names(examples.split_names)
        self.assertEqual(sorted(splits), ["eval", "train"])
        for split in splits:
            self.assertTrue(os.listdir(artifact_utils.get_split_uri([examples], split)))

    def test_only_csv_files_are_read(self):
        self.assertEqual(component.DATA_FILE_PATTERN, "*.csv")


if __name__ == "__main__":
    unittest.main()
