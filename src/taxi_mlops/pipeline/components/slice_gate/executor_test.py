"""SliceGate: which slices the rule applies to, pass / fail, and the blessing it writes."""

import json
import os
import tempfile
import unittest
from unittest import mock

from tfx.types import standard_artifacts

from taxi_mlops.pipeline import quality, slicing
from taxi_mlops.pipeline.components.slice_gate import component, executor


def _slice(n, positives, auc):
    return {"example_count": float(n), "mean_label": positives / n if n else 0.0, "auc": auc}


SLICES = {
    slicing.OVERALL: _slice(5000, 1500, 0.94),  # gated by the Evaluator, not here
    "payment_type=Credit Card": _slice(1600, 1000, 0.80),
    "payment_type=Cash": _slice(3300, 3, 0.45),  # 3 positives: AUC meaningless, not checked
    "hour_bucket=night": _slice(199, 60, 0.50),  # under 200 trips: reported only
    "company_known=unseen": _slice(200, 20, 0.75),  # exactly at every bar: checked, passes
}


def _run(slices, evaluator_blessed=1, **bars):
    evaluation = standard_artifacts.ModelEvaluation()
    evaluation.uri = tempfile.mkdtemp()
    evaluator_blessing = standard_artifacts.ModelBlessing()
    evaluator_blessing.uri = tempfile.mkdtemp()
    evaluator_blessing.set_int_custom_property("blessed", evaluator_blessed)
    evaluator_blessing.set_string_custom_property("current_model", "/models/candidate")
    blessing = standard_artifacts.ModelBlessing()
    blessing.uri = tempfile.mkdtemp()
    props = {"min_auc": quality.MIN_SLICE_AUC, "min_examples": quality.MIN_SLICE_EXAMPLES,
             "min_class_examples": quality.MIN_SLICE_CLASS_EXAMPLES, **bars}
    with mock.patch.object(executor, "load_slices", return_value=slices):
        executor.Executor().Do({"evaluation": [evaluation], "evaluator_blessing": [evaluator_blessing]},
                               {"blessing": [blessing]}, props)
    with open(os.path.join(blessing.uri, executor.REPORT)) as f:
        return blessing, json.load(f)


class RuleTest(unittest.TestCase):
    def test_which_slices_count(self):
        verdict = slicing.gate(SLICES)
        self.assertEqual(verdict.checked, ["company_known=unseen", "payment_type=Credit Card"])
        self.assertTrue(verdict.passed)

    def test_a_big_slice_under_the_bar_fails(self):
        verdict = slicing.gate({**SLICES, "pickup_community_area=8": _slice(400, 100, quality.MIN_SLICE_AUC - 1e-4)})
        self.assertFalse(verdict.passed)
        self.assertEqual(verdict.failed, ["pickup_community_area=8"])

    def test_nan_auc_on_a_checked_slice_fails(self):
        self.assertFalse(slicing.gate({"x=1": _slice(300, 100, float("nan"))}).passed)


class ExecutorTest(unittest.TestCase):
    def test_blessed_when_evaluator_and_slices_pass(self):
        blessing, report = _run(SLICES)
        self.assertEqual(blessing.get_int_custom_property("blessed"), 1)
        self.assertEqual(blessing.get_string_custom_property("current_model"), "/models/candidate")
        self.assertTrue(os.path.exists(os.path.join(blessing.uri, "BLESSED")))
        self.assertEqual(report["checked"], ["company_known=unseen", "payment_type=Credit Card"])

    def test_a_failing_slice_withdraws_the_blessing(self):
        blessing, report = _run(SLICES, min_auc=0.9)
        self.assertEqual(blessing.get_int_custom_property("blessed"), 0)
        self.assertEqual(blessing.get_int_custom_property("evaluator_blessed"), 1)
        self.assertTrue(os.path.exists(os.path.join(blessing.uri, "NOT_BLESSED")))
        self.assertEqual(report["failed"], ["company_known=unseen", "payment_type=Credit Card"])

    def test_never_blesses_what_the_evaluator_did_not(self):
        blessing, report = _run(SLICES, evaluator_blessed=0)
        self.assertEqual(blessing.get_int_custom_property("blessed"), 0)
        self.assertTrue(report["passed"])

    def test_component_types(self):
        spec = component.SliceGateSpec
        self.assertIs(spec.INPUTS["evaluation"].type, standard_artifacts.ModelEvaluation)
        self.assertIs(spec.OUTPUTS["blessing"].type, standard_artifacts.ModelBlessing)


if __name__ == "__main__":
    unittest.main()
