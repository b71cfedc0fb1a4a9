"""MlflowLogger: its typed interface (the logging itself is exercised end to end)."""

import unittest

from tfx.types import standard_artifacts

from taxi_mlops.pipeline.components.artifacts import RegisteredModel
from taxi_mlops.pipeline.components.mlflow_logger import component, executor


class ComponentTest(unittest.TestCase):
    def test_inputs_and_outputs(self):
        spec = component.MlflowLoggerSpec
        self.assertIs(spec.INPUTS["blessing"].type, standard_artifacts.ModelBlessing)
        self.assertIs(spec.INPUTS["evaluation"].type, standard_artifacts.ModelEvaluation)
        self.assertIs(spec.OUTPUTS["registered_model"].type, RegisteredModel)
        self.assertEqual(executor.CHAMPION, "champion")
        self.assertEqual(executor.CHALLENGER, "challenger")


if __name__ == "__main__":
    unittest.main()
