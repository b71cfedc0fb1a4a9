"""SliceGate's work: Evaluator's blessing AND the per-slice rule -> the blessing downstream.

The output blessing carries the Evaluator's custom properties (current / baseline model),
``blessed`` (1 or 0), ``evaluator_blessed``, the slices checked and failed, and a
``slice_gate.json`` report beside TFX's ``BLESSED`` / ``NOT_BLESSED`` marker file.
"""

import json
import os
from typing import Any, Dict, List

from absl import logging
from tfx import types
from tfx.dsl.components.base import base_executor
from tfx.types import artifact_utils

from taxi_mlops.pipeline import slicing
from taxi_mlops.pipeline.components import eval_result

REPORT = "slice_gate.json"


def bars(exec_properties: Dict[str, Any]) -> slicing.SliceBars:
    return slicing.SliceBars(min_auc=float(exec_properties["min_auc"]),
                             min_examples=int(exec_properties["min_examples"]),
                             min_class_examples=int(exec_properties["min_class_examples"]))


def load_slices(evaluation_uri: str) -> Dict[str, Dict[str, float]]:
    return eval_result.slice_table(eval_result.load(evaluation_uri))


def write_blessing(blessing: types.Artifact, evaluator_blessing: types.Artifact,
                   verdict: slicing.Verdict, slice_bars: slicing.SliceBars) -> bool:
    evaluator_blessed = bool(evaluator_blessing.get_int_custom_property("blessed"))
    blessed = evaluator_blessed and verdict.passed
    for key, value in evaluator_blessing.mlmd_artifact.custom_properties.items():
        blessing.mlmd_artifact.custom_properties[key].CopyFrom(value)
    blessing.set_int_custom_property("blessed", int(blessed))
    blessing.set_int_custom_property("evaluator_blessed", int(evaluator_blessed))
    blessing.set_int_custom_property("slices_checked", len(verdict.checked))
    blessing.set_string_custom_property("slices_failed", ",".join(verdict.failed))
    os.makedirs(blessing.uri, exist_ok=True)
    with open(os.path.join(blessing.uri, "BLESSED" if blessed else "NOT_BLESSED"), "w"):
        pass
    with open(os.path.join(blessing.uri, REPORT), "w") as f:
        json.dump({"blessed": blessed, "evaluator_blessed": evaluator_blessed,
                   "bars": vars(slice_bars), **verdict.as_dict()}, f, indent=2)
    return blessed


class Executor(base_executor.BaseExecutor):
    def Do(self, input_dict: Dict[str, List[types.Artifact]],
           output_dict: Dict[str, List[types.Artifact]], exec_properties: Dict[str, Any]) -> None:
        evaluation = artifact_utils.get_single_instance(input_dict["evaluation"])
        evaluator_blessing = artifact_utils.get_single_instance(input_dict["evaluator_blessing"])
        blessing = artifact_utils.get_single_instance(output_dict["blessing"])
        slice_bars = bars(exec_properties)
        verdict = slicing.gate(load_slices(evaluation.uri), slice_bars)
        blessed = write_blessing(blessing, evaluator_blessing, verdict, slice_bars)
        logging.info("SliceGate: blessed=%s (checked %d slices, failed %s)",
                     blessed, len(verdict.checked), verdict.failed)
