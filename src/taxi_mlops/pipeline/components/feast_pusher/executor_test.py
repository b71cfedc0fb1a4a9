"""FeastPusher's executor: leaves the store alone for an unblessed model, fails loudly otherwise."""

import os
import sys
import tempfile
import unittest

from tfx.types import standard_artifacts

from taxi_mlops.pipeline.components.artifacts import FeatureTables
from taxi_mlops.pipeline.components.feast_pusher import component, executor


def _artifacts(pushed: int):
    model = standard_artifacts.PushedModel()
    model.uri = tempfile.mkdtemp()
    model.set_int_custom_property("pushed", pushed)
    tables = FeatureTables()
    tables.uri = tempfile.mkdtemp()
    return model, tables


class ExecutorTest(unittest.TestCase):
    def props(self, python):
        return {"data_path": "/nonexistent.csv", "platform_python": python,
                "feature_service": "taxi_tip_model_v1"}

    def test_unblessed_model_does_not_touch_feast(self):
        model, tables = _artifacts(pushed=0)
        # A platform python that cannot run proves no subprocess was attempted.
        executor.Executor().Do({"pushed_model": [model]}, {"feature_tables": [tables]},
                               self.props("/nonexistent/python"))
        self.assertEqual(tables.get_int_custom_property("pushed"), 0)
        self.assertEqual(tables.feature_service, "taxi_tip_model_v1")

    def test_failed_push_raises_with_the_platform_error(self):
        model, tables = _artifacts(pushed=1)
        with self.assertRaises(RuntimeError) as ctx:
            # This interpreter has no feast: the real cross-environment call fails, as it would
            # with a broken platform environment, and the error must say why.
            executor.Executor().Do({"pushed_model": [model]}, {"feature_tables": [tables]},
                                   self.props(sys.executable))
        self.assertIn("Feast push failed", str(ctx.exception))
        self.assertFalse(os.path.exists(os.path.join(tables.uri, "feast_push.json")))

    def test_component_types(self):
        spec = component.FeastPusherSpec
        self.assertIs(spec.INPUTS["pushed_model"].type, standard_artifacts.PushedModel)
        self.assertIs(spec.OUTPUTS["feature_tables"].type, FeatureTables)


if __name__ == "__main__":
    unittest.main()
